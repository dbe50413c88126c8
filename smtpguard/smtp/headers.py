"""Header text the relay writes (the ``Received:`` trace line) or reads (``Auto-Submitted``).

Every client-chosen part of a generated header is checked against a strict
character set first, so nothing a client sends can start a new header line.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from email.utils import format_datetime

#: What may appear of a client-chosen name (HELO, address literal) inside a header.
HELO_SAFE = re.compile(r"[A-Za-z0-9.:\[\]_-]{1,255}\Z")
_HEADER_SAFE_ADDR = re.compile(r"[^\x00-\x20\x7f<>()\\;]+\Z")
_AUTO_SUBMITTED = re.compile(rb"(?im)^auto-submitted[ \t]*:([^\r\n]*(?:\r\n[ \t][^\r\n]*)*)")
_COMMENT = re.compile(r"\([^()]*\)")


def received_header(
    *,
    helo: str,
    client_ip: str,
    hostname: str,
    protocol: str,
    recipient: str | None,
    when: float,
) -> bytes:
    """An RFC 5321 section 4.4 trace line; client-chosen text cannot inject a newline.

    The HELO name is kept only if it consists of domain / address-literal
    characters (else ``unknown``); the single recipient's ``for`` clause only
    if the address has no whitespace, controls or header specials.
    """
    helo_text = helo if HELO_SAFE.match(helo) else "unknown"
    ip = client_ip if HELO_SAFE.match(client_ip) else "unknown"
    lines = f"Received: from {helo_text} (unknown [{ip}])\r\n\tby {hostname} (smtpguard)"
    lines += f" with {protocol}"
    if recipient and _HEADER_SAFE_ADDR.match(recipient):
        lines += f"\r\n\tfor <{recipient}>"
    stamp = format_datetime(datetime.fromtimestamp(when, UTC))
    return f"{lines};\r\n\t{stamp}\r\n".encode()


def is_auto_submitted(data: bytes) -> bool:
    """True if the header section has ``Auto-Submitted`` other than ``no`` (RFC 3834 s. 5)."""
    end = data.find(b"\r\n\r\n")
    header = data if end < 0 else data[: end + 2]
    if b"uto-" not in header and b"UTO-" not in header:
        return False
    for m in _AUTO_SUBMITTED.finditer(header):
        value = m.group(1).decode("ascii", "replace").replace("\r\n", "")
        value = _COMMENT.sub(" ", value).strip().lower()
        if value != "no":
            return True
    return False

"""Header text the relay writes (the ``Received:`` trace line) or reads (``Auto-Submitted``,
``Message-ID``).

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
_MESSAGE_ID = re.compile(rb"(?im)^message-id[ \t]*:[ \t]*(?:\r\n[ \t]+)?([^\r\n]{1,998})")
#: How much of a message is searched for its header section, and the longest id kept.
HEADER_SCAN = 64 * 1024
MAX_MESSAGE_ID = 250


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


def message_id(data: bytes) -> str:
    """The ``Message-ID`` header's value (first line, at most :data:`MAX_MESSAGE_ID`
    characters), "" when the header section (searched in its first 64 KiB) has none.

    For the delivery log, where it ties our queue id to the sender's message:
    the value is as the client wrote it, so the log sanitises it like any remote text.
    """
    end = data.find(b"\r\n\r\n", 0, HEADER_SCAN)
    header = data[:HEADER_SCAN] if end < 0 else data[: end + 2]
    m = _MESSAGE_ID.search(header)
    if m is None:
        return ""
    return m.group(1).decode("utf-8", "replace").strip()[:MAX_MESSAGE_ID]

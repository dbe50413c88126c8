"""DATA framing (RFC 5321 sections 2.3.8, 4.1.1.4, 4.5.2): line endings, the final dot.

Only ``<CRLF>.<CRLF>`` ends message data; a line starting with ``.`` travels
with a second one (dot-stuffing). Both sides of the relay keep mail in one
form, CRLF lines without stuffing: the inbound side unstuffs and normalises
what it receives, the delivery side stuffs what it sends.
"""

from __future__ import annotations

import re

#: The end of mail data.
DATA_END = b"\r\n.\r\n"
# A CRLF pair, or a bare CR, or a bare LF.
_LINE_ENDINGS = re.compile(rb"\r\n|\r|\n")


def normalise_line_endings(data: bytes) -> bytes:
    """Every bare CR and bare LF becomes CRLF; fast path when there are none."""
    crlf = data.count(b"\r\n")
    if data.count(b"\r") == crlf and data.count(b"\n") == crlf:
        return data
    return _LINE_ENDINGS.sub(b"\r\n", data)


def unstuff(raw: bytes) -> bytes:
    """Undo transparency: a line's leading "." goes.

    Lines are what CRLF separates (a bare LF does not start a line, as in
    aiosmtpd); ``raw`` is data as received, without the final ".CRLF".
    """
    if raw[:1] == b".":
        raw = raw[1:]
    if b"\r\n." in raw:
        raw = raw.replace(b"\r\n.", b"\r\n")
    return raw


def wire_data(body: bytes) -> bytes:
    """The DATA payload for a message: CRLF lines, dot-stuffed, ending in ``.CRLF``.

    Queued bodies are CRLF-only already (the inbound side normalises), so the
    cheap counts in :func:`normalise_line_endings` usually skip the regex, and
    the stuffing is one ``bytes.replace``.
    """
    body = normalise_line_endings(body)
    if not body.endswith(b"\r\n"):
        body += b"\r\n"
    if body[:1] == b".":
        body = b"." + body
    if b"\r\n." in body:
        body = body.replace(b"\r\n.", b"\r\n..")
    return body + b".\r\n"


def partial_end(data: bytes) -> int:
    """Length of the longest proper prefix of CRLF.CRLF that ``data`` ends with."""
    for k in (4, 3, 2, 1):
        if data.endswith(DATA_END[:k]):
            return k
    return 0

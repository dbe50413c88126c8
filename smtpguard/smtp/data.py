"""DATA framing (RFC 5321 sections 2.3.8, 4.1.1.4, 4.5.2): line endings, the final dot.

Only ``<CRLF>.<CRLF>`` ends message data; a line starting with ``.`` travels
with a second one (dot-stuffing). Both sides of the relay keep mail in one
form, CRLF lines without stuffing: the inbound side unstuffs and normalises
what it receives (:class:`DataReceiver`, chunk by chunk, into one buffer), the
delivery side stuffs what it sends.
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


class DataReceiver:
    """Message data as received, chunk by chunk -> the stored form, in one pass.

    Each chunk is dot-unstuffed (a line's leading ``.`` goes; lines are what
    CRLF separates, a bare LF does not start one), its bare CRs and bare LFs
    become CRLF, and it is appended to one ``bytearray``: the message exists
    once, plus the chunk in hand, instead of as a list of parts, their join, the
    unstuffed copy and the normalised copy. The result is byte for byte what
    :func:`unstuff` then :func:`normalise_line_endings` make of the whole data.

    It also checks line lengths (octets between CRLFs of the data as received,
    RFC 5321 section 4.5.3.1.6) as it goes: :attr:`line_too_long`. A CR that
    ends a chunk waits for the next one, so that a CRLF split between two
    chunks is seen whole by all three steps.
    """

    __slots__ = ("_at_line_start", "_cr", "_line", "buffer", "keep", "line_too_long", "max_line")

    def __init__(self, max_line: int) -> None:
        self.max_line = max_line
        self.buffer = bytearray()
        #: False once the data is refused: chunks are then only checked, not kept.
        self.keep = True
        self.line_too_long = False
        self._at_line_start = True  # the command's CRLF came just before the data
        self._cr = False  # a CR held back from the end of the previous chunk
        self._line = 0  # octets of the current line seen so far

    def feed(self, chunk: bytes) -> None:
        """One more piece of the data as received (still dot-stuffed)."""
        if self._cr:
            chunk = b"\r" + chunk
            self._cr = False
        if chunk[-1:] == b"\r":
            chunk = chunk[:-1]
            self._cr = True
        if chunk:
            self._take(chunk)

    def _take(self, chunk: bytes) -> None:
        if not self.line_too_long:
            self._check_lines(chunk)
        if not self.keep:
            return
        start = 1 if self._at_line_start and chunk[:1] == b"." else 0
        self._at_line_start = chunk[-2:] == b"\r\n"
        if start:
            chunk = chunk[1:]
        if b"\r\n." in chunk:
            chunk = chunk.replace(b"\r\n.", b"\r\n")
        self.buffer += normalise_line_endings(chunk)

    def finish(self) -> bytearray:
        """The stored form of everything fed (a CR left over ends its line)."""
        if self._cr:
            self._cr = False
            self._take(b"\r")
        return self.buffer

    def drop(self) -> None:
        """Keep nothing from now on (the message is refused); free what was kept."""
        self.keep = False
        self.buffer = bytearray()

    def _check_lines(self, chunk: bytes) -> None:
        """Is there a line longer than ``max_line`` (the current one included so far)?

        Jumps from line start to the last CRLF within ``max_line + 2`` octets of
        it: lines skipped over are shorter, so a window without any CRLF is
        exactly a line too long, and a chunk of short lines costs one ``rfind``
        per ``max_line`` octets, not one step per line.
        """
        limit = self.max_line
        start = -self._line  # where the current line began, relative to this chunk
        n = len(chunk)
        while start + limit + 2 <= n:
            end = chunk.rfind(b"\r\n", max(start, 0), start + limit + 2)
            if end < 0:
                self.line_too_long = True
                return
            start = end + 2
        tail = chunk.rfind(b"\r\n", max(start, 0))
        self._line = n - (tail + 2 if tail >= 0 else start)
        if self._line > limit:
            self.line_too_long = True


def wire_data(body: bytes, *, normalised: bool = False) -> bytes:
    """The DATA payload for a message: CRLF lines, dot-stuffed, ending in ``.CRLF``.

    ``normalised``: the body is in the stored form already (what
    :class:`DataReceiver` and the DSN builder produce: CRLF lines only), so the
    line endings are not scanned again; the stuffing is one ``bytes.replace``.
    Otherwise bare CRs and LFs become CRLF first (:func:`normalise_line_endings`).
    """
    if not normalised:
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

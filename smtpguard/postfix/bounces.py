"""Incoming bounces seen by the milter: the message kept, the header written.

Pure parts of the milter's end-of-message step, so they can be tested without
libmilter:

* :class:`MessageCopy` rebuilds the message from the milter's header and body
  events, up to the classifier's own input limit (it reads no further);
* :func:`bounce_header` is the ``X-Smtpguard-Bounce:`` value for one verdict.

What a returned message proves (``dsn-verified`` only with a signed return path
naming the reported recipient, ``arf`` only when tied to our send, else the
``-unverified`` kinds that suppress nobody) is decided where the intake listener
decides it: :func:`smtpguard.intake.returned.judge`.
"""

from __future__ import annotations

import re

from smtpguard.classify.message import MAX_BYTES
from smtpguard.classify.verdict import Verdict

#: The header the milter adds to an incoming bounce (and removes from one that arrives with it).
HEADER = "X-Smtpguard-Bounce"
#: Verdicts described in headers per message; a bounce listing more recipients is rare.
MAX_HEADERS = 10
_FIELD = 100
_UNSAFE = re.compile(r"[^\x21-\x7e]")


class MessageCopy:
    """The message as the milter receives it (header fields, then body chunks), bounded.

    Postfix passes each header field's value with its folding as ``\\n`` plus
    whitespace; the copy restores CRLF line ends, and the empty line before the
    body (no end-of-headers event is asked for: one event less). Input past
    :data:`~smtpguard.classify.message.MAX_BYTES` is dropped: the classifier
    reads no more than that anyway, and the milter's memory per session stays bounded.
    """

    def __init__(self, limit: int = MAX_BYTES) -> None:
        self.limit = limit
        self.size = 0
        self._parts: list[bytes] = []
        self._in_body = False

    def header(self, name: str, value: str) -> None:
        folded = value.replace("\n", "\r\n")
        self._add(f"{name}: {folded}\r\n".encode("utf-8", "surrogateescape"))

    def body(self, chunk: bytes) -> None:
        self._end_of_headers()
        self._add(chunk)

    def _end_of_headers(self) -> None:
        if not self._in_body:
            self._in_body = True
            self._add(b"\r\n")

    def _add(self, data: bytes) -> None:
        room = self.limit - self.size
        if room > 0:
            data = data[:room]
            self._parts.append(data)
            self.size += len(data)

    def data(self) -> bytes:
        self._end_of_headers()
        return b"".join(self._parts)


def bounce_header(verdict: Verdict, evidence: str, outcome: str = "") -> str:
    """``bob@example.com; bounce=hard; reason=userunknown; status=5.1.1; evidence=...``.

    Every part comes from the bounce (hostile): only printable ASCII without
    spaces is kept, each part at most 100 characters, so the header is one
    short line that nothing can fold or inject into.
    """
    parts = [
        _safe(verdict.recipient) or "unknown",
        f"bounce={_safe(verdict.bounce)}",
        f"reason={_safe(verdict.reason)}",
    ]
    if verdict.status:
        parts.append(f"status={_safe(verdict.status)}")
    parts.append(f"evidence={evidence}")
    if outcome:
        parts.append(f"outcome={_safe(outcome)}")
    return "; ".join(parts)


def _safe(text: str) -> str:
    return _UNSAFE.sub("", text)[:_FIELD]

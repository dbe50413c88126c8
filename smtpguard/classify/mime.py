"""A small, linear MIME splitter that builds the stdlib's own ``compat32`` Message objects.

Why not ``email.message_from_bytes``: its feed parser walks the input one line at a time in
Python and costs about 1 ms per bounce, over half of the classifier's time. Bounces need
far less: header fields, the multipart tree and the payload strings. This module finds them
with ``str.find`` on the decoded text and fills :class:`email.message.Message` objects the
way the ``compat32`` parser does (same header values, same payload strings, a list of
sub-messages for ``message/*`` parts and one header block per ``message/delivery-status``
field group, RFC 3464 section 2.1), so every caller keeps the stdlib API.

Bounded: at most :data:`MAX_PARTS` parts and :data:`MAX_DEPTH` levels are split; deeper or
further content stays in the enclosing part's payload, unsplit. Total: any input gives a
Message (malformed header lines end the header section, as in the stdlib parser).
"""

from __future__ import annotations

import re
from email import policy as email_policy
from email.message import Message

MAX_PARTS = 256
MAX_DEPTH = 8

_COMPAT32 = email_policy.compat32
_BOUNDARY_RE = re.compile(r"""boundary\s{0,5}=\s{0,5}(?:"([^"]{1,200})"|([^;\s"]{1,200}))""", re.I)


def parse(raw: bytes) -> Message:
    """``raw`` (bytes) -> Message, like ``email.message_from_bytes(raw, policy=compat32)``."""
    text = raw.decode("ascii", "surrogateescape")
    budget = [MAX_PARTS]
    return _message(text, 0, budget)


def parse_headers(text: str) -> Message:
    """A header block as text -> Message with those headers (``text/rfc822-headers``)."""
    msg = Message(policy=_COMPAT32)
    head, body = _split_head(text)
    rest = _headers(head, msg)
    msg._payload = rest + body
    return msg


def _split_head(text: str) -> tuple[str, str]:
    """(header section, body): the body starts after the first empty line."""
    if text.startswith(("\n", "\r\n")):
        return "", text[1:] if text[0] == "\n" else text[2:]
    m = _BLANK_LINE_RE.search(text)
    if m is None:
        return text, ""
    return text[: m.start() + 1], text[m.end() :]


# The first empty line (LF or CRLF): one scan, where two str.find calls scan twice.
_BLANK_LINE_RE = re.compile(r"\n\r?\n")
#: Where a part's {lower-case header name: first value} dict is kept (shared with the
#: detectors' per-part cache in formats._common, so headers are read once).
CACHE_KEY = "_smtpguard_cache"


# One header field with its continuation lines (RFC 5322 2.2.3 folding), matched in C: the
# name (no blanks, no colon, as compat32 accepts it), then the value to the end of the field.
_FIELD_RE = re.compile(r"([^\s:]{1,200}):[ \t]*([^\n]*(?:\n[ \t][^\n]*)*)\n?")


def _headers(head: str, msg: Message) -> str:
    """Fill ``msg``'s headers from ``head``; return text that turned out to be body.

    The values are what ``compat32`` stores (see :func:`header_fields`); the
    {lower-case name: first value} dict the detectors read is built in the same pass
    (:data:`CACHE_KEY`).
    """
    if head.startswith("From "):
        eol = head.find("\n")
        msg.set_unixfrom(head[: eol if eol >= 0 else len(head)].rstrip("\r"))
        head = head[eol + 1 :] if eol >= 0 else ""
    items, rest = header_fields(head)
    # Later fields first, so that the first field of each name is the one kept.
    first = {name.lower(): value for name, value in reversed(items)}
    msg._headers = items  # the compat32 parser stores exactly these (name, value) pairs
    msg.__dict__[CACHE_KEY] = {"headers": first}
    return rest


def header_fields(head: str) -> tuple[list[tuple[str, str]], str]:
    """(fields, text that turned out to be body) of a header section.

    The values are what ``compat32`` stores: the text after the colon with leading blanks
    dropped, continuation lines kept, the final line break removed. A line that is no
    header field ends the section, as in the stdlib parser (the rest is body, a defect).
    Where the section ends is found with one regex search (:func:`section_end`) and the
    fields up to there with one ``findall``: no Python step per field.
    """
    end = section_end(head)
    if end is None:
        return _header_fields_stepwise(head)
    items: list[tuple[str, str]] = _FIELD_RE.findall(head, 0, end)
    if "\r" in head:
        items = [(n, v.rstrip("\r\n")) if v[-1:] == "\r" else (n, v) for n, v in items]
    return items, head[end:]


# A field's first line: its name (as _FIELD_RE reads it) and the colon.
_NAME_COLON_RE = re.compile(r"[^\s:]{1,200}:")
# A line end followed by a line that neither continues a field nor starts one: where the
# section ends (unless that line is blank, which the stepwise reader skips).
_SECTION_END_RE = re.compile(r"\n(?!\Z|[ \t]|[^\s:]{1,200}:)")


def section_end(head: str) -> int | None:
    """Where :func:`_header_fields_stepwise` stops reading ``head`` (what follows is body),
    found in C; None when it cannot be told this way (a first line, or the first line that
    is no field, that is blank or starts with a blank: the stepwise reader skips some)."""
    if not head:
        return 0
    if not _NAME_COLON_RE.match(head):
        return None
    m = _SECTION_END_RE.search(head)
    if m is None:
        return len(head)
    start = m.start() + 1
    eol = head.find("\n", start)
    if not head[start : eol if eol >= 0 else len(head)].strip():
        return None
    return start


def _header_fields_stepwise(head: str) -> tuple[list[tuple[str, str]], str]:
    """:func:`header_fields` one field at a time (any header section, however odd)."""
    items: list[tuple[str, str]] = []
    pos = 0
    end = len(head)
    match = _FIELD_RE.match
    while pos < end:
        m = match(head, pos)
        if m is None:
            eol = head.find("\n", pos)
            if not head[pos : eol if eol >= 0 else end].strip():
                pos = eol + 1 if eol >= 0 else end
                continue
            return items, head[pos:]
        name, value = m.group(1, 2)
        if value[-1:] == "\r":
            value = value.rstrip("\r\n")
        items.append((name, value))
        pos = m.end()
    return items, ""


def _ctype(msg: Message) -> tuple[str, str]:
    """(content type, raw Content-Type value) with RFC 2045's text/plain default."""
    raw = msg.__dict__[CACHE_KEY]["headers"].get("content-type", "")
    ctype = raw.split(";", 1)[0].strip().lower()
    if ctype.count("/") != 1:
        ctype = "text/plain"
    return ctype, raw


def _message(text: str, depth: int, budget: list[int]) -> Message:
    msg = Message(policy=_COMPAT32)
    head, body = _split_head(text)
    extra = _headers(head, msg)
    if extra:
        body = extra + ("\n" if body else "") + body
    ctype, raw_ctype = _ctype(msg)
    budget[0] -= 1
    if depth >= MAX_DEPTH or budget[0] <= 0:
        msg._payload = body
        return msg
    if ctype.startswith("multipart/"):
        m = _BOUNDARY_RE.search(raw_ctype)
        boundary = (m.group(1) or m.group(2)) if m else ""
        if boundary:
            _multipart(msg, body, boundary, depth, budget)
            return msg
        msg._payload = body
        return msg
    if ctype == "message/delivery-status" or ctype == "message/global-delivery-status":
        return FieldsMessage.like(msg, body)
    if ctype.startswith("message/") and ctype not in ("message/external-body",):
        # The returned original: usually only a few of its headers are read (Message-ID,
        # Return-Path, From, To), so it is split when something first needs more.
        msg._payload = [LazyMessage(body, depth + 1, budget)]
        return msg
    msg._payload = body
    return msg


def field_groups(body: str) -> list[str]:
    """RFC 3464 2.1: field groups separated by empty lines (at most MAX_PARTS)."""
    out: list[str] = []
    cur: list[str] = []
    for line in body.splitlines(keepends=True):
        if line.strip():
            cur.append(line)
        elif cur:
            out.append("".join(cur))
            cur = []
            if len(out) >= MAX_PARTS:
                return out
    if cur:
        out.append("".join(cur))
    return out


def _block(text: str) -> Message:
    msg = Message(policy=_COMPAT32)
    rest = _headers(text, msg)
    msg._payload = rest
    return msg


def _multipart(msg: Message, body: str, boundary: str, depth: int, budget: list[int]) -> None:
    """Split ``body`` on ``--boundary`` delimiter lines (RFC 2046 5.1.1)."""
    delim = "--" + boundary
    parts: list[Message] = []
    pos = 0
    starts: list[tuple[int, int, bool]] = []  # (line start, line end, is closing)
    n = len(body)
    while len(starts) <= MAX_PARTS:
        at = body.find(delim, pos)
        if at < 0:
            break
        if at and body[at - 1] != "\n":
            pos = at + 1
            continue
        eol = body.find("\n", at)
        eol = n if eol < 0 else eol + 1
        tail = body[at + len(delim) : eol].rstrip("\r\n")
        closing = tail.startswith("--")
        if tail.strip(" \t-") and not closing:
            pos = at + 1  # a longer boundary that starts with ours
            continue
        starts.append((at, eol, closing))
        pos = eol
        if closing:
            break
    if not starts:
        msg._payload = body
        return
    msg.preamble = _strip_eol(body[: starts[0][0]]) or None
    for k, (_at, eol, closing) in enumerate(starts):
        if closing:
            msg.epilogue = body[eol:] or ""
            break
        end = starts[k + 1][0] if k + 1 < len(starts) else n
        chunk = _strip_eol(body[eol:end])
        if budget[0] <= 0:
            break
        parts.append(_message(chunk, depth + 1, budget))
    msg._payload = parts


def _strip_eol(chunk: str) -> str:
    """The CRLF before a delimiter belongs to the delimiter (RFC 2046 5.1.1)."""
    if chunk.endswith("\r\n"):
        return chunk[:-2]
    if chunk.endswith("\n"):
        return chunk[:-1]
    return chunk


class FieldsMessage(Message):
    """A ``message/delivery-status`` part: RFC 3464 field groups, kept as text.

    The detectors read :attr:`fields_text` with a small field parser
    (:func:`smtpguard.classify.formats._fields.part_blocks`); the compat32 view (one
    Message per field group) is built only if something asks for the payload.
    """

    def __init__(self, text: str) -> None:
        super().__init__(policy=_COMPAT32)
        self.fields_text = text
        self.__dict__["_p"] = None

    @classmethod
    def like(cls, msg: Message, text: str) -> FieldsMessage:
        """A FieldsMessage with ``msg``'s headers and ``text`` as its body."""
        part = cls(text)
        part._headers = msg._headers
        part._unixfrom = msg._unixfrom
        part.__dict__[CACHE_KEY] = msg.__dict__[CACHE_KEY]
        return part

    @property  # type: ignore[override]
    def _payload(self) -> object:
        found = self.__dict__["_p"]
        if found is None:
            found = self.__dict__["_p"] = [_block(b) for b in field_groups(self.fields_text)]
        return found

    @_payload.setter
    def _payload(self, value: object) -> None:
        self.__dict__["_p"] = value


class LazyMessage(Message):
    """A Message whose text is split on first use of its headers or payload.

    :meth:`quick_header` answers single-header questions from the raw header block without
    splitting anything (a case-insensitive ``str.find``), which is all most bounces need of
    the returned original.
    """

    def __init__(self, text: str, depth: int, budget: list[int]) -> None:
        super().__init__(policy=_COMPAT32)
        self._lazy: tuple[str, int, list[int]] | None = (text, depth, budget)
        self._head_low = ""

    def _load(self) -> None:
        lazy = self._lazy
        if lazy is None:
            return
        self._lazy = None
        text, depth, budget = lazy
        real = _message(text, depth, budget)
        self.__dict__["_h"] = real._headers
        self.__dict__["_p"] = real._payload
        self.__dict__.setdefault(CACHE_KEY, {})["headers"] = real.__dict__[CACHE_KEY]["headers"]
        self.preamble, self.epilogue = real.preamble, real.epilogue
        self._unixfrom = real._unixfrom

    @property  # type: ignore[override]
    def _headers(self) -> list[tuple[str, str]]:
        self._load()
        return self.__dict__.get("_h", [])

    @_headers.setter
    def _headers(self, value: list[tuple[str, str]]) -> None:
        self.__dict__["_h"] = value

    @property  # type: ignore[override]
    def _payload(self) -> object:
        self._load()
        return self.__dict__.get("_p")

    @_payload.setter
    def _payload(self, value: object) -> None:
        self.__dict__["_p"] = value

    def quick_header(self, name: str) -> str | None:
        """The first ``name:`` field's raw value (folded lines joined), or None."""
        lazy = self._lazy
        if lazy is None:
            return self.get(name)
        if not self._head_low:
            head, _ = _split_head(lazy[0])
            self._head_low = "\n" + head.lower()
            self._head = "\n" + head
        key = "\n" + name.lower() + ":"
        at = self._head_low.find(key)
        if at < 0:
            return None
        start = at + len(key)
        end = self._head.find("\n", start)
        while end >= 0 and self._head[end + 1 : end + 2] in (" ", "\t"):
            end = self._head.find("\n", end + 1)
        value = self._head[start : end if end >= 0 else len(self._head)]
        return value.strip(" \t\r\n")

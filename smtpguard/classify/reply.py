"""Split an SMTP reply into reply code, enhanced status and text.

RFC 5321 section 4.2: a reply is a three-digit code, then a space (last line) or a
hyphen (continuation line), then text; RFC 2034 / RFC 3463 put the enhanced status
code at the start of the text of every line. Bounces also quote replies with a
diagnostic type in front (RFC 3464 section 2.3.6: ``smtp; 550 5.1.1 ...``), so that
prefix is accepted too.
"""

from __future__ import annotations

import re

#: Replies longer than this are cut before parsing (a hostile server can send megabytes).
MAX_REPLY = 8192

_LINE_RE = re.compile(r"([2-5]\d\d)(?:([ -])(.*)|$)", re.DOTALL)
_STATUS_RE = re.compile(r"([245])\.(\d{1,3})\.(\d{1,3})(?![\d.])")
_TYPE_RE = re.compile(r"(?:smtp|x-[a-z0-9-]{1,40}|unknown)\s{0,5};\s*", re.IGNORECASE)


def parse_status(text: str) -> tuple[str, str]:
    """(status, rest) when ``text`` starts with an RFC 3463 status, else ("", text)."""
    m = _STATUS_RE.match(text)
    if not m:
        return "", text
    return m.group(0), text[m.end() :].lstrip()


def parse_reply(text: str) -> tuple[str, str, str]:
    """``("550", "5.1.1", "<a@b.example>: User unknown")`` from a one- or multi-line reply.

    Continuation lines ("550-5.1.1 ...\\r\\n550 5.1.1 ...") are joined with a space and
    their repeated code and status are dropped. Text that is not a reply at all comes
    back as ``("", "", text)``: the caller still classifies it by wording.
    """
    text = text[:MAX_REPLY].strip()
    m = _TYPE_RE.match(text)
    if m:
        text = text[m.end() :]
    code = status = ""
    parts: list[str] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        lm = _LINE_RE.match(line)
        if lm and (not code or lm.group(1) == code):
            code = lm.group(1)
            rest = (lm.group(3) or "").strip()
            st, rest = parse_status(rest)
            if st and not status:
                status = st
            if rest:
                parts.append(rest)
        else:
            parts.append(line)
    if not code and parts:
        # "5.1.1 User unknown" with no reply code in front.
        status, parts[0] = parse_status(parts[0])
    return code, status, " ".join(p for p in parts if p)

"""RFC 3463 enhanced status codes and RFC 5321 reply codes: the syntax, written once.

``class.subject.detail``: class 2, 4 or 5, then one to three digits twice
(RFC 3463 section 2); a reply code is three digits, the first 2-5 (RFC 5321
section 4.2). Everything outside the classifier that checks, finds or inserts
one uses these.
"""

from __future__ import annotations

import re

#: An enhanced status code (no anchoring: use fullmatch, match or search).
STATUS = re.compile(r"[245]\.\d{1,3}\.\d{1,3}")
#: A reply code.
REPLY_CODE = re.compile(r"[2-5]\d\d")


def is_status(text: str) -> bool:
    """``"5.1.1"`` -> True; anything else (``"5.1"``, ``"6.0.0"``, ``" 5.1.1"``) -> False."""
    return STATUS.fullmatch(text) is not None


def is_reply_code(text: str) -> bool:
    return REPLY_CODE.fullmatch(text) is not None


def leading_status(text: str, pos: int = 0) -> str:
    """The status that starts ``text`` at ``pos`` as a word of its own, else ``""``.

    ``"2.0.0 Ok: queued"`` -> ``"2.0.0"``; ``"2.0.0.1 x"`` and ``"Ok"`` -> ``""``.
    """
    m = STATUS.match(text, pos)
    if m is None or (m.end() < len(text) and text[m.end()] != " "):
        return ""
    return m.group(0)


def is_reply_with_status(text: str) -> bool:
    """``"550 5.1.1"``: a reply code, one space and an enhanced status, nothing else."""
    code, sep, status = text.partition(" ")
    return bool(sep) and is_reply_code(code) and is_status(status)

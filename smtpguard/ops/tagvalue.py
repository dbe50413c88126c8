"""Tag=value lists, the syntax DKIM key records (RFC 6376 section 3.2) and DMARC
records (RFC 7489 section 6.4) share: ``v=DKIM1; k=rsa; p=MIGf...``."""

from __future__ import annotations

import re

_TAG_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
#: RFC 6376 section 3.2 tval: printable ASCII except ";" (and whitespace only inside).
_TAG_VALUE = re.compile(r"[\x21-\x3a\x3c-\x7e]*(?:[ \t\r\n]+[\x21-\x3a\x3c-\x7e]+)*")


def parse_tags(text: str) -> list[tuple[str, str]]:
    """``[("v", "DKIM1"), ("p", "MIGf...")]`` in record order.

    Raises ValueError naming the problem: a tag without ``=``, a bad tag name,
    an invalid character in a value, or a tag given twice (RFC 6376 section 3.2:
    duplicate names MUST NOT occur). A trailing ``;`` is allowed.
    """
    out: list[tuple[str, str]] = []
    seen: set[str] = set()
    parts = text.split(";")
    if parts and not parts[-1].strip():
        parts.pop()
    for part in parts:
        if "=" not in part:
            raise ValueError(f"{part.strip()!r} is not tag=value")
        name, value = (x.strip(" \t\r\n") for x in part.split("=", 1))
        if not _TAG_NAME.fullmatch(name):
            raise ValueError(f"invalid tag name {name!r}")
        if not _TAG_VALUE.fullmatch(value):
            raise ValueError(f"invalid character in the value of {name}=")
        if name in seen:
            raise ValueError(f"tag {name}= given twice")
        seen.add(name)
        out.append((name, value))
    return out

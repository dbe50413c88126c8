"""RFC 3464 / RFC 5965 "Name: value" field blocks, read from parsed parts or from raw text.

The stdlib parser already splits ``message/delivery-status`` into header blocks, but real
DSNs also arrive base64-encoded, as ``text/plain``, or pasted into a plain body; those are
read here with a small linear line parser (RFC 3464 §2.1: blocks separated by blank lines,
fields with RFC 5322 folding).
"""

from __future__ import annotations

import re
from email.message import Message

from smtpguard.classify.formats._common import collapse, part_text, unescape
from smtpguard.classify.mime import field_groups, header_fields

Fields = dict[str, str]

_FIELD_RE = re.compile(r"([A-Za-z][A-Za-z0-9-]{0,60})[ \t]*:[ \t]*(.*)")
MAX_BLOCKS = 200


def parse_blocks(text: str) -> list[Fields]:
    """Blocks of fields (lower-cased names, first occurrence wins, folded lines joined)."""
    blocks: list[Fields] = []
    cur: Fields = {}
    last = ""
    for line in text.split("\n"):
        if not line.strip():
            if cur:
                blocks.append(cur)
                if len(blocks) >= MAX_BLOCKS:
                    return blocks
                cur = {}
            last = ""
            continue
        if line[0] in " \t" and last:
            cur[last] = cur[last] + " " + line.strip()
            continue
        m = _FIELD_RE.match(line)
        if m:
            name = m.group(1).lower()
            if name == "final-recipient" and name in cur:
                # Blocks run together without the blank line §2.1 asks for (AOL does it).
                blocks.append(cur)
                cur = {}
            if name not in cur:
                cur[name] = m.group(2).strip()
                last = name
            else:
                last = ""
        else:
            last = ""
    if cur:
        blocks.append(cur)
    return blocks


def _from_message(block: Message) -> list[Fields]:
    out: list[Fields] = []
    cur: Fields = {}
    for k, v in list(block.raw_items())[:500]:
        k = k.lower()
        if k == "final-recipient" and k in cur:
            out.append(cur)
            cur = {}
        if k not in cur:
            cur[k] = collapse(unescape(str(v)), 2000)
    if cur:
        out.append(cur)
    return out


def _from_text(text: str) -> list[Fields] | None:
    """Field blocks of a delivery-status body kept as text, exactly as :func:`_from_message`
    reads the compat32 blocks (first occurrence wins, a repeated Final-Recipient starts a
    new block); None when the first group has a line that is no field (then the compat32
    view decides)."""
    blocks: list[Fields] = []
    for n, group in enumerate(field_groups(text)[:MAX_BLOCKS]):
        items, rest = header_fields(group)
        if n == 0 and rest:
            return None
        cur: Fields = {}
        for k, v in items[:500]:
            k = k.lower()
            if k == "final-recipient" and k in cur:
                blocks.append(cur)
                cur = {}
            if k not in cur:
                cur[k] = _clean(v)
        if cur:
            blocks.append(cur)
    return blocks


def _clean(value: str) -> str:
    """``collapse(unescape(value), 2000)`` without the work when ``value`` is already one
    clean line (printable ASCII, no double blank: most DSN fields), where it is the value
    less its edge blanks."""
    if len(value) < 2000 and value.isascii() and value.isprintable() and "  " not in value:
        return value.strip(" ")
    return collapse(unescape(value), 2000)


def part_blocks(part: Message) -> list[Fields]:
    """Field blocks of a delivery-status / feedback-report part, however it was encoded."""
    text = getattr(part, "fields_text", None)
    if isinstance(text, str):
        found = _from_text(text)
        if found:
            return found
    payload = part._payload
    if isinstance(payload, list):
        blocks = [
            fields
            for b in payload[:MAX_BLOCKS]
            if isinstance(b, Message)
            for fields in _from_message(b)
        ]
        # A single sub-message (message/feedback-report) or a broken DSN may also carry
        # a body with more fields; append those.
        for b in payload[:1]:
            if isinstance(b, Message) and isinstance(b._payload, str) and b._payload:
                # decode=True gives the raw bytes: compat32's str view would have read
                # 8-bit text (RFC 6533 utf-8 addresses) as ASCII and replaced it.
                raw = b.get_payload(decode=True)
                text = raw[:65536].decode("utf-8", "replace") if isinstance(raw, bytes) else ""
                blocks.extend(parse_blocks(text))
        if any(blocks):
            return [b for b in blocks if b]
    return parse_blocks(part_text(part))

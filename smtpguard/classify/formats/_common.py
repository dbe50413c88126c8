"""Helpers shared by the bounce format detectors: bounded text access and field extraction.

Bounces come from strangers, so every helper here is bounded: text is decoded from at most
:data:`PART_LIMIT` bytes of a part, walks stop after :data:`MAX_PARTS` parts or
:data:`MAX_DEPTH` levels, and every regex is linear (no nested quantifiers) so a hostile
1 MB line costs milliseconds. Results are cached on the message object, because several
detectors look at the same text and re-decoding it would cost more than the detection.
"""

from __future__ import annotations

import binascii
import quopri
import re
from collections.abc import Callable
from email.message import Message
from typing import TypeVar

from smtpguard.classify.mime import CACHE_KEY, parse_headers
from smtpguard.classify.verdict import Failure, Stage

T = TypeVar("T")

#: Bytes of one part's body that detectors ever look at (bounce explanations are short;
#: what follows is the returned original message).
PART_LIMIT = 64 * 1024
#: Parts visited in one walk, and nesting levels followed (deep MIME is an attack, not mail).
MAX_PARTS = 64
MAX_DEPTH = 8
#: Longest diagnostic text kept on a Failure.
DIAG_LIMIT = 1000

# An addr-spec good enough for bounce bodies: no quoted local parts, a dotted domain.
# Possessive-free but linear: each class is disjoint from '@'.
ADDR_RE = re.compile(
    r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]{1,128}@[A-Za-z0-9-]{1,63}(?:\.[A-Za-z0-9-]{1,63}){1,10}"
)
# The same with RFC 6531 UTF-8 allowed, for fields typed "utf-8;" (RFC 6533 section 3)
# only: in free text, UTF-8 prose written against an address would be swallowed.
ADDR_UTF8_RE = re.compile(
    r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~\u0080-\U0010ffff-]{1,128}"
    r"@[A-Za-z0-9\u0080-\U0010ffff-]{1,63}(?:\.[A-Za-z0-9\u0080-\U0010ffff-]{1,63}){1,10}"
)
# RFC 3463 enhanced status code: class.subject.detail; not part of an IP address or version
# (not preceded by a digit or a dot). The "not preceded by" lookbehind sits after the first
# character, not in front: a leading lookbehind disables the engine's scan for the first
# character and costs 4x.
STATUS_RE = re.compile(r"([245])(?<![0-9.][245])\.(\d{1,3})\.(\d{1,3})(?!\.?\d)")
# RFC 5321 failure reply code (4xx/5xx) as MTAs quote it: "550 ", "550-", "550:", not glued
# to a word, a number or a path. 2xx only counts when paired with a status
# (CODE_STATUS_RE): bare 2xx numbers are sizes.
CODE_RE = re.compile(r"([45](?<![0-9.\-/:#=_A-Za-z][45])[0-5]\d)(?=[ \-:]|$)(?!:\d)")
# A reply code directly followed by its enhanced status: the most trustworthy pairing.
CODE_STATUS_RE = re.compile(
    r"([245](?<![0-9.\-/:#=_A-Za-z][245])[0-5]\d)[ \-']{1,3}([245]\.\d{1,3}\.\d{1,3})(?!\.?\d)"
)
WS_RE = re.compile(r"\s+")

# SMTP command names as MTAs quote them; "DATA"/"RCPT" only in capitals ("your data" is
# prose). Plain substring search: an IGNORECASE alternation costs ~70 us per text.
_STAGE_WORDS = (
    ("rcpt to", "rcpt"),
    # qmail states the stage in words: "Connected to 192.0.2.1 but sender was rejected.",
    # "192.0.2.1 does not like recipient.", "... failed after I sent the message."
    ("sender was rejected", "mail"),
    ("does not like recipient", "rcpt"),
    ("failed after i sent the message", "eom"),
    ("mail from", "mail"),
    ("end of data", "eom"),
    ("after data", "eom"),
    ("bdat", "eom"),
    ("helo", "helo"),
    ("ehlo", "helo"),
)
# "RCPT" / "DATA" as whole words (the "not after a word character" check follows the word,
# so the engine scans for the literal fast).
_STAGE_CAPS_RE = re.compile(r"(?:RCPT|DATA)(?<!\wRCPT)(?<!\wDATA)\b(?!:)")


def contains_any(text: str, needles: tuple[str, ...]) -> bool:
    """Does ``text`` contain one of ``needles``? A plain loop: ``any(<generator>)`` costs a
    generator and a resume per needle, and these checks run several times a message."""
    for needle in needles:  # noqa: SIM110
        if needle in text:
            return True
    return False


def collapse(text: str, limit: int = DIAG_LIMIT) -> str:
    """One line, single spaces, at most ``limit`` characters (``str.split`` runs in C;
    ``re.sub(r"\\s+")`` costs ten times as much)."""
    return " ".join(text[: limit * 4].split())[:limit]


def walk(msg: Message) -> list[tuple[int, Message, str]]:
    """Depth-first (depth, part, content type) triples, bounded in count and depth.

    Computed once per message and cached: every detector walks the same tree, and
    ``get_content_type()`` is surprisingly expensive in the stdlib.
    """
    c = cache(msg)
    found = c.get("walk")
    if found is not None:
        return found  # type: ignore[return-value]
    out: list[tuple[int, Message, str]] = []
    stack: list[tuple[int, Message]] = [(0, msg)]
    while stack and len(out) < MAX_PARTS:
        depth, part = stack.pop()
        ctype = content_type(part)
        out.append((depth, part, ctype))
        if depth >= MAX_DEPTH or (ctype.startswith("message/") and depth > 0):
            # The returned original is read through original_message(), never walked:
            # its own parts are not the bounce's.
            continue
        payload = part._payload  # the stored payload: get_payload() re-reads headers
        if isinstance(payload, list):
            kids = [p for p in payload[:MAX_PARTS] if isinstance(p, Message)]
            stack.extend((depth + 1, p) for p in reversed(kids))
    c["walk"] = out
    return out


def content_type(part: Message) -> str:
    """``part.get_content_type()`` from the cached headers (RFC 2045 §5.2 default)."""
    value = _headers(part).get("content-type")
    if value is None:
        # No Content-Type field: the stdlib answers its default type without a lookup
        # (asking it would split a lazily read header section for nothing).
        return part.get_default_type()
    ctype = value.split(";", 1)[0].strip().lower()
    if ctype.count("/") != 1 or " " in ctype:
        try:
            return part.get_content_type()
        except Exception:
            return "text/plain"
    return ctype


def cache(msg: Message) -> dict[str, object]:
    c = msg.__dict__.get(CACHE_KEY)
    if c is None:
        c = {}
        msg.__dict__[CACHE_KEY] = c
    return c  # type: ignore[return-value]


_CHARSET_RE = re.compile(r"charset\s*=\s*[\"']?([A-Za-z0-9._:+-]{1,40})", re.IGNORECASE)


def _raw(payload: str) -> bytes:
    """Back to bytes the way compat32 does it: undecodable input bytes were kept as
    surrogates; text that came in as str (parsestr) is escaped, not lost."""
    try:
        return payload.encode("ascii", "surrogateescape")
    except UnicodeEncodeError:
        return payload.encode("raw-unicode-escape")


def _body_bytes(part: Message) -> bytes:
    """The part's body with its Content-Transfer-Encoding undone, at most ~PART_LIMIT bytes.

    The same decoding as ``get_payload(decode=True)`` for the common encodings, but on a
    bounded slice and with the cached headers (the stdlib re-scans every header per call);
    anything unusual goes to the stdlib.
    """
    # The stored payload, not get_payload(): for 8-bit bodies compat32 keeps the raw bytes
    # as surrogates and get_payload() would already charset-decode them (lossily).
    payload = part._payload  # type: ignore[attr-defined]
    if not isinstance(payload, str):
        return b""
    cte = _headers(part).get("content-transfer-encoding", "").strip().lower()
    if cte in ("", "7bit", "8bit", "binary"):
        return _raw(payload[:PART_LIMIT])
    if cte == "base64":
        compact = "".join(payload[: PART_LIMIT * 2].split())
        compact = compact[: len(compact) - len(compact) % 4]
        try:
            return binascii.a2b_base64(compact)[:PART_LIMIT]
        except (binascii.Error, ValueError):
            pass
    if cte == "quoted-printable":
        try:
            return quopri.decodestring(_raw(payload[: PART_LIMIT * 3]))[:PART_LIMIT]
        except ValueError:
            pass
    try:
        decoded = part.get_payload(decode=True)
    except Exception:
        decoded = None
    if isinstance(decoded, bytes):
        return decoded[:PART_LIMIT]
    return payload[:PART_LIMIT].encode("utf-8", "replace")


def part_text(part: Message) -> str:
    """The decoded text of a leaf part (transfer encoding and charset), first PART_LIMIT bytes."""
    c = cache(part)
    t = c.get("text")
    if t is None:
        try:
            data = _body_bytes(part)
        except (UnicodeError, ValueError):
            data = b""
        m = _CHARSET_RE.search(_headers(part).get("content-type", ""))
        charset = m.group(1).lower() if m else "utf-8"
        try:
            t = data.decode(charset, "replace")
        except (LookupError, ValueError):
            t = data.decode("latin-1", "replace")
        t = t.replace("\r\n", "\n").replace("\r", "\n")
        c["text"] = t
    return t  # type: ignore[return-value]


def _headers(msg: Message) -> dict[str, str]:
    """{lower-case name: first value} for one part, built in one pass and cached.

    ``Message.get`` scans every header and lower-cases each name per call; detectors ask
    for a dozen headers of messages that carry fifty Received lines.
    """
    c = msg.__dict__.get(CACHE_KEY)  # cache(msg), inlined: this runs a dozen times a part
    if c is None:
        c = msg.__dict__[CACHE_KEY] = {}
    found = c.get("headers")
    if found is None:
        found = {}
        try:
            for name, value in msg.raw_items():
                key = name.lower()
                if key not in found:
                    found[key] = value if isinstance(value, str) else str(value)
        except Exception:
            found = {}
        c["headers"] = found
    return found  # type: ignore[return-value]


def unescape(v: str) -> str:
    """compat32 keeps 8-bit bytes of headers and message/* bodies as surrogates:
    read them as the UTF-8 they almost always are (RFC 6532), else as replacements."""
    if v.isascii():
        return v
    return v.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def header(msg: Message, name: str) -> str:
    """A header as one clean line ('' when missing or unreadable)."""
    quick = getattr(msg, "quick_header", None)
    v = quick(name) if quick is not None else _headers(msg).get(name.lower())
    if not v:
        return ""
    if len(v) < 200 and v.isascii() and v.isprintable() and "  " not in v:
        return v.strip(" ")  # one clean line already (most header values)
    return collapse(unescape(v), 2000)


def first_text(msg: Message) -> str:
    """The human-readable bounce explanation: the first text part that is not the original."""
    c = cache(msg)
    t = c.get("first_text")
    if t is None:
        t = ""
        for _depth, part, ctype in walk(msg):
            if ctype.startswith("message/"):
                break
            if part.is_multipart():
                continue
            if ctype in ("text/plain", "text/html", "text/enriched") or (
                part is msg or ctype.startswith("multipart/")
            ):
                t = part_text(part)
                if ctype == "text/html":
                    t = html_to_text(t)
                if t.strip():
                    break
        c["first_text"] = t
    return t  # type: ignore[return-value]


_TAG_RE = re.compile(r"<(?:br|/p|/div|/tr|/li|p|div|tr)\b[^>]{0,200}>", re.IGNORECASE)
_ANYTAG_RE = re.compile(r"<[^<>]{0,500}>")
_ENT = {"&lt;": "<", "&gt;": ">", "&amp;": "&", "&nbsp;": " ", "&quot;": '"', "&#39;": "'"}
_ENT_RE = re.compile("|".join(_ENT))


def html_to_text(html: str) -> str:
    """Crude, linear HTML flattening: line breaks for block tags, tags dropped, basic entities."""
    t = _TAG_RE.sub("\n", html)
    t = _ANYTAG_RE.sub("", t)
    return _ENT_RE.sub(lambda m: _ENT[m.group(0)], t)


def original_message(msg: Message) -> Message | None:
    """The returned original message (message/rfc822 part or text/rfc822-headers), if attached."""
    c = cache(msg)
    if "orig" in c:
        return c["orig"]  # type: ignore[return-value]
    found: Message | None = None
    for _depth, part, ct in walk(msg):
        if ct in ("message/rfc822", "message/global", "message/rfc822-headers"):
            payload = part._payload
            if isinstance(payload, list) and payload and isinstance(payload[0], Message):
                found = payload[0]
                break
        elif ct in ("text/rfc822-headers", "text/global-headers"):
            found = parse_headers(part_text(part))
            break
    c["orig"] = found
    return found


def first_code_at(text: str) -> int:
    """Offset of the first reply code or enhanced status in ``text`` (-1 when none)."""
    found = [m.start() for m in (STATUS_RE.search(text), CODE_RE.search(text)) if m is not None]
    return min(found) if found else -1


def status_in(text: str) -> str:
    """The first RFC 3463 status code in ``text`` ('' when none)."""
    m = STATUS_RE.search(text)
    return f"{m.group(1)}.{m.group(2)}.{m.group(3)}" if m else ""


def paired_status(text: str) -> str:
    """The status that follows a reply code ("550 5.1.1", "550-'5.7.1"), else the first one."""
    m = CODE_STATUS_RE.search(text)
    if m is None:
        return status_in(text)
    if m.group(2)[1:] == ".4.7":
        # "554 4.4.7 Message expired ... <421 4.4.2 Connection timed out>": the summary
        # of the reporting MTA wraps the remote server's last reply; that one says why.
        inner = CODE_STATUS_RE.search(text, m.end())
        if inner is not None:
            return inner.group(2)
    return m.group(2)


def code_in(text: str) -> str:
    """The first plausible SMTP reply code in ``text`` ('' when none)."""
    m = CODE_STATUS_RE.search(text) or CODE_RE.search(text)
    return m.group(1) if m else ""


def stage_in(text: str) -> Stage:
    """The SMTP stage an MTA's wording names ("after RCPT TO", "in reply to end of DATA")."""
    text = text[:8192]
    low = text.lower()
    best_at, best = len(text) + 1, "unknown"
    for word, stage in _STAGE_WORDS:
        at = low.find(word)
        if 0 <= at < best_at:
            best_at, best = at, stage
    m = _STAGE_CAPS_RE.search(text, 0, best_at)
    if m:
        return "rcpt" if m.group(0) == "RCPT" else "data"
    return best  # type: ignore[return-value]


def clean_addr(value: str) -> str:
    """'rfc822; <A@B.example>' -> 'A@B.example' ('' when no address)."""
    typed_utf8 = value[:6].lower() == "utf-8;"
    m = (ADDR_UTF8_RE if typed_utf8 else ADDR_RE).search(value)
    if not m:
        return ""
    return m.group(0).strip(".")


class Once:
    """``once(fn, text)``: ``fn(text)``, computed once per distinct text of one report.

    A report for a hundred recipients often gives them all the same text (the shared
    explanation): what its shape says (codes, stage, hints) is read once, not a hundred
    times. Lives for one report only, so nothing is kept between messages.
    """

    def __init__(self) -> None:
        self._seen: dict[tuple[Callable[[str], object], str], object] = {}

    def __call__(self, fn: Callable[[str], T], text: str) -> T:
        key = (fn, text)
        if key in self._seen:
            return self._seen[key]  # type: ignore[return-value]
        found = self._seen[key] = fn(text)
        return found


def direct(fn: Callable[[str], T], text: str) -> T:
    """The :class:`Once` interface without remembering: for a report with one recipient."""
    return fn(text)


def fill_codes(f: Failure, once: Callable[[Callable[[str], T], str], T] = direct) -> Failure:  # type: ignore[assignment]
    """Fill status / reply code / stage from the diagnostic text when the structure had none."""
    d = f.diagnostic
    if d:
        if not f.reply_code:
            f.reply_code = once(code_in, d)
        if not f.status:
            f.status = once(status_in, d)
        if f.stage == "unknown":
            f.stage = once(stage_in, d)
    return f


def envelope_info(msg: Message) -> tuple[str, str, str]:
    """(message_id, envelope_sender, return_path_token) of the original send, best effort.

    The original's Message-ID comes from an X-Original-Message-ID header or the returned
    message; the envelope sender is the original's Return-Path, else the bounce's To (the
    bounce goes to the envelope sender). A VERP token is the local-part tail after '+'.
    """
    mid = header(msg, "X-Original-Message-ID")
    sender = ""
    orig = original_message(msg)
    if orig is not None:
        if not mid:
            mid = header(orig, "Message-ID")
        sender = clean_addr(header(orig, "Return-Path"))
    if not sender:
        sender = clean_addr(header(msg, "X-Original-To") or header(msg, "To"))
    token = ""
    local = sender.rpartition("@")[0]
    if "+" in local:
        token = local.split("+", 1)[1]
    return collapse(mid, 300), sender, token

"""Plain-text bounces: the human-readable reports of Exim, qmail, Postfix, Sendmail, Gmail...

Non-standard bounces all follow one shape: an explanation, then one block per failed
recipient (the address alone on a line, or ``<addr>:`` followed by what the remote server
said), then a copy of the original message. This module finds that shape once, for every
vendor: :func:`bounce_text` cuts the original message off, :func:`recipient_blocks` finds
recipient anchors and the text that belongs to each. Vendor detectors reuse it and only add
what their wording needs; :func:`detect` is the last-resort detector for bounce-looking mail.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Container
from email.message import Message

from smtpguard.classify.formats._common import (
    ADDR_RE,
    Once,
    cache,
    clean_addr,
    code_in,
    collapse,
    contains_any,
    direct,
    envelope_info,
    fill_codes,
    first_code_at,
    first_text,
    header,
    original_message,
    stage_in,
    status_in,
)
from smtpguard.classify.formats.local import local_delivery
from smtpguard.classify.verdict import Failure, Stage

MAX_ANCHORS = 100
#: Text searched for an inline "To:" line when nothing else names a recipient.
PART_TEXT_LIMIT = 64 * 1024

#: Characters of one line any regex here ever sees, and lines of a bounce text read at all:
#: a bounce's explanation is short; a hostile 512 KiB line or 100,000 lines are cut first.
MAX_LINE = 1000
MAX_LINES = 2000

# Where the returned original message starts inside a plain-text bounce. Matched against
# one lower-cased, bounded line at a time (never across lines).
_SEPARATOR_RE = re.compile(
    r"[ \t]{0,40}(?:"
    r"[-=_*]{2,80}[^\n]{0,40}(?:original|copy of|below this line|returned|undelivered|unsent|"
    r"header|included|message text|rfc822|attached)"
    r"|(?:return-path|received|reporting-mta|arrival-date|dkim-signature|x-original-to)"
    r":"
    r"|original message headers?:"
    r"|message headers follow"
    r"|original message follows"
    r"|below (?:is|this line is) a copy"
    r"|the (?:original|returned) message (?:follows|is (?:attached|included|below)|headers)"
    r"|content-type: message/rfc822"
    r")"
)
# The same, searched in a whole lower-cased text: a separator line is one after a line end
# (so never the first line); no part of the pattern matches a line end.
_SEPARATOR_LINE_RE = re.compile(r"\n" + _SEPARATOR_RE.pattern)
# The first non-blank character of every separator line above (either case).
_SEPARATOR_FIRST = frozenset("-=_*rRaAdDxXoObBmMtTcC")
# Words that may stand before a recipient address on its anchor line.
_LABEL_RE = re.compile(
    r"^(?:(?:original|final|failed|bounced|invalid|unknown|intended|unreachable|"
    r"the following)\s+)?"
    r"(?:recipient|recipients|address|addresses|rcpt to|rcpt|user|mailbox|e-?mail)"
    r"(?:\(s\))?(?:\s+address(?:es)?)?\s*[:=]?$",
    re.IGNORECASE,
)
# Bullets, and the reply code Sendmail puts before "<addr>... reason".
_PREFIX_RE = re.compile(r"^(?:[-*>\u2022#]+\s*|In:\s*|[245]\d\d[ -](?:[245]\.\d{1,3}\.\d{1,3}\s)?)")
# A statement about the sender ("Original Sender:", "after MAIL FROM:") names no recipient.
_SENDER_WORDS_RE = re.compile(r"\b(?:from|sender|sent by|reply-to|envelope)\b", re.I)
_ON_DATE_RE = re.compile(r"^on\s+\w")
# Lines that end with the address after a short statement: "Mailbox is full: a@b".
_STATEMENT_RE = re.compile(r"^[A-Za-z][\w,'()-]* [\w ,'()-]{2,80}:$")
_DECORATION_CHARS = frozenset("-=*_")
_PARAGRAPH_RE = re.compile(r"\n[ \t]*\n")
_TRAIL_RE = re.compile(r"^[\s<>\"'(),:;\[\]]*$")
_BOUNCE_FROM_RE = re.compile(
    r"mailer-daemon|post_?master|mail ?delivery|mdaemon|mail ?administrator|"
    r"bounce|nobody@|mail ?system|deliverynotification|dsn@|no-?reply",
    re.IGNORECASE,
)
_BOUNCE_SUBJECT_RE = re.compile(
    r"undeliver|delivery (?:status|failure|notification|report|problem|has failed|failed)|"
    r"failure notice|returned mail|mail delivery|could not be delivered|not delivered|"
    r"returning message|delivery error|non-?deliver|mail system error|failed delivery|"
    r"permanent error|delivery fail|warning: could not send|message delayed|"
    r"unzustellbar|nicht zustellbar|non remis|non recapitabile|no entregado|"
    r"not (?:a )?member|\u914d\u4fe1|\u4e0d\u9054|\u30a8\u30e9\u30fc",
    re.IGNORECASE,
)
# Words that also occur in ordinary mail: they count only with an SMTP code in the body.
_WEAK_SUBJECT_RE = re.compile(r"error|rejected|bounce|failed|failure|returned", re.IGNORECASE)

_LEAD_RE = re.compile(r"returned was:|response was:|said:|responded|server message", re.I)
# Sendmail's per-host line ("550 example.org (smtp)... 550 Host unknown") opens the context
# of the NEXT recipient line, so it ends the current block.
_HOST_LINE_RE = re.compile(r"^\s*\d{3} [\w.-]{1,255} \(\w{1,20}\)\.\.\. ")

_TALKING_RE = re.compile(r"^\s*(?:\.\.\.\s*)?while talking to ", re.IGNORECASE)

_SENT_RE = re.compile(r"^\s*>>>\s*(.{1,200})$")
_GOT_RE = re.compile(r"^\s*<<<\s*[45]\d\d")

# Sendmail's own per-recipient line in a transcript, "550 5.1.1 <a@b.example>... User unknown":
# it writes an addressing status (5.1.x) against one address only for a refused RCPT TO.
_SENDMAIL_RCPT_RE = re.compile(r"^\s*[45]\d\d [45]\.1\.\d{1,3} <([^<>\s]{3,256})>\.\.\. ")
_RCPT_CMD_RE = re.compile(r"RCPT TO:[ \t]{0,5}<([^<>\s]{3,256})>", re.IGNORECASE)
# One transcript line holding a failure reply: "Out: 451 4.3.0 ...", "<<< 550 ...", "550 ...".
_REPLY_LINE_RE = re.compile(r"(?:Out:|<<<)?[ \t]{0,10}([45]\d\d[ -].{0,500})")
_BRACKET_ADDR_RE = re.compile(r"<(" + ADDR_RE.pattern + r")>")
# Addresses that are never a failed recipient: the bounce's own senders, RFC 2142 role
# mailboxes, and mailing-list administration addresses (list-owner, owner-list, list-request,
# list-bounces: RFC 2369 / Mailman / Majordomo conventions).
_ROLE_RE = re.compile(
    r"^(?:mailer-daemon|postmaster|root|abuse|hostmaster|no-?reply|bounces?|owner-[^@]{1,64}"
    r"|[^@]{1,64}-(?:owner|request|bounces?|admin))@",
    re.I,
)
_LIST_ADMIN_RE = re.compile(
    r"^(?:mailer-daemon|owner-[^@]{1,64}|[^@]{1,64}-(?:owner|request|bounces?|admin))@", re.I
)
# Lines of a recipient block that describe the sender, not the recipient.
_SENDER_LINE_RE = re.compile(
    r"[ \t>(]{0,10}(?:original[ -]sender|sender(?:-mta)?|from|reply-to|return-path|"
    r"envelope[ -]from|mail from)[ \t]{0,3}:",
    re.I,
)
# Sendmail's alias note under a failed address: "(expanded from: <alias@example.org>)".
_EXPANDED_RE = re.compile(r"[ \t(]{0,10}expanded from:?[ \t]{0,3}<?([^<>\s()]{1,256})>?", re.I)

# Vendor boilerplate around the remote server's words: it would only mislead the rules.
_BOILERPLATE_PHRASES = (
    "technical details of permanent failure:",
    "technical details of temporary failure:",
)
# qmail's "Giving up on 192.0.2.1." is about one MX host, not about the message.
_GIVING_UP_RE = re.compile(r"Giving up on \d{1,3}(?:\.\d{1,3}){3}\.?", re.IGNORECASE)
# The reporting MTA itself says the recipient's domain does not resolve (its own words,
# not a remote reply): Exim (and cPanel's rewording of its router failure), qmail,
# DragonFly, Postfix's local "Host or domain name not found".
HOSTUNKNOWN_RE = re.compile(
    r"all relevant MX records point to non-existent hosts|Unrouteable address|"
    r"couldn't find any host named|DNS lookup failure: host \S{1,255} not found|"
    r"The account or domain may not exist, they may be blacklisted, or missing the proper dns|"
    r"Host or domain name not found\. Name service error for name=\S{1,255} type=\w{1,5}: "
    r"Host not found(?!, try again)",
    re.IGNORECASE,
)

_BOILERPLATE_HINTS = ("google tried", "technical details", "giving up on", "failure report")
_HOSTUNKNOWN_HINTS = ("non-existent", "unrouteable", "any host named", "not found", "proper dns")

_ERROR_CODE_RE = re.compile(r"ERROR_CODE ?: ?([45]\d\d)\b")
# A warning, not a failure report: the MTA still retries (Gmail, Exim, Sendmail wording).
_DELAYED_RE = re.compile(
    r"THIS IS A WARNING MESSAGE ONLY|has (?:not yet been|been) delayed|"
    r"has not yet been delivered|Delay reason:|will be retried for|"
    r"Technical details of temporary failure|"
    r"Warning: message still undelivered|not been delivered yet",
    re.IGNORECASE,
)

_DELAYED_HINTS = ("warning", "delay", "not yet", "retried", "temporary failure", "undelivered")

_INLINE_TO_RE = re.compile(r"^To:[ \t]*(?:.{0,200}<)?(" + ADDR_RE.pattern + r")", re.M | re.I)


def bounce_text(msg: Message) -> str:
    """The bounce's own explanation: the first text part, with the original message cut off
    (:func:`cut_original`)."""
    c = cache(msg)
    found = c.get("bounce_text")
    if found is None:
        found = c["bounce_text"] = cut_original(first_text(msg))
    return found  # type: ignore[return-value]


def cut_original(text: str) -> str:
    """``text`` up to the line where a returned original message starts.

    Read as lines, each cut to :data:`MAX_LINE` characters, at most :data:`MAX_LINES`
    lines: no regex ever sees more than one bounded line. The separator is looked for with
    one search over the lower-cased text (:data:`_SEPARATOR_LINE_RE` cannot cross a line
    end and reads far less than MAX_LINE characters of a line): the same first separator
    line as matching each line in turn (:func:`_before_separator`), found in C.
    """
    lines = text.split("\n", MAX_LINES)
    if len(lines) > MAX_LINES or _truncated(lines):
        lines = bounded_lines(text)
        joined = "\n".join(lines)
    else:
        joined = text  # already bounded
    low = joined.lower()
    if len(low) != len(joined):  # lower() changed the length (rare non-ASCII): line by line
        return "\n".join(_before_separator(lines))
    m = _SEPARATOR_LINE_RE.search(low)
    return joined[: m.start()] if m else joined


def _before_separator(lines: list[str]) -> list[str]:
    """``lines`` up to the first separator line (never the first line)."""
    for i, line in enumerate(lines):
        if not i or line.lstrip(" \t")[:1] not in _SEPARATOR_FIRST:
            continue
        if _SEPARATOR_RE.match(line.lower()):
            return lines[:i]
    return lines


def bounded_lines(text: str) -> list[str]:
    """The first :data:`MAX_LINES` lines of ``text``, each cut to :data:`MAX_LINE`."""
    lines = text.split("\n", MAX_LINES)[:MAX_LINES]
    if not _truncated(lines):
        return lines  # the common case: no line is long (checked in C)
    return [ln if len(ln) <= MAX_LINE else ln[:MAX_LINE] for ln in lines]


def _truncated(lines: list[str]) -> bool:
    """Is any line longer than :data:`MAX_LINE` (so cut by :func:`bounded_lines`)?"""
    return bool(lines) and max(map(len, lines)) > MAX_LINE


def is_decoration(line: str) -> bool:
    """A rule like "-----" or "===== Original message =====" (linear, no regex)."""
    t = line.strip()
    if len(t) < 3:
        return False
    if not set(t[:3]) <= _DECORATION_CHARS:
        return False
    return (len(t) <= 86 and set(t[-3:]) <= _DECORATION_CHARS) or set(t) <= _DECORATION_CHARS


def _anchor(line: str) -> tuple[str, str] | None:
    """(address, rest of line) when ``line`` names one recipient and little else."""
    if "@" not in line or len(line) > 400:
        return None
    m = ADDR_RE.search(line)
    if not m:
        return None
    before = line[: m.start()].strip()
    pm = _PREFIX_RE.match(before)
    code = ""
    if pm:
        code = pm.group(0).strip() if pm.group(0)[:1].isdigit() else ""
        before = before[pm.end() :]
    before = before.strip().strip("<\"'(").strip()
    after = line[m.end() :]
    statement = ""
    if before and not _LABEL_RE.match(before):
        if (
            _STATEMENT_RE.match(before)
            and _TRAIL_RE.match(after)
            and not _SENDER_WORDS_RE.search(before)
        ):
            statement = before
        else:
            return None
    # The address must end the line, or be followed by ':' / '...' and the reason.
    rest = after.lstrip(">\"') ")
    if before.lower().startswith("rcpt"):
        statement = "RCPT TO"  # a transcript line: the failure that follows is at RCPT
    if _TRAIL_RE.match(after):
        return m.group(0).strip("."), statement
    if _ON_DATE_RE.match(rest):  # Exchange 2003: "a@b on 4/29/01 11:34:45 PM"
        return m.group(0).strip("."), ""
    if rest.startswith(":") or rest.startswith("..."):
        # Keep Sendmail's leading "550 5.1.2" with the reason: it is the reply code.
        return m.group(0).strip("."), (code + " " + rest.lstrip(":.").strip()).strip()
    if rest.startswith("(") or rest.startswith("[") or not before:
        # "a@b (reason)", or the address opening the line: "a@b Invalid Address, 550..."
        return m.group(0).strip("."), rest
    return None


def _lead_in(lines: list[str], i: int) -> str:
    """The line before an anchor when it introduces the reply ("... did not like our
    RCPT TO:", "The error that the other server returned was:"): it names the stage."""
    for j in range(i - 1, max(i - 3, -1), -1):
        prev = lines[j].strip()
        if not prev:
            continue
        if (
            prev.endswith(":")
            and "@" not in prev
            and len(prev) < 200
            and (stage_in(prev) != "unknown" or _LEAD_RE.search(prev))
        ):
            return prev
        return ""
    return ""


def preamble(text: str) -> str:
    """The explanation before the first recipient anchor: what the reporting MTA says about
    the whole report, not about one recipient (bounded to the first 200 lines)."""
    lines, anchors = _scan(text)
    end = anchors[0][0] if anchors else len(lines)
    return "\n".join(lines[: min(end, 200)])


@functools.lru_cache(maxsize=8)
def _scan(text: str) -> tuple[list[str], list[tuple[int, str, str]]]:
    """(bounded lines, recipient anchors as (line number, address, rest of line)) of one
    bounce text; cached because the DSN reader asks for both views of the same text."""
    lines = bounded_lines(text)
    anchors: list[tuple[int, str, str]] = []
    # Only a line with an '@' can be an anchor: jump from one to the next with str.find
    # (in C) instead of visiting every line. ``lines`` are ``text``'s lines (some cut
    # short), so the line of an offset is the number of line ends before it.
    at = text.find("@")
    i = counted = 0
    while at >= 0:
        i += text.count("\n", counted, at)
        counted = at
        if i >= len(lines):
            break
        a = _anchor(lines[i])
        if a:
            anchors.append((i, a[0], a[1]))
            if len(anchors) >= MAX_ANCHORS:
                break
        eol = text.find("\n", at)
        if eol < 0:
            break
        at = text.find("@", eol)
    return lines, anchors


def recipient_blocks(text: str) -> list[tuple[str, str]]:
    """[(recipient, its text)] in order; the text runs to the next anchor (bounded)."""
    return [(b[0], b[1]) for b in recipient_blocks_ex(text)]


def recipient_blocks_ex(text: str) -> list[tuple[str, str, str]]:
    """[(address, its text, the alias it was expanded from or "")] in order.

    Lines naming the sender ("Original Sender:", "From:") are not the recipient's text, and
    Sendmail's "(expanded from: <alias>)" note names the address that was sent to.
    """
    lines, anchors = _scan(text)
    out: list[tuple[str, str, str]] = []
    seen: set[str] = set()
    for n, (i, addr, rest) in enumerate(anchors):
        end = anchors[n + 1][0] if n + 1 < len(anchors) else len(lines)
        body = [rest] if rest else []
        lead = _lead_in(lines, i)
        if lead:
            body.insert(0, lead)
        para = 0
        expanded = ""
        for line in lines[i + 1 : min(end, i + 40)]:
            stripped = line.strip()
            if stripped[:1] in _DECORATION_CHARS and is_decoration(line):
                continue
            if "xpanded from" in line:
                em = _EXPANDED_RE.match(line)
                if em:
                    expanded = clean_addr(em.group(1))
                    continue
            if ":" in line:  # every sender line has one
                sm = _SENDER_LINE_RE.match(line)
                if sm:
                    # "From: <sender@x> RCPT: <a@b> ... failed after I sent the message": keep
                    # what the line says, not the sender's address.
                    line = ADDR_RE.sub("", line[sm.end() :], count=1)
                    stripped = line.strip()
            if ("..." in line and _HOST_LINE_RE.match(line)) or (
                "talking to " in line.lower() and _TALKING_RE.match(line)
            ):
                break
            if not stripped:
                if body:
                    para += 1
                    if para >= 2 or (code_in(" ".join(body)) or status_in(" ".join(body))):
                        break
                continue
            body.append(stripped)
        key = addr.lower()
        if key in seen:
            # Same recipient named again (Sendmail's transcript after the address list,
            # Postfix's wrapped "said: 550\n <a@b>: User unknown"): one block, text joined.
            more = collapse(" ".join(body))
            for k, (a, t, x) in enumerate(out):
                if a.lower() == key and more and more not in t:
                    out[k] = (a, collapse(t + " " + more), x or expanded)
            continue
        seen.add(key)
        out.append((addr, collapse(" ".join(body)), expanded))
    return out


def transcript_stage(text: str, recipient: str) -> Stage | None:
    """The SMTP stage from a Sendmail-style session transcript (">>> DATA" / "<<< 550 ...").

    The command a failure answers is the last ">>>" line before the first "<<< 4xx/5xx"
    reply that names the recipient (or, failing that, the first failure reply after
    ">>> RCPT To:<recipient>"); Sendmail's own "550 5.1.1 <recipient>... User unknown" line
    means RCPT. None when the text has no transcript for the recipient.
    """
    if ">>>" not in text or "<<<" not in text:
        return None
    rcpt = recipient.lower()
    lines = text.split("\n")[:2000]
    last_sent = ""
    asked = False
    for line in lines:
        sent = _SENT_RE.match(line)
        if sent:
            last_sent = sent.group(1)
            if rcpt and rcpt in last_sent.lower():
                asked = True
            continue
        if _GOT_RE.match(line) and last_sent and (rcpt in line.lower() or asked):
            stage = stage_in(last_sent)
            return stage if stage != "unknown" else None
        own = _SENDMAIL_RCPT_RE.match(line)
        if own and rcpt and own.group(1).lower() == rcpt:
            # With PIPELINING the RCPT TO reply arrives after ">>> DATA" was sent; Sendmail's
            # own "5.1.x <addr>..." line says which command it answered.
            return "rcpt"
    return None


def diagnostics_by_recipient(text: str) -> dict[str, str]:
    """{recipient (lower case): diagnostic} from a plain-text explanation."""
    return {a.lower(): t for a, t in recipient_blocks(text) if t}


def looks_like_bounce(msg: Message) -> bool:
    """Sender or subject says "delivery failure" (cheap checks, headers only)."""
    if header(msg, "X-Failed-Recipients"):
        return True
    if _BOUNCE_FROM_RE.search(header(msg, "From")):
        return True
    return bool(_BOUNCE_SUBJECT_RE.search(header(msg, "Subject")))


def best_paragraph(text: str) -> str:
    """The paragraph most likely to hold the remote server's reply: the one with the first
    reply code or status (the whole text when there is none)."""
    text = text[:20000]
    at = first_code_at(text)
    if at < 0:
        return text
    start, end = 0, len(text)
    for m in _PARAGRAPH_RE.finditer(text):
        if m.end() <= at:
            start = m.end()
        else:
            end = m.start()
            break
    return text[start:end]


def skip_set(msg: Message) -> frozenset[str]:
    """Addresses that are not recipients: the bounce's own sender and the original sender."""
    out = {clean_addr(header(msg, "From")).lower(), clean_addr(header(msg, "To")).lower()}
    orig = original_message(msg)
    if orig is not None:
        out.add(clean_addr(header(orig, "From")).lower())
        out.add(clean_addr(header(orig, "Return-Path")).lower())
    out.discard("")
    return frozenset(out)


def _transcript(text: str) -> list[tuple[str, str]]:
    """An SMTP session transcript ("In: RCPT TO:<a@b>" ... "Out: 451 4.3.0 ..."): the
    recipients given and the first failure reply after them."""
    out: list[tuple[str, str]] = []
    lines = bounded_lines(text)
    for i, line in enumerate(lines):
        if "CPT" not in line and "cpt" not in line:
            continue
        m = _RCPT_CMD_RE.search(line)
        if not m:
            continue
        addr = clean_addr(m.group(1))
        if addr and addr.lower() not in {a.lower() for a, _ in out}:
            out.append((addr, _next_reply(lines, i + 1)))
        if len(out) >= MAX_ANCHORS:
            break
    return out


def _next_reply(lines: list[str], start: int) -> str:
    """The first failure reply line at or after ``start`` (bounded lines, matched one by one)."""
    for line in lines[start : start + 200]:
        m = _REPLY_LINE_RE.match(line.strip())
        if m:
            return collapse(m.group(1))
    return ""


def _mentioned(
    text: str, skip: frozenset[str], addressed: Container[str] = frozenset()
) -> list[str]:
    """Addresses named in <brackets> in the explanation, minus senders and role accounts
    (a role account the original was sent to stays: see :func:`not_a_recipient`)."""
    out: list[str] = []
    for m in _BRACKET_ADDR_RE.finditer(text):
        a = m.group(1).strip(".")
        if not_a_recipient(a, skip, addressed=addressed) or a.lower() in {x.lower() for x in out}:
            continue
        out.append(a)
        if len(out) >= 10:
            break
    return out


def clean_diagnostic(diag: str) -> str:
    """The diagnostic without vendor boilerplate (plain substring cuts, no backtracking)."""
    low = diag.lower()
    if not contains_any(low, _BOILERPLATE_HINTS):
        return collapse(diag)
    note = low.find("please note that this is only a temporary failure report")
    if note >= 0:  # OpenSMTPD's trailer: everything after it is advice
        diag, low = diag[:note], low[:note]
    google = low.find("google tried to deliver your message")
    if google >= 0:
        said = low.find("the error that the other server returned was:", google)
        if 0 <= said - google <= 400:
            cut = said + len("the error that the other server returned was:")
            diag, low = diag[:google] + diag[cut:], low[:google] + low[cut:]
    for phrase in _BOILERPLATE_PHRASES:
        at = low.find(phrase)
        if at >= 0:
            diag, low = diag[:at] + diag[at + len(phrase) :], low[:at] + low[at + len(phrase) :]
    if "giving up on" in low:
        diag = _GIVING_UP_RE.sub(" ", diag)
    return collapse(diag)


def says_hostunknown(text: str) -> bool:
    """True when the reporting MTA itself says the recipient's domain does not resolve."""
    low = text.lower()
    return contains_any(low, _HOSTUNKNOWN_HINTS) and bool(HOSTUNKNOWN_RE.search(text))


def _forwarded_reply(msg: Message, recipient: str) -> str:
    """The remote reply for ``recipient`` inside an attached message that is itself a
    bounce (a filter such as InterScan wrapping the MTA's report); '' when none."""
    orig = original_message(msg)
    if orig is None or orig is msg:
        return ""
    for addr, text in recipient_blocks(bounce_text(orig)):
        if addr.lower() == recipient.lower() and (code_in(text) or status_in(text)):
            return text
    return ""


def not_a_recipient(
    address: str, skip: frozenset[str], text: str = "", addressed: Container[str] = frozenset()
) -> bool:
    """The bounce's own sender / addressee, the original sender, a role or list address.

    An address line that carries the remote server's reply itself (``text`` has a reply
    code or status) is a structural claim that this address failed: then only the bounce
    sender (MAILER-DAEMON) and list-administration addresses are refused, so a message
    sent to postmaster@ or to the sender's own address can still be reported. A role
    address the returned original was itself sent to (``addressed``: its To / Cc) is a
    recipient like any other - mail to postmaster@ bounces too.
    """
    if text and (code_in(text) or status_in(text)):
        return bool(_LIST_ADMIN_RE.match(address))
    low = address.lower()
    return low in skip or (bool(_ROLE_RE.match(address)) and low not in addressed)


class AddressedTo:
    """The returned original's To / Cc addresses, read on the first ``in`` test: only a
    role address needs them (:func:`not_a_recipient`), and most bounces name none."""

    def __init__(self, msg: Message, text: str) -> None:
        self._msg, self._text = msg, text
        self._found: frozenset[str] | None = None

    def __contains__(self, address: object) -> bool:
        if self._found is None:
            self._found = addressed_to(self._msg, self._text)
        return address in self._found


def addressed_to(msg: Message, text: str) -> frozenset[str]:
    """The returned original's To / Cc addresses (lower case): the attached original, or
    the header block quoted after the explanation ``text``."""
    orig = original_message(msg)
    if orig is not None:
        values = header(orig, "To") + " " + header(orig, "Cc")
    else:
        m = _INLINE_TO_RE.search(first_text(msg)[:PART_TEXT_LIMIT], len(text))
        values = m.group(1) if m else ""
    return frozenset(a.lower() for a in ADDR_RE.findall(values)[:MAX_ANCHORS])


def failures_from_text(msg: Message, text: str, fmt: str) -> list[Failure]:
    """Failures for every recipient block in ``text``; when the explanation has no recipient
    lines, fall back (in order) to an SMTP transcript, X-Failed-Recipients, addresses named
    in brackets, and the returned original's To.

    Found by structure (an address line next to a reply or reason), never from the quoted
    original message (cut off by :func:`bounce_text`), never the envelope sender, the
    bounce's own addresses, postmaster / MAILER-DAEMON or list-administration addresses.
    """
    skip = skip_set(msg)
    to = AddressedTo(msg, text)
    blocks = [b for b in recipient_blocks_ex(text) if not not_a_recipient(b[0], skip, b[1], to)]
    if not blocks:
        blocks = [(a, t, "") for a, t in _transcript(text) if not not_a_recipient(a, skip, t, to)]
    if not blocks:
        addrs = ADDR_RE.findall(header(msg, "X-Failed-Recipients"))
        if not addrs:
            addrs = _mentioned(text, skip, to)
        if not addrs:
            orig = original_message(msg)
            if orig is not None:
                addrs = ADDR_RE.findall(header(orig, "To"))[:1]
            else:
                m = _INLINE_TO_RE.search(first_text(msg)[:PART_TEXT_LIMIT], len(text))
                if m:
                    addrs = [m.group(1)]
        addrs = [a for a in addrs if not not_a_recipient(a, skip, addressed=to)]
        if not addrs:
            return []
        blocks = [(a, "", "") for a in addrs[:MAX_ANCHORS]]
    mid, sender, token = envelope_info(msg)
    head = text[:4000]
    delayed = contains_any(head.lower(), _DELAYED_HINTS) and bool(_DELAYED_RE.search(head))
    out = []
    best = ""
    everyone = {a.lower() for a, _, _ in blocks}
    once = Once() if len(blocks) > 1 else direct
    for addr, diag, expanded in blocks:
        if not diag or not (code_in(diag) or status_in(diag)):
            best = best or collapse(best_paragraph(text))
            # The shared explanation, unless it is about another recipient of this bounce.
            best_low = best.lower()
            others = any(a in best_low for a in everyone if a != addr.lower())
            if not others and (not diag or code_in(best) or status_in(best)):
                diag = best if not diag else collapse(diag + " " + best)
        if not (code_in(diag) or status_in(diag)):
            diag = _forwarded_reply(msg, addr) or diag
        f = Failure(
            recipient=expanded or addr,
            diagnostic=clean_diagnostic(diag),
            format=fmt,
            original_recipient=expanded,
            final_recipient=addr,
        )
        if not f.reply_code:
            m = _ERROR_CODE_RE.search(diag)  # Zoho: "ERROR_CODE :550, ERROR_CODE :5.1.1"
            f.reply_code = m.group(1) if m else ""
        # A bounce that is not a delay warning reports a failure the MTA has given up on
        # (RFC 3464 2.3.3's "failed"), whatever reply it quotes.
        f.action = "delayed" if delayed else "failed"
        fill_codes(f, once)
        f.stage = transcript_stage(text, addr) or f.stage
        if once(says_hostunknown, diag):
            f.reason_hint = "hostunknown"
        f.message_id, f.envelope_sender, f.return_path_token = mid, sender, token
        f.local_delivery = local_delivery(msg, text, f.diagnostic, once=once)
        out.append(f)
    return out


def detect(msg: Message, raw: bytes) -> list[Failure] | None:
    """Any bounce-looking message (sender, subject, X-Failed-Recipients; a weak subject
    word only with an SMTP code in the text): one Failure per recipient block."""
    text = bounce_text(msg)
    if not looks_like_bounce(msg) and not (
        _WEAK_SUBJECT_RE.search(header(msg, "Subject")) and (code_in(text) or status_in(text))
    ):
        return None
    out = failures_from_text(msg, text, "plaintext")
    return out or None

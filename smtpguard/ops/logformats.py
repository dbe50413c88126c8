"""Delivery failures in MTA logs: Postfix, Exim and Sendmail lines -> :class:`LogEvent`.

Only bounced and deferred deliveries matter here, so each format names the
byte strings its failure lines always contain (:data:`NEEDLES`); the reader
looks for those with ``bytes.find`` and hands only matching lines to these
parsers. Everything else in a mail log (connects, queue entries, successful
deliveries) costs one substring search per block, not a regex per line.

Formats, as the MTAs write them:

Postfix, smtp(8)/lmtp(8)/local(8)/... via the bounce and defer logs::

    Mar  1 10:00:00 mx postfix/smtp[4242]: 4F9D195432: to=<bob@example.com>,
      relay=mx.example.com[192.0.2.1]:25, delay=1.2, delays=0.1/0/0.5/0.6,
      dsn=5.1.1, status=bounced (host mx.example.com[192.0.2.1] said: 550 5.1.1
      <bob@example.com>: Recipient address rejected: User unknown (in reply to
      RCPT TO command))

(one line; ``orig_to=<...>`` and ``conn_use=N`` may appear; ``status=deferred``
and ``status=SOFTBOUNCE`` are deferrals; the timestamp may be RFC 3339.)
smtpguard's own delivery log has the same form (``smtpguard/smtp[PID]:``), with
its ``reason=`` and ``suppression=`` after the reply.

Exim main log, ``**`` a failed delivery, ``==`` a deferred one::

    2024-03-01 10:00:00 1rg2Xx-0001AB-Cd ** bob@example.com R=dnslookup
      T=remote_smtp H=mx.example.com [192.0.2.1]: SMTP error from remote mail
      server after RCPT TO:<bob@example.com>: 550 5.1.1 User unknown
    2024-03-01 10:00:00 1rg2Xx-0001AB-Cd == bob@example.com R=dnslookup
      T=remote_smtp defer (-44) H=mx.example.com [192.0.2.1]: SMTP error from
      remote mail server after RCPT TO:<bob@example.com>: 451 4.7.1 Greylisted

(older Exims put ``host H [ip]:`` after the stage instead of ``H=``; multi-line
replies are logged with ``\\n``; ``== ... retry time not reached`` is no
delivery attempt and is skipped.)

Sendmail, one line per delivery attempt with ``dsn=`` and ``stat=``::

    Mar  1 10:00:00 mx sm-mta[4242]: 41UA00x8001234: to=<bob@example.com>,
      delay=00:00:01, xdelay=00:00:01, mailer=esmtp, pri=120000,
      relay=mx.example.com. [192.0.2.1], dsn=5.1.1, stat=User unknown

(``to=`` may list several recipients; a 4.x.x ``dsn=`` is a deferral and its
``stat=Deferred: 451 ...`` carries the reply.)

Successful deliveries (Postfix ``status=sent``, Exim ``=>`` and ``->``,
Sendmail ``dsn=2.x.x``) are read only when asked (``deliveries=True``, for
``logscan --apply``: the suppression policy counts every attempt to a
destination, not only the failures). A parser returns None for a line that is
not its format, and an empty list for one of its lines that reports nothing.
"""

from __future__ import annotations

import functools
import re
import time
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Literal

Status = Literal["bounced", "deferred", "delivered"]

#: Byte strings every failure line of some format contains.
NEEDLES: tuple[bytes, ...] = (
    b"status=bounced",
    b"status=deferred",
    b"status=SOFTBOUNCE",
    b" ** ",
    b" == ",
    b", stat=",
)
#: Byte strings every successful delivery line contains (read with ``deliveries``).
DELIVERY_NEEDLES: tuple[bytes, ...] = (b"status=sent", b" => ", b" -> ")
#: Longest reply text kept per event.
MAX_REPLY = 2000


@dataclass(frozen=True, slots=True)
class LogEvent:
    """One delivery attempt to one recipient (failed, deferred or delivered), as logged."""

    mta: Literal["postfix", "exim", "sendmail"]
    status: Status
    recipient: str
    reply: str  # the remote server's reply, or the MTA's own reason
    dsn: str = ""  # enhanced status the MTA logged ("" when it logs none)
    stage: str = "unknown"  # SMTP stage the reply answered (the classifier's stages)
    relay: str = ""  # the host that answered, as logged
    queue_id: str = ""
    time: str = ""  # as logged

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


_TIME = re.compile(
    r"^(\w{3} [ \d]\d \d\d:\d\d:\d\d"  # traditional syslog
    r"|\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?(?:Z|[+-]\d\d:?\d\d)?)"  # RFC 3339 (rsyslog)
)
#: What each verb of the MTAs means.
_POSTFIX_STATUS: dict[str, Status] = {
    "bounced": "bounced",
    "deferred": "deferred",
    "SOFTBOUNCE": "deferred",
    "sent": "delivered",
}

# --------------------------------------------------------------------------- Postfix

_POSTFIX = re.compile(
    r"[\w.-]+(?:/[\w.-]+)+\[\d+\]: (?P<qid>[0-9A-Za-z]{5,20}): to=<(?P<rcpt>[^>]{0,512})>,"
    r"(?: orig_to=<[^>]{0,512}>,)? relay=(?P<relay>[^,]{0,300}),(?: conn_use=\d+,)?"
    r" delay=[\d.]+, delays=[\d./]+, dsn=(?P<dsn>\d\.\d{1,3}\.\d{1,3}),"
    r" status=(?P<status>bounced|deferred|SOFTBOUNCE|sent) \((?P<reply>.*)\)"
    r"(?:, [a-z_]{1,20}=[\w.-]{0,40}){0,4}\s*$"  # smtpguard's delivery log adds reason= ...
)
_POSTFIX_STAGE = re.compile(r"\s*\(in reply to (?P<cmd>[A-Za-z ]{2,20}?) command\)$")
_POSTFIX_HOST = re.compile(
    r"^host (?P<host>\S{1,300}) (?:said|refused to talk to me): ", re.IGNORECASE
)


def parse_postfix(line: str) -> LogEvent | None:
    m = _POSTFIX.search(line)
    if not m:
        return None
    reply = m.group("reply")
    stage = "unknown"
    sm = _POSTFIX_STAGE.search(reply)
    if sm:
        stage = smtp_stage(sm.group("cmd"))
        reply = reply[: sm.start()]
    relay = m.group("relay")
    hm = _POSTFIX_HOST.match(reply)
    if hm:
        relay = hm.group("host")
        if "refused to talk" in hm.group(0):
            stage = "connect"
        reply = reply[hm.end() :]
    status = _POSTFIX_STATUS[m.group("status")]
    return LogEvent(
        mta="postfix",
        status=status,
        recipient=m.group("rcpt"),
        reply=reply[:MAX_REPLY],
        dsn=m.group("dsn"),
        stage=stage,
        relay=relay,
        queue_id=m.group("qid"),
        time=_time(line),
    )


# --------------------------------------------------------------------------- Exim

_EXIM = re.compile(
    r"^(?P<time>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d{3})?(?: [+-]\d{4})?)(?: \[\d+\])?"
    r" (?P<qid>[0-9A-Za-z]{6}-[0-9A-Za-z]{6,11}-[0-9A-Za-z]{2,4}) (?P<mark>\*\*|==|=>|->)"
    r" (?P<rcpt>[^\s:]{1,512})(?P<sep>: | )(?P<rest>.*)$"
)
_EXIM_SMTP = re.compile(
    r"SMTP error from remote mail server after (?P<after>.{1,600}?): "
    r"(?:host (?P<host>\S{1,300} \[[^\]]{1,60}\]): )?(?P<reply>[245]\d\d[ -].*)$"
)
_EXIM_HOST = re.compile(r"\bH=(\S{1,300}(?: \[[^\]]{1,60}\])?)")


def parse_exim(line: str) -> LogEvent | None:
    m = _EXIM.match(line)
    if not m:
        return None
    if m.group("mark") in ("=>", "->"):
        return _exim_delivered(m)
    if m.group("sep") == ": ":  # "** bob@example.com: Unrouteable address": no fields
        fields, message = "", m.group("rest")
    else:
        fields, message = _exim_split(m.group("rest"))
    if "retry time not reached" in message or "retry timeout not reached" in message:
        return None  # no delivery was attempted
    stage, relay, reply = "unknown", "", message
    hm = _EXIM_HOST.search(fields)
    if hm:
        relay = hm.group(1)
    sm = _EXIM_SMTP.search(message)
    if sm:
        stage = smtp_stage(sm.group("after"))
        relay = sm.group("host") or relay
        reply = sm.group("reply")
    reply = reply.replace("\\n", "\n")
    status: Status = "bounced" if m.group("mark") == "**" else "deferred"
    return LogEvent(
        mta="exim",
        status=status,
        recipient=m.group("rcpt"),
        reply=reply[:MAX_REPLY],
        stage=stage,
        relay=relay,
        queue_id=m.group("qid"),
        time=m.group("time"),
    )


def _exim_delivered(m: re.Match[str]) -> LogEvent:
    """``=> al@example.com R=...`` (or ``=> al <al@example.com> R=...`` for a local
    part with its original address): the address delivered to."""
    recipient, rest = m.group("rcpt"), m.group("rest")
    if "@" not in recipient and rest.startswith("<"):
        recipient = rest[1 : rest.find(">")] if ">" in rest else recipient
    hm = _EXIM_HOST.search(rest)
    return LogEvent(
        mta="exim",
        status="delivered",
        recipient=recipient,
        reply="",
        relay=hm.group(1) if hm else "",
        queue_id=m.group("qid"),
        time=m.group("time"),
    )


def _exim_split(rest: str) -> tuple[str, str]:
    """(fields, message): the message follows the first ": " outside a quoted value
    (``DN="..."``); a line with no fields starts with the message."""
    quoted = False
    for i, c in enumerate(rest):
        if c == '"':
            quoted = not quoted
        elif c == ":" and not quoted and rest[i + 1 : i + 2] == " ":
            return rest[:i], rest[i + 2 :]
    return rest, ""


# --------------------------------------------------------------------------- Sendmail

_SENDMAIL = re.compile(
    r"\[\d+\]: (?P<qid>[0-9A-Za-z]{6,20}): to=(?P<middle>.{1,4000}?), dsn=(?P<dsn>[245]\.\d{1,3}"
    r"\.\d{1,3}), stat=(?P<stat>.*)$"
)
_SENDMAIL_FIELD = re.compile(r", (?=[a-z_]{2,12}=)")
_SENDMAIL_RELAY = re.compile(r"(?:^|, )relay=([^,]{1,300})")


def parse_sendmail(line: str) -> list[LogEvent] | None:
    m = _SENDMAIL.search(line)
    if not m:
        return None
    parts = _SENDMAIL_FIELD.split(m.group("middle"), maxsplit=1)
    recipients = [r.strip().strip("<>") for r in parts[0].split(",") if r.strip()]
    rm = _SENDMAIL_RELAY.search(parts[1]) if len(parts) > 1 else None
    stat = m.group("stat").strip()
    status: Status = {"5": "bounced", "4": "deferred"}.get(m.group("dsn")[0], "delivered")
    if status == "delivered":
        stat = ""
    elif stat.lower().startswith("deferred"):
        stat = stat[8:].lstrip(": ") or "Deferred"
    relay, qid, when = (rm.group(1).strip() if rm else ""), m.group("qid"), _time(line)
    return [
        LogEvent(
            mta="sendmail",
            status=status,
            recipient=rcpt,
            reply=stat[:MAX_REPLY],
            dsn=m.group("dsn"),
            relay=relay,
            queue_id=qid,
            time=when,
        )
        for rcpt in recipients[:100]
    ]


# --------------------------------------------------------------------------- shared


def parse_line(line: str, *, deliveries: bool = False) -> list[LogEvent] | None:
    """The events on one log line: failures, and successful deliveries too when
    ``deliveries``. None when the line is in no known format."""
    events: list[LogEvent] | None
    if "status=" in line:
        event = parse_postfix(line)
        events = None if event is None else [event]
    elif ", stat=" in line:
        events = parse_sendmail(line)
    elif " ** " in line or " == " in line or " => " in line or " -> " in line:
        event = parse_exim(line)
        # An Exim line of its own kind that is no attempt ("retry time not reached").
        events = [event] if event else ([] if _EXIM.match(line) else None)
    else:
        return None
    if events and not deliveries:
        return [e for e in events if e.status != "delivered"]
    return events


def smtp_stage(command: str) -> str:
    """The classifier's stage for what a reply answered: "RCPT TO" -> "rcpt"."""
    c = command.strip().upper()
    if c.startswith("END OF DATA"):
        return "eom"
    for prefix, stage in _STAGES:
        if c.startswith(prefix) or f" {prefix}" in c:
            return stage
    return "unknown"


_STAGES = (
    ("RCPT", "rcpt"),
    ("MAIL", "mail"),
    ("DATA", "data"),
    ("BDAT", "data"),
    ("INITIAL CONNECTION", "connect"),
    ("EHLO", "helo"),
    ("HELO", "helo"),
    ("LHLO", "helo"),
    ("STARTTLS", "helo"),
    ("AUTH", "helo"),
)


def _time(line: str) -> str:
    m = _TIME.match(line)
    return m.group(1) if m else ""


_MONTHS = {
    m: i
    for i, m in enumerate(
        ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"), 1
    )
}


@functools.lru_cache(maxsize=4096)
def timestamp(logged: str, reference: float | None = None) -> float | None:
    """Epoch seconds of a logged time, None when it cannot be read.

    RFC 3339 (rsyslog) and Exim's ``2024-03-01 10:00:00 [+0100]`` carry a date;
    traditional syslog (``Mar  1 10:00:00``) has no year: the year that puts it
    in the past of ``reference`` (now), at most a day ahead. Times without an
    offset are local time, as the MTA wrote them.
    """
    if not logged:
        return None
    try:
        if logged[:1].isdigit():  # "2024-03-01 10:00:00 +0100": no space before the offset
            return datetime.fromisoformat(logged.replace(" +", "+").replace(" -", "-")).timestamp()
        month, day, clock = logged.split()
        ref = datetime.fromtimestamp(reference if reference is not None else time.time())
        hour, minute, second = (int(x) for x in clock.split(":"))
        when = ref.replace(
            month=_MONTHS[month],
            day=int(day),
            hour=hour,
            minute=minute,
            second=second,
            microsecond=0,
        )
        if when.timestamp() > ref.timestamp() + 86400:
            when = when.replace(year=ref.year - 1)
        return when.timestamp()
    except (ValueError, KeyError):
        return None

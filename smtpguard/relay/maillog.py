"""The delivery log: one line per recipient attempt, in the spirit of Postfix's maillog.

An admin who knows Postfix's log knows this one. Text lines (``log.format =
"text"``), program names as Postfix's daemons have them::

    smtpguard/smtpd[812]: 000000002A: from=<alice@example.org>, size=1834, nrcpt=2,
      client=unknown[127.0.0.1], helo=<mail.example.org>, message-id=<x1@example.org>
    smtpguard/smtp[812]: 000000002A: to=<bob@example.com>, relay=mx.example.com[192.0.2.7]:25,
      delay=0.41, delays=0.01/0.02/0.22/0.16, dsn=2.0.0, status=sent (250 2.0.0 Ok: queued as 4F9D1)
    smtpguard/smtp[812]: 000000002A: to=<gone@example.com>, relay=mx.example.com[192.0.2.7]:25,
      delay=0.39, delays=0.01/0.02/0.22/0.14, dsn=5.1.1, status=bounced (host
      mx.example.com[192.0.2.7] said: 550 5.1.1 <gone@example.com>: User unknown (in reply to
      RCPT TO command)), reason=userunknown, suppression=suppressed
    smtpguard/bounce[812]: 000000002A: sender non-delivery notification: 000000002B
    smtpguard/smtpd[812]: NOQUEUE: to=<gone@example.com>, from=<alice@example.org>,
      client=unknown[127.0.0.1], helo=<mail.example.org>, dsn=5.1.1, status=suppressed (550 5.1.1
      <gone@example.com>: recipient suppressed by smtpguard: ...), reason=userunknown,
      evidence=rcpt-reply

(each one line). Up to the parenthesised reply a delivery line has Postfix's
fields in Postfix's order, so ``grep status=bounced``, ``grep 'to=<bob@'``,
``grep dsn=5.1.1`` and ``smtpguard logscan`` work on it as on Postfix's log;
smtpguard's own fields (``reason=``, ``suppression=``: what the suppression
sink made of the verdict) follow the reply. ``delays=a/b/c/d`` means what it
means in Postfix: a = before the queue (the client's MAIL FROM to our commit),
b = in the queue (the commit, and any retry waits, to this attempt), c =
connection setup (DNS, connect, greeting, EHLO, STARTTLS, AUTH; 0 on a reused
connection), d = transmission (MAIL FROM to the reply to the final dot);
``delay`` is their sum, from MAIL FROM to now.

``log.format = "json"``: one object per line with the same fields (and the
reply without Postfix's decoration, the stage, the sink's reason), for
shippers. Destinations (``log.destination``): ``stderr`` (journald under
systemd), ``syslog`` (``log.syslog_socket``, facility ``log.syslog_facility``,
default ``mail``: the lines land where Postfix's do) or ``file`` (``log.file``,
reopened when logrotate moves it).

Every value that came from elsewhere (a reply, a HELO name, a Message-ID, an
address) is sanitised: control characters (CR and LF included), Unicode line
separators and bidirectional overrides cannot reach a line, so a reply cannot
forge one. Lines are written by a thread of their own through a bounded queue:
a slow destination never stalls delivery; when the queue is full, lines are
dropped and counted (``smtpguard_delivery_log_dropped_total``).
"""

from __future__ import annotations

import collections
import json
import logging
import logging.handlers
import os
import socket
import sys
import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from smtpguard.config import LogConfig
from smtpguard.errors import UserError
from smtpguard.relay import metrics
from smtpguard.relay.observe import AttemptRecord, DsnQueued, Received, Refused
from smtpguard.smtp.text import log_safe as clean

log = logging.getLogger("smtpguard.relay")

#: Lines waiting for the writer thread before new ones are dropped.
QUEUE_LINES = 10_000
#: Postfix's words for the command a reply answered, by the classifier's stage.
_COMMANDS = {
    "helo": "EHLO", "mail": "MAIL FROM", "rcpt": "RCPT TO", "data": "DATA",
    "eom": "end of DATA",
}  # fmt: skip


def seconds(value: float) -> str:
    """A duration as Postfix logs it: two significant digits, whole seconds from 10 on,
    "0" below 10 ms."""
    if value < 0.01:
        return "0"
    if value >= 10:
        return str(round(value))
    return f"{value:.2g}"


def delays(r: AttemptRecord) -> tuple[float, float, float, float, float]:
    """``(delay, a, b, c, d)`` for a delivery-log line (see the module doc).

    ``b`` is what the others leave of the total, so waits between the phases
    (a shaper's pacing, a busy database) count as time in the queue.
    """
    arrived = r.arrived_at or r.received_at
    total = max(r.finished - arrived, 0.0)
    a = max(r.received_at - arrived, 0.0)
    c = r.timing.setup if r.timing else 0.0
    d = r.timing.transmit if r.timing else 0.0
    b = max(total - a - c - d, 0.0)
    return total, a, b, c, d


def _client(ip: str) -> str:
    return f"unknown[{clean(ip, 64)}]" if ip else "local"


class DeliveryLog:
    """The delivery log as an :class:`~smtpguard.relay.observe.Observer`.

    Finished lines go to ``writer`` (a :class:`LineWriter` for the configured
    destination).
    """

    def __init__(self, fmt: str, writer: LineWriter) -> None:
        self._json = fmt == "json"
        self._writer = writer
        self._host = socket.gethostname()

    # -- events

    def received(self, r: Received) -> None:
        fields: dict[str, Any] = {
            "from": clean(r.mail_from, 320), "size": r.size, "nrcpt": r.nrcpt,
            "client": _client(r.client), "helo": clean(r.helo, 255),
        }  # fmt: skip
        if r.auth_user:
            fields["sasl_username"] = clean(r.auth_user, 255)
        if r.message_id:
            fields["message-id"] = clean(r.message_id, 255)
        if self._json:
            self._emit_json("smtpd", "received", r.qid, fields)
            return
        text = ", ".join(_pair(k, v) for k, v in fields.items())
        self._writer.write("smtpd", f"{r.qid}: {text}")

    def refused(self, r: Refused) -> None:
        reply = clean(r.reply)
        fields: dict[str, Any] = {
            "to": clean(r.recipient, 320), "from": clean(r.mail_from, 320),
            "client": _client(r.client), "helo": clean(r.helo, 255),
            "dsn": clean(r.dsn, 16) or "5.0.0",
            "status": "suppressed", "reply": reply, "reason": clean(r.reason, 64),
            "evidence": clean(r.evidence, 32),
        }  # fmt: skip
        if self._json:
            self._emit_json("smtpd", "refused", "NOQUEUE", fields)
            return
        self._writer.write(
            "smtpd",
            "NOQUEUE: " + _status_line(fields, _REFUSAL_HEAD, reply, ("reason", "evidence")),
        )

    def attempts(self, records: Sequence[AttemptRecord]) -> None:
        for r in records:
            self._attempt(r)

    def _attempt(self, r: AttemptRecord) -> None:
        total, a, b, c, d = delays(r)
        reply = clean(f"{r.code} {r.reply}" if r.code else r.reply)
        fields: dict[str, Any] = {
            "to": clean(r.recipient, 320), "relay": clean(r.relay, 300) or "none",
            "delay": round(total, 3),
            "delays": {"before_queue": round(a, 3), "in_queue": round(b, 3),
                       "setup": round(c, 3), "transmission": round(d, 3)},
            "dsn": clean(r.dsn, 16), "status": r.status, "reply": reply,
            "reason": clean(r.reason, 64), "suppression": r.suppression,
        }  # fmt: skip
        if self._json:
            fields.update(
                code=clean(r.code, 3), stage=r.stage, suppression_why=clean(r.suppression_why)
            )
            if r.kind == "dsn":
                fields["kind"] = "dsn"
            self._emit_json("smtp", "delivery", r.qid, fields)
            return
        fields["delay"] = seconds(total)
        fields["delays"] = "/".join(seconds(x) for x in (a, b, c, d))
        extras: tuple[str, ...] = ()
        if r.status != "sent":
            extras = ("reason", "suppression")
            if r.status == "deferred" and r.suppression in ("", "ignored"):
                extras = ("reason",)
        elif r.suppression not in ("", "ignored"):
            extras = ("suppression",)  # a delivery that refuted a pending entry
        shown = _postfix_reply(r, reply) if r.status != "sent" else reply
        self._writer.write(
            "smtp", f"{r.qid}: " + _status_line(fields, _DELIVERY_HEAD, shown, extras)
        )

    def dsn(self, d: DsnQueued) -> None:
        if self._json:
            fields = {"to": clean(d.sender, 320), "dsn_queue_id": d.dsn_qid}
            self._emit_json("bounce", "dsn", d.qid, fields)
            return
        self._writer.write("bounce", f"{d.qid}: sender non-delivery notification: {d.dsn_qid}")

    # -- output

    def _emit_json(self, program: str, event: str, qid: str, fields: dict[str, Any]) -> None:
        now = time.time()
        doc = {
            "time": datetime.fromtimestamp(now, UTC).isoformat(timespec="milliseconds"),
            "host": self._host, "program": f"smtpguard/{program}", "pid": os.getpid(),
            "event": event, "queue_id": qid, **fields,
        }  # fmt: skip
        self._writer.write(program, json.dumps(doc, ensure_ascii=False, separators=(", ", ": ")))

    def close(self) -> None:
        self._writer.close()


def _pair(key: str, value: Any) -> str:
    return f"{key}=<{value}>" if key in ("from", "to", "helo") else f"{key}={value}"


#: The fields before ``status=``, in Postfix's order, for a delivery and for a refusal.
_DELIVERY_HEAD = ("to", "relay", "delay", "delays", "dsn")
_REFUSAL_HEAD = ("to", "from", "client", "helo", "dsn")


def _status_line(
    fields: dict[str, Any], head: Sequence[str], reply: str, extras: Sequence[str]
) -> str:
    """``to=<...>, ..., status=X (reply)[, extra=...]``: Postfix's fields up to the reply."""
    line = ", ".join(_pair(k, fields[k]) for k in head)
    line += f", status={fields['status']} ({reply})"
    for k in extras:
        line += f", {k}={fields[k]}"
    return line


def _postfix_reply(r: AttemptRecord, reply: str) -> str:
    """A failure's text as Postfix writes it: ``host H said: REPLY (in reply to CMD command)``."""
    if not r.code:
        return reply
    host = clean(r.relay, 300).rpartition(":")[0] or "the next hop"
    if r.stage == "connect":
        return f"host {host} refused to talk to me: {reply}"
    command = _COMMANDS.get(r.stage)
    after = f" (in reply to {command} command)" if command else ""
    return f"host {host} said: {reply}{after}"


# --------------------------------------------------------------------------- destinations

#: Lines handed to the destination at once (one write() for a file or stderr).
BATCH_LINES = 1000
#: How long closing the log waits for the writer thread to write what is queued.
CLOSE_WAIT = 10.0
#: Once woken, the writer thread lets lines gather this long before writing them:
#: one wake-up and one write() per batch instead of per line (a thread wake-up
#: costs the relay more CPU than formatting the line did).
LINGER = 0.05

Line = tuple[str, float, str]  # program, unix time, text


class Destination:
    """Where finished lines go, a batch at a time (called from the writer thread).

    A file or stderr gets one ``write()`` per batch (a file through
    :class:`logging.handlers.WatchedFileHandler`, reopened when logrotate moves
    it); syslog gets one datagram per line (:class:`logging.handlers.SysLogHandler`,
    which reconnects when syslogd restarts). Failures are counted
    (``smtpguard_delivery_log_errors_total``) and reported one line a minute.
    """

    def __init__(self, handler: logging.Handler, *, tag: bool, stamp: bool, name: str) -> None:
        self.handler = handler
        self.name = name
        self._tag = tag  # "smtpguard/PROGRAM[PID]: " before each line
        self._stamp = stamp  # and "TIME HOST " before that
        self._pid = os.getpid()
        self._host = socket.gethostname()
        self._last_report = 0.0

    def _format(self, line: Line) -> str:
        program, created, text = line
        if self._tag:
            text = f"smtpguard/{program}[{self._pid}]: {text}"
        if self._stamp:
            when = datetime.fromtimestamp(created, UTC).isoformat(timespec="microseconds")
            text = f"{when} {self._host} {text}"
        return text

    def write(self, batch: Sequence[Line]) -> None:
        h = self.handler
        try:
            if isinstance(h, logging.StreamHandler):
                if isinstance(h, logging.handlers.WatchedFileHandler):
                    h.reopenIfNeeded()
                h.stream.write("".join(self._format(line) + "\n" for line in batch))
                h.stream.flush()
            else:
                for line in batch:
                    record = logging.makeLogRecord(
                        {"msg": self._format(line), "levelno": logging.INFO, "levelname": "INFO"}
                    )
                    h.emit(record)
        except Exception as e:
            metrics.LOG_ERRORS.inc(len(batch))
            now = time.monotonic()
            if now - self._last_report >= 60:
                self._last_report = now
                log.error("delivery log: writing to %s failed: %s", self.name, e)

    def close(self) -> None:
        self.handler.close()


class _Syslog(logging.handlers.SysLogHandler):
    def handleError(self, record: logging.LogRecord) -> None:
        """Raise to :meth:`Destination.write`, which counts and reports (not a traceback)."""
        raise


class LineWriter:
    """Finished lines -> a bounded in-memory line -> a thread that writes them in batches.

    :meth:`write` costs an append (and, when the thread sleeps, a wake-up): the
    relay's loop never waits for a disk, journald or syslogd. Beyond
    ``capacity`` waiting lines, new ones are dropped and counted. A woken thread
    waits :data:`LINGER` before taking the lines (the wake flag stays set
    meanwhile, so the lines added then cost no wake-up): under load one wake-up
    and one write() serve many lines; a line is written at most that late.
    """

    def __init__(self, destination: Destination, *, capacity: int = QUEUE_LINES) -> None:
        self._destination = destination
        self._lines: collections.deque[Line] = collections.deque()
        self._capacity = capacity
        self._wake = threading.Event()
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="delivery-log", daemon=True)
        self._thread.start()

    def write(self, program: str, line: str) -> None:
        if len(self._lines) >= self._capacity:
            metrics.LOG_DROPPED.inc()
            return
        self._lines.append((program, time.time(), line))
        if not self._wake.is_set():
            self._wake.set()

    def _run(self) -> None:
        lines = self._lines
        while True:
            self._wake.wait()
            if not self._closing:
                time.sleep(LINGER)  # let more lines come; they find the flag set
            self._wake.clear()  # before taking: a line added from now on wakes us again
            while lines:
                batch = [lines.popleft() for _ in range(min(len(lines), BATCH_LINES))]
                self._destination.write(batch)
            if self._closing:
                return

    def close(self) -> None:
        """Write what is queued (waiting at most :data:`CLOSE_WAIT`), then close the
        destination. A destination stuck longer loses the rest: shutdown must not hang."""
        self._closing = True
        self._wake.set()
        self._thread.join(CLOSE_WAIT)
        if self._thread.is_alive():
            log.error("delivery log: %s is stuck; %d lines lost", self._destination.name,
                      len(self._lines))  # fmt: skip
            return
        self._destination.close()


def stderr_is_journal() -> bool:
    """True when stderr is systemd's journal stream (which stamps time and host itself):
    ``JOURNAL_STREAM`` names its device and inode (systemd.exec(5)), and they must be
    stderr's, not a variable inherited by a process whose stderr went elsewhere."""
    try:
        st = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return os.environ.get("JOURNAL_STREAM") == f"{st.st_dev}:{st.st_ino}"


def open_destination(cfg: LogConfig) -> Destination:
    """The destination for ``log.destination``; a one-line :class:`UserError` if it cannot open.

    Text lines carry Postfix's ``smtpguard/PROGRAM[PID]:`` tag (syslog gets it
    as the tag; a file gets a timestamp and host first, as syslog writes them;
    stderr too, except under journald, which adds them itself). JSON lines are
    the object alone, except through syslog, which needs the tag.
    """
    text = cfg.format == "text"
    if cfg.destination == "syslog":
        facility = logging.handlers.SysLogHandler.facility_names[cfg.syslog_facility]
        handler: logging.Handler = _Syslog(address=cfg.syslog_socket, facility=facility)
        return Destination(handler, tag=True, stamp=False, name=f"syslog {cfg.syslog_socket}")
    if cfg.destination == "file":
        if not cfg.file:
            raise UserError("log.destination is file but log.file is empty")
        try:
            handler = logging.handlers.WatchedFileHandler(cfg.file, encoding="utf-8")
        except OSError as e:
            raise UserError(f"log.file: cannot open {cfg.file}: {e.strerror or e}") from None
        return Destination(handler, tag=text, stamp=text, name=cfg.file)
    handler = logging.StreamHandler(sys.stderr)
    return Destination(handler, tag=text, stamp=text and not stderr_is_journal(), name="stderr")


def open_delivery_log(cfg: LogConfig) -> DeliveryLog:
    """The delivery log the relay writes, as configured."""
    return DeliveryLog(cfg.format, LineWriter(open_destination(cfg)))

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

import json
import logging
import logging.handlers
import os
import queue
import socket
import sys
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

    ``write(program, line)`` is where finished lines go: by default a
    :class:`LineWriter` for the configured destination.
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


class _Counted(logging.Handler):
    """A handler whose failures are counted and reported one line a minute, not per line."""

    _last_report = 0.0

    def handleError(self, record: logging.LogRecord) -> None:
        metrics.LOG_ERRORS.inc()
        now = time.monotonic()
        if now - self._last_report >= 60:
            self._last_report = now
            err = sys.exc_info()[1]
            log.error("delivery log: writing to %s failed: %s", self.name, err)


class _Stream(_Counted, logging.StreamHandler):  # type: ignore[type-arg]
    pass


class _File(_Counted, logging.handlers.WatchedFileHandler):
    pass


class _Syslog(_Counted, logging.handlers.SysLogHandler):
    pass


class _Dropping(logging.handlers.QueueHandler):
    def enqueue(self, record: logging.LogRecord) -> None:
        try:
            self.queue.put_nowait(record)
        except queue.Full:
            metrics.LOG_DROPPED.inc()


#: How long closing the log waits for a stuck destination to take what is queued.
CLOSE_WAIT = 10.0


class _Listener(logging.handlers.QueueListener):
    def stop(self) -> None:
        """Let the thread write what is queued, waiting at most :data:`CLOSE_WAIT` for room
        for the end mark and as long again for the thread (a stuck destination must not
        hang the relay's shutdown; the thread is a daemon)."""
        thread = self._thread
        if thread is None:
            return
        try:
            self.queue.put(self._sentinel, timeout=CLOSE_WAIT)
        except queue.Full:
            log.error("delivery log: the destination is stuck; %d lines lost", self.queue.qsize())
            return
        thread.join(CLOSE_WAIT)
        self._thread = None


class LineWriter:
    """Finished lines -> a bounded queue -> a thread writing to the destination."""

    def __init__(self, handler: logging.Handler, *, capacity: int = QUEUE_LINES) -> None:
        self._queue: queue.Queue[logging.LogRecord] = queue.Queue(capacity)
        self._front = _Dropping(self._queue)
        self._listener = _Listener(self._queue, handler)
        self._handler = handler
        self._pid = os.getpid()
        self._listener.start()

    def write(self, program: str, line: str) -> None:
        record = logging.makeLogRecord(
            {
                "msg": line,
                "levelno": logging.INFO,
                "levelname": "INFO",
                "program": program,
                "process": self._pid,
            }
        )
        self._front.enqueue(record)

    def close(self) -> None:
        """Write what is queued, then stop the thread and close the destination."""
        self._listener.stop()
        self._handler.close()


class _Prefix(logging.Formatter):
    """``[TIME HOST ]smtpguard/PROGRAM[PID]: line`` (time and host only for a file)."""

    def __init__(self, *, stamp: bool, host: str = "") -> None:
        super().__init__()
        self._stamp = stamp
        self._host = host

    def format(self, record: logging.LogRecord) -> str:
        tag = f"smtpguard/{getattr(record, 'program', 'relay')}[{record.process}]: "
        if not self._stamp:
            return tag + record.getMessage()
        when = datetime.fromtimestamp(record.created, UTC).isoformat(timespec="microseconds")
        return f"{when} {self._host} {tag}{record.getMessage()}"


class _Bare(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return record.getMessage()


def stderr_is_journal() -> bool:
    """True when stderr is systemd's journal stream (which stamps time and host itself):
    ``JOURNAL_STREAM`` names its device and inode (systemd.exec(5)), and they must be
    stderr's, not a variable inherited by a process whose stderr went elsewhere."""
    try:
        st = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return os.environ.get("JOURNAL_STREAM") == f"{st.st_dev}:{st.st_ino}"


def open_destination(cfg: LogConfig) -> logging.Handler:
    """The handler for ``log.destination``; a one-line :class:`UserError` if it cannot open.

    Text lines carry Postfix's ``smtpguard/PROGRAM[PID]:`` tag (syslog gets it
    as the tag; a file gets a timestamp and host first, as syslog writes them;
    stderr under journald gets neither time nor host, journald adds them). JSON
    lines are the object alone, except through syslog, which needs the tag.
    """
    text = cfg.format == "text"
    handler: logging.Handler
    if cfg.destination == "syslog":
        facility = logging.handlers.SysLogHandler.facility_names[cfg.syslog_facility]
        handler = _Syslog(address=cfg.syslog_socket, facility=facility)
        handler.setFormatter(_Prefix(stamp=False))
    elif cfg.destination == "file":
        if not cfg.file:
            raise UserError("log.destination is file but log.file is empty")
        try:
            handler = _File(cfg.file, encoding="utf-8")
        except OSError as e:
            raise UserError(f"log.file: cannot open {cfg.file}: {e.strerror or e}") from None
        handler.setFormatter(_Prefix(stamp=True, host=socket.gethostname()) if text else _Bare())
    else:
        handler = _Stream(sys.stderr)
        stamped = _Prefix(stamp=not stderr_is_journal(), host=socket.gethostname())
        handler.setFormatter(stamped if text else _Bare())
    handler.name = cfg.destination if cfg.destination != "file" else cfg.file
    return handler


def open_delivery_log(cfg: LogConfig) -> DeliveryLog:
    """The delivery log the relay writes, as configured."""
    return DeliveryLog(cfg.format, LineWriter(open_destination(cfg)))

"""``smtpguard milter``: suppression and bounce recording inside Postfix (pymilter).

A thin adapter: no SQL and no SMTP parsing here. Per SMTP session libmilter
runs one thread and one :class:`Session`; what all sessions share is a
:class:`MilterApp` (the recipient policy, the verdict sink, the classifier,
the settings).

* **RCPT**: ``RecipientPolicy.check``; a suppressed recipient gets
  ``milter.on_suppressed``: ``reject`` with exactly the relay's reply (``550
  5.1.1 <bob@example.com>: recipient suppressed by smtpguard: ...``),
  ``tempfail`` (450 4.x.x, a dry run) or ``discard`` (accepted at RCPT,
  removed from the envelope at end of message: the other recipients still get
  the message). Postfix forbids refusing recipients of locally submitted mail
  (``non_smtpd_milters``), so there a refusal is logged and the recipient passes.
* **End of message**, for incoming mail (not from ``milter.internal_networks``,
  not authenticated, not submitted locally) and for mail returned to the bounce
  domain (every recipient a ``b+TOKEN@`` address, whoever sends it: Postfix's own
  DSNs too): the message is judged exactly as the intake listener judges it
  (:func:`smtpguard.intake.returned.judge`: ``dsn-verified`` / ``arf`` only with a
  signed return path naming the reported recipient, checked against what was
  sent); its verdicts go to ``VerdictSink.accept``; optionally an
  ``X-Smtpguard-Bounce:`` header per verdict (one that arrived with the message
  is removed first: it is not ours). Mail for the bounce domain ends here once
  recorded (discarded: this is its final delivery) unless ``intake.listen`` is set:
  then Postfix routes it to the intake listener, which records it, and the milter
  leaves it alone (one record per bounce, not two).
* **Signed return paths** (``milter.rewrite_sender``): outgoing mail with exactly
  one recipient leaves with the envelope sender ``b+TOKEN@<bounce domain>``
  (SMFIR_CHGFROM). A token names one message and one recipient, and a milter sees
  one envelope sender per message, so a message to several recipients keeps its
  sender (its bounces prove nothing about any one of them); bulk mail is one
  recipient per message anyway. The milter has no queue: each signed message is a
  row of its own (:mod:`smtpguard.store.sent`: Postfix queue id, sender,
  recipient) in an id space apart from the relay's, so returned mail to such a
  path is checked as for the relay's. Failing to sign never holds mail back: the
  message leaves with its own sender.
* **Never blocks mail because of its own trouble**: an exception, a failed
  lookup or a record slower than ``milter.record_timeout`` answers
  ``milter.on_error`` (``accept`` or ``tempfail``); Postfix's own
  ``milter_default_action`` covers a milter that is down or hangs.

The sink is asynchronous: it runs in a :class:`~smtpguard.postfix.background.BackgroundLoop`.
pymilter's module is imported as ``Milter`` (its C part is the top-level ``milter``
module; the repository's ``milter/`` folder has no ``__init__.py`` so it never
shadows it).
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import os
import signal
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import Milter

from smtpguard.classify import Classifier
from smtpguard.classify.verdict import Verdict
from smtpguard.config import Config, parse_milter_socket
from smtpguard.errors import UserError
from smtpguard.intake.returned import SentRecords, judge
from smtpguard.intake.verp import SignedVerpCodec, VerpCodec
from smtpguard.policy import open_recipient_policy, open_sink
from smtpguard.policy.recipient import Client, RecipientPolicy
from smtpguard.policy.rules import canonical
from smtpguard.policy.sink import VerdictSink
from smtpguard.postfix.answers import Answer, milter_reply, rcpt_answer, trouble_answer
from smtpguard.postfix.background import MILTER_SIGNALS, BackgroundLoop
from smtpguard.postfix.bounces import HEADER, MAX_HEADERS, MessageCopy, bounce_header
from smtpguard.postfix.metrics import BOUNCES, REWRITE_RESULTS, ServiceMetrics
from smtpguard.store import fleet
from smtpguard.store.sent import SentLookup, note_milter_message, purge_milter_messages
from smtpguard.store.writer import DbThread, Writer, open_thread

if TYPE_CHECKING:
    from smtpguard.store.pg.replicator import Replicator

log = logging.getLogger("smtpguard.milter")

#: The name libmilter registers (Postfix logs it with the milter's replies).
NAME = "smtpguard"
#: Longest wait at start-up for the sink to open.
OPEN_TIMEOUT = 60.0

#: The macros asked for with MAIL FROM (instead of a CONNECT event).
MAIL_MACROS = "{auth_authen} {client_addr} {client_name} {client_port}"
#: (verdict, evidence kind, sink outcome or "" when unknown) for each recorded verdict.
Recorded = tuple[Verdict, str, str]
#: How often, at most, signed messages whose tokens have all expired are deleted.
PURGE_INTERVAL = 3600.0
#: Kept this long past the token lifetime (a token is valid to the end of its last day).
PURGE_MARGIN = 2 * 86400.0


class MilterApp:
    """What every session shares. Thread-safe: libmilter calls from one thread per session."""

    def __init__(
        self,
        cfg: Config,
        policy: RecipientPolicy,
        sink: VerdictSink,
        loop: BackgroundLoop,
        classifier: Classifier,
        *,
        codec: VerpCodec | None = None,
        sent: SentRecords | None = None,
        writer: Writer | None = None,
    ) -> None:
        self.settings = cfg.milter
        self.policy = policy
        self.sink = sink
        self.loop = loop
        self.classifier = classifier
        self.codec = codec  # signed return paths: None without intake.bounce_domain
        self.sent = sent
        self.writer = writer
        #: Postfix routes the bounce domain to the intake listener: leave that mail to it.
        self.intake_listens = bool(cfg.intake.listen)
        self.rewrites = self.settings.rewrite_sender and codec is not None and writer is not None
        self.token_lifetime = cfg.intake.token_lifetime
        self._purged_at = 0.0
        self.metrics = ServiceMetrics("milter")
        self.internal = [
            ipaddress.ip_network(n, strict=False) for n in self.settings.internal_networks
        ]
        self.is_internal = functools.lru_cache(maxsize=4096)(self._is_internal)
        # The policy holds one SQLite connection; sessions take turns (a lookup is ~20 us).
        self._policy_lock = threading.Lock()
        self._classify_lock = threading.Lock()

    def at_bounce_domain(self, address: str) -> bool:
        """Is ``address`` (``<b+...@bounce.example>`` as Postfix gives it) at the bounce domain?"""
        return self.codec is not None and canonical(address).rpartition("@")[2] == self.codec.domain

    def _is_internal(self, ip: str) -> bool:
        try:
            address = ipaddress.ip_address(ip)
        except ValueError:
            return False
        return any(address in net for net in self.internal)

    def check_recipient(
        self, sender: str, recipient: str, client: Client, authenticated: bool
    ) -> Answer:
        """The recipient's answer; smtpguard's own failure becomes ``milter.on_error``."""
        self.metrics.requests.inc()
        started = time.perf_counter()
        try:
            with self._policy_lock:
                decision = self.policy.check(sender, recipient, client, authenticated)
            answer = rcpt_answer(decision, self.settings.on_suppressed, self.settings.on_error)
        except Exception:
            log.exception("recipient check failed for %r", recipient[:100])
            answer = trouble_answer(self.settings.on_error)
        self.metrics.latency.observe(time.perf_counter() - started)
        if answer.trouble:
            self.metrics.errors["lookup"].inc()
        self.metrics.answered(answer)
        return answer

    def record(self, raw: bytes, return_paths: Sequence[str], queue_id: str) -> list[Recorded]:
        """Judge an incoming message as the intake listener does and hand its verdicts to
        the sink, bounded in time.

        ``return_paths``: the message's envelope recipients (where it was sent back to).
        Returns what was recorded ([] for a message that is not a bounce, or an
        auto-reply). Raises TimeoutError when the sink is slower than
        ``milter.record_timeout`` (the record then completes in the background) and
        whatever the classifier, the look-up of what was sent or the sink raised.
        """
        with self._classify_lock:  # Classifier.stats is a shared Counter
            judgement = judge(
                raw, return_paths, codec=self.codec, classifier=self.classifier, actor="milter",
                sent=self.sent,
            )  # fmt: skip
        pending = []
        for batch in judgement.batches:
            kind = batch.evidence.kind
            note = f"postfix queue id {queue_id or '?'}; {batch.evidence.note}"
            evidence = replace(batch.evidence, note=note)
            future = self.loop.submit(self.sink.accept(batch.verdicts, evidence))
            pending.append((kind, batch.verdicts, future))
        deadline = time.monotonic() + self.settings.record_timeout
        recorded: list[Recorded] = []
        failure: Exception | None = None
        for kind, batch, future in pending:
            outcomes = [""] * len(batch)  # not known (yet)
            try:
                report = future.result(max(deadline - time.monotonic(), 0.0))
                if len(report.applied) == len(batch):  # one per verdict, in order
                    outcomes = [applied.outcome for applied in report.applied]
            except TimeoutError as e:
                failure = failure or e
                future.add_done_callback(lambda f, k=kind: _late(f, k, queue_id))
            except Exception as e:
                failure = failure or e
            shown = []
            for v, outcome in zip(batch, outcomes, strict=True):
                BOUNCES.labels(kind, outcome or "unknown").inc()
                recorded.append((v, kind, outcome))
                shown.append(f"{v.recipient} {v.reason} {outcome or '?'}")
            log.info("%s: %s: %s", queue_id or "-", kind, ", ".join(shown))
        if failure is not None:
            raise failure
        return recorded

    def sign(self, queue_id: str, sender: str, recipient: str) -> str:
        """A signed return path for a message to ``recipient``: the message is recorded
        first (so returned mail can ask whether it was sent), within
        ``milter.record_timeout`` (TimeoutError beyond; the message then keeps its sender)."""
        codec, writer = self.codec, self.writer
        assert codec is not None and writer is not None
        now = time.time()
        purge = now - self._purged_at >= PURGE_INTERVAL
        expired = now - self.token_lifetime - PURGE_MARGIN

        def write(conn: sqlite3.Connection) -> int:
            if purge:
                purge_milter_messages(conn, expired)
            return note_milter_message(conn, queue_id, sender, recipient, now)

        token_id = self.loop.run(writer.call(write), self.settings.record_timeout)
        if purge:
            self._purged_at = now
        return codec.encode(token_id, recipient, now=now)


def _late(future: Any, kind: str, queue_id: str) -> None:
    """Log how a record that outlived ``milter.record_timeout`` ended."""
    if future.cancelled():
        return
    error = future.exception()
    if error is not None:
        log.error("%s: recording %s verdicts failed: %s", queue_id or "-", kind, error)
    else:
        log.info("%s: %s verdicts recorded after the timeout", queue_id or "-", kind)


class Session(Milter.Base):
    """One SMTP session as libmilter reports it: RCPT checks (and end of message for discard).

    Every event Postfix sends costs a packet and a hand-over of Python's GIL to
    libmilter's thread, which is most of a milter's cost per message; so the
    session asks for as few as it can. No CONNECT or HELO event: the client's
    address comes with MAIL FROM as macros (``SETSYMLIST``, Postfix 2.6 and
    later), and the HELO name is not asked for (the recipient policy gets it
    empty); MAIL FROM needs no reply; outgoing mail ends at DATA (:meth:`data`).
    """

    def __init__(self, app: MilterApp) -> None:
        self.app = app
        self.client = Client()
        self.non_smtp = False
        self._new_message()

    def _new_message(self) -> None:
        self.sender = ""
        self.authenticated = False
        self.inbound = False
        self.recipients: list[str] = []
        self.dropped: list[str] = []
        self.copy: MessageCopy | None = None
        self.foreign_headers = 0
        self.keep = False  # judge this message at its end (a copy is kept)
        self.final = False  # mail for the bounce domain: the milter is its final delivery
        self.signs: str = ""  # the one recipient whose return path the sender becomes

    def negotiate(self, opts: list[int]) -> int:
        rc = super().negotiate(opts)
        if rc == Milter.CONTINUE and self._actions & Milter.SETSYMLIST:
            # pymilter's own setsymlist hands the C module bytes where it wants str.
            self._ctx.setsymlist(Milter.M_ENVFROM, MAIL_MACROS)
        return rc

    # -- envelope

    @Milter.noreply
    def envfrom(self, sender: str, *params: str) -> int:
        self._new_message()
        self.sender = sender
        try:
            ip = self.getsymval("{client_addr}") or ""
            name = self.getsymval("{client_name}") or ""
            self.client = Client(ip=ip, name="" if name == "unknown" else name)
            # Locally submitted mail (non_smtpd_milters): Postfix's cleanup pretends
            # an ESMTP client "localhost" at 127.0.0.1 without a client port.
            self.non_smtp = name == "localhost" and self.getsymval("{client_port}") == "0"
            self.authenticated = bool(self.getsymval("{auth_authen}"))
            self.inbound = not (self.non_smtp or self.authenticated or self.app.is_internal(ip))
        except Exception:
            log.exception("envelope sender step failed")
        return Milter.CONTINUE

    def envrcpt(self, recipient: str, *params: str) -> int:
        answer = self.app.check_recipient(self.sender, recipient, self.client, self.authenticated)
        if answer.verb in ("reject", "tempfail") and self.non_smtp:
            log.warning(
                "<%s> (%s) passes: Postfix does not let a milter refuse recipients of "
                "locally submitted mail", recipient[:100], answer.reply,
            )  # fmt: skip
            self.app.metrics.errors["non_smtp"].inc()
        elif answer.verb in ("reject", "tempfail"):
            try:
                self.setreply(*milter_reply(answer))
            except Exception:
                log.exception("setreply failed for %r", answer.reply)
            return Milter.REJECT if answer.verb == "reject" else Milter.TEMPFAIL
        self.recipients.append(recipient)
        if answer.verb == "discard":
            self.dropped.append(recipient)
        return Milter.CONTINUE

    def data(self) -> int:
        """DATA: a message with nothing left to do is done with here.

        Accepting at DATA tells Postfix to send none of the message's header,
        body and end-of-message events: outgoing mail (the bulk of a sender's
        traffic) costs the milter two events, MAIL FROM and RCPT TO. Only a
        message to judge (incoming, or returned to the bounce domain), one with
        a recipient to drop or one whose sender is signed goes on to end of message.
        """
        try:
            self._plan()
        except Exception:
            log.exception("planning the end of message failed")
        if self.dropped or self.keep or self.signs:
            return Milter.CONTINUE
        return Milter.ACCEPT

    def _plan(self) -> None:
        """What end of message does with this message (see the module doc)."""
        app = self.app
        if app.codec is None:
            self.keep = self.inbound and app.settings.record_bounces
            return
        ours = [app.at_bounce_domain(r) for r in self.recipients]
        returned = bool(ours) and all(ours)
        if app.settings.record_bounces and not (app.intake_listens and any(ours)):
            self.keep = self.inbound or returned
            self.final = returned
        if not app.rewrites or self.inbound or any(ours):
            return
        sender = self.sender.strip().strip("<>")
        if not sender or app.at_bounce_domain(sender):
            return  # a DSN keeps its null sender; a signed sender stays as it is
        left = {canonical(r): r for r in self.recipients if r not in self.dropped}
        if len(left) == 1:
            self.signs = next(iter(left.values()))
        elif left:
            REWRITE_RESULTS["several_recipients"].inc()

    # -- end of message

    def eom(self) -> int:
        try:
            if self.dropped:
                if set(self.dropped) >= set(self.recipients):
                    return Milter.DISCARD
                for recipient in dict.fromkeys(self.dropped):
                    self.delrcpt(recipient)
            if self.copy is not None:
                self._bounce()
            if self.final:
                return Milter.DISCARD  # recorded: nothing to deliver (the bounce domain)
            if self.signs:
                self._sign(self.signs)
            return Milter.CONTINUE
        except Exception as e:
            if not isinstance(e, TimeoutError):
                log.exception("end of message failed")
            self.app.metrics.errors["record" if isinstance(e, TimeoutError) else "internal"].inc()
            return self._trouble()
        finally:
            self._new_message()

    def _bounce(self) -> None:
        assert self.copy is not None
        for index in range(self.foreign_headers, 0, -1):
            self.chgheader(HEADER, index, "")
        queue_id = self.getsymval("i") or ""
        recorded = self.app.record(self.copy.data(), self.recipients, queue_id)
        if self.app.settings.bounce_header:
            for verdict, kind, outcome in recorded[:MAX_HEADERS]:
                self.addheader(HEADER, bounce_header(verdict, kind, outcome))

    def _sign(self, recipient: str) -> None:
        """The envelope sender becomes the recipient's signed return path; on any failure
        the message leaves with its own sender (logged, counted)."""
        try:
            return_path = self.app.sign(
                self.getsymval("i") or "", self.sender.strip().strip("<>"),
                recipient.strip().strip("<>"),
            )  # fmt: skip
            self.chgfrom(f"<{return_path}>")
        except Exception as e:
            log.error("signing the return path for <%s> failed: %r", recipient[:100], e)
            self.app.metrics.errors["rewrite"].inc()
            REWRITE_RESULTS["failed"].inc()
            return
        REWRITE_RESULTS["rewritten"].inc()

    def _trouble(self) -> int:
        answer = trouble_answer(self.app.settings.on_error)
        if answer.verb == "continue":
            return Milter.CONTINUE
        self.setreply(*milter_reply(answer))
        return Milter.TEMPFAIL

    def abort(self) -> int:
        self._new_message()
        return Milter.CONTINUE

    def close(self) -> int:
        return Milter.CONTINUE


class BounceSession(Session):
    """A session that also keeps incoming messages for bounce classification."""

    @Milter.noreply
    def header(self, name: str, value: str) -> int:
        if self.keep:
            if name.lower() == HEADER.lower():
                self.foreign_headers += 1
            if self.copy is None:
                self.copy = MessageCopy()
            self.copy.header(name, value)
        return Milter.CONTINUE

    @Milter.noreply
    def body(self, chunk: bytes) -> int:
        if self.copy is not None:
            self.copy.body(chunk)
        return Milter.CONTINUE


# --------------------------------------------------------------------------- running


def libmilter_socket(listen: str) -> str:
    """``inet:127.0.0.1:8891`` (Postfix's form) -> ``inet:8891@127.0.0.1`` (libmilter's)."""
    kind, host, port = parse_milter_socket(listen)
    if kind == "unix":
        return f"unix:{host}"
    return f"inet6:{port}@{host}" if ":" in host else f"inet:{port}@{host}"


def _register(factory: Callable[[], Session], on_error: str, *, chgfrom: bool = False) -> None:
    """Wire libmilter's callbacks to sessions made by ``factory`` (what pymilter's
    ``runmilter`` does, split so that the socket is bound before ``main`` blocks)."""
    Milter.factory = factory
    Milter.set_connect_callback(Milter.connect_callback)
    Milter.set_helo_callback(lambda ctx, host: ctx.getpriv().hello(host))
    Milter.set_envfrom_callback(lambda ctx, *b: ctx.getpriv().envfrom_bytes(*b))
    Milter.set_envrcpt_callback(lambda ctx, *b: ctx.getpriv().envrcpt_bytes(*b))
    Milter.set_header_callback(lambda ctx, f, v: ctx.getpriv().header_bytes(f, v))
    Milter.set_eoh_callback(lambda ctx: ctx.getpriv().eoh())
    Milter.set_body_callback(lambda ctx, chunk: ctx.getpriv().body(chunk))
    Milter.set_eom_callback(lambda ctx: ctx.getpriv().eom())
    Milter.set_abort_callback(lambda ctx: ctx.getpriv().abort())
    Milter.set_close_callback(Milter.close_callback)
    # An exception that escapes a callback anyway answers like any other trouble.
    Milter.set_exception_policy(Milter.CONTINUE if on_error == "accept" else Milter.TEMPFAIL)
    Milter.set_flags(
        Milter.ADDHDRS | Milter.CHGHDRS | Milter.DELRCPT | (Milter.CHGFROM if chgfrom else 0)
    )
    Milter.register(
        NAME,
        data=lambda ctx: ctx.getpriv().data(),
        unknown=lambda ctx, cmd: ctx.getpriv().unknown(cmd),
        negotiate=Milter.negotiate_callback,
    )


def run(cfg: Config, *, on_listening: Callable[[str], None] | None = None) -> int:
    """Run the milter until SIGTERM, SIGINT or SIGHUP; returns the exit code (0).

    Raises :class:`~smtpguard.errors.UserError` when the socket cannot be bound
    or the store or the rules cannot be opened.
    """
    # Before any thread exists (the sink's loop, the metrics server): see background.py.
    signal.pthread_sigmask(signal.SIG_BLOCK, MILTER_SIGNALS)
    settings = cfg.milter
    spec = libmilter_socket(settings.listen)
    classifier = Classifier.load(cfg.classifier.rules_file or None)
    codec = SignedVerpCodec.from_config(cfg.intake)  # a bad key file fails here
    policy = open_recipient_policy(cfg)
    sent = SentLookup.open(cfg.data_dir, busy_timeout=cfg.store.busy_timeout, group=cfg.store.group)
    loop = BackgroundLoop("smtpguard-sink")
    writer: DbThread | None = None
    sink: VerdictSink | None = None
    replicator: Replicator | None = None
    try:
        # The process's one writer: the sink's records and the signed messages.
        writer = loop.run(
            open_thread(
                cfg.data_dir, busy_timeout=cfg.store.busy_timeout, transactional=True,
                name="writer", group=cfg.store.group,
            ),
            OPEN_TIMEOUT,
        )  # fmt: skip
        sink = loop.run(open_sink(cfg, writer=writer), OPEN_TIMEOUT)
        node = fleet.prepare(cfg)  # a fleet node keeps its cache in sync (store.backend)
        if node is not None:
            replicator = loop.run(
                fleet.start_replicator(cfg, node, writer, on_pulled=sink.note_fleet_rows),
                OPEN_TIMEOUT,
            )
        app = MilterApp(cfg, policy, sink, loop, classifier, codec=codec, sent=sent, writer=writer)
        session = BounceSession if settings.record_bounces else Session
        _register(lambda: session(app), settings.on_error, chgfrom=app.rewrites)
        if settings.metrics_listen:
            from smtpguard.metrics import serve as serve_metrics

            serve_metrics(settings.metrics_listen)
        _open_socket(spec, settings.listen, settings.socket_mode)
        log.info("milter listening on %s", settings.listen)
        if on_listening is not None:
            on_listening(settings.listen)
        Milter.main()
        log.info("milter stopped")
    finally:
        if replicator is not None:
            try:
                loop.run(replicator.stop(), OPEN_TIMEOUT)
            except Exception:
                log.exception("stopping the fleet replicator failed")
        if sink is not None:
            try:
                loop.run(sink.close(), OPEN_TIMEOUT)
            except Exception:
                log.exception("closing the verdict sink failed")
        if writer is not None:
            writer.close()
        loop.stop()
        sent.close()
        policy.close()
    return 0


def _open_socket(spec: str, listen: str, mode: str) -> None:
    """Bind the socket (a unix socket with ``milter.socket_mode`` permissions)."""
    Milter.setconn(spec)
    umask = os.umask(0o777 & ~int(mode, 8)) if spec.startswith("unix:") else None
    try:
        Milter.opensocket(True)
    except Milter.error as e:
        raise UserError(f"milter.listen {listen}: cannot listen ({e})") from None
    finally:
        if umask is not None:
            os.umask(umask)

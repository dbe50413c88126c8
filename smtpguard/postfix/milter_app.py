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
  not authenticated, not submitted locally): the message is classified
  (``Classifier.message``); its verdicts go to ``VerdictSink.accept`` with the
  evidence :func:`~smtpguard.postfix.bounces.evidence_kind` chooses; optionally an
  ``X-Smtpguard-Bounce:`` header per verdict (one that arrived with the message
  is removed first: it is not ours).
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
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import Milter

from smtpguard.classify import Classifier
from smtpguard.classify.verdict import Verdict
from smtpguard.config import Config, parse_milter_socket
from smtpguard.errors import UserError
from smtpguard.policy import Evidence, EvidenceKind, open_recipient_policy, open_sink
from smtpguard.policy.recipient import Client, RecipientPolicy
from smtpguard.policy.sink import VerdictSink
from smtpguard.postfix.answers import Answer, milter_reply, rcpt_answer, trouble_answer
from smtpguard.postfix.background import MILTER_SIGNALS, BackgroundLoop
from smtpguard.postfix.bounces import (
    HEADER,
    MAX_HEADERS,
    MessageCopy,
    ReturnPathCheck,
    bounce_header,
    evidence_kind,
)
from smtpguard.postfix.metrics import BOUNCES, ServiceMetrics

log = logging.getLogger("smtpguard.milter")

#: The name libmilter registers (Postfix logs it with the milter's replies).
NAME = "smtpguard"
#: Longest wait at start-up for the sink to open.
OPEN_TIMEOUT = 60.0

#: The macros asked for with MAIL FROM (instead of a CONNECT event).
MAIL_MACROS = "{auth_authen} {client_addr} {client_name} {client_port}"
#: (verdict, evidence kind, sink outcome or "" when unknown) for each recorded verdict.
Recorded = tuple[Verdict, str, str]


class MilterApp:
    """What every session shares. Thread-safe: libmilter calls from one thread per session."""

    def __init__(
        self,
        cfg: Config,
        policy: RecipientPolicy,
        sink: VerdictSink,
        loop: BackgroundLoop,
        classifier: Classifier,
        return_path_check: ReturnPathCheck | None = None,
    ) -> None:
        self.settings = cfg.milter
        self.policy = policy
        self.sink = sink
        self.loop = loop
        self.classifier = classifier
        self.return_path_check = return_path_check
        self.metrics = ServiceMetrics("milter")
        self.internal = [
            ipaddress.ip_network(n, strict=False) for n in self.settings.internal_networks
        ]
        self.is_internal = functools.lru_cache(maxsize=4096)(self._is_internal)
        # The policy holds one SQLite connection; sessions take turns (a lookup is ~20 us).
        self._policy_lock = threading.Lock()
        self._classify_lock = threading.Lock()

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
        self.metrics.answered(answer.verb)
        return answer

    def _evidence(self, kind: EvidenceKind, queue_id: str) -> Evidence:
        """The evidence for one batch; an unverified DSN's note says why it is unverified."""
        note = f"postfix queue id {queue_id or '?'}"
        if kind == "dsn-unverified" and self.return_path_check is None:
            note += "; no-token: return paths are not checked (no VERP codec)"
        return Evidence(kind=kind, actor="milter", note=note)

    def record(self, raw: bytes, return_paths: Sequence[str], queue_id: str) -> list[Recorded]:
        """Classify an incoming message and hand its verdicts to the sink, bounded in time.

        Returns what was recorded ([] for a message that is not a bounce). Raises
        TimeoutError when the sink is slower than ``milter.record_timeout`` (the
        record then completes in the background) and whatever the sink raised.
        """
        with self._classify_lock:  # Classifier.stats is a shared Counter
            verdicts = self.classifier.message(raw)
        # An auto-reply says nothing about the address (bounce intake drops them too).
        verdicts = [v for v in verdicts if v.reason != "vacation"]
        if not verdicts:
            return []
        groups: dict[EvidenceKind, list[Verdict]] = {}
        for v in verdicts:
            groups.setdefault(evidence_kind(v, return_paths, self.return_path_check), []).append(v)
        pending = []
        for kind, batch in groups.items():
            evidence = self._evidence(kind, queue_id)
            pending.append((kind, batch, self.loop.submit(self.sink.accept(batch, evidence))))
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
        traffic) costs the milter two events, MAIL FROM and RCPT TO. Only an
        incoming message (bounce recording) or one with a recipient to drop
        goes on to end of message.
        """
        if self.dropped or (self.inbound and self.app.settings.record_bounces):
            return Milter.CONTINUE
        return Milter.ACCEPT

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
        if self.inbound:
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


def _register(factory: Callable[[], Session], on_error: str) -> None:
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
    Milter.set_flags(Milter.ADDHDRS | Milter.CHGHDRS | Milter.DELRCPT)
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
    policy = open_recipient_policy(cfg)
    loop = BackgroundLoop("smtpguard-sink")
    sink: VerdictSink | None = None
    try:
        sink = loop.run(open_sink(cfg), OPEN_TIMEOUT)
        app = MilterApp(cfg, policy, sink, loop, classifier)
        session = BounceSession if settings.record_bounces else Session
        _register(lambda: session(app), settings.on_error)
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
        if sink is not None:
            try:
                loop.run(sink.close(), OPEN_TIMEOUT)
            except Exception:
                log.exception("closing the verdict sink failed")
        loop.stop()
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

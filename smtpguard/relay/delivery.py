"""Delivery: claimed recipients -> destination lines -> connections to the next hop.

A :class:`~smtpguard.store.queue.Claim` (one message, its due recipients) is
split into :class:`Job`\\ s, one per *destination*: the recipient domain for MX
and route delivery, ``"smarthost"`` when everything goes to the smarthost (one
transaction carries all recipients), ``"dsn"`` for the DSNs we generate (sent
to ``dsn.next_hop``). Jobs wait in a per-destination line; connection tasks
take them in order, several messages per connection
(``delivery.messages_per_connection``), and an idle connection lingers briefly
for the next message to the same place, as Postfix's connection cache does.
How many connections a destination gets, and how fast it is sent to, is the
:class:`~smtpguard.relay.seams.Shaper`'s decision; ``delivery.concurrency``
caps the total.

The SMTP conversation itself is :mod:`smtpguard.relay.client`'s. Here every
non-success reply, at every stage (greeting, EHLO, STARTTLS, AUTH, MAIL, RCPT,
DATA), goes through the classifier; connection failures (refused, timeout, TLS
failure) are soft ``networkerror``; routing failures carry their own verdict.
The resulting :class:`~smtpguard.relay.outcome.Attempt` list goes to the
:class:`~smtpguard.relay.outcome.OutcomeHandler` while the connection moves on.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from smtpguard.classify.verdict import Verdict
from smtpguard.config import Config, parse_hostport
from smtpguard.errors import ConfigError, UserError
from smtpguard.relay import metrics
from smtpguard.relay.client import Connection, RecipientReply, Refusal
from smtpguard.relay.observe import Timing
from smtpguard.relay.outcome import Attempt, OutcomeHandler
from smtpguard.relay.routing import NextHop, RoutingError
from smtpguard.relay.scheduler import ConnectionCap
from smtpguard.relay.seams import ReplyClassifier, Router, Shaper
from smtpguard.relay.smtpclient import SMTPClientError, Timeouts
from smtpguard.relay.tlspolicy import MODES, TLSPolicy, TLSPolicyError
from smtpguard.store.queue import Claim, QueuedMessage, QueuedRecipient, QueueStore

if TYPE_CHECKING:
    from smtpguard.intake.verp import VerpCodec

log = logging.getLogger("smtpguard.delivery")

#: How long an idle connection waits for another message to the same destination.
IDLE_LINGER = 0.5
#: Pauses between tries to record an attempt's results when the database refuses.
RECORD_RETRIES: tuple[float | None, ...] = (0.5, 1.0, 2.0, 4.0, 8.0, None)


@dataclass
class _ClaimState:
    """One claim's jobs (one per destination) on their way.

    ``unsent`` jobs have not finished their SMTP yet, ``unrecorded`` ones have
    not had their results written; the scheduler slot is freed when the last
    is written. Failures that will go back to the sender in a DSN wait in
    ``held`` (their recipients stay ``active``) until the claim's last job is
    sent, so one delivery round of a message makes one DSN listing every
    failed recipient, whatever destinations they span.
    """

    unsent: int
    unrecorded: int
    on_done: Callable[[], None] | None
    held: list[Attempt] = field(default_factory=list)


@dataclass
class Job:
    """One message's recipients for one destination (one transaction)."""

    message: QueuedMessage
    recipients: tuple[QueuedRecipient, ...]
    destination: str
    domain: str
    claim: _ClaimState = field(repr=False)
    return_path: str = ""  # a signed return path replacing the envelope sender ("": none)


#: The reason recorded when no hop took us for want of TLS, usable AUTH, or a network.
_REFUSAL_REASONS = {"tls": "failedstarttls", "auth": "authfailure", "network": "networkerror"}


def soft_verdict(
    recipient: str, text: str, *, reason: str = "networkerror", status: str = "4.4.1",
    remote_host: str = "", stage: str = "connect",
) -> Verdict:  # fmt: skip
    """A failure without an SMTP reply (refused, timeout, TLS): always soft."""
    return Verdict(
        recipient=recipient, status=status, reason=reason, bounce="soft", suppress=False,
        diagnostic=text, remote_host=remote_host, stage=stage,  # type: ignore[arg-type]
        format="relay",
    )  # fmt: skip


def routing_verdict(recipient: str, err: RoutingError) -> Verdict:
    """A :class:`RoutingError` as a verdict: hard when permanent (NXDOMAIN, null MX).

    It decides nothing about the suppression list (``suppress`` stays False):
    what a DNS answer may do there is the policy's sink's decision, on evidence
    kind ``dns``.
    """
    return Verdict(
        recipient=recipient, status=err.status, reply_code=err.reply_code, reason=err.reason,
        bounce="hard" if err.permanent else "soft", diagnostic=err.text, stage="connect",
        format="relay",
    )  # fmt: skip


class Delivery:
    """Destination lines and the connection tasks that empty them."""

    def __init__(
        self,
        cfg: Config,
        store: QueueStore,
        router: Router,
        classifier: ReplyClassifier,
        outcome: OutcomeHandler,
        *,
        shaper: Shaper | None = None,
        return_paths: VerpCodec | None = None,
    ) -> None:
        self._cfg = cfg
        self._return_paths = return_paths
        self._d = cfg.delivery
        self._store = store
        self._router = router
        self._classifier = classifier
        self._outcome = outcome
        self._shaper: Shaper = shaper or ConnectionCap()
        self._helo = self._d.helo_name or cfg.relay.hostname
        d = self._d
        self._timeouts = Timeouts(
            connect=d.connect_timeout, command=d.command_timeout, data=d.data_timeout,
            quit=min(d.command_timeout, 10.0),
        )  # fmt: skip
        # TLS policies are built once (a verifying context loads the CA store) and shared.
        self._tls_modes = {mode: TLSPolicy(mode) for mode in MODES}
        try:
            self._smarthost_tls = TLSPolicy(
                d.smarthost_tls_mode, ca_file=d.smarthost_tls_ca_file,
                pins=tuple(d.smarthost_tls_fingerprints),
            )  # fmt: skip
            if d.smarthost:
                self._smarthost_tls.context()  # an unreadable CA file fails the start
        except TLSPolicyError as e:
            raise ConfigError(f"delivery.smarthost_tls: {e}") from None
        self._pending: dict[str, collections.deque[Job]] = collections.defaultdict(
            collections.deque
        )
        self._arrivals: dict[str, asyncio.Event] = {}
        self._active: collections.Counter[str] = collections.Counter()
        self._waiting: dict[str, None] = {}  # destinations waiting for a connection slot
        self._connections = 0
        self._tasks: set[asyncio.Task[Any]] = set()
        self._jobs_in_progress: dict[int, Job] = {}
        self._transactions = 0  # numbers the SMTP transactions (after DATA: who shared a reply)
        self._stopping = False

    # -- intake ---------------------------------------------------------------

    def _destination(self, msg: QueuedMessage, rcpt: QueuedRecipient) -> str:
        if msg.kind == "dsn":
            return "dsn"
        if self._d.smarthost:
            return "smarthost"
        return rcpt.domain

    def _return_path(self, msg: QueuedMessage, rcpt: QueuedRecipient) -> str:
        """The signed return path for this recipient, or "" to keep the sender as is.

        Only mail with a sender gets one: the null sender (DSNs, ours and the
        clients') must stay null, or bounces could loop (RFC 5321 section 4.5.5).
        """
        if self._return_paths is None or msg.kind != "mail" or not msg.mail_from:
            return ""
        try:
            return self._return_paths.encode(msg.id, rcpt.address)
        except (ValueError, UserError) as e:  # a queue id past 2**40, an odd address
            log.warning("%s: no signed return path for <%s>: %s", msg.qid, rcpt.address, e)
            return ""

    def submit(self, claim: Claim, on_done: Callable[[], None] | None = None) -> None:
        """Line up a claimed message's recipients by destination.

        With signed return paths each recipient gets a transaction of its own: the
        envelope sender names one recipient (VERP), so it cannot be shared.
        """
        groups: dict[tuple[str, str], list[QueuedRecipient]] = {}
        for r in claim.recipients:
            key = (self._destination(claim.message, r), self._return_path(claim.message, r))
            groups.setdefault(key, []).append(r)
        state = _ClaimState(len(groups), len(groups), on_done)
        for (dest, return_path), rcpts in groups.items():
            job = Job(claim.message, tuple(rcpts), dest, rcpts[0].domain, state, return_path)
            self._pending[dest].append(job)
            ev = self._arrivals.get(dest)
            if ev is not None:
                ev.set()
            self._maybe_connect(dest)

    def _maybe_connect(self, dest: str) -> None:
        pending = len(self._pending.get(dest, ()))
        if not pending or self._stopping:
            return
        active = self._active[dest]
        if active >= self._shaper.max_connections(dest):
            return
        if active and pending <= active * 2:
            return  # the open connections will take them
        if self._connections >= self._d.concurrency:
            self._waiting[dest] = None
            return
        self._waiting.pop(dest, None)
        self._active[dest] += 1
        self._connections += 1
        task = asyncio.create_task(self._connection(dest), name=f"deliver:{dest}")
        self._tasks.add(task)
        task.add_done_callback(self._connection_done(dest))

    def _connection_done(self, dest: str) -> Callable[[asyncio.Task[Any]], None]:
        def done(task: asyncio.Task[Any]) -> None:
            self._tasks.discard(task)
            self._active[dest] -= 1
            if self._active[dest] <= 0:
                del self._active[dest]
            self._connections -= 1
            if not task.cancelled() and task.exception() is not None:
                log.error("delivery to %s crashed: %r", dest, task.exception())
            if self._stopping:
                return
            # Destinations that waited for a slot go first, then this one again.
            for waiting in list(self._waiting):
                if self._connections >= self._d.concurrency:
                    break
                self._waiting.pop(waiting, None)
                self._maybe_connect(waiting)
            self._maybe_connect(dest)
            if dest not in self._active and not self._pending.get(dest):
                # Forget idle destinations: a relay sees many domains over its life.
                self._pending.pop(dest, None)
                self._arrivals.pop(dest, None)

        return done

    @property
    def busy(self) -> int:
        return len(self._tasks)

    # -- finishing a job ------------------------------------------------------

    def _finish(self, job: Job, attempts: list[Attempt], timing: Timing | None = None) -> None:
        """Hand the attempts to the outcome handler without stalling the connection.

        Results are written at once, except failures that will be reported to
        the sender: those wait for the claim's other jobs (see :class:`_ClaimState`)
        and are written, with the one DSN, together with the last job's results.
        ``timing`` (connection setup and transmission) goes to the delivery log.
        """
        if timing is not None:
            attempts = [replace(a, timing=timing) for a in attempts]
        self._shaper.feedback(job.destination, attempts)
        state = job.claim
        state.unsent -= 1
        if state.unsent == 0:
            attempts = [*attempts, *state.held]
            state.held = []
        else:
            now = time.time()
            now_part: list[Attempt] = []
            for a in attempts:
                held = self._outcome.awaits_dsn(job.message, a, now)
                (state.held if held else now_part).append(a)
            attempts = now_part
        self._record(job.message, attempts, state)

    def _record(self, msg: QueuedMessage, attempts: list[Attempt], state: _ClaimState) -> None:
        task = asyncio.create_task(self._apply(msg, attempts, state))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _abandon(self, job: Job) -> None:
        """A job that will not be sent (shutdown): failures its claim holds are written."""
        state = job.claim
        state.unsent -= 1
        if state.unsent == 0 and state.held:
            held, state.held = state.held, []
            self._record(job.message, held, state)
        else:
            self._recorded(state)

    @staticmethod
    def _recorded(state: _ClaimState) -> None:
        state.unrecorded -= 1
        if state.unrecorded == 0 and state.on_done is not None:
            state.on_done()

    async def _apply(self, msg: QueuedMessage, attempts: list[Attempt], state: _ClaimState) -> None:
        try:
            if not attempts:
                return
            # The write is all-or-nothing, so trying again is safe; a database held
            # locked for a while (a long CLI action) must not strand the recipients.
            for wait in RECORD_RETRIES:
                try:
                    await self._outcome.apply(msg, attempts)
                    break
                except Exception as e:
                    if wait is None:
                        # Left 'active': the next start's recovery queues them again.
                        log.error("recording the attempt for %s failed: %s", msg.qid, e)
                    else:
                        log.warning("recording the attempt for %s failed (%s); retrying",
                                    msg.qid, e)  # fmt: skip
                        await asyncio.sleep(wait)
        finally:
            self._recorded(state)

    def _fail(
        self, job: Job, make: Callable[[QueuedRecipient], Verdict], host: str = "",
        dns: bool = False, timing: Timing | None = None,
    ) -> None:  # fmt: skip
        attempts = [Attempt(r, make(r), remote_host=host, dns=dns) for r in job.recipients]
        self._finish(job, attempts, timing)

    def _fail_pending(
        self, dest: str, make: Callable[[QueuedRecipient], Verdict], host: str = "",
        dns: bool = False, timing: Timing | None = None,
    ) -> None:  # fmt: skip
        line = self._pending.get(dest)
        while line:
            self._fail(line.popleft(), make, host, dns, timing)

    # -- a connection ---------------------------------------------------------

    async def _hops(self, dest: str, domain: str) -> list[NextHop]:
        if dest == "dsn":
            host, port = parse_hostport(self._cfg.dsn.next_hop)
            return [NextHop(host=host, address=host, port=port, preference=0, source="route",
                            tls="opportunistic")]  # fmt: skip
        return list(await self._router.route(domain))

    async def _connection(self, dest: str) -> None:
        line = self._pending[dest]
        if not line:
            return
        domain = line[0].domain
        started, t0 = time.time(), time.monotonic()  # the delivery log's connection setup
        try:
            hops = await self._hops(dest, domain)
        except RoutingError as e:
            log.info("routing %s failed: %s", domain, e.text)
            self._fail_pending(dest, lambda r, err=e: routing_verdict(r.address, err), dns=e.dns,
                               timing=Timing(started, time.monotonic() - t0))  # fmt: skip
            return
        except Exception as e:
            log.error("routing %s failed unexpectedly: %r", domain, e)
            why = f"routing failed: {e}"
            self._fail_pending(dest, lambda r: soft_verdict(r.address, why),
                               timing=Timing(started, time.monotonic() - t0))  # fmt: skip
            return
        conn = await Connection.open(
            hops, helo=self._helo, timeouts=self._timeouts, tls_for=self._tls_for
        )
        setup = Timing(started, time.monotonic() - t0)
        if isinstance(conn, Refusal):
            self._refused(dest, conn, setup)
            return
        metrics.CONNECTIONS.labels("ok").inc()
        try:
            await self._session(conn, dest, setup)
        finally:
            await conn.close()

    def _tls_for(self, hop: NextHop) -> TLSPolicy:
        if hop.source == "smarthost":
            return self._smarthost_tls
        return self._tls_modes[hop.tls]

    def _refused(self, dest: str, refusal: Refusal, timing: Timing) -> None:
        """No hop took us: every job waiting for ``dest`` gets the same verdict."""
        where = refusal.label
        make: Callable[[QueuedRecipient], Verdict]
        if refusal.kind == "reply":
            # The greeting, EHLO, STARTTLS or AUTH refused us: the classifier decides.
            def make(r: QueuedRecipient) -> Verdict:
                return self._classify(refusal.code, refusal.text, refusal.stage, r.address, where)
        else:
            reason = _REFUSAL_REASONS[refusal.kind]

            def make(r: QueuedRecipient) -> Verdict:
                return soft_verdict(r.address, refusal.text, reason=reason,
                                    status=refusal.status, remote_host=where)  # fmt: skip

        self._fail_pending(dest, make, where, timing=timing)

    async def _session(self, conn: Connection, dest: str, setup: Timing) -> None:
        """Send jobs for ``dest`` over one connection until the line is empty or the cap is hit.

        The first message's timing includes the connection's ``setup``; later ones
        start when they are taken from the line (their setup is 0, as in Postfix).
        """
        line = self._pending[dest]
        sent = 0
        while sent < self._d.messages_per_connection and conn.is_connected:
            if not line:
                if self._stopping or self._waiting:
                    return
                ev = self._arrivals.setdefault(dest, asyncio.Event())
                ev.clear()
                try:
                    async with asyncio.timeout(IDLE_LINGER):  # no extra task (wait_for's)
                        await ev.wait()
                except TimeoutError:
                    return
                continue
            if self._stopping:
                return
            job = line.popleft()
            await self._shaper.admit(dest)
            if sent and not conn.is_connected:
                # The hop closed the session after an earlier message: a new one takes it.
                line.appendleft(job)
                return
            timing = setup if sent == 0 else Timing(time.time())
            t0 = time.monotonic()
            self._jobs_in_progress[id(job)] = job
            message = job.message
            if job.return_path:
                message = replace(message, mail_from=job.return_path)
            try:
                replies = await conn.send(message, job.recipients,
                                          self._store.body(job.message.id))  # fmt: skip
            except SMTPClientError as e:  # the session was not usable after all
                self._fail(job, lambda r, t=str(e): soft_verdict(r.address, t,
                           remote_host=conn.label, stage="mail"), conn.label,
                           timing=replace(timing, transmit=time.monotonic() - t0))  # fmt: skip
                return
            finally:
                self._jobs_in_progress.pop(id(job), None)
            self._transactions += 1
            txn = self._transactions
            self._finish(job, [self._attempt(reply, conn.label, txn) for reply in replies],
                         replace(timing, transmit=time.monotonic() - t0))  # fmt: skip
            sent += 1

    def _attempt(self, reply: RecipientReply, where: str, transaction: int) -> Attempt:
        r = reply.recipient
        if reply.delivered:
            return Attempt(r, None, str(reply.code), reply.text, where, transaction=transaction)
        if reply.local:
            # No reply about this recipient: the session failed (or our body read did).
            status = reply.status or "4.4.2"
            reason = "systemerror" if status == "4.3.0" else "networkerror"
            stage = reply.stage if reply.stage in ("mail", "rcpt", "data") else "data"
            verdict = soft_verdict(r.address, reply.local, reason=reason, status=status,
                                   remote_host=where, stage=stage)  # fmt: skip
            return Attempt(r, verdict, remote_host=where, transaction=transaction)
        verdict = self._classify(reply.code, reply.text, reply.stage, r.address, where)
        return Attempt(r, verdict, str(reply.code), reply.text, where, transaction=transaction)

    def _classify(self, code: int, text: str, stage: str, recipient: str, label: str) -> Verdict:
        """The classifier's verdict on a reply; a classifier bug must not lose the message."""
        try:
            return self._classifier.reply(
                code, text, stage=stage, recipient=recipient, remote_host=label
            )
        except Exception as e:
            log.error("classifier failed on %r: %r", f"{code} {text}", e)
            temporary = str(code).startswith("4")
            return Verdict(
                recipient=recipient, reply_code=str(code), reason="undefined",
                bounce="soft" if temporary else "hard", diagnostic=text, remote_host=label,
                format="relay",
            )  # fmt: skip

    # -- shutdown -------------------------------------------------------------

    async def drain(self, timeout: float) -> int:
        """Stop taking jobs, finish messages being sent (up to ``timeout``), release the rest.

        Returns how many recipients were handed back to ``queued`` unfinished.
        """
        self._stopping = True
        released: list[int] = []
        for line in self._pending.values():
            while line:
                job = line.popleft()
                released += [r.id for r in job.recipients]
                self._abandon(job)
        for ev in self._arrivals.values():
            ev.set()
        deadline = time.monotonic() + timeout
        while self._tasks and time.monotonic() < deadline:
            await asyncio.wait(set(self._tasks), timeout=max(deadline - time.monotonic(), 0.01))
        if self._tasks:
            for job in self._jobs_in_progress.values():
                released += [r.id for r in job.recipients]
                released += [a.recipient.id for a in job.claim.held]
                job.claim.held = []
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if released:
            try:
                await self._store.release(released)
            except Exception as e:  # the next start's recovery puts them back
                log.error("releasing %d claimed recipients failed: %s", len(released), e)
        return len(released)

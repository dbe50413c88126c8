"""Delivery: claimed recipients -> routed jobs -> site lines -> connections.

A :class:`~smtpguard.store.queue.Claim` (one message, its due recipients) is
split into :class:`Job`\\ s, one per *destination*: the recipient domain for MX
and route delivery, ``"smarthost"`` when everything goes to the smarthost (one
transaction carries all recipients), ``"dsn"`` for the DSNs we generate (sent
to ``dsn.next_hop``). Each destination is routed first (answers reused for their
DNS TTL, at most :data:`ROUTE_CACHE_TTL`), then the :class:`~smtpguard.relay.seams.Shaper`
names its *site* (a provider, an MX host set, the smarthost): jobs wait in a
per-site line, so domains sharing a provider share its connections and rate.
A job with more recipients than the site takes per transaction is split.

Connection tasks take jobs from their site's line in order, several messages
per connection (the shaper's ``messages_per_connection``), asking the shaper
before each message (``admit``: a token from the site's rate budget); an idle
connection lingers briefly for the next message to the same site, as
Postfix's connection cache does. How many connections a site gets is the
shaper's decision; ``delivery.concurrency`` caps the total.

Fairness: a site's line is bounded (the shaper's ``hold``): jobs beyond it, and
every job of a suspended site, go back to the queue *unattempted* (no attempt
counted, due again later with jitter), so a slow, throttled or blackholed site
never holds the scheduler's in-flight slots other sites need. A site that is
rate-bound gets no extra connections.

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
import math
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
from smtpguard.shaping import metrics as shaping_metrics
from smtpguard.store.queue import Claim, QueuedMessage, QueuedRecipient, QueueStore

if TYPE_CHECKING:
    from smtpguard.intake.verp import VerpCodec

log = logging.getLogger("smtpguard.delivery")

#: How long an idle connection waits for another message to the same site.
IDLE_LINGER = 0.5
#: Longest wait for a rate token with the connection kept open; longer: close, come back.
MAX_PACING_WAIT = 5.0
#: Longest a routing answer is reused (shorter when its DNS answers' TTL is).
ROUTE_CACHE_TTL = 60.0
#: Routing answers kept.
ROUTE_CACHE_SIZE = 10_000
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
    site: str = ""  # set once routed
    hops: tuple[NextHop, ...] = field(default=(), repr=False)


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
    """Site lines and the connection tasks that empty them."""

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
        self._shaper: Shaper = shaper or ConnectionCap(
            messages_per_connection=cfg.delivery.messages_per_connection
        )
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
        self._waiting: dict[str, None] = {}  # sites waiting for a connection slot
        self._lingering: set[asyncio.Event] = set()  # idle connections' wake-up events
        self._connections = 0
        self._tasks: set[asyncio.Task[Any]] = set()
        self._jobs_in_progress: dict[int, Job] = {}
        self._transactions = 0  # numbers the SMTP transactions (after DATA: who shared a reply)
        self._stopping = False
        # Routing: answers by route key (domain, or smarthost/dsn), lookups under way.
        self._routes: dict[str, tuple[float, tuple[NextHop, ...], str]] = {}
        self._resolving: dict[str, list[Job]] = {}
        # Pacing: sites that had to wait for a token lately (no extra connections),
        # and sites not to connect to before a time (a long wait for a token).
        self._paced: dict[str, float] = {}
        self._not_before: dict[str, float] = {}
        self._wakeups: dict[str, asyncio.TimerHandle] = {}
        # Jobs put back in the queue by shaping: site -> due times (for the state view).
        self._postponed: dict[str, list[float]] = {}

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
        """Route a claimed message's recipients (grouped by destination) into site lines.

        With signed return paths each recipient gets a transaction of its own: the
        envelope sender names one recipient (VERP), so it cannot be shared.
        """
        groups: dict[tuple[str, str], list[QueuedRecipient]] = {}
        for r in claim.recipients:
            key = (self._destination(claim.message, r), self._return_path(claim.message, r))
            groups.setdefault(key, []).append(r)
        state = _ClaimState(len(groups), len(groups), on_done)
        for (dest, return_path), rcpts in groups.items():
            self._route(Job(claim.message, tuple(rcpts), dest, rcpts[0].domain, state,
                            return_path))  # fmt: skip

    # -- routing, then the site -------------------------------------------------

    @staticmethod
    def _route_key(job: Job) -> str:
        return job.destination if job.destination in ("dsn", "smarthost") else job.domain

    def _route(self, job: Job) -> None:
        key = self._route_key(job)
        cached = self._routes.get(key)
        if cached is not None and cached[0] > time.monotonic():
            self._place(job, cached[1], cached[2])
            return
        waiting = self._resolving.get(key)
        if waiting is not None:
            waiting.append(job)
            return
        self._resolving[key] = [job]
        task = asyncio.create_task(self._resolve(key, job.destination, job.domain),
                                   name=f"route:{key}")  # fmt: skip
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _resolve(self, key: str, dest: str, domain: str) -> None:
        started, t0 = time.time(), time.monotonic()
        try:
            found, expires = await self._hops(dest, domain)
            hops = tuple(found)
        except RoutingError as e:
            log.info("routing %s failed: %s", domain, e.text)
            for job in self._resolving.pop(key, []):
                self._fail(job, lambda r, err=e: routing_verdict(r.address, err), dns=e.dns,
                           timing=Timing(started, time.monotonic() - t0))  # fmt: skip
            return
        except Exception as e:
            log.error("routing %s failed unexpectedly: %r", domain, e)
            why = f"routing failed: {e}"
            for job in self._resolving.pop(key, []):
                self._fail(job, lambda r: soft_verdict(r.address, why),
                           timing=Timing(started, time.monotonic() - t0))  # fmt: skip
            return
        site = self._shaper.site(dest, hops)
        if len(self._routes) >= ROUTE_CACHE_SIZE:
            self._routes.pop(next(iter(self._routes)))
        ttl = min(ROUTE_CACHE_TTL, max(expires - time.time(), 0.0))
        if ttl > 0:
            self._routes[key] = (time.monotonic() + ttl, hops, site)
        for job in self._resolving.pop(key, []):
            self._place(job, hops, site)

    def _place(self, job: Job, hops: tuple[NextHop, ...], site: str) -> None:
        """Put a routed job in its site's line (split by the site's recipient limit),
        or back in the queue unattempted when the shaper holds it."""
        if self._stopping:
            self._abandon(job)
            return
        job.site, job.hops = site, hops
        limit = max(self._shaper.recipients_per_message(site), 1)
        parts = [job]
        if len(job.recipients) > limit:
            chunks = [job.recipients[i : i + limit] for i in range(0, len(job.recipients), limit)]
            parts = [replace(job, recipients=c) for c in chunks]
            job.claim.unsent += len(parts) - 1
            job.claim.unrecorded += len(parts) - 1
        line = self._pending[site]
        for part in parts:
            delay = self._shaper.hold(site, len(line))
            if delay > 0:
                self._postpone(part, delay)
                continue
            line.append(part)
        ev = self._arrivals.get(site)
        if ev is not None:
            ev.set()
        self._maybe_connect(site)

    def _postpone(self, job: Job, delay: float) -> None:
        """Put a job back in the queue unattempted, due in ``delay`` seconds.

        Not an attempt: the recipients' attempt count and backoff are untouched.
        Never past the message's queue lifetime: a job whose lifetime is over gets
        a soft verdict instead, which the outcome turns into ``expired`` and a DSN.
        """
        now = time.time()
        expiry = job.message.received_at + self._d.queue_lifetime
        if now >= expiry:
            why = f"delivery to {job.site} held back by traffic shaping until the queue lifetime"
            job.site = ""  # not the site's doing: no feedback
            self._fail(job, lambda r: soft_verdict(r.address, why, reason="ratelimited",
                                                   status="4.4.7", stage="connect"))  # fmt: skip
            return
        until = min(now + delay, expiry)
        shaping_metrics.POSTPONED.inc(job.site)
        self._postponed.setdefault(job.site, []).append(until)
        state = job.claim
        state.unsent -= 1
        held: list[Attempt] = []
        if state.unsent == 0 and state.held:
            held, state.held = state.held, []
        task = asyncio.create_task(self._put_back(job, until, held))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _put_back(self, job: Job, until: float, held: list[Attempt]) -> None:
        try:
            await self._store.postpone([r.id for r in job.recipients], until)
        except Exception as e:  # left active: the reclaim sweep queues them again
            log.error("postponing %s for %s failed: %s", job.message.qid, job.site, e)
        if held:
            await self._apply(job.message, held, job.claim)  # records this job's share too
        else:
            self._recorded(job.claim)

    def _postpone_line(self, site: str, delay: float) -> None:
        line = self._pending.get(site)
        while line:
            self._postpone(line.popleft(), delay)

    def _maybe_connect(self, site: str) -> None:
        pending = len(self._pending.get(site, ()))
        if not pending or self._stopping:
            return
        now = time.monotonic()
        if self._not_before.get(site, 0.0) > now:
            return
        held = self._shaper.hold(site, 0)
        if held > 0:  # suspended: everything waiting goes back to the queue
            self._postpone_line(site, held)
            return
        active = self._active[site]
        if active >= self._shaper.max_connections(site):
            return
        if active and pending <= active * 2:
            return  # the open connections will take them
        if active and self._paced.get(site, 0.0) > now:
            return  # the rate, not the connections, is what limits this site
        if self._connections >= self._d.concurrency:
            self._waiting[site] = None
            # Idle connections lingering for more mail to their site give their slot up.
            for ev in self._lingering:
                ev.set()
            return
        self._waiting.pop(site, None)
        self._active[site] += 1
        self._connections += 1
        task = asyncio.create_task(self._connection(site), name=f"deliver:{site}")
        self._tasks.add(task)
        task.add_done_callback(self._connection_done(site))

    def _wake_later(self, site: str, delay: float) -> None:
        """Try ``site`` again in ``delay`` seconds (one timer per site)."""
        self._not_before[site] = time.monotonic() + delay
        old = self._wakeups.pop(site, None)
        if old is not None:
            old.cancel()

        def wake() -> None:
            self._wakeups.pop(site, None)
            self._not_before.pop(site, None)
            self._maybe_connect(site)

        self._wakeups[site] = asyncio.get_running_loop().call_later(delay, wake)

    def _connection_done(self, site: str) -> Callable[[asyncio.Task[Any]], None]:
        def done(task: asyncio.Task[Any]) -> None:
            self._tasks.discard(task)
            self._active[site] -= 1
            if self._active[site] <= 0:
                del self._active[site]
            self._connections -= 1
            if not task.cancelled() and task.exception() is not None:
                log.error("delivery to %s crashed: %r", site, task.exception())
            if self._stopping:
                return
            # Sites that waited for a slot go first, then this one again.
            for waiting in list(self._waiting):
                if self._connections >= self._d.concurrency:
                    break
                self._waiting.pop(waiting, None)
                self._maybe_connect(waiting)
            self._maybe_connect(site)
            if site not in self._active and not self._pending.get(site):
                # Forget idle sites: a relay sees many over its life.
                self._pending.pop(site, None)
                self._arrivals.pop(site, None)
                self._paced.pop(site, None)

        return done

    @property
    def busy(self) -> int:
        return len(self._tasks)

    def site_counts(self) -> dict[str, tuple[int, int, int]]:
        """Per site: (connections open, jobs waiting in its line, jobs postponed not due yet)."""
        now = time.time()
        out: dict[str, tuple[int, int, int]] = {}
        for site, dues in list(self._postponed.items()):
            dues[:] = [d for d in dues if d > now]
            if not dues:
                del self._postponed[site]
        for site in {*self._active, *self._pending, *self._postponed}:
            out[site] = (self._active.get(site, 0), len(self._pending.get(site, ())),
                         len(self._postponed.get(site, ())))  # fmt: skip
        return out

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
        if job.site:
            self._shaper.feedback(job.site, attempts)
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
        self, site: str, make: Callable[[QueuedRecipient], Verdict], host: str = "",
        dns: bool = False, timing: Timing | None = None,
    ) -> None:  # fmt: skip
        """The first job waiting for ``site`` gets the verdict (it is the one the failed
        connection was for); the others too, or, when the shaper says so, they go back
        to the queue unattempted for its backoff (a site refusing us is not tried once
        per waiting message)."""
        line = self._pending.get(site)
        if not line:
            return
        self._fail(line.popleft(), make, host, dns, timing)
        backoff = self._shaper.backoff(site) if line else 0.0
        if backoff > 0 and not self._active.get(site, 0) > 1:
            self._postpone_line(site, backoff)
        elif backoff <= 0:
            while line:
                self._fail(line.popleft(), make, host, dns, timing)

    # -- a connection ---------------------------------------------------------

    async def _hops(self, dest: str, domain: str) -> tuple[list[NextHop], float]:
        """The hops for a destination and until when (unix time) they may be reused."""
        if dest == "dsn":
            host, port = parse_hostport(self._cfg.dsn.next_hop)
            return [NextHop(host=host, address=host, port=port, preference=0, source="route",
                            tls="opportunistic")], math.inf  # fmt: skip
        hops, expires = await self._router.route_expiring(domain)
        return list(hops), expires

    async def _connection(self, site: str) -> None:
        line = self._pending[site]
        if not line:
            return
        hops = list(line[0].hops)
        started, t0 = time.time(), time.monotonic()  # the delivery log's connection setup
        conn = await Connection.open(
            hops, helo=self._helo, timeouts=self._timeouts, tls_for=self._tls_for
        )
        setup = Timing(started, time.monotonic() - t0)
        if isinstance(conn, Refusal):
            self._refused(site, conn, setup)
            return
        metrics.CONNECTIONS.labels("ok").inc()
        try:
            await self._session(conn, site, setup)
        finally:
            await conn.close()

    def _tls_for(self, hop: NextHop) -> TLSPolicy:
        if hop.source == "smarthost":
            return self._smarthost_tls
        return self._tls_modes[hop.tls]

    def _refused(self, site: str, refusal: Refusal, timing: Timing) -> None:
        """No hop took us: the job the connection was for gets the verdict (see
        :meth:`_fail_pending` for the others)."""
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

        self._fail_pending(site, make, where, timing=timing)

    async def _session(self, conn: Connection, site: str, setup: Timing) -> None:
        """Send jobs for ``site`` over one connection until the line is empty or the cap is hit.

        The first message's timing includes the connection's ``setup``; later ones
        start when they are taken from the line (their setup is 0, as in Postfix).
        Before each message the shaper's ``admit`` must give a token: a short wait
        is slept with the connection open, a long one closes it and comes back later.
        """
        line = self._pending[site]
        sent = 0
        cap = self._shaper.messages_per_connection(site)
        while sent < cap and conn.is_connected:
            if not line:
                if self._stopping or self._waiting:
                    return
                ev = self._arrivals.setdefault(site, asyncio.Event())
                ev.clear()
                self._lingering.add(ev)
                try:
                    await asyncio.wait_for(ev.wait(), IDLE_LINGER)
                except TimeoutError:
                    return
                finally:
                    self._lingering.discard(ev)
                continue
            if self._stopping:
                return
            wait = await self._shaper.admit(site)
            if wait > 0:
                self._paced[site] = time.monotonic() + max(wait, 1.0)
                held = self._shaper.hold(site, 0)
                if held > 0:  # suspended meanwhile
                    self._postpone_line(site, held)
                    return
                if wait > MAX_PACING_WAIT:
                    self._wake_later(site, wait)
                    return
                await asyncio.sleep(wait)
                continue
            if not line:
                continue
            job = line.popleft()
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
        for handle in self._wakeups.values():
            handle.cancel()
        self._wakeups.clear()
        for jobs in self._resolving.values():
            for job in jobs:
                released += [r.id for r in job.recipients]
                self._abandon(job)
        self._resolving.clear()
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

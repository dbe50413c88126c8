"""The relay process: stores, inbound server, scheduler and delivery, wired together.

Start-up order matters: the queue opens first and *recovers* (recipients left
``active`` by a crash go back to ``queued``), then delivery starts, and only
then does the inbound server bind, so nothing is accepted that cannot be kept.

At-least-once: a message gets ``250`` only after its COMMIT; a recipient is
marked ``delivered`` only after the next hop's ``250`` to the final dot. A
SIGKILL between those two points (the next hop has the message, our database
does not know yet) makes the recipient ``active`` at the next start, and it is
sent again. So the duplicates after a crash are at most the recipients in
flight at the moment of the kill: at most ``delivery.concurrency`` connections
times one message each, plus the results waiting for their group commit.

Shutdown (SIGTERM / SIGINT) drains: the inbound server stops accepting and
lets sessions in a transaction finish, the scheduler stops claiming, messages
already being sent finish (up to ``delivery.drain_timeout``), claimed but
unsent recipients go back to ``queued``, and the process exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from smtpguard import metrics as prometheus
from smtpguard.classify import Classifier
from smtpguard.config import Config, secret_file_warnings
from smtpguard.errors import UserError
from smtpguard.policy import open_recipient_policy, open_sink
from smtpguard.policy.recipient import RecipientPolicy
from smtpguard.policy.sink import SuppressionSink
from smtpguard.relay import metrics
from smtpguard.relay.daily import DailyCounts
from smtpguard.relay.delivery import Delivery
from smtpguard.relay.inbound import InboundServer
from smtpguard.relay.maillog import DeliveryLog, open_delivery_log
from smtpguard.relay.observe import Observers, Received, WatchedPolicy
from smtpguard.relay.outcome import OutcomeHandler
from smtpguard.relay.scheduler import Scheduler
from smtpguard.relay.seams import Shaper
from smtpguard.shaping.shaper import SiteShaper
from smtpguard.smtp.headers import message_id as message_id_of
from smtpguard.store import fleet
from smtpguard.store.messages import Claim, InboundMessage
from smtpguard.store.queue import QueueStore, format_qid

if TYPE_CHECKING:
    from smtpguard.intake.listener import BounceServer
    from smtpguard.intake.webhooks.server import WebhookServer
    from smtpguard.shaping.state import SiteRow
    from smtpguard.store.pg.replicator import Replicator

log = logging.getLogger("smtpguard.relay")

#: How often the relay's housekeeping runs (storms ended, stale DNS sightings).
SWEEP_INTERVAL = 60.0


def load_classifier(cfg: Config) -> Classifier:
    """The classifier the relay consults for every reply (operator rules if configured)."""
    from smtpguard.classify import Classifier, default_classifier

    if cfg.classifier.rules_file:
        return Classifier.load(cfg.classifier.rules_file)
    return default_classifier()


class Relay:
    """One running relay. ``await relay.start()``, ``await relay.stop()``."""

    def __init__(self, cfg: Config, *, shaper: Shaper | None = None) -> None:
        self.cfg = cfg
        self._shaper = shaper
        self._site_shaper: SiteShaper | None = None
        self.queue: QueueStore | None = None
        self.policy: RecipientPolicy | None = None
        self.sink: SuppressionSink | None = None
        self.replicator: Replicator | None = None
        self.inbound: InboundServer | None = None
        self.scheduler: Scheduler | None = None
        self.delivery: Delivery | None = None
        self.outcome: OutcomeHandler | None = None
        self.webhooks: WebhookServer | None = None
        self.bounces: BounceServer | None = None
        self.recovered = 0
        # Watching what happens: the delivery log, the per-day counts, metrics.
        self.observers = Observers([metrics.MetricsObserver()])
        self.delivery_log: DeliveryLog | None = None
        self.daily: DailyCounts | None = None
        self._scheduler_task: asyncio.Task[None] | None = None
        self._housekeeping_task: asyncio.Task[None] | None = None
        self._reclaim_task: asyncio.Task[None] | None = None
        self._watch_tasks: list[asyncio.Task[None]] = []
        #: Recipient ids an attempt of this process holds (claimed, result not settled).
        self._live: set[int] = set()
        self._stopped = asyncio.Event()

    @property
    def port(self) -> int:
        assert self.inbound is not None
        return self.inbound.port

    async def start(self) -> None:
        from smtpguard.intake.verp import SignedVerpCodec
        from smtpguard.relay.routing import Router

        cfg = self.cfg
        for warning in secret_file_warnings(cfg):
            log.warning("%s", warning)
        busy = cfg.store.busy_timeout
        classifier = load_classifier(cfg)  # fail on bad rules before opening anything
        if self._shaper is None:  # and on a bad shaping file
            self._shaper = self._site_shaper = make_shaper(cfg)
        # Signed return paths (off without intake.bounce_domain); a bad key file fails here.
        return_paths = SignedVerpCodec.from_config(cfg.intake)
        self.delivery_log = open_delivery_log(cfg.log)  # and on a log that cannot open
        self.observers.add(self.delivery_log)
        node = fleet.prepare(cfg)  # store.backend = "postgresql": before any connection opens
        self.queue = await QueueStore.open(cfg.data_dir, busy_timeout=busy, group=cfg.store.group)
        self.recovered = await self.queue.recover()
        if self.recovered:
            log.warning(
                "recovered %d recipients left in flight by an unclean stop; they will be "
                "sent again (at-least-once)", self.recovered,
            )  # fmt: skip
        # One write path: the sink writes through the queue's writer thread, so a
        # bounce, its DSN and the suppression it causes are one transaction.
        self.sink = await open_sink(cfg, writer=self.queue.writer)
        if node is not None:
            self.replicator = await fleet.start_replicator(
                cfg, node, self.queue.writer, on_pulled=self.sink.note_fleet_rows
            )
        # The RCPT check reads synchronously on the loop: one indexed read (tens of
        # microseconds; WAL readers never wait for the writer) costs less than a
        # hop to another thread and back, which would be on every RCPT's latency.
        self.policy = WatchedPolicy(open_recipient_policy(cfg), self.observers)
        self.daily = DailyCounts(self.queue.writer, cfg.report)
        self.observers.add(self.daily)
        d = cfg.delivery
        self.scheduler = Scheduler(
            self.queue, max_inflight=max(d.concurrency * 20, 200), refill_interval=1.0
        )
        jitter = self._site_shaper.rules.adaptive.jitter if self._site_shaper else 0.0
        self.outcome = OutcomeHandler(
            cfg, self.queue, sink=self.sink, on_deferred=self.scheduler.notify,
            observer=self.observers, jitter=jitter,
        )  # fmt: skip
        self.delivery = Delivery(
            cfg,
            self.queue,
            Router(d, listen=cfg.relay.listen),
            classifier,
            self.outcome,
            shaper=self._shaper,
            return_paths=return_paths,
        )
        scheduler, delivery, live = self.scheduler, self.delivery, self._live

        def dispatch(claim: Claim) -> None:
            metrics.INFLIGHT.inc()
            ids = [r.id for r in claim.recipients]
            live.update(ids)
            delivery.submit(claim, _released(scheduler, live, ids))

        self._scheduler_task = asyncio.create_task(scheduler.run(dispatch), name="scheduler")
        self._housekeeping_task = asyncio.create_task(self._housekeeping(), name="housekeeping")
        self._reclaim_task = asyncio.create_task(self._reclaim(), name="reclaim")
        self._watch_tasks.append(asyncio.create_task(self.daily.run(), name="daily-counts"))
        if self._site_shaper is not None:
            self._watch_tasks.append(
                asyncio.create_task(self._write_shaping_state(), name="shaping-state")
            )
        self.inbound = InboundServer(cfg, enqueue=self.enqueue, policy=self.policy)
        try:
            await self.inbound.start()
        except OSError as e:
            raise UserError(f"cannot listen on {cfg.relay.listen}: {e.strerror or e}") from None
        if cfg.intake.listen and return_paths is not None:
            from smtpguard.intake.listener import BounceServer

            self.bounces = BounceServer(
                cfg, sink=self.sink, classifier=classifier, codec=return_paths
            )
            try:
                await self.bounces.start()
            except OSError as e:
                raise UserError(
                    f"cannot listen on {cfg.intake.listen}: {e.strerror or e}"
                ) from None
        if cfg.webhooks.listen:
            from smtpguard.intake.webhooks.server import WebhookServer

            self.webhooks = WebhookServer(cfg, self.sink, classifier=classifier)
            await self.webhooks.start()
        if cfg.metrics.listen:
            try:
                prometheus.serve(cfg.metrics.listen)
            except OSError as e:
                raise UserError(
                    f"cannot serve metrics on {cfg.metrics.listen}: {e.strerror or e}"
                ) from None
            self._watch_tasks.append(asyncio.create_task(self._count_queue(), name="queue-gauges"))

    async def _write_shaping_state(self) -> None:
        """Every few seconds: the sites' state to ``data_dir/shaping-state.json``
        (``smtpguard queue sites`` reads it) and to the per-site gauges."""
        from smtpguard.shaping import state as shaping_state

        assert self._site_shaper is not None and self.delivery is not None
        path = shaping_state.state_path(self.cfg.data_dir)
        while True:
            try:
                rows = site_rows(self._site_shaper, self.delivery)
                await asyncio.to_thread(shaping_state.write, path, rows, time.time(), os.getpid())
            except Exception as e:  # the next round tries again
                log.error("writing the shaping state failed: %s", e)
            await asyncio.sleep(shaping_state.INTERVAL)

    async def _count_queue(self) -> None:
        """Recount the queue gauges every ``metrics.queue_refresh`` (indexed counts)."""
        assert self.queue is not None
        gauges = metrics.QueueGauges()
        while True:
            try:
                gauges.refresh(await self.queue.depth())
            except Exception as e:  # the next round tries again
                log.error("counting the queue for metrics failed: %s", e)
            await asyncio.sleep(self.cfg.metrics.queue_refresh)

    async def _housekeeping(self) -> None:
        """Forget finished messages older than ``delivery.keep_finished`` (hourly);
        let the sink end storms and forget stale DNS sightings (every minute)."""
        assert self.queue is not None and self.sink is not None
        keep = self.cfg.delivery.keep_finished
        next_purge = 0.0
        while True:
            now = time.time()
            if now >= next_purge:
                next_purge = now + min(keep, 3600.0)
                try:
                    n = await self.queue.purge(now - keep)
                    if n:
                        log.info("forgot %d finished messages older than %.0fs", n, keep)
                except Exception as e:
                    log.error("purging finished messages failed: %s", e)
            await self.sink.sweep(now)
            await asyncio.sleep(SWEEP_INTERVAL)

    async def _reclaim(self) -> None:
        """Queue again what an attempt claimed and never settled (see QueueStore.reclaim).

        An attempt of this process keeps its recipients until its result is
        written, however long a destination's line or a locked database makes
        that; only rows no attempt here holds, claimed more than
        ``delivery.reclaim_after`` ago, go back.
        """
        assert self.queue is not None
        after = self.cfg.delivery.reclaim_after
        while True:
            await asyncio.sleep(min(max(after / 4, 0.2), SWEEP_INTERVAL))
            try:
                ids = await self.queue.reclaim(time.time() - after, self._live)
            except Exception as e:
                log.error("reclaiming stale claims failed: %s", e)
                continue
            if ids:  # due now: the scheduler's next refill finds them
                log.warning(
                    "%d recipients claimed over %.0fs ago with no attempt under way are "
                    "queued again", len(ids), after,
                )  # fmt: skip

    async def enqueue(self, msg: InboundMessage) -> str:
        """Inbound's hook: commit durably (raises on storage failure), then schedule."""
        assert self.queue is not None and self.scheduler is not None
        message_id = await self.queue.enqueue_id(msg)
        metrics.RECEIVED.inc()
        self.scheduler.notify(message_id, time.time())
        qid = format_qid(message_id)
        self.observers.received(
            Received(
                qid=qid,
                mail_from=msg.mail_from,
                size=len(msg.data),
                nrcpt=len(msg.recipients),
                client=msg.client_address,
                helo=msg.helo,
                auth_user=msg.auth_user,
                message_id=message_id_of(msg.data),
            )
        )
        return qid

    async def stop(self, timeout: float | None = None) -> None:
        """Drain and close; safe to call once the relay started (or failed to)."""
        drain = self.cfg.delivery.drain_timeout if timeout is None else timeout
        if self.inbound is not None:
            with contextlib.suppress(Exception):
                await self.inbound.stop(timeout=drain)
        if self.bounces is not None:
            with contextlib.suppress(Exception):
                await self.bounces.stop(timeout=drain)
        if self.webhooks is not None:
            with contextlib.suppress(Exception):
                await self.webhooks.stop()
        for task in (self._housekeeping_task, self._reclaim_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
        if self.scheduler is not None:
            self.scheduler.stop()
        if self._scheduler_task is not None:
            with contextlib.suppress(Exception):
                await self._scheduler_task
        if self.delivery is not None:
            released = await self.delivery.drain(drain)
            if released:
                log.info("%d claimed recipients put back in the queue", released)
        for task in self._watch_tasks:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
        if self.daily is not None and self.queue is not None:
            with contextlib.suppress(Exception):
                await self.daily.flush()
        if self.policy is not None:
            with contextlib.suppress(Exception):
                self.policy.close()
        if self.sink is not None:
            with contextlib.suppress(Exception):
                await self.sink.close()
        if self.replicator is not None:
            with contextlib.suppress(Exception):
                await self.replicator.stop()
        if self.queue is not None:
            await self.queue.close()
        budget = getattr(self._site_shaper, "budget", None)
        aclose = getattr(budget, "aclose", None)
        if aclose is not None:
            with contextlib.suppress(Exception):
                await aclose()
        if self.delivery_log is not None:
            self.delivery_log.close()
        self._stopped.set()


def make_shaper(cfg: Config) -> SiteShaper:
    """The relay's shaper: the shaping file(s) and the budget ``make_budget`` picks."""
    from smtpguard.shaping import limits
    from smtpguard.shaping.factory import make_budget

    rules = limits.load(cfg.shaping.file or None,
                        messages_per_connection=cfg.delivery.messages_per_connection)  # fmt: skip
    return SiteShaper(rules, make_budget(cfg), default_port=cfg.delivery.port)


def site_rows(shaper: SiteShaper, delivery: Delivery) -> list[SiteRow]:
    """What ``queue sites`` shows: the shaper's view of each site, the delivery side's counts;
    the per-site gauges are set from the same rows."""
    from smtpguard.shaping import metrics as sm
    from smtpguard.shaping.state import SiteRow

    counts = delivery.site_counts()
    rows = []
    for view in shaper.views():
        conns, waiting, postponed = counts.get(view.site, (0, 0, 0))
        rows.append(SiteRow(view, conns, waiting, postponed))
        label = sm.site_label(view.site)
        for kind, rate in (("configured", view.configured_rate), ("current", view.current_rate)):
            sm.RATE.labels(label, kind).set(-1 if rate is None else rate)
        sm.CONNECTION_LIMIT.labels(label, "configured").set(view.configured_connections)
        sm.CONNECTION_LIMIT.labels(label, "current").set(view.current_connections)
        sm.CONNECTIONS.labels(label).set(conns)
        sm.WAITING.labels(label).set(waiting)
        sm.SUSPENDED.labels(label).set(1 if view.suspended_until else 0)
    return rows


def _released(scheduler: Scheduler, live: set[int], ids: list[int]) -> Callable[[], None]:
    def done() -> None:
        metrics.INFLIGHT.dec()
        live.difference_update(ids)
        scheduler.release()

    return done


#: glibc's M_MMAP_THRESHOLD (mallopt parameter number -3).
_M_MMAP_THRESHOLD = -3
#: Allocations from this size on get their own memory mapping (see tune_process).
MMAP_THRESHOLD = 1024 * 1024


def tune_process() -> None:
    """Process settings a relay facing floods and big messages needs.

    * File descriptors: the soft limit (often 1024) is raised to the hard one, so
      a flood of idle connections meets ``relay.max_sessions`` and the stress
      mode, not EMFILE in ``accept()`` (which would keep everyone out).
    * glibc malloc: its dynamic mmap threshold rises to the size of the largest
      block freed (up to 32 MiB). After one big message, message buffers come
      from the heap, where growing one copies it and freeing it returns nothing
      to the system (measured: peak RSS 261 MB instead of 186 MB for twenty
      30 MB messages, 205 MB instead of 72 MB after them). A fixed 1 MiB
      threshold keeps each big buffer in a mapping of its own: grown by
      mremap, given back by munmap.
    """
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 1 << 20), hard))
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        libc = ctypes.CDLL(None)
        libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)


async def serve(cfg: Config, *, on_listening: Callable[[str, int], None] | None = None) -> int:
    """Run a relay until SIGTERM/SIGINT; returns the exit code (0 after a clean drain)."""
    tune_process()
    relay = Relay(cfg)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await relay.start()
    except BaseException:
        await relay.stop(timeout=5.0)
        raise
    if on_listening is not None:
        assert relay.inbound is not None
        on_listening(relay.inbound.host, relay.port)
    await stop.wait()
    log.info("signal received: draining")
    await relay.stop()
    log.info("stopped")
    return 0

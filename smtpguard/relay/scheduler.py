"""Due-time ordered work: which queued message is tried next, and when.

The scheduler keeps a heap of ``(due time, message id)`` hints, fed three ways:
:meth:`Scheduler.notify` when a message is enqueued, when an attempt defers a
recipient, and a periodic *refill* from the queue's ``(state, next_attempt)``
index (which also picks up what another process changed, e.g. ``smtpguard queue
retry``, and anything the bounded heap had no room for). The heap is only a
hint: :meth:`QueueStore.claim` re-checks state and due time in the database and
marks the recipients ``active``, so a stale or duplicate hint costs nothing.

Back-pressure: at most ``max_inflight`` claimed messages are out at once;
finished attempts give their slot back through :meth:`Scheduler.release`.

Shaping (per-site rate and connection limits) plugs in through the
:class:`~smtpguard.relay.seams.Shaper` protocol: the delivery side routes
first, asks it which site the hops belong to, how many connections the site
may have, asks ``admit`` before every message it sends and reports each
message's attempts to ``feedback``. :class:`ConnectionCap` only caps
connections per destination; the relay runs :mod:`smtpguard.shaping`.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from smtpguard.config import DeliveryConfig
from smtpguard.store.queue import Claim, QueueStore

if TYPE_CHECKING:
    from smtpguard.relay.outcome import Attempt
    from smtpguard.relay.routing import NextHop

log = logging.getLogger("smtpguard.scheduler")


class ConnectionCap:
    """The simplest :class:`~smtpguard.relay.seams.Shaper`: one site per destination,
    a connection cap, no pacing (the relay uses :class:`smtpguard.shaping.shaper.SiteShaper`)."""

    def __init__(self, max_connections: int = 10, messages_per_connection: int = 100) -> None:
        self._max_connections = max_connections
        self._messages_per_connection = messages_per_connection

    def site(self, destination: str, hops: Sequence[NextHop]) -> str:
        return destination

    def max_connections(self, site: str) -> int:
        return self._max_connections

    def messages_per_connection(self, site: str) -> int:
        return self._messages_per_connection

    def recipients_per_message(self, site: str) -> int:
        return 1_000_000

    def hold(self, site: str, queued: int) -> float:
        return 0.0

    def backoff(self, site: str) -> float:
        return 0.0

    async def admit(self, site: str) -> float:
        return 0.0

    def feedback(self, site: str, attempts: Sequence[Attempt]) -> None:
        """The default shaper learns nothing from it."""
        return None


def retry_delay(cfg: DeliveryConfig, attempt: int) -> float:
    """Wait after the ``attempt``-th failed attempt (1-based): exponential, capped.

    retry_initial, retry_initial * factor, retry_initial * factor², ... up to retry_max.
    """
    exponent = max(attempt - 1, 0)
    try:
        delay = cfg.retry_initial * cfg.retry_factor**exponent
    except OverflowError:
        delay = cfg.retry_max
    return min(delay, cfg.retry_max)


class Scheduler:
    """Claims due messages from the queue and hands them to ``dispatch``."""

    def __init__(
        self,
        store: QueueStore,
        *,
        max_inflight: int = 1000,
        heap_cap: int = 20_000,
        refill_interval: float = 1.0,
        claim_batch: int = 200,
    ) -> None:
        self._store = store
        self._heap: list[tuple[float, int]] = []
        self._due: dict[int, float] = {}  # message id -> earliest due time in the heap
        self._cap = heap_cap
        self._max_inflight = max_inflight
        self._refill_interval = refill_interval
        self._claim_batch = claim_batch
        self._wake = asyncio.Event()
        self._stopping = False
        self.inflight = 0
        self.claimed_total = 0

    # -- feeding -------------------------------------------------------------

    def notify(self, message_id: int, due: float) -> None:
        """A message has (new) due work at ``due``. Full heap: the refill will find it.

        Hints further away than one refill interval are left to the refill, so the
        bounded heap only ever holds work that is (nearly) due.
        """
        if due > time.time() + self._refill_interval:
            return
        if self._push(due, message_id) and due <= time.time():
            self._wake.set()

    def _push(self, due: float, message_id: int) -> bool:
        """Add a hint unless an earlier one for the message is there; bounded by the cap.

        A later, earlier-due hint (``queue retry``) supersedes the old entry, which
        stays in the heap as a stale entry skipped when popped.
        """
        current = self._due.get(message_id)
        if current is not None and current <= due:
            return False
        if current is None and len(self._due) >= self._cap:
            return False
        heapq.heappush(self._heap, (due, message_id))
        self._due[message_id] = due
        return True

    def release(self, n: int = 1) -> None:
        """``n`` dispatched claims have finished; their slots are free again."""
        self.inflight -= n
        self._wake.set()

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()

    async def _refill(self, now: float) -> None:
        room = self._cap - len(self._due)
        if room <= 0:
            return
        for due, message_id in await self._store.due(now + self._refill_interval, room):
            self._push(due, message_id)

    # -- the loop ------------------------------------------------------------

    async def run(self, dispatch: Callable[[Claim], None]) -> None:
        """Until :meth:`stop`: claim what is due (within free slots) and dispatch it."""
        next_refill = 0.0
        while not self._stopping:
            now = time.time()
            if now >= next_refill:
                try:
                    await self._refill(now)
                except Exception as e:  # storage trouble: keep running, try again later
                    log.error("queue refill failed: %s", e)
                next_refill = now + self._refill_interval
            free = self._max_inflight - self.inflight
            ids: list[int] = []
            while (
                self._heap and self._heap[0][0] <= now and len(ids) < min(free, self._claim_batch)
            ):
                due, message_id = heapq.heappop(self._heap)
                if self._due.get(message_id) != due:
                    continue  # superseded by an earlier hint already taken
                del self._due[message_id]
                ids.append(message_id)
            if ids:
                try:
                    claims = await self._store.claim(ids, now)
                except Exception as e:
                    log.error("claiming due messages failed: %s", e)
                    claims = []
                    await asyncio.sleep(min(self._refill_interval, 1.0))
                for c in claims:
                    self.inflight += 1
                    self.claimed_total += 1
                    dispatch(c)
                continue
            timeout = next_refill - now
            if self._heap and free > 0:
                timeout = min(timeout, self._heap[0][0] - now)
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=max(timeout, 0.001))

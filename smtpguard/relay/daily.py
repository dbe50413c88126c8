"""The relay's per-day counts for ``smtpguard report``: counted in memory, written in batches.

An :class:`~smtpguard.relay.observe.Observer`: every recorded attempt (and
every recipient refused at RCPT as suppressed) adds one to a counter in a
dict; :meth:`DailyCounts.run` hands the batch to the process's one writer
every :data:`FLUSH_INTERVAL` seconds as bookkeeping (no fsync of its own: it
rides along with the next queue commit), and prunes days older than
``report.keep`` once an hour. Per attempt that costs two dict updates, not a
database write. What a crash can lose is the last few seconds of counts,
never mail: the report is statistics, the queue is the record.

DSNs the relay generated are not counted (they are ours, not the sender's
mail). Complaints are not counted here: they reach the suppression list's
history from any process, and the report reads them there.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence

from smtpguard.config import ReportConfig
from smtpguard.relay.observe import AttemptRecord, DsnQueued, Received, Refused
from smtpguard.store import daily as store
from smtpguard.store.writer import Writer

log = logging.getLogger("smtpguard.relay")

#: Seconds between two writes of the counts.
FLUSH_INTERVAL = 10.0
#: Seconds between two prunes of old days.
PRUNE_INTERVAL = 3600.0
#: Distinct (day, domain) keys held in memory at most (a database that refuses writes
#: for a long time must not grow the relay's memory with every domain mailed).
MAX_PENDING_KEYS = 50_000

_COLUMN = {name: i for i, name in enumerate(store.COLUMNS)}


class DailyCounts:
    """Counts per UTC day and domain (and per day and reason), flushed through ``writer``."""

    def __init__(
        self, writer: Writer, cfg: ReportConfig, *, clock: Callable[[], float] = time.time
    ) -> None:
        self._writer = writer
        self._cfg = cfg
        self._clock = clock
        self._counts: dict[store.DayDomain, list[int]] = {}
        self._reasons: dict[store.DayReason, int] = {}

    def _row(self, day: str, domain: str) -> list[int]:
        key = (day, domain)
        row = self._counts.get(key)
        if row is None:
            if len(self._counts) >= MAX_PENDING_KEYS:
                key = (day, store.OTHER)
                row = self._counts.get(key)
            if row is None:
                row = self._counts[key] = [0] * len(store.COLUMNS)
        return row

    # -- the observer

    def received(self, r: Received) -> None:
        return None

    def dsn(self, d: DsnQueued) -> None:
        return None

    def refused(self, r: Refused) -> None:
        domain = r.recipient.rpartition("@")[2].lower()
        self._row(store.day_of(self._clock()), domain)[_COLUMN["suppressed"]] += 1

    def attempts(self, records: Sequence[AttemptRecord]) -> None:
        for r in records:
            if r.kind == "dsn":
                continue
            day = store.day_of(r.finished)
            self._row(day, r.domain)[_COLUMN[r.status]] += 1
            if r.status != "sent":
                key = (day, r.status, r.reason)
                self._reasons[key] = self._reasons.get(key, 0) + 1

    # -- writing

    async def flush(self) -> None:
        """Write what was counted since the last flush; kept for the next one on failure."""
        if not self._counts and not self._reasons:
            return
        counts, reasons = self._counts, self._reasons
        self._counts, self._reasons = {}, {}
        cap = self._cfg.max_domains_per_day
        try:
            await self._writer.call(lambda c: store.add(c, counts, reasons, cap), durable=False)
        except Exception as e:
            log.error("writing the per-day counts failed (kept for the next try): %s", e)
            for (day, domain), row in counts.items():
                kept = self._row(day, domain)
                for i, n in enumerate(row):
                    kept[i] += n
            for rkey, n in reasons.items():
                self._reasons[rkey] = self._reasons.get(rkey, 0) + n

    async def prune(self, now: float | None = None) -> int:
        before = store.day_of((self._clock() if now is None else now) - self._cfg.keep)
        return await self._writer.call(lambda c: store.prune(c, before), durable=False)

    async def run(self) -> None:
        """Flush every :data:`FLUSH_INTERVAL` seconds and prune hourly, until cancelled."""
        next_prune = 0.0
        while True:
            await asyncio.sleep(FLUSH_INTERVAL)
            await self.flush()
            if time.monotonic() >= next_prune:
                next_prune = time.monotonic() + PRUNE_INTERVAL
                try:
                    await self.prune()
                except Exception as e:  # housekeeping: the next round tries again
                    log.error("pruning old per-day counts failed: %s", e)

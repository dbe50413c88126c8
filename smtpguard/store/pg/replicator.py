"""The replicator: pushes this node's outbox, listens for the fleet's changes, pulls them.

It runs as a task in the relay (the process that always runs on a node); the
milter, the policy service and the CLI on the same node share its SQLite
cache. One loop, in this order each round, so a node's own changes are in
PostgreSQL before it asks what changed:

1. push: outbox rows (oldest first, up to :data:`PUSH_BATCH`) -> PostgreSQL
   (:func:`smtpguard.store.pg.apply.push`), then deleted locally;
2. pull: when a ``NOTIFY smtpguard_suppression`` arrived, after a push, and at
   least every :data:`HEARTBEAT` seconds (a third of ``store.max_staleness`` if
   that is shorter), which also proves the node in sync.

A listener thread holds one connection with ``LISTEN smtpguard_suppression``
and wakes the loop on each notification; the outbox is looked at every
:data:`POLL` seconds (one indexed read of the local database). So a change
made on node A is in node B's cache within POLL + two round trips.

PostgreSQL away: every round fails fast, the outbox grows (nothing is lost,
the RCPT check answers from the cache), and the state is logged once when it
changes, with the outbox depth; metrics show it all the time. Back: the
outbox is replayed in order, then the changes missed are pulled.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from typing import Any

from smtpguard.config import Config
from smtpguard.errors import StoreError
from smtpguard.store import daily, outbox
from smtpguard.store.db import connect
from smtpguard.store.outbox import NodeIdentity
from smtpguard.store.pg import apply, pull, schema
from smtpguard.store.pg import metrics as m
from smtpguard.store.pg.connect import CHANNEL, driver, explain, redact
from smtpguard.store.pg.connect import connect as pg_connect
from smtpguard.store.writer import DbThread, Writer

log = logging.getLogger("smtpguard.fleet")

#: How often the outbox is looked at (seconds).
POLL = 0.1
#: Longest time between two pulls while nothing is notified (seconds).
HEARTBEAT = 5.0
#: Outbox operations per push transaction.
PUSH_BATCH = 1000
#: How long the fleet keeps its change log (seconds); a node away longer resyncs whole.
CHANGES_KEEP = 7 * 86400.0
#: Longest wait between attempts while PostgreSQL is unreachable (seconds).
MAX_BACKOFF = 5.0


class Listener:
    """A thread holding ``LISTEN smtpguard_suppression``; calls ``wake()`` on each
    notification and on every (re)connection (notifications may have been missed)."""

    def __init__(self, dsn: str, wake: Any) -> None:
        self._dsn = dsn
        self._wake = wake
        self._stop = threading.Event()
        self.connected = False
        self._thread = threading.Thread(target=self._run, name="fleet-listen", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        backoff = 0.2
        while not self._stop.is_set():
            try:
                conn = pg_connect(self._dsn, autocommit=True)
            except StoreError:
                self.connected = False
                self._stop.wait(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF)
                continue
            backoff = 0.2
            try:
                with conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    self.connected = True
                    self._wake()
                    while not self._stop.is_set():
                        for _ in conn.notifies(timeout=1.0):
                            self._wake()
            except Exception as e:
                log.debug("fleet: listener connection lost: %s", e)
            self.connected = False
            self._wake()


class Replicator:
    """Push, listen, pull (see the module doc). ``await start()``, ``await stop()``."""

    def __init__(
        self,
        cfg: Config,
        ident: NodeIdentity,
        writer: Writer,
        *,
        owned: DbThread | None = None,
        on_pulled: Callable[[set[str], set[str]], None] | None = None,
    ) -> None:
        self.cfg = cfg
        self._on_pulled = on_pulled
        self._owned = owned  # a writer thread of its own, closed at stop
        self.ident = ident
        self._writer = writer
        self._dsn = cfg.store.dsn
        self._pg: Any = None  # the one connection pushes and pulls use (see _with_pg)
        self._reader: sqlite3.Connection | None = None
        self._wake = asyncio.Event()
        self._listener: Listener | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._migrated = False
        # A node must prove itself in sync well within store.max_staleness.
        self._heartbeat = min(HEARTBEAT, cfg.store.max_staleness / 3)
        self.up: bool | None = None  # None until the first attempt
        self.synced_at: float | None = None
        self.pushed = 0
        self.pulled = 0

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._reader = await asyncio.to_thread(
            connect, self.cfg.data_dir, busy_timeout=self.cfg.store.busy_timeout,
            group=self.cfg.store.group,
        )  # fmt: skip
        self.synced_at = pull.synced_at(self._reader)
        self._listener = Listener(self._dsn, lambda: loop.call_soon_threadsafe(self._wake.set))
        self._listener.start()
        self._task = asyncio.create_task(self._run(), name="fleet-replicator")
        log.info(
            "fleet: node %s, PostgreSQL %s, cache %s", self.ident.node, redact(self._dsn),
            self.cfg.db_path,
        )  # fmt: skip

    async def stop(self) -> None:
        if self._task is not None:
            # The flag, not the cancellation alone, ends the loop: Python 3.11's
            # wait_for can swallow a cancel that arrives as its wait completes, and
            # the loop would then go round for ever.
            self._stopping = True
            self._wake.set()
            self._task.cancel()
            done, _ = await asyncio.wait({self._task}, timeout=5.0)
            for task in done:  # retrieved, so a failure is not reported as never seen
                if not task.cancelled():
                    task.exception()
            # A last push, so a clean stop leaves nothing behind that PostgreSQL can take
            # (not when it is known away: the outbox keeps it for the next start).
            if self.up is not False:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self._push_all(), 5.0)
        if self._listener is not None:
            await asyncio.to_thread(self._listener.stop)
        if self._pg is not None:
            with contextlib.suppress(Exception):
                self._pg.close()
        if self._reader is not None:
            self._reader.close()
        if self._owned is not None:
            self._owned.close()

    # -- the loop

    async def _run(self) -> None:
        backoff = POLL
        last_pull = 0.0
        next_prune = time.monotonic() + 60
        while not self._stopping:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(backoff):
                    await self._wake.wait()
            if self._stopping:
                return
            woken = self._wake.is_set()
            self._wake.clear()
            try:
                pushed = await self._push_all()
                now = time.monotonic()
                if woken or pushed or now - last_pull >= self._heartbeat:
                    await self._pull_all()
                    last_pull = now
                if now >= next_prune:
                    before = time.time() - CHANGES_KEEP
                    await asyncio.to_thread(self._with_pg, _pruner(before))
                    keep_day = daily.day_of(time.time() - self.cfg.report.keep)
                    await asyncio.to_thread(self._with_pg, _day_pruner(self.ident.node, keep_day))
                    next_prune = now + 3600
            except StoreError as e:
                self._state(False, str(e))
                backoff = min(max(backoff * 2, 0.5), MAX_BACKOFF)
            except Exception as e:  # a bug must not stop replication for good
                log.exception("fleet: replication round failed: %s", e)
                backoff = MAX_BACKOFF
            else:
                self._state(True, "")
                backoff = POLL
            self._gauges()

    def _state(self, up: bool, why: str) -> None:
        if up != self.up:
            waiting, _ = outbox.depth(self._reader) if self._reader else (0, None)
            if up:
                log.info(
                    "fleet: PostgreSQL %s reachable; in sync (%d changes waiting to push)",
                    redact(self._dsn), waiting,
                )  # fmt: skip
            else:
                log.warning(
                    "fleet: PostgreSQL unreachable: %s; RCPT checks answer from this node's"
                    " cache, changes wait in its outbox (%d now)", why, waiting,
                )  # fmt: skip
            self.up = up
        m.CONNECTED.set(1 if up else 0)

    def _gauges(self) -> None:
        if self._reader is None:
            return
        with contextlib.suppress(sqlite3.Error):
            waiting, oldest = outbox.depth(self._reader)
            m.OUTBOX.set(waiting)
            m.OUTBOX_AGE.set(0 if oldest is None else max(0.0, time.time() - oldest))
        if self.synced_at is not None:
            m.LAG.set(max(0.0, time.time() - self.synced_at))

    # -- push and pull

    def _with_pg(self, fn: Any) -> Any:
        """Run ``fn(conn)`` on the replicator's connection (in a worker thread).

        One connection, not a pool: pushes and pulls run one at a time, and a
        connection of its own gives the operator PostgreSQL's own words when it
        fails. A broken connection is dropped and made again on the next round.
        """
        pg = driver()
        try:
            if self._pg is None or self._pg.closed:
                self._pg = pg_connect(self._dsn)
            if not self._migrated:
                schema.migrate(self._pg)
                self._migrated = True
            return fn(self._pg)
        except pg.Error as e:
            with contextlib.suppress(Exception):
                self._pg.close()
            self._pg = None
            raise explain(self._dsn, e) from None

    async def _push_all(self) -> int:
        assert self._reader is not None
        total = 0
        while True:
            ops = outbox.read(self._reader, PUSH_BATCH)
            if not ops:
                return total
            result = await asyncio.to_thread(self._with_pg, _pusher(self.ident, ops))
            await self._writer.call(_deleter(result.last_id), durable=False)
            total += len(ops)
            self.pushed += result.applied
            m.PUSHED.inc(result.applied)
            if len(ops) < PUSH_BATCH:
                return total

    async def _pull_all(self) -> None:
        assert self._reader is not None
        while True:
            since = pull.last_seq(self._reader)
            page = await asyncio.to_thread(self._with_pg, _fetcher(since))
            now = time.time()
            n = await self._writer.call(_applier(page, now), durable=False)
            if self._on_pulled is not None and n:
                destinations, soft = pull.hints(page)
                if destinations or soft:
                    self._on_pulled(destinations, soft)
            self.synced_at = now
            self.pulled += n
            m.PULLED.inc(n)
            if page.seq >= page.head or pull.last_seq(self._reader) <= since:
                await asyncio.to_thread(self._with_pg, _noter(self.ident, page.seq))
                return


def _pusher(ident: NodeIdentity, ops: list[outbox.OutboxRow]) -> Any:
    return lambda conn: apply.push(conn, ident, ops)


def _deleter(last_id: int) -> Any:
    return lambda conn: outbox.delete_through(conn, last_id)


def _fetcher(since: int) -> Any:
    return lambda conn: pull.fetch(conn, since)


def _applier(page: pull.Pulled, now: float) -> Any:
    return lambda conn: pull.apply_local(conn, page, now=now)


def _noter(ident: NodeIdentity, seq: int) -> Any:
    return lambda conn: apply.note_pulled(conn, ident, seq)


def _pruner(before: float) -> Any:
    return lambda conn: apply.prune_changes(conn, before)


def _day_pruner(node: str, before_day: str) -> Any:
    return lambda conn: apply.prune_days(conn, node, before_day)

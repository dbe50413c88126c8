"""One writer per process: a thread that owns a connection and group-commits.

Every write a process makes to the database goes through one :class:`DbThread`
with ``transactional=True`` (the relay's is created by its queue and shared
with the suppression sink, so a bounce, its DSN and the suppression it causes
are one transaction). It takes everything pending, runs it in ONE transaction
and only then resolves each caller's future: twenty sessions committing at
once cost one fsync, not twenty. A batch runs without per-operation
savepoints; only when an operation fails is it rolled back and run again with
one SAVEPOINT per operation, so the failing one fails alone and nothing of it
stays half-written.

Batches holding only bookkeeping (``durable=False``: claims, attempt results)
commit without an fsync (``synchronous=NORMAL``, see :meth:`DbThread._set_sync`).
Bookkeeping does not even wake the thread: it waits on the loop side for the
next operation that does (an enqueue, whose transaction and fsync it then
shares), or for a nudge :data:`BOOKKEEPING_WAIT` later. A thread wake-up costs
the relay about as much CPU as the write itself.

With ``transactional=False`` the same class is a reader thread: functions run
one by one on its own connection (WAL: readers never wait for the writer).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
import operator
import queue as _stdqueue
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, TypeVar

from smtpguard.errors import StoreError
from smtpguard.store.db import connect, db_path, explain

log = logging.getLogger("smtpguard.store")

T = TypeVar("T")

MAX_BATCH = 500  # operations per group-commit transaction
#: Put on the thread's queue to wake it for waiting bookkeeping (see DbThread.call).
_NUDGE = object()
_SUBMITTED = operator.itemgetter(4)
#: How long a batch of only bookkeeping (claims, attempt results) waits for more
#: operations before committing (seconds); see :meth:`DbThread._run`.
BOOKKEEPING_WAIT = 0.005


class Writer(Protocol):
    """What a part needs to write: run ``fn(conn)`` inside the process's one transaction."""

    async def call(self, fn: Callable[[sqlite3.Connection], T], *, durable: bool = True) -> T: ...


async def open_thread(
    data_dir: str | Path, *, busy_timeout: float, transactional: bool, name: str, group: str = ""
) -> DbThread:
    """A :class:`DbThread` on a new connection to the database under ``data_dir``."""
    conn = await asyncio.to_thread(connect, data_dir, busy_timeout=busy_timeout, group=group)
    return DbThread(conn, db_path(data_dir), transactional=transactional, name=name)


class DbThread:
    """One thread owning one sqlite3 connection; runs submitted functions in order.

    With ``transactional=True`` it is the group committer: it drains every
    pending operation, runs them in one ``BEGIN IMMEDIATE`` ... ``COMMIT``
    (again one SAVEPOINT each if one failed, so a failing operation is rolled
    back alone), and only after COMMIT returns resolves the callers' futures.
    Every caller's answer is what the database holds: if COMMIT fails, every
    operation of that transaction fails (nothing was written); if SQLite rolls
    a transaction back by itself (disk full, I/O error), the operations it had
    done are run again in a new one, never outside a transaction.
    """

    def __init__(self, conn: sqlite3.Connection, path: Path, *, transactional: bool, name: str):
        self._conn = conn
        self._path = path
        self._transactional = transactional
        self._ops: _stdqueue.SimpleQueue[Any] = _stdqueue.SimpleQueue()
        self.name = name
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._closed = False
        self._durable = True  # store.db.connect() sets synchronous = FULL
        self.batches = 0
        self.operations = 0
        # Bookkeeping waiting for a batch to join (see call); appended on the loop,
        # taken by the thread. Each operation carries a sequence number, so a batch
        # runs them in the order they were submitted, whichever way they came.
        self._lazy: collections.deque[Any] = collections.deque()
        self._nudging = False
        self._seq = itertools.count()
        self._thread.start()

    async def call(self, fn: Callable[[sqlite3.Connection], T], *, durable: bool = True) -> T:
        if self._closed:
            raise StoreError(f"{self._path}: {self.name} is closed")
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[T] = loop.create_future()
        op = (fn, fut, loop, durable, next(self._seq))
        if durable or not self._transactional:
            self._ops.put(op)  # wakes the thread
        else:
            # Bookkeeping: no wake-up of its own. It rides along with the next
            # operation that wakes the thread, or a nudge BOOKKEEPING_WAIT from now.
            self._lazy.append(op)
            if not self._nudging:
                self._nudging = True
                loop.call_later(BOOKKEEPING_WAIT, self._nudge)
        return await fut

    def _nudge(self) -> None:
        """Bookkeeping waited long enough for company: wake the thread for it."""
        self._nudging = False
        if self._lazy:
            self._ops.put(_NUDGE)

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._ops.put(None)
            self._thread.join(timeout=30)
            with contextlib.suppress(sqlite3.Error):
                self._conn.close()

    @staticmethod
    def _resolve(fut: asyncio.Future[Any], result: Any, exc: BaseException | None) -> None:
        if fut.done():
            return
        if exc is not None:
            fut.set_exception(exc)
        else:
            fut.set_result(result)

    @classmethod
    def _resolve_all(cls, items: list[tuple[Any, Any, Any]]) -> None:
        for fut, result, exc in items:
            cls._resolve(fut, result, exc)

    def _set_sync(self, durable: bool) -> None:
        """FULL (fsync at COMMIT) when the batch holds a write someone will answer 250 on.

        A batch of only delivery bookkeeping (claims, attempt results) commits with
        NORMAL: in WAL mode that survives a process crash (the frames are in the
        OS's hands) and is made durable by the next FULL commit; only a power loss
        in between can undo it, and then the recipients are simply tried again
        (at-least-once), which is why those writes need not pay for an fsync.
        """
        if durable != self._durable:
            self._conn.execute(f"PRAGMA synchronous = {'FULL' if durable else 'NORMAL'}")
            self._durable = durable

    def _run(self) -> None:
        stop = False
        while True:
            if stop:
                if not self._lazy:
                    return
                batch: list[Any] = []  # closing: what bookkeeping is left still runs
            else:
                first = self._ops.get()
                stop = first is None
                batch = [] if stop or first is _NUDGE else [first]
                if not stop:
                    stop = self._gather(batch)
            while self._lazy and len(batch) < MAX_BATCH:
                batch.append(self._lazy.popleft())
            if not batch:
                continue
            if len(batch) > 1:
                batch.sort(key=_SUBMITTED)
            self._execute(batch)
            if self._lazy and not stop:
                self._ops.put(_NUDGE)  # more bookkeeping than one batch takes

    def _execute(self, batch: list[Any]) -> None:
        """Run one batch (one transaction when transactional) and resolve its futures."""
        outcomes = self._run_batch([op[0] for op in batch], any(op[3] for op in batch))
        self.batches += 1
        self.operations += len(batch)
        # One wake-up per event loop for the whole batch, not one per operation.
        by_loop: dict[Any, list[tuple[Any, Any, Any]]] = {}
        for op, (result, exc) in zip(batch, outcomes, strict=True):
            by_loop.setdefault(op[2], []).append((op[1], result, exc))
        for loop, items in by_loop.items():
            # A closed loop (RuntimeError) means nobody is waiting any more.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._resolve_all, items)

    def _gather(self, batch: list[Any]) -> bool:
        """Add the operations pending now to ``batch``; True when ``close()`` asked to stop."""
        while len(batch) < MAX_BATCH:
            try:
                op = self._ops.get_nowait()
            except _stdqueue.Empty:
                return False
            if op is None:
                return True
            if op is not _NUDGE:  # a nudge only announces bookkeeping, taken anyway
                batch.append(op)
        return False

    def _run_batch(
        self, fns: list[Callable[[sqlite3.Connection], Any]], durable: bool = True
    ) -> list[tuple[Any, Any]]:
        conn = self._conn
        if not self._transactional:
            out: list[tuple[Any, Any]] = []
            for fn in fns:
                try:
                    out.append((fn(conn), None))
                except sqlite3.Error as e:
                    out.append((None, explain(self._path, e)))
                except Exception as e:
                    out.append((None, e))
            return out
        # Optimistic first: the whole batch without savepoints (two statements less
        # per operation). Only if an operation fails is the transaction rolled back
        # and the batch run again with each operation in its own SAVEPOINT, so the
        # failing one fails alone. Operations only touch this connection, so running
        # one again after a rollback is safe.
        try:
            self._set_sync(durable)
        except sqlite3.Error as e:
            err = explain(self._path, e)
            return [(None, err) for _ in fns]
        results: list[tuple[Any, Any] | None] = [None] * len(fns)
        if self._optimistic(fns, results):
            return results  # type: ignore[return-value]
        todo = list(range(len(fns)))
        while todo:
            todo = self._isolated(fns, todo, results)
        return results  # type: ignore[return-value]

    def _begin(self, fns_left: list[int], results: list[tuple[Any, Any] | None]) -> bool:
        """BEGIN IMMEDIATE; on failure every operation in ``fns_left`` fails with it."""
        try:
            self._conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as e:
            err = explain(self._path, e)
            for i in fns_left:
                results[i] = (None, err)
            return False
        return True

    def _commit(self, done: list[int], results: list[tuple[Any, Any] | None]) -> bool:
        """COMMIT; if it fails nothing of the transaction was written, and every
        operation in ``done`` is reported failed."""
        conn = self._conn
        try:
            conn.execute("COMMIT")
        except sqlite3.Error as e:
            self._rollback()
            err = explain(self._path, e)
            log.error("%s: commit failed: %s", self.name, err)
            for i in done:
                results[i] = (None, err)
            return False
        return True

    def _rollback(self) -> None:
        if self._conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                self._conn.execute("ROLLBACK")

    def _optimistic(
        self,
        fns: list[Callable[[sqlite3.Connection], Any]],
        results: list[tuple[Any, Any] | None],
    ) -> bool:
        """The first pass: every operation in one transaction, without savepoints.

        True when it committed (``results`` filled in) or could not even begin
        (every operation failed with that error); False when an operation failed
        and everything was rolled back, to be run again one savepoint each.
        """
        conn = self._conn
        todo = list(range(len(fns)))
        if not self._begin(todo, results):
            return True
        for i in todo:
            try:
                results[i] = (fns[i](conn), None)
            except Exception:
                self._rollback()
                return False
        self._commit(todo, results)
        return True

    def _isolated(
        self,
        fns: list[Callable[[sqlite3.Connection], Any]],
        todo: list[int],
        results: list[tuple[Any, Any] | None],
    ) -> list[int]:
        """One transaction over ``todo``, each operation in its own SAVEPOINT.

        Returns what is left to run. An operation that fails is rolled back to its
        savepoint and fails alone, unless SQLite rolled the whole transaction back
        by itself (SQLITE_FULL, SQLITE_IOERR, SQLITE_NOMEM...; ``in_transaction``
        turns False): then the work done before it in this transaction is gone too
        and is returned to be run again in a new one. A SAVEPOINT outside a
        transaction would start (and RELEASE commit) one of its own, so nothing
        runs after such a failure in this pass. Each pass settles at least one
        operation, so the loop ends.
        """
        conn = self._conn
        if not self._begin(todo, results):
            return []
        done: list[int] = []
        for pos, i in enumerate(todo):
            try:
                conn.execute("SAVEPOINT op")
                result = fns[i](conn)
                conn.execute("RELEASE op")
            except Exception as e:
                results[i] = (None, explain(self._path, e) if isinstance(e, sqlite3.Error) else e)
                if conn.in_transaction:
                    try:
                        conn.execute("ROLLBACK TO op")
                        conn.execute("RELEASE op")
                        continue
                    except sqlite3.Error:
                        self._rollback()
                # The transaction is gone: redo what it had done, and the rest.
                log.warning(
                    "%s: the transaction was rolled back by SQLite (%s); running %d "
                    "operations again", self.name, results[i][1], len(done) + len(todo) - pos - 1,
                )  # fmt: skip
                return done + todo[pos + 1 :]
            results[i] = (result, None)
            done.append(i)
        self._commit(done, results)
        return []

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
commit without an fsync (``synchronous=NORMAL``, see :meth:`DbThread._set_sync`)
and first wait up to :data:`BOOKKEEPING_WAIT` for company, so they mostly ride
along in the next durable transaction instead of costing one of their own.

With ``transactional=False`` the same class is a reader thread: functions run
one by one on its own connection (WAL: readers never wait for the writer).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue as _stdqueue
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, TypeVar

from smtpguard.errors import StoreError
from smtpguard.store.db import connect, db_path, explain

log = logging.getLogger("smtpguard.store")

T = TypeVar("T")

MAX_BATCH = 500  # operations per group-commit transaction
#: How long a batch of only bookkeeping (claims, attempt results) waits for more
#: operations before committing (seconds); see :meth:`DbThread._run`.
BOOKKEEPING_WAIT = 0.005


class Writer(Protocol):
    """What a part needs to write: run ``fn(conn)`` inside the process's one transaction."""

    async def call(self, fn: Callable[[sqlite3.Connection], T], *, durable: bool = True) -> T: ...


async def open_thread(
    data_dir: str | Path, *, busy_timeout: float, transactional: bool, name: str
) -> DbThread:
    """A :class:`DbThread` on a new connection to the database under ``data_dir``."""
    conn = await asyncio.to_thread(connect, data_dir, busy_timeout=busy_timeout)
    return DbThread(conn, db_path(data_dir), transactional=transactional, name=name)


class DbThread:
    """One thread owning one sqlite3 connection; runs submitted functions in order.

    With ``transactional=True`` it is the group committer: it drains every
    pending operation, runs them in one ``BEGIN IMMEDIATE`` ... ``COMMIT``
    (each inside a SAVEPOINT so a failing operation is rolled back alone), and
    only after COMMIT returns resolves the callers' futures. If COMMIT fails,
    every operation of the batch fails: nothing was written.
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
        self._thread.start()

    async def call(self, fn: Callable[[sqlite3.Connection], T], *, durable: bool = True) -> T:
        if self._closed:
            raise StoreError(f"{self._path}: {self.name} is closed")
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[T] = loop.create_future()
        self._ops.put((fn, fut, loop, durable))
        return await fut

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
        while not stop:
            first = self._ops.get()
            if first is None:
                return
            batch = [first]
            stop = self._gather(batch, 0.0)
            if not stop and self._transactional and not any(op[3] for op in batch):
                # Only bookkeeping so far: it need not commit at once, so it waits a
                # moment for company (ideally an enqueue, whose fsync it then shares).
                # Alone, each record or claim would cost a commit of its own.
                stop = self._gather(batch, BOOKKEEPING_WAIT)
            outcomes = self._run_batch([op[0] for op in batch], any(op[3] for op in batch))
            self.batches += 1
            self.operations += len(batch)
            # One wake-up per event loop for the whole batch, not one per operation.
            by_loop: dict[Any, list[tuple[Any, Any, Any]]] = {}
            for (_, fut, loop, _durable), (result, exc) in zip(batch, outcomes, strict=True):
                by_loop.setdefault(loop, []).append((fut, result, exc))
            for loop, items in by_loop.items():
                # A closed loop (RuntimeError) means nobody is waiting any more.
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(self._resolve_all, items)

    def _gather(self, batch: list[Any], wait: float) -> bool:
        """Add pending operations to ``batch``; True when ``close()`` asked to stop.

        With ``wait`` > 0, keeps waiting up to that long for more, but no longer
        than until a durable operation arrives (someone awaits a 250 on it).
        """
        deadline = time.monotonic() + wait
        while len(batch) < MAX_BATCH:
            try:
                op = self._ops.get_nowait()
            except _stdqueue.Empty:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                try:
                    op = self._ops.get(timeout=left)
                except _stdqueue.Empty:
                    return False
            if op is None:
                return True
            batch.append(op)
            if op[3]:
                deadline = 0.0  # take what is pending already, wait no more
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
        out = self._transaction(fns, durable, isolate=False)
        if out is None:
            out = self._transaction(fns, durable, isolate=True)
        assert out is not None
        return out

    def _transaction(
        self, fns: list[Callable[[sqlite3.Connection], Any]], durable: bool, *, isolate: bool
    ) -> list[tuple[Any, Any]] | None:
        """One transaction over ``fns``; None when an operation failed and ``isolate`` is off."""
        conn = self._conn
        try:
            self._set_sync(durable)
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as e:
            err = explain(self._path, e)
            return [(None, err) for _ in fns]
        out: list[tuple[Any, Any]] = []
        for fn in fns:
            if not isolate:
                try:
                    out.append((fn(conn), None))
                except Exception:
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute("ROLLBACK")
                    return None
                continue
            try:
                conn.execute("SAVEPOINT op")
                result = fn(conn)
                conn.execute("RELEASE op")
                out.append((result, None))
            except Exception as e:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK TO op")
                    conn.execute("RELEASE op")
                err = explain(self._path, e) if isinstance(e, sqlite3.Error) else e
                out.append((None, err))
        try:
            conn.execute("COMMIT")
        except sqlite3.Error as e:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            err = explain(self._path, e)
            log.error("%s: commit failed: %s", self.name, err)
            return [(None, err) for _ in fns]
        return out

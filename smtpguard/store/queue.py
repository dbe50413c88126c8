"""The relay's durable queue: messages, per-recipient delivery state, events.

Why it looks like this:

* **Durable before 250.** :meth:`QueueStore.enqueue` returns only after the
  transaction holding the message has been COMMITted on a connection with
  ``synchronous=FULL`` (see :mod:`smtpguard.store.db`), so the inbound side can
  answer ``250`` knowing a crash cannot lose the message.
* **Group commit.** One fsync per message would cap the relay at a few hundred
  messages per second on a slow disk. Every write goes to the process's one
  writer thread (:class:`~smtpguard.store.writer.DbThread`), which commits
  everything pending in one transaction; delivery bookkeeping (claims, attempt
  results) commits without an fsync, since losing it to a power cut only means
  a recipient is tried again. The suppression sink writes through the same
  thread: :meth:`QueueStore.record` runs its write in the bounce's transaction.
* **Bodies are not held in memory while queued.** They live in
  ``queue_bodies`` and are read back only when a delivery attempt needs them;
  a finished message's body is deleted, its metadata and events stay. The one
  exception is bounded: the bodies of the last few messages committed (at most
  :data:`FRESH_BODY_BYTES` in all) wait for their first attempt in memory,
  which then needs no database read.
* **Due work through an index.** Recipients carry ``(state, next_attempt)``
  and the scheduler asks the ``queue_recipients_due`` index for what is due;
  nothing rescans the queue.

Recipient states: ``queued`` (waiting for its ``next_attempt``), ``active``
(claimed by a delivery attempt; ``next_attempt`` then holds when it was
claimed), ``held`` (operator hold), and the final ``delivered``, ``bounced``,
``expired``, ``deleted``. A crash can leave ``active`` rows;
:meth:`QueueStore.recover` puts them back to ``queued`` at start-up
(at-least-once delivery). While the relay runs, attempt results that meet a
locked or full database are retried until written (:meth:`QueueStore.record`),
and :meth:`QueueStore.reclaim` puts back ``active`` rows claimed long ago that
no attempt of this process is working on, so none waits for a restart.

SQL stays in this module; callers see records and methods only. The async
:class:`QueueStore` serves the relay's event loop; the synchronous
:class:`QueueAdmin` serves the ``smtpguard queue`` CLI, possibly while the
relay runs (WAL lets both work on the same file).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from smtpguard.address import normalize_address
from smtpguard.errors import AddressError, StoreError, UserError
from smtpguard.store.db import connect, db_path, explained, transaction
from smtpguard.store.messages import (
    Claim,
    InboundMessage,
    QueueDepth,
    QueuedMessage,
    QueuedRecipient,
    QueueEvent,
    QueueStats,
    RecipientResult,
    format_qid,
    parse_qid,
)
from smtpguard.store.writer import DbThread

T = TypeVar("T")

log = logging.getLogger("smtpguard.queue")

#: Recipient states that still have work to do.
PENDING_STATES = ("queued", "active", "held")
#: Recipient states that are final.
FINAL_STATES = ("delivered", "bounced", "expired", "deleted")

#: A message's first delivery attempt usually starts milliseconds after its commit;
#: reading its body back from SQLite then costs a thread round trip for bytes the
#: relay just had. The last few committed bodies are kept for that first read
#: (bounded in total, ids are never reused: AUTOINCREMENT); later reads use SQLite.
FRESH_BODY_BYTES = 8 * 1024 * 1024
FRESH_BODY_MAX = 256 * 1024  # larger bodies are never kept
#: Bodies from this size on are written and read through SQLite's blob I/O.
BLOB_STREAM_MIN = 1024 * 1024
#: Pauses between tries of a write that must not be lost (seconds, doubling).
RETRY_FIRST = 0.05
RETRY_MAX = 5.0


# --------------------------------------------------------------------------- SQL (sync)

_MSG_COLS = (
    "id, kind, mail_from, envid, ret, smtputf8, body_type, size, received_at, "
    "auto_submitted, client, held, parent_id, done_at, arrived_at"
)
_RCPT_COLS = (
    "id, message_id, address, domain, notify, orcpt, state, attempts, next_attempt, "
    "last_attempt, last_code, last_status, last_reason, last_diag, last_host"
)


def _message(row: Sequence[Any]) -> QueuedMessage:
    return QueuedMessage(
        id=row[0], kind=row[1], mail_from=row[2], envid=row[3], ret=row[4],
        smtputf8=bool(row[5]), body_type=row[6], size=row[7], received_at=row[8],
        auto_submitted=bool(row[9]), client=row[10], held=bool(row[11]), parent_id=row[12],
        done_at=row[13], arrived_at=row[14],
    )  # fmt: skip


def _recipient(row: Sequence[Any]) -> QueuedRecipient:
    return QueuedRecipient(
        id=row[0], message_id=row[1], address=row[2], domain=row[3],
        notify=tuple(row[4].split(",")) if row[4] else (), orcpt=row[5], state=row[6],
        attempts=row[7], next_attempt=row[8], last_attempt=row[9], last_code=row[10],
        last_status=row[11], last_reason=row[12], last_diag=row[13], last_host=row[14],
    )  # fmt: skip


def _event(conn: sqlite3.Connection, ts: float, message_id: int, event: str, **kw: str) -> None:
    conn.execute(
        "INSERT INTO queue_events (ts, message_id, recipient, event, code, status, reason, "
        "detail, remote_host) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            ts, message_id, kw.get("recipient", ""), event, kw.get("code", ""),
            kw.get("status", ""), kw.get("reason", ""), kw.get("detail", ""),
            kw.get("remote_host", ""),
        ),
    )  # fmt: skip


def _domain(address: str) -> str:
    return address.rpartition("@")[2].lower()


def insert_message(
    conn: sqlite3.Connection,
    msg: InboundMessage,
    *,
    kind: str = "mail",
    parent_id: int | None = None,
    now: float | None = None,
) -> int:
    """Insert one message with its body, recipients and a ``received`` event.

    Runs inside the caller's transaction; returns the new row id.
    """
    now = time.time() if now is None else now
    if not msg.recipients:
        raise ValueError("a queued message needs at least one recipient")
    cur = conn.execute(
        "INSERT INTO queue_messages (kind, parent_id, mail_from, envid, ret, smtputf8, body_type,"
        " size, received_at, auto_submitted, client, helo, auth_user, arrived_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            kind, parent_id, msg.mail_from, msg.envid, msg.ret, int(msg.smtputf8), msg.body,
            len(msg.data), msg.received_at or now, int(msg.auto_submitted), msg.client_address,
            msg.helo, msg.auth_user, msg.arrived_at,
        ),
    )  # fmt: skip
    message_id = cur.lastrowid
    assert message_id is not None
    if len(msg.data) < BLOB_STREAM_MIN:
        conn.execute(
            "INSERT INTO queue_bodies (message_id, data) VALUES (?, ?)", (message_id, msg.data)
        )
    else:
        # Bound as a parameter, SQLite would copy the body twice (the bound value,
        # then the record); written into a zeroblob of its size, it goes straight
        # into the database pages.
        conn.execute(
            "INSERT INTO queue_bodies (message_id, data) VALUES (?, zeroblob(?))",
            (message_id, len(msg.data)),
        )
        with conn.blobopen("queue_bodies", "data", message_id) as blob:
            blob.write(msg.data)
    conn.executemany(
        "INSERT INTO queue_recipients (message_id, address, domain, notify, orcpt, next_attempt)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        [
            (message_id, r.address, _domain(r.address), ",".join(r.notify), r.orcpt, now)
            for r in msg.recipients
        ],
    )
    detail = f"from=<{msg.mail_from}> size={len(msg.data)} nrcpt={len(msg.recipients)}"
    if msg.client_address:
        detail += f" client={msg.client_address}"
    _event(conn, now, message_id, "dsn-created" if kind == "dsn" else "received", detail=detail)
    return message_id


def due_messages(conn: sqlite3.Connection, until: float, limit: int) -> list[tuple[float, int]]:
    """``(next_attempt, message_id)`` of queued recipients due by ``until``, earliest first.

    Served by the ``(state, next_attempt)`` index: cost grows with ``limit``,
    not with the size of the queue.
    """
    rows = conn.execute(
        "SELECT next_attempt, message_id FROM queue_recipients"
        " WHERE state = 'queued' AND next_attempt <= ? ORDER BY next_attempt LIMIT ?",
        (until, limit),
    ).fetchall()
    return [(r[0], r[1]) for r in rows]


def next_due(conn: sqlite3.Connection) -> float | None:
    row = conn.execute(
        "SELECT next_attempt FROM queue_recipients WHERE state = 'queued'"
        " ORDER BY next_attempt LIMIT 1"
    ).fetchone()
    return row[0] if row else None


#: Claim one message's due recipients; an active row's next_attempt is its claim time.
#: INDEXED BY: left to itself SQLite picks the (state, next_attempt) index, which
#: matches the whole due backlog, and every claim becomes a scan of the queue (40
#: claims/s instead of thousands with 100,000 queued).
CLAIM_SQL = (
    "UPDATE queue_recipients INDEXED BY queue_recipients_message"
    " SET state = 'active', next_attempt = ?2"
    " WHERE message_id = ?1 AND state = 'queued' AND next_attempt <= ?2"
    f" RETURNING {_RCPT_COLS}"
)


def claim(conn: sqlite3.Connection, message_ids: Iterable[int], now: float) -> list[Claim]:
    """Mark the due, queued recipients of these messages ``active`` and return them.

    One UPDATE per message (each served by the message index), then the
    claimed messages' rows in one SELECT rather than one per message.
    """
    claimed: dict[int, list[QueuedRecipient]] = {}
    for message_id in dict.fromkeys(message_ids):
        rows = conn.execute(CLAIM_SQL, (message_id, now)).fetchall()
        if rows:
            claimed[message_id] = sorted((_recipient(r) for r in rows), key=lambda r: r.id)
    if not claimed:
        return []
    messages: dict[int, QueuedMessage] = {}
    ids = list(claimed)
    for start in range(0, len(ids), 500):
        part = ids[start : start + 500]
        marks = ",".join("?" * len(part))
        for row in conn.execute(
            f"SELECT {_MSG_COLS} FROM queue_messages WHERE id IN ({marks})", part
        ):
            messages[row[0]] = _message(row)
    return [Claim(messages[mid], tuple(rcpts)) for mid, rcpts in claimed.items()]


def _finish_if_done(conn: sqlite3.Connection, message_id: int, now: float) -> bool:
    """Mark a message done and drop its body once no recipient has work left.

    One conditional UPDATE decides and marks (rather than a SELECT first); the
    body goes when it did. A message marked done earlier has no body left.
    """
    done = conn.execute(
        "UPDATE queue_messages SET done_at = ? WHERE id = ? AND done_at IS NULL"
        " AND NOT EXISTS (SELECT 1 FROM queue_recipients INDEXED BY queue_recipients_message"
        " WHERE message_id = ?"
        " AND state IN ('queued', 'active', 'held'))",
        (now, message_id, message_id),
    ).rowcount
    if not done:
        return False
    conn.execute("DELETE FROM queue_bodies WHERE message_id = ?", (message_id,))
    return True


def record_results(
    conn: sqlite3.Connection,
    results: Sequence[RecipientResult],
    dsns: Sequence[tuple[int, InboundMessage]],
    now: float,
) -> list[int]:
    """Write attempt results, their events and any DSNs, in the caller's transaction.

    A result only changes a recipient that is still ``active`` (an operator may
    have deleted it meanwhile); a deferral of a held message lands in ``held``.
    Returns the ids of the DSN messages created.
    """
    touched: dict[int, None] = {}
    for r in results:
        if r.state == "queued":
            conn.execute(
                "UPDATE queue_recipients SET state = CASE WHEN (SELECT held FROM queue_messages"
                " WHERE id = message_id) THEN 'held' ELSE 'queued' END, next_attempt = ?,"
                " attempts = attempts + 1, last_attempt = ?, last_code = ?, last_status = ?,"
                " last_reason = ?, last_diag = ?, last_host = ? WHERE id = ? AND state = 'active'",
                (
                    r.next_attempt, now, r.code, r.status, r.reason, r.diagnostic,
                    r.remote_host, r.recipient_id,
                ),
            )  # fmt: skip
        else:
            conn.execute(
                "UPDATE queue_recipients SET state = ?, attempts = attempts + 1,"
                " last_attempt = ?, last_code = ?, last_status = ?, last_reason = ?,"
                " last_diag = ?, last_host = ? WHERE id = ? AND state = 'active'",
                (
                    r.state, now, r.code, r.status, r.reason, r.diagnostic, r.remote_host,
                    r.recipient_id,
                ),
            )  # fmt: skip
        _event(
            conn, now, r.message_id, r.event, recipient=r.address, code=r.code, status=r.status,
            reason=r.reason, detail=r.diagnostic, remote_host=r.remote_host,
        )  # fmt: skip
        touched[r.message_id] = None
    created = []
    for parent_id, dsn in dsns:
        dsn_id = insert_message(conn, dsn, kind="dsn", parent_id=parent_id, now=now)
        _event(conn, now, parent_id, "dsn-queued", detail=f"dsn={format_qid(dsn_id)}")
        created.append(dsn_id)
    for message_id in touched:
        _finish_if_done(conn, message_id, now)
    return created


def release_claims(conn: sqlite3.Connection, recipient_ids: Iterable[int], now: float) -> int:
    """Put claimed recipients back to ``queued`` without counting an attempt (shutdown)."""
    n = 0
    for rid in recipient_ids:
        n += conn.execute(
            "UPDATE queue_recipients SET state = 'queued', next_attempt = ?"
            " WHERE id = ? AND state = 'active'",
            (now, rid),
        ).rowcount
    return n


def postpone_claims(conn: sqlite3.Connection, recipient_ids: Iterable[int], until: float) -> int:
    """Put claimed recipients back to ``queued``, due at ``until``, without counting an
    attempt: traffic shaping held them back unattempted (their site is suspended, or
    its line is full). A message held meanwhile keeps them ``held``."""
    n = 0
    for rid in recipient_ids:
        n += conn.execute(
            "UPDATE queue_recipients SET state = CASE WHEN (SELECT held FROM queue_messages"
            " WHERE id = message_id) THEN 'held' ELSE 'queued' END, next_attempt = ?"
            " WHERE id = ? AND state = 'active'",
            (until, rid),
        ).rowcount
    return n


def reclaim(
    conn: sqlite3.Connection, claimed_before: float, live: Iterable[int], now: float
) -> list[int]:
    """Put ``active`` recipients claimed before ``claimed_before`` back in the queue,
    except the ``live`` ones (an attempt of this process is still working on them).

    Such a row was claimed by an attempt whose result never reached the database
    (its writes kept failing, or the process that claimed it is gone); without this
    it would wait for the next start's :func:`recover`. Served by the
    ``(state, next_attempt)`` index. Returns the recipient ids put back.
    """
    keep = set(live)
    rows = [
        r
        for r in conn.execute(
            "SELECT id, message_id, address FROM queue_recipients"
            " WHERE state = 'active' AND next_attempt < ?",
            (claimed_before,),
        ).fetchall()
        if r[0] not in keep
    ]
    for rid, message_id, address in rows:
        conn.execute(
            "UPDATE queue_recipients SET state = CASE WHEN (SELECT held FROM queue_messages"
            " WHERE id = message_id) THEN 'held' ELSE 'queued' END, next_attempt = ?"
            " WHERE id = ? AND state = 'active'",
            (now, rid),
        )
        _event(conn, now, message_id, "reclaimed", recipient=address,
               detail="claimed long ago and no attempt under way; queued again")  # fmt: skip
    return [r[0] for r in rows]


def recover(conn: sqlite3.Connection, now: float) -> int:
    """After a crash: every ``active`` recipient goes back to ``queued``, due now."""
    rows = conn.execute(
        "UPDATE queue_recipients SET state = 'queued', next_attempt = ? WHERE state = 'active'"
        " RETURNING message_id, address",
        (now,),
    ).fetchall()
    for message_id, address in rows:
        _event(conn, now, message_id, "recovered", recipient=address,
               detail="attempt interrupted by a restart; queued again")  # fmt: skip
    return len(rows)


def purge_finished(conn: sqlite3.Connection, before: float, limit: int = 500) -> int:
    """Delete up to ``limit`` messages finished before ``before``, with their history."""
    ids = [
        r[0]
        for r in conn.execute(
            "SELECT id FROM queue_messages WHERE done_at < ? ORDER BY done_at LIMIT ?",
            (before, limit),
        )
    ]
    if not ids:
        return 0
    marks = ",".join("?" * len(ids))
    conn.execute(f"DELETE FROM queue_events WHERE message_id IN ({marks})", ids)
    conn.execute(f"DELETE FROM queue_recipients WHERE message_id IN ({marks})", ids)
    conn.execute(f"DELETE FROM queue_bodies WHERE message_id IN ({marks})", ids)
    conn.execute(f"DELETE FROM queue_messages WHERE id IN ({marks})", ids)
    return len(ids)


def read_body(conn: sqlite3.Connection, message_id: int) -> bytes:
    """A queued body; a big one read through blob I/O (one copy, not SQLite's and ours)."""
    row = conn.execute(
        "SELECT length(data) FROM queue_bodies WHERE message_id = ?", (message_id,)
    ).fetchone()
    if row is None:
        raise StoreError(f"queue message {format_qid(message_id)} has no body")
    if row[0] >= BLOB_STREAM_MIN:
        with conn.blobopen("queue_bodies", "data", message_id, readonly=True) as blob:
            return blob.read()
    return bytes(
        conn.execute(
            "SELECT data FROM queue_bodies WHERE message_id = ?", (message_id,)
        ).fetchone()[0]
    )


def read_body_head(conn: sqlite3.Connection, message_id: int, limit: int) -> bytes:
    """The first ``limit`` bytes of a body, reading no more of it (a DSN needs the start)."""
    try:
        with conn.blobopen("queue_bodies", "data", message_id, readonly=True) as blob:
            return blob.read(limit)
    except sqlite3.OperationalError:
        return read_body(conn, message_id)[:limit]  # raises StoreError when there is none


def read_message(conn: sqlite3.Connection, message_id: int) -> QueuedMessage | None:
    row = conn.execute(
        f"SELECT {_MSG_COLS} FROM queue_messages WHERE id = ?", (message_id,)
    ).fetchone()
    return _message(row) if row else None


def was_sent(conn: sqlite3.Connection, message_id: int, recipient: str) -> bool:
    """Could message ``message_id`` have gone to ``recipient``, as far as the queue knows?

    Yes when the message is queued with that recipient (compared normalised), and
    also when it is gone but its id was once given out (finished messages are
    forgotten after ``delivery.keep_finished``; a returned bounce may come later).
    No for a message queued without that recipient, or an id never given out.
    """
    present = conn.execute("SELECT 1 FROM queue_messages WHERE id = ?", (message_id,)).fetchone()
    if present is None:
        row = conn.execute(
            "SELECT seq FROM sqlite_sequence WHERE name = 'queue_messages'"
        ).fetchone()
        return row is not None and message_id <= row[0]
    try:
        key = normalize_address(recipient)
    except AddressError:
        return False
    for (address,) in conn.execute(
        "SELECT address FROM queue_recipients WHERE message_id = ?", (message_id,)
    ):
        with contextlib.suppress(AddressError):
            if normalize_address(address) == key:
                return True
    return False


def message_recipients(conn: sqlite3.Connection, message_id: int) -> list[str]:
    """The recipients message ``message_id`` was queued for, as the client gave them
    ([] for a message never queued, or forgotten after ``delivery.keep_finished``)."""
    return [
        address
        for (address,) in conn.execute(
            "SELECT address FROM queue_recipients WHERE message_id = ? ORDER BY id", (message_id,)
        )
    ]


def depth(conn: sqlite3.Connection) -> QueueDepth:
    """Messages and recipients with work left, and the oldest message's arrival.

    Every query reads an index range of the unfinished rows only (the ``(state,
    next_attempt)`` and ``done_at`` indexes), never the finished ones kept for
    ``keep_finished``: the cost grows with the queue's depth, not its history.
    The oldest is the lowest id left (ids grow with commit time).
    """
    by_state = dict.fromkeys(PENDING_STATES, 0)
    for state, n in conn.execute(
        "SELECT state, count(*) FROM queue_recipients WHERE state IN ('queued', 'active', 'held')"
        " GROUP BY state"
    ):
        by_state[state] = n
    messages = conn.execute("SELECT count(*) FROM queue_messages WHERE done_at IS NULL").fetchone()[
        0
    ]
    oldest = conn.execute(
        "SELECT received_at FROM queue_messages WHERE done_at IS NULL ORDER BY id LIMIT 1"
    ).fetchone()
    return QueueDepth(messages, by_state, oldest[0] if oldest else None)


def stats(conn: sqlite3.Connection) -> QueueStats:
    by_state = {s: 0 for s in (*PENDING_STATES, *FINAL_STATES)}
    for state, n in conn.execute("SELECT state, count(*) FROM queue_recipients GROUP BY state"):
        by_state[state] = n
    pending = conn.execute(
        "SELECT count(*), min(received_at) FROM queue_messages WHERE done_at IS NULL"
    ).fetchone()
    reasons = dict(
        conn.execute(
            "SELECT last_reason, count(*) FROM queue_recipients WHERE state IN ('queued', 'held')"
            " AND attempts > 0 GROUP BY last_reason ORDER BY count(*) DESC LIMIT 10"
        ).fetchall()
    )
    return QueueStats(
        messages_pending=pending[0],
        recipients_by_state=by_state,
        oldest_pending=pending[1],
        next_due=next_due(conn),
        deferred_reasons=reasons,
    )


# --------------------------------------------------------------------------- async store


class QueueStore:
    """The relay's queue on the event loop: group-committed writes, a separate reader.

    Every method raises :class:`StoreError` on a storage failure, with nothing
    of that operation written.
    """

    def __init__(self, writer: DbThread, reader: DbThread, path: Path) -> None:
        self._writer = writer
        self._reader = reader
        self.path = path
        # Bodies committed by this process and not read yet, oldest first.
        self._fresh: dict[int, bytes] = {}
        self._fresh_bytes = 0

    @classmethod
    async def open(
        cls, data_dir: str | Path, *, busy_timeout: float = 5.0, group: str = ""
    ) -> QueueStore:
        def _open() -> tuple[sqlite3.Connection, sqlite3.Connection]:
            return (
                connect(data_dir, busy_timeout=busy_timeout, group=group),
                connect(data_dir, busy_timeout=busy_timeout, group=group),
            )

        wconn, rconn = await asyncio.to_thread(_open)
        path = db_path(data_dir)
        return cls(
            DbThread(wconn, path, transactional=True, name="writer"),
            DbThread(rconn, path, transactional=False, name="queue-reader"),
            path,
        )

    async def close(self) -> None:
        await asyncio.to_thread(self._writer.close)
        await asyncio.to_thread(self._reader.close)

    @property
    def writer(self) -> DbThread:
        """The process's one writer: other parts (the suppression sink) write through it."""
        return self._writer

    @property
    def commit_batches(self) -> tuple[int, int]:
        """``(transactions, operations)`` so far: how well group commit batches."""
        return self._writer.batches, self._writer.operations

    async def enqueue(self, msg: InboundMessage) -> str:
        """Commit one accepted message; returns its queue id once durable."""
        return format_qid(await self.enqueue_id(msg))

    async def enqueue_id(self, msg: InboundMessage, *, kind: str = "mail") -> int:
        message_id: int = await self._writer.call(lambda c: insert_message(c, msg, kind=kind))
        self._remember(message_id, msg.data)
        return message_id

    def _remember(self, message_id: int, data: bytes | bytearray) -> None:
        """Keep a just-committed body for its first attempt (see :data:`FRESH_BODY_BYTES`)."""
        if len(data) > FRESH_BODY_MAX:
            return
        self._fresh[message_id] = bytes(data)
        self._fresh_bytes += len(data)
        while self._fresh_bytes > FRESH_BODY_BYTES:
            oldest = next(iter(self._fresh))
            self._fresh_bytes -= len(self._fresh.pop(oldest))

    async def claim(self, message_ids: Sequence[int], now: float | None = None) -> list[Claim]:
        at = time.time() if now is None else now
        ids = list(message_ids)
        return await self._writer.call(lambda c: claim(c, ids, at), durable=False)

    async def record(
        self,
        results: Sequence[RecipientResult],
        dsns: Sequence[tuple[int, InboundMessage]] = (),
        now: float | None = None,
        *,
        also: Sequence[Callable[[sqlite3.Connection], Any]] = (),
    ) -> list[int]:
        """Write attempt results and DSNs; ``also`` runs in the same transaction.

        ``also`` is how a bounce and the suppression it causes commit together
        (the sink's planned write): all of it is written, or none.
        """
        at = time.time() if now is None else now

        def run(conn: sqlite3.Connection) -> list[int]:
            created = record_results(conn, results, dsns, at)
            for fn in also:
                fn(conn)
            return created

        # Durable when it queues a DSN (new mail); plain bookkeeping otherwise: a
        # power cut can then only lose the bounce and its suppression together, and
        # the recipient, still active, is tried again after the restart.
        return await self._until_written(run, durable=bool(dsns), what="attempt results")

    async def _until_written(
        self, fn: Callable[[sqlite3.Connection], T], *, durable: bool, what: str
    ) -> T:
        """``fn`` through the writer, tried again while the failure is transient.

        For writes that are idempotent once they fail (a failed transaction wrote
        nothing): another process holding the write lock for a minute (a long
        ``suppression import``) or a full disk delays them, it does not lose them.
        Ends when written, on a permanent error, or when the store is closed.
        """
        pause = RETRY_FIRST
        failures = 0
        while True:
            try:
                return await self._writer.call(fn, durable=durable)
            except StoreError as e:
                if not e.transient or self._writer.closed:
                    raise
                failures += 1
                if failures == 1 or failures % 10 == 0:
                    log.warning("writing %s failed (%s); trying again until written", what, e)
            await asyncio.sleep(pause)
            pause = min(pause * 2, RETRY_MAX)

    async def reclaim(self, claimed_before: float, live: Iterable[int]) -> list[int]:
        """See :func:`reclaim`: stale ``active`` recipients back to the queue."""
        now = time.time()
        ids = set(live)
        return await self._writer.call(lambda c: reclaim(c, claimed_before, ids, now))

    async def release(self, recipient_ids: Sequence[int]) -> int:
        now = time.time()
        ids = list(recipient_ids)
        return await self._writer.call(lambda c: release_claims(c, ids, now), durable=False)

    async def postpone(self, recipient_ids: Sequence[int], until: float) -> int:
        """See :func:`postpone_claims`: back to the queue unattempted, due at ``until``."""
        ids = list(recipient_ids)
        return await self._writer.call(lambda c: postpone_claims(c, ids, until), durable=False)

    async def recover(self) -> int:
        now = time.time()
        return await self._writer.call(lambda c: recover(c, now))

    async def purge(self, before: float) -> int:
        """Forget messages finished before ``before``, in small transactions."""
        total = 0
        while n := await self._writer.call(lambda c: purge_finished(c, before)):
            total += n
        return total

    async def event(self, message_id: int, event: str, **kw: str) -> None:
        now = time.time()
        await self._writer.call(lambda c: _event(c, now, message_id, event, **kw))

    async def due(self, until: float, limit: int) -> list[tuple[float, int]]:
        return await self._reader.call(lambda c: due_messages(c, until, limit))

    async def next_due(self) -> float | None:
        return await self._reader.call(next_due)

    async def body(self, message_id: int) -> bytes:
        fresh = self._fresh.pop(message_id, None)
        if fresh is not None:
            self._fresh_bytes -= len(fresh)
            return fresh
        return await self._reader.call(lambda c: read_body(c, message_id))

    async def body_head(self, message_id: int, limit: int) -> bytes:
        """The first ``limit`` bytes of a queued body (a large message is not read whole)."""
        fresh = self._fresh.get(message_id)
        if fresh is not None:
            return fresh[:limit]
        return await self._reader.call(lambda c: read_body_head(c, message_id, limit))

    async def message(self, message_id: int) -> QueuedMessage | None:
        return await self._reader.call(lambda c: read_message(c, message_id))

    async def stats(self) -> QueueStats:
        return await self._reader.call(stats)

    async def depth(self) -> QueueDepth:
        return await self._reader.call(depth)


# --------------------------------------------------------------------------- admin (sync, CLI)


@dataclass(frozen=True, slots=True)
class MessageSummary:
    """One row of ``smtpguard queue list``."""

    message: QueuedMessage
    recipients: int
    states: dict[str, int]
    next_attempt: float | None
    last_reason: str


class QueueAdmin:
    """Synchronous queue inspection and operator actions (the ``smtpguard queue`` CLI).

    Safe while the relay runs: each action is one ``BEGIN IMMEDIATE`` transaction;
    the relay's scheduler notices changed due times at its next index refill.
    """

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        self._path = Path(conn.execute("PRAGMA database_list").fetchone()[2])

    @classmethod
    def open(
        cls, data_dir: str | Path, *, busy_timeout: float = 5.0, create: bool = True,
        group: str = "",
    ) -> QueueAdmin:  # fmt: skip
        return cls(connect(data_dir, busy_timeout=busy_timeout, create=create, group=group))

    def close(self) -> None:
        self._conn.close()

    def _tx(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        with transaction(self._conn, self._path) as conn:
            return fn(conn)

    def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        with explained(self._path):
            return fn(self._conn)

    def _require(self, conn: sqlite3.Connection, message_id: int) -> QueuedMessage:
        msg = read_message(conn, message_id)
        if msg is None:
            raise UserError(f"no such queue message: {format_qid(message_id)}")
        return msg

    def list(self, *, include_done: bool = False, limit: int = 1000) -> list[MessageSummary]:
        def run(conn: sqlite3.Connection) -> list[MessageSummary]:
            where = "" if include_done else "WHERE done_at IS NULL"
            rows = conn.execute(
                f"SELECT {_MSG_COLS} FROM queue_messages {where} ORDER BY id LIMIT ?", (limit,)
            ).fetchall()
            out = []
            for row in rows:
                msg = _message(row)
                states: dict[str, int] = {}
                nxt: float | None = None
                last_reason = ""
                for state, n, na, lr in conn.execute(
                    "SELECT state, count(*), min(next_attempt), max(last_reason)"
                    " FROM queue_recipients WHERE message_id = ? GROUP BY state",
                    (msg.id,),
                ):
                    states[state] = n
                    if state == "queued":
                        nxt = na
                    if lr and state in ("queued", "held"):
                        last_reason = lr
                out.append(MessageSummary(msg, sum(states.values()), states, nxt, last_reason))
            return out

        return self._read(run)

    def show(self, qid: str) -> tuple[QueuedMessage, list[QueuedRecipient], list[QueueEvent]]:
        message_id = parse_qid(qid)

        def run(conn: sqlite3.Connection) -> Any:
            msg = self._require(conn, message_id)
            rcpts = [
                _recipient(r)
                for r in conn.execute(
                    f"SELECT {_RCPT_COLS} FROM queue_recipients WHERE message_id = ? ORDER BY id",
                    (message_id,),
                )
            ]
            events = [
                QueueEvent(*r)
                for r in conn.execute(
                    "SELECT id, ts, message_id, recipient, event, code, status, reason, detail,"
                    " remote_host FROM queue_events WHERE message_id = ? ORDER BY id",
                    (message_id,),
                )
            ]
            return msg, rcpts, events

        return self._read(run)

    def body(self, qid: str) -> bytes | None:
        message_id = parse_qid(qid)

        def run(conn: sqlite3.Connection) -> bytes | None:
            self._require(conn, message_id)
            row = conn.execute(
                "SELECT data FROM queue_bodies WHERE message_id = ?", (message_id,)
            ).fetchone()
            return bytes(row[0]) if row else None

        return self._read(run)

    def retry(self, qid: str | None, *, now: float | None = None) -> int:
        """Make queued recipients due now (one message, or all with ``qid=None``)."""
        at = time.time() if now is None else now

        def run(conn: sqlite3.Connection) -> int:
            if qid is None:
                rows = conn.execute(
                    "UPDATE queue_recipients SET next_attempt = ? WHERE state = 'queued'"
                    " RETURNING message_id",
                    (at,),
                ).fetchall()
            else:
                message_id = parse_qid(qid)
                self._require(conn, message_id)
                rows = conn.execute(
                    "UPDATE queue_recipients SET next_attempt = ?"
                    " WHERE message_id = ? AND state = 'queued' RETURNING message_id",
                    (at, message_id),
                ).fetchall()
            for mid in dict.fromkeys(r[0] for r in rows):
                _event(conn, at, mid, "retry", detail="operator: retry now")
            return len(rows)

        return self._tx(run)

    def hold(self, qid: str, *, now: float | None = None) -> int:
        """Hold a message: queued recipients stop being delivered until released."""
        at = time.time() if now is None else now
        message_id = parse_qid(qid)

        def run(conn: sqlite3.Connection) -> int:
            msg = self._require(conn, message_id)
            if msg.done_at is not None:
                raise UserError(f"queue message {qid} is finished; nothing to hold")
            conn.execute("UPDATE queue_messages SET held = 1 WHERE id = ?", (message_id,))
            n = conn.execute(
                "UPDATE queue_recipients SET state = 'held' WHERE message_id = ?"
                " AND state = 'queued'",
                (message_id,),
            ).rowcount
            _event(conn, at, message_id, "held", detail="operator: hold")
            return n

        return self._tx(run)

    def release(self, qid: str, *, now: float | None = None) -> int:
        at = time.time() if now is None else now
        message_id = parse_qid(qid)

        def run(conn: sqlite3.Connection) -> int:
            msg = self._require(conn, message_id)
            if not msg.held:
                raise UserError(f"queue message {qid} is not held")
            conn.execute("UPDATE queue_messages SET held = 0 WHERE id = ?", (message_id,))
            n = conn.execute(
                "UPDATE queue_recipients SET state = 'queued', next_attempt = ?"
                " WHERE message_id = ? AND state = 'held'",
                (at, message_id),
            ).rowcount
            _event(conn, at, message_id, "released", detail="operator: release")
            return n

        return self._tx(run)

    def delete(self, qid: str, *, now: float | None = None) -> int:
        """Delete a message's pending recipients (no DSN); an attempt under way may still land."""
        at = time.time() if now is None else now
        message_id = parse_qid(qid)

        def run(conn: sqlite3.Connection) -> int:
            msg = self._require(conn, message_id)
            if msg.done_at is not None:
                raise UserError(f"queue message {qid} is finished; nothing to delete")
            n = conn.execute(
                "UPDATE queue_recipients SET state = 'deleted' WHERE message_id = ?"
                " AND state IN ('queued', 'active', 'held')",
                (message_id,),
            ).rowcount
            _event(conn, at, message_id, "deleted", detail="operator: delete")
            _finish_if_done(conn, message_id, at)
            return n

        return self._tx(run)

    def stats(self) -> QueueStats:
        return self._read(stats)

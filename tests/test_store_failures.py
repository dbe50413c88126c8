"""The writer's failure paths, on real SQLite files: what a caller is told is what is on disk.

Disk full is made real with ``PRAGMA max_page_count`` on the writer's own
connection (SQLite then fails with SQLITE_FULL exactly as on a full disk, and
rolls the whole transaction back by itself); a write lock is held by a second
connection, as a long ``suppression import`` in another process does.
"""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from smtpguard.errors import StoreError
from smtpguard.store.db import connect
from smtpguard.store.messages import InboundMessage, Recipient, RecipientResult
from smtpguard.store.queue import QueueStore
from smtpguard.store.writer import DbThread


def message(size: int, tag: str) -> InboundMessage:
    body = f"Subject: {tag}\r\n\r\n".encode() + b"x" * size + b"\r\n"
    return InboundMessage(
        mail_from="s@example.org", recipients=(Recipient(f"{tag}@example.com"),), data=body
    )


def stored_subjects(data_dir: Path) -> list[str]:
    conn = connect(data_dir)
    try:
        rows = conn.execute(
            "SELECT r.address FROM queue_messages m JOIN queue_recipients r"
            " ON r.message_id = m.id ORDER BY m.id"
        ).fetchall()
    finally:
        conn.close()
    return [r[0].partition("@")[0] for r in rows]


async def one_batch(writer: DbThread, calls: list) -> list[object]:
    """Run ``calls`` (coroutine factories) so that the writer takes them as one batch.

    A first operation blocks the writer thread until every call is queued behind it.
    """
    gate = threading.Event()
    blocker = asyncio.ensure_future(writer.call(lambda c: gate.wait(10)))
    await asyncio.sleep(0.05)  # the writer is inside the blocker now
    tasks = [asyncio.ensure_future(c()) for c in calls]
    await asyncio.sleep(0.05)
    gate.set()
    await blocker
    return await asyncio.gather(*tasks, return_exceptions=True)


async def limit_pages(store: QueueStore, more: int) -> None:
    """A disk that is full ``more`` pages (4 KiB each) from now, for the writer."""
    pages = await store.writer.call(lambda c: c.execute("PRAGMA page_count").fetchone()[0])
    await store.writer.call(
        lambda c: c.execute(f"PRAGMA max_page_count = {pages + more}").fetchone()
    )


# 2 MB goes in through blob I/O, 900 KB as a bound parameter: both meet the full disk.
@pytest.mark.parametrize("big_size", [2 * 1024 * 1024, 900 * 1024])
async def test_disk_full_mid_batch_fails_only_the_message_that_did_not_fit(
    tmp_path: Path, big_size: int
) -> None:
    data_dir = tmp_path / "var"
    store = await QueueStore.open(data_dir, busy_timeout=1.0)
    try:
        await limit_pages(store, 60)  # room for small messages, not for the big one
        saw_transaction: list[bool] = []

        async def probe() -> bool:
            return await store.writer.call(lambda c: saw_transaction.append(c.in_transaction))

        results = await one_batch(
            store.writer,
            [
                lambda: store.enqueue(message(100, "first")),
                lambda: store.enqueue(message(big_size, "big")),
                lambda: store.enqueue(message(100, "third")),
                probe,
            ],
        )
    finally:
        await store.close()
    first, big, third, _ = results
    assert isinstance(big, StoreError) and "full" in str(big)
    assert isinstance(first, str) and isinstance(third, str), results
    # Every caller's answer matches the database: 250 for these two, 451 for the big one.
    assert stored_subjects(data_dir) == ["first", "third"]
    # No operation ever ran outside a confirmed transaction (it would have autocommitted).
    assert saw_transaction and all(saw_transaction)


async def test_commit_that_fails_reports_every_operation_failed_and_writes_nothing(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "var"
    store = await QueueStore.open(data_dir, busy_timeout=1.0)
    try:
        await limit_pages(store, 2)
        results = await one_batch(
            store.writer,
            [lambda i=i: store.enqueue(message(50_000, f"m{i}")) for i in range(3)],
        )
    finally:
        await store.close()
    assert all(isinstance(r, StoreError) for r in results), results
    assert stored_subjects(data_dir) == []


async def test_failing_operation_is_rolled_back_alone_and_the_others_commit(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "var"
    store = await QueueStore.open(data_dir, busy_timeout=1.0)

    def bad(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO queue_events (ts, message_id, event) VALUES (0, 0, 'x')")
        raise ValueError("broken operation")

    try:
        results = await one_batch(
            store.writer,
            [
                lambda: store.enqueue(message(10, "a")),
                lambda: store.writer.call(bad),
                lambda: store.enqueue(message(10, "b")),
            ],
        )
    finally:
        await store.close()
    assert isinstance(results[1], ValueError)
    assert stored_subjects(data_dir) == ["a", "b"]
    conn = connect(data_dir)
    assert conn.execute("SELECT count(*) FROM queue_events WHERE event = 'x'").fetchone()[0] == 0
    conn.close()


@pytest.fixture
def lock_holder(tmp_path: Path):
    """``hold(seconds)``: a second connection takes the write lock (BEGIN IMMEDIATE)
    in a thread and keeps it that long, like another process's long import."""
    threads: list[threading.Thread] = []

    def hold(data_dir: Path, seconds: float) -> threading.Event:
        taken = threading.Event()

        def run() -> None:
            conn = sqlite3.connect(data_dir / "smtpguard.db", isolation_level=None)
            conn.execute("BEGIN IMMEDIATE")
            taken.set()
            threading.Event().wait(seconds)
            conn.execute("ROLLBACK")
            conn.close()

        t = threading.Thread(target=run, daemon=True)
        t.start()
        threads.append(t)
        assert taken.wait(5)
        return taken

    yield hold
    for t in threads:
        t.join(30)


async def claimed(store: QueueStore, tag: str) -> tuple[int, int]:
    """Enqueue and claim one message: (message id, recipient id)."""
    message_id = await store.enqueue_id(message(10, tag))
    [c] = await store.claim([message_id])
    return message_id, c.recipients[0].id


def delivered(message_id: int, recipient_id: int) -> RecipientResult:
    return RecipientResult(
        recipient_id, message_id, f"r{recipient_id}@example.com", "delivered", "delivered",
        code="250", status="2.0.0",
    )  # fmt: skip


def state_of(data_dir: Path, recipient_id: int) -> str:
    conn = connect(data_dir)
    try:
        return conn.execute(
            "SELECT state FROM queue_recipients WHERE id = ?", (recipient_id,)
        ).fetchone()[0]
    finally:
        conn.close()


async def test_attempt_results_wait_out_a_lock_held_longer_than_the_busy_timeout(
    tmp_path: Path, lock_holder
) -> None:
    data_dir = tmp_path / "var"
    store = await QueueStore.open(data_dir, busy_timeout=0.1)
    try:
        message_id, rid = await claimed(store, "a")
        lock_holder(data_dir, 1.5)  # fifteen busy timeouts
        start = time.monotonic()
        await store.record([delivered(message_id, rid)])
        assert time.monotonic() - start >= 1.0
    finally:
        await store.close()
    assert state_of(data_dir, rid) == "delivered"


async def test_a_permanent_error_is_not_retried(tmp_path: Path) -> None:
    store = await QueueStore.open(tmp_path / "var", busy_timeout=0.1)
    try:
        message_id, rid = await claimed(store, "a")
        bad = delivered(message_id, rid)
        bad = dataclasses.replace(bad, state="no-such-state")  # violates the CHECK
        with pytest.raises(StoreError) as e:
            await asyncio.wait_for(store.record([bad]), 5)
        assert not e.value.transient
    finally:
        await store.close()


async def test_stale_claim_no_attempt_holds_goes_back_to_the_queue(tmp_path: Path) -> None:
    data_dir = tmp_path / "var"
    store = await QueueStore.open(data_dir, busy_timeout=1.0)
    try:
        m1, stale = await claimed(store, "stale")
        _, live = await claimed(store, "live")
        _, fresh = await claimed(store, "fresh")
        later = time.time()
        back = await store.reclaim(later, live=[live])
        # Claimed before the bound and held by no attempt: queued again (fresh
        # claims are after the bound however they are held).
        assert set(back) == {stale, fresh}
        assert await store.reclaim(time.time() - 3600, live=[]) == []
    finally:
        await store.close()
    assert state_of(data_dir, stale) == "queued"
    assert state_of(data_dir, live) == "active"
    conn = connect(data_dir)
    events = conn.execute(
        "SELECT event FROM queue_events WHERE message_id = ? ORDER BY id", (m1,)
    ).fetchall()
    conn.close()
    assert events[-1][0] == "reclaimed"

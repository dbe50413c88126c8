"""The durable queue: commit, claim by due time, results, group commit, operator actions."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from dataclasses import replace
from pathlib import Path

import pytest

from smtpguard.errors import StoreError, UserError
from smtpguard.store.messages import InboundMessage, Recipient
from smtpguard.store.queue import (
    CLAIM_SQL,
    QueueAdmin,
    QueueStore,
    RecipientResult,
    format_qid,
    parse_qid,
)


def message(
    *rcpts: str, data: bytes = b"Subject: t\r\n\r\nbody\r\n", **kw: object
) -> InboundMessage:
    return InboundMessage(
        mail_from=str(kw.pop("mail_from", "sender@example.org")),
        recipients=tuple(Recipient(r) for r in rcpts),
        data=data,
        received_at=float(kw.pop("received_at", time.time())),  # type: ignore[arg-type]
        **kw,  # type: ignore[arg-type]
    )


@pytest.fixture
async def store(data_dir: Path):
    s = await QueueStore.open(data_dir)
    yield s
    await s.close()


async def test_enqueued_message_is_on_disk_when_enqueue_returns(store, data_dir):
    qid = await store.enqueue(message("a@example.com", "b@example.net"))
    conn = sqlite3.connect(data_dir / "smtpguard.db")
    row = conn.execute("SELECT mail_from, size FROM queue_messages").fetchone()
    states = conn.execute("SELECT address, state FROM queue_recipients ORDER BY id").fetchall()
    assert row[0] == "sender@example.org"
    assert states == [("a@example.com", "queued"), ("b@example.net", "queued")]
    assert parse_qid(qid) == 1


async def test_concurrent_enqueues_share_commits(store):
    ids = await asyncio.gather(*(store.enqueue(message(f"u{i}@example.com")) for i in range(200)))
    assert len(set(ids)) == 200
    transactions, operations = store.commit_batches
    assert operations == 200
    assert transactions < 200


async def test_due_work_comes_from_the_index_in_due_order(store):
    await store.enqueue(message("a@example.com"))
    await store.enqueue(message("b@example.com"))
    due = await store.due(time.time() + 1, 10)
    assert [m for _, m in due] == [1, 2]
    plan = (
        sqlite3.connect(store.path)
        .execute(
            "EXPLAIN QUERY PLAN SELECT next_attempt, message_id FROM queue_recipients"
            " WHERE state = 'queued' AND next_attempt <= 1 ORDER BY next_attempt LIMIT 5"
        )
        .fetchall()
    )
    assert "queue_recipients_due" in " ".join(str(r) for r in plan)


async def test_message_claimed_as_it_is_queued_is_what_a_claim_would_have_returned(store):
    msg = message("a@example.com", "b@example.net", mail_from="s@example.org", envid="E1")
    at_enqueue = await store.enqueue_claimed(msg)
    await store.enqueue(msg)
    claimed_later = (await store.claim([2], at_enqueue.recipients[0].next_attempt + 1))[0]
    assert at_enqueue.message == replace(claimed_later.message, id=1)
    ids = {"id": 0, "message_id": 0, "next_attempt": 0.0}
    assert [replace(r, **ids) for r in at_enqueue.recipients] == [
        replace(r, **ids) for r in claimed_later.recipients
    ]
    assert [r.state for r in at_enqueue.recipients] == ["active", "active"]


async def test_message_claimed_as_it_is_queued_goes_back_to_the_queue_after_a_crash(
    store, data_dir
):
    await store.enqueue_claimed(message("a@example.com"))
    assert await store.claim([1]) == []  # claimed already: nobody else takes it
    assert await store.recover() == 1
    assert [c.message.id for c in await store.claim([1])] == [1]


async def test_claim_marks_recipients_active_once(store):
    await store.enqueue(message("a@example.com", "b@example.net"))
    first = await store.claim([1])
    again = await store.claim([1])
    assert [r.address for r in first[0].recipients] == ["a@example.com", "b@example.net"]
    assert {r.state for r in first[0].recipients} == {"active"}
    assert again == []


async def test_claim_skips_recipients_not_yet_due(store):
    await store.enqueue(message("a@example.com"))
    assert await store.claim([1], now=time.time() - 60) == []


async def test_body_is_read_back_and_dropped_when_message_finishes(store):
    body = b"Subject: x\r\n\r\n" + b"y" * 5000 + b"\r\n"
    await store.enqueue(message("a@example.com", data=body))
    (c,) = await store.claim([1])
    assert await store.body(1) == body
    r = c.recipients[0]
    await store.record([RecipientResult(r.id, 1, r.address, "delivered", "delivered", code="250")])
    with pytest.raises(StoreError):
        await store.body(1)
    msg = await store.message(1)
    assert msg is not None and msg.done_at is not None


async def test_partial_success_keeps_per_recipient_state(store):
    await store.enqueue(message("a@one.example", "b@two.example"))
    (c,) = await store.claim([1])
    a, b = c.recipients
    later = time.time() + 300
    await store.record(
        [
            RecipientResult(a.id, 1, a.address, "delivered", "delivered", code="250"),
            RecipientResult(b.id, 1, b.address, "queued", "deferred", next_attempt=later,
                            code="452", status="4.2.2", reason="mailboxfull"),
        ]
    )  # fmt: skip
    admin = QueueAdmin.open(store.path.parent)
    _, rcpts, events = admin.show(format_qid(1))
    assert [(r.address, r.state, r.attempts) for r in rcpts] == [
        ("a@one.example", "delivered", 1),
        ("b@two.example", "queued", 1),
    ]
    assert rcpts[1].next_attempt == pytest.approx(later)
    assert [e.event for e in events] == ["received", "delivered", "deferred"]
    assert await store.body(1)  # still needed for b


async def test_recover_puts_active_recipients_back(store):
    await store.enqueue(message("a@example.com"))
    await store.claim([1])
    assert await store.recover() == 1
    assert len(await store.claim([1])) == 1


async def test_dsn_is_queued_in_the_same_transaction(store):
    await store.enqueue(message("a@example.com"))
    (c,) = await store.claim([1])
    r = c.recipients[0]
    dsn = message("sender@example.org", mail_from="", data=b"Subject: dsn\r\n\r\nx\r\n")
    created = await store.record(
        [RecipientResult(r.id, 1, r.address, "bounced", "bounced", code="550")], [(1, dsn)]
    )
    assert created == [2]
    m = await store.message(2)
    assert m is not None and m.kind == "dsn" and m.parent_id == 1 and m.mail_from == ""


async def test_failed_operation_writes_nothing_and_others_commit(store):
    bad = InboundMessage(mail_from="x@example.org", recipients=(), data=b"x")
    results = await asyncio.gather(
        store.enqueue(message("a@example.com")), store.enqueue(bad), return_exceptions=True
    )
    assert isinstance(results[1], ValueError)
    conn = sqlite3.connect(store.path)
    assert conn.execute("SELECT count(*) FROM queue_messages").fetchone()[0] == 1
    assert conn.execute("SELECT count(*) FROM queue_bodies").fetchone()[0] == 1


async def test_operation_failing_half_way_is_undone_alone_in_a_shared_batch(store):
    # The bad recipient fails after the message and body rows were written.
    bad = InboundMessage(
        mail_from="x@example.org", recipients=(Recipient("c@example.com", notify=(1,)),), data=b"x"
    )  # type: ignore[arg-type]
    good = [store.enqueue(message(f"u{i}@example.com")) for i in range(20)]
    results = await asyncio.gather(
        *good[:10], store.enqueue(bad), *good[10:], return_exceptions=True
    )
    assert isinstance(results[10], TypeError)
    assert sum(isinstance(r, str) for r in results) == 20
    conn = sqlite3.connect(store.path)
    assert conn.execute("SELECT count(*) FROM queue_messages").fetchone()[0] == 20
    assert conn.execute("SELECT count(*) FROM queue_bodies").fetchone()[0] == 20
    assert conn.execute("SELECT count(*) FROM queue_events").fetchone()[0] == 20


async def test_claim_of_several_messages_keeps_their_order(store):
    for i in range(5):
        await store.enqueue(message(f"u{i}@example.com", f"v{i}@example.net"))
    claims = await store.claim([4, 2, 5, 1])
    assert [c.message.id for c in claims] == [4, 2, 5, 1]
    assert [len(c.recipients) for c in claims] == [2, 2, 2, 2]
    assert all(c.recipients[0].message_id == c.message.id for c in claims)


async def test_storage_failure_raises_store_error_and_writes_nothing(data_dir):
    s = await QueueStore.open(data_dir, busy_timeout=0.2)
    blocker = sqlite3.connect(data_dir / "smtpguard.db", isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    try:
        with pytest.raises(StoreError, match="locked"):
            await s.enqueue(message("a@example.com"))
    finally:
        blocker.execute("ROLLBACK")
    assert blocker.execute("SELECT count(*) FROM queue_messages").fetchone()[0] == 0
    await s.close()


def test_operator_hold_and_release(data_dir):
    admin = QueueAdmin.open(data_dir)
    qid = asyncio.run(_enqueue_one(data_dir))
    assert admin.hold(qid) == 1
    _, rcpts, _ = admin.show(qid)
    assert rcpts[0].state == "held"
    assert admin.release(qid) == 1
    _, rcpts, events = admin.show(qid)
    assert rcpts[0].state == "queued"
    assert [e.event for e in events] == ["received", "held", "released"]


def test_operator_delete_finishes_the_message(data_dir):
    admin = QueueAdmin.open(data_dir)
    qid = asyncio.run(_enqueue_one(data_dir))
    assert admin.delete(qid) == 1
    msg, rcpts, _ = admin.show(qid)
    assert rcpts[0].state == "deleted" and msg.done_at is not None
    assert admin.body(qid) is None
    assert admin.list() == []


def test_unknown_queue_id_is_a_user_error(data_dir):
    admin = QueueAdmin.open(data_dir)
    with pytest.raises(UserError, match="no such queue message"):
        admin.show("00000000FF")
    with pytest.raises(UserError, match="not a queue id"):
        admin.show("xyz")


async def _enqueue_one(data_dir: Path) -> str:
    s = await QueueStore.open(data_dir)
    try:
        return await s.enqueue(message("a@example.com"))
    finally:
        await s.close()


async def test_claim_uses_the_message_index_not_a_queue_scan(store):
    conn = sqlite3.connect(store.path)
    plan = conn.execute("EXPLAIN QUERY PLAN " + CLAIM_SQL, (1, 9e9)).fetchall()
    assert "USING INDEX queue_recipients_message (message_id=?)" in str(plan)


async def test_purge_forgets_finished_messages_but_keeps_pending_ones(store):
    await store.enqueue(message("done@example.com"))
    await store.enqueue(message("pending@example.com"))
    (c,) = await store.claim([1])
    r = c.recipients[0]
    await store.record([RecipientResult(r.id, 1, r.address, "delivered", "delivered")])
    assert await store.purge(time.time() + 1) == 1
    assert await store.message(1) is None
    assert await store.message(2) is not None
    conn = sqlite3.connect(store.path)
    assert conn.execute("SELECT count(*) FROM queue_events WHERE message_id = 1").fetchone() == (0,)


async def test_enqueue_commits_with_fsync_and_bookkeeping_without(store):
    def sync_mode(conn: sqlite3.Connection) -> int:
        return conn.execute("PRAGMA synchronous").fetchone()[0]

    assert await store._writer.call(sync_mode, durable=False) == 1  # NORMAL
    assert await store._writer.call(sync_mode) == 2  # FULL, as every enqueue runs


async def test_first_read_of_a_just_committed_body_needs_no_database_read(store):
    data = b"Subject: fresh\r\n\r\nbody\r\n"
    await store.enqueue(message("a@example.com", data=data))
    reads = store._reader.operations
    assert await store.body(1) == data
    assert store._reader.operations == reads
    assert await store.body(1) == data  # later reads: from SQLite
    assert store._reader.operations == reads + 1


async def test_bodies_kept_for_their_first_attempt_are_bounded(store, monkeypatch):
    from smtpguard.store import queue

    monkeypatch.setattr(queue, "FRESH_BODY_BYTES", 100)
    bodies = [b"%02d" % i * 20 for i in range(5)]  # 40 bytes each
    for data in bodies:
        await store.enqueue(message("a@example.com", data=data))
    assert store._fresh_bytes <= 100
    assert [await store.body(i + 1) for i in range(5)] == bodies
    assert store._fresh_bytes == 0


async def test_bookkeeping_waits_to_share_the_next_enqueue_commit(store, monkeypatch):
    from smtpguard.store import writer

    monkeypatch.setattr(writer, "BOOKKEEPING_WAIT", 5.0)
    t0 = time.monotonic()
    bookkeeping = asyncio.ensure_future(store._writer.call(lambda c: "done", durable=False))
    await asyncio.sleep(0.05)
    await store.enqueue(message("a@example.com"))  # durable: ends the wait at once
    assert await bookkeeping == "done"
    assert time.monotonic() - t0 < 2.5
    assert store.commit_batches == (1, 2)


async def test_bookkeeping_and_enqueues_sharing_a_batch_run_in_the_order_submitted(store):
    ran: list[str] = []

    def op(name: str):  # type: ignore[no-untyped-def]
        return lambda conn: ran.append(name)

    w = store._writer
    calls = [
        w.call(op("claim 1"), durable=False),
        w.call(op("enqueue 2")),
        w.call(op("result 3"), durable=False),
        w.call(op("enqueue 4")),
    ]
    await asyncio.gather(*calls)
    assert ran == ["claim 1", "enqueue 2", "result 3", "enqueue 4"]


async def test_bookkeeping_left_when_the_writer_closes_is_still_written(data_dir):
    s = await QueueStore.open(data_dir)
    await s.enqueue(message("a@example.com"))
    pending = asyncio.ensure_future(s.claim([1]))
    await asyncio.sleep(0)  # submitted, not yet nudged
    await s.close()
    assert [c.message.id for c in await pending] == [1]


async def test_scheduler_slots_taken_at_enqueue_count_against_max_inflight(store):
    from smtpguard.relay.scheduler import Scheduler

    scheduler = Scheduler(store, max_inflight=2)
    assert scheduler.take_slot() and scheduler.take_slot()
    assert not scheduler.take_slot()  # full: the message is queued, claimed in turn
    scheduler.release()
    assert scheduler.take_slot()

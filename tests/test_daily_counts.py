"""The per-day counts behind `smtpguard report`: bounded per day, pruned, written in batches."""

from __future__ import annotations

from dataclasses import replace

from smtpguard.config import ReportConfig
from smtpguard.relay.daily import DailyCounts
from smtpguard.relay.observe import AttemptRecord, Refused
from smtpguard.store import daily
from smtpguard.store.db import connect
from smtpguard.store.queue import QueueStore

DAY = 1_796_983_200.0  # 2026-12-11T10:00:00Z


def record(domain: str, status: str = "sent", reason: str = "delivered", **kw) -> AttemptRecord:
    values = dict(
        qid="0000000001", kind="mail", recipient=f"r@{domain}", domain=domain, status=status,
        relay="", code="", dsn="", reply="", stage="rcpt", reason=reason, suppression="",
        suppression_why="", arrived_at=DAY, received_at=DAY, timing=None, finished=DAY,
    )  # fmt: skip
    values.update(kw)
    return AttemptRecord(**values)  # type: ignore[arg-type]


def test_a_day_keeps_at_most_max_domains_rows_then_other(tmp_path):
    conn = connect(tmp_path)
    rows = {("2026-12-11", d): [1, 0, 0, 0, 0] for d in ("a.example", "b.example", "c.example")}
    daily.add(conn, rows, {}, max_domains=2)
    daily.add(conn, {("2026-12-11", "a.example"): [0, 0, 1, 0, 0],
                     ("2026-12-11", "d.example"): [1, 0, 0, 0, 0]}, {}, max_domains=2)  # fmt: skip
    got = {(r.domain, r.sent, r.bounced) for r in daily.deliveries(conn, "2026-12-11")}
    assert got == {("a.example", 1, 1), ("b.example", 1, 0), (daily.OTHER, 2, 0)}


def test_days_before_the_cutoff_are_pruned(tmp_path):
    conn = connect(tmp_path)
    rows = {(day, "a.example"): [1, 0, 0, 0, 0] for day in ("2026-09-01", "2026-12-10")}
    daily.add(conn, rows, {("2026-09-01", "bounced", "userunknown"): 3}, max_domains=10)
    assert daily.prune(conn, "2026-12-01") == 2
    assert [r.day for r in daily.deliveries(conn, "2000-01-01")] == ["2026-12-10"]
    assert daily.reasons(conn, "2000-01-01") == []


async def test_counts_are_batched_through_the_writer(tmp_path):
    store = await QueueStore.open(tmp_path)
    try:
        counts = DailyCounts(store.writer, ReportConfig(max_domains_per_day=100), clock=lambda: DAY)
        counts.attempts([
            record("a.example"), record("a.example"),
            record("a.example", "bounced", "userunknown"),
            record("b.example", "deferred", "mailboxfull"),
            record("b.example", "sent", kind="dsn"),  # a DSN we generated: not counted
            record("c.example", finished=DAY + 86_400),
        ])  # fmt: skip
        counts.refused(Refused("s@x", "gone@A.example", "127.0.0.1", "h", "550 5.1.1 ...",
                               "5.1.1", "userunknown", "rcpt-reply"))  # fmt: skip
        await counts.flush()
        await counts.flush()  # nothing new: nothing written twice
    finally:
        await store.close()
    conn = connect(tmp_path)
    rows = {(r.day, r.domain): r for r in daily.deliveries(conn, "2026-12-11")}
    a = rows[("2026-12-11", "a.example")]
    assert (a.sent, a.bounced, a.suppressed) == (2, 1, 1)
    assert rows[("2026-12-11", "b.example")] == daily.DayCounts("2026-12-11", "b.example",
                                                                deferred=1)  # fmt: skip
    assert rows[("2026-12-12", "c.example")].sent == 1
    assert sorted(r[1:] for r in daily.reasons(conn, "2026-12-11")) == [
        ("bounced", "userunknown", 1), ("deferred", "mailboxfull", 1)]  # fmt: skip


def test_a_full_memory_counts_new_domains_as_other(tmp_path, monkeypatch):
    from smtpguard.relay import daily as relay_daily

    monkeypatch.setattr(relay_daily, "MAX_PENDING_KEYS", 2)
    counts = DailyCounts(None, ReportConfig())  # type: ignore[arg-type]
    counts.attempts([replace(record(d), domain=d) for d in ("a.x", "b.x", "c.x", "d.x")])
    assert sorted(counts._counts) == [("2026-12-11", daily.OTHER), ("2026-12-11", "a.x"),
                                      ("2026-12-11", "b.x")]  # fmt: skip

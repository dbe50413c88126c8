"""The suppression store's API over a real SQLite file: what is suppressed, why, since when."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from smtpguard.errors import AddressError, UserError
from smtpguard.policy.merge import reason_rank
from smtpguard.store.suppression import (
    AsyncSuppressionStore,
    ListFilter,
    SuppressionStore,
    iso,
    make_observation,
)


@pytest.fixture
def store(data_dir: Path) -> Iterator[SuppressionStore]:
    s = SuppressionStore.open(data_dir)
    yield s
    s.close()


def bounce(store: SuppressionStore, address: str, reason: str = "userunknown", **kw: object):
    kw.setdefault("source", "smtp-reply")
    kw.setdefault("actor", "relay")
    return store.record(address, reason, **kw)  # type: ignore[arg-type]


def actions(store: SuppressionStore, address: str) -> list[str]:
    return [h.action for h in store.history(address)]


def test_recorded_address_is_found_with_reason_and_evidence(store: SuppressionStore) -> None:
    bounce(store, "bob@example.com", status="5.1.1", reply_code="550", diagnostic="no such user")
    entry = store.lookup("bob@example.com")
    assert entry is not None
    assert (entry.address, entry.kind, entry.reason) == (
        "bob@example.com",
        "address",
        "userunknown",
    )
    assert (entry.status, entry.reply_code, entry.diagnostic) == ("5.1.1", "550", "no such user")
    assert (entry.source, entry.count, entry.expires) == ("smtp-reply", 1, None)
    assert entry.first_seen == entry.last_seen == pytest.approx(time.time(), abs=5)


def test_lookup_normalises_the_address(store: SuppressionStore) -> None:
    bounce(store, "Bob@Bücher.de")
    assert store.lookup("<BOB@BÜCHER.DE>") is not None
    assert store.lookup("bob@xn--bcher-kva.de") is not None


def test_unknown_address_is_not_suppressed(store: SuppressionStore) -> None:
    bounce(store, "bob@example.com")
    assert store.lookup("alice@example.com") is None


def test_lookup_of_garbage_raises_address_error(store: SuppressionStore) -> None:
    with pytest.raises(AddressError):
        store.lookup("not an address@")


def test_domain_entry_suppresses_every_address_at_the_domain(store: SuppressionStore) -> None:
    bounce(store, "gone.example", "hostunknown", kind="domain")
    entry = store.lookup("anyone@GONE.example")
    assert entry is not None
    assert (entry.kind, entry.address, entry.reason) == ("domain", "gone.example", "hostunknown")


def test_domain_entry_does_not_cover_subdomains(store: SuppressionStore) -> None:
    bounce(store, "gone.example", "hostunknown", kind="domain")
    assert store.lookup("a@mx.gone.example") is None


def test_address_entry_is_reported_before_its_domain_entry(store: SuppressionStore) -> None:
    bounce(store, "gone.example", "hostunknown", kind="domain")
    bounce(store, "bob@gone.example", "userunknown")
    entry = store.lookup("bob@gone.example")
    assert entry is not None and entry.kind == "address"


def test_seen_again_bumps_count_and_last_seen(store: SuppressionStore) -> None:
    first = bounce(store, "bob@example.com")
    time.sleep(0.01)
    again = bounce(store, "BOB@example.com")
    assert again.count == 2
    assert again.first_seen == first.first_seen
    assert again.last_seen > first.last_seen
    assert actions(store, "bob@example.com") == ["added", "updated"]


def test_stronger_reason_escalates_and_replaces_evidence(store: SuppressionStore) -> None:
    bounce(store, "bob@example.com", "mailboxfull", status="4.2.2", reply_code="452")
    entry = bounce(
        store, "bob@example.com", "userunknown", status="5.1.1", reply_code="550", source="dsn"
    )
    assert (entry.reason, entry.status, entry.reply_code, entry.source) == (
        "userunknown",
        "5.1.1",
        "550",
        "dsn",
    )
    last = store.history("bob@example.com")[-1]
    assert (last.action, last.old_reason, last.new_reason) == (
        "escalated",
        "mailboxfull",
        "userunknown",
    )


def test_weaker_reason_keeps_the_entry_but_history_notes_it(store: SuppressionStore) -> None:
    bounce(store, "bob@example.com", "userunknown", status="5.1.1")
    entry = bounce(store, "bob@example.com", "mailboxfull", status="4.2.2")
    assert (entry.reason, entry.status, entry.count) == ("userunknown", "5.1.1", 2)
    last = store.history("bob@example.com")[-1]
    assert (last.action, last.old_reason, last.new_reason, last.status) == (
        "updated",
        "userunknown",
        "mailboxfull",
        "4.2.2",
    )


def test_complaint_and_manual_outrank_bounces() -> None:
    assert reason_rank("complaint") > reason_rank("userunknown") > reason_rank("mailboxfull")
    assert reason_rank("manual") == reason_rank("complaint")


def test_expired_entry_no_longer_suppresses(store: SuppressionStore) -> None:
    bounce(store, "bob@example.com", expires=time.time() + 60)
    assert store.lookup("bob@example.com") is not None
    assert store.lookup("bob@example.com", now=time.time() + 120) is None


def test_sighting_after_expiry_adds_the_entry_afresh(store: SuppressionStore) -> None:
    bounce(store, "bob@example.com", "mailboxfull", expires=time.time() - 1)
    entry = bounce(store, "bob@example.com", "userunknown")
    assert (entry.count, entry.expires, entry.reason) == (1, None, "userunknown")
    assert actions(store, "bob@example.com") == ["added", "expired", "added"]


def test_permanent_sighting_makes_a_temporary_entry_permanent(store: SuppressionStore) -> None:
    bounce(store, "bob@example.com", expires=time.time() + 60)
    assert bounce(store, "bob@example.com").expires is None


def test_later_expiry_extends_a_temporary_entry(store: SuppressionStore) -> None:
    soon, later = time.time() + 60, time.time() + 600
    bounce(store, "bob@example.com", expires=soon)
    assert bounce(store, "bob@example.com", expires=later).expires == pytest.approx(later)
    assert bounce(store, "bob@example.com", expires=soon).expires == pytest.approx(later)


def test_remove_lifts_suppression_and_keeps_history(store: SuppressionStore) -> None:
    bounce(store, "bob@example.com")
    assert store.remove("Bob@Example.com", actor="cli:root", note="mailbox restored")
    assert store.lookup("bob@example.com") is None
    last = store.history("bob@example.com")[-1]
    assert (last.action, last.actor, last.note, last.old_reason) == (
        "removed",
        "cli:root",
        "mailbox restored",
        "userunknown",
    )


def test_remove_of_unlisted_address_returns_false(store: SuppressionStore) -> None:
    assert store.remove("nobody@example.com", actor="cli:root") is False
    assert store.history("nobody@example.com") == []


def test_prune_deletes_expired_entries_with_history(store: SuppressionStore) -> None:
    bounce(store, "old@example.com", expires=time.time() - 10)
    bounce(store, "new@example.com", expires=time.time() + 3600)
    bounce(store, "forever@example.com")
    assert store.prune(actor="cli:root") == 1
    assert store.get("old@example.com") is None
    assert store.get("new@example.com") is not None
    assert actions(store, "old@example.com") == ["added", "expired"]
    assert store.prune(actor="cli:root") == 0


def test_history_ids_keep_the_global_order_of_changes(store: SuppressionStore) -> None:
    bounce(store, "a@example.com")
    bounce(store, "b@example.com")
    bounce(store, "a@example.com", "complaint")
    assert actions(store, "a@example.com") == ["added", "escalated"]
    assert store.stats()["history_records"] == 3


@pytest.mark.parametrize(
    ("kwargs", "problem"),
    [
        ({"reason": "delivered"}, "unknown reason 'delivered'"),
        ({"reason": "nonsense"}, "unknown reason"),
        ({"source": "carrier-pigeon"}, "unknown source"),
        ({"status": "5.1"}, "RFC 3463"),
        ({"reply_code": "55"}, "three digits"),
        ({"kind": "planet"}, "kind must be"),
    ],
)
def test_invalid_fields_are_refused(store: SuppressionStore, kwargs: dict, problem: str) -> None:
    args = {"reason": "userunknown", "source": "smtp-reply", "actor": "relay", **kwargs}
    reason = args.pop("reason")
    with pytest.raises(UserError, match=problem):
        store.record("bob@example.com", reason, **args)
    assert store.lookup("bob@example.com") is None


def test_multiline_diagnostic_is_stored_on_one_line(store: SuppressionStore) -> None:
    entry = bounce(store, "bob@example.com", diagnostic="550 5.1.1 user\r\n   unknown")
    assert entry.diagnostic == "550 5.1.1 user unknown"


def test_entries_survive_reopening_the_store(data_dir: Path) -> None:
    with SuppressionStore.open(data_dir) as s:
        bounce(s, "bob@example.com")
    with SuppressionStore.open(data_dir) as s:
        assert s.lookup("bob@example.com") is not None
        assert actions(s, "bob@example.com") == ["added"]


def test_bulk_writes_all_rows_in_one_transaction(store: SuppressionStore) -> None:
    with store.bulk(actor="import:list.csv", batch_size=3) as writer:
        for i in range(10):
            writer.add(make_observation(f"u{i}@example.com", "userunknown", source="import"))
    assert writer.counts == {"added": 10, "escalated": 0, "updated": 0}
    assert len(store.list_page(limit=None)) == 10
    assert store.history("u7@example.com")[0].actor == "import:list.csv"


def test_bulk_writes_nothing_when_the_block_fails(store: SuppressionStore) -> None:
    bounce(store, "keep@example.com")
    with pytest.raises(RuntimeError), store.bulk(actor="import:x", batch_size=2) as writer:
        for i in range(5):
            writer.add(make_observation(f"u{i}@example.com", "userunknown", source="import"))
        raise RuntimeError("bad line found")
    assert [e.address for e in store.list_page()] == ["keep@example.com"]
    assert store.history("u0@example.com") == []
    assert store.stats()["history_records"] == 1


def test_bulk_merges_an_address_repeated_within_a_batch(store: SuppressionStore) -> None:
    with store.bulk(actor="import:x") as writer:
        writer.add(make_observation("a@example.com", "mailboxfull", source="import"))
        writer.add(make_observation("A@example.com", "userunknown", source="import"))
    entry = store.get("a@example.com")
    assert entry is not None and (entry.reason, entry.count) == ("userunknown", 2)
    assert writer.counts == {"added": 1, "escalated": 1, "updated": 0}


def test_list_pages_with_a_cursor_in_domain_then_address_order(store: SuppressionStore) -> None:
    for a in ["c@b.example", "a@b.example", "z@a.example", "b.example"]:
        bounce(store, a, kind="domain" if "@" not in a else "address")
    first = store.list_page(limit=2)
    assert [e.address for e in first] == ["z@a.example", "b.example"]
    rest = store.list_page(after=first[-1].address, limit=2)
    assert [e.address for e in rest] == ["a@b.example", "c@b.example"]
    assert store.list_page(after=rest[-1].address, limit=2) == []


def test_list_filters_combine(store: SuppressionStore) -> None:
    bounce(store, "a@x.example", "userunknown", source="dsn")
    bounce(store, "b@x.example", "complaint", source="arf")
    bounce(store, "c@y.example", "userunknown", source="dsn")
    found = store.list_page(ListFilter(reason="userunknown", domain="x.example"))
    assert [e.address for e in found] == ["a@x.example"]
    assert [e.address for e in store.list_page(ListFilter(source="arf"))] == ["b@x.example"]
    assert store.list_page(ListFilter(since=time.time() + 60)) == []


def test_list_hides_expired_entries_unless_asked(store: SuppressionStore) -> None:
    bounce(store, "old@example.com", expires=time.time() - 1)
    assert store.list_page() == []
    assert len(store.list_page(ListFilter(include_expired=True))) == 1


def test_stats_count_entries_by_kind_reason_and_source(store: SuppressionStore) -> None:
    bounce(store, "a@example.com", "userunknown")
    bounce(store, "b@example.com", "complaint", source="arf")
    bounce(store, "gone.example", "hostunknown", kind="domain", source="manual")
    bounce(store, "old@example.com", expires=time.time() - 1)
    s = store.stats()
    assert (s["active"], s["addresses"], s["domains"], s["expired_unpruned"]) == (3, 2, 1, 1)
    assert s["by_reason"] == {"complaint": 1, "hostunknown": 1, "userunknown": 1}
    assert s["by_source"] == {"arf": 1, "manual": 1, "smtp-reply": 1}


def test_times_display_as_iso_8601_utc() -> None:
    assert iso(0) == "1970-01-01T00:00:00Z"
    assert iso(None) == ""


async def test_async_store_records_and_finds_like_the_sync_store(data_dir: Path) -> None:
    s = await AsyncSuppressionStore.open(data_dir)
    try:
        await s.record("Bob@Example.com", "mailboxfull", source="smtp-reply", actor="relay")
        entry = await s.record(
            "bob@example.com",
            "userunknown",
            source="smtp-reply",
            actor="relay",
            status="5.1.1",
            reply_code="550",
        )
        assert (entry.reason, entry.count) == ("userunknown", 2)
        found = await s.lookup("BOB@example.com")
        assert found == entry
        assert [h.action for h in await s.history("bob@example.com")] == ["added", "escalated"]
        assert await s.remove("bob@example.com", actor="relay") is True
        assert await s.lookup("bob@example.com") is None
    finally:
        await s.close()
    with SuppressionStore.open(data_dir) as sync:
        assert actions(sync, "bob@example.com") == ["added", "escalated", "removed"]


async def test_async_concurrent_records_all_land(data_dir: Path) -> None:
    s = await AsyncSuppressionStore.open(data_dir)
    try:
        await asyncio.gather(
            *(
                s.record(
                    f"u{i % 10}@example.com", "userunknown", source="smtp-reply", actor="relay"
                )
                for i in range(50)
            )
        )
        entries = [await s.lookup(f"u{i}@example.com") for i in range(10)]
    finally:
        await s.close()
    assert [e.count for e in entries if e] == [5] * 10


def test_bulk_fast_path_writes_what_record_writes(data_dir: Path, tmp_path: Path) -> None:
    """A fresh import takes a shortcut; it must store exactly what record() stores."""
    obs = dict(status="5.1.1", reply_code="550", diagnostic="no such user", note="n", expires=9e9)
    with SuppressionStore.open(data_dir) as one:
        one.record("a@example.com", "userunknown", source="import", actor="x", **obs)
        slow_entry, slow_history = one.get("a@example.com"), one.history("a@example.com")
    with SuppressionStore.open(tmp_path / "other") as two:
        with two.bulk(actor="x") as writer:
            writer.add(make_observation("a@example.com", "userunknown", source="import", **obs))
            writer.add(make_observation("b@example.com", "userunknown", source="import", **obs))
        fast_entry, fast_history = two.get("a@example.com"), two.history("a@example.com")
    assert slow_entry is not None and fast_entry is not None
    ignore_times = {"first_seen": 0.0, "last_seen": 0.0}
    assert replace(fast_entry, **ignore_times) == replace(slow_entry, **ignore_times)
    assert [replace(h, at=0.0) for h in fast_history] == [replace(h, at=0.0) for h in slow_history]

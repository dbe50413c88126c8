"""The fleet store on a real PostgreSQL: nodes' changes meet under one merge rule, and
every node's SQLite cache converges on PostgreSQL's list.

Each node is a data directory of its own (its SQLite cache and outbox), attached to
one fresh database; :func:`sync_once` is one round of what the relay's replicator
does continuously (push the outbox, pull the changes).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import psycopg
import pytest

from smtpguard.classify.verdict import Verdict
from smtpguard.config import Config
from smtpguard.errors import ConfigError, StoreError
from smtpguard.policy import open_sink
from smtpguard.policy.evidence import Evidence
from smtpguard.store import fleet, outbox, suppression
from smtpguard.store.db import connect, transaction
from smtpguard.store.entries import make_observation
from smtpguard.store.pg import apply, schema
from smtpguard.store.pg.sync import open_pg, sync_once
from smtpguard.store.suppression import SuppressionStore

BOB = "bob@example.com"
DAY = 86400.0
T0 = 1_800_000_000.0


class Node:
    """One fleet node: its configuration, its identity, its SQLite cache."""

    def __init__(self, root: Path, name: str, dsn: str, **store: object) -> None:
        self.cfg = Config().with_overrides(
            store={"data_dir": str(root / name), "backend": "postgresql", "dsn": dsn,
                   "node": name, **store},
        )  # fmt: skip
        ident = fleet.prepare(self.cfg)
        assert ident is not None
        self.ident = ident

    def store(self) -> SuppressionStore:
        return SuppressionStore.open(self.cfg.data_dir)

    def sync(self) -> None:
        sync_once(self.cfg, self.ident)

    def lookup(self, address: str = BOB) -> suppression.SuppressionEntry | None:
        with self.store() as s:
            return s.lookup(address)

    def record(self, reason: str = "userunknown", address: str = BOB, **kw: object) -> None:
        with self.store() as s:
            s.record(address, reason, source="smtp-reply", actor="relay", **kw)  # type: ignore[arg-type]

    def outbox(self) -> int:
        conn = connect(self.cfg.data_dir)
        try:
            return outbox.depth(conn)[0]
        finally:
            conn.close()


@pytest.fixture
def a(tmp_path: Path, pg_dsn: str) -> Node:
    return Node(tmp_path, "node-a", pg_dsn)


@pytest.fixture
def b(tmp_path: Path, pg_dsn: str) -> Node:
    return Node(tmp_path, "node-b", pg_dsn)


def fleet_history(dsn: str, address: str = BOB) -> list[tuple[str, str, str]]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(
            "SELECT action, new_reason, node FROM suppression_history WHERE address = %s "
            "ORDER BY id",
            (address,),
        ).fetchall()


def test_a_standalone_database_keeps_no_outbox(tmp_path: Path) -> None:
    with SuppressionStore.open(tmp_path) as store:
        store.record(BOB, "userunknown", source="smtp-reply", actor="relay")
    conn = sqlite3.connect(tmp_path / "smtpguard.db")
    assert conn.execute("SELECT count(*) FROM fleet_outbox").fetchone()[0] == 0
    assert conn.execute("SELECT count(*) FROM fleet_state").fetchone()[0] == 0


def test_a_change_on_a_fleet_node_waits_in_its_outbox_until_pushed(a: Node) -> None:
    a.record()
    assert a.outbox() == 1
    a.sync()
    assert a.outbox() == 0


def test_an_entry_recorded_on_one_node_is_listed_on_the_other(a: Node, b: Node) -> None:
    a.record(status="5.1.1", reply_code="550")
    assert b.lookup() is None
    a.sync()
    b.sync()
    entry = b.lookup()
    assert entry is not None and (entry.reason, entry.status) == ("userunknown", "5.1.1")


def test_sightings_of_one_address_on_two_nodes_merge_in_postgresql(a: Node, b: Node) -> None:
    a.record("userunknown")
    b.record("complaint")  # before either node has heard of the other's
    a.sync()
    b.sync()
    a.sync()
    ea, eb = a.lookup(), b.lookup()
    assert ea == eb
    assert ea is not None and (ea.reason, ea.count) == ("complaint", 2)


def test_a_removal_on_one_node_reaches_the_other(a: Node, b: Node) -> None:
    a.record()
    a.sync()
    b.sync()
    with b.store() as s:
        assert s.remove(BOB, actor="cli:root")
    b.sync()
    a.sync()
    assert a.lookup() is None


def test_the_fleet_history_names_the_node_of_each_change(a: Node, b: Node, pg_dsn: str) -> None:
    a.record("userunknown")
    a.sync()
    b.record("complaint")
    b.sync()
    assert fleet_history(pg_dsn) == [
        ("added", "userunknown", "node-a"),
        ("escalated", "complaint", "node-b"),
    ]


def test_a_push_replayed_after_a_crash_applies_nothing_twice(a: Node, pg_dsn: str) -> None:
    a.record()
    conn = connect(a.cfg.data_dir)
    ops = outbox.read(conn, 100)
    conn.close()
    with open_pg(a.cfg) as pg:
        apply.push(pg, a.ident, ops)  # committed in PostgreSQL; the node "dies" before deleting
    a.sync()  # the same rows again
    assert a.outbox() == 0
    assert a.lookup().count == 1  # type: ignore[union-attr]
    assert len(fleet_history(pg_dsn)) == 1


def test_a_pull_leaves_an_entry_with_a_change_waiting_to_be_pushed_alone(a: Node, b: Node) -> None:
    a.record("userunknown")
    a.sync()
    b.record("complaint")  # waiting in b's outbox
    with open_pg(b.cfg) as pg, connect(b.cfg.data_dir) as local:
        from smtpguard.store.pg.sync import pull_all

        pull_all(local, pg)
    assert b.lookup().reason == "complaint"  # type: ignore[union-attr]


def test_a_new_database_for_a_node_is_a_new_instance(tmp_path: Path, pg_dsn: str) -> None:
    first = Node(tmp_path / "1", "node-a", pg_dsn)
    first.record()
    first.sync()
    again = Node(tmp_path / "2", "node-a", pg_dsn)  # the same name, its database replaced
    again.record("complaint", "carol@example.com")
    again.sync()  # outbox id 1 again: not mistaken for the one already applied
    assert again.ident.instance != first.ident.instance
    first.sync()
    assert first.lookup("carol@example.com") is not None


def test_a_pending_entry_held_on_one_node_is_pending_on_the_other_until_confirmed(
    a: Node, b: Node
) -> None:
    obs = make_observation(BOB, "userunknown", evidence="rcpt-reply")
    conn = connect(a.cfg.data_dir)
    with transaction(conn, a.cfg.data_dir / "smtpguard.db"):
        suppression.put_pending(conn, obs, "example.com", "relay", T0)
    conn.close()
    a.sync()
    b.sync()
    with b.store() as s:
        assert s.get_pending(BOB) is not None
        assert s.settle_pending([BOB], confirm=True, actor="cli:root") == [BOB]
    b.sync()
    a.sync()
    with a.store() as s:
        assert s.get_pending(BOB) is None
        assert s.lookup(BOB) is not None


def full(address: str = BOB) -> Verdict:
    return Verdict(
        recipient=address, status="4.2.2", reply_code="452", reason="mailboxfull", bounce="soft",
        diagnostic="452 4.2.2 Mailbox full", stage="rcpt",
    )  # fmt: skip


async def test_soft_bounces_on_two_nodes_add_up_to_one_suppression(a: Node, b: Node) -> None:
    rcpt = Evidence("rcpt-reply", "relay")
    sink_a, sink_b = await open_sink(a.cfg), await open_sink(b.cfg)
    try:
        for day in (0, 2):
            assert (await sink_a.accept([full()], rcpt, now=T0 + day * DAY)).applied[
                0
            ].outcome == "recorded"
        a.sync()
        b.sync()
        outcomes = [
            (await sink_b.accept([full()], rcpt, now=T0 + day * DAY)).applied[0].outcome
            for day in (4, 6, 7)
        ]
    finally:
        await sink_a.close()
        await sink_b.close()
    assert outcomes == ["recorded", "recorded", "suppressed"]  # 5 of 5, two of them on a


def test_backend_postgresql_needs_a_dsn() -> None:
    with pytest.raises(ConfigError, match=r"store\.dsn"):
        Config().with_overrides(store={"backend": "postgresql"})


def test_a_newer_postgresql_schema_is_refused(a: Node, pg_dsn: str) -> None:
    with psycopg.connect(pg_dsn) as conn:
        schema.migrate(conn)
        conn.execute("UPDATE smtpguard_schema SET version = 99")
    with pytest.raises(StoreError, match="newer than this smtpguard"):
        a.sync()


def test_an_unreachable_postgresql_is_a_one_line_store_error(tmp_path: Path) -> None:
    from tests.fixtures.net import free_port

    node = Node(tmp_path, "node-a", f"postgresql://postgres@127.0.0.1:{free_port()}/x")
    node.record()
    with pytest.raises(StoreError, match="Connection refused") as e:
        node.sync()
    assert "\n" not in str(e.value)
    assert node.outbox() == 1  # kept for later


def test_a_node_away_longer_than_the_change_log_resyncs_from_a_snapshot(a: Node, b: Node) -> None:
    a.record(address="x@example.com")
    a.record(address="y@example.com")
    a.sync()
    b.sync()
    with a.store() as s:
        s.remove("x@example.com", actor="cli:root")
    a.record(address="z@example.com")
    a.sync()
    with open_pg(a.cfg) as pg:
        assert apply.prune_changes(pg, before=2e9) > 0  # b's place in the log is gone
    b.sync()
    assert b.lookup("x@example.com") is None
    assert b.lookup("y@example.com") is not None and b.lookup("z@example.com") is not None


def delivered(address: str = BOB) -> Verdict:
    return Verdict(recipient=address, reason="delivered", bounce="none", stage="data")


async def wait_until(check: object, timeout: float = 3.0) -> None:
    import asyncio
    import time

    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def test_a_delivery_on_one_node_clears_soft_bounces_counted_on_another(
    a: Node, b: Node, pg_dsn: str
) -> None:
    rcpt = Evidence("rcpt-reply", "relay")
    sink_a, sink_b = await open_sink(a.cfg), await open_sink(b.cfg)  # each runs a replicator
    try:
        for day in (0, 1):
            await sink_a.accept([full()], rcpt, now=T0 + day * DAY)
        await wait_until(lambda: BOB in sink_b.soft_addresses)
        report = await sink_b.accept([delivered()], rcpt, now=T0 + 2 * DAY)
        assert report.applied[0].outcome == "ignored"  # a delivery; the count goes
        await wait_until(lambda: soft_counts(pg_dsn) == 0)
    finally:
        await sink_a.close()
        await sink_b.close()


def soft_counts(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        return conn.execute("SELECT count(*) FROM soft_bounces").fetchone()[0]


def test_a_change_skipped_while_its_push_was_unfinished_is_pulled_after_it(
    a: Node, b: Node
) -> None:
    from smtpguard.store.pg.sync import pull_all

    a.record("userunknown")
    a.sync()
    b.record("complaint")  # b's cache: complaint, seen once (it had not heard of a's)
    local = connect(b.cfg.data_dir)
    ops = outbox.read(local, 100)
    with open_pg(b.cfg) as pg:
        apply.push(pg, b.ident, ops)  # one process of node b pushed...
        pull_all(local, pg)  # ...another pulled before the pusher deleted its outbox rows
        with transaction(local, b.cfg.data_dir / "smtpguard.db"):
            outbox.delete_through(local, ops[-1].id)
        pull_all(local, pg)
    local.close()
    entry = b.lookup()
    assert entry is not None and (entry.reason, entry.count) == ("complaint", 2)


def test_a_remote_postgresql_without_verified_tls_is_a_config_error() -> None:
    dsn = "postgresql://smtpguard:secret@db.example.net/smtpguard"
    with pytest.raises(ConfigError, match=r"db\.example\.net without verified TLS") as e:
        Config().with_overrides(store={"backend": "postgresql", "dsn": dsn})
    assert "secret" not in str(e.value)
    Config().with_overrides(store={"backend": "postgresql", "dsn": dsn + "?sslmode=verify-full"})

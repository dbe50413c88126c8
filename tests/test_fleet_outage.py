"""PostgreSQL killed under two running relays: nothing is lost, and the operator's
``store.unknown`` decides what a stale node answers for recipients it does not list."""

from __future__ import annotations

import time

import pytest

from tests.fixtures.postgres import PgServer
from tests.test_fleet_relay import fleet, rcpt_reply, smtpguard, wait_listed, wait_rcpt
from tests.test_relay_delivery import BODY, wait_states

pytestmark = pytest.mark.slow

GONE = [f"gone{i}@example.com" for i in range(3)]
OK = [f"ok{i}@example.com" for i in range(5)]


@pytest.fixture
def mx_domain(dns_server) -> str:
    from tests.fixtures.relay import route_to_mx

    route_to_mx(dns_server, "example.com")
    return "example.com"


def outbox_depth(relay) -> int:
    import sqlite3

    conn = sqlite3.connect(relay.data_dir / "smtpguard.db")
    try:
        return conn.execute("SELECT count(*) FROM fleet_outbox").fetchone()[0]
    finally:
        conn.close()


def wait_log(relay, text: str, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while text not in relay.log():
        assert time.monotonic() < deadline, f"{text!r} not logged:\n{relay.log()[-2000:]}"
        time.sleep(0.1)


def test_killing_postgresql_loses_no_suppression_and_no_message(
    start_relay, tmp_path, own_pg: PgServer, mx_domain, test_mx
):
    dsn = own_pg.create_database()
    for address in GONE:
        test_mx.script(address, f"550 5.1.1 <{address}>: User unknown")
    a = start_relay(data_dir=tmp_path / "a", store=fleet(dsn, "node-a"))
    b = start_relay(data_dir=tmp_path / "b", store=fleet(dsn, "node-b"))
    wait_rcpt(b, "x@example.com", 250, timeout=5)  # both up and in sync
    own_pg.kill()
    # PostgreSQL is gone: mail is still taken, delivered, bounced and suppressed locally.
    for address in [*GONE, *OK]:
        code, _ = a.send("sender@example.org", [address], BODY)
        assert code == 250
    wait_states(a.data_dir, {**dict.fromkeys(GONE, "bounced"), **dict.fromkeys(OK, "delivered")})
    for address in GONE:
        wait_listed(a.data_dir, address)
        assert rcpt_reply(a, address)[0] == 550  # in force on the node that saw it
    added = smtpguard(b, "suppression", "add", "eve@example.net", "--reason", "complaint")
    assert added.returncode == 0 and "outbox" in added.stderr, added.stderr
    assert outbox_depth(a) >= len(GONE) and outbox_depth(b) >= 1
    wait_log(a, "PostgreSQL unreachable")
    own_pg.start()
    # Back: both outboxes are replayed and every node refuses everything.
    for address in GONE:
        wait_rcpt(b, address, 550, timeout=30)
    wait_rcpt(a, "eve@example.net", 550, timeout=30)
    deadline = time.monotonic() + 10
    while outbox_depth(a) or outbox_depth(b):
        assert time.monotonic() < deadline, "outboxes not drained"
        time.sleep(0.1)
    delivered = {r for m in test_mx.messages for r in m.rcpt_tos}
    assert set(OK) <= delivered


def test_a_stale_node_tempfails_unknown_recipients_when_told_to(
    start_relay, tmp_path, own_pg: PgServer
):
    dsn = own_pg.create_database()
    b = start_relay(
        data_dir=tmp_path / "b",
        store=fleet(dsn, "node-b", unknown="tempfail", max_staleness=1.5),
    )
    wait_rcpt(b, "new@example.com", 250, timeout=10)
    own_pg.kill()
    wait_rcpt(b, "new@example.com", 451, timeout=10)
    code, text = rcpt_reply(b, "new@example.com")
    assert code == 451 and "4.3.0" in text and "suppression list unavailable" in text
    own_pg.start()
    wait_rcpt(b, "new@example.com", 250, timeout=30)


def test_a_stale_node_accepts_unknown_recipients_by_default(
    start_relay, tmp_path, own_pg: PgServer
):
    dsn = own_pg.create_database()
    b = start_relay(data_dir=tmp_path / "b", store=fleet(dsn, "node-b", max_staleness=1.5))
    wait_rcpt(b, "new@example.com", 250, timeout=10)
    own_pg.kill()
    time.sleep(3)
    assert rcpt_reply(b, "new@example.com")[0] == 250

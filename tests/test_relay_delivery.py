"""Delivery through a real ``smtpguard serve`` to a scripted MX found via loopback DNS."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

from tests.fixtures.relay import route_to_mx

pytestmark = pytest.mark.slow

BODY = b"From: s@example.org\r\nSubject: hello\r\n\r\nHello there.\r\n.leading dot\r\n"


def states(data_dir: Path) -> dict[str, str]:
    conn = sqlite3.connect(data_dir / "smtpguard.db")
    try:
        return dict(conn.execute("SELECT address, state FROM queue_recipients ORDER BY id"))
    finally:
        conn.close()


def wait_states(data_dir: Path, want: dict[str, str], timeout: float = 15) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    got = states(data_dir)
    while time.monotonic() < deadline:
        got = states(data_dir)
        if all(got.get(a) == s for a, s in want.items()):
            return got
        time.sleep(0.1)
    raise AssertionError(f"recipient states {got} did not reach {want} within {timeout}s")


def tried(data_dir: Path, timeout: float = 15) -> tuple[str, str, str, str]:
    """(state, last_status, last_reason, last_diag) of the only recipient once it was tried."""
    conn = sqlite3.connect(data_dir / "smtpguard.db")
    deadline = time.monotonic() + timeout
    try:
        while True:
            row = conn.execute(
                "SELECT state, last_status, last_reason, last_diag, attempts FROM queue_recipients"
            ).fetchone()
            if row and row[4] >= 1:
                return row[:4]
            assert time.monotonic() < deadline, f"no attempt recorded within {timeout}s: {row}"
            time.sleep(0.05)
    finally:
        conn.close()


def test_message_reaches_the_mx(start_relay, dns_server, test_mx):
    route_to_mx(dns_server, "example.com")
    relay = start_relay()
    code, reply = relay.send("s@example.org", ["rcpt@example.com"], BODY)
    assert code == 250 and b"queued as" in reply
    (got,) = test_mx.wait_for(1)
    assert got.mail_from == "s@example.org"
    assert got.rcpt_tos == ["rcpt@example.com"]
    assert got.data.endswith(b"Hello there.\r\n.leading dot\r\n")
    assert got.helo == "relay.test"
    wait_states(relay.data_dir, {"rcpt@example.com": "delivered"})


def test_recipients_of_one_domain_share_one_transaction(start_relay, dns_server, test_mx):
    route_to_mx(dns_server, "example.com")
    relay = start_relay()
    relay.send("s@example.org", ["a@example.com", "b@example.com"], BODY)
    (got,) = test_mx.wait_for(1)
    assert sorted(got.rcpt_tos) == ["a@example.com", "b@example.com"]


def test_multi_domain_partial_success_keeps_per_recipient_state(start_relay, dns_server, test_mx):
    route_to_mx(dns_server, "one.example", "two.example", "three.example")
    test_mx.script("c@three.example", "452 4.2.2 Mailbox full")
    relay = start_relay(delivery={"retry_initial": 30.0, "retry_max": 60.0})
    relay.send("s@example.org", ["a@one.example", "b@two.example", "c@three.example"], BODY)
    test_mx.wait_for(2)
    got = wait_states(
        relay.data_dir,
        {"a@one.example": "delivered", "b@two.example": "delivered", "c@three.example": "queued"},
    )
    assert got["c@three.example"] == "queued"
    assert sorted(test_mx.recipients()) == ["a@one.example", "b@two.example"]


def test_several_messages_reuse_one_connection(start_relay, dns_server, test_mx):
    route_to_mx(dns_server, "example.com")
    relay = start_relay()
    import smtplib

    with smtplib.SMTP(relay.host, relay.port, local_hostname="client.test") as s:
        for i in range(20):
            s.sendmail("s@example.org", [f"u{i}@example.com"], BODY)
    test_mx.wait_for(20)
    assert test_mx.connections < 20


def test_dsn_parameters_are_passed_on(start_relay, dns_server, test_mx):
    route_to_mx(dns_server, "example.com")
    relay = start_relay()
    relay.send(
        "s@example.org", ["r@example.com"], BODY,
        mail_options=["RET=HDRS", "ENVID=env+2B1"],
        rcpt_options=["NOTIFY=SUCCESS,FAILURE", "ORCPT=rfc822;r@example.com"],
    )  # fmt: skip
    (got,) = test_mx.wait_for(1)
    assert got.ret == "HDRS"
    assert got.envid == "env+2B1"
    assert got.notify("r@example.com") == "SUCCESS,FAILURE"
    assert got.orcpt("r@example.com").lower() == "rfc822;r@example.com"


def test_smarthost_takes_everything_without_dns(start_relay, dns_server, test_mx):
    relay = start_relay(delivery={"smarthost": f"127.0.0.1:{test_mx.port}"})
    relay.send("s@example.org", ["x@nowhere.example", "y@elsewhere.example"], BODY)
    (got,) = test_mx.wait_for(1)
    assert sorted(got.rcpt_tos) == ["x@nowhere.example", "y@elsewhere.example"]
    assert dns_server.queried("nowhere.example") == 0


def test_connection_refused_is_retried(start_relay, dns_server, test_mx, make_test_mx):
    from tests.fixtures.relay import free_port

    route_to_mx(dns_server, "example.com")
    dead = free_port()
    relay = start_relay(delivery={"port": dead, "retry_initial": 30.0})
    relay.send("s@example.org", ["r@example.com"], BODY)
    wait_states(relay.data_dir, {"r@example.com": "queued"})
    conn = sqlite3.connect(relay.data_dir / "smtpguard.db")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        row = conn.execute("SELECT attempts, last_reason FROM queue_recipients").fetchone()
        if row[0] >= 1:
            break
        time.sleep(0.1)
    assert row == (1, "networkerror")


def test_opportunistic_starttls_is_used_when_offered(start_relay, dns_server, make_test_mx):
    route_to_mx(dns_server, "example.com")
    tls_mx = make_test_mx(tls=True)
    relay = start_relay(delivery={"port": tls_mx.port})
    relay.send("s@example.org", ["r@example.com"], BODY)
    (got,) = tls_mx.wait_for(1)
    assert got.tls is True


def test_smtputf8_message_is_sent_with_smtputf8(start_relay, dns_server, test_mx):
    route_to_mx(dns_server, "example.com")
    relay = start_relay()
    relay.send("s@example.org", ["jürgen@example.com"], BODY, mail_options=["SMTPUTF8"])
    (got,) = test_mx.wait_for(1)
    assert got.rcpt_tos == ["jürgen@example.com"]
    assert "SMTPUTF8" in got.mail_params


def test_metrics_endpoint_counts_deliveries(start_relay, dns_server, test_mx):
    import urllib.request

    from tests.fixtures.relay import free_port

    route_to_mx(dns_server, "example.com")
    port = free_port()
    relay = start_relay(metrics={"listen": f"127.0.0.1:{port}"})
    relay.send("s@example.org", ["r@example.com"], BODY)
    wait_states(relay.data_dir, {"r@example.com": "delivered"})
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    assert 'smtpguard_deliveries_total{result="delivered"} 1.0' in text
    assert "smtpguard_messages_received_total 1.0" in text


def test_held_message_is_not_delivered_until_released(start_relay, dns_server, test_mx):
    import json

    route_to_mx(dns_server, "example.com")
    test_mx.script("r@example.com", ["452 4.2.2 Mailbox full", "250 2.1.5 Ok"])
    # A long retry interval, so the hold below cannot race the retry; `queue retry`
    # then makes every queued recipient due at once, and a held one must stay put.
    relay = start_relay(delivery={"retry_initial": 600.0, "retry_max": 600.0})
    relay.send("s@example.org", ["r@example.com"], BODY)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        (row,) = json.loads(relay.queue_cli("list", "--format", "json").stdout)
        if row["last_reason"]:
            break
        time.sleep(0.05)
    assert relay.queue_cli("hold", row["id"]).returncode == 0
    assert relay.queue_cli("retry", "--all").returncode == 0
    time.sleep(2.0)  # two of the scheduler's refills: a held message is not claimed
    assert test_mx.messages == []
    assert relay.queue_cli("release", row["id"]).returncode == 0
    test_mx.wait_for(1, timeout=10)


def test_storage_failure_answers_451_and_writes_nothing(start_relay, dns_server, test_mx):
    import smtplib

    route_to_mx(dns_server, "example.com")
    relay = start_relay(store={"busy_timeout": 0.3})
    relay.send("s@example.org", ["first@example.com"], BODY)
    wait_states(relay.data_dir, {"first@example.com": "delivered"})
    blocker = sqlite3.connect(relay.data_dir / "smtpguard.db", isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # another writer holds the lock: commits fail
    try:
        with smtplib.SMTP(relay.host, relay.port, local_hostname="client.test") as s:
            s.ehlo()
            s.mail("s@example.org")
            s.rcpt("second@example.com")
            code, reply = s.data(BODY)
    finally:
        blocker.execute("ROLLBACK")
    assert (code, reply[:5]) == (451, b"4.3.0")
    assert list(states(relay.data_dir)) == ["first@example.com"]
    relay.send("s@example.org", ["third@example.com"], BODY)  # the relay carries on
    wait_states(relay.data_dir, {"third@example.com": "delivered"})


def test_delivery_resumes_after_the_database_was_locked_for_a_while(
    start_relay, dns_server, test_mx
):
    import threading

    route_to_mx(dns_server, "example.com")
    test_mx.script("r@example.com", ["452 4.2.2 Mailbox full", "250 2.1.5 Ok"])
    relay = start_relay(store={"busy_timeout": 0.2}, delivery={"retry_initial": 0.5})
    blocker = sqlite3.connect(
        relay.data_dir / "smtpguard.db", isolation_level=None, check_same_thread=False
    )
    locked = threading.Event()

    def lock_when_first_attempt_arrives() -> None:
        deadline = time.monotonic() + 10
        while test_mx.rcpt_attempts("r@example.com") < 1 and time.monotonic() < deadline:
            time.sleep(0.001)
        blocker.execute("BEGIN IMMEDIATE")  # the attempt's result cannot be written now
        locked.set()

    t = threading.Thread(target=lock_when_first_attempt_arrives)
    t.start()
    relay.send("s@example.org", ["r@example.com"], BODY)
    t.join(timeout=15)
    assert locked.is_set()
    time.sleep(1.5)
    blocker.execute("ROLLBACK")
    test_mx.wait_for(1, timeout=20)
    wait_states(relay.data_dir, {"r@example.com": "delivered"})

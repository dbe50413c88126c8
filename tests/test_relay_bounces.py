"""What the relay does with each kind of reply: suppress, DSN, retry, greylist, expire."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

from smtpguard.store.suppression import SuppressionStore
from tests.fixtures.relay import route_to_mx
from tests.test_relay_delivery import BODY, wait_states

pytestmark = pytest.mark.slow


@pytest.fixture
def mx_domain(dns_server) -> str:
    route_to_mx(dns_server, "example.com")
    return "example.com"


def delivery_status(dsn) -> str:
    """The text of the message/delivery-status part of a DSN the collector received."""
    msg = dsn.message()
    for part in msg.walk():
        if part.get_content_type() == "message/delivery-status":
            return "\n".join(str(block) for block in part.get_payload())
    raise AssertionError("no message/delivery-status part")


def dsn_count(data_dir: Path) -> int:
    conn = sqlite3.connect(data_dir / "smtpguard.db")
    try:
        return conn.execute("SELECT count(*) FROM queue_messages WHERE kind = 'dsn'").fetchone()[0]
    finally:
        conn.close()


def suppressed(data_dir: Path, address: str):
    store = SuppressionStore.open(data_dir)
    try:
        return store.lookup(address)
    finally:
        store.close()


def test_user_unknown_suppresses_and_returns_a_dsn(start_relay, mx_domain, test_mx, relay_dsn_mx):
    test_mx.script("gone@example.com", "550 5.1.1 <gone@example.com>: User unknown")
    relay = start_relay()
    relay.send("sender@example.org", ["gone@example.com"], BODY)
    (dsn,) = relay_dsn_mx.wait_for(1)
    assert dsn.mail_from == ""
    assert dsn.rcpt_tos == ["sender@example.org"]
    status = delivery_status(dsn)
    assert "Action: failed" in status
    assert "Status: 5.1.1" in status
    assert "smtp; 550 5.1.1 <gone@example.com>: User unknown" in status
    wait_states(relay.data_dir, {"gone@example.com": "bounced"})
    entry = suppressed(relay.data_dir, "gone@example.com")
    assert entry is not None and entry.reason == "userunknown"
    assert "550 5.1.1" in entry.diagnostic


def test_policy_rejection_returns_a_dsn_without_suppressing(
    start_relay, mx_domain, test_mx, relay_dsn_mx
):
    test_mx.script("picky@example.com", "554 5.7.1 Message rejected by policy")
    relay = start_relay()
    relay.send("sender@example.org", ["picky@example.com"], BODY)
    (dsn,) = relay_dsn_mx.wait_for(1)
    assert "Status: 5.7.1" in delivery_status(dsn)
    wait_states(relay.data_dir, {"picky@example.com": "bounced"})
    assert suppressed(relay.data_dir, "picky@example.com") is None
    assert "rejected without suppression" in relay.log()


def test_mailbox_full_is_retried_then_delivered(start_relay, mx_domain, test_mx):
    test_mx.script("full@example.com", ["452 4.2.2 Mailbox full", "452 4.2.2 Mailbox full",
                                        "250 2.1.5 Ok"])  # fmt: skip
    relay = start_relay(delivery={"retry_initial": 0.2, "retry_max": 0.5})
    relay.send("sender@example.org", ["full@example.com"], BODY)
    (got,) = test_mx.wait_for(1, timeout=15)
    assert got.rcpt_tos == ["full@example.com"]
    assert test_mx.rcpt_attempts("full@example.com") == 3
    wait_states(relay.data_dir, {"full@example.com": "delivered"})


def test_greylisting_is_not_retried_before_the_greylist_delay(start_relay, mx_domain, test_mx):
    test_mx.script("grey@example.com", ["451 4.7.1 Greylisted, please try again later",
                                        "250 2.1.5 Ok"])  # fmt: skip
    relay = start_relay(delivery={"retry_initial": 0.1, "greylist_delay": 2.0})
    sent = time.time()
    relay.send("sender@example.org", ["grey@example.com"], BODY)
    (got,) = test_mx.wait_for(1, timeout=15)
    assert got.received_at - sent >= 2.0
    assert test_mx.rcpt_attempts("grey@example.com") == 2


def test_queue_lifetime_expiry_returns_an_expired_dsn(
    start_relay, mx_domain, test_mx, relay_dsn_mx
):
    test_mx.script("slow@example.com", "452 4.2.2 Mailbox full")
    relay = start_relay(delivery={"retry_initial": 0.2, "retry_max": 0.3, "queue_lifetime": 1.0})
    relay.send("sender@example.org", ["slow@example.com"], BODY)
    (dsn,) = relay_dsn_mx.wait_for(1, timeout=15)
    status = delivery_status(dsn)
    assert "Action: failed" in status
    assert "Status: 5.4.7" in status
    wait_states(relay.data_dir, {"slow@example.com": "expired"})
    assert test_mx.rcpt_attempts("slow@example.com") >= 2


def test_null_sender_never_gets_a_dsn(start_relay, mx_domain, test_mx):
    test_mx.script("gone@example.com", "550 5.1.1 <gone@example.com>: User unknown")
    relay = start_relay()
    relay.send("<>", ["gone@example.com"], BODY)
    wait_states(relay.data_dir, {"gone@example.com": "bounced"})
    assert dsn_count(relay.data_dir) == 0


def test_auto_submitted_message_never_gets_a_dsn(start_relay, mx_domain, test_mx):
    test_mx.script("gone@example.com", "550 5.1.1 <gone@example.com>: User unknown")
    relay = start_relay()
    relay.send("sender@example.org", ["gone@example.com"],
               b"Auto-Submitted: auto-replied\r\nSubject: away\r\n\r\nI am away.\r\n")  # fmt: skip
    wait_states(relay.data_dir, {"gone@example.com": "bounced"})
    assert dsn_count(relay.data_dir) == 0


def test_dsns_switched_off(start_relay, mx_domain, test_mx):
    test_mx.script("gone@example.com", "550 5.1.1 <gone@example.com>: User unknown")
    relay = start_relay(dsn={"enabled": False})
    relay.send("sender@example.org", ["gone@example.com"], BODY)
    wait_states(relay.data_dir, {"gone@example.com": "bounced"})
    assert dsn_count(relay.data_dir) == 0


def test_every_attempt_is_an_event(start_relay, mx_domain, test_mx):
    test_mx.script("full@example.com", ["452 4.2.2 Mailbox full", "250 2.1.5 Ok"])
    relay = start_relay(delivery={"retry_initial": 0.2})
    relay.send("sender@example.org", ["full@example.com"], BODY)
    wait_states(relay.data_dir, {"full@example.com": "delivered"})
    conn = sqlite3.connect(relay.data_dir / "smtpguard.db")
    events = conn.execute(
        "SELECT event, code, status, reason FROM queue_events ORDER BY id"
    ).fetchall()
    assert events == [
        ("received", "", "", ""),
        ("deferred", "452", "4.2.2", "mailboxfull"),
        ("delivered", "250", "2.0.0", "delivered"),
    ]


def test_nxdomain_is_a_hard_hostunknown_bounce(start_relay, dns_server, relay_dsn_mx):
    relay = start_relay()
    relay.send("sender@example.org", ["x@no-such-domain.example"], BODY)
    (dsn,) = relay_dsn_mx.wait_for(1)
    assert "Status: 5.1.2" in delivery_status(dsn)
    wait_states(relay.data_dir, {"x@no-such-domain.example": "bounced"})
    # One DNS answer suppresses nothing: it must be seen again later (evidence rules).
    assert suppressed(relay.data_dir, "x@no-such-domain.example") is None


def test_null_mx_domain_bounces_with_5_1_10(start_relay, dns_server, relay_dsn_mx):
    dns_server.null_mx("nomail.example")
    relay = start_relay()
    relay.send("sender@example.org", ["x@nomail.example"], BODY)
    (dsn,) = relay_dsn_mx.wait_for(1)
    assert "Status: 5.1.10" in delivery_status(dsn)
    wait_states(relay.data_dir, {"x@nomail.example": "bounced"})


def test_dns_servfail_is_retried_not_bounced(start_relay, dns_server):
    dns_server.servfail("flaky.example")
    relay = start_relay(delivery={"retry_initial": 30.0})
    relay.send("sender@example.org", ["x@flaky.example"], BODY)
    deadline = time.monotonic() + 15
    conn = sqlite3.connect(relay.data_dir / "smtpguard.db")
    row = None
    while time.monotonic() < deadline:
        row = conn.execute("SELECT state, attempts, last_reason FROM queue_recipients").fetchone()
        if row[1] >= 1:
            break
        time.sleep(0.1)
    assert row == ("queued", 1, "networkerror")
    assert dsn_count(relay.data_dir) == 0


def test_rejection_at_end_of_data_is_classified(start_relay, mx_domain, test_mx, relay_dsn_mx):
    test_mx.script("r@example.com", "554 5.7.1 Message content rejected as spam", stage="data")
    relay = start_relay()
    relay.send("sender@example.org", ["r@example.com"], BODY)
    relay_dsn_mx.wait_for(1)
    wait_states(relay.data_dir, {"r@example.com": "bounced"})
    assert suppressed(relay.data_dir, "r@example.com") is None


def test_a_421_later_in_the_transaction_keeps_the_refusal_already_given(
    start_relay, mx_domain, test_mx, relay_dsn_mx
):
    """554 5.7.1 at RCPT is final for that recipient even when the server then says 421."""
    test_mx.script("refused@example.com", "554 5.7.1 <refused@example.com>: Relay access denied")
    test_mx.script("later@example.com", ["421 4.7.0 Too busy, closing", "250 2.1.5 Ok"])
    relay = start_relay(delivery={"retry_initial": 0.5, "retry_max": 0.5})
    relay.send("sender@example.org", ["refused@example.com", "later@example.com"], BODY)
    (dsn,) = relay_dsn_mx.wait_for(1)
    status = delivery_status(dsn)
    assert "Final-Recipient: rfc822; refused@example.com" in status
    assert "later@example.com" not in status
    assert "smtp; 554 5.7.1 <refused@example.com>: Relay access denied" in status
    (got,) = test_mx.wait_for(1, timeout=15)  # the deferred one, on the retry
    assert got.rcpt_tos == ["later@example.com"]
    wait_states(
        relay.data_dir, {"refused@example.com": "bounced", "later@example.com": "delivered"}
    )
    assert test_mx.rcpt_attempts("refused@example.com") == 1
    conn = sqlite3.connect(relay.data_dir / "smtpguard.db")
    events = conn.execute(
        "SELECT recipient, event, code FROM queue_events WHERE recipient != '' ORDER BY id"
    ).fetchall()
    assert ("later@example.com", "deferred", "421") in events
    assert ("refused@example.com", "bounced", "554") in events

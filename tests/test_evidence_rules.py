"""Nothing goes on the suppression list without evidence about that recipient.

Every test runs the real relay (``smtpguard serve``) against a scripted MX on
loopback, found through the loopback DNS stub, and reads the real SQLite file
afterwards. The first four are the attacks the evidence rules exist for.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

from smtpguard.store.suppression import SuppressionStore
from tests.fixtures.cli import _run
from tests.fixtures.relay import route_to_mx
from tests.test_relay_delivery import BODY, tried, wait_states

pytestmark = pytest.mark.slow


def entry(data_dir: Path, address: str):
    with SuppressionStore.open(data_dir) as store:
        return store.lookup(address)


def history(data_dir: Path, address: str) -> list[tuple[str, str, str]]:
    """(action, evidence kind, note) of every history row for ``address``."""
    with SuppressionStore.open(data_dir) as store:
        return [(h.action, h.evidence, h.note) for h in store.history(address)]


def listed(data_dir: Path) -> list[str]:
    with SuppressionStore.open(data_dir) as store:
        return [e.address for e in store.list_page(limit=None)]


@pytest.fixture
def mx_domain(dns_server) -> str:
    route_to_mx(dns_server, "example.com")
    return "example.com"


# --------------------------------------------------------------------------- the attacks


def test_smarthost_greeting_user_unknown_suppresses_nobody(start_relay, test_mx):
    test_mx.script("*", "554 5.1.1 user unknown", stage="connect")
    relay = start_relay(delivery={"smarthost": f"127.0.0.1:{test_mx.port}"})
    rcpts = ["a@one.example", "b@two.example", "c@two.example"]
    relay.send("sender@example.org", rcpts, BODY)
    wait_states(relay.data_dir, dict.fromkeys(rcpts, "bounced"))
    assert listed(relay.data_dir) == []
    assert "a reply at connect names no recipient" in relay.log()


def test_reply_after_data_naming_another_address_suppresses_neither_recipient(
    start_relay, mx_domain, test_mx
):
    test_mx.script(
        "a@example.com", "550 5.1.1 <someone-else@other.example> User unknown", stage="data"
    )
    relay = start_relay()
    relay.send("sender@example.org", ["a@example.com", "b@example.com"], BODY)
    wait_states(relay.data_dir, {"a@example.com": "bounced", "b@example.com": "bounced"})
    assert listed(relay.data_dir) == []
    assert "the reply names another address (someone-else@other.example)" in relay.log()


def test_rcpt_reply_naming_another_address_suppresses_nobody(start_relay, mx_domain, test_mx):
    test_mx.script("a@example.com", "550 5.1.1 <someone-else@example.com>: User unknown")
    relay = start_relay()
    relay.send("sender@example.org", ["a@example.com"], BODY)
    wait_states(relay.data_dir, {"a@example.com": "bounced"})
    assert listed(relay.data_dir) == []


def test_one_nxdomain_suppresses_nothing(start_relay, dns_server):
    relay = start_relay()
    relay.send("sender@example.org", ["x@no-such-domain.example"], BODY)
    wait_states(relay.data_dir, {"x@no-such-domain.example": "bounced"})
    assert listed(relay.data_dir) == []
    assert history(relay.data_dir, "no-such-domain.example") == [
        ("recorded", "dns", "first sighting of this DNS answer")
    ]


# --------------------------------------------------------------------------- session stages


@pytest.mark.parametrize(
    ("stage", "reply"),
    [
        ("ehlo", "550 5.1.1 user unknown"),
        ("mail", "550 5.1.1 <a@example.com>: User unknown"),
    ],
)
def test_reply_before_rcpt_never_suppresses(start_relay, mx_domain, test_mx, stage, reply):
    test_mx.script("*", reply, stage=stage)
    relay = start_relay()
    relay.send("sender@example.org", ["a@example.com"], BODY)
    wait_states(relay.data_dir, {"a@example.com": "bounced"})
    assert listed(relay.data_dir) == []


@pytest.mark.parametrize(
    ("tls", "outcome"),
    # Opportunistic goes on in plaintext (RFC 3207 section 4); required defers.
    [("opportunistic", ("delivered", "delivered")), ("required", ("queued", "failedstarttls"))],
)
def test_starttls_refusal_never_suppresses(start_relay, dns_server, make_test_mx, tls, outcome):
    mx = make_test_mx(tls=True)
    route_to_mx(dns_server, "example.com")
    mx.script("*", "554 5.1.1 <a@example.com>: user unknown", stage="starttls")
    relay = start_relay(delivery={"port": mx.port, "tls": tls, "retry_initial": 30.0})
    relay.send("sender@example.org", ["a@example.com"], BODY)
    state, _, reason, _ = tried(relay.data_dir)
    assert (state, reason) == outcome
    assert listed(relay.data_dir) == []


# --------------------------------------------------------------------------- after DATA


def test_reply_after_data_suppresses_the_only_recipient_of_the_transaction(
    start_relay, mx_domain, test_mx
):
    test_mx.script("a@example.com", "550 5.1.1 User unknown", stage="data")
    relay = start_relay()
    relay.send("sender@example.org", ["a@example.com"], BODY)
    wait_states(relay.data_dir, {"a@example.com": "bounced"})
    e = entry(relay.data_dir, "a@example.com")
    assert e is not None and e.reason == "userunknown" and e.evidence == "data-reply"


@pytest.mark.parametrize(
    ("reply", "suppressed"),
    [
        ("550 5.1.1 User unknown", []),
        ("550 5.1.1 <b@example.com>: User unknown", ["b@example.com"]),
    ],
)
def test_reply_after_data_to_two_recipients_suppresses_only_one_it_names(
    start_relay, mx_domain, test_mx, reply, suppressed
):
    test_mx.script("a@example.com", reply, stage="data")
    relay = start_relay()
    relay.send("sender@example.org", ["a@example.com", "b@example.com"], BODY)
    wait_states(relay.data_dir, {"a@example.com": "bounced", "b@example.com": "bounced"})
    assert listed(relay.data_dir) == suppressed
    if not suppressed:
        assert "a reply after DATA to 2 recipients that names none of them" in relay.log()


# --------------------------------------------------------------------------- evidence recorded


def test_rcpt_reply_suppression_records_its_evidence_kind(start_relay, mx_domain, test_mx):
    test_mx.script("gone@example.com", "550 5.1.1 <gone@example.com>: User unknown")
    relay = start_relay()
    relay.send("sender@example.org", ["gone@example.com"], BODY)
    wait_states(relay.data_dir, {"gone@example.com": "bounced"})
    e = entry(relay.data_dir, "gone@example.com")
    assert e is not None and (e.evidence, e.source) == ("rcpt-reply", "smtp-reply")
    assert history(relay.data_dir, "gone@example.com") == [("added", "rcpt-reply", "")]
    shown = _run(["--data-dir", str(relay.data_dir), "suppression", "history", "gone@example.com"])
    assert "[rcpt-reply] 550 5.1.1" in shown.stdout


def test_record_mode_keeps_history_without_suppressing(start_relay, mx_domain, test_mx):
    test_mx.script("gone@example.com", "550 5.1.1 <gone@example.com>: User unknown")
    relay = start_relay(policy={"modes": {"rcpt-reply": "record"}})
    relay.send("sender@example.org", ["gone@example.com"], BODY)
    wait_states(relay.data_dir, {"gone@example.com": "bounced"})
    assert entry(relay.data_dir, "gone@example.com") is None
    assert [h[:2] for h in history(relay.data_dir, "gone@example.com")] == [
        ("recorded", "rcpt-reply")
    ]


def test_suppression_commits_in_the_bounce_transaction(start_relay, mx_domain, test_mx):
    """A suppression that cannot be written takes the bounce (and its DSN) with it."""
    test_mx.script("gone@example.com", "550 5.1.1 <gone@example.com>: User unknown")
    relay = start_relay()
    db = sqlite3.connect(relay.data_dir / "smtpguard.db", isolation_level=None)
    db.execute(
        "CREATE TRIGGER refuse_suppression BEFORE INSERT ON suppression"
        " BEGIN SELECT RAISE(ABORT, 'suppression refused by the test'); END"
    )
    relay.send("sender@example.org", ["gone@example.com"], BODY)
    deadline = time.monotonic() + 10
    while "recording the attempt" not in relay.log() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "suppression refused by the test" in relay.log()
    state = db.execute("SELECT state FROM queue_recipients").fetchone()[0]
    dsns = db.execute("SELECT count(*) FROM queue_messages WHERE kind = 'dsn'").fetchone()[0]
    assert (state, dsns) == ("active", 0)  # nothing of the bounce was written either
    db.execute("DROP TRIGGER refuse_suppression")
    db.close()
    wait_states(relay.data_dir, {"gone@example.com": "bounced"})  # the retry writes all of it
    assert entry(relay.data_dir, "gone@example.com") is not None


# --------------------------------------------------------------------------- DNS


def test_nxdomain_seen_again_later_suppresses_the_domain_for_a_while(start_relay, dns_server):
    relay = start_relay(policy={"dns_confirm_after": 1.5, "dns_expiry": 3600.0})
    relay.send("sender@example.org", ["x@gone.example"], BODY)
    wait_states(relay.data_dir, {"x@gone.example": "bounced"})
    relay.send("sender@example.org", ["y@gone.example"], BODY)  # too soon: still one sighting
    wait_states(relay.data_dir, {"y@gone.example": "bounced"})
    assert entry(relay.data_dir, "gone.example") is None
    time.sleep(1.6)
    relay.send("sender@example.org", ["z@gone.example"], BODY)
    wait_states(relay.data_dir, {"z@gone.example": "bounced"})
    e = entry(relay.data_dir, "anyone@gone.example")
    assert e is not None
    assert (e.kind, e.address, e.reason, e.evidence) == ("domain", "gone.example",
                                                         "hostunknown", "dns")  # fmt: skip
    assert e.expires is not None and 3500 < e.expires - time.time() <= 3600


def test_null_mx_seen_again_later_suppresses_the_domain(start_relay, dns_server):
    dns_server.null_mx("nomail.example")
    relay = start_relay(policy={"dns_confirm_after": 1.0})
    relay.send("sender@example.org", ["x@nomail.example"], BODY)
    wait_states(relay.data_dir, {"x@nomail.example": "bounced"})
    time.sleep(1.1)
    relay.send("sender@example.org", ["y@nomail.example"], BODY)
    wait_states(relay.data_dir, {"y@nomail.example": "bounced"})
    e = entry(relay.data_dir, "nomail.example")
    assert e is not None and e.kind == "domain" and e.status == "5.1.10"
    assert e.expires is not None and e.expires - time.time() > 29 * 86400  # default 30 days


def test_a_delivery_between_two_dns_answers_starts_the_count_again(
    start_relay, dns_server, test_mx
):
    relay = start_relay(policy={"dns_confirm_after": 1.0})
    relay.send("sender@example.org", ["x@flappy.example"], BODY)
    wait_states(relay.data_dir, {"x@flappy.example": "bounced"})
    dns_server.add("flappy.example", "MX", "10 mx.flappy.example.", ttl=1)
    dns_server.add("mx.flappy.example", "A", "127.0.0.1", ttl=1)
    time.sleep(1.1)  # the stub's negative answers are cached for a second
    relay.send("sender@example.org", ["y@flappy.example"], BODY)
    wait_states(relay.data_dir, {"y@flappy.example": "delivered"})
    dns_server.nxdomain("flappy.example")
    time.sleep(1.1)
    relay.send("sender@example.org", ["z@flappy.example"], BODY)
    wait_states(relay.data_dir, {"z@flappy.example": "bounced"})
    assert entry(relay.data_dir, "flappy.example") is None

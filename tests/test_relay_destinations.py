"""Where a real relay refuses to connect: DNS answers into loopback or private space,
address literals, and its own listener (a configuration error, never a mail loop)."""

from __future__ import annotations

import sqlite3

import pytest

from tests.fixtures.net import free_port
from tests.fixtures.relay import route_to_mx
from tests.test_relay_bounces import delivery_status, suppressed
from tests.test_relay_delivery import BODY, tried, wait_states

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("address", ["127.0.0.1", "10.0.0.5", "169.254.169.254"])
def test_mx_pointing_into_non_public_space_is_deferred_without_connecting(
    start_relay, dns_server, test_mx, address
):
    dns_server.add("example.com", "MX", "10 mx.example.com.")
    dns_server.add("mx.example.com", "A", address)
    relay = start_relay(delivery={"allowed_destination_networks": [], "retry_initial": 30.0})
    relay.send("s@example.org", ["r@example.com"], BODY)
    state, status, reason, diag = tried(relay.data_dir)
    assert (state, status, reason) == ("queued", "4.4.4", "networkerror")
    assert f"mx.example.com[{address}] is " in diag
    assert test_mx.connections == 0


def test_address_literal_is_bounced_unless_allowed(start_relay, test_mx, relay_dsn_mx):
    relay = start_relay()
    relay.send("s@example.org", ["y@[127.0.0.1]"], BODY)
    (dsn,) = relay_dsn_mx.wait_for(1)
    assert "Status: 5.7.1" in delivery_status(dsn)
    assert "delivery.allow_address_literals" in delivery_status(dsn)
    wait_states(relay.data_dir, {"y@[127.0.0.1]": "bounced"})
    assert test_mx.connections == 0
    assert suppressed(relay.data_dir, "y@[127.0.0.1]") is None


def test_allowed_address_literal_is_delivered(start_relay, test_mx):
    relay = start_relay(delivery={"allow_address_literals": True})
    relay.send("s@example.org", ["y@[127.0.0.1]"], BODY)
    (got,) = test_mx.wait_for(1)
    assert got.rcpt_tos == ["y@[127.0.0.1]"]


def test_mx_that_is_our_own_listener_is_a_configuration_error_not_a_loop(
    start_relay, dns_server, test_mx
):
    route_to_mx(dns_server, "example.com")
    port = free_port()
    relay = start_relay(
        relay={"listen": f"127.0.0.1:{port}"},
        delivery={"port": port, "retry_initial": 30.0},
    )
    relay.send("s@example.org", ["r@example.com"], BODY)
    state, status, reason, diag = tried(relay.data_dir)
    assert (state, status, reason) == ("queued", "4.4.6", "networkerror")
    assert diag.startswith("Configuration error: mail for example.com would loop back")
    assert "is relay.listen" in diag
    conn = sqlite3.connect(relay.data_dir / "smtpguard.db")
    assert conn.execute("SELECT count(*) FROM queue_messages").fetchone() == (1,)

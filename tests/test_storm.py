"""The storm breaker end to end: a destination calling everyone dead suppresses only a few."""

from __future__ import annotations

import json
import smtplib
import urllib.request

import pytest

from smtpguard.store.suppression import SuppressionStore
from tests.fixtures.cli import _run
from tests.fixtures.net import free_port
from tests.fixtures.relay import route_to_mx
from tests.test_relay_delivery import BODY, wait_states

pytestmark = pytest.mark.slow

BURST = 200


def test_a_burst_of_user_unknown_leaves_the_rest_pending_until_discarded(
    start_relay, dns_server, test_mx
):
    route_to_mx(dns_server, "storm.example")
    test_mx.script("*", "550 5.1.1 User unknown")  # every recipient, Gmail December 2020
    metrics_port = free_port()
    relay = start_relay(dsn={"enabled": False}, metrics={"listen": f"127.0.0.1:{metrics_port}"})
    rcpts = [f"user{i}@storm.example" for i in range(BURST)]
    with smtplib.SMTP(relay.host, relay.port, local_hostname="client.test", timeout=30) as s:
        for rcpt in rcpts:
            s.sendmail("sender@example.org", [rcpt], BODY)
    wait_states(relay.data_dir, dict.fromkeys(rcpts, "bounced"), timeout=60)

    with SuppressionStore.open(relay.data_dir) as store:
        enforced = [e.address for e in store.list_page(limit=None)]
        pending = store.pending()
    assert len(enforced) == 10  # storm_share 20% of storm_min_attempts 50
    assert len(pending) == BURST - 10
    assert {p.destination for p in pending} == {"storm.example"}
    assert "suppression storm at storm.example" in relay.log()
    metrics = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5)
    assert 'smtpguard_suppression_storm{destination="storm.example"} 1.0' in metrics.read().decode()

    cli = ["--data-dir", str(relay.data_dir), "suppression", "pending"]
    listed = _run([*cli, "--format", "json", "--limit", "0"])
    assert len(json.loads(listed.stdout)) == BURST - 10
    discarded = _run([*cli, "--discard", "--destination", "storm.example"])
    assert discarded.returncode == 0, discarded.stderr
    assert discarded.stdout.strip() == f"discarded {BURST - 10} pending entries"
    with SuppressionStore.open(relay.data_dir) as store:
        assert store.pending() == []
        assert len(store.list_page(limit=None)) == 10
        some = pending[0].entry.address
        assert [h.action for h in store.history(some)] == ["pending", "discarded"]

"""The /metrics endpoint of a real relay, scraped over HTTP before and after traffic."""

from __future__ import annotations

import smtplib
import time
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.fixtures.net import free_port
from tests.fixtures.relay import route_to_mx
from tests.test_relay_delivery import BODY, wait_states

pytestmark = pytest.mark.slow

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(port: int) -> tuple[str, Samples]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return text, samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_counters_and_gauges_move_with_traffic(start_relay, dns_server, test_mx):
    route_to_mx(dns_server, "example.com")
    test_mx.script("gone@example.com", "550 5.1.1 <gone@example.com>: User unknown")
    test_mx.script("later@example.com", "452 4.2.2 Mailbox full")
    port = free_port()
    relay = start_relay(
        metrics={"listen": f"127.0.0.1:{port}", "queue_refresh": 0.2},
        delivery={"retry_initial": 600.0, "retry_max": 600.0},
        dsn={"enabled": False},
    )
    text, before = scrape(port)
    assert value(before, "smtpguard_queue_messages") == 0
    assert not [line for line in text.splitlines() if "_created" in line]

    relay.send("s@example.org", ["ok@example.com", "gone@example.com", "later@example.com"], BODY)
    wait_states(relay.data_dir, {"ok@example.com": "delivered", "gone@example.com": "bounced",
                                 "later@example.com": "queued"})  # fmt: skip
    with pytest.raises(smtplib.SMTPRecipientsRefused):
        relay.send("s@example.org", ["gone@example.com"], BODY)
    time.sleep(0.6)  # a queue recount or two
    text, after = scrape(port)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("smtpguard_deliveries_total", result="delivered") == 1
    assert moved("smtpguard_deliveries_total", result="bounced") == 1
    assert moved("smtpguard_deliveries_total", result="deferred") == 1
    for result in ("delivered", "bounced", "deferred"):
        assert moved("smtpguard_domain_deliveries_total", domain="example.com", result=result) == 1
    assert moved("smtpguard_sink_verdicts_total", evidence="rcpt-reply", outcome="suppressed") == 1
    assert moved("smtpguard_suppression_hits_total", evidence="rcpt-reply") == 1
    assert value(after, "smtpguard_queue_messages") == 1
    assert value(after, "smtpguard_queue_recipients", state="queued") == 1
    assert value(after, "smtpguard_queue_recipients", state="active") == 0
    assert 0 < value(after, "smtpguard_queue_oldest_age_seconds") < 60
    assert value(after, "smtpguard_queue_counted_timestamp_seconds") > time.time() - 5
    assert not [line for line in text.splitlines() if "_created" in line]

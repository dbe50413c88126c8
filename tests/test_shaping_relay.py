"""Traffic shaping in a real relay, against scripted MXs that record arrival times,
concurrent sessions and throttle replies (tests/fixtures/ratemx.py)."""

from __future__ import annotations

import json
import smtplib
import time
from pathlib import Path

import pytest

from tests.fixtures.net import free_port
from tests.fixtures.ratemx import RateMx
from tests.fixtures.relay import RelayProcess

pytestmark = pytest.mark.slow

BODY = b"Subject: shaped\r\n\r\nhello\r\n"


def shaping_file(tmp_path: Path, text: str) -> str:
    path = tmp_path / "shaping.toml"
    path.write_text(text)
    return str(path)


def mx_for(dns, domain: str, mx_host: str, address: str = "127.0.0.1") -> None:
    dns.add(domain, "MX", f"10 {mx_host}.")
    dns.add(mx_host, "A", address)


def send_many(relay: RelayProcess, rcpts: list[str]) -> None:
    """One message per recipient, over one SMTP session to the relay."""
    with smtplib.SMTP(relay.host, relay.port, local_hostname="client.test", timeout=30) as s:
        for r in rcpts:
            s.sendmail("s@example.org", [r], BODY)


def start_shaped(start_relay, mx: RateMx, tmp_path: Path, shaping: str, **sections):
    delivery = {"port": mx.port, **sections.pop("delivery", {})}
    return start_relay(
        delivery=delivery, shaping={"file": shaping_file(tmp_path, shaping)}, **sections
    )


def busiest_second(times: list[float]) -> int:
    """The most arrivals within any one-second window."""
    times = sorted(times)
    best, j = 0, 0
    for i, t in enumerate(times):
        while times[j] < t - 1.0:
            j += 1
        best = max(best, i - j + 1)
    return best


def test_configured_rate_is_kept_within_ten_percent(
    start_relay, dns_server, make_rate_mx, tmp_path
):
    mx = make_rate_mx()
    mx_for(dns_server, "example.com", "mx.example.com")
    relay = start_shaped(start_relay, mx, tmp_path, '[defaults]\nrate = "20/s"\nconnections = 3\n')
    send_many(relay, [f"u{i}@example.com" for i in range(200)])
    mx.wait_for(200, timeout=30)
    times = sorted(mx.times())
    rate = (len(times) - 1) / (times[-1] - times[0])
    assert 18.0 <= rate <= 22.0, rate
    assert busiest_second(times) <= 22
    assert mx.max_open <= 3


def test_concurrency_never_exceeds_the_site_limit(start_relay, dns_server, make_rate_mx, tmp_path):
    mx = make_rate_mx(data_delay=0.2)
    mx_for(dns_server, "example.com", "mx.example.com")
    relay = start_shaped(start_relay, mx, tmp_path, "[defaults]\nconnections = 3\n")
    send_many(relay, [f"u{i}@example.com" for i in range(40)])
    mx.wait_for(40, timeout=30)
    assert mx.max_open == 3


def test_domains_whose_mx_share_a_suffix_share_one_budget(
    start_relay, dns_server, make_rate_mx, tmp_path
):
    mx = make_rate_mx()
    mx_for(dns_server, "one.example", "mx1.bulk.test")
    mx_for(dns_server, "two.example", "mx2.bulk.test")
    relay = start_shaped(
        start_relay, mx, tmp_path,
        '[provider.bulk]\nsuffixes = [".bulk.test"]\nrate = "10/s"\nsource = "test"\n',
    )  # fmt: skip
    rcpts = [f"u{i}@{d}" for i in range(25) for d in ("one.example", "two.example")]
    send_many(relay, rcpts)
    mx.wait_for(50, timeout=30)
    times = sorted(mx.times())
    assert (len(times) - 1) / (times[-1] - times[0]) <= 11.0
    assert busiest_second(times) <= 11


def test_a_blackholed_site_does_not_hold_up_another(
    start_relay, dns_server, make_rate_mx, tmp_path
):
    mx = make_rate_mx()
    hole = make_rate_mx(blackhole=True)
    mx_for(dns_server, "fine.example", "mx.fine.example")
    relay = start_shaped(
        start_relay, mx, tmp_path, "[defaults]\nconnections = 2\n",
        delivery={"concurrency": 3, "routes": {"hole.example": f"127.0.0.1:{hole.port}"}},
    )  # fmt: skip
    send_many(relay, [f"u{i}@hole.example" for i in range(250)])
    sent = time.monotonic()
    send_many(relay, [f"u{i}@fine.example" for i in range(20)])
    mx.wait_for(20, timeout=5)
    assert time.monotonic() - sent < 5


def test_automation_rule_suspends_the_site_and_resumes_after_the_duration(
    start_relay, dns_server, make_rate_mx, tmp_path
):
    tss04 = (
        "421 4.7.0 [TSS04] Messages from 127.0.0.1 temporarily deferred due to unexpected volume"
    )
    mx = make_rate_mx(mail_replies=[tss04])
    mx_for(dns_server, "example.com", "mx.example.com")
    relay = start_shaped(
        start_relay, mx, tmp_path,
        # One connection: a message already on another connection when the reply came
        # would be an attempt that started before the rule fired, not one it let through.
        '[defaults]\nconnections = 1\n'
        '[[automation]]\nid = "yahoo.tss04"\nmatch = \'\\[TSS04\\]\'\naction = "suspend"\n'
        'duration = "3s"\n',
    )  # fmt: skip
    send_many(relay, [f"u{i}@example.com" for i in range(5)])
    mx.wait_for(5, timeout=15)
    throttled_at = mx.mail_attempts[0]
    assert min(mx.mail_attempts[1:]) >= throttled_at + 3.0
    assert max(mx.times()) < throttled_at + 3.0 + 5.0


def test_queue_sites_shows_each_site_as_json(start_relay, dns_server, make_rate_mx, tmp_path):
    mx = make_rate_mx()
    mx_for(dns_server, "example.com", "mx.example.com")
    relay = start_shaped(start_relay, mx, tmp_path, '[defaults]\nrate = "100/min"\n')
    send_many(relay, ["a@example.com"])
    mx.wait_for(1, timeout=10)
    deadline = time.monotonic() + 10
    while True:
        out = relay.queue_cli("sites", "--format", "json")
        rows = json.loads(out.stdout)["sites"] if out.returncode == 0 else []
        sites = {s["site"]: s for s in rows}
        if "mx:mx.example.com" in sites or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    site = sites["mx:mx.example.com"]
    assert site["configured_rate"] == pytest.approx(100 / 60)
    assert site["configured_connections"] == 10
    assert site["suspended_until"] == 0.0


def test_learns_a_sites_limits_instead_of_hammering_it(
    start_relay, dns_server, make_rate_mx, tmp_path
):
    """An MX allowing 2 sessions and 10 messages/s, answering 421 4.7.0 beyond them:
    after the first minute under 2% of attempts are throttled, at >= 80% of its rate."""
    rate = 10.0
    mx = make_rate_mx(sessions=2, rate=rate, burst=rate)
    mx_for(dns_server, "example.com", "mx.example.com")
    relay = start_shaped(start_relay, mx, tmp_path, "# the shipped defaults: no rate\n")
    start = time.time()
    send_many(relay, [f"u{i}@example.com" for i in range(1000)])
    window = (start + 60.0, start + 75.0)
    time.sleep(max(window[1] - time.time(), 0) + 0.5)
    inside = lambda t: window[0] <= t < window[1]  # noqa: E731
    throttles = sum(1 for t, _ in mx.throttled if inside(t))
    attempts = sum(1 for t in mx.mail_attempts if inside(t)) + sum(
        1 for t, kind in mx.throttled if kind == "greeting" and inside(t)
    )
    delivered = sum(1 for t in mx.times() if inside(t))
    assert attempts > 0
    assert throttles / attempts < 0.02, (throttles, attempts)
    assert delivered / (window[1] - window[0]) >= 0.8 * rate, delivered


def test_blackhole_port_is_free(make_rate_mx):
    """The fixtures' blackhole accepts TCP and says nothing (what the fairness test relies on)."""
    import socket

    hole = make_rate_mx(blackhole=True)
    with socket.create_connection(("127.0.0.1", hole.port), timeout=2) as s:
        s.settimeout(0.5)
        with pytest.raises(TimeoutError):
            s.recv(10)
    assert free_port() != hole.port


def test_site_metrics_show_throttles_and_limits(start_relay, dns_server, make_rate_mx, tmp_path):
    from tests.test_relay_metrics import scrape, value

    mx = make_rate_mx(mail_replies=["421 4.7.0 Too many messages, slow down"])
    mx_for(dns_server, "example.com", "mx.example.com")
    port = free_port()
    relay = start_shaped(start_relay, mx, tmp_path, '[defaults]\nrate = "20/s"\n',
                         metrics={"listen": f"127.0.0.1:{port}"})  # fmt: skip
    send_many(relay, ["a@example.com", "b@example.com"])
    mx.wait_for(2, timeout=15)
    site = "mx:mx.example.com"
    deadline = time.monotonic() + 10
    while True:
        _, samples = scrape(port)
        limit = value(samples, "smtpguard_site_rate", site=site, kind="configured")
        if limit or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert limit == 20.0
    assert value(samples, "smtpguard_site_throttles_total", site=site) == 1
    assert value(samples, "smtpguard_site_rate", site=site, kind="current") < 20.0


def test_queue_sites_without_a_relay_snapshot_is_a_one_line_error(cli):
    result = cli("queue", "sites")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "no shaping state" in result.stderr

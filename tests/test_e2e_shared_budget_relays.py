"""Two relay processes, one Redis budget, one test MX that records arrival times.

Each relay has its own queue and its own shaper; their only link is
``shaping.shared``. The site (the test MX's host) has 10 messages/s: together
they must keep it, and with Redis killed mid-run they must go on delivering at
their local limits.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.fixtures.mx import TestMx
from tests.fixtures.redisd import RedisServer
from tests.fixtures.relay import RelayProcess, route_to_mx

RATE = 10.0
PER_RELAY = 40

pytestmark = pytest.mark.slow


def two_relays(
    start_relay: Callable[..., RelayProcess], tmp_path: Path, redis_url: str
) -> list[RelayProcess]:
    limits = tmp_path / "shaping.toml"
    limits.write_text(f'[defaults]\nrate = "{RATE:g}/s"\nburst = 1\n')
    shaping = {"file": str(limits), "shared": redis_url}
    return [start_relay(data_dir=tmp_path / f"node-{name}", shaping=shaping) for name in ("a", "b")]


def submit_all(relays: list[RelayProcess], count: int) -> None:
    """``count`` messages to each relay, the relays fed at the same time."""

    def feed(relay: RelayProcess, name: int) -> None:
        for n in range(count):
            relay.send(
                f"node{name}@sender.test", [f"r{name}-{n}@example.com"],
                f"Subject: {name} {n}\r\n\r\nmessage {n} through relay {name}\r\n".encode(),
            )  # fmt: skip

    threads = [threading.Thread(target=feed, args=(r, i)) for i, r in enumerate(relays)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)


def rate_of(arrivals: list[float]) -> float:
    """Messages per second between the first arrival and the last."""
    arrivals = sorted(arrivals)
    return (len(arrivals) - 1) / (arrivals[-1] - arrivals[0])


def busiest(arrivals: list[float], window: float) -> int:
    """The most arrivals in any ``window`` seconds."""
    arrivals = sorted(arrivals)
    most, first = 0, 0
    for last, t in enumerate(arrivals):
        while t - arrivals[first] > window:
            first += 1
        most = max(most, last - first + 1)
    return most


def test_two_relays_on_one_redis_budget_together_keep_its_rate(
    start_relay: Callable[..., RelayProcess], tmp_path: Path, dns_server, test_mx: TestMx,  # type: ignore[no-untyped-def]
    redis_url: str,
) -> None:  # fmt: skip
    route_to_mx(dns_server, "example.com")
    relays = two_relays(start_relay, tmp_path, redis_url)
    submit_all(relays, PER_RELAY)
    messages = test_mx.wait_for(2 * PER_RELAY, timeout=60)
    arrivals = [m.received_at for m in messages]
    rate = rate_of(arrivals)
    assert abs(rate - RATE) <= 0.1 * RATE, f"{rate:.2f} msgs/s"
    # No bursts either: any 2 s hold at most 2 s of tokens and the burst of 1 (and
    # two for the spread of arrival times on a busy machine).
    assert busiest(arrivals, 2.0) <= 2 * RATE + 1 + 2
    assert {m.mail_from for m in messages} == {"node0@sender.test", "node1@sender.test"}


def test_redis_killed_mid_run_two_relays_go_on_at_local_limits(
    start_relay: Callable[..., RelayProcess], tmp_path: Path, dns_server, test_mx: TestMx,  # type: ignore[no-untyped-def]
    make_redis_server: Callable[[], RedisServer],
) -> None:  # fmt: skip
    route_to_mx(dns_server, "example.com")
    server = make_redis_server()
    relays = two_relays(start_relay, tmp_path, server.url())
    submit_all(relays, PER_RELAY)
    test_mx.wait_for(20, timeout=30)
    killed_at = time.time()
    server.kill()
    messages = test_mx.wait_for(2 * PER_RELAY, timeout=60)
    # Nothing is lost or stuck, and the local limits still hold: each relay its own
    # 10/s, together at most twice the shared rate.
    after = [m.received_at for m in messages if m.received_at > killed_at + 0.5]
    assert rate_of(after) <= 2 * RATE * 1.1, f"{rate_of(after):.2f} msgs/s"
    for relay in relays:
        assert relay.log().count("unreachable") == 1, relay.log()[-3000:]

"""The fleet's shared site budgets: one token bucket per site in a real Redis.

Each test has a database of its own on the session's redis-server; tests that
kill or hang Redis start one of their own.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator

import pytest
from prometheus_client import REGISTRY

from smtpguard.shaping.redis_budget import KEY_PREFIX, RedisBudget
from tests.fixtures.net import free_port
from tests.fixtures.redisd import RedisServer

#: Generous bound of one acquire while Redis is down or hung (the budget's timeout is 0.1 s).
FALLBACK_BOUND = 0.5


def metric(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0


@pytest.fixture
async def budgets() -> AsyncIterator[Callable[..., RedisBudget]]:
    """Factory of RedisBudgets (one per 'node'), closed at teardown."""
    made: list[RedisBudget] = []

    def make(url: str, **kwargs: object) -> RedisBudget:
        # A second per call unless the test is about timeouts: on a loaded machine a
        # call may take more than 100 ms, and these tests are about the bucket.
        kwargs.setdefault("timeout", 1.0)
        budget = RedisBudget(url, **kwargs)  # type: ignore[arg-type]
        made.append(budget)
        return budget

    yield make
    for budget in made:
        await budget.aclose()


async def test_a_full_shared_bucket_grants_its_burst_then_says_how_long(
    redis_url: str, budgets: Callable[..., RedisBudget]
) -> None:
    budget = budgets(redis_url)
    grants = [await budget.acquire("site", 2.0, 3) for _ in range(3)]
    wait = await budget.acquire("site", 2.0, 3)
    assert grants == [0.0, 0.0, 0.0]
    assert 0.4 < wait <= 0.5


async def test_two_nodes_share_one_bucket(
    redis_url: str, budgets: Callable[..., RedisBudget]
) -> None:
    a, b = budgets(redis_url), budgets(redis_url)
    assert await a.acquire("site", 1.0, 1) == 0.0
    assert await b.acquire("site", 1.0, 1) > 0.0


async def test_a_refused_acquire_takes_no_token(
    redis_url: str, budgets: Callable[..., RedisBudget]
) -> None:
    budget = budgets(redis_url)
    await budget.acquire("site", 5.0, 1)
    first = await budget.acquire("site", 5.0, 1)
    await asyncio.sleep(first + 0.02)
    assert await budget.acquire("site", 5.0, 1) == 0.0


async def test_concurrent_acquirers_on_two_nodes_never_exceed_rate_times_time_plus_burst(
    redis_url: str, budgets: Callable[..., RedisBudget]
) -> None:
    rate, burst, duration = 40.0, 5.0, 1.5
    nodes = [budgets(redis_url), budgets(redis_url)]
    granted: list[float] = []
    start = time.monotonic()

    async def worker(budget: RedisBudget) -> None:
        while time.monotonic() - start < duration:
            wait = await budget.acquire("busy", rate, burst)
            if wait == 0.0:
                granted.append(time.monotonic())
            else:
                await asyncio.sleep(min(wait, 0.02))

    await asyncio.gather(*(worker(node) for node in nodes for _ in range(10)))
    elapsed = time.monotonic() - start
    ceiling = rate * elapsed + burst
    assert len(granted) <= ceiling + 1, f"{len(granted)} tokens in {elapsed:.2f}s"
    # ...and the bucket did grant: the limit is the rate, not a failure to answer.
    assert len(granted) >= 0.75 * rate * duration
    assert all(node.shared for node in nodes)


async def test_an_empty_shared_bucket_refills_at_its_rate(
    redis_url: str, budgets: Callable[..., RedisBudget]
) -> None:
    budget = budgets(redis_url)
    for _ in range(2):
        await budget.acquire("site", 10.0, 2)
    await asyncio.sleep(0.25)  # 2.5 tokens' worth, capped at the burst of 2
    grants = [await budget.acquire("site", 10.0, 2) for _ in range(3)]
    assert grants[:2] == [0.0, 0.0]
    assert grants[2] > 0.0


async def test_a_lowered_rate_applies_from_the_next_acquire(
    redis_url: str, budgets: Callable[..., RedisBudget]
) -> None:
    budget = budgets(redis_url)
    assert await budget.acquire("site", 100.0, 10) == 0.0
    # The adaptive controller cuts the site to 1/s with a burst of 1: the nine
    # tokens left are capped to one, and the next one is a second away.
    assert await budget.acquire("site", 1.0, 1) == 0.0
    wait = await budget.acquire("site", 1.0, 1)
    assert 0.9 < wait <= 1.0


async def test_a_bucket_is_a_key_named_for_its_site_that_expires_after_one_full_refill(
    redis_server: RedisServer, redis_url: str, budgets: Callable[..., RedisBudget]
) -> None:
    db = int(redis_url.rsplit("/", 1)[1])
    budget = budgets(redis_url)
    await budget.acquire("google", 4.0, 2)  # one token short: 0.25 s to refill
    with redis_server.client(db) as client:
        keys = client.keys("*")
        ttl_ms = client.pttl(f"{KEY_PREFIX}google")
        assert keys == [f"{KEY_PREFIX}google".encode()]
        assert 0 < ttl_ms <= 1250
        time.sleep(ttl_ms / 1000 + 0.1)
        assert client.exists(f"{KEY_PREFIX}google") == 0


async def test_redis_killed_acquire_answers_from_local_limits_within_the_timeout(
    make_redis_server: Callable[[], RedisServer], budgets: Callable[..., RedisBudget]
) -> None:
    server = make_redis_server()
    budget = budgets(server.url(), timeout=0.1)
    await budget.acquire("site", 10.0, 5)
    fallbacks = metric("smtpguard_shaping_shared_fallbacks_total")
    server.kill()
    started = time.monotonic()
    wait = await budget.acquire("site", 10.0, 5)
    took = time.monotonic() - started
    assert wait == 0.0  # the local bucket starts full
    assert took < FALLBACK_BOUND
    assert not budget.shared
    assert metric("smtpguard_shaping_shared_fallbacks_total") == fallbacks + 1
    assert metric("smtpguard_shaping_shared_up") == 0.0


async def test_redis_killed_is_warned_about_once_not_per_message(
    make_redis_server: Callable[[], RedisServer],
    budgets: Callable[..., RedisBudget],
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = make_redis_server()
    budget = budgets(server.url(), timeout=0.1)
    await budget.acquire("site", 10.0, 5)
    outages = metric("smtpguard_shaping_shared_outages_total")
    server.kill()
    with caplog.at_level(logging.WARNING, logger="smtpguard.shaping"):
        await asyncio.gather(*(budget.acquire("site", 10.0, 5) for _ in range(50)))
        for _ in range(50):
            await budget.acquire("site", 10.0, 5)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "unreachable" in warnings[0] and f":{server.port}/0" in warnings[0]
    assert metric("smtpguard_shaping_shared_outages_total") == outages + 1


async def test_a_hung_redis_never_stalls_an_acquire(
    make_redis_server: Callable[[], RedisServer], budgets: Callable[..., RedisBudget]
) -> None:
    server = make_redis_server()
    budget = budgets(server.url(), timeout=0.1)
    await budget.acquire("site", 10.0, 5)
    server.pause()
    slowest = 0.0
    started = time.monotonic()
    try:
        while budget.shared and time.monotonic() - started < 5:
            t0 = time.monotonic()
            await asyncio.gather(*(budget.acquire("site", 10.0, 5) for _ in range(5)))
            slowest = max(slowest, time.monotonic() - t0)
    finally:
        server.resume()
    # Every acquire answered within about its timeout; after three timeouts without
    # an answer the node paces by its local limits.
    assert slowest < FALLBACK_BOUND
    assert not budget.shared
    assert time.monotonic() - started < 1.0


class _CountingListener:
    """A TCP listener standing where Redis was: counts connection attempts, answers nothing."""

    def __init__(self, port: int) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", port))
        self.sock.listen(128)
        self.sock.settimeout(0.05)
        self.accepted = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.accepted += 1
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self.sock.close()


@pytest.fixture
def listener_on() -> Iterator[Callable[[int], _CountingListener]]:
    made: list[_CountingListener] = []

    def make(port: int) -> _CountingListener:
        made.append(_CountingListener(port))
        return made[-1]

    yield make
    for listener in made:
        listener.close()


async def test_while_redis_is_down_messages_do_not_each_reconnect(
    make_redis_server: Callable[[], RedisServer],
    budgets: Callable[..., RedisBudget],
    listener_on: Callable[[int], _CountingListener],
) -> None:
    server = make_redis_server()
    budget = budgets(server.url(), timeout=0.1)
    await budget.acquire("site", 10.0, 5)
    server.kill()
    await budget.acquire("site", 10.0, 5)  # notices the outage
    broken = listener_on(server.port)  # something answers TCP there, but not as Redis
    for _ in range(10):
        await asyncio.gather(*(budget.acquire("site", 1000.0, 5) for _ in range(50)))
        await asyncio.sleep(0.05)
    # 500 decisions in ~0.5 s, within the first backoff (1 s): no connection at all.
    assert broken.accepted == 0
    assert not budget.shared


async def test_shared_budget_returns_once_redis_answers_again(
    make_redis_server: Callable[[], RedisServer],
    budgets: Callable[..., RedisBudget],
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = make_redis_server()
    budget = budgets(server.url())
    await budget.acquire("site", 10.0, 5)
    server.kill()
    await budget.acquire("site", 10.0, 5)
    assert not budget.shared
    server.start()
    deadline = time.monotonic() + 5.0  # first probe after 0.8-1.2 s
    with caplog.at_level(logging.INFO, logger="smtpguard.shaping"):
        while not budget.shared and time.monotonic() < deadline:
            await budget.acquire("site", 10.0, 5)
            await asyncio.sleep(0.05)
    assert budget.shared
    assert metric("smtpguard_shaping_shared_up") == 1.0
    assert any("answers again" in r.getMessage() for r in caplog.records)
    with server.client() as client:
        assert client.exists(f"{KEY_PREFIX}site") == 1


async def test_local_fallback_takes_its_share_of_the_rate(
    make_redis_server: Callable[[], RedisServer], budgets: Callable[..., RedisBudget]
) -> None:
    server = make_redis_server()
    budget = budgets(server.url(), fallback_share=0.5)
    await budget.acquire("site", 10.0, 4)
    server.kill()
    grants = [await budget.acquire("site", 10.0, 4) for _ in range(3)]
    # Half of a burst of 4 is 2; half of 10/s is a token every 0.2 s.
    assert grants[:2] == [0.0, 0.0]
    assert 0.15 < grants[2] <= 0.2


async def test_one_slow_answer_asks_again_shortly_without_leaving_redis(
    make_redis_server: Callable[[], RedisServer], budgets: Callable[..., RedisBudget]
) -> None:
    server = make_redis_server()
    budget = budgets(server.url(), timeout=0.1)
    await budget.acquire("site", 10.0, 5)
    fallbacks = metric("smtpguard_shaping_shared_fallbacks_total")
    server.pause()
    try:
        wait = await budget.acquire("site", 10.0, 5)
    finally:
        server.resume()
    assert wait == 0.1  # ask again after the timeout; no local token beside the shared one
    assert budget.shared
    assert metric("smtpguard_shaping_shared_fallbacks_total") == fallbacks
    assert await budget.acquire("site", 10.0, 5) == 0.0


async def test_a_node_started_while_redis_is_down_paces_locally_at_once(
    budgets: Callable[..., RedisBudget], caplog: pytest.LogCaptureFixture
) -> None:
    budget = budgets(f"redis://127.0.0.1:{free_port()}/0", timeout=0.1)
    with caplog.at_level(logging.WARNING, logger="smtpguard.shaping"):
        started = time.monotonic()
        grants = [await budget.acquire("site", 2.0, 2) for _ in range(3)]
    assert time.monotonic() - started < FALLBACK_BOUND
    assert grants[:2] == [0.0, 0.0] and 0.4 < grants[2] <= 0.5
    assert not budget.shared
    assert "Connection refused" in caplog.text or "connecting to" in caplog.text


async def test_a_local_key_is_this_nodes_own_bucket(
    redis_server: RedisServer, redis_url: str, budgets: Callable[..., RedisBudget]
) -> None:
    a = budgets(redis_url, local_keys=("*global*",))
    b = budgets(redis_url, local_keys=("*global*",))
    assert await a.acquire("*global*", 1.0, 1) == 0.0
    assert await b.acquire("*global*", 1.0, 1) == 0.0  # b's own cap, not a's
    with redis_server.client(int(redis_url.rsplit("/", 1)[1])) as client:
        assert client.keys("*") == []

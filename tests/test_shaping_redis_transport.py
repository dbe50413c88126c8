"""How a node reaches Redis: a unix socket, or TLS that verifies the server."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from smtpguard.shaping.redis_budget import RedisBudget
from tests.fixtures.certs import self_signed
from tests.fixtures.redisd import RedisServer


@pytest.fixture
async def budgets() -> AsyncIterator[Callable[..., RedisBudget]]:
    made: list[RedisBudget] = []

    def make(url: str) -> RedisBudget:
        made.append(RedisBudget(url, timeout=0.5))  # TLS handshakes on a loaded machine
        return made[-1]

    yield make
    for budget in made:
        await budget.aclose()


async def test_a_unix_socket_url_shares_the_budget(
    make_redis_server: Callable[..., RedisServer], budgets: Callable[..., RedisBudget]
) -> None:
    server = make_redis_server(unixsocket=True)
    a, b = budgets(server.unix_url(2)), budgets(server.unix_url(2))
    assert await a.acquire("site", 1.0, 1) == 0.0
    assert await b.acquire("site", 1.0, 1) > 0.0
    assert a.shared and b.shared


async def test_rediss_with_the_servers_ca_shares_the_budget(
    make_redis_server: Callable[..., RedisServer],
    budgets: Callable[..., RedisBudget],
    tmp_path: Path,
) -> None:
    cert = self_signed(tmp_path / "pki", "redis.test", ips=("127.0.0.1",))
    server = make_redis_server(tls=cert)
    url = f"{server.url(0)}?ssl_ca_certs={cert.cert}"
    a, b = budgets(url), budgets(url)
    assert await a.acquire("site", 1.0, 1) == 0.0
    assert await b.acquire("site", 1.0, 1) > 0.0
    assert a.shared and b.shared


async def test_rediss_with_an_unverified_certificate_is_not_used(
    make_redis_server: Callable[..., RedisServer],
    budgets: Callable[..., RedisBudget],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    cert = self_signed(tmp_path / "pki", "redis.test", ips=("127.0.0.1",))
    server = make_redis_server(tls=cert)
    budget = budgets(server.url(0))  # the system's CAs do not know this certificate
    with caplog.at_level(logging.WARNING, logger="smtpguard.shaping"):
        assert await budget.acquire("site", 1.0, 1) == 0.0  # answered locally
    assert not budget.shared
    assert "certificate verify failed" in caplog.text

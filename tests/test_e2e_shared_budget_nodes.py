"""Two sending nodes, one Redis budget, one test MX that records arrival times.

The nodes are separate processes (``tests/fixtures/pacer.py``: a RedisBudget
and an SMTP client, the shaper's loop without the queue), so they share
nothing but Redis. Together they must keep the site's 10 messages/s; when
Redis is killed mid-run they go on at their local limits.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.fixtures.mx import TestMx
from tests.fixtures.redisd import RedisServer

REPO = Path(__file__).resolve().parents[1]
RATE = 10.0

pytestmark = pytest.mark.slow


class Node:
    """One pacer process; ``lines`` collects what it printed."""

    def __init__(self, name: str, redis_url: str, mx: TestMx, count: int, workdir: Path) -> None:
        self.name = name
        self.log_path = workdir / f"node-{name}.log"
        with self.log_path.open("w") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable, "-m", "tests.fixtures.pacer", "--redis", redis_url,
                    "--port", str(mx.port), "--count", str(count), "--rate", str(RATE),
                    "--burst", "1", "--name", name,
                ],
                stdout=subprocess.PIPE, stderr=log, text=True, cwd=REPO,
            )  # fmt: skip
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.strip())

    def sent(self) -> int:
        return sum(1 for line in self.lines if line.startswith("sent "))

    def finish(self, timeout: float) -> str:
        """Wait for the node to send everything; return what it logged (stderr)."""
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)
            raise AssertionError(f"node {self.name} did not finish; sent {self.sent()}") from None
        self._reader.join(timeout=5)
        err = self.log_path.read_text()
        assert self.proc.returncode == 0, err
        return err


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[Callable[..., Node]]:
    started: list[Node] = []

    def start(name: str, redis_url: str, mx: TestMx, count: int) -> Node:
        started.append(Node(name, redis_url, mx, count, tmp_path))
        return started[-1]

    yield start
    for node in started:
        if node.proc.poll() is None:
            node.proc.kill()
            node.proc.wait(timeout=5)


def rate_of(arrivals: list[float]) -> float:
    """Messages per second between the first arrival and the last."""
    arrivals = sorted(arrivals)
    return (len(arrivals) - 1) / (arrivals[-1] - arrivals[0])


def test_two_nodes_on_one_redis_budget_together_keep_its_rate(
    redis_url: str, test_mx: TestMx, nodes: Callable[..., Node]
) -> None:
    a = nodes("a", redis_url, test_mx, 40)
    b = nodes("b", redis_url, test_mx, 40)
    a.finish(timeout=60)
    b.finish(timeout=60)
    arrivals = [m.received_at for m in test_mx.wait_for(80, timeout=10)]
    assert abs(rate_of(arrivals) - RATE) <= 0.1 * RATE, f"{rate_of(arrivals):.2f} msgs/s"
    # Both nodes sent (the budget is shared, not won by one).
    senders = {m.mail_from for m in test_mx.messages}
    assert senders == {"a@sender.test", "b@sender.test"}


def test_redis_killed_mid_run_the_nodes_go_on_at_local_limits(
    make_redis_server: Callable[[], RedisServer], test_mx: TestMx, nodes: Callable[..., Node]
) -> None:
    server = make_redis_server()
    a = nodes("a", server.url(), test_mx, 40)
    b = nodes("b", server.url(), test_mx, 40)
    deadline = time.monotonic() + 30
    while a.sent() + b.sent() < 20 and time.monotonic() < deadline:
        time.sleep(0.05)
    killed_at = time.time()
    server.kill()
    err = a.finish(timeout=60) + b.finish(timeout=60)
    messages = test_mx.wait_for(80, timeout=10)
    # Every message was delivered, and after the kill each node kept its own 10/s:
    # together about twice the shared rate, bounded by the local limits.
    after = [m.received_at for m in messages if m.received_at > killed_at + 0.5]
    assert 1.5 * RATE <= rate_of(after) <= 2 * RATE * 1.1, f"{rate_of(after):.2f} msgs/s"
    assert "local" in a.lines and "local" in b.lines, f"{a.lines} {b.lines} {err}"
    assert err.count("unreachable") == 2, err  # one warning per node, not per message

"""What a shared site budget costs per message: RedisBudget on loopback vs LocalBudget.

Starts its own ``redis-server`` (127.0.0.1, a free port, no persistence) and
times ``acquire`` one call at a time (the latency a message waits before it is
sent: p50, p99, p99.9 in microseconds), over ``--sites`` site keys, then the
throughput of ``--concurrency`` acquirers at once (what a busy relay's
delivery tasks do together). ``missed`` counts the calls Redis did not answer
within the timeout (told to ask again, or answered from the local buckets). Also times the
local fallback while Redis is killed (what a message pays during an outage
once it is noticed).

    .venv/bin/python benchmarks/budget_bench.py [--calls N] [--sites N] [--concurrency N]
"""

from __future__ import annotations

import argparse
import asyncio
import shlex
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from smtpguard.shaping.budget import LocalBudget, RateBudget  # noqa: E402
from smtpguard.shaping.redis_budget import FALLBACKS, SLOW, RedisBudget  # noqa: E402
from tests.fixtures.redisd import RedisServer  # noqa: E402

# High enough that the bucket is never the limit: the benchmark times the decision.
RATE, BURST = 1e9, 1e9


def quantiles_us(samples_ns: list[int]) -> tuple[float, float, float]:
    s = sorted(samples_ns)

    def q(p: float) -> float:
        return s[min(len(s) - 1, int(p * len(s)))] / 1000

    return q(0.5), q(0.99), q(0.999)


async def sequential(budget: RateBudget, calls: int, sites: int) -> list[int]:
    samples = []
    for i in range(calls):
        site = f"site{i % sites}"
        t0 = time.perf_counter_ns()
        await budget.acquire(site, RATE, BURST)
        samples.append(time.perf_counter_ns() - t0)
    return samples


async def concurrent(budget: RateBudget, calls: int, sites: int, width: int) -> float:
    """Acquires per second with ``width`` acquirers at once."""
    per = calls // width

    async def worker(w: int) -> None:
        for i in range(per):
            await budget.acquire(f"site{(w * per + i) % sites}", RATE, BURST)

    t0 = time.perf_counter()
    await asyncio.gather(*(worker(w) for w in range(width)))
    return per * width / (time.perf_counter() - t0)


def row(name: str, samples: list[int], rate: float | None, missed: int) -> str:
    p50, p99, p999 = quantiles_us(samples)
    through = f"{rate:>12,.0f}" if rate is not None else f"{'-':>12}"
    return f"{name:<34} {p50:>9.1f} {p99:>9.1f} {p999:>9.1f} {through} {missed:>8}"


def missed() -> int:
    return int(FALLBACKS._value.get() + SLOW._value.get())


async def main(args: argparse.Namespace) -> None:
    print(f"$ {shlex.join([sys.executable, *sys.argv])}")
    print(f"{args.calls} acquires over {args.sites} sites; concurrency {args.concurrency}")
    heads = f"{'p50 us':>9} {'p99 us':>9} {'p99.9 us':>9} {'acquires/s':>12} {'missed':>8}"
    print(f"{'budget':<34} {heads}")
    local = LocalBudget()
    await sequential(local, 1000, args.sites)  # warm-up
    samples = await sequential(local, args.calls, args.sites)
    rate = await concurrent(local, args.calls, args.sites, args.concurrency)
    print(row("LocalBudget", samples, rate, 0))

    with tempfile.TemporaryDirectory(prefix="budget-bench-") as tmp:
        server = RedisServer(Path(tmp) / "redis").start()
        budget = RedisBudget(server.url(0), timeout=0.1)
        try:
            await sequential(budget, 1000, args.sites)  # warm-up: connections, SCRIPT LOAD
            before = missed()
            samples = await sequential(budget, args.calls, args.sites)
            rate = await concurrent(budget, args.calls, args.sites, args.concurrency)
            print(row("RedisBudget (loopback TCP)", samples, rate, missed() - before))
            server.kill()
            await budget.acquire("site0", RATE, BURST)  # notices the outage
            before = missed()
            samples = await sequential(budget, args.calls, args.sites)
            print(row("RedisBudget, Redis killed (local)", samples, None, missed() - before))
        finally:
            await budget.aclose()
            server.kill()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--sites", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=8)
    asyncio.run(main(parser.parse_args()))

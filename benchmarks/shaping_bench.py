"""The scheduler's own overhead with traffic shaping: time from due to dispatch.

10,000 queued messages (``--messages``) to 1,000 domains (``--domains``), each
domain its own site (MX ``mx.dN.bench`` from a DNS stub on loopback, all at one
``smtp-sink`` on 127.0.0.1), due times spread evenly over ``--spread`` seconds.
The relay's real parts run in this process: the SQLite queue, the scheduler,
routing (dnspython against the stub), the site shaper (shipped limits, no rate),
delivery over real SMTP connections. For every message we take the moment it
was dispatched (taken from its site's line for sending: the delivery log's
attempt start) minus its due time, and print p50, p99 and the maximum, with the
process CPU per message.

Run: ``python benchmarks/shaping_bench.py`` (root: smtp-sink runs with ``-u postfix``).
Does not depend on pytest; talks only to 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.relay_throughput import Sink, check_tools  # noqa: E402
from smtpguard.classify import default_classifier  # noqa: E402
from smtpguard.config import Config  # noqa: E402
from smtpguard.relay.delivery import Delivery  # noqa: E402
from smtpguard.relay.outcome import Attempt, OutcomeHandler  # noqa: E402
from smtpguard.relay.routing import Router  # noqa: E402
from smtpguard.relay.scheduler import Scheduler  # noqa: E402
from smtpguard.relay.server import make_shaper  # noqa: E402
from smtpguard.shaping.shaper import SiteShaper  # noqa: E402
from smtpguard.store.messages import InboundMessage, Recipient  # noqa: E402
from smtpguard.store.queue import QueueStore, insert_message  # noqa: E402
from tests.fixtures.dns import DnsStub  # noqa: E402
from tests.fixtures.postfix_instance import free_port  # noqa: E402

BODY = b"From: s@bench.example\r\nSubject: bench\r\n\r\n" + b"x" * 2000 + b"\r\n"


class Recording:
    """The relay's shaper, noting when each message was dispatched."""

    def __init__(self, inner: SiteShaper) -> None:
        self.inner = inner
        self.dispatched: dict[int, float] = {}
        self.done = asyncio.Event()
        self.expected = 0

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)

    async def admit(self, site: str) -> float:
        return await self.inner.admit(site)

    def feedback(self, site: str, attempts: Sequence[Attempt]) -> None:
        self.inner.feedback(site, attempts)
        for a in attempts:
            if a.timing is not None:
                self.dispatched.setdefault(a.recipient.message_id, a.timing.started)
        if len(self.dispatched) >= self.expected:
            self.done.set()


async def run(args: argparse.Namespace, work: Path, sink_port: int, nameserver: str) -> None:
    cfg = Config().with_overrides(
        store={"data_dir": str(work / "var")},
        delivery={
            "nameservers": [nameserver], "port": sink_port,
            "allowed_destination_networks": ["127.0.0.1/32"], "helo_name": "bench.example",
            "retry_initial": 60.0,
        },
    )  # fmt: skip
    store = await QueueStore.open(cfg.data_dir)
    step = args.spread / args.messages
    msgs = [
        InboundMessage(
            mail_from="s@bench.example",
            recipients=(Recipient(address=f"u{i}@d{i % args.domains}.bench"),),
            data=BODY,
            received_at=time.time(),
        )
        for i in range(args.messages)
    ]

    ids = await store.writer.call(lambda conn: [insert_message(conn, m) for m in msgs])
    start = time.time() + 1.0
    due = {mid: start + n * step for n, mid in enumerate(ids)}
    await store.writer.call(lambda conn: conn.executemany(
        "UPDATE queue_recipients SET next_attempt = ? WHERE message_id = ?",
        [(t, mid) for mid, t in due.items()],
    ))  # fmt: skip
    shaper = Recording(make_shaper(cfg))
    shaper.expected = len(ids)
    d = cfg.delivery
    scheduler = Scheduler(store, max_inflight=max(d.concurrency * 20, 200), refill_interval=1.0)
    outcome = OutcomeHandler(cfg, store, on_deferred=scheduler.notify)
    delivery = Delivery(cfg, store, Router(d), default_classifier(), outcome,
                        shaper=shaper)  # type: ignore[arg-type]  # fmt: skip
    task = asyncio.create_task(scheduler.run(lambda c: delivery.submit(c, scheduler.release)))
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    try:
        await asyncio.wait_for(shaper.done.wait(), args.spread + 120)
    except TimeoutError:
        print(f"timed out: {len(shaper.dispatched)} of {len(ids)} dispatched")
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    scheduler.stop()
    await task
    await delivery.drain(5)
    await store.close()
    lat = sorted(max(shaper.dispatched[m] - due[m], 0.0) * 1000 for m in shaper.dispatched)
    cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    sites = {s.site for s in shaper.inner.views()}
    print(f"{len(lat)} messages dispatched to {len(sites)} sites, due over {args.spread:g}s "
          f"({args.messages / args.spread:.0f}/s)")  # fmt: skip
    cold = set(ids[: args.domains])  # each domain's first message: DNS lookups on the way
    parts = [("all", lat), ("first message per domain (DNS)", _ms(shaper, due, cold, True)),
             ("later messages (route cached)", _ms(shaper, due, cold, False))]  # fmt: skip
    for name, ms in parts:
        print(f"due -> dispatch, {name}: p50 {statistics.median(ms):.1f} ms, "
              f"p99 {ms[max(int(len(ms) * 0.99) - 1, 0)]:.1f} ms, max {ms[-1]:.1f} ms")  # fmt: skip
    if args.verbose:
        order = sorted(shaper.dispatched, key=lambda m: due[m])
        for k in range(10):
            part = order[k * len(order) // 10 : (k + 1) * len(order) // 10]
            ms = sorted((shaper.dispatched[m] - due[m]) * 1000 for m in part)
            print(f"  due decile {k}: p50 {ms[len(ms) // 2]:.0f} ms, max {ms[-1]:.0f} ms")
    print(f"relay process CPU: {cpu / len(lat) * 1000:.2f} ms per message "
          "(scheduler, SQLite, DNS, shaping, SMTP client)")  # fmt: skip


def _ms(shaper: Recording, due: dict[int, float], cold: set[int], first: bool) -> list[float]:
    return sorted(max(t - due[m], 0.0) * 1000 for m, t in shaper.dispatched.items()
                  if (m in cold) == first)  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--messages", type=int, default=10_000)
    p.add_argument("--domains", type=int, default=1000)
    p.add_argument("--spread", type=float, default=40.0, help="seconds the due times span")
    p.add_argument("--verbose", action="store_true", help="latency by due-time decile")
    args = p.parse_args()
    check_tools()
    print("command:", " ".join([Path(sys.executable).name, *sys.argv]))
    print(f"{os.cpu_count()} CPUs; started {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}")
    port = free_port()
    sink = Sink(port)
    # The DNS stub answers from a process of its own: in this one its threads would
    # compete for the GIL with the relay being measured.
    ports: multiprocessing.Queue[int] = multiprocessing.Queue()
    dns = multiprocessing.Process(target=serve_dns, args=(args.domains, ports), daemon=True)
    dns.start()
    try:
        nameserver = f"127.0.0.1:{ports.get(timeout=30)}"
        with tempfile.TemporaryDirectory(prefix="shaping-bench-") as tmp:
            asyncio.run(run(args, Path(tmp), port, nameserver))
    finally:
        dns.terminate()
        sink.stop()


def serve_dns(domains: int, ports: multiprocessing.Queue[int]) -> None:
    """``dN.bench MX 10 mx.dN.bench``, ``mx.dN.bench A 127.0.0.1``, until terminated."""
    with DnsStub() as dns:
        for i in range(domains):
            dns.add(f"d{i}.bench", "MX", f"10 mx.d{i}.bench.")
            dns.add(f"mx.d{i}.bench", "A", "127.0.0.1")
        ports.put(dns.port)
        while True:
            time.sleep(3600)


if __name__ == "__main__":
    main()

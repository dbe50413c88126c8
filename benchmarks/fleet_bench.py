"""Fleet backend (store.backend = "postgresql"): the RCPT check through the cache, how fast a
change crosses the fleet, and relay throughput against SQLite.

Starts its own PostgreSQL on loopback (Debian's binaries, a data directory under a
temporary directory; as root it runs as the ``postgres`` user), then:

1. **1M entries through the cache.** ``--rows`` addresses imported into a standalone
   host's SQLite (``suppression import``), moved into PostgreSQL with ``store copy
   --from sqlite --to postgresql`` (timed), pulled by a fresh node with ``store sync``
   (timed), and then, in a fresh process on that node, the RCPT check exactly as the
   relay calls it (``open_recipient_policy(cfg).check``: the SQLite cache plus the
   stale-cache guard with ``store.unknown = "tempfail"``), half hits and half
   misses, one call at a time: p50/p99. Goal p99 < 100 us, as with SQLite alone.
2. **Propagation.** A relay on node B; node A records a suppression and pushes it
   (what A's replicator does); the time until B refuses the address at RCPT,
   ``--samples`` times. Goal < 1 s.
3. **Throughput.** smtp-source -> smtpguard -> smtp-sink (Postfix's load tools, as in
   relay_throughput.py), smtpguard on SQLite and on PostgreSQL, interleaved round by
   round. Goal: PostgreSQL within 10% of SQLite.

    .venv/bin/python benchmarks/fleet_bench.py [--rows N] [--lookups N] [--rounds N]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import smtplib
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from relay_throughput import SMTPGUARD, Sink, Smtpguard, check_tools, measure  # noqa: E402
from suppression_bench import address, write_csv  # noqa: E402

from tests.fixtures.postgres import start_pg  # noqa: E402
from tests.fixtures.relay import start_relay_process, write_config  # noqa: E402

READER = textwrap.dedent(
    """
    import json, random, sys, time
    sys.path.insert(0, {bench_dir!r})
    from suppression_bench import address
    from smtpguard.config import load
    from smtpguard.policy import open_recipient_policy
    from smtpguard.policy.recipient import Client
    from smtpguard.store.suppression import SuppressionStore

    rows, lookups, domains = {rows}, {lookups}, {domains}
    cfg = load({config!r})
    rng = random.Random(7)
    hits = [address(rng.randrange(rows), domains) for _ in range(lookups // 2)]
    misses = [f"nobody{{k}}@mail{{k % domains}}.example" for k in range(lookups // 2)]
    sample = hits + misses
    rng.shuffle(sample)
    client = Client("127.0.0.1", "client.test")
    policy = open_recipient_policy(cfg)
    store = SuppressionStore.open(cfg.data_dir)
    clock = time.perf_counter_ns
    pct = lambda t, p: t[min(len(t) - 1, int(len(t) * p))] / 1000
    out = {{}}
    for name, call in (
        ("rcpt_check", lambda a: policy.check("s@example.org", a, client, False).action),
        ("lookup", lambda a: store.lookup(a)),
    ):
        for a in sample[:2000]:
            call(a)
        t = []
        cpu = []
        refused = 0
        for a in sample:
            c0 = time.thread_time_ns()
            t0 = clock()
            r = call(a)
            t.append(clock() - t0)
            cpu.append(time.thread_time_ns() - c0)
            refused += r == "reject" or (r is not None and r != "accept")
        t.sort()
        cpu.sort()
        out[name] = {{"p50": pct(t, 0.5), "p99": pct(t, 0.99), "p999": pct(t, 0.999),
                     "n": len(t), "hits": refused, "cpu_p50": pct(cpu, 0.5),
                     "cpu_p99": pct(cpu, 0.99)}}
    print(json.dumps(out))
    """
)


def smtpguard(*args: str, timeout: float = 1800) -> tuple[float, str]:
    t0 = time.perf_counter()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SMTPGUARD_")}
    env["SMTPGUARD_CONFIG"] = "/dev/null"
    proc = subprocess.run(
        [*SMTPGUARD, *args], capture_output=True, text=True, cwd=REPO, env=env, timeout=timeout
    )
    if proc.returncode != 0:
        sys.exit(f"smtpguard {shlex.join(args)} failed:\n{proc.stderr}")
    return time.perf_counter() - t0, proc.stdout.strip()


def node_config(path: Path, data_dir: Path, dsn: str, node: str) -> Path:
    return write_config(
        path,
        {"store": {"data_dir": str(data_dir), "backend": "postgresql", "dsn": dsn, "node": node,
                   "unknown": "tempfail"}},
    )  # fmt: skip


def cache_lookups(work: Path, dsn: str, args: argparse.Namespace) -> None:
    standalone = work / "standalone"
    csv_path = work / "import.csv"
    write_csv(csv_path, args.rows, args.domains)
    took, out = smtpguard("--data-dir", str(standalone), "suppression", "import", str(csv_path))
    csv_path.unlink()
    print(f"import into SQLite:           {took:6.1f} s  ({out})")
    took, out = smtpguard(
        "--data-dir", str(standalone), "store", "copy", "--from", "sqlite", "--to",
        "postgresql", "--dsn", dsn,
    )  # fmt: skip
    print(f"store copy -> PostgreSQL:     {took:6.1f} s  ({out})")
    config = node_config(work / "node-b.toml", work / "node-b", dsn, "node-b")
    took, out = smtpguard("--config", str(config), "store", "sync")
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(f"fresh node's first store sync:{took:6.1f} s  ({out}; peak RSS of the CLI processes"
          f" so far {peak:.0f} MB)")  # fmt: skip
    code = READER.format(
        bench_dir=str(REPO / "benchmarks"), rows=args.rows, lookups=args.lookups,
        domains=args.domains, config=str(config),
    )  # fmt: skip
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=False
    )
    if proc.returncode != 0:
        sys.exit(f"reader failed:\n{proc.stderr}")
    r = json.loads(proc.stdout)
    for name, label in (("rcpt_check", "RCPT check (policy + guard)"), ("lookup", "store.lookup")):
        t = r[name]
        print(
            f"{label:28s}: p50 {t['p50']:6.1f} us  p99 {t['p99']:6.1f} us  "
            f"p99.9 {t['p999']:6.1f} us  ({t['n']} calls, {t['hits']} refused);"
            f" CPU time of the calling thread p50 {t['cpu_p50']:.1f} us, p99 {t['cpu_p99']:.1f} us"
        )
    goal = "met" if r["rcpt_check"]["p99"] < 100 else "MISSED"
    print(f"goal RCPT check p99 < 100 us with {args.rows:,} entries: {goal}")


def rcpt_code(port: int, rcpt: str) -> int:
    with smtplib.SMTP("127.0.0.1", port, local_hostname="bench.test", timeout=10) as s:
        s.ehlo()
        s.mail("s@example.org")
        code, _ = s.rcpt(rcpt)
        s.rset()
        return code


def propagation(work: Path, dsn: str, samples: int) -> None:
    from smtpguard.config import Config
    from smtpguard.store import fleet
    from smtpguard.store.pg.sync import sync_once
    from smtpguard.store.suppression import SuppressionStore

    relay = start_relay_process(
        {"store": {"backend": "postgresql", "dsn": dsn, "node": "relay-b",
                   "data_dir": str(work / "relay-b")}},
        work,
    )  # fmt: skip
    cfg_a = Config().with_overrides(
        store={"data_dir": str(work / "node-a"), "backend": "postgresql", "dsn": dsn,
               "node": "node-a"},
    )  # fmt: skip
    ident = fleet.prepare(cfg_a)
    assert ident is not None
    waits = []
    try:
        for i in range(samples):
            rcpt = f"prop{i}@propagation.example"
            with SuppressionStore.open(cfg_a.data_dir) as store:
                store.record(rcpt, "userunknown", source="smtp-reply", actor="bench")
            t0 = time.perf_counter()
            sync_once(cfg_a, ident, pull_too=False)
            while rcpt_code(relay.port, rcpt) != 550:
                if time.perf_counter() - t0 > 10:
                    sys.exit(f"{rcpt} not refused by the other node within 10 s")
            waits.append((time.perf_counter() - t0) * 1000)
    finally:
        relay.stop()
    waits.sort()
    print(
        f"propagation A -> B's RCPT:    p50 {statistics.median(waits):6.0f} ms  "
        f"max {waits[-1]:6.0f} ms  ({samples} samples; push included)"
    )


@dataclass
class ConfiguredGuard(Smtpguard):
    """relay_throughput's smtpguard, with a configuration file (the store backend)."""

    config: Path | None = None

    @property
    def argv(self) -> list[str]:
        return [*SMTPGUARD, "--config", str(self.config), *super().argv[len(SMTPGUARD) :]]


def throughput(work: Path, dsn: str, args: argparse.Namespace) -> None:
    check_tools()
    sink = Sink(__import__("tests.fixtures.net", fromlist=["free_port"]).free_port())
    sqlite_conf = write_config(work / "sqlite.toml", {"store": {"backend": "sqlite"}})
    pg_conf = node_config(work / "pg.toml", work / "pg-var", dsn, "bench")
    guards = {
        "sqlite": ConfiguredGuard(sink.port, work / "sqlite-var", config=sqlite_conf),
        "postgresql": ConfiguredGuard(sink.port, work / "pg-var", config=pg_conf),
    }
    rates: dict[str, list[float]] = {name: [] for name in guards}
    try:
        for g in guards.values():
            g.start()
            deadline = time.monotonic() + 30
            while rcpt_code(g.port, "warm@sink.test") != 250:  # the node has synced
                if time.monotonic() > deadline:
                    sys.exit("the PostgreSQL node did not sync within 30 s")
                time.sleep(0.1)
        warm = argparse.Namespace(**{**vars(args), "messages": 20, "sessions": 4})
        for g in guards.values():
            measure(sink, g.port, warm)
        for rnd in range(1, args.rounds + 1):
            order = list(guards) if rnd % 2 else list(reversed(guards))
            line = []
            for name in order:
                rate = measure(sink, guards[name].port, args)
                rates[name].append(rate)
                line.append(f"{name}={rate:.0f}/s")
            print(f"round {rnd}: " + "  ".join(line), flush=True)
    finally:
        for g in guards.values():
            g.stop()
        sink.stop()
    med = {name: statistics.median(r) for name, r in rates.items()}
    ratios = [p / s for p, s in zip(rates["postgresql"], rates["sqlite"], strict=True)]
    ratio = statistics.median(ratios)
    print(
        f"relay throughput: SQLite {med['sqlite']:.0f} msg/s, PostgreSQL {med['postgresql']:.0f}"
        f" msg/s (medians); PostgreSQL/SQLite per round median {ratio:.2f}"
        f" -> goal within 10%: {'met' if ratio >= 0.9 else 'MISSED'}"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", type=int, default=1_000_000, help="entries in the fleet's list")
    p.add_argument("--lookups", type=int, default=100_000, help="timed RCPT checks")
    p.add_argument("--domains", type=int, default=5000, help="distinct small domains")
    p.add_argument("--samples", type=int, default=20, help="propagation samples")
    p.add_argument("--rounds", type=int, default=5, help="throughput rounds")
    p.add_argument("--messages", type=int, default=2000, help="messages per throughput run")
    p.add_argument("--sessions", type=int, default=20, help="parallel SMTP sessions")
    p.add_argument("--size", type=int, default=5120, help="message body bytes")
    p.add_argument("--timeout", type=float, default=600, help="seconds allowed per run")
    p.add_argument("--skip", action="append", default=[], choices=["cache", "propagation",
                   "throughput"], help="leave a part out (repeatable)")  # fmt: skip
    args = p.parse_args()
    print("$ " + shlex.join([Path(sys.executable).name, *sys.argv]))
    print(
        f"# {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}, {os.cpu_count()} CPUs, "
        f"load average {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    work = Path(tempfile.mkdtemp(prefix="sgfleet-"))
    pg = start_pg()
    try:
        if "cache" not in args.skip:
            cache_lookups(work, pg.create_database(), args)
        if "propagation" not in args.skip:
            propagation(work, pg.create_database(), args.samples)
        if "throughput" not in args.skip:
            throughput(work, pg.create_database(), args)
    finally:
        pg.stop()
        subprocess.run(["rm", "-rf", str(work), str(pg.root)], check=False)
    _ = address  # the reader imports it from suppression_bench


if __name__ == "__main__":
    main()

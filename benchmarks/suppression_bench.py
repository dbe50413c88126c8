"""Suppression store at scale: import time, lookup latency, memory of a reader.

Builds a store holding ``--rows`` (default 1,000,000) suppressed addresses the
way an operator would: a CSV file fed to ``smtpguard suppression import`` (a
subprocess, so the time includes start-up, parsing, normalisation, validation,
the merge rule and the one all-or-nothing transaction). Then, in a fresh
process that only opens the store and looks addresses up (what the relay and
the milter do), it measures:

* ``SuppressionStore.lookup`` latency, p50/p99/p99.9 over ``--lookups`` calls,
  half hits and half misses, timed one call at a time (the synchronous storage
  API: normalisation + one indexed SQLite query); also
  ``AsyncSuppressionStore.lookup`` (aiosqlite's thread hop included), for
  comparison;
* the resident memory (VmRSS) of that process, after opening and after each
  round of lookups, for a store of ``--rows`` and for one of 10,000 rows:
  equal numbers mean memory does not grow with the list.

Goals: import < 30 s on a 2-core machine, lookup p99 < 100 us,
reader RSS < 100 MB and not growing with the list.

    .venv/bin/python benchmarks/suppression_bench.py [--rows N] [--lookups N]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIG_DOMAINS = ["gmail.com", "yahoo.com", "outlook.com", "hotmail.com", "example.com"]


def address(i: int, domains: int) -> str:
    """The i-th benchmark address: unique, spread over domains in a shuffled order."""
    local = f"u{(i * 2654435761) % 4294967296:08x}.{i}"
    if i % 10 < 3:
        domain = BIG_DOMAINS[(i * 7) % len(BIG_DOMAINS)]
    else:
        domain = f"mail{(i * 7919) % domains}.example"
    return f"{local}@{domain}"


def write_csv(path: Path, rows: int, domains: int) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write("address,reason,status,reply_code\n")
        for i in range(rows):
            f.write(f"{address(i, domains)},userunknown,5.1.1,550\n")


# The reader: a fresh process that opens the store and only looks up.
READER = textwrap.dedent(
    """
    import asyncio, json, random, sys, time
    from smtpguard.store.suppression import AsyncSuppressionStore, SuppressionStore
    sys.path.insert(0, {bench_dir!r})
    from suppression_bench import address

    def rss_mb():
        for line in open("/proc/self/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024

    rows, lookups, domains, data_dir = {rows}, {lookups}, {domains}, {data_dir!r}
    rng = random.Random(7)
    hits = [address(rng.randrange(rows), domains) for _ in range(lookups // 2)]
    misses = [f"nobody{{k}}@mail{{k % domains}}.example" for k in range(lookups // 2)]
    sample = hits + misses
    rng.shuffle(sample)
    out = {{}}
    store = SuppressionStore.open(data_dir)
    out["rss_open"] = rss_mb()
    for a in sample[:2000]:  # warm-up: page cache, statement cache
        store.lookup(a)
    timings = []
    cpu = []
    found = 0
    clock = time.perf_counter_ns
    cpu_clock = time.thread_time_ns
    for a in sample:
        c0 = cpu_clock()
        t0 = clock()
        e = store.lookup(a)
        t1 = clock()
        cpu.append(cpu_clock() - c0)
        timings.append(t1 - t0)
        found += e is not None
    out["rss_after_round1"] = rss_mb()
    for a in sample:
        store.lookup(a)
    out["rss_after_round2"] = rss_mb()
    timings.sort()
    cpu.sort()
    pct = lambda t, p: t[min(len(t) - 1, int(len(t) * p))] / 1000
    out["sync"] = {{"p50": pct(timings, 0.50), "p99": pct(timings, 0.99),
                    "p999": pct(timings, 0.999), "max": timings[-1] / 1000, "n": len(timings),
                    "found": found, "cpu_p50": pct(cpu, 0.50), "cpu_p99": pct(cpu, 0.99)}}
    t0 = time.perf_counter()
    page = store.list_page(after=sample[0], limit=100)
    out["list_page_ms"] = (time.perf_counter() - t0) * 1000
    out["list_page_rows"] = len(page)
    store.close()

    async def async_round():
        s = await AsyncSuppressionStore.open(data_dir)
        for a in sample[:2000]:
            await s.lookup(a)
        t = []
        for a in sample[: min(len(sample), 20000)]:
            t0 = clock()
            await s.lookup(a)
            t.append(clock() - t0)
        await s.close()
        t.sort()
        return {{"p50": t[len(t) // 2] / 1000, "p99": t[int(len(t) * 0.99)] / 1000, "n": len(t)}}

    out["async"] = asyncio.run(async_round())
    out["rss_end"] = rss_mb()
    print(json.dumps(out))
    """
)


def run_reader(data_dir: Path, rows: int, lookups: int, domains: int) -> dict:
    code = READER.format(
        bench_dir=str(Path(__file__).parent),
        rows=rows,
        lookups=lookups,
        domains=domains,
        data_dir=str(data_dir),
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=False
    )
    if proc.returncode != 0:
        sys.exit(f"reader failed:\n{proc.stderr}")
    return json.loads(proc.stdout)


def import_rows(data_dir: Path, csv_path: Path) -> tuple[float, float, float, str]:
    """Run the CLI import; return wall seconds, CPU seconds, peak RSS MB, summary."""
    cmd = [
        sys.executable,
        "-m",
        "smtpguard",
        "--data-dir",
        str(data_dir),
        "suppression",
        "import",
        str(csv_path),
    ]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, check=False)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        sys.exit(f"import failed: {proc.stderr}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, after.ru_maxrss / 1024, proc.stdout.strip()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000, help="addresses in the big store")
    ap.add_argument("--lookups", type=int, default=100_000, help="timed lookups per store")
    ap.add_argument("--domains", type=int, default=5000, help="distinct small domains")
    ap.add_argument("--keep", metavar="DIR", help="build the stores here and keep them")
    args = ap.parse_args()

    print("$ " + " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv]))
    print(
        f"# {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}, {os.cpu_count()} CPUs, "
        f"load average {os.getloadavg()[0]:.2f}, SQLite {sqlite3.sqlite_version}, "
        f"Python {sys.version.split()[0]}"
    )
    base = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="sgbench-"))
    base.mkdir(parents=True, exist_ok=True)
    results = {}
    for label, rows in (("small", 10_000), ("big", args.rows)):
        data_dir = base / f"store-{rows}"
        csv_path = base / f"import-{rows}.csv"
        write_csv(csv_path, rows, args.domains)
        wall, cpu, rss, summary = import_rows(data_dir, csv_path)
        size = sum(p.stat().st_size for p in data_dir.iterdir()) / 1e6
        csv_path.unlink()
        reader = run_reader(data_dir, rows, args.lookups, args.domains)
        results[label] = (rows, wall, cpu, rss, size, summary, reader)

    rows, wall, cpu, rss, size, summary, r = results["big"]
    print(f"\nimport of {rows:,} addresses (CLI `suppression import`, CSV):")
    print(f"  {summary}")
    print(
        f"  wall {wall:.1f} s (goal < 30 s), CPU {cpu:.1f} s, {rows / wall:,.0f} rows/s, "
        f"import process peak RSS {rss:.0f} MB, database {size:.0f} MB"
    )
    s = r["sync"]
    print(f"\nSuppressionStore.lookup (sync storage API), {s['n']:,} lookups, {s['found']:,} hits:")
    print(
        f"  wall clock: p50 {s['p50']:.1f} us, p99 {s['p99']:.1f} us (goal < 100 us), "
        f"p99.9 {s['p999']:.1f} us, max {s['max']:.0f} us"
    )
    print(
        f"  CPU time of the calling thread (time preempted excluded): "
        f"p50 {s['cpu_p50']:.1f} us, p99 {s['cpu_p99']:.1f} us"
    )
    a = r["async"]
    print(
        f"AsyncSuppressionStore.lookup (aiosqlite, thread hop), {a['n']:,} lookups: "
        f"p50 {a['p50']:.1f} us, p99 {a['p99']:.1f} us"
    )
    print(f"list_page(after=..., limit=100) at {rows:,} rows: {r['list_page_ms']:.2f} ms")
    print("\nresident memory of a process with the store open, doing lookups (VmRSS, MB):")
    print("  rows        after open  after 1st round  after 2nd round  at end (async too)")
    for label in ("small", "big"):
        n, *_, rr = results[label]
        print(
            f"  {n:>9,}  {rr['rss_open']:>10.1f}  {rr['rss_after_round1']:>15.1f}  "
            f"{rr['rss_after_round2']:>15.1f}  {rr['rss_end']:>18.1f}"
        )
    print("  (goal < 100 MB, not growing with the list)")
    if not args.keep:
        for label in results:
            d = base / f"store-{results[label][0]}"
            for p in d.iterdir():
                p.unlink()
            d.rmdir()
        base.rmdir()


if __name__ == "__main__":
    main()

"""Relay throughput with Postfix's own load tools, and relay memory with a full queue.

Four configurations, measured interleaved round by round in ONE run (this 2-core
machine drifts by up to 2x within an hour, so only ratios within a round mean
anything):

  sink              smtp-source -> smtp-sink                       (the loopback ceiling)
  postfix           smtp-source -> Postfix -> smtp-sink            (the reference)
  smtpguard         smtp-source -> smtpguard -> smtp-sink
  postfix+smtpguard smtp-source -> Postfix -> smtpguard -> smtp-sink (production chain)

A run counts messages AT THE SINK (``smtp-sink -c`` prints running counters) until
every message has arrived: a relay that answers 250 fast but delivers late gets no
credit. smtp-source sends one message per connection, 20 sessions in parallel,
5 KB bodies, each to a recipient of its own (``-N``, tagged with the run); the
sink dumps what it takes (``-D``, on tmpfs), so every round reports the messages
lost and duplicated, not just a count. smtpguard runs with its defaults (durable
commits on), started with its one-line start. Everything talks over 127.0.0.1.

Each round prints, per configuration, messages/s and the ratio to Postfix alone in
the same round; for the smtpguard legs also the relay's CPU per message (utime +
stime of the relay process from ``/proc/<pid>/stat``, the delta over the run
divided by its messages: robust to other load on the machine, unlike the rate)
and its peak RSS (VmHWM). Then the table, the medians, and issue 15's goals:
the chain >= 0.8x Postfix alone, smtpguard alone >= 2.0x, smtpguard's CPU in the
chain <= 1.0 ms per message, nothing lost or duplicated in any round.
``--event-loop asyncio --event-loop uvloop`` runs the smtpguard legs once per
loop (``relay.event_loop``), interleaved in the same rounds.

``--rss-messages N`` then queues N messages in a smtpguard whose smarthost is a
closed port (nothing can leave) and reads VmRSS/VmHWM from /proc (goal < 200 MB
for 100,000). ``--profile`` samples a smtpguard under load alone and behind
Postfix (py-spy when installed: ``pip install py-spy``; else a stdlib sampler)
and runs cProfile on its event-loop thread, and prints where the time goes.

Run as root (smtp-sink then needs ``-u postfix``)::

    python benchmarks/relay_throughput.py --rss-messages 0

Does not depend on pytest.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import types
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.fixtures.postfix_instance import (  # noqa: E402
    PostfixInstance,
    free_port,
    wait_port,
)

SMTP_SOURCE = "/usr/sbin/smtp-source"
SMTP_SINK = "/usr/sbin/smtp-sink"
SMTPGUARD = [sys.executable, "-m", "smtpguard"]
CONFIGS = ("sink", "postfix", "smtpguard", "postfix+smtpguard")
SENDER = "bench@source.test"
RECIPIENT = "rcpt@sink.test"
# Child modes of this script (profiling a relay in-process): name -> what it prints.
MODES = {
    "_sample": "CPU-weighted stack samples, all threads",
    "_cprofile": "cProfile, event-loop thread",
}


# --------------------------------------------------------------------------- the sink


class Sink:
    """One ``smtp-sink`` for the whole run; ``count`` is its running message counter.

    Deltas of the counter measure each run, so the sink never restarts between runs.
    With ``dump`` it also appends every message it takes to that file (``-D``, on
    tmpfs): each run's recipients are unique (``smtp-source -N`` numbers them, the
    run's tag is in the address), so reading the file back says which messages of
    a run arrived, which never did and which arrived twice.
    """

    def __init__(self, port: int, dump: Path | None = None) -> None:
        self.port = port
        self.dump = dump
        argv = [SMTP_SINK, "-c", f"127.0.0.1:{port}", "512"]
        if dump is not None:
            argv[1:1] = ["-D", str(dump)]
        if os.geteuid() == 0:
            argv[1:1] = ["-u", "postfix"]  # smtp-sink refuses to run as root without -u
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.count = 0
        self._changed = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()
        if not wait_port(port, 10):
            raise SystemExit(f"smtp-sink did not start on 127.0.0.1:{port}")

    def _read(self) -> None:
        # Counters are separated by "\r": "sess=3 quit=3 mesg=3\r".
        assert self.proc.stdout is not None
        buf = b""
        while chunk := self.proc.stdout.read1(65536):
            buf += chunk
            *lines, buf = buf.split(b"\r")
            for line in reversed(lines):
                m = re.search(rb"mesg=(\d+)", line)
                if m:
                    with self._changed:
                        self.count = int(m.group(1))
                        self._changed.notify_all()
                    break

    def wait_for(self, target: int, timeout: float) -> bool:
        with self._changed:
            return self._changed.wait_for(lambda: self.count >= target, timeout)

    def arrivals(self) -> collections.Counter[str]:
        """How often each recipient arrived so far (from the dump file)."""
        if self.dump is None or not self.dump.exists():
            return collections.Counter()
        return collections.Counter(_RCPT_LINE.findall(self.dump.read_bytes()))

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


#: smtp-sink's dump record of a recipient: "X-Rcpt-Args: <17r3@sink.test>".
_RCPT_LINE = re.compile(rb"^X-Rcpt-Args: <([^>]*)>", re.MULTILINE)


# --------------------------------------------------------------------------- smtpguard


@dataclass
class Smtpguard:
    """``smtpguard serve --listen --smarthost --data-dir`` as a subprocess (the one-line start)."""

    smarthost_port: int
    data_dir: Path
    port: int = field(default_factory=free_port)
    wrapper: list[str] = field(default_factory=list)
    event_loop: str = ""  # relay.event_loop ("": the default, auto)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def argv(self) -> list[str]:
        extra = ["--config", str(self.data_dir / "bench.toml")] if self.event_loop else []
        return [
            *(self.wrapper or SMTPGUARD),
            "serve",
            "--listen", f"127.0.0.1:{self.port}",
            "--smarthost", f"127.0.0.1:{self.smarthost_port}",
            "--data-dir", str(self.data_dir),
            *extra,
        ]  # fmt: skip

    def start(self) -> Smtpguard:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self.event_loop:
            (self.data_dir / "bench.toml").write_text(
                f'[relay]\nevent_loop = "{self.event_loop}"\n'
            )
        log = open(self.data_dir / "serve.log", "wb")  # noqa: SIM115 (lives with the process)
        env = {k: v for k, v in os.environ.items() if not k.startswith("SMTPGUARD_")}
        self.proc = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT, env=env)
        if not wait_port(self.port, 30):
            self.stop()
            tail = (self.data_dir / "serve.log").read_text(errors="replace")[-2000:]
            raise SystemExit(f"smtpguard did not listen on {self.port}:\n{tail}")
        return self

    def loop_name(self) -> str:
        """The event loop the relay says it runs on (its start-up log line)."""
        text = (self.data_dir / "serve.log").read_text(errors="replace")
        m = re.search(r"relay running on the (\w+) event loop", text)
        return m.group(1) if m else "?"

    def status(self) -> dict[str, int]:
        """VmRSS / VmHWM (peak) of the relay process, in kB."""
        assert self.proc is not None
        out = {}
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0])
        return out

    def cpu_seconds(self) -> tuple[float, float]:
        """(user, system) CPU seconds the relay process has used so far (all its threads)."""
        assert self.proc is not None
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rpartition(")")[2].split()
        tick = os.sysconf("SC_CLK_TCK")
        return int(fields[11]) / tick, int(fields[12]) / tick

    def stop(self, timeout: float = 60) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


# --------------------------------------------------------------------------- one run


def smtp_source(
    port: int, messages: int, sessions: int, size: int, recipient: str = RECIPIENT
) -> list[str]:
    """smtp-source's command line; ``-N`` numbers the recipients (``17<recipient>``)."""
    return [
        SMTP_SOURCE, "-s", str(sessions), "-m", str(messages), "-l", str(size), "-N",
        "-f", SENDER, "-t", recipient, "-M", "source.test", f"127.0.0.1:{port}",
    ]  # fmt: skip


_runs = iter(range(1, 1 << 30))


def measure(sink: Sink, port: int, args: argparse.Namespace) -> tuple[float, str]:
    """(messages per second from smtp-source's start until the last one is AT THE SINK,
    the run's recipient domain tag). With a dump, "the last one" means every recipient
    of the run, not just as many messages (a duplicate must not stand in for a loss)."""
    tag = f"r{next(_runs)}"
    target = sink.count + args.messages
    started = time.monotonic()
    src = subprocess.run(
        smtp_source(port, args.messages, args.sessions, args.size, f"{tag}@sink.test"),
        capture_output=True,
        text=True,
        timeout=args.timeout,
    )
    if src.returncode != 0:
        raise SystemExit(f"smtp-source to port {port} failed: {src.stdout}{src.stderr}")
    deadline = started + args.timeout
    while True:
        if not sink.wait_for(target, max(deadline - time.monotonic(), 0)):
            print(
                f"only {sink.count - target + args.messages} of {args.messages} messages reached"
                f" the sink within {args.timeout}s (via port {port})",
                flush=True,
            )
            break
        if sink.dump is None or len(run_arrivals(sink.arrivals(), tag)) >= args.messages:
            break
        target = sink.count + 1  # duplicates made up the count: wait for the missing ones
    return args.messages / (time.monotonic() - started), tag


def run_arrivals(arrivals: collections.Counter[str], tag: str) -> dict[str, int]:
    """The recipients of run ``tag`` that arrived, with how often."""
    suffix = f"{tag}@sink.test".encode()
    return {k.decode(): n for k, n in arrivals.items() if k.endswith(suffix)}


def lost_and_duplicated(
    arrivals: collections.Counter[str], tag: str, messages: int
) -> tuple[int, int]:
    """(messages of run ``tag`` that never arrived, extra copies that did)."""
    got = run_arrivals(arrivals, tag)
    expected = {f"{i}{tag}@sink.test" for i in range(1, messages + 1)}
    lost = len(expected - got.keys())
    duplicated = sum(n - 1 for n in got.values()) + sum(got[k] for k in got.keys() - expected)
    return lost, duplicated


def tree_cpu_seconds(root_pid: int) -> float:
    """CPU seconds used by a process and all its descendants, live or already reaped.

    Postfix's daemons come and go under ``master``; a reaped child's time moves into
    its parent's cutime/cstime, so summing utime+stime+cutime+cstime over the live
    tree counts every daemon once.
    """
    parent: dict[int, int] = {}
    spent: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue  # exited meanwhile
        pid = int(stat.parent.name)
        parent[pid] = int(fields[1])
        spent[pid] = sum(int(v) for v in fields[11:15])
    tree, frontier = {root_pid}, [root_pid]
    while frontier:
        p = frontier.pop()
        for child, ppid in parent.items():
            if ppid == p and child not in tree:
                tree.add(child)
                frontier.append(child)
    return sum(spent.get(p, 0) for p in tree) / os.sysconf("SC_CLK_TCK")


def cpu_busy_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine so far, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return sum(values) - idle, sum(values)


@dataclass
class Results:
    rates: dict[str, list[float]]  # messages/s per configuration, one per round
    cpu_ms: dict[str, list[tuple[float, float]]]  # smtpguard's (user, sys) CPU ms per message
    busy: dict[str, list[float]]  # share of the machine's CPUs busy during each run
    postfix_ms: dict[str, list[float]]  # Postfix's CPU ms per message (all its daemons)
    peak_kb: dict[str, list[int]]  # the relay's VmHWM after each round
    tags: dict[str, list[str]]  # each run's recipient tag (for lost/duplicated)
    lost: dict[str, list[tuple[int, int]]] = field(default_factory=dict)  # (lost, duplicated)
    loops: dict[str, str] = field(default_factory=dict)  # event loop each variant ran on


def variant_names(loops: list[str]) -> dict[str, tuple[str, str]]:
    """Configuration name -> (leg, event loop) for the smtpguard legs."""
    out = {}
    for loop in loops:
        suffix = f"[{loop}]" if len(loops) > 1 else ""
        out[f"smtpguard{suffix}"] = ("alone", loop)
        out[f"postfix+smtpguard{suffix}"] = ("chain", loop)
    return out


def throughput(args: argparse.Namespace, work: Path) -> Results:
    shm = Path("/dev/shm") if Path("/dev/shm").is_dir() else work
    dump_dir = Path(tempfile.mkdtemp(prefix="smtpguard-bench-sink-", dir=shm))
    dump_dir.chmod(0o777)  # smtp-sink writes as user postfix
    sink = Sink(free_port(), dump_dir / "dump")
    postfix = PostfixInstance(
        work / "postfix",
        name="bench-pf",
        relayhost=f"127.0.0.1:{sink.port}",
        fast_retry=False,
        main=args.postfix_main,
    )
    legs = {} if args.postfix_only else variant_names(args.event_loop)
    relay_of: dict[str, Smtpguard] = {}
    postfix_of: dict[str, PostfixInstance] = {"postfix": postfix}
    for i, (name, (leg, loop)) in enumerate(legs.items()):
        # "auto" is the default: no config file, so the benchmark also runs older trees.
        setting = "" if loop == "auto" else loop
        relay_of[name] = Smtpguard(sink.port, work / f"smtpguard-{i}", event_loop=setting)
        if leg == "chain":
            postfix_of[name] = PostfixInstance(
                work / f"postfix-chain-{i}",
                name=f"bench-chain{i}",
                relayhost="",
                fast_retry=False,
                main=args.postfix_main,
            )
    configs = ["sink", "postfix", *legs]
    rates: dict[str, list[float]] = {c: [] for c in configs}
    cpu_ms: dict[str, list[tuple[float, float]]] = {c: [] for c in relay_of}
    busy: dict[str, list[float]] = {c: [] for c in configs}
    postfix_ms: dict[str, list[float]] = {c: [] for c in postfix_of}
    peak_kb: dict[str, list[int]] = {c: [] for c in relay_of}
    tags: dict[str, list[str]] = {c: [] for c in configs}
    results = Results(rates, cpu_ms, busy, postfix_ms, peak_kb, tags)
    try:
        postfix.start()
        targets = {"sink": sink.port, "postfix": postfix.port}
        for name, relay in relay_of.items():
            relay.start()
            results.loops[name] = relay.loop_name()
            if name in postfix_of:
                front = postfix_of[name]
                front.relayhost = f"127.0.0.1:{relay.port}"
                front.start()
                targets[name] = front.port
            else:
                targets[name] = relay.port
        # One unmeasured warm-up per path (process start-up, first connections).
        warm = argparse.Namespace(**{**vars(args), "messages": 20, "sessions": 4})
        for port in targets.values():
            measure(sink, port, warm)
        for rnd in range(1, args.rounds + 1):
            order = list(targets)
            # Rotate the order each round so no configuration always runs first.
            order = order[(rnd - 1) % len(order) :] + order[: (rnd - 1) % len(order)]
            for name in order:
                relay = relay_of.get(name)
                cpu_before = relay.cpu_seconds() if relay else (0.0, 0.0)
                front = postfix_of.get(name)
                front_pid = front.master_pid if front else None
                front_before = tree_cpu_seconds(front_pid) if front_pid else 0.0
                jiffies = cpu_busy_jiffies()
                rate, tag = measure(sink, targets[name], args)
                now = cpu_busy_jiffies()
                if front_pid:
                    used = tree_cpu_seconds(front_pid) - front_before
                    postfix_ms[name].append(used * 1000 / args.messages)
                busy[name].append((now[0] - jiffies[0]) / max(now[1] - jiffies[1], 1))
                rates[name].append(rate)
                tags[name].append(tag)
                if relay:
                    after = relay.cpu_seconds()
                    n = args.messages / 1000
                    cpu_ms[name].append(
                        ((after[0] - cpu_before[0]) / n, (after[1] - cpu_before[1]) / n)
                    )
                    peak_kb[name].append(relay.status()["VmHWM"])
            print_round(results, rnd, args.messages, sink.arrivals())
        time.sleep(2)  # a late duplicate still counts
        arrivals = sink.arrivals()
        results.lost = {
            c: [lost_and_duplicated(arrivals, t, args.messages) for t in tags[c]] for c in configs
        }
    finally:
        for front in postfix_of.values():
            front.stop()
        for relay in relay_of.values():
            relay.stop()
        sink.stop()
        shutil.rmtree(dump_dir, ignore_errors=True)
    return results


def print_round(
    results: Results, rnd: int, messages: int, arrivals: collections.Counter[str]
) -> None:
    """One line per round: each configuration's rate, ratio to Postfix, and the relay's
    CPU per message, peak RSS and lost/duplicated messages."""
    i = rnd - 1
    base = results.rates["postfix"][i]
    cells = []
    for name, rates in results.rates.items():
        lost, dup = lost_and_duplicated(arrivals, results.tags[name][i], messages)
        cell = f"{name}={rates[i]:.0f}/s ({rates[i] / base:.2f}x"
        if name in results.cpu_ms:
            user, system = results.cpu_ms[name][i]
            cell += f", {user + system:.2f} ms/msg, peak {results.peak_kb[name][i] / 1024:.0f} MB"
        cell += f", lost {lost} dup {dup})"
        cells.append(cell)
    print(f"round {rnd}: " + "  ".join(cells), flush=True)


def report(results: Results, args: argparse.Namespace) -> bool:
    """The table, the medians and the goals; True when every goal was met."""
    rates = results.rates
    base = rates["postfix"]
    rounds = range(len(base))

    def ratio(name: str, i: int) -> float:
        return rates[name][i] / base[i]

    print("\nper round: messages/s at the sink (ratio to Postfix alone in the same round);")
    print("smtpguard's CPU ms per message (utime+stime of the relay process / messages),")
    print("its peak RSS (VmHWM), and messages lost / duplicated at the sink")
    for name, loop in results.loops.items():
        print(f"  {name}: relay on the {loop} event loop")
    header = ["round", *(f"{c}" for c in rates)]
    rows = []
    for i in rounds:
        row = [str(i + 1)]
        for c in rates:
            cell = f"{rates[c][i]:.0f} ({ratio(c, i):.2f}x)"
            if c in results.cpu_ms:
                u, k = results.cpu_ms[c][i]
                cell += f" {u + k:.2f}ms {results.peak_kb[c][i] / 1024:.0f}MB"
            lost, dup = results.lost[c][i]
            cell += f" L{lost}/D{dup}"
            row.append(cell)
        rows.append(row)
    med = ["median"]
    for c in rates:
        r = statistics.median(ratio(c, i) for i in rounds)
        cell = f"{statistics.median(rates[c]):.0f} ({r:.2f}x)"
        if c in results.cpu_ms:
            ms = statistics.median(u + k for u, k in results.cpu_ms[c])
            cell += f" {ms:.2f}ms {max(results.peak_kb[c]) / 1024:.0f}MB"
        lost = sum(x for x, _ in results.lost[c])
        dup = sum(y for _, y in results.lost[c])
        cell += f" L{lost}/D{dup}"
        med.append(cell)
    rows.append(med)
    widths = [max(len(r[j]) for r in [header, *rows]) for j in range(len(header))]
    for r in [header, *rows]:
        print("  ".join(v.rjust(w) for v, w in zip(r, widths, strict=True)))
    print(
        "machine CPU busy during the runs (median; other load on the machine counts too): "
        + ", ".join(f"{k} {100 * statistics.median(v):.0f}%" for k, v in results.busy.items())
    )
    for name, ms in results.postfix_ms.items():
        print(f"Postfix CPU per message in {name}: median {statistics.median(ms):.2f} ms")
    for name, values in results.cpu_ms.items():
        total = statistics.median(u + k for u, k in values)
        user = statistics.median(u for u, _ in values)
        system = statistics.median(k for _, k in values)
        print(
            f"smtpguard CPU per message in {name}: median {total:.2f} ms "
            f"(user {user:.2f} + system {system:.2f})"
        )
    met = True
    for name, (leg, _) in variant_names(args.event_loop).items():
        if name not in rates:
            continue
        r = statistics.median(ratio(name, i) for i in rounds)
        goal = GOALS[leg]
        checks = [(f"{name} >= {goal:.1f}x Postfix alone", r >= goal, f"median {r:.2f}x")]
        if leg == "chain":
            ms = statistics.median(u + k for u, k in results.cpu_ms[name])
            checks.append(
                (f"{name}: smtpguard CPU <= {CPU_GOAL_MS:.1f} ms/msg", ms <= CPU_GOAL_MS,
                 f"median {ms:.2f} ms")
            )  # fmt: skip
        bad = [i + 1 for i in rounds if results.lost[name][i] != (0, 0)]
        checks.append(
            (f"{name}: nothing lost or duplicated", not bad,
             f"rounds with losses/duplicates: {bad}" if bad else "every round")
        )  # fmt: skip
        for what, ok, detail in checks:
            met &= ok
            print(f"goal {what}: {detail} -> {'met' if ok else 'NOT met'}")
    return met


#: Issue 15's goals: the chain at least 0.8x Postfix alone, smtpguard alone at least
#: 2.0x, and at most 1.0 ms of smtpguard's CPU per message in the chain.
GOALS = {"alone": 2.0, "chain": 0.8}
CPU_GOAL_MS = 1.0


# --------------------------------------------------------------------------- memory


def queued_rss(args: argparse.Namespace, work: Path) -> None:
    """Queue ``--rss-messages`` in a relay that cannot deliver, then read its memory."""
    closed = free_port()  # nothing listens there: every delivery attempt is refused
    guard = Smtpguard(closed, work / "smtpguard-rss").start()
    try:
        before = guard.status()
        started = time.monotonic()
        batch = 10_000
        sent = 0
        while sent < args.rss_messages:
            n = min(batch, args.rss_messages - sent)
            src = subprocess.run(
                smtp_source(guard.port, n, args.sessions, args.size),
                capture_output=True,
                text=True,
                timeout=max(args.timeout, n),
            )
            if src.returncode != 0:
                raise SystemExit(f"smtp-source failed while queueing: {src.stdout}{src.stderr}")
            sent += n
            st = guard.status()
            print(
                f"queued {sent:>7}: VmRSS {st['VmRSS'] / 1024:6.1f} MB "
                f"(peak {st['VmHWM'] / 1024:6.1f} MB), {time.monotonic() - started:5.0f}s",
                flush=True,
            )
        time.sleep(5)  # let the scheduler take its first pass over the refused attempts
        stats = subprocess.run(
            [*SMTPGUARD, "--data-dir", str(guard.data_dir), "queue", "stats", "--format", "json"],
            capture_output=True,
            text=True,
            timeout=300,
        )
        pending = json.loads(stats.stdout)["messages_pending"] if stats.returncode == 0 else -1
        if pending < sent:
            raise SystemExit(f"only {pending} of {sent} messages queued: {stats.stderr.strip()}")
        st = guard.status()
        db = guard.data_dir / "smtpguard.db"
        size = sum(p.stat().st_size for p in guard.data_dir.glob("smtpguard.db*"))
        print(
            f"relay memory with {pending} messages queued (smtpguard queue stats): "
            f"VmRSS {st['VmRSS'] / 1024:.1f} MB, "
            f"peak VmHWM {st['VmHWM'] / 1024:.1f} MB (at start {before['VmRSS'] / 1024:.1f} MB;"
            f" goal < 200 MB); {db.name} + WAL {size / 1e6:.0f} MB on disk"
        )
    finally:
        guard.stop()


# --------------------------------------------------------------------------- profiling


def sampler_child(out: Path, interval: float, argv: list[str]) -> None:
    """Run ``smtpguard <argv>`` in this process while a thread samples where CPU goes.

    Stdlib only (py-spy is not installed). Every ``interval`` seconds it reads each
    thread's stack (``sys._current_frames()``) and that thread's CPU clock
    (``time.pthread_getcpuclockid``); the CPU time used since the previous sample is
    charged to the current stack. Blocked threads use no CPU and so cost nothing,
    unlike a plain stack count. Counting starts when ``out.start`` appears (after
    start-up and warm-up); written to ``out`` every 2 s and at exit.
    """
    self_ns: collections.Counter[str] = collections.Counter()
    incl_ns: collections.Counter[str] = collections.Counter()
    thread_ns: collections.Counter[str] = collections.Counter()
    last_cpu: dict[int, int] = {}
    clocks: dict[int, int] = {}
    wall_start = time.monotonic()

    def where(code: types.CodeType) -> str:
        short = code.co_filename.split("site-packages/")[-1].split("/lib/python3.11/")[-1]
        short = short.replace(str(REPO) + "/", "")
        return f"{code.co_qualname} ({short}:{code.co_firstlineno})"

    def dump() -> None:
        total = sum(thread_ns.values()) or 1
        wall = time.monotonic() - wall_start
        lines = [
            f"CPU sampled: {total / 1e9:.2f} s over {wall:.1f} s wall "
            f"(every {interval * 1000:.0f} ms, CPU-weighted, all threads)",
            "\n-- CPU by thread --",
        ]
        lines += [f"{100 * n / total:6.1f}%  {k}" for k, n in thread_ns.most_common()]
        for title, counter in (("self", self_ns), ("inclusive", incl_ns)):
            lines.append(f"\n-- top by {title} CPU --")
            lines += [f"{100 * n / total:6.1f}%  {k}" for k, n in counter.most_common(40)]
        out.write_text("\n".join(lines) + "\n")

    def run() -> None:
        nonlocal wall_start
        me = threading.get_ident()
        trigger = out.with_suffix(".start")
        while not trigger.exists():
            time.sleep(0.05)
        wall_start = last_dump = time.monotonic()
        while True:
            time.sleep(interval)
            names = {t.ident: t.name for t in threading.enumerate()}
            for tid, frame in sys._current_frames().items():
                if tid == me:
                    continue
                try:
                    clk = clocks.get(tid) or clocks.setdefault(tid, time.pthread_getcpuclockid(tid))
                    cpu = time.clock_gettime_ns(clk)
                except OSError:
                    continue  # the thread just ended
                spent = cpu - last_cpu.get(tid, cpu)
                last_cpu[tid] = cpu
                if spent <= 0:
                    continue
                name = re.sub(r"[-_]?\d+", "", names.get(tid, "?"))
                thread_ns[name] += spent
                self_ns[where(frame.f_code)] += spent
                seen = set()
                f: types.FrameType | None = frame
                while f is not None:
                    key = where(f.f_code)
                    if key not in seen:
                        seen.add(key)
                        incl_ns[key] += spent
                    f = f.f_back
            if time.monotonic() - last_dump > 2:
                dump()
                last_dump = time.monotonic()

    import atexit

    atexit.register(dump)
    threading.Thread(target=run, name="sampler", daemon=True).start()
    from smtpguard.cli.main import main

    sys.argv = ["smtpguard", *argv]
    main()


def cprofile_child(out: Path, argv: list[str]) -> None:
    """Run ``smtpguard <argv>`` with cProfile on the event-loop (main) thread.

    Deterministic per-function times of the asyncio thread, where most of the CPU
    goes; it slows Python code down, so read it for proportions. SIGUSR2 (sent
    after start-up and warm-up) switches it on; the report is written at exit.
    """
    import atexit
    import cProfile
    import io
    import pstats

    prof = cProfile.Profile()
    signal.signal(signal.SIGUSR2, lambda *_: prof.enable())

    def dump() -> None:
        prof.disable()
        text = io.StringIO()
        stats = pstats.Stats(prof, stream=text)
        stats.sort_stats("tottime").print_stats(30)
        stats.sort_stats("cumulative").print_stats(30)
        out.write_text(text.getvalue().replace(str(REPO) + "/", ""))

    atexit.register(dump)
    from smtpguard.cli.main import main

    sys.argv = ["smtpguard", *argv]
    main()


def py_spy() -> str | None:
    """py-spy (``pip install py-spy``, a dev tool) beside this Python, or on PATH."""
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


def pyspy_summary(raw: Path, top: int = 30) -> str:
    """Top functions by self and inclusive samples from ``py-spy record --format raw``.

    py-spy samples every thread that is running (not idle) from outside the
    process, without the GIL: a thread in a system call (send, fsync) counts,
    one blocked waiting does not.
    """
    self_n: collections.Counter[str] = collections.Counter()
    incl_n: collections.Counter[str] = collections.Counter()
    threads: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [
            re.sub(r"/\S*/(site-packages|python3\.\d+|" + re.escape(REPO.name) + r")/", "", f)
            for f in stack.split(";")
        ]
        total += n
        threads[re.sub(r"\(\d+\)", "", frames[0])] += n
        if len(frames) > 1:
            self_n[frames[-1]] += n
        for f in set(frames[1:]):
            incl_n[f] += n
    total = total or 1
    lines = [f"samples: {total} (py-spy, running threads only)", "-- by thread --"]
    lines += [f"{100 * n / total:6.1f}%  {k}" for k, n in threads.most_common()]
    for title, counter in (("self", self_n), ("inclusive", incl_n)):
        lines.append(f"-- top {top} by {title} samples --")
        lines += [f"{100 * n / total:6.1f}%  {k}" for k, n in counter.most_common(top)]
    return "\n".join(lines) + "\n"


def profile(args: argparse.Namespace, work: Path) -> None:
    """Load a profiled smtpguard alone and behind Postfix; print where its CPU goes.

    With py-spy installed it samples the relay from outside (no change to the
    process); else the stdlib sampler runs inside it. cProfile always runs too
    (deterministic counts of the event-loop thread).
    """
    sink = Sink(free_port())
    spy = py_spy()
    modes = ["py-spy" if spy else "_sample", "_cprofile"]
    titles = {**MODES, "py-spy": "py-spy samples, all threads"}
    try:
        legs = [(leg, mode) for leg in ("smtpguard", "postfix+smtpguard") for mode in modes]
        for leg, mode in legs:
            out = work / f"profile-{leg}.{mode}.txt"
            wrapper = [] if mode == "py-spy" else [sys.executable, __file__, mode, str(out), "--"]
            data_dir = work / f"profile-{leg}-{mode}"
            guard = Smtpguard(sink.port, data_dir, wrapper=wrapper).start()
            front: PostfixInstance | None = None
            sampler: subprocess.Popen[bytes] | None = None
            try:
                port = guard.port
                if leg == "postfix+smtpguard":
                    front = PostfixInstance(
                        work / f"profile-postfix-{mode}",
                        name="prof-pf",
                        relayhost=f"127.0.0.1:{guard.port}",
                        fast_retry=False,
                        main=args.postfix_main,
                    ).start()
                    port = front.port
                measure(sink, port, argparse.Namespace(**{**vars(args), "messages": 20}))
                assert guard.proc is not None
                if mode == "py-spy":
                    assert spy is not None
                    sampler = subprocess.Popen(
                        [spy, "record", "-p", str(guard.proc.pid), "-r", "200", "-f", "raw",
                         "-o", str(out.with_suffix(".raw")), "--nonblocking"],
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                    )  # fmt: skip
                    time.sleep(1.0)  # attached
                else:
                    out.with_suffix(".start").touch()  # the sampler starts counting
                    guard.proc.send_signal(signal.SIGUSR2)  # cProfile starts
                    time.sleep(0.2)
                rate, _ = measure(sink, port, args)
            finally:
                if sampler is not None:
                    sampler.send_signal(signal.SIGINT)
                    sampler.wait(60)
                if front is not None:
                    front.stop()
                guard.stop()
            time.sleep(0.5)
            if mode == "py-spy" and out.with_suffix(".raw").exists():
                out.write_text(pyspy_summary(out.with_suffix(".raw")))
            title = f"{titles[mode]} of smtpguard in {leg}"
            print(f"\n== {title}: {rate:.0f} messages/s while profiled ==")
            print(out.read_text() if out.exists() else "(no profile written)")
    finally:
        sink.stop()


# --------------------------------------------------------------------------- main


def load_options(p: argparse.ArgumentParser) -> None:
    """The smtp-source load options every throughput benchmark shares."""
    p.add_argument("--messages", type=int, default=2000, help="messages per run (default 2000)")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    p.add_argument("--sessions", type=int, default=20, help="parallel SMTP sessions (20)")
    p.add_argument("--size", type=int, default=5120, help="message body bytes (5120)")
    p.add_argument("--timeout", type=float, default=600, help="seconds allowed per run")


@contextlib.contextmanager
def work_directory(prefix: str, *, keep: bool) -> Iterator[Path]:
    """A fresh directory Postfix's daemons (user postfix) can reach; removed unless ``keep``."""
    work = Path(tempfile.mkdtemp(prefix=prefix))
    work.chmod(0o755)
    try:
        yield work
    finally:
        if keep:
            print(f"work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def check_tools() -> None:
    for tool in (SMTP_SOURCE, SMTP_SINK):
        if not os.access(tool, os.X_OK):
            raise SystemExit(f"{tool} missing: install Debian's postfix package (make setup-apt)")


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] in MODES:
        out, rest = Path(sys.argv[2]), sys.argv[sys.argv.index("--") + 1 :]
        if sys.argv[1] == "_sample":
            signal.signal(signal.SIGUSR2, signal.SIG_IGN)
            sampler_child(out, 0.005, rest)
        else:
            cprofile_child(out, rest)
        return
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    load_options(p)
    p.add_argument("--postfix-only", action="store_true", help="skip the smtpguard legs")
    p.add_argument(
        "--rss-messages",
        type=int,
        default=100_000,
        help="messages queued for the memory test (0: skip)",
    )
    p.add_argument("--profile", action="store_true", help="sample a loaded smtpguard's threads")
    p.add_argument(
        "--postfix-set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="main.cf setting for every Postfix instance (repeatable)",
    )
    p.add_argument(
        "--event-loop",
        action="append",
        choices=("auto", "uvloop", "asyncio"),
        help="relay.event_loop of the smtpguard legs; repeat to compare loops interleaved"
        " (default: auto)",
    )
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    args = p.parse_args()
    args.postfix_main = dict(kv.split("=", 1) for kv in args.postfix_set)
    args.event_loop = list(dict.fromkeys(args.event_loop or ["auto"]))
    check_tools()

    print("command:", shlex.join([Path(sys.executable).name, *sys.argv]))
    print(
        f"{args.rounds} rounds x {args.messages} messages, {args.sessions} sessions, "
        f"{args.size}-byte bodies, one message per connection; {os.cpu_count()} CPUs; "
        f"started {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}",
        flush=True,
    )
    with work_directory("smtpguard-bench-", keep=args.keep) as work:
        met = report(throughput(args, work), args)
        print("every goal met" if met else "some goals NOT met", flush=True)
        if args.profile and not args.postfix_only:
            profile(args, work)
        if args.rss_messages and not args.postfix_only:
            queued_rss(args, work)


if __name__ == "__main__":
    main()

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
5 KB bodies. smtpguard runs with its defaults (durable commits on), started with
its one-line start. Goals: smtpguard >= 1.0x Postfix, the chain >= 0.7x.

``--rss-messages N`` then queues N messages in a smtpguard whose smarthost is a
closed port (nothing can leave) and reads VmRSS/VmHWM from /proc (goal < 200 MB
for 100,000). ``--profile`` samples every thread of a smtpguard under load with a
stdlib-only sampler and prints where the time goes.

Run as root (smtp-sink then needs ``-u postfix``): ``python benchmarks/relay_throughput.py``.
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
    """

    def __init__(self, port: int) -> None:
        self.port = port
        argv = [SMTP_SINK, "-c", f"127.0.0.1:{port}", "512"]
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

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


# --------------------------------------------------------------------------- smtpguard


@dataclass
class Smtpguard:
    """``smtpguard serve --listen --smarthost --data-dir`` as a subprocess (the one-line start)."""

    smarthost_port: int
    data_dir: Path
    port: int = field(default_factory=free_port)
    wrapper: list[str] = field(default_factory=list)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def argv(self) -> list[str]:
        return [
            *(self.wrapper or SMTPGUARD),
            "serve",
            "--listen", f"127.0.0.1:{self.port}",
            "--smarthost", f"127.0.0.1:{self.smarthost_port}",
            "--data-dir", str(self.data_dir),
        ]  # fmt: skip

    def start(self) -> Smtpguard:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.data_dir / "serve.log", "wb")  # noqa: SIM115 (lives with the process)
        env = {k: v for k, v in os.environ.items() if not k.startswith("SMTPGUARD_")}
        self.proc = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT, env=env)
        if not wait_port(self.port, 30):
            self.stop()
            tail = (self.data_dir / "serve.log").read_text(errors="replace")[-2000:]
            raise SystemExit(f"smtpguard did not listen on {self.port}:\n{tail}")
        return self

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


def smtp_source(port: int, messages: int, sessions: int, size: int) -> list[str]:
    return [
        SMTP_SOURCE, "-s", str(sessions), "-m", str(messages), "-l", str(size),
        "-f", SENDER, "-t", RECIPIENT, "-M", "source.test", f"127.0.0.1:{port}",
    ]  # fmt: skip


def measure(sink: Sink, port: int, args: argparse.Namespace) -> float:
    """Messages per second from smtp-source's start until the last one is AT THE SINK."""
    target = sink.count + args.messages
    started = time.monotonic()
    src = subprocess.run(
        smtp_source(port, args.messages, args.sessions, args.size),
        capture_output=True,
        text=True,
        timeout=args.timeout,
    )
    if src.returncode != 0:
        raise SystemExit(f"smtp-source to port {port} failed: {src.stdout}{src.stderr}")
    if not sink.wait_for(target, args.timeout):
        raise SystemExit(
            f"only {sink.count - target + args.messages} of {args.messages} messages reached "
            f"the sink within {args.timeout}s (via port {port})"
        )
    return args.messages / (time.monotonic() - started)


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


def throughput(args: argparse.Namespace, work: Path) -> Results:
    sink = Sink(free_port())
    postfix = PostfixInstance(
        work / "postfix",
        name="bench-pf",
        relayhost=f"127.0.0.1:{sink.port}",
        fast_retry=False,
        main=args.postfix_main,
    )
    guard = Smtpguard(sink.port, work / "smtpguard")
    guard_behind = Smtpguard(sink.port, work / "smtpguard-chain")
    chain = PostfixInstance(
        work / "postfix-chain",
        name="bench-chain",
        relayhost="",
        fast_retry=False,
        main=args.postfix_main,
    )
    rates: dict[str, list[float]] = {c: [] for c in CONFIGS}
    cpu_ms: dict[str, list[tuple[float, float]]] = {"smtpguard": [], "postfix+smtpguard": []}
    busy: dict[str, list[float]] = {c: [] for c in CONFIGS}
    postfix_ms: dict[str, list[float]] = {"postfix": [], "postfix+smtpguard": []}
    relay_of = {"smtpguard": guard, "postfix+smtpguard": guard_behind}
    postfix_of = {"postfix": postfix, "postfix+smtpguard": chain}
    try:
        postfix.start()
        targets = {"sink": sink.port, "postfix": postfix.port}
        if not args.postfix_only:
            guard.start()
            guard_behind.start()
            chain.relayhost = f"127.0.0.1:{guard_behind.port}"
            chain.start()
            targets.update({"smtpguard": guard.port, "postfix+smtpguard": chain.port})
        # One unmeasured warm-up message per path (process start-up, first connections).
        warm = argparse.Namespace(**{**vars(args), "messages": 20, "sessions": 4})
        for port in targets.values():
            measure(sink, port, warm)
        for rnd in range(1, args.rounds + 1):
            order = list(targets)
            # Rotate the order each round so no configuration always runs first.
            order = order[(rnd - 1) % len(order) :] + order[: (rnd - 1) % len(order)]
            line = []
            for name in order:
                relay = relay_of.get(name)
                cpu_before = relay.cpu_seconds() if relay else (0.0, 0.0)
                front = postfix_of.get(name)
                front_pid = front.master_pid if front else None
                front_before = tree_cpu_seconds(front_pid) if front_pid else 0.0
                jiffies = cpu_busy_jiffies()
                rate = measure(sink, targets[name], args)
                now = cpu_busy_jiffies()
                if front_pid:
                    used = tree_cpu_seconds(front_pid) - front_before
                    postfix_ms[name].append(used * 1000 / args.messages)
                busy[name].append((now[0] - jiffies[0]) / max(now[1] - jiffies[1], 1))
                rates[name].append(rate)
                line.append(f"{name}={rate:.0f}/s")
                if relay:
                    after = relay.cpu_seconds()
                    n = args.messages / 1000
                    cpu_ms[name].append(
                        ((after[0] - cpu_before[0]) / n, (after[1] - cpu_before[1]) / n)
                    )
            print(f"round {rnd}: " + "  ".join(line), flush=True)
    finally:
        chain.stop()
        guard_behind.stop()
        guard.stop()
        postfix.stop()
        sink.stop()
    return Results(
        {k: v for k, v in rates.items() if v},
        {k: v for k, v in cpu_ms.items() if v},
        {k: v for k, v in busy.items() if v},
        {k: v for k, v in postfix_ms.items() if v},
    )


def report(results: Results) -> None:
    rates = results.rates
    base = rates["postfix"]
    print("\nmessages/s at the sink, and ratio to Postfix alone in the same round")
    header = f"{'round':>5}  " + "  ".join(f"{c:>24}" for c in rates)
    print(header)
    for i in range(len(base)):
        cells = [f"{rates[c][i]:8.0f} ({rates[c][i] / base[i]:5.2f}x)" for c in rates]
        print(f"{i + 1:>5}  " + "  ".join(f"{c:>24}" for c in cells))
    med = [
        f"{statistics.median(v):8.0f} "
        f"({statistics.median(r / b for r, b in zip(v, base, strict=True)):5.2f}x)"
        for v in rates.values()
    ]
    print(f"{'median':>6} " + "  ".join(f"{c:>24}" for c in med))
    goals = {"smtpguard": 1.0, "postfix+smtpguard": 0.7}
    for name, goal in goals.items():
        if name in rates:
            ratio = statistics.median(r / b for r, b in zip(rates[name], base, strict=True))
            verdict = "met" if ratio >= goal else "NOT met"
            print(f"goal {name} >= {goal:.1f}x Postfix: median {ratio:.2f}x -> {verdict}")
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


def profile(args: argparse.Namespace, work: Path) -> None:
    """Load a sampled smtpguard alone and behind Postfix; print where its CPU goes."""
    sink = Sink(free_port())
    try:
        legs = [(leg, mode) for leg in ("smtpguard", "postfix+smtpguard") for mode in MODES]
        for leg, mode in legs:
            out = work / f"profile-{leg}.{mode}.txt"
            wrapper = [sys.executable, __file__, mode, str(out), "--"]
            data_dir = work / f"profile-{leg}-{mode}"
            guard = Smtpguard(sink.port, data_dir, wrapper=wrapper).start()
            front: PostfixInstance | None = None
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
                out.with_suffix(".start").touch()  # the sampler starts counting
                assert guard.proc is not None
                guard.proc.send_signal(signal.SIGUSR2)  # cProfile starts
                time.sleep(0.2)
                rate = measure(sink, port, args)
            finally:
                if front is not None:
                    front.stop()
                guard.stop()
            time.sleep(0.5)
            print(
                f"\n== {MODES[mode]} of smtpguard in {leg}: {rate:.0f} messages/s while profiled =="
            )
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
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    args = p.parse_args()
    args.postfix_main = dict(kv.split("=", 1) for kv in args.postfix_set)
    check_tools()

    print("command:", shlex.join([Path(sys.executable).name, *sys.argv]))
    print(
        f"{args.rounds} rounds x {args.messages} messages, {args.sessions} sessions, "
        f"{args.size}-byte bodies, one message per connection; {os.cpu_count()} CPUs; "
        f"started {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}",
        flush=True,
    )
    with work_directory("smtpguard-bench-", keep=args.keep) as work:
        report(throughput(args, work))
        if args.profile and not args.postfix_only:
            profile(args, work)
        if args.rss_messages and not args.postfix_only:
            queued_rss(args, work)


if __name__ == "__main__":
    main()

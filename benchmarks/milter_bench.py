"""Postfix throughput with smtpguard's milter and policy service, against a do-nothing milter.

Configurations, measured interleaved round by round in ONE run (this 2-core
machine drifts, so only ratios within a round mean anything):

  postfix          smtp-source -> Postfix -> smtp-sink            (no check at all)
  noop-milter      ... Postfix with a pymilter milter that does nothing
  smtpguard-milter ... Postfix with `smtpguard milter` (conf/postfix/milter.cf)
  milter-inbound   ... the same, every client counted as inbound: every message is
                   also copied to the milter and classified (it is not a bounce)
  noop-policy      ... Postfix with a policy server that answers DUNNO at once
                   (asyncio, no lookup: what Postfix's policy client itself costs)
  policy           ... Postfix with `smtpguard policy` (conf/postfix/policy.cf)

Each Postfix relays to one ``smtp-sink``; a run counts messages AT THE SINK until
every one has arrived. smtp-source sends one message per connection. The
suppression list holds ``--suppressed`` addresses (the recipient is not one of
them: every message reaches the sink, and every RCPT costs a real lookup).
Goals: smtpguard's milter >= 0.9x the do-nothing milter; the policy service >=
0.95x no check at all (also shown against the do-nothing policy server). Besides
messages/s, the CPU per message of Postfix (all its daemons) and of the milter or
policy process is printed: with other load on the machine it is steadier than
throughput, and "CPU-bound estimate" is the ratio those costs predict.

Run as root: ``python benchmarks/milter_bench.py``. Does not depend on pytest.
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

# The script's own folder is on sys.path; relay_throughput puts the repository there too.
from relay_throughput import (
    SMTPGUARD,
    Sink,
    check_tools,
    load_options,
    measure,
    tree_cpu_seconds,
    work_directory,
)

from tests.fixtures.postfix_instance import PostfixInstance, free_port, wait_port

CONFIGS = (
    "postfix", "noop-milter", "smtpguard-milter", "milter-inbound", "noop-policy", "policy",
)  # fmt: skip
MILTERS = ("noop-milter", "smtpguard-milter", "milter-inbound")
GOALS = {
    ("smtpguard-milter", "noop-milter"): 0.9,
    ("policy", "postfix"): 0.95,
    ("policy", "noop-policy"): 0.95,
}


def noop_milter(socket: str) -> None:
    """Child mode: a pymilter milter with no callbacks of its own (the reference cost)."""
    import Milter

    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT, signal.SIGHUP})

    class Noop(Milter.Base):
        pass

    Milter.factory = Noop
    Milter.runmilter("noop", socket, 0)


def noop_policy(port: int) -> None:
    """Child mode: a policy server answering every request DUNNO (Postfix's own cost)."""
    import asyncio

    async def session(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                await reader.readuntil(b"\n\n")
                writer.write(b"action=DUNNO\n\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    async def main() -> None:
        server = await asyncio.start_server(session, "127.0.0.1", port)
        await server.serve_forever()

    asyncio.run(main())


class Service:
    """A long-running child process (a milter or the policy service), stopped with SIGKILL."""

    def __init__(self, argv: list[str], port: int, log: Path) -> None:
        self.port = port
        env = {k: v for k, v in os.environ.items() if not k.startswith("SMTPGUARD_")}
        with log.open("wb") as out:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env)
        if not wait_port(port, 30):
            self.stop()
            raise SystemExit(f"{argv} did not listen on {port}:\n{log.read_text()[-2000:]}")

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def smtpguard_config(work: Path, name: str, section: str, settings: dict[str, object]) -> Path:
    from smtpguard.config import toml_value

    path = work / f"{name}.toml"
    lines = [f"[store]\ndata_dir = {toml_value(str(work / 'var'))}\n[{section}]"]
    lines += [f"{k} = {toml_value(v)}" for k, v in settings.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def fill_store(work: Path, count: int) -> None:
    """``count`` suppressed addresses at a few domains (one bulk transaction)."""
    from smtpguard.store.suppression import SuppressionStore, make_observation

    with SuppressionStore.open(work / "var") as store, store.bulk(actor="bench") as bulk:
        for i in range(count):
            bulk.add(make_observation(f"gone{i}@d{i % 50}.example", "userunknown", source="import"))


def start_services(work: Path) -> dict[str, Service]:
    def milter(name: str, **settings: object) -> Service:
        port = free_port()
        settings = {"listen": f"inet:127.0.0.1:{port}", **settings}
        config = smtpguard_config(work, name, "milter", settings)
        argv = [*SMTPGUARD, "milter", "--config", str(config), "--log-level", "warning"]
        return Service(argv, port, work / f"{name}.log")

    noop_port = free_port()
    noop_policy_port = free_port()
    policy_port = free_port()
    policy_config = smtpguard_config(
        work, "policy", "policy_service", {"listen": f"127.0.0.1:{policy_port}"}
    )
    return {
        "noop-milter": Service(
            [sys.executable, __file__, "--_noop-milter", f"inet:{noop_port}@127.0.0.1"],
            noop_port,
            work / "noop.log",
        ),
        "smtpguard-milter": milter("smtpguard-milter"),
        "milter-inbound": milter("milter-inbound", internal_networks=[]),
        "noop-policy": Service(
            [sys.executable, __file__, "--_noop-policy", str(noop_policy_port)],
            noop_policy_port,
            work / "noop-policy.log",
        ),
        "policy": Service(
            [*SMTPGUARD, "policy", "--config", str(policy_config), "--log-level", "warning"],
            policy_port,
            work / "policy.log",
        ),
    }


@dataclass
class Results:
    rates: dict[str, list[float]]  # messages/s at the sink, one per round
    postfix_ms: dict[str, list[float]]  # Postfix's CPU (all its daemons) per message
    service_ms: dict[str, list[float]]  # the milter's or policy service's CPU per message

    def cpu_ms(self, name: str) -> float:
        """Median CPU per message of Postfix and its milter or policy service together."""
        service = statistics.median(self.service_ms[name]) if self.service_ms[name] else 0.0
        return statistics.median(self.postfix_ms[name]) + service


def throughput(args: argparse.Namespace, work: Path) -> Results:
    sink = Sink(free_port())
    services = start_services(work)
    instances: dict[str, PostfixInstance] = {}
    for name in CONFIGS:
        service = services.get(name)
        where = f"inet:127.0.0.1:{service.port}" if service else None
        instances[name] = PostfixInstance(
            work / f"pf-{name}",
            name=f"bench{len(instances)}",
            relayhost=f"127.0.0.1:{sink.port}",
            fast_retry=False,
            milter=where if name in MILTERS else None,
            policy_service=where if name in ("noop-policy", "policy") else None,
        )
    results = Results(*({c: [] for c in CONFIGS} for _ in range(3)))
    try:
        for pf in instances.values():
            pf.start()
        warm = argparse.Namespace(**{**vars(args), "messages": 40, "sessions": 4})
        for pf in instances.values():
            measure(sink, pf.port, warm)
        for rnd in range(1, args.rounds + 1):
            shift = (rnd - 1) % len(CONFIGS)
            order = CONFIGS[shift:] + CONFIGS[:shift]
            line = []
            for name in order:
                service, master = services.get(name), instances[name].master_pid
                assert master is not None
                postfix_before = tree_cpu_seconds(master)
                service_before = service.cpu_seconds() if service else 0.0
                results.rates[name].append(measure(sink, instances[name].port, args))
                per_message = 1000 / args.messages
                postfix_cpu = tree_cpu_seconds(master) - postfix_before
                results.postfix_ms[name].append(postfix_cpu * per_message)
                if service:
                    service_cpu = service.cpu_seconds() - service_before
                    results.service_ms[name].append(service_cpu * per_message)
                line.append(f"{name}={results.rates[name][-1]:.0f}/s")
            print(f"round {rnd}: " + "  ".join(line), flush=True)
    finally:
        for pf in instances.values():
            pf.stop()
        for service in services.values():
            service.stop()
        sink.stop()
    return results


def report(results: Results) -> None:
    rates = results.rates
    base = rates["postfix"]
    print("\nmessages/s at the sink, and ratio to Postfix without any check in the same round")
    print(f"{'round':>5}  " + "  ".join(f"{c:>22}" for c in CONFIGS))
    for i in range(len(base)):
        cells = [f"{rates[c][i]:7.0f} ({rates[c][i] / base[i]:4.2f}x)" for c in CONFIGS]
        print(f"{i + 1:>5}  " + "  ".join(f"{c:>22}" for c in cells))
    print("CPU per message (median ms): Postfix's daemons + the milter or policy process")
    for c in CONFIGS:
        service = results.service_ms[c]
        extra = f" + {statistics.median(service):.2f}" if service else ""
        print(f"  {c:>17}: {statistics.median(results.postfix_ms[c]):.2f}{extra}")
    for (name, ref), goal in GOALS.items():
        ratios = [r / b for r, b in zip(rates[name], rates[ref], strict=True)]
        median = statistics.median(ratios)
        shown = ", ".join(f"{r:.2f}" for r in ratios)
        verdict = "met" if median >= goal else "NOT met"
        print(f"goal {name} >= {goal}x {ref}: per round {shown}; median {median:.2f}x -> {verdict}")
        cost = results.cpu_ms(ref) / results.cpu_ms(name)
        print(f"  CPU-bound estimate (CPU per message of {ref} / of {name}): {cost:.2f}x")


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--_noop-milter":
        noop_milter(sys.argv[2])
        return
    if len(sys.argv) == 3 and sys.argv[1] == "--_noop-policy":
        noop_policy(int(sys.argv[2]))
        return
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    load_options(p)
    p.add_argument("--suppressed", type=int, default=100_000, help="list size (100000)")
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    args = p.parse_args()
    check_tools()
    print("command:", shlex.join([Path(sys.executable).name, *sys.argv]))
    load = os.getloadavg()[0]
    print(
        f"{args.rounds} rounds x {args.messages} messages, {args.sessions} sessions, "
        f"{args.size}-byte bodies, one message per connection, {args.suppressed:,} suppressed "
        f"addresses; {os.cpu_count()} CPUs, load average {load:.2f} at start; "
        f"{time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}",
        flush=True,
    )
    with work_directory("smtpguard-milter-bench-", keep=args.keep) as work:
        fill_store(work, args.suppressed)
        report(throughput(args, work))
        print(f"load average at the end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()

"""Peak memory of the relay process: 20 concurrent 30 MB messages, and 200 idle sessions.

Each phase starts its own ``smtpguard serve`` (defaults, data in a temporary
directory, smarthost a closed port: nothing is delivered, so the delivery side
never loads a body) and reads its peak resident set (``VmHWM`` from
/proc/PID/status) when the phase is over.

* ``messages``: ``--clients`` raw SMTP clients at once (default 20), each sending
  one ``--size`` message (default 30 MB, 76-octet lines, SIZE= declared, as
  Postfix sends it). A client that gets ``451 4.3.2`` (the relay's
  ``relay.max_data_in_flight``, default 128 MiB) tries again after a pause, as
  an MTA would, until every message is accepted; the phase reports how many
  tries were deferred. Goal: peak RSS < 300 MB.
* ``idle``: ``--idle`` sessions (default 200 = ``relay.max_sessions``) that
  connect, say EHLO and wait.

Does not depend on pytest: ``python benchmarks/inbound_memory.py``.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from smtpguard.config import toml_value  # noqa: E402
from tests.fixtures.net import free_port, wait_port  # noqa: E402

SMTPGUARD = [sys.executable, "-m", "smtpguard"]


class Relay:
    """``smtpguard serve`` with a config file; its /proc status."""

    def __init__(self, work: Path, name: str, relay: dict[str, object]) -> None:
        self.port = free_port()
        self.data_dir = work / name
        self.data_dir.mkdir(parents=True)
        config = self.data_dir / "smtpguard.toml"
        lines = ["[store]", f"data_dir = {toml_value(str(self.data_dir))}", "[relay]"]
        lines += [f"listen = {toml_value(f'127.0.0.1:{self.port}')}"]
        lines += [f"{k} = {toml_value(v)}" for k, v in relay.items()]
        # Nothing listens there: every delivery attempt is refused before any body is read.
        lines += ["[delivery]", f"smarthost = {toml_value(f'127.0.0.1:{free_port()}')}"]
        config.write_text("\n".join(lines) + "\n")
        env = {k: v for k, v in os.environ.items() if not k.startswith("SMTPGUARD_")}
        log = open(self.data_dir / "serve.log", "wb")  # noqa: SIM115 (lives with the process)
        self.proc = subprocess.Popen(
            [*SMTPGUARD, "--config", str(config), "serve"], stdout=log,
            stderr=subprocess.STDOUT, env=env,
        )  # fmt: skip
        if not wait_port(self.port, 30):
            self.stop()
            raise SystemExit(f"smtpguard did not listen:\n{self.log()[-2000:]}")

    def log(self) -> str:
        return (self.data_dir / "serve.log").read_text(errors="replace")

    def status(self) -> dict[str, float]:
        """VmRSS and VmHWM (peak) in MB."""
        out = {}
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0]) / 1024
        return out

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Client:
    """A minimal SMTP client over a socket: the body is sent as it is (no copies)."""

    def __init__(self, port: int, timeout: float) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.file = self.sock.makefile("rb")
        self.reply()

    def reply(self) -> str:
        lines = []
        while True:
            line = self.file.readline()
            if not line:
                raise ConnectionError("connection closed")
            lines.append(line.decode("ascii", "replace").rstrip())
            if line[3:4] != b"-":
                return "\n".join(lines)

    def cmd(self, line: str) -> str:
        self.sock.sendall(line.encode() + b"\r\n")
        return self.reply()

    def close(self) -> None:
        self.file.close()
        self.sock.close()


def body(size: int) -> bytes:
    """A message of ``size`` octets in 76-octet lines (no line starts with a dot)."""
    line = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/ABCDEFGHIJKL\r\n"
    head = b"From: bench@source.test\r\nTo: rcpt@sink.test\r\nSubject: big\r\n\r\n"
    n = (size - len(head)) // len(line)
    return head + line * n


def send_until_accepted(port: int, data: bytes, n: int, stats: dict[str, int]) -> None:
    """One message; 4xx replies are tried again (as an MTA would) until 250."""
    lock = stats_lock
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        client = Client(port, timeout=120)
        try:
            client.cmd("EHLO bench.test")
            reply = client.cmd(f"MAIL FROM:<bench{n}@source.test> SIZE={len(data)}")
            if reply.startswith("250"):
                client.cmd("RCPT TO:<rcpt@sink.test>")
                reply = client.cmd("DATA")
                if reply.startswith("354"):
                    client.sock.sendall(data)
                    reply = client.cmd(".")
            client.cmd("QUIT")
        except (OSError, ConnectionError) as e:
            reply = f"connection: {e}"
        finally:
            client.close()
        with lock:
            if reply.startswith("250"):
                stats["accepted"] += 1
                return
            stats["deferred"] += 1
            stats["last_refusal"] = reply  # type: ignore[assignment]
        time.sleep(0.5)
    raise SystemExit(f"message {n} not accepted within 600 s")


stats_lock = threading.Lock()


def phase_messages(work: Path, args: argparse.Namespace, relay_cfg: dict[str, object]) -> None:
    data = body(args.size)
    relay = Relay(work, "messages", relay_cfg)
    try:
        before = relay.status()
        stats: dict[str, int] = {"accepted": 0, "deferred": 0}
        started = time.monotonic()
        threads = [
            threading.Thread(target=send_until_accepted, args=(relay.port, data, n, stats))
            for n in range(args.clients)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.monotonic() - started
        after = relay.status()
        on_disk = sum(p.stat().st_size for p in relay.data_dir.glob("smtpguard.db*"))
        print(
            f"{args.clients} concurrent {len(data) / 1e6:.1f} MB messages: all "
            f"{stats['accepted']} accepted in {elapsed:.1f} s, {stats['deferred']} tries "
            f"deferred (451 4.3.2, tried again after 0.5 s)"
        )
        print(
            f"  relay RSS at start {before['VmRSS']:.1f} MB, peak (VmHWM) {after['VmHWM']:.1f} MB"
            f" (goal < 300 MB), after {after['VmRSS']:.1f} MB; database + WAL on disk "
            f"{on_disk / 1e6:.0f} MB"
        )
        if stats["deferred"]:
            print(f"  a deferral: {stats.get('last_refusal')}")
    finally:
        relay.stop()


def phase_idle(work: Path, args: argparse.Namespace, relay_cfg: dict[str, object]) -> None:
    relay = Relay(work, "idle", relay_cfg)
    clients: list[Client] = []
    try:
        before = relay.status()
        for _ in range(args.idle):
            c = Client(relay.port, timeout=30)
            c.cmd("EHLO idle.test")
            clients.append(c)
        time.sleep(1.0)
        after = relay.status()
        per = (after["VmRSS"] - before["VmRSS"]) * 1024 / max(args.idle, 1)
        print(
            f"{args.idle} idle sessions (EHLO, then nothing): relay RSS {before['VmRSS']:.1f} MB"
            f" -> {after['VmRSS']:.1f} MB (peak {after['VmHWM']:.1f} MB), "
            f"about {per:.0f} kB per session"
        )
    finally:
        for c in clients:
            c.close()
        relay.stop()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--clients", type=int, default=20, help="concurrent messages (20)")
    p.add_argument("--size", type=int, default=30_000_000, help="message size in octets (30 MB)")
    p.add_argument("--idle", type=int, default=200, help="idle sessions (200)")
    p.add_argument(
        "--max-data-in-flight", type=int, default=0,
        help="relay.max_data_in_flight for the relay (default: its own default)",
    )  # fmt: skip
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    args = p.parse_args()
    print("command:", shlex.join([Path(sys.executable).name, *sys.argv]))
    print(
        f"{os.cpu_count()} CPUs; started {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}",
        flush=True,
    )
    relay_cfg: dict[str, object] = {}
    if args.max_data_in_flight:
        relay_cfg["max_data_in_flight"] = args.max_data_in_flight
    work = Path(tempfile.mkdtemp(prefix="smtpguard-inbound-mem-"))
    try:
        if args.clients:
            phase_messages(work, args, relay_cfg)
        if args.idle:
            phase_idle(work, args, relay_cfg)
    finally:
        if args.keep:
            print(f"work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

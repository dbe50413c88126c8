"""Outbound SMTP client throughput: smtpguard's client vs aiosmtplib as the relay uses it.

Each client sends ``--messages`` 5 KB messages over each of ``--connections``
reused connections (all connections at once, one event loop, one process) to
Postfix's ``smtp-sink`` on loopback (a separate process that advertises
PIPELINING and answers at once). Clients, interleaved round by round (the
2-core machine is shared and drifts, so compare within a round):

  aiosmtplib           aiosmtplib 5 lock-step, as the relay's delivery code drives it
                       today: execute_command MAIL / RCPT / DATA, then the
                       dot-stuffed body written to its protocol and the reply read
  smtpclient           smtpguard.relay.smtpclient, PIPELINING (one round trip for
                       MAIL + RCPT + DATA, one for the body)
  smtpclient-lockstep  the same client with pipelining turned off

Reported per client: messages/s (wall) and CPU ms per message of this process
(``time.process_time``: the client's own cost, less noisy than wall time; the
sink runs elsewhere). Every transaction's replies are checked: a run where a
message was not accepted fails.

Run as root (smtp-sink needs ``-u postfix``)::

    .venv/bin/python benchmarks/smtpclient_bench.py --rounds 5 --connections 4 --messages 500
"""

from __future__ import annotations

import argparse
import asyncio
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import aiosmtplib  # noqa: E402

from smtpguard.relay.smtpclient import (  # noqa: E402
    Envelope,
    Recipient,
    SMTPClient,
    wire_data,
)
from tests.fixtures.net import free_port, wait_port  # noqa: E402

SMTP_SINK = "/usr/sbin/smtp-sink"
SENDER = "bench@source.test"
Sender = Callable[[int, int, bytes, int], Awaitable[None]]


def message(size: int) -> bytes:
    """A plain-text message of about ``size`` bytes, CRLF lines, some starting with a dot."""
    head = (
        b"From: Bench <bench@source.test>\r\nTo: sink@sink.test\r\nSubject: benchmark\r\n"
        b"Message-ID: <bench@source.test>\r\nMIME-Version: 1.0\r\n"
        b"Content-Type: text/plain; charset=us-ascii\r\n\r\n"
    )
    line = b"The quick brown fox jumps over the lazy dog; pack my box with five dozen.\r\n"
    body = head
    n = 0
    while len(body) < size:
        body += (b"." if n % 20 == 19 else b"") + line
        n += 1
    return body


async def via_aiosmtplib(port: int, count: int, body: bytes, rcpts: int) -> None:
    """The relay's delivery path today (lock-step, aiosmtplib 5)."""
    smtp = aiosmtplib.SMTP(
        hostname="127.0.0.1", port=port, local_hostname="bench.test", timeout=30,
        start_tls=False, use_tls=False,
    )  # fmt: skip
    await smtp.connect(timeout=10)
    await smtp.ehlo()
    size = f"SIZE={len(body)}".encode()
    for i in range(count):
        resp = await smtp.execute_command(b"MAIL", f"FROM:<{SENDER}>".encode(), size)
        assert resp.code == 250, resp
        for r in range(rcpts):
            resp = await smtp.execute_command(b"RCPT", f"TO:<r{i}.{r}@sink.test>".encode())
            assert resp.code == 250, resp
        resp = await smtp.execute_command(b"DATA")
        assert resp.code == 354, resp
        assert smtp.protocol is not None
        smtp.protocol.write(wire_data(body))
        resp = await smtp.protocol.read_response(timeout=60)
        assert resp.code == 250, resp
    await smtp.quit()


def via_smtpclient(pipelining: bool) -> Sender:
    async def send(port: int, count: int, body: bytes, rcpts: int) -> None:
        client = SMTPClient(
            "sink.test", port, address="127.0.0.1", helo_name="bench.test", pipelining=pipelining
        )
        hs = await client.open()
        assert hs.ok, hs
        for i in range(count):
            env = Envelope(
                SENDER, tuple(Recipient(f"r{i}.{r}@sink.test") for r in range(rcpts)),
                size=len(body),
            )  # fmt: skip
            result = await client.send(env, body)
            assert all(r.delivered for r in result.recipients), result
            assert result.reusable and result.pipelined == pipelining, result
        await client.quit()

    return send


CLIENTS: dict[str, Sender] = {
    "aiosmtplib": via_aiosmtplib,
    "smtpclient": via_smtpclient(True),
    "smtpclient-lockstep": via_smtpclient(False),
}


async def run(sender: Sender, port: int, conns: int, count: int, body: bytes, rcpts: int):
    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(sender(port, count, body, rcpts) for _ in range(conns)))
    return time.perf_counter() - wall, time.process_time() - cpu


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--connections", type=int, default=4, help="reused connections at once")
    ap.add_argument("--messages", type=int, default=500, help="messages per connection")
    ap.add_argument("--size", type=int, default=5120, help="message size in bytes")
    ap.add_argument("--recipients", type=int, default=1, help="recipients per message")
    ap.add_argument("--clients", default=",".join(CLIENTS), help="comma-separated")
    args = ap.parse_args()
    names = [c for c in args.clients.split(",") if c]
    unknown = [c for c in names if c not in CLIENTS]
    if unknown:
        ap.error(f"unknown client(s): {', '.join(unknown)}; choose from {', '.join(CLIENTS)}")
    if not Path(SMTP_SINK).exists():
        print(f"smtpclient_bench: {SMTP_SINK} not found (install postfix)", file=sys.stderr)
        return 2

    body = message(args.size)
    total = args.connections * args.messages
    port = free_port()
    sink = subprocess.Popen(
        [SMTP_SINK, "-u", "postfix", "-c", f"127.0.0.1:{port}", "100"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    results: dict[str, list[tuple[float, float]]] = {n: [] for n in names}
    try:
        if not wait_port(port, 10):
            print("smtpclient_bench: smtp-sink did not start", file=sys.stderr)
            return 1
        for rnd in range(args.rounds):
            order = names[rnd % len(names) :] + names[: rnd % len(names)]
            for name in order:
                wall, cpu = asyncio.run(
                    run(CLIENTS[name], port, args.connections, args.messages, body,
                        args.recipients)
                )  # fmt: skip
                results[name].append((wall, cpu))
                print(
                    f"round {rnd + 1} {name:<20} {total / wall:8.0f} msg/s"
                    f"  {cpu * 1000 / total:6.3f} CPU ms/msg",
                    flush=True,
                )
    finally:
        sink.terminate()
        sink.wait(10)

    print()
    print(f"command: {shlex.join([sys.executable, *sys.argv])}")
    print(
        f"{args.connections} connections x {args.messages} messages of {len(body)} bytes,"
        f" {args.recipients} recipient(s) each, to smtp-sink on 127.0.0.1; median of"
        f" {args.rounds} interleaved rounds"
    )
    base = results.get("aiosmtplib")
    base_cpu = statistics.median(c for _, c in base) / total if base else None
    print(f"{'client':<20} {'msg/s':>8} {'CPU ms/msg':>11} {'CPU vs aiosmtplib':>18}")
    for name in names:
        rate = statistics.median(total / w for w, _ in results[name])
        cpu = statistics.median(c for _, c in results[name]) / total
        ratio = f"{cpu / base_cpu:.2f}x" if base_cpu else "-"
        print(f"{name:<20} {rate:8.0f} {cpu * 1000:11.3f} {ratio:>18}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

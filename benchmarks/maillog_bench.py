"""What watching costs the relay: CPU per recipient attempt for the delivery log and day counts.

The relay's event loop formats every delivery-log line and counts every attempt
for the report; the writer thread then writes the lines. This measures, per
attempt record (a bounce with a typical reply):

* formatting a text and a JSON line (the loop's share),
* formatting plus handing the line to the writer thread, which writes it to a
  file in batches (both threads' share, on one interpreter),
* the per-day counter (a dict update).

Numbers on a shared machine are noisy: run it a few times, take the lowest.

    .venv/bin/python benchmarks/maillog_bench.py [--n 100000]
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
import time
from pathlib import Path

from smtpguard.config import LogConfig, ReportConfig
from smtpguard.relay.daily import DailyCounts
from smtpguard.relay.maillog import DeliveryLog, open_delivery_log
from smtpguard.relay.observe import AttemptRecord, Timing

RECORD = AttemptRecord(
    qid="000000002A", kind="mail", recipient="bob@example.com", domain="example.com",
    status="bounced", relay="mx.example.com[192.0.2.7]:25", code="550", dsn="5.1.1",
    reply="5.1.1 <bob@example.com>: Recipient address rejected: User unknown in virtual"
    " mailbox table", stage="rcpt", reason="userunknown", suppression="suppressed",
    suppression_why="rcpt-reply: 550 5.1.1 userunknown, names the recipient",
    arrived_at=1000.0, received_at=1000.25, timing=Timing(1003.0, 0.5, 1.25), finished=1005.0,
)  # fmt: skip


class _Discard:
    def write(self, program: str, line: str) -> None:
        return None

    def close(self) -> None:
        return None


def per_record(fn: object, n: int) -> float:
    """Microseconds per call of ``fn([RECORD])``."""
    batch = [RECORD]
    start = time.perf_counter()
    for _ in range(n):
        fn(batch)  # type: ignore[operator]
    return (time.perf_counter() - start) / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000, help="attempt records per measurement")
    args = parser.parse_args()
    print(f"command: {shlex.join([sys.executable, *sys.argv])}")
    for fmt in ("text", "json"):
        only = DeliveryLog(fmt, _Discard())  # type: ignore[arg-type]
        print(f"{fmt} line, formatting only:       {per_record(only.attempts, args.n):6.1f} us")
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "delivery.log"
            full = open_delivery_log(LogConfig(destination="file", file=str(path), format=fmt))
            start = time.perf_counter()
            for _ in range(args.n):
                full.attempts([RECORD])
            full.close()  # every line written
            took = (time.perf_counter() - start) / args.n * 1e6
            print(f"{fmt} line, formatted and written: {took:6.1f} us"
                  f" ({path.stat().st_size / args.n:.0f} bytes a line)")  # fmt: skip
    counts = DailyCounts(None, ReportConfig())  # type: ignore[arg-type]
    print(f"per-day count:                    {per_record(counts.attempts, args.n):6.1f} us")


if __name__ == "__main__":
    main()

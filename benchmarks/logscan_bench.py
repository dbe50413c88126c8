"""logscan throughput: lines/s and peak memory on a generated Postfix log.

Writes a Postfix mail log of ``--size`` bytes (default 1 GB) into a temporary
directory, the way a busy outbound relay logs: per message a connect, client,
cleanup, qmgr from=, one delivery line, qmgr removed and disconnect line; of
the delivery lines 90% are ``status=sent``, 6% ``status=deferred`` and 4%
``status=bounced`` with a mix of real-world replies (unknown user, full
mailbox, greylisting, blocklist, timeouts). Then it runs the real CLI,
``smtpguard logscan FILE --format json``, in a subprocess and reports:

* lines/s over the whole run (start-up and classifier loading included),
* the peak resident memory of that process (``ru_maxrss``),
* the command, so anyone can reproduce it.

The log is deleted afterwards. Goal: more than 200,000 lines/s, and memory
that does not grow with the log (compare ``--size 100M`` with the default).

    .venv/bin/python benchmarks/logscan_bench.py [--size 1G]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

DOMAINS = ["gmail.com", "yahoo.com", "outlook.com", "example.com", "example.net", "example.org"]
DEFERRALS = [
    "host mx.{d}[203.0.113.5] said: 450 4.2.0 <{r}>: Recipient address rejected:"
    " Greylisted, see http://postgrey.schweikert.ch/help/{d}.html (in reply to RCPT TO command)",
    "connect to mx.{d}[203.0.113.5]:25: Connection timed out",
    "host mx.{d}[203.0.113.5] said: 421 4.7.0 Try again later, closing connection."
    " (in reply to MAIL FROM command)",
]
BOUNCES = [
    "host mx.{d}[203.0.113.5] said: 550 5.1.1 <{r}>: Recipient address rejected:"
    " User unknown in virtual mailbox table (in reply to RCPT TO command)",
    "host mx.{d}[203.0.113.5] said: 552 5.2.2 <{r}>: Mailbox full (in reply to RCPT TO command)",
    "host mx.{d}[203.0.113.5] said: 554 5.7.1 Service unavailable; Client host"
    " [192.0.2.10] blocked using zen.spamhaus.org (in reply to RCPT TO command)",
]


def message(n: int) -> str:
    """The log lines of the n-th message (7 lines, about 1.1 KB)."""
    qid = f"{(n * 2654435761) % (16**10):010X}"
    d = DOMAINS[n % len(DOMAINS)]
    r = f"user{n}@{d}"
    ts = f"Mar {1 + n // 3_000_000 % 28:2d} {n // 3600 % 24:02d}:{n // 60 % 60:02d}:{n % 60:02d}"
    pid = 1000 + n % 30000
    ip = f"198.51.100.{n % 250 + 1}"
    kind = n % 50
    if kind < 45:
        status, dsn = f"sent (250 2.0.0 Ok: queued as {qid[::-1]})", "2.0.0"
    elif kind < 48:
        text = DEFERRALS[n % len(DEFERRALS)].format(d=d, r=r)
        status, dsn = f"deferred ({text})", "4.2.0" if "450" in text else "4.4.1"
    else:
        text = BOUNCES[n % len(BOUNCES)].format(d=d, r=r)
        status, dsn = f"bounced ({text})", text.split(" said: ")[1][4:9]
    return (
        f"{ts} mx postfix/smtpd[{pid}]: connect from unknown[{ip}]\n"
        f"{ts} mx postfix/smtpd[{pid}]: {qid}: client=unknown[{ip}], sasl_method=PLAIN,"
        " sasl_username=app\n"
        f"{ts} mx postfix/cleanup[{pid + 1}]: {qid}: message-id=<{n}.{qid}@app.example.net>\n"
        f"{ts} mx postfix/qmgr[812]: {qid}: from=<news@example.net>, size={4000 + n % 9000},"
        " nrcpt=1 (queue active)\n"
        f"{ts} mx postfix/smtp[{pid + 2}]: {qid}: to=<{r}>, relay=mx.{d}[203.0.113.5]:25,"
        f" delay=0.52, delays=0.01/0/0.2/0.31, dsn={dsn}, status={status}\n"
        f"{ts} mx postfix/qmgr[812]: {qid}: removed\n"
        f"{ts} mx postfix/smtpd[{pid}]: disconnect from unknown[{ip}] ehlo=1 auth=1 mail=1"
        " rcpt=1 data=1 quit=1 commands=6\n"
    )


def generate(path: Path, size: int) -> tuple[int, float]:
    """Write the log; returns (lines, seconds)."""
    start = time.monotonic()
    written = lines = n = 0
    with open(path, "w", buffering=1 << 20) as f:
        while written < size:
            chunk = "".join(message(i) for i in range(n, n + 1000))
            n += 1000
            f.write(chunk)
            written += len(chunk)
            lines += 7000
    return lines, time.monotonic() - start


def parse_size(text: str) -> int:
    units = {"K": 10**3, "M": 10**6, "G": 10**9}
    text = text.strip().upper()
    if text[-1:] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", default="1G", help="log size: 1G, 200M, ... (default 1G)")
    args = parser.parse_args()
    size = parse_size(args.size)
    with tempfile.TemporaryDirectory(prefix="logscan-bench-") as tmp:
        log = Path(tmp) / "mail.log"
        lines, gen_s = generate(log, size)
        real_size = log.stat().st_size
        print(f"generated {real_size / 1e9:.2f} GB, {lines:,} lines in {gen_s:.1f} s")
        cmd = [sys.executable, "-m", "smtpguard", "logscan", str(log), "--format", "json"]
        env = {k: v for k, v in os.environ.items() if not k.startswith("SMTPGUARD_")}
        env["SMTPGUARD_CONFIG"] = "/dev/null"  # embedded defaults, whatever /etc holds
        start = time.monotonic()
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO)
        wall = time.monotonic() - start
        peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        if done.returncode != 0:
            sys.exit(f"logscan failed ({done.returncode}): {done.stderr}")
        summary = json.loads(done.stdout)
    assert summary["lines"] == lines, (summary["lines"], lines)
    print(
        f"logscan: {summary['lines']:,} lines, {summary['events']:,} failures"
        f" ({summary['bounced']:,} bounced, {summary['deferred']:,} deferred)"
        f" in {wall:.1f} s wall"
    )
    print(f"throughput: {summary['lines'] / wall:,.0f} lines/s ({real_size / wall / 1e6:.0f} MB/s)")
    print(f"peak memory (ru_maxrss): {peak_kib / 1024:.1f} MiB")
    print(
        f"reproduce: .venv/bin/python benchmarks/logscan_bench.py --size {shlex.quote(args.size)}"
    )


if __name__ == "__main__":
    main()

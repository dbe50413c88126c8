"""Worst-case time of the bounce classifier on hostile inputs (512 KiB each).

Every remote string is hostile: this prints how long ``Classifier.message()`` (and
``Classifier.reply_line()`` for reply-shaped inputs) takes on inputs built to trigger
catastrophic regex backtracking, quadratic scans and parser blow-ups - long runs of dashes,
blank lines after a transcript command, address-like noise, nested and sibling MIME parts,
endless header folding - and the worst case over the set. Each input is timed as the best
of ``--repeat`` runs (the machine is shared; the best run is the code's cost).

    .venv/bin/python benchmarks/classify_hostile.py [--repeat N] [--size BYTES]
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SIZE = 512 * 1024
RCPT = b"Final-Recipient: rfc822; a@b.example\r\n"
HEAD = (
    b"From: Mail Delivery System <MAILER-DAEMON@mx.example.net>\r\n"
    b"To: sender@example.com\r\nSubject: Undelivered Mail Returned to Sender\r\n"
)


def fill(unit: bytes, size: int) -> bytes:
    return (unit * (size // len(unit) + 1))[:size]


def dsn(body: bytes) -> bytes:
    return (
        HEAD + b"MIME-Version: 1.0\r\nContent-Type: multipart/report; report-type=delivery-status; "
        b'boundary="B"\r\n\r\n--B\r\nContent-Type: text/plain\r\n\r\n'
        + body
        + b"\r\n--B\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; x\r\n\r\n"
        b"Final-Recipient: rfc822; a@b.example\r\nAction: failed\r\nStatus: 5.1.1\r\n--B--\r\n"
    )


def hostile_messages(size: int) -> dict[str, bytes]:
    """name -> message bytes (each about ``size`` bytes)."""
    plain = HEAD + b"\r\n"
    return {
        "blank lines after In: RCPT TO": plain
        + b"In: RCPT TO:<a@b.example>\r\n"
        + fill(b"\r\n", size),
        "three lines of dashes": plain
        + b"<a@b.example>:\r\n"
        + (fill(b"-", size // 3) + b"\r\n") * 3,
        "one line of dashes": plain + fill(b"-", size),
        "dashes then original": plain + (fill(b"-", 4000) + b" original\r\n") * (size // 4010),
        "whitespace runs": plain + fill(b" \t \t", size),
        "address noise": plain + fill(b"a@b.", size),
        "anchor lines": plain + fill(b"<a@b.example>:\r\n", size),
        "reply lines": plain + fill(b"550-5.1.1 <a@b.example>... User unknown\r\n", size),
        "transcript": plain + fill(b">>> RCPT TO:<a@b.example>\r\n<<< 550 5.1.1 no\r\n", size),
        "long address-ish line": plain + b"<x@b.example>: 550 " + fill(b"x@", size) + b"\r\n",
        "status digits": plain + fill(b"5.1.1.5.1.1 550 550-", size),
        "brackets": plain + fill(b"<<<<((((", size),
        "expanded-from notes": plain + b"<a@b.example>\r\n" + fill(b"(expanded from: <", size),
        "dsn with dashes": dsn(fill(b"-", size)),
        "dsn with blank lines": dsn(RCPT + fill(b"\r\n", size)),
        "dsn many blocks": dsn(fill(RCPT + b"Action: failed\r\n\r\n", size)),
        "nested multiparts": HEAD
        + b"".join(
            b"Content-Type: multipart/mixed; boundary=b%d\r\n\r\n--b%d\r\n" % (i, i)
            for i in range(size // 60)
        ),
        "sibling parts": HEAD
        + b"Content-Type: multipart/mixed; boundary=b\r\n\r\n"
        + fill(b"--b\r\n\r\n", size),
        "folded header": HEAD + b"X-A: a" + fill(b"\r\n b", size) + b"\r\n\r\nhi\r\n",
        "header lines": HEAD + fill(b"X-A: b\r\n", size) + b"\r\nhi\r\n",
        "html tags": HEAD + b"Content-Type: text/html\r\n\r\n" + fill(b"<br <p <div ", size),
        "arf markers": HEAD
        + b"Content-Type: multipart/report; report-type=feedback-report; boundary=b\r\n\r\n"
        + fill(b"--b\r\nContent-Type: message/feedback-report\r\n\r\nFeedback-Type: x\r\n", size),
    }


def hostile_replies(size: int) -> dict[str, str]:
    return {
        "reply: letters": "550 " + "a" * size,
        "reply: spaces": "550 5.1.1" + " " * size + "user unknown",
        "reply: continuation codes": "550 " + "550-5.1.1 " * (size // 10),
        "reply: at-signs": "550 " + "@" * size + ">: user unknown",
        "reply: many lines": "550-" + "\r\n550-".join(["5.1.1 no such user"] * (size // 24)),
    }


def best_time(
    fn: Callable[[], object], repeat: int, reset: Callable[[], object] = lambda: None
) -> tuple[float, float]:
    """(best wall-clock seconds, best CPU seconds of this process) over ``repeat`` runs,
    each after ``reset()`` (the classifier forgets its remembered rule answers)."""
    best = best_cpu = float("inf")
    for _ in range(repeat):
        reset()
        cpu = time.process_time()
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
        best_cpu = min(best_cpu, time.process_time() - cpu)
    return best, best_cpu


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--size", type=int, default=SIZE)
    args = ap.parse_args(argv)
    sys.path.insert(0, str(REPO))
    from smtpguard.classify import Classifier

    clf = Classifier.load()
    cmd = [".venv/bin/python", "benchmarks/classify_hostile.py", *(argv or sys.argv[1:])]
    print("$ " + shlex.join(cmd))
    rows: list[tuple[tuple[float, float], str, int]] = []
    for name, data in hostile_messages(args.size).items():
        timed = best_time(lambda d=data: clf.message(d), args.repeat, clf.clear_caches)
        rows.append((timed, name, len(data)))
    for name, text in hostile_replies(args.size).items():
        timed = best_time(lambda t=text: clf.reply_line(t), args.repeat, clf.clear_caches)
        rows.append((timed, name, len(text)))
    print("    wall      CPU")
    for (wall, cpu), name, n in rows:
        print(f"{wall * 1000:8.1f} {cpu * 1000:8.1f} ms  {name} ({n:,} bytes)")
    worst = max(rows, key=lambda r: r[0][0])
    worst_cpu = max(rows, key=lambda r: r[0][1])
    print(
        f"worst case: {worst[0][0] * 1000:.1f} ms wall ({worst[1]}), "
        f"{worst_cpu[0][1] * 1000:.1f} ms CPU ({worst_cpu[1]}), {len(rows)} hostile inputs "
        f"(best of {args.repeat} runs each; the machine is shared: CPU time is the code's cost)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Score the bounce classifier on the labelled corpus and measure its speed.

Runs the real CLI (``smtpguard classify --format jsonl CORPUS``) as a subprocess, compares
its verdicts with ``labels.jsonl`` and prints recipient recall, status / reason exact match,
``suppress`` agreement with the labels' ``hard`` flag (null counts as false), suppress
precision and recall, and messages per second (wall time of the CLI run, and in-process:
``Classifier.message()`` over every file, files read beforehand).

    .venv/bin/python benchmarks/classify_bench.py [--corpus DIR] [--misses] [--repeat N]

Matching: a label and a verdict match on (file, recipient), case-insensitively; when a file
has exactly one label and one verdict they are matched even if the recipients differ (the
recipient still counts as missed). Sisimai's placeholder recipient is left out of recipient
recall (see the corpus README).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CORPUS = REPO / "tests" / "corpus" / "sisimai-dev"
PLACEHOLDER = "undisclosed-recipient-in-headers@libsisimai.org.invalid"


def run_cli(corpus: Path) -> tuple[list[dict[str, Any]], float, list[str]]:
    """(verdicts, wall seconds, command) of one ``smtpguard classify --format jsonl`` run.

    Runs from the repository root; the corpus path is given relative to it when it can be
    (``tests/corpus/sisimai-dev``), as an operator would type it.
    """
    arg = os.path.relpath(corpus, REPO) if corpus.is_relative_to(REPO.parent) else str(corpus)
    cmd = [sys.executable, "-m", "smtpguard", "classify", "--format", "jsonl", arg]
    env = {k: v for k, v in os.environ.items() if not k.startswith("SMTPGUARD_")}
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env, timeout=600)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"classify failed (exit {proc.returncode}): {proc.stderr.strip()[:2000]}")
    verdicts = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    return verdicts, wall, cmd


def in_process_rate(files: list[Path], repeat: int) -> tuple[float, float, float]:
    """(best, mean, per CPU second) messages per second through ``Classifier.message()``.

    Every pass classifies every file (read beforehand, so no disk I/O is timed). The best
    wall-clock pass is the machine's capacity (like ``timeit``), the mean shows the noise of
    a busy box, and messages per CPU-second of this process do not depend on what else runs.
    """
    sys.path.insert(0, str(REPO))
    from smtpguard.classify import Classifier

    clf = Classifier.load()
    data = [f.read_bytes() for f in files]
    for d in data:  # warm caches and lazy imports
        clf.message(d)
    times = []
    cpu_start = time.process_time()
    for _ in range(repeat):
        start = time.perf_counter()
        for d in data:
            clf.message(d)
        times.append(time.perf_counter() - start)
    cpu = time.process_time() - cpu_start
    n = len(data)
    return n / min(times), n * len(times) / sum(times), n * len(times) / cpu


def pct(n: int, d: int) -> str:
    return f"{100.0 * n / d:6.2f}% ({n}/{d})" if d else "   n/a"


def score(
    labels: list[dict[str, Any]], verdicts: list[dict[str, Any]]
) -> tuple[dict[str, tuple[int, int]], list[str]]:
    """Counts per metric as (hits, total), and a list of human-readable mismatches."""
    by_file: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for v in verdicts:
        by_file[Path(str(v.get("file", ""))).name].append(v)
    labels_by_file: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for lab in labels:
        labels_by_file[lab["file"]].append(lab)

    rcpt = [0, 0]
    status = [0, 0]
    reason = [0, 0]
    agree = [0, 0]
    tp = fp = fn = 0
    misses: list[str] = []
    for fname, labs in sorted(labels_by_file.items()):
        got = by_file.get(fname, [])
        # The labels name the Final-Recipient (Sisimai's choice); a verdict's ``recipient`` is
        # the Original-Recipient when the report gives one, and keeps the final address in
        # ``final_recipient``: either one identifies the delivery.
        index: dict[str, dict[str, Any]] = {}
        for v in got:
            for key in ("final_recipient", "recipient"):
                addr = str(v.get(key, "") or "").lower()
                if addr:
                    index[addr] = v
        for lab in labs:
            want_rcpt = lab["recipient"].lower()
            v = index.get(want_rcpt)
            if v is None and len(labs) == 1 and len(got) == 1:
                v = got[0]
            found = v is not None and want_rcpt in (
                str(v.get("recipient", "")).lower(),
                str(v.get("final_recipient", "") or "").lower(),
            )
            if want_rcpt != PLACEHOLDER:
                rcpt[1] += 1
                rcpt[0] += found
                if not found:
                    misses.append(
                        f"recipient {fname}: want {lab['recipient']} got "
                        f"{[x.get('recipient') for x in got]}"
                    )
            v = v or {}
            st_ok = str(v.get("status", "")) == lab["status"]
            rs_ok = v.get("reason") == lab["reason"]
            want_sup = bool(lab["hard"])
            got_sup = bool(v.get("suppress", False))
            status[1] += 1
            status[0] += st_ok
            reason[1] += 1
            reason[0] += rs_ok
            agree[1] += 1
            agree[0] += want_sup == got_sup
            tp += want_sup and got_sup
            fp += got_sup and not want_sup
            fn += want_sup and not got_sup
            if not (st_ok and rs_ok and want_sup == got_sup):
                misses.append(
                    f"verdict {fname} [{lab['recipient']}]: "
                    f"status {lab['status'] or '-'}/{v.get('status') or '-'} "
                    f"reason {lab['reason']}/{v.get('reason', '-')} "
                    f"suppress {want_sup}/{got_sup} "
                    f"| {str(v.get('diagnostic', ''))[:160]}"
                )
    counts = {
        "recipients found": (rcpt[0], rcpt[1]),
        "status exact match": (status[0], status[1]),
        "reason exact match": (reason[0], reason[1]),
        "suppress agreement": (agree[0], agree[1]),
        "suppress precision": (tp, tp + fp),
        "suppress recall": (tp, tp + fn),
    }
    return counts, misses


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS, help="labelled corpus dir")
    ap.add_argument("--misses", action="store_true", help="list every mismatch")
    ap.add_argument("--repeat", type=int, default=10, help="in-process timing passes")
    args = ap.parse_args(argv)
    corpus: Path = args.corpus.resolve()
    labels_path = corpus / "labels.jsonl"
    if not labels_path.is_file():
        sys.exit(f"no labels.jsonl in {corpus}")
    labels = [json.loads(line) for line in labels_path.read_text().splitlines() if line.strip()]
    files = sorted(corpus.glob("*.eml"))

    verdicts, wall, cmd = run_cli(corpus)
    print("$ " + shlex.join(["smtpguard", *cmd[3:]]))
    counts, misses = score(labels, verdicts)
    if args.misses:
        for line in misses:
            print(line)
        print()
    print(f"corpus: {corpus} ({len(files)} messages, {len(labels)} labelled deliveries)")
    for name, (hits, total) in counts.items():
        print(f"{name:<22} {pct(hits, total)}")
    best, mean, per_cpu = in_process_rate(files, max(1, args.repeat))
    print(f"{'CLI wall time':<22} {wall:6.3f} s = {len(files) / wall:,.0f} messages/s")
    print(
        f"{'in-process':<22} {best:,.0f} messages/s best pass, {mean:,.0f} mean, "
        f"{per_cpu:,.0f} per CPU-second (Classifier.message, {args.repeat} passes)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

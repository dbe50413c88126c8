"""Score the bounce classifier on the labelled corpus and measure its speed.

Runs the real CLI (``smtpguard classify --format jsonl CORPUS``) as a subprocess, compares
its verdicts with ``labels.jsonl`` and prints recipient recall, status / reason exact match,
``suppress`` agreement with the labels' ``hard`` flag (null counts as false), suppress
precision and recall, and messages per second (wall time of the CLI run, and in-process:
``Classifier.message()`` over every file, files read beforehand).

Everything scored here is IN-SAMPLE: the rules were written while looking at this corpus,
so these figures say nothing about bounces the classifier has not seen.

Also printed, to see how general the rules are: how many shipped rules decide exactly one
corpus file (a sign of tuning to that file), the share of verdicts nothing explained
(``undefined`` / ``onhold`` fallbacks), and a per-family table (family = file name without
``-NN.eml``). When ``perl`` and Debian's ``libsisimai-perl`` are installed, Sisimai 4.25
decodes the same files in-process, interleaved with our passes, and the speed ratio is
printed. Every timed pass starts cold: the classifier's remembered rule answers are
cleared first (:meth:`Classifier.clear_caches`), so a pass over files it has seen before
costs what the first one did - Sisimai remembers nothing between messages either.

    .venv/bin/python benchmarks/classify_bench.py [--corpus DIR] [--misses] [--repeat N]
        [--rounds N] [--one-file-rules] [--instructions]

``--instructions`` also counts the instructions each decoder executes per message under
valgrind's callgrind (minutes, but independent of the machine's load: on a shared machine
the wall-clock and even the CPU-time ratios move by a third from run to run).

Matching: a label and a verdict match on (file, recipient), case-insensitively; when a file
has exactly one label and one verdict they are matched even if the recipients differ (the
recipient still counts as missed). Sisimai's placeholder recipient is left out of recipient
recall (see the corpus README).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections import Counter, defaultdict
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
    clf = _classifier()
    data = [f.read_bytes() for f in files]
    for d in data:  # lazy imports, compiled rule index
        clf.message(d)
    times = []
    cpu = 0.0
    for _ in range(repeat):
        clf.clear_caches()
        cpu_start = time.process_time()
        start = time.perf_counter()
        for d in data:
            clf.message(d)
        times.append(time.perf_counter() - start)
        cpu += time.process_time() - cpu_start
    n = len(data)
    return n / min(times), n * len(times) / sum(times), n * len(times) / cpu


def _classifier() -> Any:
    sys.path.insert(0, str(REPO))
    from smtpguard.classify import Classifier

    return Classifier.load()


# Sisimai 4.25 (Debian's libsisimai-perl): every file read into memory first, then passes of
# Sisimai->make(\$data) over all of them; prints one line per pass: the wall seconds and the
# CPU seconds of this process it took.
SISIMAI_SCRIPT = r"""
use strict; use warnings; use Sisimai;
use Time::HiRes qw(time clock_gettime CLOCK_PROCESS_CPUTIME_ID);
my ($passes, @files) = @ARGV; my @data;
for my $f (@files) {
    open(my $fh, '<:raw', $f) or die "$f: $!"; local $/; push @data, scalar <$fh>;
}
for my $d (@data) { my $r = Sisimai->make(\$d); }
for (1..$passes) {
    my $t = time; my $c = clock_gettime(CLOCK_PROCESS_CPUTIME_ID);
    for my $d (@data) { my $r = Sisimai->make(\$d); }
    printf "%.6f %.6f\n", time - $t, clock_gettime(CLOCK_PROCESS_CPUTIME_ID) - $c;
}
"""


def sisimai_available() -> bool:
    if not shutil.which("perl"):
        return False
    probe = subprocess.run(["perl", "-MSisimai", "-e", "1"], capture_output=True, timeout=60)
    return probe.returncode == 0


def side_by_side(files: list[Path], rounds: int, passes: int) -> dict[str, float]:
    """Messages per second of ours and Sisimai's, best pass each, by wall clock and by CPU
    time of the measuring process, in alternating rounds (ours, then Sisimai's, ``rounds``
    times) so both see the same machine load. Keys: ours, theirs, ours_cpu, theirs_cpu."""
    clf = _classifier()
    data = [f.read_bytes() for f in files]
    for d in data:
        clf.message(d)
    ours: list[float] = []
    ours_cpu: list[float] = []
    theirs: list[float] = []
    theirs_cpu: list[float] = []
    for _ in range(rounds):
        for _ in range(passes):
            clf.clear_caches()
            cpu = time.process_time()
            start = time.perf_counter()
            for d in data:
                clf.message(d)
            ours.append(time.perf_counter() - start)
            ours_cpu.append(time.process_time() - cpu)
        proc = subprocess.run(
            ["perl", "-e", SISIMAI_SCRIPT, str(passes), *map(str, files)],
            capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        if proc.returncode != 0:
            sys.exit(f"sisimai run failed: {proc.stderr.strip()[:500]}")
        for line in proc.stdout.splitlines():
            wall, cpu_s = line.split()
            theirs.append(float(wall))
            theirs_cpu.append(float(cpu_s))
    n = len(data)
    return {
        "ours": n / min(ours),
        "theirs": n / min(theirs),
        "ours_cpu": n / min(ours_cpu),
        "theirs_cpu": n / min(theirs_cpu),
    }


# One process classifies every file ``passes`` times after a warm-up pass (cold caches each
# pass); run under valgrind's callgrind with 0 and with N passes, the difference is the
# instructions the passes executed: a count that does not depend on the machine's load.
OURS_PASSES_SCRIPT = r"""
import sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from smtpguard.classify import Classifier
c = Classifier.load()
data = [Path(f).read_bytes() for f in sys.argv[3:]]
for d in data:
    c.message(d)
for _ in range(int(sys.argv[2])):
    c.clear_caches()
    for d in data:
        c.message(d)
"""


def instructions_per_message(files: list[Path], passes: int = 1) -> tuple[float, float] | None:
    """(ours, Sisimai's) instructions per message, counted by valgrind (callgrind), or None
    when valgrind is missing. Deterministic: a shared machine's load does not change it."""
    if not shutil.which("valgrind"):
        return None

    def collected(cmd: list[str]) -> int:
        proc = subprocess.run(
            ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", *cmd],
            capture_output=True, text=True, timeout=3600,
        )  # fmt: skip
        m = re.search(r"Collected : (\d+)", proc.stderr)
        if proc.returncode != 0 or m is None:
            sys.exit(f"valgrind run failed: {proc.stderr.strip()[-500:]}")
        return int(m.group(1))

    names = [str(f) for f in files]
    ours = [sys.executable, "-c", OURS_PASSES_SCRIPT, str(REPO)]
    theirs = ["perl", "-e", SISIMAI_SCRIPT]
    n = len(files) * passes
    ours_ir = (collected([*ours, str(passes), *names]) - collected([*ours, "0", *names])) / n
    theirs_ir = (collected([*theirs, str(passes), *names]) - collected([*theirs, "0", *names])) / n
    return ours_ir, theirs_ir


def sisimai_version() -> str:
    return subprocess.run(
        ["perl", "-MSisimai", "-e", "print $Sisimai::VERSION"], capture_output=True, text=True
    ).stdout.strip()


def family(fname: str) -> str:
    """``lhost-postfix-07.eml`` -> ``lhost-postfix`` (the corpus README's family)."""
    return re.sub(r"-\d+\.eml$", "", fname)


def generality(
    verdicts: list[dict[str, Any]], rule_ids: set[str]
) -> tuple[dict[str, set[str]], int, int]:
    """(shipped rule id -> files it decided, unexplained verdicts, all verdicts)."""
    fired: dict[str, set[str]] = defaultdict(set)
    unexplained = 0
    for v in verdicts:
        rule = str(v.get("rule", ""))
        rid = rule.split(":", 1)[0]
        if rid in rule_ids:
            fired[rid].add(Path(str(v.get("file", ""))).name)
        if v.get("reason") in ("undefined", "onhold") or rule.startswith("fallback:"):
            unexplained += 1
    return fired, unexplained, len(verdicts)


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
    fam: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])  # deliveries, reason, suppress
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
            row = fam[family(fname)]
            row[0] += 1
            row[1] += rs_ok
            row[2] += want_sup == got_sup
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
    for name, (n, rs, sup) in fam.items():
        counts[f"family {name}"] = (rs, n)
        counts[f"family-suppress {name}"] = (sup, n)
    return counts, misses


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS, help="labelled corpus dir")
    ap.add_argument("--misses", action="store_true", help="list every mismatch")
    ap.add_argument("--repeat", type=int, default=10, help="in-process timing passes")
    ap.add_argument("--rounds", type=int, default=3, help="side-by-side rounds with Sisimai")
    ap.add_argument("--one-file-rules", action="store_true", help="name the one-file rules")
    ap.add_argument(
        "--instructions",
        action="store_true",
        help="also count instructions per message, ours and Sisimai's, under valgrind (slow)",
    )
    args = ap.parse_args(argv)
    corpus: Path = args.corpus.resolve()
    labels_path = corpus / "labels.jsonl"
    if not labels_path.is_file():
        sys.exit(f"no labels.jsonl in {corpus}")
    labels = [json.loads(line) for line in labels_path.read_text().splitlines() if line.strip()]
    files = sorted(corpus.glob("*.eml"))

    print(
        "$ "
        + shlex.join([".venv/bin/python", "benchmarks/classify_bench.py", *(argv or sys.argv[1:])])
    )
    verdicts, wall, cmd = run_cli(corpus)
    print("$ " + shlex.join(["smtpguard", *cmd[3:]]))
    counts, misses = score(labels, verdicts)
    if args.misses:
        for line in misses:
            print(line)
        print()
    print(f"corpus: {corpus} ({len(files)} messages, {len(labels)} labelled deliveries)")
    print("IN-SAMPLE figures (the rules were written against this corpus):")
    for name in list(counts)[:6]:
        print(f"{name:<22} {pct(*counts[name]):>20}")

    clf = _classifier()
    rule_ids = {r.id for r in clf.rules.rules}
    fired, unexplained, total = generality(verdicts, rule_ids)
    one_file = sorted(rid for rid, fs in fired.items() if len(fs) == 1)
    print(
        f"{'rules':<22} {len(rule_ids)} shipped, {len(fired)} decide a corpus verdict, "
        f"{len(one_file)} decide exactly one corpus file (a tuning smell)"
    )
    if args.one_file_rules:
        for rid in one_file:
            print(f"    one-file rule {rid}: {sorted(fired[rid])[0]}")
    reasons = Counter(str(v.get("reason")) for v in verdicts)
    print(
        f"{'unexplained':<22} {pct(unexplained, total)} of verdicts "
        f"(undefined {reasons['undefined']}, onhold {reasons['onhold']}, other fallbacks "
        f"{unexplained - reasons['undefined'] - reasons['onhold']})"
    )
    confirmed = Counter(
        str(v.get("extra", {}).get("confirmed_by", "")).split(":", 1)[0] for v in verdicts
    )
    print(
        f"{'confirmed by structure':<22} {confirmed['provider']} by the provider's own "
        f"wording, {confirmed['local-delivery']} by the reporting MTA's local delivery"
    )
    print("per family: deliveries, reason exact, suppress agreement")
    fams = sorted(k.split(" ", 1)[1] for k in counts if k.startswith("family "))
    for fam in fams:
        rs, n = counts[f"family {fam}"]
        sup, _ = counts[f"family-suppress {fam}"]
        flag = "" if rs == n and sup == n else "  <"
        print(f"    {fam:<28} {n:>3} {100 * rs / n:6.1f}% {100 * sup / n:6.1f}%{flag}")

    best, mean, per_cpu = in_process_rate(files, max(1, args.repeat))
    print(f"{'CLI wall time':<22} {wall:6.3f} s = {len(files) / wall:,.0f} messages/s")
    print(
        f"{'in-process':<22} {best:,.0f} messages/s best pass, {mean:,.0f} mean, "
        f"{per_cpu:,.0f} per CPU-second (Classifier.message, {args.repeat} cold passes)"
    )
    if sisimai_available():
        rates = side_by_side(files, max(1, args.rounds), 3)
        print(
            f"{'side by side':<22} smtpguard {rates['ours']:,.0f} messages/s, Sisimai "
            f"{sisimai_version()} {rates['theirs']:,.0f} messages/s (best pass each, "
            f"{max(1, args.rounds)} alternating rounds of 3 cold passes, in-process): "
            f"{rates['ours'] / rates['theirs']:.2f}x"
        )
        print(
            f"{'side by side, CPU':<22} smtpguard {rates['ours_cpu']:,.0f} messages per "
            f"CPU-second, Sisimai {rates['theirs_cpu']:,.0f} (best pass each): "
            f"{rates['ours_cpu'] / rates['theirs_cpu']:.2f}x"
        )
        if args.instructions:
            counted = instructions_per_message(files)
            if counted is None:
                print(f"{'instructions':<22} skipped: valgrind is not installed")
            else:
                ours_ir, theirs_ir = counted
                print(
                    f"{'instructions':<22} smtpguard {ours_ir / 1000:,.0f}k per message, "
                    f"Sisimai {theirs_ir / 1000:,.0f}k (valgrind callgrind, one cold pass "
                    f"less the warm-up): {theirs_ir / ours_ir:.2f}x fewer"
                )
    else:
        print(f"{'side by side':<22} skipped: perl with libsisimai-perl is not installed")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

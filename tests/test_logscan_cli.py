"""``smtpguard logscan`` as an operator runs it: rotated and compressed files, stdin, --follow."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.fixtures.cli import Background, cli_env
from tests.fixtures.maillogs import ALL, EXIM, POSTFIX, SENDMAIL, write_log

Cli = Callable[..., subprocess.CompletedProcess[str]]


def events(stdout: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    records = [json.loads(line) for line in stdout.splitlines()]
    assert records[-1]["type"] == "summary"
    return [r for r in records if r["type"] == "event"], records[-1]


def test_rotated_and_compressed_logs_are_read_in_order(cli: Cli, rotated_logs: list[Path]) -> None:
    r = cli("logscan", *map(str, rotated_logs), "--format", "jsonl")
    assert r.returncode == 0, r.stderr
    found, summary = events(r.stdout)
    assert [e["recipient"] for e in found] == [s.recipient for s in ALL]
    assert found[0]["source"] == f"{rotated_logs[0]}:1"
    assert {e["mta"] for e in found} == {"postfix", "exim", "sendmail"}
    assert summary["files"] == 3 and summary["events"] == len(ALL)
    assert summary["lines"] == len(ALL) + 10  # the noise lines are counted, not reported


def test_summary_counts_by_reason_and_domain(cli: Cli, rotated_logs: list[Path]) -> None:
    r = cli("logscan", *map(str, rotated_logs), "--format", "json")
    summary = json.loads(r.stdout)
    bounced = sum(s.status == "bounced" for s in ALL)
    assert (summary["bounced"], summary["deferred"]) == (bounced, len(ALL) - bounced)
    reasons = {(x["reason"], x["bounce"]): x["count"] for x in summary["by_reason"]}
    assert reasons[("userunknown", "hard")] == 4  # bob in each log, and local(8)'s nobody
    domains = {d["domain"]: d for d in summary["by_domain"]}
    assert domains["example.com"]["bounced"] >= 3
    assert domains["example.org"]["deferred"] == 3


def test_table_shows_reasons_domains_and_totals(cli: Cli, rotated_logs: list[Path]) -> None:
    r = cli("logscan", *map(str, rotated_logs))
    assert r.returncode == 0
    assert "by reason" in r.stdout and "by recipient domain" in r.stdout
    assert "userunknown" in r.stdout and "example.org" in r.stdout
    assert f"3 files, {len(ALL) + 10} lines" in r.stdout


def test_stdin_is_read_with_a_dash(cli: Cli) -> None:
    data = "".join(s.line + "\n" for s in EXIM)
    r = cli("logscan", "-", "--format", "jsonl", input=data)
    found, _ = events(r.stdout)
    assert [e["source"] for e in found][:2] == ["-:1", "-:2"]
    assert len(found) == len(EXIM)


def test_compressed_stdin_is_read_too(cli: Cli, tmp_path: Path) -> None:
    gz = write_log(tmp_path / "x.gz", [s.line for s in SENDMAIL], compress=True)
    r = subprocess.run(
        [sys.executable, "-m", "smtpguard", "logscan", "-", "--format", "json"],
        stdin=gz.open("rb"), capture_output=True, env=cli_env(), timeout=60,
    )  # fmt: skip
    assert json.loads(r.stdout)["events"] == len(SENDMAIL)


def test_missing_file_is_one_line_and_exit_2(cli: Cli, tmp_path: Path) -> None:
    r = cli("logscan", str(tmp_path / "nope.log"))
    assert r.returncode == 2
    assert r.stderr.strip() == f"smtpguard: error: {tmp_path / 'nope.log'}: no such file"


def test_follow_refuses_inputs_that_cannot_grow(cli: Cli, rotated_logs: list[Path]) -> None:
    r = cli("logscan", "--follow", str(rotated_logs[2]))
    assert r.returncode == 2
    assert "gzip-compressed" in r.stderr and "Traceback" not in r.stderr


# --------------------------------------------------------------------------- --follow


def test_follow_survives_rotation_and_stops_cleanly(tmp_path: Path) -> None:
    log = write_log(tmp_path / "mail.log", [POSTFIX[0].line])
    f = Background("logscan", "--follow", "--format", "jsonl", str(log))
    try:
        assert f.next()["recipient"] == POSTFIX[0].recipient
        os.rename(log, tmp_path / "mail.log.1")  # logrotate: rename, then the writer reopens
        with open(tmp_path / "mail.log.1", "a") as old:
            old.write(POSTFIX[1].line + "\n")  # written before the writer reopened
        write_log(log, ["noise", POSTFIX[5].line])
        second, third = f.next(), f.next()
        assert (second["recipient"], second["source"]) == (POSTFIX[1].recipient, f"{log}:2")
        assert (third["recipient"], third["source"]) == (POSTFIX[5].recipient, f"{log}:2")
    finally:
        code, stderr = f.stop()
    assert code == 0, stderr
    summary = f.next()
    assert summary["type"] == "summary" and summary["events"] == 3

"""`smtpguard classify` run as a subprocess, the way an operator (or the benchmark) runs it."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

Cli = Callable[..., subprocess.CompletedProcess[str]]
CONTRACT = {
    "file",
    "recipient",
    "status",
    "reply_code",
    "reason",
    "bounce",
    "suppress",
    "diagnostic",
}


def jsonl(out: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in out.splitlines()]


def test_reply_option_prints_one_jsonl_verdict(cli: Cli) -> None:
    r = cli("classify", "--format", "jsonl", "--reply", "550 5.1.1 <a@b.example>: User unknown")
    assert r.returncode == 0, r.stderr
    (rec,) = jsonl(r.stdout)
    assert rec.keys() >= CONTRACT
    assert (rec["reply_code"], rec["status"], rec["reason"]) == ("550", "5.1.1", "userunknown")
    assert (rec["bounce"], rec["suppress"]) == ("hard", True)


def test_reply_option_prints_a_table_by_default(cli: Cli) -> None:
    r = cli("classify", "--reply", "452 4.2.2 Mailbox full")
    assert r.returncode == 0, r.stderr
    assert "mailboxfull" in r.stdout
    assert "soft" in r.stdout
    assert "0 undefined" in r.stdout


def test_reply_stage_option_reaches_the_decision(cli: Cli) -> None:
    r = cli("classify", "--format", "jsonl", "--stage", "data", "--reply", "550 User unknown")
    (rec,) = jsonl(r.stdout)
    assert (rec["stage"], rec["reason"], rec["suppress"]) == ("data", "filtered", False)


def test_directory_is_walked_recursively_in_sorted_order(
    cli: Cli, corpus: Path, tmp_path: Path
) -> None:
    root = tmp_path / "in"
    (root / "sub").mkdir(parents=True)
    shutil.copy(corpus / "lhost-postfix-16.eml", root / "sub" / "b.eml")
    shutil.copy(corpus / "lhost-sendmail-04.eml", root / "a.eml")
    (root / "notes.txt").write_text("not a bounce file, not walked")
    r = cli("classify", "--format", "jsonl", str(root))
    assert r.returncode == 0, r.stderr
    recs = jsonl(r.stdout)
    assert [rec["file"] for rec in recs] == [str(root / "a.eml"), str(root / "sub" / "b.eml")]
    assert all(rec.keys() >= CONTRACT for rec in recs)
    assert isinstance(recs[0]["suppress"], bool)


def test_file_field_is_the_path_as_given(cli: Cli, corpus: Path) -> None:
    r = cli("classify", "--format", "jsonl", str(corpus / "lhost-postfix-16.eml"))
    (rec,) = jsonl(r.stdout)
    assert rec["file"] == str(corpus / "lhost-postfix-16.eml")
    assert (rec["reason"], rec["suppress"]) == ("hasmoved", True)


def test_dash_reads_a_message_from_stdin(cli: Cli, corpus: Path) -> None:
    data = (corpus / "lhost-postfix-16.eml").read_bytes()
    r = cli("classify", "--format", "jsonl", "-", input=data)
    assert r.returncode == 0, r.stderr
    (rec,) = jsonl(r.stdout)
    assert rec["file"] == "-"
    assert rec["reason"] == "hasmoved"


def test_undefined_verdicts_are_counted_on_stderr_for_jsonl(cli: Cli) -> None:
    r = cli("classify", "--format", "jsonl", "--reply", "550 Frobnicated beyond repair")
    assert r.returncode == 0
    assert jsonl(r.stdout)[0]["reason"] == "undefined"
    assert "1 undefined" in r.stderr


def test_table_run_ends_with_the_undefined_count(cli: Cli, corpus: Path) -> None:
    r = cli("classify", str(corpus / "lhost-postfix-16.eml"))
    assert r.returncode == 0, r.stderr
    assert r.stdout.rstrip().splitlines()[-1].endswith("0 undefined")


def test_bad_path_exits_2_with_one_line_and_no_output(
    cli: Cli, corpus: Path, tmp_path: Path
) -> None:
    r = cli(
        "classify",
        "--format",
        "jsonl",
        str(corpus / "lhost-postfix-16.eml"),
        str(tmp_path / "missing.eml"),
    )
    assert r.returncode == 2
    assert r.stdout == ""
    assert r.stderr == f"smtpguard: error: {tmp_path / 'missing.eml'}: no such file or directory\n"


def test_nothing_to_classify_exits_2(cli: Cli) -> None:
    r = cli("classify")
    assert r.returncode == 2
    assert r.stderr.startswith("smtpguard: error: nothing to classify")


def test_reply_and_paths_together_exit_2(cli: Cli, corpus: Path) -> None:
    r = cli("classify", "--reply", "550 x", str(corpus))
    assert r.returncode == 2
    assert "either PATH... or --reply" in r.stderr


def test_configured_rules_file_is_used(cli: Cli, tmp_path: Path) -> None:
    (tmp_path / "local.toml").write_text(
        '[[rule]]\nid = "local.x"\nreason = "suspend"\nany = ["frozen solid"]\n'
    )
    conf = tmp_path / "smtpguard.toml"
    conf.write_text(f'[classifier]\nrules_file = "{tmp_path / "local.toml"}"\n')
    r = cli("classify", "--config", str(conf), "--format", "jsonl", "--reply", "550 frozen solid")
    assert r.returncode == 0, r.stderr
    assert jsonl(r.stdout)[0]["rule"] == "local.x"

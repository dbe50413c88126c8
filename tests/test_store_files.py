"""Files the store creates: private modes, a WAL that shrinks, exports that cannot be hijacked."""

from __future__ import annotations

import grp
import os
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner

from smtpguard.cli.main import cli as smtpguard_cli
from smtpguard.store.db import JOURNAL_SIZE_LIMIT, connect
from smtpguard.store.suppression import SuppressionStore, make_observation

FILES = ("smtpguard.db", "smtpguard.db-wal", "smtpguard.db-shm")


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def other_group() -> tuple[str, int]:
    """A group this process may give files to, other than its own when possible."""
    if os.geteuid() == 0:
        g = grp.getgrnam("nogroup")
        return g.gr_name, g.gr_gid
    gid = next((g for g in os.getgroups() if g != os.getegid()), os.getegid())
    return grp.getgrgid(gid).gr_name, gid


@pytest.fixture
def open_umask():
    """The most permissive umask: modes must not depend on the caller's."""
    old = os.umask(0)
    yield
    os.umask(old)


def test_database_wal_and_shm_are_created_private(tmp_path: Path, open_umask: None) -> None:
    data_dir = tmp_path / "var"
    conn = connect(data_dir)
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("INSERT INTO suppression_meta (key, value) VALUES ('x', 1)")
    conn.execute("COMMIT")
    try:
        assert mode(data_dir) == 0o700
        for name in FILES:
            assert mode(data_dir / name) == 0o600, name
    finally:
        conn.close()


def test_configured_group_may_read_the_database(tmp_path: Path, open_umask: None) -> None:
    name, gid = other_group()
    data_dir = tmp_path / "var"
    conn = connect(data_dir, group=name)
    try:
        assert mode(data_dir) == 0o750
        assert os.stat(data_dir).st_gid == gid
        for f in FILES:
            assert mode(data_dir / f) == 0o640, f
            assert os.stat(data_dir / f).st_gid == gid, f
    finally:
        conn.close()


def test_an_existing_world_readable_database_is_tightened(tmp_path: Path) -> None:
    data_dir = tmp_path / "var"
    connect(data_dir).close()
    os.chmod(data_dir / "smtpguard.db", 0o644)
    connect(data_dir).close()
    assert mode(data_dir / "smtpguard.db") == 0o600


def test_the_wal_shrinks_after_a_big_message(tmp_path: Path) -> None:
    data_dir = tmp_path / "var"
    conn = connect(data_dir)
    reader = connect(data_dir)  # keeps the WAL file from being deleted at close
    try:
        conn.execute("CREATE TABLE big (data BLOB)")
        conn.execute("INSERT INTO big VALUES (zeroblob(40 * 1024 * 1024))")
        wal = data_dir / "smtpguard.db-wal"
        assert wal.stat().st_size > 40 * 1024 * 1024
        conn.execute("DELETE FROM big")
        conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
        conn.execute("INSERT INTO big VALUES (x'00')")  # the next write restarts the WAL
        assert wal.stat().st_size <= JOURNAL_SIZE_LIMIT
    finally:
        reader.close()
        conn.close()


def test_export_does_not_follow_a_symlink_planted_in_the_directory(tmp_path: Path) -> None:
    data_dir = tmp_path / "var"
    with SuppressionStore.open(data_dir) as store:
        obs = make_observation("bob@example.com", "userunknown", source="manual")
        store.record_observation(obs, actor="t")
    out_dir = tmp_path / "exports"
    out_dir.mkdir()
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    output = out_dir / "list.csv"
    # The temporary names an export used to write through, for this very process.
    for name in (f".list.csv.tmp{os.getpid()}", ".list.csv.tmp"):
        (out_dir / name).symlink_to(victim)
    result = CliRunner().invoke(
        smtpguard_cli,
        ["--config", "/dev/null", "--data-dir", str(data_dir), "suppression", "export",
         "-o", str(output)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert victim.read_text() == "precious\n"
    assert "bob@example.com" in output.read_text()
    assert mode(output) == 0o600
    assert not output.is_symlink()


def test_an_unknown_store_group_is_a_config_error() -> None:
    from smtpguard.config import Config
    from smtpguard.errors import ConfigError

    with pytest.raises(ConfigError, match=r"store\.group: expected the name or number of an"):
        Config().with_overrides(store={"group": "no-such-group-smtpguard"})

"""``smtpguard store``: founding a fleet from a host's list, copying it back, sync and status."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from tests.fixtures.cli import _run
from tests.fixtures.net import free_port
from tests.fixtures.relay import write_config

BOB = "bob@example.com"


def node_config(tmp_path: Path, name: str, dsn: str) -> Path:
    return write_config(
        tmp_path / f"{name}.toml",
        {"store": {"data_dir": str(tmp_path / name), "backend": "postgresql", "dsn": dsn,
                   "node": name}},
    )  # fmt: skip


def smtpguard(*args: str) -> subprocess.CompletedProcess[str]:
    return _run(list(args))


def test_store_copy_founds_a_fleet_from_a_standalone_list(tmp_path: Path, pg_dsn: str) -> None:
    standalone = str(tmp_path / "standalone")
    assert smtpguard("--data-dir", standalone, "suppression", "add", BOB).returncode == 0
    copied = smtpguard(
        "--data-dir", standalone, "store", "copy", "--from", "sqlite", "--to", "postgresql",
        "--dsn", pg_dsn,
    )  # fmt: skip
    assert copied.returncode == 0, copied.stderr
    assert "copied 1 entries" in copied.stdout
    b = node_config(tmp_path, "node-b", pg_dsn)
    synced = smtpguard("--config", str(b), "store", "sync")
    assert synced.returncode == 0, synced.stderr
    assert smtpguard("--config", str(b), "suppression", "check", BOB).returncode == 0


def test_store_copy_into_a_fleet_list_that_is_not_empty_is_refused(
    tmp_path: Path, pg_dsn: str
) -> None:
    a = node_config(tmp_path, "node-a", pg_dsn)
    assert smtpguard("--config", str(a), "suppression", "add", BOB).returncode == 0
    standalone = str(tmp_path / "standalone")
    smtpguard("--data-dir", standalone, "suppression", "add", "carol@example.com")
    copied = smtpguard(
        "--data-dir", standalone, "store", "copy", "--from", "sqlite", "--to", "postgresql",
        "--dsn", pg_dsn,
    )  # fmt: skip
    assert copied.returncode == 2
    assert copied.stderr.count("\n") == 1 and "not empty" in copied.stderr


def test_store_copy_back_to_sqlite_keeps_each_change_s_node_in_the_actor(
    tmp_path: Path, pg_dsn: str
) -> None:
    a = node_config(tmp_path, "node-a", pg_dsn)
    assert smtpguard("--config", str(a), "suppression", "add", BOB).returncode == 0
    local = str(tmp_path / "copy")
    copied = smtpguard(
        "--data-dir", local, "store", "copy", "--from", "postgresql", "--to", "sqlite",
        "--dsn", pg_dsn,
    )  # fmt: skip
    assert copied.returncode == 0, copied.stderr
    shown = smtpguard("--data-dir", local, "suppression", "history", BOB, "--format", "json")
    (record,) = json.loads(shown.stdout)
    assert record["actor"].endswith("@node-a")


def test_store_status_exits_1_while_postgresql_is_unreachable(tmp_path: Path) -> None:
    a = node_config(tmp_path, "node-a", f"postgresql://postgres@127.0.0.1:{free_port()}/x")
    assert smtpguard("--config", str(a), "suppression", "add", BOB).returncode == 0
    status = smtpguard("--config", str(a), "store", "status", "--format", "json")
    assert status.returncode == 1
    info = json.loads(status.stdout)
    assert (info["reachable"], info["outbox"]) == (False, 1)


def test_store_migrate_creates_the_postgresql_schema(tmp_path: Path, pg_dsn: str) -> None:
    migrated = smtpguard("--data-dir", str(tmp_path / "v"), "store", "migrate", "--dsn", pg_dsn)
    assert migrated.returncode == 0, migrated.stderr
    assert "schema version 0 -> 2" in migrated.stdout
    again = smtpguard("--data-dir", str(tmp_path / "v"), "store", "migrate", "--dsn", pg_dsn)
    assert "schema version 2" in again.stdout


def test_the_report_on_a_fleet_node_adds_up_every_node_s_deliveries(
    tmp_path: Path, pg_dsn: str
) -> None:
    import time

    from smtpguard.config import load
    from smtpguard.store import daily, fleet
    from smtpguard.store.db import connect, transaction
    from smtpguard.store.pg.sync import sync_once

    today = daily.day_of(time.time())
    for name, sent in (("node-a", 3), ("node-b", 4)):
        cfg = load(node_config(tmp_path, name, pg_dsn))
        node = fleet.prepare(cfg)
        assert node is not None
        conn = connect(cfg.data_dir)
        with transaction(conn, cfg.db_path):
            daily.add(conn, {(today, "example.com"): [sent, 1, 0, 0, 0]}, {}, 500)
        conn.close()
        sync_once(cfg, node)
    shown = smtpguard(
        "--config", str(tmp_path / "node-a.toml"), "report", "--since", "1d", "--format", "json"
    )
    assert shown.returncode == 0, shown.stderr
    data = json.loads(shown.stdout)
    assert (data["total"]["sent"], data["total"]["deferred"]) == (7, 2)
    assert any("node-a, node-b" in note for note in data["notes"])

"""Two processes writing the suppression store at once: nothing is lost, nothing doubled."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from smtpguard.store.suppression import SuppressionStore

REPO = Path(__file__).resolve().parents[1]

# Each writer waits for the "go" file so that both really run at the same time,
# then records its own addresses and the shared ones, one transaction each.
WRITER = textwrap.dedent(
    """
    import os, sys, time
    from smtpguard.store.suppression import SuppressionStore
    data_dir, name, n, go = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    store = SuppressionStore.open(data_dir, busy_timeout=30)
    deadline = time.monotonic() + 30
    while not os.path.exists(go):
        assert time.monotonic() < deadline, "no go signal"
        time.sleep(0.001)
    for i in range(n):
        store.record(f"{name}-{i}@example.com", "userunknown", source="smtp-reply", actor=name)
        store.record(f"shared-{i}@example.com", "userunknown", source="smtp-reply", actor=name)
    store.close()
    """
)

IMPORTER = textwrap.dedent(
    """
    import os, sys, time
    from smtpguard.store.suppression import SuppressionStore, make_observation
    data_dir, n, go = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    store = SuppressionStore.open(data_dir, busy_timeout=30)
    while not os.path.exists(go):
        time.sleep(0.001)
    for chunk in range(4):
        with store.bulk(actor="import:bulk.csv", batch_size=500) as writer:
            for i in range(chunk * n // 4, (chunk + 1) * n // 4):
                writer.add(make_observation(f"bulk-{i}@example.com", "complaint", source="import"))
    store.close()
    """
)


def start(script: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", script, *args],
        cwd=REPO,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def finish(procs: list[subprocess.Popen[str]]) -> None:
    for p in procs:
        _out, err = p.communicate(timeout=90)
        assert p.returncode == 0, err


@pytest.mark.slow
def test_two_processes_recording_at_once_lose_nothing(data_dir: Path, tmp_path: Path) -> None:
    SuppressionStore.open(data_dir).close()  # schema in place before the race
    go = tmp_path / "go"
    n = 150
    procs = [start(WRITER, str(data_dir), name, str(n), str(go)) for name in ("w1", "w2")]
    time.sleep(0.3)  # both interpreters up and waiting
    go.touch()
    finish(procs)
    with SuppressionStore.open(data_dir) as store:
        for name in ("w1", "w2"):
            for i in range(n):
                entry = store.lookup(f"{name}-{i}@example.com")
                assert entry is not None and entry.count == 1
        for i in range(n):
            entry = store.get(f"shared-{i}@example.com")
            assert entry is not None and entry.count == 2, (i, entry)
            history = store.history(f"shared-{i}@example.com")
            assert sorted(h.actor for h in history) == ["w1", "w2"]
            assert [h.action for h in history] == ["added", "updated"]
        stats = store.stats()
    assert stats["active"] == 3 * n
    assert stats["history_records"] == 4 * n


def test_bulk_import_and_relay_writes_interleave_without_loss(
    data_dir: Path, tmp_path: Path
) -> None:
    SuppressionStore.open(data_dir).close()
    go = tmp_path / "go"
    n = 4000
    procs = [
        start(IMPORTER, str(data_dir), str(n), str(go)),
        start(WRITER, str(data_dir), "relay", "100", str(go)),
    ]
    time.sleep(0.3)
    go.touch()
    finish(procs)
    with SuppressionStore.open(data_dir) as store:
        stats = store.stats()
        assert store.get("bulk-0@example.com") is not None
        assert store.get(f"bulk-{n - 1}@example.com") is not None
    assert stats["active"] == n + 200
    assert stats["by_reason"] == {"complaint": n, "userunknown": 200}
    assert stats["history_records"] == n + 200

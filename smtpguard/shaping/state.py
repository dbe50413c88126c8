"""The relay's shaping state as a JSON file the CLI reads (``smtpguard queue sites``).

Why a file and not a table: the state changes with every message (rates,
connections, lines) and is only worth looking at now; writing it into the
queue database every few seconds would put one more writer on the relay's
single write path for nothing durable. The relay replaces the file atomically
(write a temporary file, then rename), so a reader sees one whole snapshot or
the previous one, never half; ``updated_at`` tells the reader how old it is
(a stopped relay leaves its last snapshot, which the CLI shows as stale).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from smtpguard.errors import UserError
from smtpguard.shaping.shaper import SiteView

STATE_FILE = "shaping-state.json"
#: How often the relay writes the snapshot (seconds).
INTERVAL = 2.0


@dataclass(frozen=True)
class SiteRow:
    """A :class:`SiteView` plus what the delivery side has under way for the site."""

    view: SiteView
    connections: int  # open now
    waiting: int  # jobs in the site's line
    postponed: int  # jobs put back in the queue by shaping, not due yet

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self.view), "connections": self.connections, "waiting": self.waiting,
                "postponed": self.postponed, "queued": self.waiting + self.postponed}  # fmt: skip


def state_path(data_dir: str | Path) -> Path:
    return Path(data_dir) / STATE_FILE


def write(path: Path, rows: list[SiteRow], now: float, pid: int) -> None:
    """Replace ``path`` with this snapshot (atomically)."""
    doc = {"updated_at": now, "pid": pid, "sites": [r.as_dict() for r in rows]}
    tmp = path.with_name(f".{path.name}.{pid}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(doc, f, separators=(",", ":"))
    os.replace(tmp, path)


def read(path: Path) -> dict[str, Any]:
    """The last snapshot; a UserError (one line) when there is none or it is unreadable."""
    try:
        raw = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{path}: no shaping state (has the relay run with this data_dir?)")\
            from None  # fmt: skip
    except OSError as e:
        raise UserError(f"{path}: cannot read: {e.strerror or e}") from None
    try:
        doc = json.loads(raw)
    except ValueError as e:
        raise UserError(f"{path}: not a shaping state file: {e}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("sites"), list):
        raise UserError(f"{path}: not a shaping state file")
    return doc

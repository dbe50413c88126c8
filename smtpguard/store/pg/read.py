"""What operators read straight from PostgreSQL: the fleet's history of an address.

Everything else the CLI reads (``check``, ``list``, ``export``, ``stats``) comes from
the node's cache, the same answer the node's RCPT check gives; the history is
the one thing a node's cache does not hold whole (each node keeps only its own
changes), so ``suppression history`` asks PostgreSQL, with each row's node.
"""

from __future__ import annotations

from typing import Any

from smtpguard.store.entries import HistoryRecord

_COLUMNS = (
    "address, kind, action, at, actor, note, old_reason, new_reason, source, status, "
    "reply_code, diagnostic, evidence, node"
)


def history(conn: Any, key: str) -> list[tuple[HistoryRecord, str]]:
    """Every change to ``key`` (a normalised address or domain) fleet-wide, oldest first."""
    rows = conn.execute(
        f"SELECT {_COLUMNS} FROM suppression_history WHERE address = %s ORDER BY id", (key,)
    ).fetchall()
    return [(HistoryRecord(*r[:13]), r[13]) for r in rows]

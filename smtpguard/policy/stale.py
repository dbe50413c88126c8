"""What a fleet node answers for a recipient its cache does not list while it is out of sync.

On ``store.backend = "postgresql"`` the RCPT check reads the node's SQLite cache,
as on a single host: a listed recipient is refused whatever PostgreSQL's state.
A recipient *not* listed is an unknown answer once the cache has gone without a
sync for longer than ``store.max_staleness`` (PostgreSQL unreachable, the relay
that replicates stopped): another node may have suppressed it meanwhile. The
operator chooses (``store.unknown``): ``accept`` (mail keeps flowing; the
default, as a lone host would) or ``tempfail`` (``451 4.3.0``: the client
retries later, by when the node is likely back in sync).

The last sync time is read from the cache (the replicator writes it), at most
once a second while it is recent, so the relay, the milter and the policy
service of one node agree and the RCPT path stays one indexed read.
"""

from __future__ import annotations

import sqlite3
import time

from smtpguard.policy.recipient import Client, Decision, RecipientPolicy
from smtpguard.smtp.text import printable
from smtpguard.store import outbox
from smtpguard.store.pg import metrics

#: How long one reading of the last sync time is used (seconds).
RECHECK = 1.0


class StaleCacheGuard:
    """A :class:`RecipientPolicy` that defers what the inner one accepts while stale."""

    def __init__(
        self, inner: RecipientPolicy, conn: sqlite3.Connection, *, max_staleness: float
    ) -> None:
        self._inner = inner
        self._conn = conn
        self._max = max_staleness
        self._checked = float("-inf")
        self._synced: float | None = None

    def age(self, now: float | None = None) -> float | None:
        """Seconds since the cache was last in sync (None: never)."""
        now = time.time() if now is None else now
        mono = time.monotonic()
        fresh = self._synced is not None and now - self._synced <= self._max
        # A fresh answer is kept for RECHECK; a stale one is read again at every check
        # (the unusual case), so a node that has just caught up says so at once.
        if mono - self._checked >= RECHECK or not fresh:
            try:
                value = outbox.get_state(self._conn, "synced_at")
            except sqlite3.Error:
                value = None
            self._synced = None if value is None else float(value)
            self._checked = mono
        return None if self._synced is None else max(0.0, now - self._synced)

    def check(self, sender: str, recipient: str, client: Client, authenticated: bool) -> Decision:
        decision = self._inner.check(sender, recipient, client, authenticated)
        if decision.action != "accept":
            return decision
        age = self.age()
        if age is not None and age <= self._max:
            return decision
        metrics.UNKNOWN.labels("tempfail").inc()
        since = "never synced" if age is None else f"last synced {age:.0f}s ago"
        return Decision(
            "defer", 451, "4.3.0",
            f"<{printable(recipient)}>: suppression list unavailable on this node ({since}),"
            " try again later",
        )  # fmt: skip

    def close(self) -> None:
        self._inner.close()
        self._conn.close()

"""``smtpguard report`` on a fleet node: the fleet's numbers, read from PostgreSQL.

Every node pushes its per-day delivery counts (through its outbox, like its
suppressions) and its changes to the list land in the fleet's history, so the
report's per-day counts, reasons, complaints and suppression changes are the
whole fleet's, added up over the nodes. The queue part stays the node's own
(each node has its own queue). Same shapes as :mod:`smtpguard.store.daily` and
:func:`smtpguard.store.reporting.suppression_changes`, so the report is built by
the same code.
"""

from __future__ import annotations

from typing import Any

from smtpguard.store.daily import DayCounts
from smtpguard.store.reporting import _COMPLAINT_ACTIONS, ChangeCount, fold_changes


class FleetReportSource:
    """The fleet's report numbers over one PostgreSQL connection."""

    def __init__(self, conn: Any) -> None:
        self._conn = conn

    def deliveries(self, since_day: str) -> list[DayCounts]:
        rows = self._conn.execute(
            "SELECT day, domain, sum(sent), sum(deferred), sum(bounced), sum(expired),"
            " sum(suppressed) FROM daily_deliveries WHERE day >= %s GROUP BY day, domain"
            " ORDER BY day, domain",
            (since_day,),
        ).fetchall()
        return [DayCounts(r[0], r[1], *(int(n) for n in r[2:])) for r in rows]

    def reasons(self, since_day: str) -> list[tuple[str, str, str, int]]:
        rows = self._conn.execute(
            "SELECT day, status, reason, sum(count) FROM daily_reasons WHERE day >= %s"
            " GROUP BY day, status, reason ORDER BY day, status, reason",
            (since_day,),
        ).fetchall()
        return [(r[0], r[1], r[2], int(r[3])) for r in rows]

    def nodes(self, since_day: str) -> list[str]:
        rows = self._conn.execute(
            "SELECT DISTINCT node FROM daily_deliveries WHERE day >= %s ORDER BY node",
            (since_day,),
        ).fetchall()
        return [r[0] for r in rows]

    def suppression_changes(
        self, since: float
    ) -> tuple[list[ChangeCount], list[tuple[str, str, int]]]:
        rows = self._conn.execute(
            "SELECT to_char(to_timestamp(at) AT TIME ZONE 'UTC', 'YYYY-MM-DD'), action,"
            " evidence, CASE WHEN new_reason = 'complaint' AND action = ANY(%s) THEN"
            " CASE WHEN position('@' in address) > 0 THEN split_part(address, '@', 2)"
            " ELSE address END END, count(*) FROM suppression_history WHERE at >= %s"
            " GROUP BY 1, 2, 3, 4",
            (list(_COMPLAINT_ACTIONS), since),
        ).fetchall()
        return fold_changes(rows)

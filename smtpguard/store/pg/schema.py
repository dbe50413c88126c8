"""The fleet's tables in PostgreSQL and their forward-only migrations.

Like :mod:`smtpguard.store.migrations` for SQLite: step N brings
``smtpguard_schema.version`` to N, each step in one transaction, and a database
from a newer smtpguard is refused rather than misread. ``smtpguard store
migrate`` runs them; the replicator and the CLI run them too on first contact
(under an advisory lock, so two nodes starting at once do not race).

The tables mirror SQLite's (same columns, same keys), plus:

* ``seq`` on every list row: the fleet-wide change number of its last change;
* ``suppression_changes``: one row per change (seq, table, key), the log that
  nodes pull from (a deleted entry leaves its change behind);
* ``fleet_meta``: the change counter. Every write to the fleet's list happens
  in a transaction that first locks this one row, so change numbers are
  handed out in commit order and a node that has applied change N has seen
  every change before it;
* ``fleet_nodes``: per node database (instance), the last outbox id applied,
  which makes a replayed push harmless;
* ``node`` on history rows: which node of the fleet made the change;
* (step 2) each node's per-day delivery counts, which ``smtpguard report`` adds up.
"""

from __future__ import annotations

from typing import Any

from smtpguard.errors import StoreError

#: pg_advisory_lock key for migrations ("smtpguar" as 8 bytes).
MIGRATE_LOCK = 0x736D7470677561

_ENTRY_COLUMNS = """
    domain     TEXT    NOT NULL,
    local      TEXT    NOT NULL,
    reason     TEXT    NOT NULL,
    status     TEXT    NOT NULL DEFAULT '',
    reply_code TEXT    NOT NULL DEFAULT '',
    diagnostic TEXT    NOT NULL DEFAULT '',
    source     TEXT    NOT NULL,
    first_seen DOUBLE PRECISION NOT NULL,
    last_seen  DOUBLE PRECISION NOT NULL,
    count      BIGINT  NOT NULL DEFAULT 1,
    expires    DOUBLE PRECISION,
    evidence   TEXT    NOT NULL DEFAULT '',
    seq        BIGINT  NOT NULL,
"""

MIGRATIONS: list[list[str]] = [
    # 1: the list, its history, pending entries, soft-bounce counts, the change log
    [
        f"CREATE TABLE suppression ({_ENTRY_COLUMNS} PRIMARY KEY (domain, local))",
        "CREATE INDEX suppression_expires ON suppression (expires) WHERE expires IS NOT NULL",
        """CREATE TABLE suppression_history (
            id         BIGINT  NOT NULL PRIMARY KEY,
            address    TEXT    NOT NULL,
            kind       TEXT    NOT NULL,
            action     TEXT    NOT NULL
                CHECK (action IN ('added', 'escalated', 'updated', 'removed', 'expired',
                                  'recorded', 'pending', 'confirmed', 'discarded')),
            at         DOUBLE PRECISION NOT NULL,
            actor      TEXT    NOT NULL,
            node       TEXT    NOT NULL DEFAULT '',
            note       TEXT    NOT NULL DEFAULT '',
            old_reason TEXT    NOT NULL DEFAULT '',
            new_reason TEXT    NOT NULL DEFAULT '',
            source     TEXT    NOT NULL DEFAULT '',
            status     TEXT    NOT NULL DEFAULT '',
            reply_code TEXT    NOT NULL DEFAULT '',
            diagnostic TEXT    NOT NULL DEFAULT '',
            evidence   TEXT    NOT NULL DEFAULT ''
        )""",
        "CREATE INDEX suppression_history_address ON suppression_history (address, id)",
        f"""CREATE TABLE suppression_pending ({_ENTRY_COLUMNS}
            destination TEXT NOT NULL,
            actor       TEXT NOT NULL,
            PRIMARY KEY (domain, local))""",
        """CREATE TABLE soft_bounces (
            domain     TEXT    NOT NULL,
            local      TEXT    NOT NULL,
            reason     TEXT    NOT NULL,
            first_seen DOUBLE PRECISION NOT NULL,
            last_seen  DOUBLE PRECISION NOT NULL,
            count      BIGINT  NOT NULL DEFAULT 1,
            seq        BIGINT  NOT NULL,
            PRIMARY KEY (domain, local)
        )""",
        """CREATE TABLE suppression_changes (
            seq    BIGINT NOT NULL PRIMARY KEY,
            tbl    TEXT   NOT NULL CHECK (tbl IN ('suppression', 'pending', 'soft')),
            domain TEXT   NOT NULL,
            local  TEXT   NOT NULL,
            at     DOUBLE PRECISION NOT NULL
        )""",
        """CREATE TABLE fleet_meta (
            id          INTEGER NOT NULL PRIMARY KEY CHECK (id = 1),
            seq         BIGINT  NOT NULL,
            history_seq BIGINT  NOT NULL
        )""",
        "INSERT INTO fleet_meta (id, seq, history_seq) VALUES (1, 0, 0)",
        """CREATE TABLE fleet_nodes (
            instance       TEXT    NOT NULL PRIMARY KEY,
            node           TEXT    NOT NULL,
            last_outbox_id BIGINT  NOT NULL DEFAULT 0,
            last_push      DOUBLE PRECISION,
            last_seq       BIGINT  NOT NULL DEFAULT 0,
            last_pull      DOUBLE PRECISION
        )""",
    ],
    # 2: per-day delivery counts of every node, for `smtpguard report`
    [
        """CREATE TABLE daily_deliveries (
            day        TEXT    NOT NULL,
            domain     TEXT    NOT NULL,
            node       TEXT    NOT NULL,
            sent       BIGINT  NOT NULL DEFAULT 0,
            deferred   BIGINT  NOT NULL DEFAULT 0,
            bounced    BIGINT  NOT NULL DEFAULT 0,
            expired    BIGINT  NOT NULL DEFAULT 0,
            suppressed BIGINT  NOT NULL DEFAULT 0,
            PRIMARY KEY (day, domain, node)
        )""",
        """CREATE TABLE daily_reasons (
            day    TEXT   NOT NULL,
            status TEXT   NOT NULL,
            reason TEXT   NOT NULL,
            node   TEXT   NOT NULL,
            count  BIGINT NOT NULL DEFAULT 0,
            PRIMARY KEY (day, status, reason, node)
        )""",
    ],
]


def version(conn: Any) -> int:
    """The schema version of the database (0: no smtpguard tables yet)."""
    row = conn.execute("SELECT to_regclass('smtpguard_schema')").fetchone()
    if row[0] is None:
        return 0
    return int(conn.execute("SELECT version FROM smtpguard_schema").fetchone()[0])


def migrate(conn: Any) -> tuple[int, int]:
    """Bring the schema to the newest version; (version before, version after).

    ``conn`` is a psycopg connection not in autocommit mode.
    """
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATE_LOCK,))
        conn.execute("CREATE TABLE IF NOT EXISTS smtpguard_schema (version INTEGER NOT NULL)")
        if conn.execute("SELECT count(*) FROM smtpguard_schema").fetchone()[0] == 0:
            conn.execute("INSERT INTO smtpguard_schema (version) VALUES (0)")
    with conn.transaction():
        before = version(conn)
    if before > len(MIGRATIONS):
        raise StoreError(
            f"PostgreSQL schema version {before} is newer than this smtpguard understands"
            f" ({len(MIGRATIONS)}); upgrade smtpguard"
        )
    for number in range(before + 1, len(MIGRATIONS) + 1):
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATE_LOCK,))
            if version(conn) >= number:
                continue
            for statement in MIGRATIONS[number - 1]:
                conn.execute(statement)
            conn.execute("UPDATE smtpguard_schema SET version = %s", (number,))
    with conn.transaction():
        return before, version(conn)


def require_current(conn: Any) -> None:
    """StoreError unless the schema is exactly this smtpguard's."""
    v = version(conn)
    if v != len(MIGRATIONS):
        raise StoreError(
            f"PostgreSQL schema version {v}, this smtpguard needs {len(MIGRATIONS)}"
            " (run `smtpguard store migrate`)"
        )

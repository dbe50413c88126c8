"""One synchronous round of replication, for the CLI (``store sync``, and after an edit).

The relay's :class:`~smtpguard.store.pg.replicator.Replicator` does the same
continuously; both use :func:`smtpguard.store.pg.apply.push` and
:mod:`smtpguard.store.pg.pull`, so a push from the CLI and one from the relay
are the same transaction (and a row pushed by both is applied once).
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from typing import Any

from smtpguard.config import Config
from smtpguard.store import outbox
from smtpguard.store.db import connect, transaction
from smtpguard.store.outbox import NodeIdentity
from smtpguard.store.pg import apply, pull, schema
from smtpguard.store.pg.connect import connect as pg_connect
from smtpguard.store.pg.connect import driver, explain
from smtpguard.store.pg.replicator import PUSH_BATCH


@dataclass(frozen=True, slots=True)
class SyncReport:
    pushed: int  # outbox operations sent (applied now or before)
    pulled: int  # rows written into the cache
    seq: int  # the fleet's change number the cache is at


def push(local: sqlite3.Connection, pg: Any, ident: NodeIdentity) -> int:
    """Push the whole outbox; returns the operations sent."""
    path = local_path(local)
    total = 0
    while True:
        ops = outbox.read(local, PUSH_BATCH)
        if not ops:
            return total
        result = apply.push(pg, ident, ops)
        with transaction(local, path):
            outbox.delete_through(local, result.last_id)
        total += len(ops)
        if len(ops) < PUSH_BATCH:
            return total


def pull_all(local: sqlite3.Connection, pg: Any) -> tuple[int, int]:
    """Pull every change since the cache's last; (rows written, change number)."""
    path = local_path(local)
    written = 0
    while True:
        since = pull.last_seq(local)
        page = pull.fetch(pg, since)
        with transaction(local, path):
            written += pull.apply_local(local, page, now=time.time())
        now_at = pull.last_seq(local)
        if page.seq >= page.head or now_at <= since:  # done, or held at a waiting change
            return written, now_at


def local_path(conn: sqlite3.Connection) -> Any:
    from pathlib import Path

    row = conn.execute("PRAGMA database_list").fetchone()
    return Path(row[2])


def open_pg(cfg: Config) -> Any:
    """A migrated connection to the fleet's database (StoreError when unreachable)."""
    pg = driver()
    conn = pg_connect(cfg.store.dsn)
    try:
        schema.migrate(conn)
    except pg.Error as e:
        conn.close()
        raise explain(cfg.store.dsn, e) from None
    return conn


def sync_once(cfg: Config, ident: NodeIdentity, *, pull_too: bool = True) -> SyncReport:
    """Push this node's outbox and (``pull_too``) pull the fleet's changes."""
    pg = driver()
    local = connect(cfg.data_dir, busy_timeout=cfg.store.busy_timeout, group=cfg.store.group)
    try:
        conn = open_pg(cfg)
        try:
            pushed = push(local, conn, ident)
            pulled, seq = pull_all(local, conn) if pull_too else (0, pull.last_seq(local))
        except pg.Error as e:
            raise explain(cfg.store.dsn, e) from None
        finally:
            conn.close()
        return SyncReport(pushed, pulled, seq)
    finally:
        local.close()

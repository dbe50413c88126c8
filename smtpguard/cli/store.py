"""``smtpguard store``: the store itself - schema, moving the list, the fleet's sync.

    smtpguard store migrate                       bring SQLite (and PostgreSQL) to this version
    smtpguard store copy --from sqlite --to postgresql   found a fleet from this host's list
    smtpguard store copy --from postgresql --to sqlite   the fleet's list into this host's SQLite
    smtpguard store sync                          push this node's outbox, pull the fleet's changes
    smtpguard store status                        outbox, last sync, PostgreSQL reachable?
    smtpguard store detach                        a fleet node's SQLite back to a standalone list

PostgreSQL is ``store.dsn`` (or ``--dsn`` for ``migrate`` and ``copy``, so a host
can found a fleet before its configuration names one).
"""

from __future__ import annotations

import time
from typing import Any

import click

from smtpguard.cli.main import common_options, get_config
from smtpguard.cli.output import echo, emit_json, format_option
from smtpguard.config import Config
from smtpguard.errors import StoreError, UserError
from smtpguard.store import fleet, outbox
from smtpguard.store.db import connect, db_path, transaction

BACKENDS = click.Choice(["sqlite", "postgresql"])


@click.group()
def store() -> None:
    """The store: schema migrations, moving the list, the fleet's replication."""


def _dsn(given: str | None) -> str:
    cfg = get_config()
    dsn = given or cfg.store.dsn
    if not dsn:
        raise UserError("no PostgreSQL: set store.dsn in the configuration or give --dsn")
    if given:
        cfg.with_overrides(store={"dsn": given}, origin="--dsn")  # the same checks (TLS)
    return dsn


def _pg(dsn: str) -> Any:
    from smtpguard.store.pg import schema
    from smtpguard.store.pg.connect import connect as pg_connect
    from smtpguard.store.pg.connect import driver, explain

    conn = pg_connect(dsn)
    try:
        schema.migrate(conn)
    except driver().Error as e:
        conn.close()
        raise explain(dsn, e) from None
    return conn


def _local(cfg: Config, *, create: bool = True) -> Any:
    return connect(
        cfg.data_dir, busy_timeout=cfg.store.busy_timeout, create=create, group=cfg.store.group
    )


DSN_OPTION = click.option(
    "--dsn", metavar="DSN", help="PostgreSQL connection string (default: store.dsn)."
)


@store.command("migrate")
@DSN_OPTION
@common_options
def migrate(dsn: str | None) -> None:
    """Bring the schemas to this smtpguard's version (SQLite; PostgreSQL too when the
    backend is postgresql or --dsn is given). Safe to run again; the relay does it too."""
    cfg = get_config()
    _local(cfg).close()
    echo(f"{db_path(cfg.data_dir)}: schema up to date")
    if dsn or fleet.enabled(cfg):
        from smtpguard.store.pg import schema
        from smtpguard.store.pg.connect import connect as pg_connect
        from smtpguard.store.pg.connect import driver, explain, redact

        target = _dsn(dsn)
        with pg_connect(target) as conn:
            try:
                before, after = schema.migrate(conn)
            except driver().Error as e:
                raise explain(target, e) from None
        moved = f"version {before} -> {after}" if before != after else f"version {after}"
        echo(f"PostgreSQL {redact(target)}: schema {moved}")


@store.command("copy")
@click.option("--from", "source", type=BACKENDS, required=True, help="Copy from this backend.")
@click.option("--to", "target", type=BACKENDS, required=True, help="Into this one.")
@click.option(
    "--replace", is_flag=True, help="Into SQLite: replace a local list that is not empty."
)
@DSN_OPTION
@common_options
def copy(source: str, target: str, replace: bool, dsn: str | None) -> None:
    """Copy the suppression list (entries, history, pending, soft-bounce counts).

    --from sqlite --to postgresql founds a fleet from this host's list: the
    fleet's list must be empty (to merge another host's list into a running
    fleet, export it there and import it on a fleet node). --from postgresql
    --to sqlite writes the fleet's list into this host's SQLite.

    \b
    Examples:
      smtpguard store copy --from sqlite --to postgresql --dsn postgresql://db/smtpguard
      smtpguard store copy --from postgresql --to sqlite --replace
    """
    from smtpguard.store.pg import copy as pgcopy
    from smtpguard.store.pg.connect import driver, explain, node_name

    if source == target:
        raise UserError("--from and --to name the same backend")
    cfg = get_config()
    target_dsn = _dsn(dsn)
    pg = driver()
    with _pg(target_dsn) as conn:
        local = _local(cfg, create=target == "sqlite")
        try:
            if target == "postgresql":
                report, head = pgcopy.to_postgresql(local, conn, node_name(cfg))
                if fleet.enabled(cfg) and target_dsn == cfg.store.dsn:
                    fleet.prepare(cfg)
                    with transaction(local, db_path(cfg.data_dir)):
                        # This node's cache is exactly the fleet's list now.
                        outbox.set_state(local, "last_seq", head)
                        outbox.set_state(local, "synced_at", repr(time.time()))
            else:
                with transaction(local, db_path(cfg.data_dir)):
                    report = pgcopy.to_sqlite(conn, local, replace=replace)
        except pg.Error as e:
            raise explain(target_dsn, e) from None
        finally:
            local.close()
    echo(f"copied {report} from {source} to {target}")


def _node(cfg: Config) -> outbox.NodeIdentity:
    node = fleet.prepare(cfg)
    if node is None:
        raise UserError('this host is not a fleet node (store.backend = "sqlite")')
    return node


@store.command("sync")
@common_options
def sync() -> None:
    """Push this node's outbox to PostgreSQL and pull the fleet's changes, once.

    The relay does this continuously; this is for a node without a running relay,
    or to make sure before maintenance. Exit 2 when PostgreSQL is unreachable.
    """
    from smtpguard.store.pg.sync import sync_once

    cfg = get_config()
    report = sync_once(cfg, _node(cfg))
    echo(
        f"pushed {report.pushed} changes, pulled {report.pulled} rows;"
        f" in sync at change {report.seq}"
    )


@store.command("status")
@format_option("table", "json")
@common_options
def status(fmt: str) -> None:
    """This node's replication: outbox depth, last sync, the fleet's head.

    Exit status: 0 in sync, 1 when PostgreSQL is unreachable or changes wait.
    """
    from smtpguard.store.pg import pull
    from smtpguard.store.pg.connect import node_name, redact

    cfg = get_config()
    if not fleet.enabled(cfg):
        raise UserError('this host is not a fleet node (store.backend = "sqlite")')
    local = _local(cfg, create=False)
    try:
        waiting, oldest = outbox.depth(local)
        seq, synced = pull.last_seq(local), pull.synced_at(local)
    finally:
        local.close()
    now = time.time()
    info: dict[str, Any] = {
        "node": node_name(cfg),
        "postgresql": redact(cfg.store.dsn),
        "outbox": waiting,
        "outbox_oldest_age": None if oldest is None else round(now - oldest, 3),
        "last_seq": seq,
        "synced_age": None if synced is None else round(now - synced, 3),
        "head": None,
        "reachable": False,
        "error": "",
    }
    nodes: list[dict[str, Any]] = []
    try:
        from smtpguard.store.pg import apply

        with _pg(cfg.store.dsn) as conn:
            info["head"] = int(conn.execute("SELECT seq FROM fleet_meta").fetchone()[0])
            info["reachable"] = True
            nodes = apply.nodes(conn)
    except StoreError as e:
        info["error"] = str(e)
    if fmt == "json":
        emit_json({**info, "fleet": nodes})
    else:
        for key, value in info.items():
            if key != "error" or value:
                echo(f"{key}: {'-' if value is None else value}")
        for n in nodes:
            echo(
                f"fleet node {n['node']}: at change {n['last_seq']}, pulled"
                f" {_ago(n['last_pull_age'])}, pushed {_ago(n['last_push_age'])}"
            )
    in_sync = info["reachable"] and not waiting
    raise SystemExit(0 if in_sync else 1)


def _ago(age: float | None) -> str:
    return "never" if age is None else f"{age:.0f}s ago"


@store.command("detach")
@click.option("--force", is_flag=True, help="Drop changes never pushed to PostgreSQL.")
@common_options
def detach(force: bool) -> None:
    """Make this node's SQLite a standalone list again (set store.backend = "sqlite" too).

    The list stays as the node last saw it; refused while changes wait to be pushed
    (run `smtpguard store sync` first), unless --force.
    """
    cfg = get_config()
    dropped = outbox.detach(cfg.data_dir, force=force, busy_timeout=cfg.store.busy_timeout)
    echo(f"{db_path(cfg.data_dir)}: detached from the fleet ({dropped} unpushed changes dropped)")

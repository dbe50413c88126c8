"""``smtpguard queue``: inspect and act on the relay's queue, even while it runs.

    smtpguard queue list [--all]          pending messages (or every message)
    smtpguard queue show ID               envelope, recipients and history
    smtpguard queue retry ID | --all      make deferred recipients due now
    smtpguard queue hold ID               stop delivering a message
    smtpguard queue release ID            resume a held message
    smtpguard queue delete ID             drop a message's pending recipients (no DSN)
    smtpguard queue stats                 counts by state, oldest message, deferral reasons
    smtpguard queue sites                 traffic shaping per site: limits, suspensions, lines

Tables by default; ``--format json`` for scripts. The CLI opens the same
SQLite file as the relay (WAL lets both work at once); the relay notices
changed due times within a second.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import click

from smtpguard.cli.main import common_options, get_config
from smtpguard.cli.output import add_row, console, echo, emit_json, format_option, limit_option
from smtpguard.store.db import iso as _iso
from smtpguard.store.queue import (
    MessageSummary,
    QueueAdmin,
    QueuedMessage,
    QueuedRecipient,
    QueueEvent,
    QueueStats,
)

FORMAT = format_option("table", "json", help="Output as a table or as JSON.")


def _admin() -> QueueAdmin:
    cfg = get_config()
    return QueueAdmin.open(
        cfg.data_dir, busy_timeout=cfg.store.busy_timeout, create=False, group=cfg.store.group
    )


def _with_admin(fn: Callable[[QueueAdmin], Any]) -> Any:
    admin = _admin()
    try:
        return fn(admin)
    finally:
        admin.close()


def _message_dict(m: QueuedMessage) -> dict[str, Any]:
    return {
        "id": m.qid, "kind": m.kind, "mail_from": m.mail_from, "size": m.size,
        "received_at": _iso(m.received_at), "envid": m.envid, "ret": m.ret,
        "smtputf8": m.smtputf8, "body": m.body_type, "auto_submitted": m.auto_submitted,
        "client": m.client, "held": m.held, "done_at": _iso(m.done_at),
        "parent": f"{m.parent_id:010X}" if m.parent_id else "",
    }  # fmt: skip


def _recipient_dict(r: QueuedRecipient) -> dict[str, Any]:
    return {
        "address": r.address, "state": r.state, "attempts": r.attempts,
        "next_attempt": _iso(r.next_attempt) if r.state in ("queued", "held") else "",
        "last_attempt": _iso(r.last_attempt), "code": r.last_code, "status": r.last_status,
        "reason": r.last_reason, "diagnostic": r.last_diag, "remote_host": r.last_host,
        "notify": ",".join(r.notify), "orcpt": r.orcpt,
    }  # fmt: skip


def _event_dict(e: QueueEvent) -> dict[str, Any]:
    return {
        "time": _iso(e.ts), "event": e.event, "recipient": e.recipient, "code": e.code,
        "status": e.status, "reason": e.reason, "detail": e.detail, "remote_host": e.remote_host,
    }  # fmt: skip


def _summary_dict(s: MessageSummary) -> dict[str, Any]:
    return {
        **_message_dict(s.message), "recipients": s.recipients, "states": s.states,
        "next_attempt": _iso(s.next_attempt), "last_reason": s.last_reason,
    }  # fmt: skip


def _stats_dict(s: QueueStats) -> dict[str, Any]:
    return {
        "messages_pending": s.messages_pending, "recipients": s.recipients_by_state,
        "oldest_pending": _iso(s.oldest_pending), "next_due": _iso(s.next_due),
        "deferred_reasons": s.deferred_reasons,
    }  # fmt: skip


def _table(title: str, columns: list[str]) -> Any:
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for i, c in enumerate(columns):
        table.add_column(c, overflow="fold", no_wrap=i == 0)
    return table


@click.group()
def queue() -> None:
    """Inspect and act on the relay's queue."""


@queue.command("list")
@click.option("--all", "include_done", is_flag=True, help="Include finished messages.")
@limit_option(1000, "Show at most this many messages.", minimum=1)
@FORMAT
@common_options
def list_cmd(include_done: bool, limit: int, fmt: str) -> None:
    """List pending messages, oldest first."""
    rows = _with_admin(lambda a: a.list(include_done=include_done, limit=limit))
    if fmt == "json":
        emit_json([_summary_dict(s) for s in rows])
        return
    table = _table(
        f"{len(rows)} message(s)", ["id", "received", "from", "size", "rcpts", "states",
                                    "next attempt", "last reason"],
    )  # fmt: skip
    for s in rows:
        m = s.message
        states = " ".join(f"{k}={v}" for k, v in sorted(s.states.items()))
        if m.held:
            states += " (held)"
        add_row(
            table, m.qid, _iso(m.received_at), f"<{m.mail_from}>", m.size, s.recipients,
            states, _iso(s.next_attempt), s.last_reason,
        )  # fmt: skip
    console().print(table)


@queue.command()
@click.argument("queue_id")
@FORMAT
@common_options
def show(queue_id: str, fmt: str) -> None:
    """Show one message: envelope, recipients and history."""
    msg, rcpts, events = _with_admin(lambda a: a.show(queue_id))
    if fmt == "json":
        emit_json({
            "message": _message_dict(msg),
            "recipients": [_recipient_dict(r) for r in rcpts],
            "events": [_event_dict(e) for e in events],
        })  # fmt: skip
        return
    out = console()
    info = _table(f"message {msg.qid}", ["field", "value"])
    for k, v in _message_dict(msg).items():
        add_row(info, k, v)
    out.print(info)
    rt = _table("recipients", ["address", "state", "attempts", "next attempt", "last reply",
                               "reason"])  # fmt: skip
    for r in rcpts:
        d = _recipient_dict(r)
        add_row(rt, r.address, r.state, r.attempts, d["next_attempt"], r.last_diag,
                r.last_reason)  # fmt: skip
    out.print(rt)
    et = _table("history", ["time", "event", "recipient", "reason", "detail"])
    for e in events:
        add_row(et, _iso(e.ts), e.event, e.recipient, e.reason, e.detail)
    out.print(et)


def _report(fmt: str, action: str, queue_id: str | None, count: int) -> None:
    if fmt == "json":
        emit_json({"action": action, "id": queue_id or "*", "recipients": count})
    else:
        target = f"message {queue_id}" if queue_id else "the whole queue"
        echo(f"{action}: {count} recipient(s) of {target}")


@queue.command()
@click.argument("queue_id", required=False)
@click.option("--all", "everything", is_flag=True, help="Every deferred recipient in the queue.")
@FORMAT
@common_options
def retry(queue_id: str | None, everything: bool, fmt: str) -> None:
    """Make deferred recipients due now (one message, or --all)."""
    if bool(queue_id) == everything:
        raise click.UsageError("give a queue ID or --all (not both)")
    n = _with_admin(lambda a: a.retry(None if everything else queue_id, now=time.time()))
    _report(fmt, "retry", queue_id, n)


@queue.command()
@click.argument("queue_id")
@FORMAT
@common_options
def hold(queue_id: str, fmt: str) -> None:
    """Hold a message: no delivery until it is released."""
    _report(fmt, "hold", queue_id, _with_admin(lambda a: a.hold(queue_id)))


@queue.command()
@click.argument("queue_id")
@FORMAT
@common_options
def release(queue_id: str, fmt: str) -> None:
    """Release a held message; its recipients are due now."""
    _report(fmt, "release", queue_id, _with_admin(lambda a: a.release(queue_id)))


@queue.command()
@click.argument("queue_id")
@FORMAT
@common_options
def delete(queue_id: str, fmt: str) -> None:
    """Delete a message's pending recipients (no DSN is sent)."""
    _report(fmt, "delete", queue_id, _with_admin(lambda a: a.delete(queue_id)))


@queue.command()
@FORMAT
@common_options
def stats(fmt: str) -> None:
    """Counts by state, the oldest pending message, why recipients are deferred."""
    s = _with_admin(lambda a: a.stats())
    if fmt == "json":
        emit_json(_stats_dict(s))
        return
    table = _table("queue", ["metric", "value"])
    add_row(table, "messages pending", s.messages_pending)
    for state, n in s.recipients_by_state.items():
        add_row(table, f"recipients {state}", n)
    add_row(table, "oldest pending", _iso(s.oldest_pending))
    add_row(table, "next due", _iso(s.next_due))
    for reason, n in s.deferred_reasons.items():
        add_row(table, f"deferred: {reason or 'unknown'}", n)
    console().print(table)


#: A snapshot older than this is from a relay that is not running (it writes every 2 s).
STALE_AFTER = 30.0


@queue.command()
@FORMAT
@common_options
def sites(fmt: str) -> None:
    """Each delivery site: configured and current rate and connections, suspended-until,
    queued (waiting in its line + postponed by shaping), the last throttle reply.

    Read from the relay's state snapshot (``data_dir/shaping-state.json``, rewritten
    every 2 s while it runs)."""
    from smtpguard.shaping import state
    from smtpguard.shaping.limits import format_rate

    cfg = get_config()
    doc = state.read(state.state_path(cfg.data_dir))
    age = time.time() - float(doc.get("updated_at", 0))
    rows = sorted(doc["sites"], key=lambda r: (-int(r.get("queued", 0)), str(r.get("site"))))
    if fmt == "json":
        emit_json({"updated_at": _iso(doc.get("updated_at")), "stale": age > STALE_AFTER,
                   "sites": rows})  # fmt: skip
        return
    table = _table(
        "sites",
        ["site", "rate (conf/now)", "conns (conf/now/open)", "suspended until", "queued",
         "throttles", "last throttle"],
    )  # fmt: skip
    for r in rows:
        add_row(
            table, r["site"],
            f"{format_rate(r['configured_rate'])} / {format_rate(r['current_rate'])}",
            f"{r['configured_connections']} / {r['current_connections']} / {r['connections']}",
            _iso(r["suspended_until"]) if r["suspended_until"] else "",
            f"{r['queued']} ({r['waiting']} waiting)", r["throttles"],
            str(r["last_throttle"])[:80],
        )  # fmt: skip
    out = console()
    out.print(table)
    if age > STALE_AFTER:
        echo(f"note: snapshot is {age:.0f}s old: the relay is not running (or not writing it)")

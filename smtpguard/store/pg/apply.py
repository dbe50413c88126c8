"""Pushing a node's outbox: its operations applied to the fleet's list in PostgreSQL.

Each operation says what a node did (a sighting merged, an entry removed, a
pending entry confirmed...), with the node's actor and time. PostgreSQL applies
it to *its* state with the same pure rules the node used locally
(:func:`smtpguard.policy.merge.merge`), so two nodes that saw the same bad
address at once end with one entry seen twice, not two diverging copies.

One push is one transaction that first locks ``fleet_meta`` (the fleet lock):
pushes are serialised, change numbers are handed out in commit order, and the
node's ``last_outbox_id`` moves in the same commit, so a push replayed after a
crash (the node died before deleting its outbox rows) applies nothing twice.
Every entry an operation names gets a change row (even when nothing changed:
a node that skipped that entry while its own operation was waiting pulls it
again), and the commit sends ``NOTIFY smtpguard_suppression, '<seq>'``.

The rows an operation touches are read once per push and kept in memory while
it is applied: a batch of a thousand operations costs a handful of round trips.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from smtpguard.policy.merge import merge
from smtpguard.store.entries import (
    HistoryRow,
    PendingEntry,
    SuppressionEntry,
    history_row,
    observation_of,
)
from smtpguard.store.outbox import KEYLESS, NodeIdentity, OutboxRow, entry_from, obs_from
from smtpguard.store.pg.connect import CHANNEL
from smtpguard.store.suppression import entry_key, entry_row

Key = tuple[str, str]
_ADDRESS = "CASE WHEN local = '' THEN domain ELSE local || '@' || domain END"
_KIND = "CASE WHEN local = '' THEN 'domain' ELSE 'address' END"
_ENTRY = (
    f"{_ADDRESS}, {_KIND}, reason, status, reply_code, diagnostic, source, first_seen, "
    "last_seen, count, expires, evidence"
)
_KEYS = "(domain, local) IN (SELECT * FROM unnest(%s::text[], %s::text[]))"
_UPSERT = (
    "INSERT INTO suppression (domain, local, reason, status, reply_code, diagnostic, source, "
    "first_seen, last_seen, count, expires, evidence, seq) "
    "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) "
    "ON CONFLICT (domain, local) DO UPDATE SET reason = excluded.reason, "
    "status = excluded.status, reply_code = excluded.reply_code, "
    "diagnostic = excluded.diagnostic, source = excluded.source, "
    "first_seen = excluded.first_seen, last_seen = excluded.last_seen, count = excluded.count, "
    "expires = excluded.expires, evidence = excluded.evidence, seq = excluded.seq"
)
_PENDING_UPSERT = (
    "INSERT INTO suppression_pending (domain, local, reason, status, reply_code, diagnostic, "
    "source, first_seen, last_seen, count, expires, evidence, seq, destination, actor) "
    "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) "
    "ON CONFLICT (domain, local) DO UPDATE SET reason = excluded.reason, "
    "status = excluded.status, reply_code = excluded.reply_code, "
    "diagnostic = excluded.diagnostic, source = excluded.source, "
    "first_seen = excluded.first_seen, last_seen = excluded.last_seen, count = excluded.count, "
    "expires = excluded.expires, evidence = excluded.evidence, seq = excluded.seq, "
    "destination = excluded.destination, actor = excluded.actor"
)
_SOFT_UPSERT = (
    "INSERT INTO soft_bounces (domain, local, reason, first_seen, last_seen, count, seq) "
    "VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (domain, local) DO UPDATE SET "
    "reason = excluded.reason, first_seen = excluded.first_seen, "
    "last_seen = excluded.last_seen, count = excluded.count, seq = excluded.seq"
)
_HISTORY = (
    "INSERT INTO suppression_history (id, address, kind, action, at, actor, note, old_reason, "
    "new_reason, source, status, reply_code, diagnostic, evidence, node) "
    "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
)
_CHANGE = (
    "INSERT INTO suppression_changes (seq, tbl, domain, local, at) VALUES (%s, %s, %s, %s, %s)"
)


_DAILY = (
    "INSERT INTO daily_deliveries (day, domain, sent, deferred, bounced, expired, suppressed, "
    "node) VALUES (%s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (day, domain, node) DO UPDATE "
    "SET sent = daily_deliveries.sent + excluded.sent, "
    "deferred = daily_deliveries.deferred + excluded.deferred, "
    "bounced = daily_deliveries.bounced + excluded.bounced, "
    "expired = daily_deliveries.expired + excluded.expired, "
    "suppressed = daily_deliveries.suppressed + excluded.suppressed"
)
_DAILY_REASON = (
    "INSERT INTO daily_reasons (day, status, reason, count, node) VALUES (%s, %s, %s, %s, %s) "
    "ON CONFLICT (day, status, reason, node) DO UPDATE "
    "SET count = daily_reasons.count + excluded.count"
)


@dataclass
class SoftCount:
    reason: str
    first_seen: float
    last_seen: float
    count: int


@dataclass
class _State:
    """PostgreSQL's rows for the keys a push touches, changed in memory, written at the end."""

    sup: dict[Key, SuppressionEntry | None] = field(default_factory=dict)
    pending: dict[Key, PendingEntry | None] = field(default_factory=dict)
    soft: dict[Key, SoftCount | None] = field(default_factory=dict)
    touched: dict[tuple[str, Key], None] = field(default_factory=dict)  # ordered set
    history: list[HistoryRow] = field(default_factory=list)
    daily: list[list[Any]] = field(default_factory=list)  # [day, domain, 5 counts]
    daily_reasons: list[list[Any]] = field(default_factory=list)  # [day, status, reason, n]


@dataclass(frozen=True, slots=True)
class PushResult:
    applied: int  # operations applied now (not applied before by an earlier push)
    last_id: int  # the last outbox id PostgreSQL has for this node
    seq: int  # the fleet's newest change number after the push


def _load(conn: Any, keys: set[Key]) -> _State:
    st = _State()
    if not keys:
        return st
    domains, locals_ = [k[0] for k in keys], [k[1] for k in keys]
    for row in conn.execute(f"SELECT {_ENTRY} FROM suppression WHERE {_KEYS}", (domains, locals_)):
        e = SuppressionEntry(*row)
        st.sup[entry_key(e.address, e.kind)] = e
    for row in conn.execute(
        f"SELECT {_ENTRY}, destination, actor FROM suppression_pending WHERE {_KEYS}",
        (domains, locals_),
    ):
        e = SuppressionEntry(*row[:12])
        st.pending[entry_key(e.address, e.kind)] = PendingEntry(e, row[12], row[13])
    for row in conn.execute(
        f"SELECT domain, local, reason, first_seen, last_seen, count FROM soft_bounces "
        f"WHERE {_KEYS}",
        (domains, locals_),
    ):
        st.soft[(row[0], row[1])] = SoftCount(row[2], row[3], row[4], row[5])
    return st


def _apply(conn: Any, st: _State, op: OutboxRow) -> None:
    """One operation against the in-memory state (see the ops in :mod:`smtpguard.store.outbox`)."""
    p, key = op.payload, (op.domain, op.local)
    kind = op.op
    if kind == "observe":
        obs = obs_from(p["obs"])
        new, rows, _ = merge(st.sup.get(key), obs, p["actor"], p["now"])
        st.sup[key] = new
        st.history.extend(rows)
        st.touched[("suppression", key)] = None
    elif kind == "remove":
        old = st.sup.get(key)
        if old is not None:
            st.sup[key] = None
            st.history.append(
                history_row(old, "removed", p["now"], p["actor"], p["note"], old.reason)
            )
        st.touched[("suppression", key)] = None
    elif kind == "history":
        obs = obs_from(p["obs"])
        st.history.append(
            history_row(obs.entry(p["now"]), p["action"], p["now"], p["actor"], obs.note, "")
        )
    elif kind == "pending":
        _pending(st, key, p)
    elif kind in ("confirm", "discard"):
        _settle(st, key, p, confirm=kind == "confirm")
    elif kind.startswith("soft"):
        _soft(st, key, kind, p)
    elif kind == "prune":
        _prune(conn, st, p)
    elif kind == "daily":
        st.daily.extend(p["deliveries"])
        st.daily_reasons.extend(p["reasons"])
    else:
        raise ValueError(f"unknown outbox operation {kind!r}")


def _pending(st: _State, key: Key, p: dict[str, Any]) -> None:
    """Held back by a storm on the node: pending here too, unless the fleet lists it already."""
    obs, actor, now = obs_from(p["obs"]), p["actor"], p["now"]
    listed = st.sup.get(key)
    if listed is not None and not listed.expired(now):
        new, rows, _ = merge(listed, obs, actor, now)
        st.sup[key] = new
        st.history.extend(rows)
        st.touched[("suppression", key)] = None
        return
    old = st.pending.get(key)
    entry, _, _ = merge(old.entry if old else None, obs, actor, now)
    st.pending[key] = PendingEntry(entry, p["destination"], actor)
    st.history.append(history_row(entry, "pending", now, actor, obs.note, ""))
    st.touched[("pending", key)] = None


def _settle(st: _State, key: Key, p: dict[str, Any], *, confirm: bool) -> None:
    """A pending entry confirmed (enforced) or discarded on the node. The node's copy
    is used when the fleet has none (it was made on the node and is arriving now)."""
    actor, now, note = p["actor"], p["now"], p["note"]
    held = st.pending.get(key)
    entry = held.entry if held is not None else entry_from(p["entry"])
    st.pending[key] = None
    st.touched[("pending", key)] = None
    if not confirm:
        st.history.append(history_row(entry, "discarded", now, actor, note, entry.reason))
        return
    new, rows, action = merge(st.sup.get(key), observation_of(entry, note), actor, now)
    if action == "added":
        rows[-1] = (*rows[-1][:2], "confirmed", *rows[-1][3:])
    st.sup[key] = new
    st.history.extend(rows)
    st.touched[("suppression", key)] = None


def _soft(st: _State, key: Key, kind: str, p: dict[str, Any]) -> None:
    """Soft-bounce counts: the same run rule as the node's (a stale run starts afresh)."""
    st.touched[("soft", key)] = None
    old = st.soft.get(key)
    if kind == "soft":
        obs, now = obs_from(p["obs"]), p["now"]
        first, count = now, 1
        if old is not None and now - old.last_seen <= p["stale_after"]:
            first, count = min(old.first_seen, now), old.count + 1
        st.soft[key] = SoftCount(obs.reason, first, now, count)
        return
    st.soft[key] = None
    if kind == "soft-clear" and old is not None:
        address = f"{key[1]}@{key[0]}"
        e = SuppressionEntry(
            address, "address", old.reason, "", "", "", "", old.first_seen, old.last_seen,
            old.count, None,
        )  # fmt: skip
        st.history.append(history_row(e, "discarded", p["now"], p["actor"], p["note"], old.reason))


def _prune(conn: Any, st: _State, p: dict[str, Any]) -> None:
    """Expired entries leave the fleet's list (history ``expired``), as ``prune`` does locally."""
    now = p["now"]
    for row in conn.execute(
        f"SELECT {_ENTRY} FROM suppression WHERE expires IS NOT NULL AND expires <= %s "
        "ORDER BY domain, local",
        (now,),
    ):
        e = SuppressionEntry(*row)
        st.sup.setdefault(entry_key(e.address, e.kind), e)
    for key, e in list(st.sup.items()):
        if e is not None and e.expired(now):
            st.sup[key] = None
            st.history.append(history_row(e, "expired", now, p["actor"], p["note"], e.reason))
            st.touched[("suppression", key)] = None


def _write(conn: Any, st: _State, seq: int, hseq: int, node: str) -> tuple[int, int]:
    """Write the changed rows, their change rows and the history; returns (seq, history_seq)."""
    at = time.time()
    ups: list[tuple[Any, ...]] = []
    pend_ups: list[tuple[Any, ...]] = []
    soft_ups: list[tuple[Any, ...]] = []
    deletes: dict[str, list[Key]] = {"suppression": [], "pending": [], "soft": []}
    changes: list[tuple[Any, ...]] = []
    for tbl, key in st.touched:
        seq += 1
        changes.append((seq, tbl, key[0], key[1], at))
        if tbl == "suppression":
            e = st.sup.get(key)
            if e is None:
                deletes[tbl].append(key)
            else:
                ups.append((*entry_row(e), seq))
        elif tbl == "pending":
            pe = st.pending.get(key)
            if pe is None:
                deletes[tbl].append(key)
            else:
                pend_ups.append((*entry_row(pe.entry), seq, pe.destination, pe.actor))
        else:
            sc = st.soft.get(key)
            if sc is None:
                deletes[tbl].append(key)
            else:
                soft_ups.append((*key, sc.reason, sc.first_seen, sc.last_seen, sc.count, seq))
    table = {"suppression": "suppression", "pending": "suppression_pending", "soft": "soft_bounces"}
    with conn.cursor() as cur:
        for tbl, keys in deletes.items():
            if keys:
                cur.execute(
                    f"DELETE FROM {table[tbl]} WHERE {_KEYS}",
                    ([k[0] for k in keys], [k[1] for k in keys]),
                )
        if ups:
            cur.executemany(_UPSERT, ups)
        if pend_ups:
            cur.executemany(_PENDING_UPSERT, pend_ups)
        if soft_ups:
            cur.executemany(_SOFT_UPSERT, soft_ups)
        if st.history:
            rows = [(hseq + i + 1, *row, node) for i, row in enumerate(st.history)]
            hseq += len(rows)
            cur.executemany(_HISTORY, rows)
        if changes:
            cur.executemany(_CHANGE, changes)
        if st.daily:
            cur.executemany(_DAILY, [(*row, node) for row in st.daily])
        if st.daily_reasons:
            cur.executemany(_DAILY_REASON, [(*row, node) for row in st.daily_reasons])
    return seq, hseq


def push(conn: Any, ident: NodeIdentity, ops: list[OutboxRow]) -> PushResult:
    """Apply a node's outbox operations (in id order) in one transaction; see the module doc."""
    with conn.transaction():
        seq, hseq = conn.execute(
            "SELECT seq, history_seq FROM fleet_meta WHERE id = 1 FOR UPDATE"
        ).fetchone()
        row = conn.execute(
            "SELECT last_outbox_id FROM fleet_nodes WHERE instance = %s", (ident.instance,)
        ).fetchone()
        done = 0 if row is None else int(row[0])
        todo = [op for op in ops if op.id > done]
        last_id = max([done, *(op.id for op in ops)])
        if todo:
            st = _load(conn, {(op.domain, op.local) for op in todo if op.op not in KEYLESS})
            for op in todo:
                _apply(conn, st, op)
            new_seq, new_hseq = _write(conn, st, seq, hseq, ident.node)
            conn.execute(
                "UPDATE fleet_meta SET seq = %s, history_seq = %s WHERE id = 1",
                (new_seq, new_hseq),
            )
            if new_seq > seq:
                conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, str(new_seq)))
            seq = new_seq
        conn.execute(
            "INSERT INTO fleet_nodes (instance, node, last_outbox_id, last_push) "
            "VALUES (%s, %s, %s, %s) ON CONFLICT (instance) DO UPDATE SET node = excluded.node, "
            "last_outbox_id = excluded.last_outbox_id, last_push = excluded.last_push",
            (ident.instance, ident.node, last_id, time.time()),
        )
    return PushResult(len(todo), last_id, seq)


def prune_changes(conn: Any, before: float) -> int:
    """Forget changes older than ``before`` (epoch seconds), keeping the newest.

    A node whose last change number is older than the oldest kept takes a snapshot
    of the list at its next pull instead of the changes it missed.
    """
    with conn.transaction():
        return int(
            conn.execute(
                "DELETE FROM suppression_changes WHERE at < %s "
                "AND seq < (SELECT seq FROM fleet_meta WHERE id = 1)",
                (before,),
            ).rowcount
        )


def note_pulled(conn: Any, ident: NodeIdentity, seq: int) -> None:
    """Tell the fleet how far this node's cache is (``smtpguard store status`` shows it)."""
    with conn.transaction():
        conn.execute(
            "INSERT INTO fleet_nodes (instance, node, last_seq, last_pull) VALUES (%s, %s, %s, %s) "
            "ON CONFLICT (instance) DO UPDATE SET node = excluded.node, "
            "last_seq = excluded.last_seq, last_pull = excluded.last_pull",
            (ident.instance, ident.node, seq, time.time()),
        )


def nodes(conn: Any) -> list[dict[str, Any]]:
    """Every node database the fleet has heard from, most recently seen first."""
    now = time.time()
    rows = conn.execute(
        "SELECT node, instance, last_push, last_seq, last_pull FROM fleet_nodes "
        "ORDER BY greatest(coalesce(last_push, 0), coalesce(last_pull, 0)) DESC"
    ).fetchall()
    return [
        {
            "node": r[0],
            "instance": r[1],
            "last_push_age": None if r[2] is None else round(now - r[2], 1),
            "last_seq": r[3],
            "last_pull_age": None if r[4] is None else round(now - r[4], 1),
        }
        for r in rows
    ]


def prune_days(conn: Any, node: str, before_day: str) -> int:
    """Forget this node's per-day counts before ``before_day`` (its report.keep)."""
    with conn.transaction():
        n = conn.execute(
            "DELETE FROM daily_deliveries WHERE node = %s AND day < %s", (node, before_day)
        ).rowcount
        n += conn.execute(
            "DELETE FROM daily_reasons WHERE node = %s AND day < %s", (node, before_day)
        ).rowcount
    return int(n)

"""``smtpguard suppression``: query and edit the suppression list.

Thin by design: parse the command line, call
:class:`~smtpguard.store.suppression.SuppressionStore` (import files are read by
:mod:`smtpguard.store.importfile`), render with rich.
Exit codes follow the shell's habits: ``check`` exits 0 when every address
given is suppressed, 1 when any is not; every command exits 2 with one line on
stderr for bad input (an invalid address, a malformed import file, a locked or
corrupt database).
"""

from __future__ import annotations

import contextlib
import csv
import getpass
import io
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import click
from click.core import ParameterSource
from rich.table import Table

from smtpguard.address import normalize_target
from smtpguard.cli.main import common_options, get_config
from smtpguard.cli.output import (
    add_row,
    console,
    echo,
    emit_json,
    format_option,
    json_line,
    limit_option,
    plural,
)
from smtpguard.config import parse_duration
from smtpguard.display import json_text
from smtpguard.errors import StoreError, UserError
from smtpguard.policy.evidence import EVIDENCE_KINDS
from smtpguard.store import fleet
from smtpguard.store.db import db_path
from smtpguard.store.importfile import (
    EXPORT_COLUMNS,
    SHOWN_PROBLEMS,
    Parser,
    Problem,
    csv_cell,
    detect_format,
    line_numbers,
    parse_time,
    problems_message,
)
from smtpguard.store.suppression import (
    SOURCES,
    SUPPRESSION_REASONS,
    HistoryRecord,
    ListFilter,
    PendingEntry,
    SuppressionEntry,
    SuppressionStore,
    iso,
    make_observation,
)

REASON_CHOICE = click.Choice(sorted(SUPPRESSION_REASONS))
#: ``import --from``: the ESP exports and plain lists (smtpguard.intake.exports).
IMPORT_FORMATS = ("ses", "mailgun", "sendgrid", "postmark", "plain")
SOURCE_CHOICE = click.Choice(SOURCES)
EVIDENCE_CHOICE = click.Choice(EVIDENCE_KINDS)


# --------------------------------------------------------------------------- helpers


def _store(*, create: bool = False) -> SuppressionStore:
    """The store; only commands that add entries may create a missing database.

    On a fleet node (store.backend = "postgresql") this is the node's cache: what
    the node's RCPT check answers. Changes made through it are queued in its
    outbox and pushed by :func:`_push` (or by the relay).
    """
    cfg = get_config()
    if fleet.enabled(cfg) and (create or db_path(cfg.data_dir).exists()):
        fleet.prepare(cfg)
    return SuppressionStore.open(
        cfg.data_dir, busy_timeout=cfg.store.busy_timeout, create=create, group=cfg.store.group
    )


def _push() -> None:
    """On a fleet node, push this command's changes to PostgreSQL now.

    When PostgreSQL is unreachable the change stays in the node's outbox (it is
    already in force on this node) and the relay pushes it once PostgreSQL is back.
    """
    cfg = get_config()
    node = fleet.prepare(cfg)
    if node is None:
        return
    from smtpguard.store.pg.sync import sync_once

    try:
        sync_once(cfg, node, pull_too=False)
    except StoreError as e:
        echo(
            f"smtpguard: warning: {e}: the change is in force on this node and waits in its"
            " outbox for PostgreSQL",
            err=True,
        )


def _fleet_history(key: str) -> list[tuple[HistoryRecord, str]] | None:
    """The fleet's history of ``key`` from PostgreSQL; None on a standalone node or when
    PostgreSQL is unreachable (then the node's own history is shown, with a warning)."""
    cfg = get_config()
    if not fleet.enabled(cfg):
        return None
    from smtpguard.store.pg import read
    from smtpguard.store.pg.sync import open_pg

    try:
        conn = open_pg(cfg)
    except StoreError as e:
        echo(f"smtpguard: warning: {e}: showing this node's own history only", err=True)
        return None
    with conn:
        return read.history(conn, key)


def _actor() -> str:
    """Who is at the keyboard, for the history: ``cli:root``."""
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return f"cli:uid{os.getuid()}"


def parse_when(text: str, *, what: str, now: float, future: bool) -> float:
    """A relative duration (``30d``: from now, forwards or backwards) or a time."""
    try:
        seconds = parse_duration(text)
    except ValueError:
        try:
            return parse_time(text, what=what)
        except UserError:
            raise UserError(
                f"{what}: expected a duration like 30d, an ISO 8601 time like "
                f"2026-12-11T10:00:00Z or epoch seconds, not {text!r}"
            ) from None
    return now + seconds if future else now - seconds


class _When(click.ParamType):
    """``--since 7d`` / ``--expires 30d``: a duration relative to now, or a time."""

    name = "WHEN"

    def __init__(self, *, future: bool) -> None:
        self.future = future

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> float:
        if isinstance(value, float):
            return value
        what, now = param.name if param else "time", _now()
        try:
            when = parse_when(value, what=what, now=now, future=self.future)
        except UserError as e:
            self.fail(str(e), param, ctx)
        if self.future and when <= now:
            # An expiry already past would add an entry that suppresses nothing.
            self.fail(f"{what}: {value!r} is not in the future", param, ctx)
        return when


def _reason_option(help: str) -> Any:
    return click.option(
        "--reason", type=REASON_CHOICE, metavar="REASON", default="manual", show_default=True,
        help=help,
    )  # fmt: skip


def _expires_option(help: str) -> Any:
    return click.option("--expires", type=_When(future=True), metavar="WHEN", help=help)


def _now() -> float:
    return datetime.now(UTC).timestamp()


def _describe(entry: SuppressionEntry, asked: str) -> str:
    via = (
        f"by domain {entry.address}: " if entry.kind == "domain" and asked != entry.address else ""
    )
    evidence = " ".join(x for x in (entry.reply_code, entry.status) if x)
    details = [evidence] if evidence else []
    details.append(f"evidence {entry.evidence or entry.source}")
    details.append(f"seen {entry.count} time{'s' if entry.count != 1 else ''}")
    if entry.count > 1:
        details.append(f"last {iso(entry.last_seen)}")
    if entry.expires is not None:
        details.append(f"expires {iso(entry.expires)}")
    text = f"{asked}: suppressed {via}{entry.reason} since {iso(entry.first_seen)}"
    text += f" ({', '.join(details)})"
    if entry.diagnostic:
        text += f": {entry.diagnostic}"
    return text


def _entries_table(entries: list[SuppressionEntry]) -> Table:
    table = Table(show_edge=False, header_style="bold")
    for name in (
        "address",
        "reason",
        "code",
        "evidence",
        "first seen",
        "last seen",
        "count",
        "expires",
    ):
        table.add_column(
            name, no_wrap=name != "address", justify="right" if name == "count" else "left"
        )
    for e in entries:
        address = e.address if e.kind == "address" else f"{e.address} (domain)"
        code = " ".join(x for x in (e.reply_code, e.status) if x)
        add_row(
            table,
            address,
            e.reason,
            code,
            e.evidence or e.source,
            iso(e.first_seen),
            iso(e.last_seen),
            e.count,
            iso(e.expires),
        )
    return table


def _csv_row(e: SuppressionEntry) -> list[Any]:
    """One CSV row; text cells never start like a spreadsheet formula (see csv_cell)."""
    d = e.to_dict()
    return [
        "" if (v := d[c]) is None else csv_cell(v) if isinstance(v, str) else v
        for c in EXPORT_COLUMNS
    ]


def _write_entries(entries: Any, fmt: str, out: IO[str]) -> int:
    """Stream entries as CSV, JSON Lines or a JSON array; returns how many."""
    n = 0
    if fmt == "csv":
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(EXPORT_COLUMNS)
        for e in entries:
            writer.writerow(_csv_row(e))
            n += 1
    elif fmt == "jsonl":
        for e in entries:
            json_line(e.to_dict(), out)
            n += 1
    else:  # json: an array, written as it streams
        out.write("[")
        for e in entries:
            out.write(("\n  " if n == 0 else ",\n  ") + json_text(e.to_dict()))
            n += 1
        out.write("\n]\n" if n else "]\n")
    return n


# --------------------------------------------------------------------------- the group


@click.group()
def suppression() -> None:
    """Query and edit the suppression list.

    The list holds addresses (and whole domains) smtpguard refuses at RCPT
    time: the relay adds them when a delivery proves the address bad, an
    operator adds and removes them here. Addresses are compared normalised:
    domain lowercased and IDNA-encoded, local part case-insensitively.
    Every change is kept in a history: see `suppression history ADDR`.
    """


@suppression.command("list")
@click.option("--reason", type=REASON_CHOICE, metavar="REASON", help="Only this reason.")
@click.option("--domain", metavar="DOMAIN", help="Only addresses at this domain (and its entry).")
@click.option("--source", type=SOURCE_CHOICE, help="Only entries from this source.")
@click.option("--evidence", type=EVIDENCE_CHOICE, help="Only entries with this evidence kind.")
@click.option(
    "--since",
    type=_When(future=False),
    metavar="WHEN",
    help="Only entries first seen since WHEN: 7d (ago), 2026-11-01 or an ISO time.",
)
@click.option("--kind", type=click.Choice(["address", "domain"]), help="Only addresses or domains.")
@click.option("--include-expired", is_flag=True, help="Also show entries past their expiry.")
@format_option("table", "csv", "json")
@limit_option(100, "Entries per page (0: all).")
@click.option(
    "--after",
    metavar="ADDR",
    help="Start after this address: the cursor printed below a full page.",
)
@common_options
def list_cmd(
    reason: str | None,
    domain: str | None,
    source: str | None,
    evidence: str | None,
    since: float | None,
    kind: str | None,
    include_expired: bool,
    fmt: str,
    limit: int,
    after: str | None,
) -> None:
    """List suppressed addresses, ordered by domain then address.

    Paging uses a cursor, not an offset, so every page is equally fast even on
    a list of millions: when a page is full, the command to get the next one
    is printed on stderr.

    \b
    Examples:
      smtpguard suppression list --reason userunknown --since 7d
      smtpguard suppression list --domain example.com --format csv
      smtpguard suppression list --after bob@example.com
    """
    from smtpguard.address import normalize_domain

    filters = ListFilter(
        reason=reason,
        domain=normalize_domain(domain) if domain else None,
        source=source,
        since=since,
        kind=kind,
        include_expired=include_expired,
        evidence=evidence,
    )
    with _store() as store:
        entries = store.list_page(filters, after=after, limit=limit or None)
    if fmt == "table":
        if entries:
            console().print(_entries_table(entries))
        else:
            click.echo("no matching entries", err=True)
    else:
        _write_entries(entries, fmt, sys.stdout)
    if limit and len(entries) == limit:
        echo(f"more: add --after {entries[-1].address}", err=True)


@suppression.command("check")
@click.argument("addresses", nargs=-1, required=True, metavar="ADDR...")
@common_options
def check(addresses: tuple[str, ...]) -> None:
    """Tell whether each ADDR is suppressed, why, and since when.

    An address is suppressed by its own entry or by an entry for its whole
    domain; expired entries do not count.

    Exit status: 0 if every ADDR is suppressed, 1 if any is not, 2 if an ADDR
    is invalid or the database cannot be read.

    \b
    Example:
      smtpguard suppression check bob@example.com carol@example.org
    """
    status = 0
    bad = False
    with _store() as store:
        for text in addresses:
            try:
                entry = store.lookup(text)
            except UserError as e:
                echo(f"smtpguard: error: {e}", err=True)
                bad = True
                continue
            if entry is None:
                pending = store.get_pending(text)
                held = ""
                if pending is not None:
                    held = (
                        f" (pending since {iso(pending.entry.first_seen)}: "
                        f"{pending.entry.reason}, held back by a storm at {pending.destination})"
                    )
                echo(f"{text}: not suppressed{held}")
                status = 1
            else:
                echo(_describe(entry, text))
    sys.exit(2 if bad else status)


@suppression.command("add")
@click.argument("address", metavar="ADDR")
@_reason_option("Why (the classifier's reasons, complaint or manual).")
@_expires_option("Lift it automatically after WHEN: 30d (from now) or an ISO time.")
@click.option("--note", default="", help="Free text kept in the history.")
@common_options
def add(address: str, reason: str, expires: float | None, note: str) -> None:
    """Suppress ADDR (an address, or a whole domain as example.com or @example.com).

    Adding an address that is already listed counts as seeing it again; a
    stronger reason (complaint, manual > userunknown... > soft reasons)
    replaces a weaker one.

    \b
    Examples:
      smtpguard suppression add bob@example.com --reason complaint --note "ticket 4711"
      smtpguard suppression add @gone.example --reason hostunknown --expires 90d
    """
    with _store(create=True) as store:
        obs = make_observation(
            address, reason, source="manual", kind=None, expires=expires, note=note
        )
        before = store.get(obs.address)
        entry = store.record_observation(obs, actor=_actor())
    _push()
    if before is None or before.expired():
        verb = "added"
    elif entry.reason != before.reason:
        verb = f"escalated ({before.reason} -> {entry.reason})"
    else:
        verb = "already listed, updated"
    what = " (whole domain)" if entry.kind == "domain" else ""
    echo(
        f"{entry.address}{what}: {verb}: {entry.reason}"
        + (f", expires {iso(entry.expires)}" if entry.expires else "")
    )


@suppression.command("remove")
@click.argument("addresses", nargs=-1, required=True, metavar="ADDR...")
@click.option("--note", default="", help="Why, kept in the history.")
@common_options
def remove(addresses: tuple[str, ...], note: str) -> None:
    """Take each ADDR (address or domain) off the list; the history keeps it.

    Exit status: 0 if all were listed and are removed, 1 if any was not listed.

    \b
    Example:
      smtpguard suppression remove bob@example.com --note "mailbox restored"
    """
    status = 0
    with _store() as store:
        for text in addresses:
            if store.remove(text, actor=_actor(), note=note):
                echo(f"{text}: removed")
            else:
                echo(f"{text}: not on the list", err=True)
                status = 1
    _push()
    sys.exit(status)


@suppression.command("pending")
@click.argument("addresses", nargs=-1, metavar="[ADDR...]")
@click.option("--destination", metavar="DEST", help="Only entries held back by a storm at DEST.")
@click.option(
    "--confirm", "action", flag_value="confirm", help="Enforce them: they go on the list."
)
@click.option(
    "--discard", "action", flag_value="discard", help="Drop them: the addresses stay deliverable."
)
@click.option("--all", "everything", is_flag=True, help="With --confirm: every pending entry.")
@click.option("--note", default="", help="Why, kept in the history.")
@format_option("table", "json")
@limit_option(100, "Entries listed (0: all).")
@common_options
def pending_cmd(
    addresses: tuple[str, ...],
    destination: str | None,
    action: str | None,
    everything: bool,
    note: str,
    fmt: str,
    limit: int,
) -> None:
    """List suppressions the storm breaker held back, or settle them.

    When a destination suddenly answers "user unknown" for more than its usual
    share of recipients (policy.storm_share of its attempts in
    policy.storm_window), new suppressions for it are pending: recorded, not
    enforced. A pending address that is delivered to later is discarded on its
    own; one that fails again once the storm is over is confirmed on its own.

    --discard with no ADDR discards every pending entry (of --destination):
    the safe direction, nothing becomes suppressed. --confirm needs ADDR,
    --destination or --all.

    Exit status: 0, or 1 if a named ADDR was not pending.

    \b
    Examples:
      smtpguard suppression pending
      smtpguard suppression pending --destination gmail.com --discard
      smtpguard suppression pending bob@example.com --confirm --note "checked by hand"
    """
    with _store() as store:
        if action is None:
            if addresses or everything:
                raise UserError("ADDR and --all settle entries: add --confirm or --discard")
            entries = store.pending(destination=destination, limit=limit or None)
            if fmt == "json":
                emit_json([p.to_dict() for p in entries])
            elif entries:
                console().print(_pending_table(entries))
            else:
                click.echo("no pending entries", err=True)
            return
        confirm = action == "confirm"
        targets = list(addresses)
        if not targets:
            if confirm and not (everything or destination):
                raise UserError("--confirm needs ADDR, --destination DEST or --all")
            targets = [p.entry.address for p in store.pending(destination=destination)]
        settled = store.settle_pending(targets, confirm=confirm, actor=_actor(), note=note)
    _push()
    verb = "confirmed" if confirm else "discarded"
    click.echo(f"{verb} {plural(len(settled), 'pending entry', 'pending entries')}")
    missing = len(targets) - len(settled)
    if addresses and missing:
        done = set(settled)
        for text in addresses:
            if normalize_target(text)[1] not in done:
                echo(f"{text}: not pending", err=True)
        sys.exit(1)


def _pending_table(entries: list[PendingEntry]) -> Table:
    table = Table(show_edge=False, header_style="bold")
    for name in ("address", "reason", "code", "destination", "since", "count", "evidence"):
        table.add_column(name, no_wrap=name != "address")
    for p in entries:
        e = p.entry
        code = " ".join(x for x in (e.reply_code, e.status) if x)
        add_row(
            table, e.address, e.reason, code, p.destination, iso(e.first_seen), e.count,
            f"[{e.evidence}] {e.diagnostic}",
        )  # fmt: skip
    return table


@suppression.command("history")
@click.argument("address", metavar="ADDR")
@format_option("table", "json")
@common_options
def history(address: str, fmt: str) -> None:
    """Show every change to ADDR: added, escalated, seen again, removed, expired.

    Each line says when, who (relay, cli:USER, import:FILE), the reason and
    the evidence (SMTP reply, enhanced status, diagnostic).
    """
    fleet_records = _fleet_history(normalize_target(address)[1])
    nodes: list[str] | None = None
    if fleet_records is not None:
        records = [r for r, _ in fleet_records]
        nodes = [n for _, n in fleet_records]
    else:
        with _store() as store:
            records = store.history(address)
    if fmt == "json":
        if nodes is None:
            emit_json([r.to_dict() for r in records])
        else:
            emit_json([{**r.to_dict(), "node": n} for r, n in zip(records, nodes, strict=True)])
        return
    if not records:
        echo(f"{address}: no recorded changes", err=True)
        return
    console().print(_history_table(records, nodes))


def _history_table(records: list[HistoryRecord], nodes: list[str] | None = None) -> Table:
    """The history; with ``nodes`` (a fleet's), a column saying which node made each change."""
    table = Table(show_edge=False, header_style="bold")
    for name in ("when", "action", "actor", "reason", "evidence", "note"):
        table.add_column(name, no_wrap=name in ("when", "action"))
        if name == "actor" and nodes is not None:
            table.add_column("node", no_wrap=True)
    for i, r in enumerate(records):
        if r.old_reason and r.old_reason != r.new_reason:
            reason = f"{r.old_reason} -> {r.new_reason}"
        else:
            reason = r.new_reason
        evidence = " ".join(x for x in (r.reply_code, r.status, r.diagnostic) if x)
        kind = r.evidence or r.source
        who = (r.actor,) if nodes is None else (r.actor, nodes[i])
        add_row(table, iso(r.at), r.action, *who, reason, f"[{kind}] {evidence}", r.note)
    return table


# --------------------------------------------------------------------------- import


@suppression.command("import")
@click.argument("file", type=click.Path(dir_okay=False, allow_dash=True, path_type=Path))
@format_option(
    "auto",
    "csv",
    "jsonl",
    help="smtpguard's own format; auto goes by extension, then content, and also "
    "recognises the ESP exports and plain lists of --from.",
)
@click.option(
    "--from",
    "provider",
    type=click.Choice(IMPORT_FORMATS),
    help="The file is an ESP's suppression export (ses, mailgun, sendgrid, postmark) "
    "or a plain list of addresses, one per line.",
)
@_reason_option("Reason for rows without a 'reason' column, and for plain lists.")
@_expires_option("Expiry for rows without an 'expires' value: 30d or an ISO time.")
@click.option(
    "--skip-invalid",
    is_flag=True,
    help="Import the valid rows and report the invalid ones, instead of nothing.",
)
@common_options
def import_cmd(
    file: Path,
    fmt: str,
    provider: str | None,
    reason: str,
    expires: float | None,
    skip_invalid: bool,
) -> None:
    """Import entries from FILE (- for standard input).

    smtpguard's own CSV (with a header) or JSON Lines: columns / keys address
    (required; also 'email' or 'recipient'), reason, kind, status, reply_code,
    diagnostic, source, first_seen, last_seen, count, expires, evidence, note.
    Times are ISO 8601 (UTC if no offset) or epoch seconds. The output of
    `export` imports as is.

    An ESP's export (--from, or recognised by its content): Amazon SES
    `aws sesv2 list-suppressed-destinations` JSON, Mailgun's and SendGrid's
    bounces CSV, Postmark's suppression dump; each carries its own reasons
    (BOUNCE and hard bounces: userunknown or what the bounce text says;
    COMPLAINT / SpamComplaint: complaint; Postmark's ManualSuppression by the
    recipient: unsubscribe). A plain list: one address per line, with --reason.

    All or nothing: if any line is invalid, nothing is imported and the error
    lists the bad line numbers; --skip-invalid imports the rest. The import is
    one transaction: the relay's own writes wait for it (readers never do).

    \b
    Examples:
      smtpguard suppression import bounces.csv --reason userunknown
      smtpguard suppression import --from ses suppressed.json
      aws sesv2 list-suppressed-destinations | smtpguard suppression import -
      smtpguard suppression import --from plain --reason unsubscribe optouts.txt
    """
    from rich.progress import (
        BarColumn,
        Progress,
        TaskProgressColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from smtpguard.intake.exports import ESP_FORMATS, parse_any, sniff

    ctx = click.get_current_context()
    if provider and fmt != "auto":
        raise click.UsageError("--from and --format exclude each other")
    name = str(file)
    with _spooled(file) as path:
        try:
            with open(path, "rb") as f:
                size, head = os.fstat(f.fileno()).st_size, f.read(4096)
        except OSError as e:
            raise UserError(f"{name}: cannot read: {e.strerror or e}") from None
        if provider:
            fmt = provider
        elif fmt == "auto":
            fmt = sniff(head.decode("utf-8", "replace")) or detect_format(
                Path(name), io.BufferedReader(io.BytesIO(head))
            )
        if fmt in ESP_FORMATS and ctx.get_parameter_source("reason") is ParameterSource.COMMANDLINE:
            raise click.UsageError(
                f"--reason does not apply to {fmt}: its export carries the reasons"
            )
        # Started before the database is opened and before rich's progress thread:
        # the parser is a forked process and must inherit neither.
        parser = Parser(str(path), fmt, reason, expires, parse=parse_any, name=name)
        problems: list[Problem] = []
        err = console(stderr=True)
        progress = Progress(
            TextColumn("importing {task.fields[rows]:,} rows", markup=False),
            BarColumn(),
            TaskProgressColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=err,
            disable=not err.is_terminal,
            transient=False,
        )
        with parser, _store(create=True) as store, progress:
            task = progress.add_task("import", total=size or None, rows=0)
            with store.bulk(
                actor=f"import:{'stdin' if name == '-' else Path(name).name}"
            ) as writer:
                for batch, bad, done_bytes, rows in parser:
                    problems.extend(bad)
                    if skip_invalid or not problems:
                        for obs in batch:
                            writer.add(obs)
                    progress.update(task, completed=done_bytes, rows=rows)
                if problems and not skip_invalid:
                    raise UserError(problems_message(name, problems))  # rolls back
            counts = writer.counts
        _push()
        summary = (
            f"imported {plural(writer.total, 'entry', 'entries')} from {name} "
            f"({counts['added']} added, {counts['escalated']} escalated, "
            f"{counts['updated']} updated)"
        )
        if problems:
            for p in problems[:SHOWN_PROBLEMS]:
                echo(f"smtpguard: warning: {name}: {p}", err=True)
            unit = problems[0].unit
            summary += f"; skipped {len(problems)} invalid {unit}(s): {line_numbers(problems)}"
        echo(summary)


@contextlib.contextmanager
def _spooled(file: Path) -> Iterator[Path]:
    """``-`` (standard input) as a file the parser process can open (multiprocessing gives
    the child no stdin); any other path as it is."""
    if str(file) != "-":
        yield file
        return
    with tempfile.NamedTemporaryFile(prefix="smtpguard-import-") as spool:
        shutil.copyfileobj(sys.stdin.buffer, spool)
        spool.flush()
        yield Path(spool.name)


# --------------------------------------------------------------------------- export, prune, stats


@suppression.command("export")
@format_option(
    "csv",
    "jsonl",
    "ses",
    "mailgun",
    "sendgrid",
    "postmark",
    help="Output format: smtpguard's own (csv, jsonl) or an ESP's export format; "
    "all re-import with `import`.",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write to this file (atomically, mode 0600) instead of stdout.",
)
@click.option("--include-expired", is_flag=True, help="Also export entries past their expiry.")
@common_options
def export(fmt: str, output: Path | None, include_expired: bool) -> None:
    """Write the whole list, streaming (any size): as CSV or JSON Lines, or in an
    ESP's format to load it there.

    The ESP formats hold addresses only (whole-domain entries are left out), and
    reasons as the ESP knows them: SES BOUNCE / COMPLAINT (complaint, unsubscribe),
    Postmark HardBounce / SpamComplaint / ManualSuppression; Mailgun's and
    SendGrid's bounces CSV leave out complaints and unsubscribes (they belong on
    those ESPs' other lists). What was left out is counted on stderr.

    \b
    Examples:
      smtpguard suppression export > suppressed.csv
      smtpguard suppression export --format jsonl -o /backup/suppressed.jsonl
      smtpguard suppression export --format ses -o ses-suppressions.json
    """
    filters = ListFilter(include_expired=include_expired)

    def write(entries: Any, out: IO[str]) -> int:
        if fmt in ("csv", "jsonl"):
            return _write_entries(entries, fmt, out)
        from smtpguard.intake.exports import WRITERS

        written = WRITERS[fmt](entries, out)
        left_out = [
            plural(n, one, many)
            for n, one, many in (
                (written.skipped_domains, "whole-domain entry", "whole-domain entries"),
                (written.skipped_reasons, "complaint/unsubscribe", "complaints/unsubscribes"),
            )
            if n
        ]
        if left_out:
            click.echo(
                f"smtpguard: left out {' and '.join(left_out)} ({fmt} has no place for them)",
                err=True,
            )
        return written.written

    with _store() as store:
        if output is None:
            write(store.iter_entries(filters), sys.stdout)
            return
        tmp: Path | None = None
        try:
            # A new file of a name nobody can guess or plant (O_CREAT | O_EXCL,
            # mode 0600: it holds addresses), renamed over the output when complete.
            fd, name = tempfile.mkstemp(dir=output.parent, prefix=f".{output.name}.")
            tmp = Path(name)
            with open(fd, "w", encoding="utf-8", newline="") as out:
                n = write(store.iter_entries(filters), out)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, output)
        except OSError as e:
            if tmp is not None:
                tmp.unlink(missing_ok=True)
            raise UserError(f"{output}: cannot write: {e.strerror or e}") from None
        except BaseException:
            if tmp is not None:
                tmp.unlink(missing_ok=True)
            raise
    echo(f"exported {plural(n, 'entry', 'entries')} to {output}", err=True)


@suppression.command("prune")
@click.option("--dry-run", is_flag=True, help="Only count the expired entries.")
@common_options
def prune(dry_run: bool) -> None:
    """Delete entries whose expiry has passed (each leaves an 'expired' history record).

    Expired entries already stop suppressing on their own; pruning keeps the
    table small and the history explicit. Safe to run from cron.
    """
    with _store() as store:
        if dry_run:
            n = store.stats()["expired_unpruned"]
            click.echo(f"{plural(n, 'expired entry', 'expired entries')} would be pruned")
            return
        n = store.prune(actor=_actor())
    _push()
    click.echo(f"pruned {plural(n, 'expired entry', 'expired entries')}")


@suppression.command("stats")
@format_option("table", "json")
@common_options
def stats(fmt: str) -> None:
    """Summarise the list: active entries, by reason, by source, recent additions."""
    with _store() as store:
        s = store.stats()
    if fmt == "json":
        emit_json(s)
        return
    out = console()
    overview = Table(show_edge=False, show_header=False)
    overview.add_column()
    overview.add_column(justify="right")
    for label, key in (
        ("active entries", "active"),
        ("addresses", "addresses"),
        ("whole domains", "domains"),
        ("with an expiry", "with_expiry"),
        ("expired, not yet pruned", "expired_unpruned"),
        ("added in the last 24 h", "added_24h"),
        ("added in the last 7 days", "added_7d"),
        ("history records", "history_records"),
        ("pending (held back by a storm)", "pending"),
    ):
        add_row(overview, label, f"{s[key]:,}")
    out.print(overview)
    for title, key in (
        ("reason", "by_reason"),
        ("source", "by_source"),
        ("evidence", "by_evidence"),
    ):
        if s[key]:
            t = Table(show_edge=False, header_style="bold")
            t.add_column(title)
            t.add_column("entries", justify="right")
            for k, v in s[key].items():
                add_row(t, k, f"{v:,}")
            out.print()
            out.print(t)

"""``smtpguard report``: deliveries, bounces, complaints, suppressions and the queue, per day.

Thin by design: read the numbers (:func:`smtpguard.ops.report.build`), render
them as terminal tables with bars, as JSON (``--format json``), or as one
self-contained HTML page (``--html FILE``, :mod:`smtpguard.ops.reporthtml`).
Every value read from the database is shown as plain text (``cell``: rich
``Text``, terminal controls escaped; the console has markup off too): a domain
or reason that looks like ``[bold]`` markup prints as it is.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from smtpguard.cli.main import common_options, get_config
from smtpguard.cli.output import cell, console, echo, emit_json, format_option
from smtpguard.config import format_duration, parse_duration
from smtpguard.errors import StoreError, UserError

if TYPE_CHECKING:
    from rich.table import Table
    from rich.text import Text

    from smtpguard.ops.report import Counts, Report

#: Eighths of a block: the partial cell at the end of a bar.
_EIGHTHS = " ▏▎▍▌▋▊▉"
_SPARKS = "▁▂▃▄▅▆▇█"


def bar(fraction: float, width: int = 20) -> str:
    """A horizontal bar ``width`` cells long at ``fraction`` = 1 (eighth-cell steps)."""
    eighths = round(max(0.0, min(fraction, 1.0)) * width * 8)
    full, rest = divmod(eighths, 8)
    return "█" * full + (_EIGHTHS[rest] if rest else "")


def sparkline(values: list[float | None], top: float) -> str:
    """One character per value, scaled to ``top``; a space where there is no value."""
    out = []
    for v in values:
        if v is None:
            out.append(" ")
        else:
            out.append(_SPARKS[min(int(v / top * (len(_SPARKS) - 1) + 0.5), 7)] if top else "▁")
    return "".join(out)


def percent(rate: float | None) -> str:
    if rate is None:
        return "-"
    return f"{100 * rate:.2f}%" if rate < 0.1 else f"{100 * rate:.1f}%"


def age(seconds: float | None) -> str:
    """``11532`` -> ``"3h12m"``."""
    if seconds is None:
        return "-"
    s = int(seconds)
    for unit, size, sub, subsize in (("d", 86400, "h", 3600), ("h", 3600, "m", 60)):
        if s >= size:
            return f"{s // size}{unit}{(s % size) // subsize}{sub}"
    return f"{s // 60}m{s % 60}s" if s >= 60 else f"{s}s"


@click.command()
@click.option(
    "--since",
    default="7d",
    show_default=True,
    metavar="DURATION",
    help="How far back: 7d is today and the 6 days before (UTC days).",
)
@click.option(
    "--top",
    type=click.IntRange(1, 1000),
    default=15,
    show_default=True,
    help="Destination domains, reasons and waiting domains shown.",
)
@click.option(
    "--html",
    "html_file",
    metavar="FILE",
    help="Write one self-contained HTML page (inline SVG charts) to FILE ('-': stdout).",
)
@format_option("table", "json")
@common_options
def report(since: str, top: int, html_file: str | None, fmt: str) -> None:
    """Deliveries, bounce and complaint rates per destination domain and day, top
    reasons, suppression-list changes, the queue and what waits in it.

    The per-day counts are the relay's (kept report.keep, 90 days by default);
    complaints and suppression changes come from the suppression history.

    \b
    Examples:
      smtpguard report
      smtpguard report --since 30d --top 25
      smtpguard report --since 7d --html /var/www/html/smtpguard.html
      smtpguard report --format json | jq '.domains[] | {domain, bounce_rate}'
    """
    from smtpguard.ops.report import build
    from smtpguard.store.db import connect, explained

    try:
        window = parse_duration(since)
    except ValueError as e:
        raise click.BadParameter(f"{e}, got {since!r}", param_hint="--since") from None
    if window <= 0:
        raise click.BadParameter("must be more than 0", param_hint="--since")
    cfg = get_config()
    conn = connect(
        cfg.data_dir, busy_timeout=cfg.store.busy_timeout, create=False, group=cfg.store.group
    )
    pg = _fleet_connection(cfg)
    try:
        source = None
        if pg is not None:
            from smtpguard.store.pg.report import FleetReportSource

            source = FleetReportSource(pg)
        with explained(cfg.db_path):
            data = build(conn, since=window, top=top, fleet=source)
    finally:
        conn.close()
        if pg is not None:
            pg.close()
    if window > cfg.report.keep:
        data.notes.append(
            f"per-day counts are kept for report.keep ({format_duration(cfg.report.keep)}):"
            " older days are empty"
        )
    if html_file is not None:
        _write_html(data, html_file)
    elif fmt == "json":
        emit_json(data.to_dict())
    else:
        _tables(data)


def _fleet_connection(cfg: Any) -> Any:
    """PostgreSQL on a fleet node (the report is then the fleet's); None on SQLite, or
    when PostgreSQL is unreachable (this node's numbers, with a warning)."""
    from smtpguard.store import fleet

    if not fleet.enabled(cfg):
        return None
    from smtpguard.store.pg.sync import open_pg

    try:
        return open_pg(cfg)
    except StoreError as e:
        echo(f"smtpguard: warning: {e}: this node's own numbers only", err=True)
        return None


def _write_html(data: Report, target: str) -> None:
    from smtpguard.ops.reporthtml import render

    page = render(data)
    if target == "-":
        sys.stdout.write(page)
        return
    try:
        Path(target).write_text(page, encoding="utf-8")
    except OSError as e:
        raise UserError(f"cannot write {target}: {e.strerror or e}") from None
    click.echo(f"smtpguard: report written to {target}", err=True)


# --------------------------------------------------------------------------- terminal


def _table(title: str, columns: list[str], right: tuple[str, ...] = ()) -> Table:
    from rich.table import Table

    table = Table(title=title, title_justify="left", show_edge=False, header_style="bold")
    for name in columns:
        table.add_column(name, justify="right" if name in right else "left", no_wrap=True)
    return table


_COUNTED = ("sent", "deferred", "bounced", "expired", "suppressed", "complaints")


def _numbers(c: Counts) -> list[Text]:
    counted = (c.sent, c.deferred, c.bounced, c.expired, c.suppressed, c.complaints)
    return [cell(f"{n:,}") for n in counted]


def _tables(r: Report) -> None:
    out = console()
    out.print(
        cell(
            f"smtpguard report: {r.days[0]} .. {r.days[-1]} ({len(r.days)} days, UTC),"
            f" generated {iso_of(r.generated_at)}"
        )
    )
    for note in r.notes:
        out.print(cell(f"note: {note}"), style="dim")
    top_rate = max((c.bounce_rate or 0.0 for c in r.by_day), default=0.0)
    days = _table(
        "Per day", ["day", *_COUNTED, "bounce rate", ""], right=(*_COUNTED, "bounce rate")
    )
    for day, c in zip(r.days, r.by_day, strict=True):
        days.add_row(
            cell(day),
            *_numbers(c),
            cell(percent(c.bounce_rate)),
            cell(bar((c.bounce_rate or 0) / top_rate if top_rate else 0)),
        )
    days.add_section()
    days.add_row(cell("total"), *_numbers(r.total), cell(percent(r.total.bounce_rate)), cell(""))
    out.print(days)

    shown = f"top {len(r.domains)}" + (
        f" of {len(r.domains) + r.other_domains}" if r.other_domains else ""
    )
    cols = [
        "domain",
        "sent",
        "bounced",
        "bounce rate",
        "",
        "complaints",
        "complaint rate",
        "deferred",
        "suppressed",
        "bounce rate per day",
    ]
    domains = _table(
        f"By destination domain ({shown})",
        cols,
        right=(
            "sent",
            "bounced",
            "bounce rate",
            "complaints",
            "complaint rate",
            "deferred",
            "suppressed",
        ),
    )
    top_domain_rate = max((d.total.bounce_rate or 0.0 for d in r.domains), default=0.0)
    for d in r.domains:
        t = d.total
        rates = [c.bounce_rate for c in d.by_day]
        domains.add_row(
            cell(d.domain),
            cell(f"{t.sent:,}"),
            cell(f"{t.bounced:,}"),
            cell(percent(t.bounce_rate)),
            cell(bar((t.bounce_rate or 0) / top_domain_rate if top_domain_rate else 0, 12)),
            cell(f"{t.complaints:,}"),
            cell(percent(t.complaint_rate)),
            cell(f"{t.deferred:,}"),
            cell(f"{t.suppressed:,}"),
            cell(sparkline(rates, max((x or 0) for x in rates))),
        )
    out.print(domains)

    reasons = _table(
        "Top reasons (failed and deferred attempts)",
        ["status", "reason", "count", "share", ""],
        right=("count", "share"),
    )
    failed = sum(x.count for x in r.reasons) or 1
    for x in r.reasons:
        reasons.add_row(
            cell(x.status),
            cell(x.reason),
            cell(f"{x.count:,}"),
            cell(f"{100 * x.count / failed:.1f}%"),
            cell(bar(x.count / failed)),
        )
    out.print(reasons)

    sup_cols = ["day", "added", "removed", "expired", "pending", "recorded"]
    sup = _table("Suppression list", sup_cols, right=tuple(sup_cols[1:]))
    for s in r.suppressions:
        sup.add_row(cell(s.day), *(cell(f"{getattr(s, k):,}") for k in sup_cols[1:]))
    out.print(sup)
    if r.added_by_evidence:
        kinds = ", ".join(f"{k} {n:,}" for k, n in r.added_by_evidence.items())
        out.print(cell(f"added by evidence: {kinds}"))

    q = r.queue
    out.print()
    out.print(
        cell(
            f"Queue now: {q.messages:,} messages; recipients {q.recipients.get('queued', 0):,}"
            f" queued, {q.recipients.get('active', 0):,} active, {q.recipients.get('held', 0):,}"
            f" held; oldest {age(r.oldest_age)}"
        )
    )
    if r.waiting:
        waiting = _table(
            "Waiting by destination (deferred, or held)",
            ["domain", "recipients", "held", "last reason", "next attempt"],
            right=("recipients", "held"),
        )
        for w in r.waiting:
            nxt = age(w.next_attempt - r.generated_at) if w.next_attempt else "-"
            waiting.add_row(
                cell(w.domain),
                cell(f"{w.recipients:,}"),
                cell(f"{w.held:,}"),
                cell(w.reason or "-"),
                cell(f"in {nxt}" if w.next_attempt else "-"),
            )
        out.print(waiting)
    if r.storms:
        storms = _table(
            "Storms: new suppressions held back (smtpguard suppression pending)",
            ["destination", "pending", "since"],
            right=("pending",),
        )
        for s in r.storms:
            storms.add_row(cell(s.destination), cell(f"{s.pending:,}"), cell(iso_of(s.since)))
        out.print(storms)


def iso_of(ts: float | None) -> str:
    from smtpguard.store.db import iso

    return iso(ts)

"""``smtpguard logscan``: bounced and deferred deliveries in Postfix, Exim and Sendmail logs.

Thin by design: check the inputs, drive :class:`smtpguard.ops.logscan.Scanner`
(and with ``--apply`` :class:`smtpguard.ops.logapply.LogApplier`), render.
Exit status: 0 when every input was read (whatever it contained), 2 for an
unreadable input, bad arguments or a database error, 130 for a scan
interrupted by Ctrl-C (``--follow`` stops that way: 0).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import click

from smtpguard.cli.main import common_options, get_config
from smtpguard.cli.output import add_row, cell, console, emit_json, format_option, json_line
from smtpguard.display import shown
from smtpguard.errors import UserError

if TYPE_CHECKING:
    from smtpguard.ops.logapply import LogApplier
    from smtpguard.ops.logscan import Scanned, Scanner, Summary


@click.command()
@click.argument("files", nargs=-1, required=True, metavar="FILE...")
@click.option(
    "--follow",
    "-F",
    is_flag=True,
    help="Keep reading as the files grow, across rotation (like tail -F); stop with Ctrl-C.",
)
@click.option("--from-end", is_flag=True, help="With --follow: skip what the files hold already.")
@format_option(
    "table",
    "json",
    "jsonl",
    help="table: summary (and, with --follow, one line per event); json: the summary;"
    " jsonl: one event per line, then the summary.",
)
@click.option(
    "--apply",
    is_flag=True,
    help="Hand the verdicts (and the deliveries) to the suppression list's evidence rules"
    " (evidence kind log): hard bounces that name the address may suppress it.",
)
@click.option(
    "--top",
    type=click.IntRange(1, 10_000),
    default=20,
    show_default=True,
    help="Recipient domains shown in the summary.",
)
@common_options
def logscan(
    files: tuple[str, ...], follow: bool, from_end: bool, fmt: str, apply: bool, top: int
) -> None:
    """Classify the bounced and deferred deliveries in mail logs.

    FILE is a Postfix, Exim or Sendmail log: plain, rotated, gzip-compressed
    (recognized by content) or "-" for standard input. Each failure line
    (Postfix status=bounced/deferred, Exim ** and ==, Sendmail stat= with a
    4.x.x/5.x.x dsn=) is classified with the relay's rules; the summary counts
    them by reason and by recipient domain.

    With --apply the verdicts go to the suppression list through the same
    evidence rules as the relay's (a reply at MAIL FROM, one naming another
    address, an end-of-DATA reply that names nobody: never), with the log's
    times, so the storm breaker sees the log's pace; deliveries are read too.
    Give rotated files oldest first.

    \b
    Examples:
      smtpguard logscan /var/log/mail.log /var/log/mail.log.1 /var/log/mail.log.2.gz
      zcat /var/log/exim4/mainlog.*.gz | smtpguard logscan - --format jsonl
      smtpguard logscan --follow /var/log/mail.log
      smtpguard logscan --apply /var/log/mail.log.2.gz /var/log/mail.log.1 /var/log/mail.log
    """
    from smtpguard.classify import Classifier
    from smtpguard.ops.logread import check_inputs, is_gzip
    from smtpguard.ops.logscan import Scanner

    names = list(files)
    if names.count("-") > 1:
        raise UserError("'-' (standard input) can be given once")
    check_inputs(names)
    if follow:
        for name in names:
            if name == "-" or is_gzip(name):
                what = "standard input" if name == "-" else f"{name} is gzip-compressed and"
                raise UserError(f"--follow: {what} does not grow; scan it without --follow")
    elif from_end:
        raise UserError("--from-end only applies with --follow")
    cfg = get_config()
    scanner = Scanner(Classifier.load(cfg.classifier.rules_file or None), deliveries=apply)
    applier: LogApplier | None = None
    if apply:
        from smtpguard.ops.logapply import LogApplier

        applier = LogApplier(cfg)
    on_idle = applier.flush if applier else None
    items = _follow(scanner, names, from_end, on_idle) if follow else _scan(scanner, names)
    try:
        # Following ends with Ctrl-C or SIGTERM, then the summary; a scan cut short by
        # Ctrl-C is no summary of the files, so it ends as an interruption (exit 130).
        with contextlib.suppress(KeyboardInterrupt) if follow else contextlib.nullcontext():
            for item in items:
                if applier is not None:
                    applier.add(item)
                if item.event.status != "delivered":
                    _emit(item, fmt, follow)
    finally:
        if applier is not None:
            applier.close()
    summary = scanner.done()
    record = summary.to_dict(top)
    if applier is not None:
        record["applied"] = dict(applier.outcomes)
    if fmt == "json":
        emit_json(record)
    elif fmt == "jsonl":
        _line({"type": "summary", **record})
    else:
        _summary(summary, top, record.get("applied"))


def _scan(scanner: Scanner, names: list[str]) -> Iterator[Scanned]:
    """Every input to its end, with a progress bar when stderr is a terminal."""
    if not sys.stderr.isatty():
        for name in names:
            yield from scanner.scan_input(name)
        return
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(
        TextColumn("{task.description}", markup=False),
        BarColumn(),
        DownloadColumn(),
        TimeRemainingColumn(),
        console=console(stderr=True),
        transient=True,
    ) as progress:
        for name in names:
            task = progress.add_task(shown(name), total=None)
            if name != "-":
                progress.update(task, total=os.path.getsize(name))
            yield from scanner.scan_input(
                name, lambda pos, t=task: progress.update(t, completed=pos)
            )


def _follow(scanner: Scanner, names: list[str], from_end: bool, on_idle: Any) -> Iterator[Scanned]:
    """Follow until SIGINT or SIGTERM (a service manager stopping it)."""

    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield from scanner.follow(names, from_end=from_end, on_idle=on_idle)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _emit(item: Scanned, fmt: str, follow: bool) -> None:
    if fmt == "jsonl":
        _line({"type": "event", **item.to_dict()})
    elif fmt == "table" and follow:
        e, v = item.event, item.verdict
        text = " ".join(e.reply.split())[:160]
        line = (
            f"{e.time or '-'} {e.mta} {e.status} {e.recipient} {v.reason}/{v.bounce}"
            f" {e.dsn or '-'} {text}"
        )
        sys.stdout.write(shown(line) + "\n")
        sys.stdout.flush()


def _line(record: dict[str, Any]) -> None:
    json_line(record, sys.stdout)
    sys.stdout.flush()


def _summary(summary: Summary, top: int, applied: dict[str, int] | None) -> None:
    from rich.table import Table

    out = console()
    if summary.events:
        reasons = Table(
            show_edge=False, header_style="bold", title="by reason", title_justify="left"
        )
        for name in ("reason", "bounce", "events", "share"):
            reasons.add_column(name, justify="right" if name in ("events", "share") else "left")
        for reason, bounce, n in summary.top_reasons():
            add_row(reasons, reason, bounce, f"{n:,}", f"{100 * n / summary.events:.1f}%")
        out.print(reasons)
        domains = Table(
            show_edge=False, header_style="bold", title="by recipient domain", title_justify="left"
        )
        counted = (
            ("bounced", "deferred", "delivered") if summary.delivered else ("bounced", "deferred")
        )
        for name in ("domain", *counted, "top reason"):
            domains.add_column(name, justify="right" if name in counted else "left")
        for domain, c in summary.top_domains(top):
            top_reason = c.reasons.most_common(1)[0][0] if c.reasons else ""
            numbers = [f"{getattr(c, name):,}" for name in counted]
            add_row(domains, domain, *numbers, top_reason)
        out.print(domains)
    out.print(cell(_totals(summary)))
    if applied is not None:
        done = ", ".join(f"{n:,} {outcome}" for outcome, n in sorted(applied.items())) or "nothing"
        out.print(cell(f"applied to the suppression list (evidence log): {done}"))


def _totals(s: Summary) -> str:
    rate = f"{s.lines_per_second():,.0f} lines/s" if s.seconds else ""
    delivered = f" {s.delivered:,} delivered," if s.delivered else ""
    text = (
        f"{s.files} file{'s' if s.files != 1 else ''}, {s.lines:,} lines, {s.bytes / 1e6:,.1f} MB"
        f" in {s.seconds:.1f} s ({rate}): {s.bounced:,} bounced, {s.deferred:,} deferred,"
        f"{delivered} {s.suppressible:,} with a bad address"
    )
    if s.unparsed:
        text += f"; {s.unparsed:,} failure-like lines in no known format"
    if s.long_lines:
        text += f"; {s.long_lines:,} lines cut at the maximum length"
    return text

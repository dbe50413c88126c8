"""``smtpguard logscan``: bounced and deferred deliveries in Postfix, Exim and Sendmail logs.

Thin by design: check the inputs, drive :class:`smtpguard.ops.logscan.Scanner`,
render. Exit status: 0 when every input was read (whatever it contained), 2
for an unreadable input or bad arguments.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import click

from smtpguard.cli.main import common_options, get_config
from smtpguard.cli.output import console, emit_json, format_option
from smtpguard.errors import UserError

if TYPE_CHECKING:
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
    "--top",
    type=click.IntRange(1, 10_000),
    default=20,
    show_default=True,
    help="Recipient domains shown in the summary.",
)
@common_options
def logscan(files: tuple[str, ...], follow: bool, from_end: bool, fmt: str, top: int) -> None:
    """Classify the bounced and deferred deliveries in mail logs.

    FILE is a Postfix, Exim or Sendmail log: plain, rotated, gzip-compressed
    (recognized by content) or "-" for standard input. Each failure line
    (Postfix status=bounced/deferred, Exim ** and ==, Sendmail stat= with a
    4.x.x/5.x.x dsn=) is classified with the relay's rules; the summary counts
    them by reason and by recipient domain.

    \b
    Examples:
      smtpguard logscan /var/log/mail.log /var/log/mail.log.1 /var/log/mail.log.2.gz
      zcat /var/log/exim4/mainlog.*.gz | smtpguard logscan - --format jsonl
      smtpguard logscan --follow /var/log/mail.log
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
    scanner = Scanner(Classifier.load(cfg.classifier.rules_file or None))
    items = _follow(scanner, names, from_end) if follow else _scan(scanner, names)
    # Following ends with Ctrl-C or SIGTERM, then the summary; a scan cut short by
    # Ctrl-C is no summary of the files, so it ends as an interruption (exit 130).
    with contextlib.suppress(KeyboardInterrupt) if follow else contextlib.nullcontext():
        for item in items:
            _emit(item, fmt, follow)
    summary = scanner.done()
    if fmt == "json":
        emit_json(summary.to_dict(top))
    elif fmt == "jsonl":
        _line({"type": "summary", **summary.to_dict(top)})
    else:
        _summary(summary, top)


def _scan(scanner: Scanner, names: list[str]) -> Iterator[Scanned]:
    """Every input to its end, with a progress bar when stderr is a terminal."""
    if not sys.stderr.isatty():
        for name in names:
            yield from scanner.scan_input(name)
        return
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=True,
    ) as progress:
        for name in names:
            task = progress.add_task(name, total=None)
            if name != "-":
                progress.update(task, total=os.path.getsize(name))
            yield from scanner.scan_input(
                name, lambda pos, t=task: progress.update(t, completed=pos)
            )


def _follow(scanner: Scanner, names: list[str], from_end: bool) -> Iterator[Scanned]:
    """Follow until SIGINT or SIGTERM (a service manager stopping it)."""

    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield from scanner.follow(names, from_end=from_end)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _emit(item: Scanned, fmt: str, follow: bool) -> None:
    if fmt == "jsonl":
        _line({"type": "event", **item.to_dict()})
    elif fmt == "table" and follow:
        e, v = item.event, item.verdict
        text = " ".join(e.reply.split())[:160]
        sys.stdout.write(
            f"{e.time or '-'} {e.mta} {e.status} {e.recipient} {v.reason}/{v.bounce}"
            f" {e.dsn or '-'} {text}\n"
        )
        sys.stdout.flush()


def _line(record: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(record, ensure_ascii=False) + "\n")
    sys.stdout.flush()


def _summary(summary: Summary, top: int) -> None:
    from rich.table import Table

    out = console()
    if summary.events:
        reasons = Table(
            show_edge=False, header_style="bold", title="by reason", title_justify="left"
        )
        for name in ("reason", "bounce", "events", "share"):
            reasons.add_column(name, justify="right" if name in ("events", "share") else "left")
        for reason, bounce, n in summary.top_reasons():
            reasons.add_row(reason, bounce, f"{n:,}", f"{100 * n / summary.events:.1f}%")
        out.print(reasons)
        domains = Table(
            show_edge=False, header_style="bold", title="by recipient domain", title_justify="left"
        )
        for name in ("domain", "bounced", "deferred", "top reason"):
            domains.add_column(name, justify="right" if name in ("bounced", "deferred") else "left")
        for domain, c in summary.top_domains(top):
            top_reason = c.reasons.most_common(1)[0][0] if c.reasons else ""
            domains.add_row(domain, f"{c.bounced:,}", f"{c.deferred:,}", top_reason)
        out.print(domains)
    out.print(_totals(summary), highlight=False)


def _totals(s: Summary) -> str:
    rate = f"{s.lines_per_second():,.0f} lines/s" if s.seconds else ""
    text = (
        f"{s.files} file{'s' if s.files != 1 else ''}, {s.lines:,} lines, {s.bytes / 1e6:,.1f} MB"
        f" in {s.seconds:.1f} s ({rate}): {s.bounced:,} bounced, {s.deferred:,} deferred,"
        f" {s.suppressible:,} with a bad address"
    )
    if s.unparsed:
        text += f"; {s.unparsed:,} failure-like lines in no known format"
    if s.long_lines:
        text += f"; {s.long_lines:,} lines cut at the maximum length"
    return text

"""``smtpguard classify`` (bounce files or one SMTP reply -> verdicts) and ``smtpguard rules``.

Thin: parse arguments, call :class:`smtpguard.classify.Classifier`, render. The jsonl
path imports neither rich nor anything it does not need, because the benchmark runs it
over hundreds of files and start-up time counts.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

from smtpguard.classify.verdict import STAGES
from smtpguard.cli.main import common_options, get_config
from smtpguard.cli.output import add_row, cell, console, echo, json_line, plural
from smtpguard.errors import UserError

#: Fields every jsonl object starts with (the issue's contract), then the rest of the verdict.
JSONL_FIELDS = (
    "file",
    "recipient",
    "status",
    "reply_code",
    "reason",
    "bounce",
    "suppress",
    "diagnostic",
)


def _rules_path(rules_file: str | None) -> str | None:
    """``--rules`` wins; else config ``classifier.rules_file`` (relative to the working
    directory, like ``store.data_dir``, so the CLI and the relay read the same file)."""
    return rules_file or get_config().classifier.rules_file or None


def _inputs(paths: tuple[str, ...]) -> list[tuple[str, Path | None]]:
    """(name as given or walked, path or None for stdin), checked before any output."""
    out: list[tuple[str, Path | None]] = []
    for given in paths:
        if given == "-":
            out.append(("-", None))
            continue
        p = Path(given)
        if p.is_dir():
            files = sorted(f for f in p.rglob("*.eml") if f.is_file())
            out.extend((str(f), f) for f in files)
        elif p.is_file():
            out.append((given, p))
        elif p.exists():
            raise UserError(f"{given}: not a regular file or directory")
        else:
            raise UserError(f"{given}: no such file or directory")
    for name, path in out:
        # Checked before any output, so a bad input never leaves half a report behind.
        if path is not None and not os.access(path, os.R_OK):
            raise UserError(f"{name}: cannot read: permission denied")
    return out


def _read(name: str, path: Path | None) -> bytes:
    if path is None:
        return sys.stdin.buffer.read()
    try:
        return path.read_bytes()
    except OSError as e:
        raise UserError(f"{name}: cannot read: {e.strerror or e}") from None


def _record(name: str, verdict: Any) -> dict[str, Any]:
    d = verdict.to_dict()
    rec: dict[str, Any] = {"file": name}
    for key in JSONL_FIELDS[1:]:
        rec[key] = d.pop(key)
    rec.update(d)
    return rec


@click.command()
@click.argument("paths", nargs=-1, metavar="PATH...")
@click.option(
    "--reply",
    "reply_text",
    metavar="TEXT",
    help='Classify one SMTP reply, e.g. "550 5.1.1 <a@b.example>: User unknown".',
)
@click.option(
    "--stage",
    type=click.Choice(STAGES),
    default="unknown",
    show_default=True,
    help="SMTP stage the --reply answered.",
)
@click.option("--recipient", default="", metavar="ADDR", help="Recipient the --reply was about.")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(("table", "jsonl")),
    default="table",
    show_default=True,
    help="Output: a table, or one JSON object per verdict.",
)
@click.option(
    "--rules",
    "rules_file",
    metavar="FILE",
    help="Operator rules file (default: config classifier.rules_file).",
)
@common_options
def classify(
    paths: tuple[str, ...],
    reply_text: str | None,
    stage: str,
    recipient: str,
    fmt: str,
    rules_file: str | None,
) -> None:
    """Classify bounce messages (PATH: .eml files, directories of .eml, - for stdin)
    or one SMTP reply (--reply). Verdicts no rule explains are counted as 'undefined'."""
    from smtpguard.classify import Classifier

    if reply_text is not None and paths:
        raise UserError("give either PATH... or --reply, not both")
    if reply_text is None and not paths:
        raise UserError("nothing to classify: give PATH... (files, directories, -) or --reply TEXT")
    inputs = _inputs(paths) if paths else []
    classifier = Classifier.load(_rules_path(rules_file))

    def verdicts() -> Iterator[tuple[str, Any]]:
        if reply_text is not None:
            yield "", classifier.reply_line(reply_text, stage=stage, recipient=recipient)
            return
        for name, path in inputs:
            data = _read(name, path)
            found = classifier.message(data)
            if not found:
                yield name, None
            for v in found:
                yield name, v

    if fmt == "jsonl":
        out = sys.stdout
        for name, v in verdicts():
            if v is not None:
                json_line(_record(name, v), out)
        out.flush()
        click.echo(_summary(classifier, len(inputs)), err=True)
    else:
        _table(list(verdicts()), classifier, len(inputs))


def _summary(classifier: Any, files: int) -> str:
    s = classifier.stats
    parts = [plural(s["verdicts"], "verdict", "verdicts")]
    if files:
        parts.append(f"from {plural(files, 'file', 'files')} ({s['not_bounce']} not bounces)")
    parts.append(f"{s['undefined']} undefined")
    if s["errors"]:
        parts.append(plural(s["errors"], "error", "errors"))
    return "smtpguard: " + ", ".join(parts)


def _table(rows: list[tuple[str, Any]], classifier: Any, files: int) -> None:
    from rich.table import Table

    table = Table(show_lines=False)
    show_file = files > 0
    if show_file:
        table.add_column("file", overflow="fold")
    table.add_column("recipient", overflow="fold")
    for col in ("status", "code", "reason", "bounce", "suppress"):
        table.add_column(col, no_wrap=True)  # short words stay readable in a narrow terminal
    table.add_column("diagnostic", overflow="fold", ratio=1)
    for name, v in rows:
        cells = [name] if show_file else []
        if v is None:
            cells += ["", "", "", "(not a bounce)", "", "", ""]
        else:
            cells += [
                v.recipient, v.status, v.reply_code, v.reason, v.bounce,
                "yes" if v.suppress else "no", v.diagnostic[:120],
            ]  # fmt: skip
        add_row(table, *cells)
    out = console()
    out.print(table)
    out.print(cell(_summary(classifier, files).removeprefix("smtpguard: ")))


@click.group()
def rules() -> None:
    """Classification rule files (shipped rules + the operator's overlay)."""


@rules.command("check")
@click.argument("file", required=False, metavar="[FILE]")
@common_options
def rules_check(file: str | None) -> None:
    """Validate FILE (default: config classifier.rules_file, else the shipped rules).

    Exit 0 with a count when the rules load; exit 2 with the file, the rule id and
    the problem otherwise."""
    from smtpguard.classify import rules as rules_mod

    path = file or _rules_path(None)
    if path is None:
        ruleset = rules_mod.load(None)
        echo(f"ok: {rules_mod.shipped_path()}: {ruleset.shipped_count} rules")
        return
    if not Path(path).is_file():
        raise UserError(f"{path}: no such file")
    ruleset = rules_mod.check_file(path)
    echo(
        f"ok: {path}: {ruleset.operator_count} rules "
        f"({len(ruleset.rules)} effective with {ruleset.shipped_count} shipped)"
    )

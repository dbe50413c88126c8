"""How every ``smtpguard`` command prints: one console, one ``--format`` option, one JSON style.

Shared so that ``suppression`` and ``queue`` (and later commands) look and
behave alike: tables on a terminal, the same width when piped, the same JSON.

Every value a command shows comes from the network, the database or the user
(a diagnostic ``550 5.7.1 [/policy] rejected``, a note, a log line), so none is
ever read as rich markup or reaches the terminal with its control characters:
table cells and lines are :func:`cell` (a ``rich.text.Text``, never parsed,
controls escaped by :func:`smtpguard.display.shown`), plain lines go through
:func:`echo`, JSON through :func:`emit_json` / :func:`json_line`.
"""

from __future__ import annotations

from typing import IO, TYPE_CHECKING, Any

import click

from smtpguard.display import json_text, shown

if TYPE_CHECKING:  # rich loads on first use: `classify --format jsonl` never needs it
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text


def console(*, stderr: bool = False) -> Console:
    """A rich console for stdout (or stderr); piped output (scripts, tests) gets wide
    lines, not an 80-column wrap. Markup and emoji codes are off: a string printed
    as it is stays as it is (values still go in as :func:`cell`)."""
    from rich.console import Console

    out = Console(soft_wrap=False, markup=False, emoji=False, highlight=False, stderr=stderr)
    if out.is_terminal:
        return out
    return Console(
        soft_wrap=False, width=200, markup=False, emoji=False, highlight=False, stderr=stderr
    )


def cell(value: object, style: str = "") -> Text:
    """A value as rich text: shown literally, terminal controls escaped."""
    from rich.text import Text

    return Text("" if value is None else shown(value), style=style)


def add_row(table: Table, *values: object) -> None:
    """A table row of values, each as :func:`cell`."""
    table.add_row(*(cell(v) for v in values))


def echo(text: object, *, err: bool = False) -> None:
    """One line of text, terminal controls escaped."""
    click.echo(shown(text), err=err)


def format_option(*choices: str, default: str | None = None, help: str = "Output format.") -> Any:
    """``--format`` with these choices (the first is the default)."""
    return click.option(
        "--format",
        "fmt",
        type=click.Choice(choices),
        default=default or choices[0],
        show_default=True,
        help=help,
    )


def limit_option(default: int, help: str, *, minimum: int = 0) -> Any:
    """``--limit N``: how many rows a listing shows."""
    return click.option(
        "--limit",
        type=click.IntRange(min=minimum),
        default=default,
        show_default=True,
        help=help,
    )


def emit_json(value: Any) -> None:
    """One JSON document on stdout, indented, non-ASCII kept as is (controls escaped)."""
    click.echo(json_text(value, indent=2))


def json_line(value: Any, out: IO[str]) -> None:
    """One JSON Lines record (controls escaped, non-ASCII kept as is)."""
    out.write(json_text(value) + "\n")


def plural(n: int, one: str, many: str) -> str:
    """``plural(1, "entry", "entries")`` -> ``"1 entry"``."""
    return f"{n} {one if n == 1 else many}"

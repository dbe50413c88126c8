"""How every ``smtpguard`` command prints: one console, one ``--format`` option, one JSON style.

Shared so that ``suppression`` and ``queue`` (and later commands) look and
behave alike: tables on a terminal, the same width when piped, the same JSON.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:  # rich loads on first use: `classify --format jsonl` never needs it
    from rich.console import Console


def console() -> Console:
    """A rich console for stdout; piped output (scripts, tests) gets wide lines,
    not an 80-column wrap. Markup is off: cells hold remote text (``[...]`` in a
    diagnostic, ``host[address]:port``) that must print as it is."""
    from rich.console import Console

    out = Console(soft_wrap=False, markup=False)
    return out if out.is_terminal else Console(soft_wrap=False, width=200, markup=False)


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
    """One JSON document on stdout, indented, non-ASCII kept as is."""
    click.echo(json.dumps(value, indent=2, ensure_ascii=False))


def plural(n: int, one: str, many: str) -> str:
    """``plural(1, "entry", "entries")`` -> ``"1 entry"``."""
    return f"{n} {one if n == 1 else many}"

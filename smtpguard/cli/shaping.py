"""``smtpguard shaping check [FILE]``: validate a traffic-shaping file.

The file is checked as the relay would load it: the shipped ``default.toml``
overlaid by FILE (default: config ``shaping.file``, else the shipped file alone).
Exit 0 with a summary; exit 2 with one line naming the file and the key.
"""

from __future__ import annotations

from pathlib import Path

import click

from smtpguard.cli.main import common_options, get_config
from smtpguard.cli.output import echo, plural
from smtpguard.errors import UserError


@click.group()
def shaping() -> None:
    """Traffic-shaping files (shipped limits + the operator's overlay)."""


@shaping.command("check")
@click.argument("file", required=False, metavar="[FILE]")
@common_options
def shaping_check(file: str | None) -> None:
    """Validate FILE (default: config shaping.file, else the shipped file)."""
    from smtpguard.shaping import limits

    path = file or get_config().shaping.file or None
    if path is not None and not Path(path).is_file():
        raise UserError(f"{path}: no such file")
    rules = limits.load(path)
    d = rules.defaults
    echo(
        f"ok: {' + '.join(rules.files)}: {plural(len(rules.providers), 'provider', 'providers')},"
        f" {plural(len(rules.automation), 'automation rule', 'automation rules')};"
        f" defaults {d.connections} connections, rate {limits.format_rate(d.rate)},"
        f" {d.recipients} recipients per message;"
        f" global rate {limits.format_rate(rules.global_rate)}"
    )

"""``smtpguard config``: check a configuration file, print the example."""

from __future__ import annotations

import click

from smtpguard.cli.main import State, common_options, get_config
from smtpguard.config import load, render, render_example


@click.group()
def config() -> None:
    """Validate and print the configuration."""


@config.command("check")
@click.argument("file", required=False, metavar="[FILE]")
@common_options
def check(file: str | None) -> None:
    """Validate a configuration FILE and print the effective settings as TOML.

    Without FILE, checks the one --config PATH (or SMTPGUARD_CONFIG) names, or
    the embedded defaults. Exits 2 with a one-line error naming the file and
    the key when it is invalid.

    \b
    Example:
      smtpguard config check /etc/smtpguard/smtpguard.toml
    """
    if file is None:
        cfg = get_config()
    else:
        state = click.get_current_context().find_object(State)
        cfg = load(file, data_dir=state.data_dir if state else None)
    click.echo(f"# {cfg.source}: OK\n" + render(cfg), nl=False)


@config.command("example")
def example() -> None:
    """Print the commented example configuration (conf/smtpguard.toml)."""
    click.echo(render_example(), nl=False)

"""``smtpguard config``: check a configuration file, print the example."""

from __future__ import annotations

import click

from smtpguard.cli.main import common_options, get_config
from smtpguard.config import render, render_example


@click.group()
def config() -> None:
    """Validate and print the configuration."""


@config.command("check")
@common_options
def check() -> None:
    """Validate the configuration and print the effective settings as TOML.

    Exits 2 with a one-line error naming the file and key when the file is
    invalid. Use the global --config PATH (or SMTPGUARD_CONFIG) to pick a file.
    """
    cfg = get_config()
    click.echo(f"# {cfg.source}: OK\n" + render(cfg), nl=False)


@config.command("example")
def example() -> None:
    """Print the commented example configuration (conf/smtpguard.toml)."""
    click.echo(render_example(), nl=False)

"""``smtpguard config``: check a configuration file, print the example."""

from __future__ import annotations

import click

from smtpguard.cli.main import State, common_options, get_config
from smtpguard.cli.output import echo
from smtpguard.config import Config, load, render
from smtpguard.errors import UserError


@click.group()
def config() -> None:
    """Validate and print the configuration."""


@config.command("check")
@click.argument("file", required=False, metavar="[FILE]")
@common_options
def check(file: str | None) -> None:
    """Validate a configuration FILE and print the effective settings as TOML.

    Without FILE, checks the file smtpguard would read: --config PATH (or
    SMTPGUARD_CONFIG), else /etc/smtpguard/smtpguard.toml if it exists, else
    the embedded defaults. Durations print as written ("5d").

    Besides syntax it checks the files the configuration names (a
    classifier.rules_file that cannot be read or loaded, TLS and AUTH files:
    errors) and risky settings (relay.trusted_networks wider than loopback and
    private networks: a warning on stderr). Exits 2 with one line per error.

    \b
    Example:
      smtpguard config check /etc/smtpguard/smtpguard.toml
    """
    from smtpguard.ops.configcheck import audit

    if file is None:
        cfg = get_config()
    else:
        state = click.get_current_context().find_object(State)
        cfg = load(file, data_dir=state.data_dir if state else None)
    found = audit(cfg)
    for warning in found.warnings:
        echo(f"smtpguard: warning: {warning}", err=True)
    if found.errors:
        for error in found.errors[:-1]:
            echo(f"smtpguard: error: {error}", err=True)
        raise UserError(found.errors[-1])
    click.echo(f"# {cfg.source}: OK\n" + render(cfg), nl=False)


@config.command("example")
@common_options
def example() -> None:
    """Print the commented example configuration (conf/smtpguard.toml).

    Built from the embedded defaults, never from an installed file; a
    --data-dir given here is written uncommented, which is how `make install`
    writes /etc/smtpguard/smtpguard.toml:

    \b
      smtpguard --data-dir /var/lib/smtpguard config example
    """
    state = click.get_current_context().find_object(State)
    cfg = Config()
    if state is not None and state.data_dir:
        cfg = cfg.with_overrides(store={"data_dir": state.data_dir}, origin="--data-dir")
    click.echo(render(cfg, commented=True), nl=False)

"""``smtpguard serve``: run the relay in the foreground.

One line starts a relay, for an admin, a test or a benchmark::

    smtpguard serve --listen 127.0.0.1:10025 --smarthost 127.0.0.1:2525 --data-dir /tmp/q

Options override the config file. Once the inbound port is bound, one line
goes to stdout, ``smtpguard: listening on HOST:PORT``, so whoever started the
process can wait for it; logs go to stderr. SIGTERM or SIGINT drain and exit 0.
"""

from __future__ import annotations

import asyncio
import logging
import sys

import click

from smtpguard.cli.main import common_options, get_config

log_level_option = click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    default="info",
    show_default=True,
    help="Least severe log level written to stderr.",
)


def start_logging(level: str) -> None:
    """Logs to stderr, one line per event (systemd's journal adds the time again)."""
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def listening(host: str, port: int) -> None:
    """The one line on stdout that says the port is bound (what starters wait for)."""
    shown = f"[{host}]" if ":" in host else host
    click.echo(f"smtpguard: listening on {shown}:{port}")
    sys.stdout.flush()


@click.command()
@click.option("--listen", metavar="HOST:PORT", help="Accept mail here (relay.listen).")
@click.option(
    "--smarthost",
    metavar="HOST:PORT",
    help="Deliver everything via this host (delivery.smarthost).",
)
@log_level_option
@common_options
def serve(listen: str | None, smarthost: str | None, log_level: str) -> None:
    """Run the relay (Postfix relayhost) until SIGTERM or SIGINT.

    With intake.listen set it also takes the mail returned to the bounce domain, and
    with webhooks.listen the ESPs' event webhooks, in the same process.
    """
    cfg = get_config()
    if listen:
        cfg = cfg.with_overrides(relay={"listen": listen}, origin="--listen")
    if smarthost:
        cfg = cfg.with_overrides(delivery={"smarthost": smarthost}, origin="--smarthost")
    start_logging(log_level)
    from smtpguard.relay.server import serve as run

    code = asyncio.run(run(cfg, on_listening=listening))
    sys.exit(code)

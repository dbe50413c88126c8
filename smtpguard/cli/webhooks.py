"""``smtpguard webhooks``: the ESP event webhook listener on its own.

``smtpguard serve`` runs the same listener inside the relay when ``webhooks.listen`` is
set; this command is for a host that runs it apart (the database is shared).
"""

from __future__ import annotations

import asyncio
import sys

import click

from smtpguard.cli.daemon import announce, hostport, log_level_option, setup_logging
from smtpguard.cli.main import common_options, get_config
from smtpguard.errors import UserError


@click.group()
def webhooks() -> None:
    """Receive ESP event webhooks (Amazon SES via SNS, SendGrid, Postmark)."""


@webhooks.command("serve")
@click.option("--listen", metavar="HOST:PORT", help="Listen here (webhooks.listen).")
@log_level_option
@common_options
def serve(listen: str | None, log_level: str) -> None:
    """Run the webhook listener until SIGTERM or SIGINT.

    POST /ses (SNS notifications for webhooks.ses_topic_arns), /sendgrid (signed
    with webhooks.sendgrid_public_key), /postmark (basic auth webhooks.postmark_user).
    Bad signatures get 403 and change nothing. Plain HTTP: keep it on loopback
    behind the TLS proxy the ESPs reach.

    \b
    Example:
      smtpguard webhooks serve --listen 127.0.0.1:8025
    """
    cfg = get_config()
    if listen:
        cfg = cfg.with_overrides(webhooks={"listen": listen}, origin="--listen")
    if not cfg.webhooks.listen:
        raise UserError("no address to listen on: set webhooks.listen or give --listen")
    setup_logging(log_level, cfg.log.format)
    from smtpguard.intake.webhooks.server import serve_webhooks

    on_listening = lambda host, port: announce(hostport(host, port))  # noqa: E731
    sys.exit(asyncio.run(serve_webhooks(cfg, on_listening=on_listening)))

"""``smtpguard policy``: run the Postfix policy service in the foreground.

    smtpguard policy --listen 127.0.0.1:10040 --data-dir /var/lib/smtpguard

For ``check_policy_service inet:127.0.0.1:10040`` in Postfix's
``smtpd_recipient_restrictions`` (see ``conf/postfix/policy.cf``). Prints
``smtpguard: listening on HOST:PORT`` once bound; SIGTERM or SIGINT end it (exit 0).
"""

from __future__ import annotations

import asyncio
import sys

import click

from smtpguard.cli.daemon import announce, hostport, log_level_option, setup_logging
from smtpguard.cli.main import common_options, get_config


@click.command()
@click.option(
    "--listen", metavar="HOST:PORT", help="Where Postfix connects (policy_service.listen)."
)
@log_level_option
@common_options
def policy(listen: str | None, log_level: str) -> None:
    """Run the Postfix policy service until SIGTERM or SIGINT."""
    cfg = get_config()
    if listen:
        cfg = cfg.with_overrides(policy_service={"listen": listen}, origin="--listen")
    setup_logging(log_level)
    from smtpguard.postfix.policy_server import serve

    code = asyncio.run(serve(cfg, on_listening=lambda host, port: announce(hostport(host, port))))
    sys.exit(code)

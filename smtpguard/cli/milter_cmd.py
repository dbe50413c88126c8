"""``smtpguard milter``: run the milter in the foreground (needs the ``milter`` extra).

    smtpguard milter --listen inet:127.0.0.1:8891 --data-dir /var/lib/smtpguard

For ``smtpd_milters = inet:127.0.0.1:8891`` in Postfix's main.cf (see
``conf/postfix/milter.cf``). Prints ``smtpguard: listening on inet:127.0.0.1:8891``
once the socket is bound; SIGTERM, SIGINT or SIGHUP end it (exit 0).
"""

from __future__ import annotations

import sys

import click

from smtpguard.cli.daemon import announce, log_level_option, setup_logging
from smtpguard.cli.main import common_options, get_config
from smtpguard.errors import UserError


@click.command()
@click.option(
    "--listen",
    metavar="SOCKET",
    help="inet:HOST:PORT or unix:/path, as in Postfix's smtpd_milters (milter.listen).",
)
@log_level_option
@common_options
def milter(listen: str | None, log_level: str) -> None:
    """Run the milter (Postfix smtpd_milters) until SIGTERM, SIGINT or SIGHUP."""
    cfg = get_config()
    if listen:
        cfg = cfg.with_overrides(milter={"listen": listen}, origin="--listen")
    setup_logging(log_level)
    try:
        from smtpguard.postfix.milter_app import run
    except ImportError as e:
        raise UserError(
            f"the milter needs pymilter ({e}); install the milter extra:"
            " pip install 'smtpguard[milter]'"
        ) from None
    sys.exit(run(cfg, on_listening=announce))

"""``smtpguard serve``: run the relay in the foreground.

One line starts a relay, for an admin, a test or a benchmark::

    smtpguard serve --listen 127.0.0.1:10025 --smarthost 127.0.0.1:2525 --data-dir /tmp/q

Options override the config file. Once the inbound port is bound, one line
goes to stdout, ``smtpguard: listening on HOST:PORT``, so whoever started the
process can wait for it; logs go to stderr. SIGTERM or SIGINT drain and exit 0.
With ``--log-format json`` (``log.format``) the delivery log and the relay's own
log lines on stderr are JSON objects, one per line, so a shipper reading stderr
sees only JSON.
"""

from __future__ import annotations

import sys

import click

from smtpguard.cli.daemon import announce, hostport, log_level_option, setup_logging
from smtpguard.cli.main import common_options, get_config


@click.command()
@click.option("--listen", metavar="HOST:PORT", help="Accept mail here (relay.listen).")
@click.option(
    "--smarthost",
    metavar="HOST:PORT",
    help="Deliver everything via this host (delivery.smarthost).",
)
@log_level_option
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    help="Delivery log (and stderr) as text lines or one JSON object per line (log.format).",
)
@common_options
def serve(
    listen: str | None, smarthost: str | None, log_level: str, log_format: str | None
) -> None:
    """Run the relay (Postfix relayhost) until SIGTERM or SIGINT.

    With intake.listen set it also takes the mail returned to the bounce domain, and
    with webhooks.listen the ESPs' event webhooks, in the same process.
    """
    cfg = get_config()
    if listen:
        cfg = cfg.with_overrides(relay={"listen": listen}, origin="--listen")
    if smarthost:
        cfg = cfg.with_overrides(delivery={"smarthost": smarthost}, origin="--smarthost")
    if log_format:
        cfg = cfg.with_overrides(log={"format": log_format}, origin="--log-format")
    setup_logging(log_level, cfg.log.format)
    from smtpguard.eventloop import run
    from smtpguard.relay.server import serve as relay

    on_listening = lambda host, port: announce(hostport(host, port))  # noqa: E731
    code = run(relay(cfg, on_listening=on_listening), cfg.relay.event_loop)
    sys.exit(code)

"""``smtpguard serve``: run the relay in the foreground.

One line starts a relay, for an admin, a test or a benchmark::

    smtpguard serve --listen 127.0.0.1:10025 --smarthost 127.0.0.1:2525 --data-dir /tmp/q

Options override the config file. Once the inbound port is bound, one line
goes to stdout, ``smtpguard: listening on HOST:PORT``, so whoever started the
process can wait for it; logs go to stderr. SIGTERM or SIGINT drain and exit 0.

The delivery log (one line per recipient attempt, :mod:`smtpguard.relay.maillog`)
goes where ``log.destination`` says, stderr by default; ``--log-format json``
(``log.format``) makes it one JSON object per line, and the relay's own log lines
on stderr too, so a shipper reading stderr sees only JSON.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from datetime import UTC, datetime

import click

from smtpguard.cli.main import common_options, get_config


@click.command()
@click.option("--listen", metavar="HOST:PORT", help="Accept mail here (relay.listen).")
@click.option(
    "--smarthost",
    metavar="HOST:PORT",
    help="Deliver everything via this host (delivery.smarthost).",
)
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    default="info",
    show_default=True,
    help="Least severe log level written to stderr.",
)
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    help="Delivery log (and stderr) as text lines or one JSON object per line (log.format).",
)
@common_options
def serve(
    listen: str | None, smarthost: str | None, log_level: str, log_format: str | None
) -> None:
    """Run the relay (Postfix relayhost) until SIGTERM or SIGINT."""
    cfg = get_config()
    if listen:
        cfg = cfg.with_overrides(relay={"listen": listen}, origin="--listen")
    if smarthost:
        cfg = cfg.with_overrides(delivery={"smarthost": smarthost}, origin="--smarthost")
    if log_format:
        cfg = cfg.with_overrides(log={"format": log_format}, origin="--log-format")
    handler = logging.StreamHandler(sys.stderr)
    if cfg.log.format == "json":
        handler.setFormatter(JsonLines())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=getattr(logging, log_level.upper()), handlers=[handler])
    from smtpguard.relay.server import serve as run

    def listening(host: str, port: int) -> None:
        shown = f"[{host}]" if ":" in host else host
        click.echo(f"smtpguard: listening on {shown}:{port}")
        sys.stdout.flush()

    code = asyncio.run(run(cfg, on_listening=listening))
    sys.exit(code)


class JsonLines(logging.Formatter):
    """The relay's own log lines as JSON objects (``--log-format json``)."""

    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc, ensure_ascii=False)

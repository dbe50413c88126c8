"""What the long-running commands share (``serve``, ``milter``, ``policy``).

Each logs to stderr at ``--log-level`` and, once its socket is bound, prints one
line on stdout, ``smtpguard: listening on WHERE``, so whoever started it (an
operator, systemd, a test, a benchmark) can wait for that line.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import click

LISTENING = "smtpguard: listening on "


def log_level_option(f: Any) -> Any:
    """``--log-level`` (default info)."""
    return click.option(
        "--log-level",
        type=click.Choice(["debug", "info", "warning", "error"]),
        default="info",
        show_default=True,
        help="Least severe log level written to stderr.",
    )(f)


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def announce(where: str) -> None:
    """Print the listening line and flush it (stdout may be a pipe)."""
    click.echo(LISTENING + where)
    sys.stdout.flush()


def hostport(host: str, port: int) -> str:
    """``127.0.0.1:25``, ``[::1]:25``."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

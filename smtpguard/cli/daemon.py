"""What the long-running commands share (``serve``, ``milter``, ``policy``).

Each logs to stderr at ``--log-level`` and, once its socket is bound, prints one
line on stdout, ``smtpguard: listening on WHERE``, so whoever started it (an
operator, systemd, a test, a benchmark) can wait for that line.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
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


def setup_logging(level: str, fmt: str = "text") -> None:
    """stderr logging at ``level``; ``fmt="json"`` writes one JSON object per line."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonLines())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=getattr(logging, level.upper()), handlers=[handler])


class JsonLines(logging.Formatter):
    """Log records as JSON objects (``--log-format json``), for shippers reading stderr."""

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


def announce(where: str) -> None:
    """Print the listening line and flush it (stdout may be a pipe)."""
    click.echo(LISTENING + where)
    sys.stdout.flush()


def hostport(host: str, port: int) -> str:
    """``127.0.0.1:25``, ``[::1]:25``."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

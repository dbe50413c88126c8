"""The PostgreSQL driver (psycopg 3), imported only when the fleet backend is used."""

from __future__ import annotations

import re
import socket
from typing import TYPE_CHECKING, Any

from smtpguard.errors import StoreError, UserError

if TYPE_CHECKING:
    import psycopg

    from smtpguard.config import Config

#: Seconds to wait for a TCP connection to PostgreSQL.
CONNECT_TIMEOUT = 5
#: libpq settings that make a dead server or network an error within seconds, not a
#: query that hangs for the kernel's two hours (a connection string cannot loosen them).
LIVENESS = {
    "connect_timeout": CONNECT_TIMEOUT,
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 5,
    "keepalives_count": 3,
    "tcp_user_timeout": 20_000,  # ms: unacknowledged data on a dead link
}
#: The channel every node LISTENs on; the payload is the newest change's sequence number.
CHANNEL = "smtpguard_suppression"
_PASSWORD = re.compile(r"(://[^:/@]*:)[^@]*@|(password\s*=\s*)\S+")


def driver() -> Any:
    """The psycopg module, or a one-line error saying how to install it."""
    try:
        import psycopg
    except ImportError:
        raise UserError(
            'store.backend = "postgresql" needs psycopg: install smtpguard with the fleet extra'
            " (pip install 'smtpguard[fleet]')"
        ) from None
    return psycopg


def node_name(cfg: Config) -> str:
    """``store.node``, else the host name: how this node signs the fleet's history."""
    return cfg.store.node or socket.gethostname()


def redact(dsn: str) -> str:
    """A DSN fit for a log line: any password replaced by ``***``."""
    return _PASSWORD.sub(
        lambda m: (m.group(1) or m.group(2)) + "***" + ("@" if m.group(1) else ""), dsn
    )


def explain(dsn: str, exc: BaseException) -> StoreError:
    """A psycopg error as a one-line, transient StoreError naming the server."""
    msg = " ".join(str(exc).split()) or type(exc).__name__
    return StoreError(f"{redact(dsn)}: {msg}", transient=True)


def connect(dsn: str, *, autocommit: bool = False) -> psycopg.Connection[Any]:
    """One connection (CLI commands, the listener); StoreError when unreachable."""
    pg = driver()
    try:
        return pg.connect(dsn, autocommit=autocommit, **LIVENESS)
    except pg.Error as e:
        raise explain(dsn, e) from None

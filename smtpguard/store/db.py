"""Opening the SQLite database: pragmas, schema migrations, clear errors.

One database file (``<data_dir>/smtpguard.db``) is shared by the relay, the
milter and the CLI, each in its own process. WAL mode lets readers run beside
the one writer; ``busy_timeout`` makes a second writer wait instead of failing;
``synchronous=FULL`` makes a commit durable before it returns, which is what
lets the relay answer 250 only after the message is on disk.

The schema is versioned with ``PRAGMA user_version`` and moved forward by the
ordered steps in :mod:`smtpguard.store.migrations`; a database from a newer
smtpguard is refused rather than misread.
"""

from __future__ import annotations

import contextlib
import functools
import grp
import math
import os
import sqlite3
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import aiosqlite

from smtpguard.config import ENV_DATA_DIR
from smtpguard.errors import StoreError
from smtpguard.store.migrations import MIGRATIONS

DB_NAME = "smtpguard.db"
#: The files SQLite keeps beside the database in WAL mode.
SIDE_FILES = ("-wal", "-shm")
#: After a checkpoint the WAL is cut back to this size (bytes): one big message
#: must not leave a WAL of its size behind for good.
JOURNAL_SIZE_LIMIT = 16 * 1024 * 1024


def iso(ts: float | None) -> str:
    """``1796983200.0`` -> ``"2026-12-11T10:00:00Z"``; ``None`` -> ``""``.

    Every stored time is UTC epoch seconds; this is how all of them are shown.
    """
    if ts is None:
        return ""
    return _iso_second(math.floor(ts))


@functools.lru_cache(maxsize=4096)
def _iso_second(second: int) -> str:
    # Cached: an export of a million rows formats the same few seconds over and over.
    return datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def db_path(data_dir: str | Path) -> Path:
    return Path(data_dir) / DB_NAME


def group_id(group: str) -> int | None:
    """``store.group`` as a gid (a name or a number); None when not set."""
    if not group:
        return None
    if group.isdigit():
        return int(group)
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise StoreError(f"store.group: no such group: {group!r}") from None


def _prepare_dir(data_dir: Path, gid: int | None = None) -> None:
    """Create the data directory (0700, or 0750 owned by ``store.group``) if missing."""
    if data_dir.is_dir():
        return
    try:
        data_dir.mkdir(parents=True, exist_ok=True, mode=0o700 if gid is None else 0o750)
        if gid is not None:
            os.chown(data_dir, -1, gid)
            os.chmod(data_dir, 0o750)
    except OSError as e:
        raise StoreError(f"cannot create data directory {data_dir}: {e.strerror or e}") from None


def _create_private(path: Path, gid: int | None) -> None:
    """Create the database file 0600 (0640 for ``store.group``) before SQLite opens it.

    SQLite gives the -wal and -shm files the database's permission bits, so
    queued bodies and the list are never readable by other users, whatever the
    umask. An existing file is left alone here (see :func:`_tighten`).
    """
    mode = 0o600 if gid is None else 0o640
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    except FileExistsError:
        return
    except OSError:
        return  # let the open itself explain (no permission, a directory...)
    try:
        if gid is not None:
            os.fchown(fd, -1, gid)
        os.fchmod(fd, mode)  # exactly, whatever the umask
    except OSError as e:
        os.close(fd)
        with contextlib.suppress(OSError):
            path.unlink()
        raise StoreError(f"{path}: cannot give it to store.group: {e.strerror or e}") from None
    os.close(fd)


def _tighten(path: Path, gid: int | None) -> None:
    """Database, WAL and shared-memory file: no access for others, the group only
    with ``store.group`` (only files this user owns are changed; root may fix all)."""
    mode = 0o600 if gid is None else 0o640
    uid = os.geteuid()
    for name in ("", *SIDE_FILES):
        p = path.with_name(path.name + name)
        try:
            st = os.stat(p, follow_symlinks=False)
        except OSError:
            continue
        if not stat.S_ISREG(st.st_mode) or (uid != 0 and st.st_uid != uid):
            continue
        with contextlib.suppress(OSError):
            if gid is not None and st.st_gid != gid:
                os.chown(p, -1, gid, follow_symlinks=False)
            if stat.S_IMODE(st.st_mode) != mode:
                os.chmod(p, mode)


class LocalConnection(sqlite3.Connection):
    """A sqlite3 connection that knows whether its database is a fleet node's cache.

    ``fleet`` is True when ``store.backend = "postgresql"`` attached this data
    directory to a fleet (:mod:`smtpguard.store.outbox`): then every change the
    store makes to the suppression list also leaves an outbox row, in the same
    transaction, for the replicator to push. On a plain SQLite store it stays
    False and nothing else differs.
    """

    fleet: bool = False


def _pragmas(busy_timeout: float) -> list[str]:
    return [
        f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}",
        "PRAGMA journal_mode = WAL",
        f"PRAGMA journal_size_limit = {JOURNAL_SIZE_LIMIT}",
        "PRAGMA synchronous = FULL",
        "PRAGMA foreign_keys = ON",
    ]


#: SQLite primary result codes of failures that pass by themselves: BUSY, LOCKED,
#: NOMEM, IOERR, FULL, PROTOCOL (https://sqlite.org/rescode.html).
_TRANSIENT_CODES = frozenset({5, 6, 7, 10, 13, 15})


def explain(path: Path, exc: sqlite3.Error) -> StoreError:
    """Turn a sqlite3 error into a one-line operator message naming the file."""
    msg = str(exc)
    code = getattr(exc, "sqlite_errorcode", None)
    transient = code is not None and code & 0xFF in _TRANSIENT_CODES
    if "locked" in msg or "busy" in msg:
        return StoreError(
            f"{path}: database is locked by another process (try again)", transient=True
        )
    if transient:
        return StoreError(f"{path}: database error: {msg}", transient=True)
    if "not a database" in msg or "malformed" in msg or "corrupt" in msg:
        return StoreError(f"{path}: not a smtpguard database or corrupt ({msg})")
    if "unable to open" in msg or "readonly" in msg:
        return StoreError(f"{path}: cannot open database ({msg})")
    return StoreError(f"{path}: database error: {msg}")


@contextmanager
def explained(path: Path) -> Iterator[None]:
    """sqlite3 errors inside the block become one-line StoreErrors naming ``path``
    (a plain context manager: it serves ``await`` inside async code too)."""
    try:
        yield
    except sqlite3.Error as e:
        raise explain(path, e) from None


@contextmanager
def transaction(conn: sqlite3.Connection, path: Path) -> Iterator[sqlite3.Connection]:
    """``BEGIN IMMEDIATE`` ... ``COMMIT`` on an autocommit connection: the store's one
    transaction helper (the writer thread's group commit is the other way to write).

    The write lock is taken up front, so another process waits up to the busy
    timeout instead of failing half-way; any exception rolls everything back;
    sqlite3 errors become one-line :class:`StoreError`.
    """
    with explained(path):
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise


def migrate(conn: sqlite3.Connection, path: Path) -> None:
    """Bring the schema to the newest version, one step per transaction."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > len(MIGRATIONS):
        raise StoreError(
            f"{path}: schema version {version} is newer than this smtpguard "
            f"understands ({len(MIGRATIONS)}); upgrade smtpguard"
        )
    for number in range(version + 1, len(MIGRATIONS) + 1):
        with transaction(conn, path):
            # Re-read inside the write lock: another process may have migrated meanwhile.
            if conn.execute("PRAGMA user_version").fetchone()[0] >= number:
                continue
            for statement in MIGRATIONS[number - 1]:
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {number}")


#: Set by :func:`smtpguard.store.outbox.attach`: this database is a fleet node's cache.
_FLEET_MARK = "SELECT value FROM fleet_state WHERE key = 'node'"


def _exists(path: Path) -> bool:
    """False only when the file is plainly absent; other troubles (a file where a
    directory should be, no permission) are left for the open to explain."""
    try:
        path.stat()
    except FileNotFoundError:
        return False
    except OSError:
        return True
    return True


def connect(
    data_dir: str | Path, *, busy_timeout: float = 5.0, create: bool = True, group: str = ""
) -> LocalConnection:
    """A synchronous connection (CLI, milter, benchmarks), migrated and ready.

    ``create=False`` is for commands that only read or edit existing data: a
    mistyped ``--data-dir`` must be an error, not an empty list that answers
    "not suppressed" (and leaves a stray database behind).

    The connection is in autocommit mode (``isolation_level=None``): callers
    open transactions explicitly with ``BEGIN IMMEDIATE`` so that a write lock
    is taken up front and never upgraded half-way (the classic SQLITE_BUSY trap).

    Files are private: the directory is created 0700, the database, its WAL and
    shared-memory file 0600 (0750 / 0640 owned by ``group``, ``store.group``).
    """
    data_dir = Path(data_dir)
    path = db_path(data_dir)
    if not create and not _exists(path):
        raise StoreError(
            f"{path}: no smtpguard database here (check --data-dir / {ENV_DATA_DIR}; "
            "the relay or `suppression add`/`import` creates it)"
        )
    gid = group_id(group)
    _prepare_dir(data_dir, gid)
    _create_private(path, gid)
    try:
        conn = sqlite3.connect(
            path,
            isolation_level=None,
            timeout=busy_timeout,
            check_same_thread=False,
            factory=LocalConnection,
        )
        for p in _pragmas(busy_timeout):
            conn.execute(p)
        migrate(conn, path)
        conn.fleet = conn.execute(_FLEET_MARK).fetchone() is not None
    except sqlite3.Error as e:
        raise explain(path, e) from None
    _tighten(path, gid)
    return conn


async def connect_async(
    data_dir: str | Path, *, busy_timeout: float = 5.0, group: str = ""
) -> aiosqlite.Connection:
    """An aiosqlite connection for the event loop (relay), migrated and ready."""
    data_dir = Path(data_dir)
    path = db_path(data_dir)
    # Migrate with a short-lived sync connection: simpler, and it runs once at start-up.
    connect(data_dir, busy_timeout=busy_timeout, group=group).close()
    try:
        conn = await aiosqlite.connect(path, isolation_level=None, timeout=busy_timeout)
        for p in _pragmas(busy_timeout):
            await conn.execute(p)
    except sqlite3.Error as e:
        raise explain(path, e) from None
    return conn

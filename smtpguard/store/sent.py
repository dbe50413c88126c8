"""What we sent, as returned mail asks about it: the relay's queue and the milter's messages.

A signed return path names a message id and a recipient (:mod:`smtpguard.intake.verp`).
Two senders give out such ids:

* the relay's queue: ``queue_messages.id``, counted from 1;
* the milter, which rewrites the envelope sender of outgoing mail it sees inside
  Postfix (``milter.rewrite_sender``) and has no queue of its own: each message it signs
  is a row of ``milter_messages`` (the Postfix queue id, the sender, the recipient), and
  its token id is that row's id plus :data:`MILTER_IDS`.

The two ranges never meet: a token's 40-bit message id below :data:`MILTER_IDS` names a
queued message, at or above it a milter row (the queue would need 2**39 messages to
reach it). So whatever receives returned mail - the intake listener, the offline feed,
the milter - asks one question of one database, and the answer is the same for mail the
relay sent and mail that only went through Postfix:

* :func:`was_sent`: could message N have gone to this recipient?
* :func:`recipients`: whom did message N go to? (A complaint whose report redacts the
  recipient is matched against these by the token's keyed tag.)

SQL for ``milter_messages`` stays here; the queue's own questions are answered by
:mod:`smtpguard.store.queue`.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from pathlib import Path

from smtpguard.address import normalize_address
from smtpguard.errors import AddressError
from smtpguard.store import queue
from smtpguard.store.db import connect, db_path, explained

#: First token id of the milter's own messages (the queue's ids stay below).
MILTER_IDS = 2**39
#: The largest token id (the token's message id field is 40 bits).
MAX_ID = 2**40 - 1


def note_milter_message(
    conn: sqlite3.Connection, postfix_qid: str, sender: str, recipient: str, now: float
) -> int:
    """Record one message the milter signs; returns the token id that names it."""
    row = conn.execute(
        "INSERT INTO milter_messages (postfix_qid, sender, recipient, sent_at)"
        " VALUES (?, ?, ?, ?) RETURNING id",
        (postfix_qid[:64], sender[:320], recipient[:320], now),
    ).fetchone()
    token_id = MILTER_IDS + int(row[0])
    if token_id > MAX_ID:
        raise OverflowError("the milter's return path ids are used up")
    return token_id


def purge_milter_messages(conn: sqlite3.Connection, before: float, limit: int = 1000) -> int:
    """Delete milter rows sent before ``before`` (every token naming them has expired)."""
    cur = conn.execute(
        "DELETE FROM milter_messages WHERE id IN"
        " (SELECT id FROM milter_messages WHERE sent_at < ? ORDER BY sent_at LIMIT ?)",
        (before, limit),
    )
    return cur.rowcount


def _milter_recipient(conn: sqlite3.Connection, token_id: int) -> str | None:
    row = conn.execute(
        "SELECT recipient FROM milter_messages WHERE id = ?", (token_id - MILTER_IDS,)
    ).fetchone()
    return str(row[0]) if row is not None else None


def _milter_id_given(conn: sqlite3.Connection, token_id: int) -> bool:
    row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'milter_messages'").fetchone()
    return row is not None and 0 < token_id - MILTER_IDS <= row[0]


def was_sent(conn: sqlite3.Connection, message_id: int, recipient: str) -> bool:
    """Could message ``message_id`` (a token's id) have gone to ``recipient``?

    As :func:`smtpguard.store.queue.was_sent` for the queue's ids; for the milter's:
    yes when its row names that recipient (compared normalised), and when the row is
    gone but its id was given out (purged after its tokens expired); no otherwise.
    """
    if message_id < MILTER_IDS:
        return queue.was_sent(conn, message_id, recipient)
    sent_to = _milter_recipient(conn, message_id)
    if sent_to is None:
        return _milter_id_given(conn, message_id)
    return _same(sent_to, recipient)


def recipients(conn: sqlite3.Connection, message_id: int) -> list[str]:
    """Whom message ``message_id`` went to ([] when not known, or no longer known)."""
    if message_id < MILTER_IDS:
        return queue.message_recipients(conn, message_id)
    sent_to = _milter_recipient(conn, message_id)
    return [sent_to] if sent_to is not None else []


def _same(a: str, b: str) -> bool:
    with contextlib.suppress(AddressError):
        return normalize_address(a) == normalize_address(b)
    return False


class SentLookup:
    """Read-only answers about what was sent, for code that runs in threads (the intake
    listener's worker, the milter's sessions, the offline feed): one connection, one
    question at a time (each is an indexed read)."""

    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        self._conn = conn
        self._path = path
        self._lock = threading.Lock()

    @classmethod
    def open(
        cls, data_dir: str | Path, *, busy_timeout: float = 5.0, group: str = ""
    ) -> SentLookup:
        conn = connect(data_dir, busy_timeout=busy_timeout, group=group)
        return cls(conn, db_path(data_dir))

    def was_sent(self, message_id: int, recipient: str) -> bool:
        """See :func:`was_sent`."""
        with self._lock, explained(self._path):
            return was_sent(self._conn, message_id, recipient)

    def recipients(self, message_id: int) -> list[str]:
        """See :func:`recipients`."""
        with self._lock, explained(self._path):
            return recipients(self._conn, message_id)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

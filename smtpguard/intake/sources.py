"""Stored mail for the offline feed: a message file, a directory, an mbox, a Maildir, stdin.

Mailboxes that collected bounces before smtpguard was in place are fed through the same
pipeline as the listener (``smtpguard intake``). What each source is, is decided by
looking at it: a directory with ``cur/`` and ``new/`` is a Maildir (RFC-less but
universal: Courier, Dovecot, Postfix ``home_mailbox = Maildir/``); another directory is
walked for files in sorted order; a file that starts with ``From `` is an mbox (read as
mboxrd: ``>From `` lines are unescaped); any other file is one message; ``-`` is stdin,
one message or an mbox.

Each message is read up to :data:`MAX_MESSAGE` bytes: the classifier looks at the first
512 KiB, and a DSN's report is at the top; what follows is the returned original.
"""

from __future__ import annotations

import mailbox
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from smtpguard.errors import UserError

MAX_MESSAGE = 4 * 1024 * 1024
_FROM_LINE = re.compile(rb"^>+From ", re.MULTILINE)


def _mbox_split(data: bytes) -> Iterator[bytes]:
    """Messages of an mbox held in memory (stdin): a ``From `` line after a blank line
    (or at the start) begins a message."""
    start = None
    pos = 0
    blank = True  # the line before: the start of the data counts as blank
    for line in data.splitlines(keepends=True):
        if blank and line.startswith(b"From "):
            if start is not None:
                yield data[start:pos]
            start = pos + len(line)
        blank = line in (b"\n", b"\r\n")
        pos += len(line)
    if start is not None:
        yield data[start:pos]


def _unescape(message: bytes) -> bytes:
    """mboxrd: one ``>`` less before a quoted ``From `` line."""
    return _FROM_LINE.sub(lambda m: m.group(0)[1:], message)


def _read(path: Path, name: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(MAX_MESSAGE)
    except OSError as e:
        raise UserError(f"{name}: cannot read: {e.strerror or e}") from None


def _mbox_file(path: Path, name: str) -> Iterator[tuple[str, bytes]]:
    try:
        box = mailbox.mbox(path, create=False)
        for n, key in enumerate(box.iterkeys(), start=1):
            yield f"{name}:{n}", _unescape(box.get_bytes(key)[:MAX_MESSAGE])
    except (OSError, mailbox.Error) as e:
        raise UserError(f"{name}: cannot read the mbox: {e}") from None


def _maildir(path: Path, name: str) -> Iterator[tuple[str, bytes]]:
    try:
        box = mailbox.Maildir(path, factory=None, create=False)
        for key in sorted(box.iterkeys()):
            yield f"{name}/{key}", box.get_bytes(key)[:MAX_MESSAGE]
    except (OSError, mailbox.Error) as e:
        raise UserError(f"{name}: cannot read the Maildir: {e}") from None


def _file(path: Path, name: str) -> Iterator[tuple[str, bytes]]:
    data = _read(path, name)
    if data.startswith(b"From "):
        yield from _mbox_file(path, name)
    else:
        yield name, data


def messages(source: str, *, stdin: BinaryIO | None = None) -> Iterator[tuple[str, bytes]]:
    """(name, bytes) of every message in ``source`` (see the module doc)."""
    if source == "-":
        data = (stdin or sys.stdin.buffer).read(MAX_MESSAGE)
        if data.startswith(b"From "):
            for n, message in enumerate(_mbox_split(data), start=1):
                yield f"-:{n}", _unescape(message)
        else:
            yield "-", data
        return
    path = Path(source)
    if path.is_dir():
        if (path / "cur").is_dir() and (path / "new").is_dir():
            yield from _maildir(path, source)
            return
        for f in sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".")):
            yield from _file(f, str(f))
    elif path.is_file():
        yield from _file(path, source)
    elif path.exists():
        raise UserError(f"{source}: not a regular file or directory")
    else:
        raise UserError(f"{source}: no such file or directory")

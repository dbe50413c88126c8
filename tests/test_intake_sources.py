"""Stored bounces for the offline feed: file, directory, mbox, Maildir, stdin."""

from __future__ import annotations

import io
import mailbox
from pathlib import Path

import pytest

from smtpguard.errors import UserError
from smtpguard.intake.sources import messages

A = b"From: MAILER-DAEMON@example.org\nSubject: one\n\nFrom the start\n"
B = b"From: MAILER-DAEMON@example.org\nSubject: two\n\nsecond\n"


def subjects(items: list[tuple[str, bytes]]) -> list[bytes]:
    return [line for _, m in items for line in m.splitlines() if line.startswith(b"Subject")]


def test_single_file_is_one_message(tmp_path: Path) -> None:
    (tmp_path / "a.eml").write_bytes(A)
    assert list(messages(str(tmp_path / "a.eml"))) == [(str(tmp_path / "a.eml"), A)]


def test_directory_is_walked_in_sorted_order_skipping_dot_files(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "2").write_bytes(B)
    (tmp_path / "1.eml").write_bytes(A)
    (tmp_path / ".hidden").write_bytes(b"x")
    assert subjects(list(messages(str(tmp_path)))) == [b"Subject: one", b"Subject: two"]


def test_mbox_file_is_split_and_unescaped(tmp_path: Path) -> None:
    box = mailbox.mbox(tmp_path / "bounces.mbox")
    box.add(A)
    box.add(B)
    box.flush()
    items = list(messages(str(tmp_path / "bounces.mbox")))
    assert [name for name, _ in items] == [
        f"{tmp_path}/bounces.mbox:1",
        f"{tmp_path}/bounces.mbox:2",
    ]
    assert b"\nFrom the start" in items[0][1]  # ">From" written by mailbox, read back as "From"


def test_maildir_is_read_with_every_message(tmp_path: Path) -> None:
    box = mailbox.Maildir(tmp_path / "Maildir")
    box.add(A)
    box.add(B)
    assert sorted(subjects(list(messages(str(tmp_path / "Maildir"))))) == [
        b"Subject: one",
        b"Subject: two",
    ]


def test_stdin_message_and_stdin_mbox() -> None:
    assert list(messages("-", stdin=io.BytesIO(A))) == [("-", A)]
    escaped = A.replace(b"\nFrom ", b"\n>From ")
    mbox = (
        b"From a@b Mon Jan  1 00:00:00 2024\n"
        + escaped
        + b"\nFrom a@b Mon Jan  1 00:00:00 2024\n"
        + B
    )
    items = list(messages("-", stdin=io.BytesIO(mbox)))
    assert [n for n, _ in items] == ["-:1", "-:2"]
    assert subjects(items) == [b"Subject: one", b"Subject: two"]
    assert b"\nFrom the start" in items[0][1]


def test_missing_source_is_a_one_line_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no such file or directory"):
        list(messages(str(tmp_path / "nope")))

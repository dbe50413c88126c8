"""Reading logs in blocks: line counting, candidates, cut lines, gzip, follow across rotation."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

from smtpguard.ops.logread import MAX_LINE, Follower, LineFilter, open_source, read_lines

NEEDLES = (b"status=bounced",)
HIT = b"x postfix/smtp[1]: ID: to=<a@b>, status=bounced (no)"


def feed_all(blocks: list[bytes]) -> tuple[LineFilter, list[tuple[int, bytes]]]:
    f = LineFilter(NEEDLES)
    out = [line for block in blocks for line in f.feed(block)] + f.finish()
    return f, [(line.lineno, line.data) for line in out]


def test_lines_are_counted_and_hits_numbered() -> None:
    f, hits = feed_all([b"one\n" + HIT + b"\nthree\n" + HIT + b"\n"])
    assert f.lines == 4
    assert hits == [(2, HIT), (4, HIT)]


def test_a_line_split_across_blocks_is_found_once() -> None:
    data = b"noise\n" * 3 + HIT + b"\n" + b"tail\n"
    for cut in range(1, len(data)):
        f, hits = feed_all([data[:cut], data[cut:]])
        assert hits == [(4, HIT)], cut
        assert f.lines == 5


def test_last_line_without_newline_counts() -> None:
    f, hits = feed_all([b"a\n" + HIT])
    assert (f.lines, hits) == (2, [(2, HIT)])


def test_over_long_lines_are_cut_and_counted() -> None:
    long_hit = HIT + b"x" * (3 * MAX_LINE)
    f, hits = feed_all([long_hit[:5000], long_hit[5000:] + b"\n" + HIT + b"\n"])
    assert [len(d) for _, d in hits] == [MAX_LINE, len(HIT)]
    assert (f.lines, f.long_lines) == (2, 1)
    f, hits = feed_all([b"a\n" + long_hit + b"\nb\n"])  # inside one block
    assert [len(d) for _, d in hits] == [MAX_LINE] and f.long_lines == 1


def test_gzip_is_recognized_by_content(tmp_path: Path) -> None:
    p = tmp_path / "mail.log.2"  # no .gz: rotated archives are not always named so
    p.write_bytes(gzip.compress(b"a\n" + HIT + b"\n"))
    source = open_source(str(p))
    f = LineFilter(NEEDLES)
    assert [line.data for line in read_lines(source, f)] == [HIT]
    source.close()


def test_follower_survives_rename_rotation(tmp_path: Path) -> None:
    log = tmp_path / "mail.log"
    log.write_bytes(HIT + b"\n")
    follower = Follower(str(log), NEEDLES)
    assert [x.lineno for x in follower.poll()] == [1]
    os.rename(log, tmp_path / "mail.log.1")
    with open(tmp_path / "mail.log.1", "ab") as old:  # the writer has not reopened yet
        old.write(HIT + b"\n")
    assert [x.lineno for x in follower.poll()] == [2]  # still the old file: no new one yet
    log.write_bytes(b"new\n" + HIT + b"\n")
    assert [x.lineno for x in follower.poll()] == [2]  # the new file, from its start
    assert (follower.rotations, follower.lines) == (1, 4)
    follower.close()


def test_follower_starts_over_after_copytruncate(tmp_path: Path) -> None:
    log = tmp_path / "mail.log"
    log.write_bytes(b"a\nb\n" + HIT + b"\n")
    follower = Follower(str(log), NEEDLES)
    assert len(follower.poll()) == 1
    with open(log, "r+b") as f:
        f.truncate(0)
    log.write_bytes(HIT + b"\n")
    assert [x.lineno for x in follower.poll()] == [1]
    follower.close()


def test_follower_from_end_skips_existing_lines(tmp_path: Path) -> None:
    log = tmp_path / "mail.log"
    log.write_bytes(HIT + b"\n")
    follower = Follower(str(log), NEEDLES, from_end=True)
    assert follower.poll() == []
    with open(log, "ab") as f:
        f.write(HIT + b"\n")
    assert len(follower.poll()) == 1
    follower.close()

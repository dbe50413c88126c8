"""Reading mail logs in constant memory: plain, rotated, gzip-compressed, stdin, followed.

Logs are read in 1 MiB blocks. :class:`LineFilter` splits blocks into lines
without a Python loop per line: it counts newlines with ``bytes.count`` and
finds candidate lines with ``bytes.find`` on the needles (the substrings every
interesting line contains), so a line that matters costs a slice and a line
that does not costs nothing. Lines are cut to :data:`MAX_LINE` bytes before
anyone parses them, and a line longer than that (a hostile or broken log) is
kept only up to the cut: memory stays bounded by the block size whatever the
input.

:class:`Follower` is ``tail -F``: it reads a file to its end, then polls; when
the path names a new file (rotation by rename) it finishes the old one and
starts the new one from its beginning; when the file shrinks (copytruncate) it
starts over; a path that disappears is waited for.
"""

from __future__ import annotations

import gzip
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from smtpguard.errors import UserError

BLOCK = 1 << 20
#: Longest line handed to a parser; the rest of a longer line is dropped.
MAX_LINE = 8192
_GZIP_MAGIC = b"\x1f\x8b"


@dataclass(frozen=True, slots=True)
class Line:
    """A candidate line: where it is (1-based line number) and its bytes, cut."""

    lineno: int
    data: bytes


class LineFilter:
    """Feed blocks, get back the complete lines that contain any needle.

    Keeps at most one partial line (at most :data:`MAX_LINE` bytes) between blocks.
    """

    def __init__(self, needles: tuple[bytes, ...]) -> None:
        self.needles = needles
        self.lines = 0  # complete lines seen
        self.bytes = 0  # bytes fed (uncompressed)
        self.long_lines = 0  # lines cut at MAX_LINE
        self._carry = b""
        self._overflow = False  # dropping the tail of an over-long partial line

    def feed(self, block: bytes) -> list[Line]:
        out: list[Line] = []
        self.bytes += len(block)
        nl = block.find(b"\n")
        if nl < 0:
            self._extend(block)
            return out
        self._extend(block[:nl])
        self._finish_line(out)
        body_end = block.rfind(b"\n") + 1
        if body_end > nl + 1:
            self._scan(block, nl + 1, body_end, out)
        self._extend(block[body_end:])
        return out

    def finish(self) -> list[Line]:
        """The last line when the input does not end in a newline."""
        out: list[Line] = []
        if self._carry or self._overflow:
            self._finish_line(out)
        return out

    def _extend(self, data: bytes) -> None:
        if self._overflow or not data:
            return
        room = MAX_LINE - len(self._carry)
        if len(data) > room:
            self._overflow = True
        self._carry += data[:room]

    def _finish_line(self, out: list[Line]) -> None:
        self.lines += 1
        line = self._carry
        if self._overflow:
            self.long_lines += 1
        if any(n in line for n in self.needles):
            out.append(Line(self.lines, line))
        self._carry, self._overflow = b"", False

    def _scan(self, block: bytes, start: int, end: int, out: list[Line]) -> None:
        """Lines of ``block[start:end]`` (complete lines) that contain a needle, in order."""
        spans: dict[int, int] = {}
        for needle in self.needles:
            i = block.find(needle, start, end)
            while i >= 0:
                s = block.rfind(b"\n", start, i) + 1 or start
                e = block.find(b"\n", i, end)
                spans[s] = e
                i = block.find(needle, e, end)
        counted = start
        base = self.lines
        for s in sorted(spans):
            base += block.count(b"\n", counted, s)
            counted = s
            e = spans[s]
            if e - s > MAX_LINE:
                self.long_lines += 1
            out.append(Line(base + 1, block[s : min(e, s + MAX_LINE)]))
        self.lines += block.count(b"\n", start, end)


# --------------------------------------------------------------------------- inputs


@dataclass
class Source:
    """One input: a path or stdin ("-"), decompressed if it is gzip."""

    name: str
    stream: BinaryIO
    raw: BinaryIO  # the file itself (its position is the progress)
    size: int | None  # bytes on disk, None for stdin or a pipe

    def position(self) -> int:
        try:
            return self.raw.tell()
        except OSError:
            return 0

    def close(self) -> None:
        if self.stream is not self.raw:
            self.stream.close()
        if self.raw is not sys.stdin.buffer:
            self.raw.close()


def check_inputs(names: list[str]) -> None:
    """Every path is a readable regular file (checked before any output)."""
    for name in names:
        if name == "-":
            continue
        p = Path(name)
        if not p.exists():
            raise UserError(f"{name}: no such file")
        if not p.is_file():
            raise UserError(f"{name}: not a regular file")
        if not os.access(p, os.R_OK):
            raise UserError(f"{name}: cannot read: permission denied")


def is_gzip(path: str) -> bool:
    with open(path, "rb") as f:
        return f.read(2) == _GZIP_MAGIC


def open_source(name: str) -> Source:
    """Open a path or "-"; gzip is recognized by its magic bytes, not its name."""
    if name == "-":
        raw: BinaryIO = sys.stdin.buffer
        size = None
    else:
        try:
            raw = open(name, "rb")  # noqa: SIM115 - closed by Source.close
        except OSError as e:
            raise UserError(f"{name}: cannot read: {e.strerror or e}") from None
        size = os.fstat(raw.fileno()).st_size
    peek = getattr(raw, "peek", None)
    head = peek(2)[:2] if peek else b""
    if head == _GZIP_MAGIC:
        return Source(name, gzip.GzipFile(fileobj=raw, mode="rb"), raw, size)
    return Source(name, raw, raw, size)


def read_lines(
    source: Source, lines: LineFilter, progress: Callable[[int], None] | None = None
) -> Iterator[Line]:
    """Candidate lines of a whole input; ``lines`` counts them; ``progress`` gets the
    position in the file (compressed bytes for gzip) after each block."""
    while True:
        try:
            block = source.stream.read(BLOCK)
        except (OSError, EOFError, gzip.BadGzipFile) as e:
            raise UserError(f"{source.name}: {e}") from None
        if not block:
            break
        yield from lines.feed(block)
        if progress is not None:
            progress(source.position())
    yield from lines.finish()


# --------------------------------------------------------------------------- follow


class Follower:
    """``tail -F`` for one path: poll() returns the new candidate lines, never blocks."""

    def __init__(self, path: str, needles: tuple[bytes, ...], *, from_end: bool = False) -> None:
        self.path = path
        self.needles = needles
        self.filter = LineFilter(needles)  # one per file: line numbers restart on rotation
        self._done = (0, 0, 0)  # lines, bytes, long lines of files already rotated away
        self.rotations = 0
        self._file: BinaryIO | None = None
        self._id: tuple[int, int] | None = None
        self._open(from_end=from_end)

    def _open(self, *, from_end: bool = False) -> None:
        try:
            f = open(self.path, "rb")  # noqa: SIM115 - closed on rotation or close()
        except FileNotFoundError:
            return  # rotated away and not yet recreated: wait for it
        except OSError as e:
            raise UserError(f"{self.path}: cannot read: {e.strerror or e}") from None
        st = os.fstat(f.fileno())
        if from_end:
            f.seek(0, os.SEEK_END)
        self._file, self._id = f, (st.st_dev, st.st_ino)

    def poll(self) -> list[Line]:
        out: list[Line] = []
        for _ in range(2):  # the second round reads a file just reopened
            if self._file is None:
                self._open()
                if self._file is None:
                    return out  # rotated away and not recreated yet
            if self._read(out):
                return out  # a lot at once: let the caller catch up first
            if not self._switched(out):
                break
        return out

    def _read(self, out: list[Line]) -> bool:
        """Read to the end of the file (or 1000 hits); True if stopped early."""
        assert self._file is not None
        while block := self._file.read(BLOCK):
            out += self.filter.feed(block)
            if len(out) > 1000:
                return True
        return False

    def _switched(self, out: list[Line]) -> bool:
        """At the end of the file: did the path move on (rotation, truncation)?"""
        assert self._file is not None
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return False  # renamed away: keep the old file until a new one appears
        if (st.st_dev, st.st_ino) != self._id:
            # Rotated: what the writer added before switching is in the old file.
            while block := self._file.read(BLOCK):
                out += self.filter.feed(block)
            out += self.filter.finish()
            self._file.close()
            self._file = None
            self.rotations += 1
            self._next_filter()
            return True
        if st.st_size < self._file.tell():
            out += self.filter.finish()
            self._file.seek(0)  # truncated in place (copytruncate)
            self._next_filter()
            return True
        return False

    def _next_filter(self) -> None:
        f = self.filter
        lines, nbytes, long_lines = self._done
        self._done = (lines + f.lines, nbytes + f.bytes, long_lines + f.long_lines)
        self.filter = LineFilter(self.needles)

    @property
    def lines(self) -> int:
        return self._done[0] + self.filter.lines

    @property
    def bytes(self) -> int:
        return self._done[1] + self.filter.bytes

    @property
    def long_lines(self) -> int:
        return self._done[2] + self.filter.long_lines

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

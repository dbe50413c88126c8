"""The suppression list's file format: what ``export`` writes and ``import`` reads.

CSV with a header, or JSON Lines, with the columns of :data:`EXPORT_COLUMNS`
(plus ``note``; ``email`` or ``recipient`` for ``address``). :func:`parse_import`
turns a file into observations (or the problems of its bad lines) without
touching the database; :class:`Parser` runs it in a second process, so that on
two cores parsing and writing a million-row import overlap.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import json
import multiprocessing
import multiprocessing.connection
import operator
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from smtpguard.errors import UserError
from smtpguard.store.entries import Observation, make_observation

#: Columns of ``export`` (CSV header / JSON keys); ``import`` reads the same ones.
EXPORT_COLUMNS = (
    "address",
    "kind",
    "reason",
    "status",
    "reply_code",
    "diagnostic",
    "source",
    "first_seen",
    "last_seen",
    "count",
    "expires",
    "evidence",
)
IMPORT_COLUMNS = (*EXPORT_COLUMNS, "note")
_TIME_COLUMNS = ("first_seen", "last_seen", "expires")
#: Header names accepted for the address column besides "address".
ADDRESS_ALIASES = ("email", "recipient")
#: How many bad lines an import error names in full.
SHOWN_PROBLEMS = 5

# Spreadsheet formula injection (OWASP "CSV Injection"): a cell starting with one
# of these is read as a formula by Excel, LibreOffice and Google Sheets, and a
# diagnostic is remote text. Such a cell is written with a leading single quote.
_FORMULA_START = frozenset("=+-@\t\r")
_QUOTED_START = _FORMULA_START | {"'"}


def csv_cell(value: str) -> str:
    """A value as ``export`` writes it to CSV: never starting like a formula.

    ``=1+2`` becomes ``'=1+2``. So that :func:`csv_value` can tell an added quote
    from a quote of the value's own, a value starting with a quote followed by a
    formula character or another quote gets one more quote too; any other value
    (``'bob@example.com`` included) is written as it is.
    """
    first = value[:1]
    if first in _FORMULA_START or (first == "'" and value[1:2] in _QUOTED_START):
        return "'" + value
    return value


def csv_value(cell: str) -> str:
    """The value of a CSV cell as :func:`csv_cell` wrote it (``import`` reads every
    CSV cell this way: ``'=x`` is ``=x``, ``''x`` is ``'x``, ``'x`` stays ``'x``)."""
    if cell[:1] == "'" and cell[1:2] in _QUOTED_START:
        return cell[1:]
    return cell


def parse_time(text: str | float | int, *, what: str) -> float:
    """Epoch seconds from ``1796983200``, ``"2026-12-11"``, ``"2026-12-11T10:00:00Z"``.

    An ISO 8601 time without an offset is UTC.
    """
    if isinstance(text, bool):
        raise UserError(f"{what}: expected a time, not {text!r}")
    if isinstance(text, (int, float)):
        return float(text)
    value = text.strip()
    try:
        return float(value)
    except ValueError:
        pass
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise UserError(
            f"{what}: expected an ISO 8601 time like 2026-12-11T10:00:00Z or epoch seconds, "
            f"not {text!r}"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


@dataclass(frozen=True, slots=True)
class Problem:
    """One record that cannot be imported, and why (``unit``: ``record`` in a JSON list)."""

    line: int
    message: str
    unit: str = "line"

    def __str__(self) -> str:
        return f"{self.unit} {self.line}: {self.message}"


#: What reads an import file: ``(lines, fmt, path, reason, expires)`` -> records.
ParseFunction = Callable[
    [Any, str, str, str, "float | None"], Iterator[tuple[int, "Observation | Problem"]]
]


class _ByteCounter:
    """Iterates a binary file as text lines, counting bytes for the progress bar.

    Undecodable bytes are kept as surrogates (and ``saw_bad_bytes`` set) so the
    parser can name the line instead of failing the whole file.
    """

    def __init__(self, f: IO[bytes]) -> None:
        self._f = f
        self.bytes = 0
        self.saw_bad_bytes = False

    def __iter__(self) -> Iterator[str]:
        first = True
        for raw in self._f:
            self.bytes += len(raw)
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                line = raw.decode("utf-8", "surrogateescape")
                self.saw_bad_bytes = True
            if first:
                line = line.removeprefix("\ufeff")
                first = False
            yield line


_SURROGATE = re.compile("[\udc80-\udcff]")


def _not_utf8(lines: Any, value: str) -> bool:
    return getattr(lines, "saw_bad_bytes", True) and _SURROGATE.search(value) is not None


def _when(value: str | float | None, key: str) -> float | None:
    if value is None or value == "":
        return None
    return parse_time(value, what=key)


def _observation(
    fields: dict[str, Any], default_reason: str, default_expires: float | None
) -> Observation:
    """One import row -> an Observation.

    ``fields`` holds the non-empty values only, text already stripped (see
    :func:`_csv_fields`, :func:`_json_fields`); this runs once per row of a
    million-row import, so it stays lean.
    """
    g = fields.get
    address = g("address")
    if not address:
        raise UserError("address is empty")
    # A bare word without '@' is a typo far more often than a domain: in a file,
    # a whole domain must say so (kind=domain, or written as @example.com).
    kind = g("kind") or ("domain" if address.startswith("@") else "address")
    count = g("count", 1)
    if isinstance(count, str):
        if not count.isdigit():
            raise UserError(f"count: expected a whole number, not {count!r}")
        count = int(count)
    expires = _when(g("expires"), "expires")
    evidence = g("evidence", "")
    return make_observation(
        address,
        g("reason") or default_reason,
        source=g("source") or ("" if evidence else "import"),
        evidence=evidence,
        kind=kind,
        status=g("status", ""),
        reply_code=g("reply_code", ""),
        diagnostic=g("diagnostic", ""),
        expires=default_expires if expires is None else expires,
        note=g("note", ""),
        first_seen=_when(g("first_seen"), "first_seen"),
        last_seen=_when(g("last_seen"), "last_seen"),
        count=count,
    )


def _json_fields(obj: dict[str, Any]) -> dict[str, Any]:
    """A JSON Lines object's values, checked and stripped like CSV cells."""
    fields: dict[str, Any] = {}
    for key, value in obj.items():
        k = "address" if key in ADDRESS_ALIASES else key
        if k not in IMPORT_COLUMNS:
            raise UserError(f"unknown key {key!r}")
        if value is None:
            continue
        numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
        if numeric and (k in _TIME_COLUMNS or (k == "count" and isinstance(value, int))):
            fields[k] = value
        elif isinstance(value, str):
            if value.strip():
                fields[k] = value.strip()
        else:
            raise UserError(f"{key}: expected text, not {value!r}")
    return fields


def _header(names: list[str], path: str) -> list[str]:
    columns = []
    for name in names:
        key = name.strip().lower()
        if key in ADDRESS_ALIASES:
            key = "address"
        if key not in IMPORT_COLUMNS:
            raise UserError(
                f"{path}: line 1: unknown column {name!r} (known: {', '.join(IMPORT_COLUMNS)})"
            )
        columns.append(key)
    if "address" not in columns:
        raise UserError(f"{path}: line 1: the header has no 'address' column")
    if len(set(columns)) != len(columns):
        raise UserError(f"{path}: line 1: a column appears twice in the header")
    return columns


def csv_rows(
    lines: Any, path: str, columns_of: Callable[[list[str], str], list[str]]
) -> Iterator[tuple[int, dict[str, str] | Problem]]:
    """(line number, {column: value} or Problem) for every data row of a CSV file.

    ``columns_of(header, path)`` names the columns (and raises UserError for a header
    it refuses); a row's empty cells are left out of its dict, the others stripped and unquoted
    (:func:`csv_value`).
    """
    reader = csv.reader(lines, strict=True)
    try:
        header = next(reader)
    except StopIteration:
        raise UserError(f"{path}: empty file (expected a CSV header)") from None
    except csv.Error as e:
        raise UserError(f"{path}: line 1: malformed CSV header: {e}") from None
    columns = columns_of(header, path)
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            yield reader.line_num, Problem(reader.line_num, f"malformed CSV: {e}")
            continue
        line = reader.line_num
        if not row or (len(row) == 1 and not row[0].strip()):
            continue
        if len(row) != len(columns):
            yield line, Problem(line, f"expected {len(columns)} fields, got {len(row)}")
        elif _not_utf8(lines, "\x00".join(row)):
            yield line, Problem(line, "not UTF-8 text")
        else:
            # csv_value undoes the formula-injection quote our own export adds.
            fields = {}
            for k, cell in zip(columns, row, strict=True):
                if cell and (value := csv_value(cell).strip()):
                    fields[k] = value
            yield line, fields


def parse_import(
    lines: Any, fmt: str, path: str, default_reason: str, default_expires: float | None
) -> Iterator[tuple[int, Observation | Problem]]:
    """Yield (line number, Observation or Problem) for every record of the file."""
    if fmt == "csv":
        for line, fields in csv_rows(lines, path, _header):
            if isinstance(fields, Problem):
                yield line, fields
                continue
            try:
                item: Observation | Problem = _observation(fields, default_reason, default_expires)
            except UserError as e:
                item = Problem(line, str(e))
            yield line, item
    else:
        for line, text in enumerate(lines, start=1):
            if not text.strip():
                continue
            if _not_utf8(lines, text):
                yield line, Problem(line, "not UTF-8 text")
                continue
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as e:
                yield line, Problem(line, f"invalid JSON: {e.msg} at column {e.colno}")
                continue
            if not isinstance(obj, dict):
                yield line, Problem(line, "expected a JSON object per line")
                continue
            try:
                result: Observation | Problem = _observation(
                    _json_fields(obj), default_reason, default_expires
                )
            except UserError as e:
                result = Problem(line, str(e))
            yield line, result


def detect_format(path: Path, f: IO[bytes]) -> str:
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return "csv"
    if suffix in (".jsonl", ".ndjson", ".json"):
        return "jsonl"
    head = f.peek(64) if hasattr(f, "peek") else b""
    return "jsonl" if head.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"{") else "csv"


def line_numbers(problems: list[Problem]) -> str:
    """``"3, 17, 20"``: the first 50 bad lines' numbers, then ``", ..."``."""
    numbers = ", ".join(str(p.line) for p in problems[:50])
    return numbers + (", ..." if len(problems) > 50 else "")


def problems_message(path: str, problems: list[Problem]) -> str:
    numbers = line_numbers(problems)
    details = "; ".join(str(p) for p in problems[:SHOWN_PROBLEMS])
    unit = problems[0].unit if problems else "line"
    return (
        f"{path}: {len(problems)} invalid {unit}{'s' if len(problems) != 1 else ''} ({numbers}); "
        f"nothing imported (--skip-invalid imports the rest); {details}"
    )


PARSE_BATCH = 5000
_obs_fields = operator.attrgetter(*(f.name for f in dataclasses.fields(Observation)))


def _parse_worker(
    path: str,
    fmt: str,
    reason: str,
    expires: float | None,
    out: multiprocessing.connection.Connection,
    parse: ParseFunction,
    name: str,
) -> None:
    """The parser process: read and validate the file, send batches to the writer."""
    try:
        with open(path, "rb") as f:
            lines = _ByteCounter(f)
            # Plain tuples: pickling them costs a fifth of pickling dataclasses.
            batch: list[tuple[Any, ...]] = []
            bad: list[Problem] = []
            rows = 0
            for _line, item in parse(lines, fmt, name, reason, expires):
                rows += 1
                if isinstance(item, Problem):
                    bad.append(item)
                else:
                    batch.append(_obs_fields(item))
                if rows % PARSE_BATCH == 0:
                    out.send(("rows", batch, bad, lines.bytes, rows))
                    batch, bad = [], []
            out.send(("rows", batch, bad, lines.bytes, rows))
        out.send(("done",))
    except BrokenPipeError:
        pass  # the writer gave up (an error, ^C): nothing left to do
    except KeyboardInterrupt:
        pass  # the writer sees ^C too and rolls back
    except BaseException as e:  # one line for the operator, never a child's traceback
        if isinstance(e, UserError):
            message = str(e)
        elif isinstance(e, OSError):
            message = f"{name}: cannot read: {e.strerror or e}"
        else:
            message = f"{name}: import parser failed: {type(e).__name__}: {e}"
        with contextlib.suppress(OSError):
            out.send(("error", message))
    finally:
        out.close()


class Parser:
    """Parses an import file in a second process while this one writes.

    Parsing and validating (normalising every address) costs about as much as
    writing it to SQLite; on two cores the two halves of a million-row import
    overlap. Iterating yields ``(observations, problems, bytes read, rows)``.
    ``parse`` reads the records (:func:`parse_import`, or another format's reader);
    ``name`` is what messages call the file (default: ``path``).
    """

    def __init__(
        self,
        path: str,
        fmt: str,
        reason: str,
        expires: float | None,
        parse: ParseFunction = parse_import,
        *,
        name: str | None = None,
    ) -> None:
        ctx = multiprocessing.get_context("fork")
        self._path = name or path
        self._recv, send = ctx.Pipe(duplex=False)
        self._proc = ctx.Process(
            target=_parse_worker,
            args=(path, fmt, reason, expires, send, parse, self._path),
            daemon=True,
        )
        self._proc.start()
        send.close()

    def __iter__(self) -> Iterator[tuple[list[Observation], list[Problem], int, int]]:
        while True:
            try:
                msg = self._recv.recv()
            except EOFError:
                raise UserError(f"{self._path}: the import parser stopped unexpectedly") from None
            if msg[0] == "rows":
                yield [Observation(*fields) for fields in msg[1]], msg[2], msg[3], msg[4]
            elif msg[0] == "done":
                return
            else:
                raise UserError(msg[1])

    def __enter__(self) -> Parser:
        return self

    def __exit__(self, *exc: object) -> None:
        self._recv.close()
        self._proc.join(timeout=5)
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join()

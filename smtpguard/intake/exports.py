"""Suppression lists as ESPs export them: read them into observations, write them back out.

Pure functions: text in, :class:`~smtpguard.store.suppression.Observation` records out
(``suppression import --from``), and entries in, text out (``suppression export
--format``). Each format is the provider's documented one:

``ses``
    ``aws sesv2 list-suppressed-destinations`` output, the ListSuppressedDestinations
    response: ``{"SuppressedDestinationSummaries": [{"EmailAddress", "Reason": "BOUNCE" |
    "COMPLAINT", "LastUpdateTime"}], "NextToken"}`` (Amazon SES API v2 reference,
    ListSuppressedDestinations and SuppressedDestinationSummary,
    https://docs.aws.amazon.com/ses/latest/APIReference-V2/API_SuppressedDestinationSummary.html).
    ``LastUpdateTime`` is ISO 8601 in the CLI's default output, epoch seconds with
    ``cli_timestamp_format = none``; both are read. Several pages pasted one after the
    other are read as one list.
``mailgun``
    The bounces CSV Mailgun imports and exports: header ``address,code,error,created_at``,
    ``created_at`` in RFC 2822 (Mailgun API reference, Bounces: "Import list of bounces",
    https://documentation.mailgun.com/docs/mailgun/api-reference/send/mailgun/bounces).
``sendgrid``
    SendGrid's bounces list: header ``email,created,reason,status``, ``created`` in epoch
    seconds (v3 ``GET /v3/suppression/bounces`` BounceResponse) or a date-time (the v2
    API and the web export: ``2014-12-06 08:34:48``), ``status`` the enhanced status
    (Twilio SendGrid API reference, Bounces API,
    https://www.twilio.com/docs/sendgrid/api-reference/bounces-api).
``postmark``
    Postmark's suppression dump, ``GET /message-streams/{stream}/suppressions/dump``:
    ``{"Suppressions": [{"EmailAddress", "SuppressionReason": "HardBounce" |
    "SpamComplaint" | "ManualSuppression", "Origin": "Recipient" | "Customer" |
    "Admin", "CreatedAt"}]}`` (Postmark API reference, Suppressions API,
    https://postmarkapp.com/developer/api/suppressions-api).
``plain``
    One address per line, no header; blank lines and ``#`` comments are skipped.

Reasons, in: an ESP's suppression list is its own verdict, so every listed address is
imported; the reason says what kind of entry it is.

=========================  =====================================================
SES ``BOUNCE``              ``userunknown``: SES lists an address for a hard bounce
SES ``COMPLAINT``           ``complaint``
Mailgun row, SendGrid row   the classifier's reason for ``code`` + ``error`` /
                            ``status`` + ``reason`` (read as the answer to RCPT TO:
                            both lists hold only permanent recipient failures); when
                            the text explains nothing, ``userunknown``
Postmark ``HardBounce``     ``userunknown`` (Postmark: "unknown user, mailbox not found")
Postmark ``SpamComplaint``  ``complaint``
Postmark ``ManualSuppression``  ``unsubscribe`` when the recipient asked (``Origin``
                            ``Recipient``: an unsubscribe link or List-Unsubscribe),
                            ``manual`` when the sender or Postmark added it
plain list                  the ``--reason`` given (default ``manual``)
=========================  =====================================================

Reasons, out: SES and Postmark know only their own reasons, so ``complaint`` becomes
``COMPLAINT`` / ``SpamComplaint``, ``unsubscribe`` becomes ``COMPLAINT`` /
``ManualSuppression`` (origin Recipient), ``manual`` becomes ``BOUNCE`` /
``ManualSuppression`` (origin Customer), everything else ``BOUNCE`` / ``HardBounce``.
Mailgun's and SendGrid's files are bounce lists: complaints and unsubscribes belong on
their other lists and are left out (counted as skipped). Whole-domain entries have no
place in any of these formats and are skipped too. Every format re-imports as it was
written, with the reasons mapped as above.
"""

from __future__ import annotations

import csv
import email.utils
import json
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import IO, Any

from smtpguard.classify import Classifier, Failure, default_classifier
from smtpguard.config import parse_iso_time
from smtpguard.errors import UserError
from smtpguard.intake.esp import esp_verdict
from smtpguard.store.importfile import Problem, csv_rows, parse_import
from smtpguard.store.suppression import (
    SUPPRESSION_REASONS,
    Observation,
    SuppressionEntry,
    iso,
    make_observation,
)

#: ``--from`` / ``--format`` names of the ESP formats.
ESP_FORMATS = ("ses", "mailgun", "sendgrid", "postmark")
#: Import-only: a header-less list of addresses.
IMPORT_FORMATS = (*ESP_FORMATS, "plain")

SES_REASONS = {"BOUNCE": "userunknown", "COMPLAINT": "complaint"}
POSTMARK_REASONS = {"HardBounce": "userunknown", "SpamComplaint": "complaint"}
#: Reasons a person gave (the recipient or the sender), not a mail server.
_PERSON = frozenset({"complaint", "unsubscribe"})
#: CSV headers as the providers document them (export writes exactly these).
MAILGUN_COLUMNS = ("address", "code", "error", "created_at")
SENDGRID_COLUMNS = ("email", "created", "reason", "status")
#: Reply texts classified once per import (bounce lists repeat a few texts a lot).
_VERDICT_CACHE = 10_000


Item = tuple[int, Observation | Problem]


# --------------------------------------------------------------------------- helpers


def _time(value: Any, what: str) -> float | None:
    """Epoch seconds from epoch numbers, ISO 8601 or RFC 2822 times; None when empty."""
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise UserError(f"{what}: expected a time, not {value!r}")
    if isinstance(value, (int, float)):
        if not math.isfinite(value):
            raise UserError(f"{what}: expected a time, not {value!r}")
        return float(value)
    text = str(value).strip()
    try:
        return float(text)
    except ValueError:
        pass
    try:
        return parse_iso_time(text)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        raise UserError(f"{what}: expected a time, not {text!r}") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


def _seen(value: Any, what: str) -> dict[str, float | None]:
    when = _time(value, what)
    return {"first_seen": when, "last_seen": when}


def _json_documents(text: str, name: str) -> Iterator[Any]:
    """Every JSON document in ``text`` (pages of a paginated listing, one after another)."""
    decoder = json.JSONDecoder()
    pos, end = 0, len(text)
    while True:
        while pos < end and text[pos] in " \t\r\n\ufeff":
            pos += 1
        if pos >= end:
            return
        try:
            doc, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as e:
            raise UserError(f"{name}: invalid JSON: {e.msg} at line {e.lineno}") from None
        yield doc


def _json_records(lines: Iterable[str], name: str, key: str, what: str) -> Iterator[Any]:
    """The objects listed under ``key`` in every document (or documents that are lists)."""
    found = False
    for doc in _json_documents("".join(lines), name):
        records = doc.get(key) if isinstance(doc, dict) else doc
        if not isinstance(records, list):
            raise UserError(f"{name}: not {what} (expected a JSON object with a {key} list)")
        found = True
        yield from records
    if not found:
        raise UserError(f"{name}: empty file (expected {what})")


def _str_field(record: dict[str, Any], key: str) -> str:
    value = record.get(key, "")
    if value is None:
        return ""
    if not isinstance(value, str):
        raise UserError(f"{key}: expected text, not {value!r}")
    return value.strip()


def _records(
    records: Iterable[Any], to_observation: Callable[[dict[str, Any]], Observation]
) -> Iterator[Item]:
    for n, record in enumerate(records, start=1):
        if not isinstance(record, dict):
            yield n, Problem(n, "expected a JSON object", "record")
            continue
        try:
            item: Observation | Problem = to_observation(record)
        except UserError as e:
            item = Problem(n, str(e), "record")
        yield n, item


def _columns(required: str) -> Callable[[list[str], str], list[str]]:
    """Header check for a provider's CSV: names lowercased, unknown columns kept
    (providers add columns over time), ``required`` present."""

    def columns(header: list[str], name: str) -> list[str]:
        names = [h.strip().lower() for h in header]
        if required not in names:
            raise UserError(f"{name}: line 1: the header has no {required!r} column")
        return names

    return columns


class _BounceListReader:
    """Mailgun / SendGrid rows -> observations, the reply text classified once per text."""

    def __init__(self, provider: str, classifier: Classifier | None) -> None:
        self._provider = provider
        self._classifier = classifier or default_classifier()
        self._cache: dict[tuple[str, str, str], tuple[str, str, str]] = {}

    def evidence(self, reply_code: str, status: str, text: str) -> tuple[str, str, str]:
        """(reason, status, reply code) for a listed bounce's reply."""
        key = (reply_code, status, text)
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        failure = Failure(
            recipient="", reply_code=reply_code, status=status, diagnostic=text,
            format=self._provider,
        )  # fmt: skip
        v = esp_verdict(self._classifier, failure, fallback="userunknown", address=True)
        reason = v.reason if v.reason in SUPPRESSION_REASONS else "userunknown"
        real_status = "" if v.extra.get("status_source") == "pseudo" else v.status
        result = (reason, real_status, v.reply_code)
        if len(self._cache) < _VERDICT_CACHE:
            self._cache[key] = result
        return result

    def observation(
        self, address: str, reply_code: str, status: str, text: str, seen: Any
    ) -> Observation:
        reason, status, reply_code = self.evidence(reply_code, status, text)
        return make_observation(
            address,
            reason,
            source="import",
            status=status,
            reply_code=reply_code,
            diagnostic=text,
            note=f"from {self._provider} bounces",
            **_seen(seen, "created"),
        )

    def items(self, lines: Iterable[str], name: str, address_column: str) -> Iterator[Item]:
        for line, row in csv_rows(lines, name, _columns(address_column)):
            if isinstance(row, Problem):
                yield line, row
                continue
            try:
                yield line, self.row(row)
            except UserError as e:
                yield line, Problem(line, str(e))

    def row(self, row: dict[str, str]) -> Observation:
        raise NotImplementedError


class _MailgunReader(_BounceListReader):
    def row(self, row: dict[str, str]) -> Observation:
        code = row.get("code", "")
        # Mailgun's code column holds the SMTP reply code; some exports give 5.x.x there.
        status = code if code.count(".") == 2 else ""
        reply_code = "" if status else code
        return self.observation(
            row.get("address", ""), reply_code, status, row.get("error", ""), row.get("created_at")
        )


class _SendgridReader(_BounceListReader):
    def row(self, row: dict[str, str]) -> Observation:
        return self.observation(
            row.get("email", ""),
            "",
            row.get("status", ""),
            row.get("reason", ""),
            row.get("created"),
        )


# --------------------------------------------------------------------------- readers


def read_ses(lines: Iterable[str], name: str) -> Iterator[Item]:
    """Amazon SES ``list-suppressed-destinations`` JSON -> observations."""

    def observation(record: dict[str, Any]) -> Observation:
        ses_reason = _str_field(record, "Reason")
        reason = SES_REASONS.get(ses_reason.upper())
        if reason is None:
            raise UserError(f"Reason: expected BOUNCE or COMPLAINT, not {ses_reason!r}")
        return make_observation(
            _str_field(record, "EmailAddress"),
            reason,
            source="import",
            note=f"from ses: {ses_reason.upper()}",
            **_seen(record.get("LastUpdateTime"), "LastUpdateTime"),
        )

    records = _json_records(
        lines, name, "SuppressedDestinationSummaries", "an Amazon SES suppression list"
    )
    yield from _records(records, observation)


def read_postmark(lines: Iterable[str], name: str) -> Iterator[Item]:
    """Postmark suppression dump JSON -> observations."""

    def observation(record: dict[str, Any]) -> Observation:
        pm_reason = _str_field(record, "SuppressionReason")
        origin = _str_field(record, "Origin")
        if pm_reason == "ManualSuppression":
            reason = "unsubscribe" if origin.lower() == "recipient" else "manual"
        elif pm_reason in POSTMARK_REASONS:
            reason = POSTMARK_REASONS[pm_reason]
        else:
            raise UserError(
                "SuppressionReason: expected HardBounce, SpamComplaint or ManualSuppression, "
                f"not {pm_reason!r}"
            )
        return make_observation(
            _str_field(record, "EmailAddress"),
            reason,
            source="import",
            note=f"from postmark: {pm_reason}" + (f" ({origin})" if origin else ""),
            **_seen(record.get("CreatedAt"), "CreatedAt"),
        )

    yield from _records(
        _json_records(lines, name, "Suppressions", "a Postmark suppression dump"), observation
    )


def read_mailgun(
    lines: Iterable[str], name: str, *, classifier: Classifier | None = None
) -> Iterator[Item]:
    """Mailgun bounces CSV -> observations."""
    return _MailgunReader("mailgun", classifier).items(lines, name, "address")


def read_sendgrid(
    lines: Iterable[str], name: str, *, classifier: Classifier | None = None
) -> Iterator[Item]:
    """SendGrid bounces CSV -> observations."""
    return _SendgridReader("sendgrid", classifier).items(lines, name, "email")


def read_plain(
    lines: Iterable[str], name: str, *, reason: str = "manual", expires: float | None = None
) -> Iterator[Item]:
    """One address per line (``#`` comments and blank lines skipped) -> observations."""
    for line, text in enumerate(lines, start=1):
        value = text.strip()
        if not value or value.startswith("#"):
            continue
        try:
            # A bare word is a typo far more often than a domain: say @example.com for one.
            kind = "domain" if value.startswith("@") else "address"
            item: Observation | Problem = make_observation(
                value, reason, source="import", kind=kind, expires=expires
            )
        except UserError as e:
            item = Problem(line, str(e))
        yield line, item


def read_export(
    fmt: str,
    lines: Iterable[str],
    name: str,
    *,
    reason: str = "manual",
    expires: float | None = None,
    classifier: Classifier | None = None,
) -> Iterator[Item]:
    """Dispatch on ``fmt`` (one of :data:`IMPORT_FORMATS`). ``reason`` applies to plain
    lists (the ESP formats carry their own); ``expires`` to every record."""
    items: Iterator[Item]
    if fmt == "ses":
        items = read_ses(lines, name)
    elif fmt == "postmark":
        items = read_postmark(lines, name)
    elif fmt == "mailgun":
        items = read_mailgun(lines, name, classifier=classifier)
    elif fmt == "sendgrid":
        items = read_sendgrid(lines, name, classifier=classifier)
    elif fmt == "plain":
        return read_plain(lines, name, reason=reason, expires=expires)
    else:
        raise UserError(f"unknown import format {fmt!r} (known: {', '.join(IMPORT_FORMATS)})")
    return _expiring(items, expires) if expires is not None else items


def _expiring(items: Iterator[Item], expires: float) -> Iterator[Item]:
    for line, item in items:
        if isinstance(item, Observation) and item.expires is None:
            item.expires = expires
        yield line, item


def parse_any(
    lines: Iterable[str], fmt: str, path: str, reason: str, expires: float | None
) -> Iterator[Item]:
    """The import parser for every format: smtpguard's own (``csv``, ``jsonl``) and the
    ones here (a :data:`~smtpguard.store.importfile.ParseFunction`)."""
    if fmt in IMPORT_FORMATS:
        return read_export(fmt, lines, path, reason=reason, expires=expires)
    return parse_import(lines, fmt, path, reason, expires)


def sniff(head: str) -> str | None:
    """The ESP format (or ``plain``) the start of a file looks like, None when neither.

    JSON: by its list key; CSV: by its header; a first line that is an address alone
    (no separators) makes a plain list.
    """
    text = head.lstrip("\ufeff \t\r\n")
    if text.startswith("{"):
        if '"SuppressedDestinationSummaries"' in text:
            return "ses"
        if '"Suppressions"' in text:
            return "postmark"
        return None
    first = text.split("\n", 1)[0].strip()
    columns = {c.strip().strip('"').lower() for c in first.split(",")}
    if {"code", "error", "created_at", "address"} <= columns:
        return "mailgun"
    if {"email", "created", "reason", "status"} <= columns:
        return "sendgrid"
    if "@" in first and not any(sep in first for sep in ',;\t"{'):
        return "plain"
    return None


# --------------------------------------------------------------------------- writers


@dataclass
class Written:
    """What an export wrote, and what it left out (and why)."""

    written: int = 0
    skipped_domains: int = 0
    skipped_reasons: int = 0

    @property
    def skipped(self) -> int:
        return self.skipped_domains + self.skipped_reasons


def _rfc2822(ts: float) -> str:
    return email.utils.format_datetime(datetime.fromtimestamp(math.floor(ts), UTC), usegmt=True)


def _addresses(entries: Iterable[SuppressionEntry], written: Written) -> Iterator[SuppressionEntry]:
    for e in entries:
        if e.kind == "domain":
            written.skipped_domains += 1
            continue
        yield e


def _json_list(out: IO[str], key: str, records: Iterator[dict[str, Any]], written: Written) -> None:
    out.write("{\n" + f'  "{key}": [')
    for record in records:
        out.write(("\n    " if written.written == 0 else ",\n    ") + json.dumps(record))
        written.written += 1
    out.write("\n  ]\n}\n" if written.written else "]\n}\n")


def write_ses(entries: Iterable[SuppressionEntry], out: IO[str]) -> Written:
    """The list as ``aws sesv2 list-suppressed-destinations`` prints it."""
    written = Written()
    records = (
        {
            "EmailAddress": e.address,
            "Reason": "COMPLAINT" if e.reason in _PERSON else "BOUNCE",
            "LastUpdateTime": iso(e.last_seen),
        }
        for e in _addresses(entries, written)
    )
    _json_list(out, "SuppressedDestinationSummaries", records, written)
    return written


def write_postmark(entries: Iterable[SuppressionEntry], out: IO[str]) -> Written:
    """The list as Postmark's suppression dump."""

    def record(e: SuppressionEntry) -> dict[str, str]:
        if e.reason == "complaint":
            reason, origin = "SpamComplaint", "Recipient"
        elif e.reason == "unsubscribe":
            reason, origin = "ManualSuppression", "Recipient"
        elif e.reason == "manual":
            reason, origin = "ManualSuppression", "Customer"
        else:
            reason, origin = "HardBounce", "Recipient"
        return {
            "EmailAddress": e.address,
            "SuppressionReason": reason,
            "Origin": origin,
            "CreatedAt": iso(e.first_seen),
        }

    written = Written()
    _json_list(out, "Suppressions", (record(e) for e in _addresses(entries, written)), written)
    return written


def _bounce_list(
    entries: Iterable[SuppressionEntry],
    out: IO[str],
    header: tuple[str, ...],
    row: Callable[[SuppressionEntry], list[str]],
) -> Written:
    written = Written()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    for e in _addresses(entries, written):
        if e.reason in _PERSON:
            written.skipped_reasons += 1
            continue
        writer.writerow(row(e))
        written.written += 1
    return written


def _evidence_text(e: SuppressionEntry, *, code: bool = True) -> str:
    """The entry's evidence as one reply-like line (a stored diagnostic is one already);
    without one, the codes and the reason, worded so that it classifies back the same."""
    if e.diagnostic:
        return e.diagnostic
    return " ".join(
        x for x in (e.reply_code if code else "", e.status, f"smtpguard: {e.reason}") if x
    )


def write_mailgun(entries: Iterable[SuppressionEntry], out: IO[str]) -> Written:
    """The list as a Mailgun bounces CSV (complaints and unsubscribes left out)."""
    return _bounce_list(
        entries,
        out,
        MAILGUN_COLUMNS,
        lambda e: [
            e.address,
            e.reply_code or "550",
            _evidence_text(e, code=False),
            _rfc2822(e.last_seen),
        ],
    )


def write_sendgrid(entries: Iterable[SuppressionEntry], out: IO[str]) -> Written:
    """The list as a SendGrid bounces CSV (complaints and unsubscribes left out)."""
    return _bounce_list(
        entries,
        out,
        SENDGRID_COLUMNS,
        lambda e: [
            e.address,
            str(math.floor(e.last_seen)),
            _evidence_text(e),
            e.status or "5.0.0",
        ],
    )


WRITERS: dict[str, Callable[[Iterable[SuppressionEntry], IO[str]], Written]] = {
    "ses": write_ses,
    "mailgun": write_mailgun,
    "sendgrid": write_sendgrid,
    "postmark": write_postmark,
}

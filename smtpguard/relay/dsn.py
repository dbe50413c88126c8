"""Delivery status notifications the relay sends back to senders (RFC 3464).

A DSN is a ``multipart/report; report-type=delivery-status`` message
(RFC 6522) of three parts: a human-readable explanation, the machine-readable
``message/delivery-status`` fields, and the original message (``RET=FULL``,
up to a size limit, as Postfix's ``bounce_size_limit``) or only its header
section (``RET=HDRS``, no RET, or too large: RFC 3461 section 4.3), at most
:data:`MAX_RETURNED_HEADERS`. It goes out with the null reverse-path so it can
never bounce back (RFC 5321 section 6.1); the caller (the relay engine) sends
it, this module only builds bytes.

The first two parts are built by the stdlib ``email`` package with CRLF line
endings; every value that comes from outside (addresses, remote replies,
ENVID) is stripped of control characters first, so no header can be split or
injected and nothing carries a bare CR or LF. The original is never parsed:
its header section is found on the bytes and it is copied in as it is, under
a boundary it does not contain, so its cost is bounded by what is returned
whatever its structure (a MIME tree 450 levels deep, 100,000 parts).
"""

from __future__ import annotations

import email.message
import email.policy
import email.utils
import re
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.generator import BytesGenerator
from io import BytesIO

from smtpguard.smtp.data import normalise_line_endings

ACTIONS = ("failed", "delayed", "delivered", "relayed", "expanded")

#: CR, LF and every other control character: never allowed into a header value.
#: C0/C1 controls and Unicode line/paragraph separators: str.splitlines() (which the
#: email package uses) breaks lines at NEL and U+2028/9 too, so they count as newlines.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]+")
#: Header section of a message: everything up to the first empty line.
_HEADER_END = re.compile(rb"\r?\n\r?\n")
#: Postfix's ``bounce_size_limit`` default: the largest original returned whole.
RETURN_SIZE_LIMIT = 50_000
#: The largest header section returned (RET=HDRS, or a message too large to return).
MAX_RETURNED_HEADERS = 64 * 1024


@dataclass(frozen=True)
class DsnRecipient:
    """One recipient's line in the report (RFC 3464 section 2.3)."""

    address: str  # final recipient, as delivered to
    orcpt: str  # RFC 3461 ORCPT, xtext-decoded ("rfc822;user@example.com"), "" if none
    action: str  # 'failed' | 'delayed' | 'delivered' (also 'relayed', 'expanded')
    status: str  # RFC 3463 enhanced status, e.g. "5.1.1"
    diagnostic: str  # "smtp; 550 5.1.1 user unknown" ("" if none)
    remote_mta: str  # host name of the MTA that answered ("" if none)
    last_attempt: float  # unix time; 0 = unknown


def dsn_wanted(
    *, mail_from: str, auto_submitted: bool, notify: tuple[str, ...], action: str
) -> bool:
    """Whether the sender gets a DSN for this recipient's ``action``.

    Never to the null reverse-path (RFC 5321 section 6.1: that is how bounce
    loops are avoided) and never for ``Auto-Submitted`` mail (RFC 3834
    section 2: automatic mail must not cause automatic replies, and the
    issue's policy extends that to DSNs). ``NOTIFY=NEVER`` suppresses all;
    a ``NOTIFY`` list without the keyword for this action suppresses it
    (RFC 3461 section 4.1). Without NOTIFY only failures are reported, the
    choice the RFC leaves to the MTA (``FAILURE`` or ``FAILURE,DELAY``).
    """
    if not mail_from or mail_from == "<>" or auto_submitted:
        return False
    wanted = {n.strip().upper() for n in notify}
    if "NEVER" in wanted:
        return False
    if action == "failed":
        return not wanted or "FAILURE" in wanted
    if action == "delayed":
        return "DELAY" in wanted
    if action in ("delivered", "relayed", "expanded"):
        return "SUCCESS" in wanted
    raise ValueError(f"unknown DSN action {action!r} (expected one of {', '.join(ACTIONS)})")


def returned_bytes_needed(ret: str, size: int, return_limit: int = RETURN_SIZE_LIMIT) -> int:
    """How much of an original of ``size`` bytes a DSN can use: all of it when it is
    returned whole (RET=FULL within ``return_limit``), else what holds its header section."""
    if ret.upper() == "FULL" and size <= return_limit:
        return size
    return min(size, MAX_RETURNED_HEADERS + 4)


def build_dsn(
    *,
    original: bytes | None,
    mail_from: str,
    envid: str,
    ret: str,
    recipients: Sequence[DsnRecipient],
    reporting_mta: str,
    arrival_date: float,
    now: float | None = None,
    original_size: int | None = None,
    return_limit: int = RETURN_SIZE_LIMIT,
) -> bytes:
    """The complete DSN message (RFC 5322, CRLF) addressed to ``mail_from``.

    ``original`` is the message as queued, or only its start (at least
    :func:`returned_bytes_needed` bytes) when ``original_size`` gives the whole
    size; None when it could not be read (the DSN then says so and returns
    nothing). It is never parsed: the header section is found on the bytes.
    ``ret`` is the sender's RET: "FULL" returns the message whole if it is at
    most ``return_limit`` bytes, else only its header section, as for RET=HDRS
    or no RET; a header section over :data:`MAX_RETURNED_HEADERS` is cut at a
    header field boundary. The text part says what was left out.
    """
    if not recipients:
        raise ValueError("a DSN reports on at least one recipient")
    for r in recipients:
        if r.action not in ACTIONS:
            raise ValueError(f"unknown DSN action {r.action!r}")
    now = time.time() if now is None else now
    mta = _clean(reporting_mta) or "localhost"
    sender = _clean(mail_from)
    utf8 = not (sender + "".join(r.address for r in recipients)).isascii()
    # RFC 6531: an SMTPUTF8 sender can only be written with UTF-8 headers.
    policy = email.policy.SMTPUTF8 if utf8 else email.policy.SMTP
    # RFC 6533: a recipient address that is not ASCII can only be reported in a
    # message/global-delivery-status part, as address type "utf-8".
    global_status = not all(r.address.isascii() for r in recipients)
    returned = _returned(original, original_size, ret, return_limit)

    report = email.message.EmailMessage(policy=policy)
    report["From"] = f"Mail Delivery System <MAILER-DAEMON@{mta}>"
    report["To"] = f"<{sender}>"
    report["Subject"] = _subject(recipients)
    report["Date"] = _date(now)
    report["Message-ID"] = email.utils.make_msgid("dsn", domain=mta)  # domain: no getfqdn()
    report["Auto-Submitted"] = "auto-replied"  # RFC 3834 section 5
    report["MIME-Version"] = "1.0"
    boundary = _boundary(returned.content)
    # RFC 6522 section 3: multipart/report with its report-type parameter.
    report["Content-Type"] = f'multipart/report; report-type=delivery-status; boundary="{boundary}"'

    text = email.message.EmailMessage(policy=policy)
    human = _human_text(recipients, mta) + returned.note
    if human.isascii():
        text.set_content(human, charset="us-ascii", cte="7bit")
    else:
        text.set_content(human, charset="utf-8", cte="quoted-printable")
    text["Content-Description"] = "Notification"
    parts = [text, _status_part(recipients, envid, mta, arrival_date, policy, global_status)]
    # Fold only beyond RFC 5322's 998: status fields stay one line each for simple readers.
    generate = policy.clone(max_line_length=998)
    rendered: list[bytes] = []
    for part in parts:
        del part["MIME-Version"]  # set_content adds it; RFC 2045 wants it at the top only
        out = BytesIO()
        _Generator(out, policy=generate).flatten(part)
        rendered.append(out.getvalue())
    if returned.headers:
        rendered.append(returned.headers + b"\r\n" + returned.content)
    delimiter = b"\r\n--" + boundary.encode("ascii")
    body = [
        b"".join(generate.fold_binary(name, value) for name, value in report.items()),
        b"\r\nThis is a MIME-encapsulated message.\r\n",
    ]
    for part_bytes in rendered:
        body += [delimiter, b"\r\n", part_bytes]
    body += [delimiter, b"--\r\n"]
    # Belt and braces for the RFC 5321 section 2.3.8 promise: no bare CR or LF.
    return normalise_line_endings(b"".join(body))


class _Generator(BytesGenerator):
    """BytesGenerator that also writes RFC 6533 status parts (pre-rendered UTF-8 text)."""

    def _handle_message_global_delivery_status(self, msg: email.message.Message) -> None:
        self._fp.write(str(msg.get_payload()).encode("utf-8"))  # type: ignore[attr-defined]


# ---------------------------------------------------------------------- parts


def _status_part(
    recipients: Sequence[DsnRecipient],
    envid: str,
    mta: str,
    arrival_date: float,
    policy: email.policy.EmailPolicy,
    global_status: bool = False,
) -> email.message.EmailMessage:
    """``message/delivery-status``: one per-message block, one block per recipient.

    With ``global_status`` the part is RFC 6533's ``message/global-delivery-status``
    and recipients are written as ``utf-8; <address>`` (UTF-8 kept as it is).
    """
    blocks: list[email.message.Message] = []
    head = email.message.Message(policy=policy)
    head["Reporting-MTA"] = f"dns; {mta}"  # RFC 3464 section 2.2.2
    if _clean(envid):
        head["Original-Envelope-Id"] = _ascii(envid)  # section 2.2.1, case kept
    if arrival_date > 0:
        head["Arrival-Date"] = _date(arrival_date)  # section 2.2.5
    blocks.append(head)
    for r in recipients:
        block = email.message.Message(policy=policy)
        if _clean(r.orcpt):
            block["Original-Recipient"] = _typed(r.orcpt, "rfc822")  # section 2.3.1
        if global_status:
            block["Final-Recipient"] = f"utf-8; {_clean(r.address)}"  # RFC 6533 section 3
        else:
            block["Final-Recipient"] = f"rfc822; {_ascii(r.address)}"  # section 2.3.2
        block["Action"] = r.action  # section 2.3.3
        block["Status"] = _ascii(r.status) or _default_status(r.action)  # section 2.3.4
        if _clean(r.remote_mta):
            block["Remote-MTA"] = f"dns; {_ascii(r.remote_mta)}"  # section 2.3.5
        if _clean(r.diagnostic):
            block["Diagnostic-Code"] = _typed(r.diagnostic, "smtp")  # section 2.3.6
        if r.last_attempt > 0:
            block["Last-Attempt-Date"] = _date(r.last_attempt)  # section 2.3.7
        blocks.append(block)
    part = email.message.EmailMessage(policy=policy)
    if global_status:
        # The stdlib generator only knows how to write message/delivery-status blocks;
        # for the global type the blocks are rendered here (each ends in a blank line)
        # and written as UTF-8 by _Generator.
        part.set_type("message/global-delivery-status")
        part.set_payload("".join(b.as_string(policy=policy) for b in blocks))
        part["Content-Transfer-Encoding"] = "8bit"
    else:
        part.set_type("message/delivery-status")
        part.set_payload(blocks)
    part["Content-Description"] = "Delivery report"
    return part


@dataclass(frozen=True)
class _Returned:
    """The third part: its MIME header lines (b"" for none), content, and what the text says."""

    headers: bytes
    content: bytes
    note: str


def _returned(original: bytes | None, size: int | None, ret: str, limit: int) -> _Returned:
    """The original whole (RET=FULL within ``limit``) or its header section (RFC 3461 4.3).

    Postfix does the same with ``bounce_size_limit``: a message/rfc822 part with
    the complete original, or text/rfc822-headers (RFC 6522 section 5) with its
    headers only, never a truncated message. The bytes are used as they are
    (line endings aside), so no nesting depth or part count costs anything.
    """
    if original is None:
        return _Returned(b"", b"", "The original message could not be read; it is not attached.\n")
    size = len(original) if size is None else size
    if ret.upper() == "FULL" and size <= limit and len(original) >= size:
        content = normalise_line_endings(original[:size])
        cte = "7bit" if content.isascii() else "8bit"  # RFC 2046 5.2.1: never base64
        headers = (
            "Content-Type: message/rfc822\r\n"
            "Content-Description: Undelivered Message\r\n"
            f"Content-Transfer-Encoding: {cte}\r\n"
        )
        return _Returned(headers.encode("ascii"), content, "")
    note = ""
    if ret.upper() == "FULL":
        note = (
            f"The message was {size} bytes, more than the {limit} returned whole:\n"
            "only its header section is attached.\n"
        )
    section, cut = header_section(original)
    if cut:
        note += (
            f"Its header section is longer than {MAX_RETURNED_HEADERS} bytes: the attached"
            f" part ends after {len(section)} bytes, at a header field boundary.\n"
        )
    content = normalise_line_endings(section)
    if content.isascii():
        charset, cte = "us-ascii", "7bit"
    else:
        content = content.decode("utf-8", "replace").encode("utf-8")
        charset, cte = "utf-8", "8bit"
    headers = (
        f"Content-Type: text/rfc822-headers; charset={charset}\r\n"
        "Content-Description: Undelivered Message Headers\r\n"
        f"Content-Transfer-Encoding: {cte}\r\n"
    )
    return _Returned(headers.encode("ascii"), content, note)


def header_section(data: bytes, limit: int = MAX_RETURNED_HEADERS) -> tuple[bytes, bool]:
    """The header section of a message (its lines, each ending in a line break) and
    whether it was cut to ``limit`` bytes; only the first ``limit + 4`` bytes are looked at.

    Cut at the last line that starts a new header field, so no field is returned half
    folded; a single field longer than ``limit`` leaves nothing.
    """
    if data[:1] == b"\n" or data[:2] == b"\r\n":
        return b"", False  # no header fields at all
    end = _HEADER_END.search(data, 0, limit + 4)
    if end is not None and end.start() <= limit:
        # The last field keeps its line break; the empty line is not part of the section.
        eol = 2 if data[end.start() : end.start() + 2] == b"\r\n" else 1
        return data[: end.start() + eol], False
    if end is None and len(data) <= limit:
        return data, False  # a message that is all header, no body
    window = data[:limit]
    pos = window.rfind(b"\n")
    while pos >= 0 and data[pos + 1 : pos + 2] in (b" ", b"\t"):
        pos = window.rfind(b"\n", 0, pos)  # a continuation line: back to its field's start
    return window[: pos + 1], True


def _boundary(content: bytes) -> str:
    """A MIME boundary that does not occur in ``content`` (RFC 2046 section 5.1.1)."""
    while True:
        boundary = f"=_smtpguard_{secrets.token_hex(12)}"
        if boundary.encode("ascii") not in content:
            return boundary


# ---------------------------------------------------------------------- text


def _subject(recipients: Sequence[DsnRecipient]) -> str:
    actions = {r.action for r in recipients}
    if actions == {"failed"}:
        return "Undelivered Mail Returned to Sender"
    if "failed" in actions:
        return "Delivery Status Notification (Failure)"
    if actions == {"delayed"}:
        return "Delayed Mail (still being retried)"
    if "delayed" in actions:
        return "Delivery Status Notification (Delay)"
    return "Successful Mail Delivery Report"


def _human_text(recipients: Sequence[DsnRecipient], mta: str) -> str:
    lines = [f"This is the mail system at host {mta}.", ""]
    failed = [r for r in recipients if r.action == "failed"]
    delayed = [r for r in recipients if r.action == "delayed"]
    done = [r for r in recipients if r.action not in ("failed", "delayed")]
    if failed:
        lines += [
            "I'm sorry to have to inform you that your message could not",
            "be delivered to one or more recipients. It's attached below.",
            "",
            *_explain(failed),
        ]
    if delayed:
        lines += [
            "Your message could not be delivered yet to the recipients below.",
            "The mail system will keep trying; you do not need to resend it.",
            "",
            *_explain(delayed),
        ]
    if done:
        lines += ["Your message was successfully delivered to:", "", *_explain(done)]
    return "\n".join(lines) + "\n"


def _explain(recipients: Sequence[DsnRecipient]) -> list[str]:
    out: list[str] = []
    for r in recipients:
        why = _clean(r.diagnostic).partition(";")[2].strip()[:900] or _clean(r.status)
        host = f" (host {_clean(r.remote_mta)})" if _clean(r.remote_mta) else ""
        out += [f"<{_clean(r.address)}>{host}: {why}", ""]
    return out


# ---------------------------------------------------------------------- values


def _clean(value: str) -> str:
    """One line: control characters (CR, LF, NUL, TAB...) become single spaces."""
    return _CONTROL.sub(" ", value).strip()


def _ascii(value: str) -> str:
    """A clean value in ASCII: delivery-status fields are ASCII (RFC 3464 section 2.1)."""
    return _clean(value).encode("ascii", "replace").decode("ascii")


def _typed(value: str, default_type: str) -> str:
    """``"type; value"`` (RFC 3464 address-type / diagnostic-type); the type assumed if absent."""
    kind, sep, rest = _ascii(value).partition(";")
    if sep and re.fullmatch(r"[A-Za-z0-9-]+", kind.strip()):
        return f"{kind.strip()}; {rest.strip()}"
    return f"{default_type}; {_ascii(value)}"


def _default_status(action: str) -> str:
    return {"failed": "5.0.0", "delayed": "4.0.0"}.get(action, "2.0.0")


def _date(ts: float) -> str:
    """RFC 5322 section 3.3 date-time in UTC (+0000)."""
    return email.utils.format_datetime(datetime.fromtimestamp(ts, UTC).replace(microsecond=0))

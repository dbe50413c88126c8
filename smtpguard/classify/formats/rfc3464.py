"""RFC 3464 delivery status notifications: ``multipart/report; report-type=delivery-status``.

Most MTAs (Postfix, Sendmail, Exchange, Gmail, SES...) send these. One Failure per
per-recipient block (RFC 3464 §2.3): the recipient is Original-Recipient when it is an
address (what the sender gave: the address to suppress), else Final-Recipient; both are kept
on the Failure. Then Action,
Status, Diagnostic-Code, Remote-MTA; the per-message block (§2.2) gives Reporting-MTA.
The DSN part is also found when a broken MTA labels it ``text/plain`` or nests it, and
RFC 6533 ``message/global-delivery-status`` is read the same way.
"""

from __future__ import annotations

import re
from email.message import Message

from smtpguard.classify.formats._common import (
    ADDR_RE,
    Once,
    clean_addr,
    collapse,
    direct,
    envelope_info,
    fill_codes,
    first_text,
    header,
    paired_status,
    stage_in,
    status_in,
    walk,
)
from smtpguard.classify.formats._fields import Fields, parse_blocks, part_blocks
from smtpguard.classify.formats.local import local_delivery
from smtpguard.classify.formats.plaintext import (
    best_paragraph,
    bounce_text,
    diagnostics_by_recipient,
    preamble,
    says_hostunknown,
    transcript_stage,
)
from smtpguard.classify.verdict import Failure

#: Recipients read from one report (RFC 3464 allows any number; a real DSN lists a few).
MAX_RECIPIENTS = 100
_DSN_TYPES = ("message/delivery-status", "message/global-delivery-status")
_TYPE_PREFIX_RE = re.compile(
    r"^\s*(?:smtp|x-[\w.-]+|x400|unknown|mail|dns|dsn|rfc822)\s*;\s*", re.I
)
_COMMENT_RE = re.compile(r"\(([^()]{3,300})\)")
_RCPT_FIELDS = ("final-recipient", "original-recipient", "x-actual-recipient")
_EXPIRED_RE = re.compile(
    r"retry time(?:out)? exceeded|delivery time expired|message expired|"
    r"(?:has been|was) in the queue too long|envelope expired|expired in queue",
    re.I,
)


def _says_expired(text: str) -> bool:
    low = text.lower()
    return ("expired" in low or "exceeded" in low or "too long" in low) and bool(
        _EXPIRED_RE.search(text)
    )


def _strip_type(value: str) -> str:
    return _TYPE_PREFIX_RE.sub("", value, count=1).strip()


def dsn_blocks(msg: Message) -> list[Fields] | None:
    """Field blocks of the first delivery-status part, or None when the message has none."""
    for _depth, part, ctype in walk(msg):
        if ctype in _DSN_TYPES:
            return part_blocks(part)
    return None


def failures_from_blocks(blocks: list[Fields], msg: Message, fmt: str) -> list[Failure]:
    """Per-recipient Failures from DSN field blocks (shared with detectors of DSN look-alikes)."""
    per_message: Fields = {}
    out: list[Failure] = []
    remotes: list[str] = []  # each Failure's own Remote-MTA field ("" when none)
    for block in blocks:
        rcpt_field = next((block[k] for k in _RCPT_FIELDS if block.get(k)), "")
        if not rcpt_field:
            if not out and not per_message:
                per_message = block
            continue
        final = clean_addr(block.get("final-recipient", "") or rcpt_field)
        original = clean_addr(block.get("original-recipient", ""))
        # RFC 3464 2.3.1: Original-Recipient is the address as the sender gave it (before
        # aliasing or forwarding) - the address we sent to, so the one to suppress.
        recipient = original or final
        if not recipient:
            # A local delivery ("Final-Recipient: rfc822;/var/mail/..." or "|program"):
            # the address is the one the MTA lists as failed, if it lists exactly one.
            failed = ADDR_RE.findall(header(msg, "X-Failed-Recipients"))
            recipient = failed[0] if len(failed) == 1 else ""
        if not recipient:
            continue
        if len(out) >= MAX_RECIPIENTS:
            break
        action = block.get("action", "").split()[0].lower() if block.get("action") else ""
        raw_diag = block.get("diagnostic-code", "")
        diag = _strip_type(raw_diag)
        if diag.isdigit() and raw_diag.lstrip().lower().startswith("x-unix"):
            # RFC 3464 §2.3.6 diagnostic type with a bare exit status: "X-Unix; 71" is the
            # local delivery program failing, not a remote reply - keep the type.
            diag = f"X-Unix; {diag}"
        if not diag:
            # "Status: 4.0.0 (cat.example.net: host name lookup failure)": the comment
            # (RFC 3464 §2.3.4 allows one) is the only explanation.
            comment = _COMMENT_RE.search(block.get("status", ""))
            diag = comment.group(1) if comment else ""
            if diag.lower().startswith("other or undefined"):
                diag = ""  # RFC 3463's own name for x.y.0, not an explanation
        status = status_in(block.get("status", ""))
        remote_mta = _strip_type(block.get("remote-mta", ""))
        remote = remote_mta or _strip_type(per_message.get("reporting-mta", ""))
        dtype = _TYPE_PREFIX_RE.match(raw_diag)
        f = Failure(
            recipient=recipient,
            status=status,
            diagnostic=collapse(diag),
            diagnostic_type=dtype.group(0).strip(" \t;").lower() if dtype else "",
            action=action,
            remote_host=collapse(remote, 255),
            format=fmt,
            original_recipient=original,
            final_recipient=final or recipient,
        )
        out.append(f)
        remotes.append(remote_mta)
    if not out:
        return out
    # The human-readable part often says more than Diagnostic-Code (or all there is).
    text = bounce_text(msg)
    by_rcpt: dict[str, str] | None = None
    mid, sender, token = envelope_info(msg)
    # Only the part before the first recipient's own lines: in a report for several
    # recipients, another one's "Mailbox Full" must not speak for this one.
    explanation = collapse(preamble(text), 2000) if text else ""
    best = ""
    once = Once() if len(out) > 1 else direct
    for f, remote_mta in zip(out, remotes, strict=True):
        short = len(_strip_type(f.diagnostic)) < 8
        extra = ""
        if short or once(stage_in, f.diagnostic) == "unknown":
            # The per-recipient text of the human-readable part, read only when needed.
            if by_rcpt is None:
                by_rcpt = diagnostics_by_recipient(text) if text else {}
            extra = by_rcpt.get(f.final_recipient.lower(), "") or by_rcpt.get(
                f.recipient.lower(), ""
            )
        if extra and short:
            f.diagnostic = collapse(f"{f.diagnostic} {extra}")
            short = False
        from_text = short and (not f.status or f.status.endswith(".0.0"))
        if from_text:
            # No real Diagnostic-Code and only a generic Status: the explanation part is
            # all there is (Gmail's "address couldn't be found", Exim's "pipe to |...",
            # Sendmail's "unknown mailer error 255" under "X-Unix; 255").
            best = best or collapse(best_paragraph(text))
            f.diagnostic = collapse(f"{f.diagnostic} {best}")
        fill_codes(f, once)
        if f.stage == "unknown" and extra:
            # Postfix says "(in reply to RCPT TO command)" only in the human-readable part.
            f.stage = once(stage_in, extra)
        f.stage = transcript_stage(text, f.final_recipient or f.recipient) or f.stage
        # The remote server's own status in Diagnostic-Code is more precise than the
        # reporting MTA's summary in Status (often x.0.0, or 4.4.7 for any old deferral);
        # a generic x.0.0 in the text never replaces a specific Status (RFC 3463 §3.1).
        diag_status = once(paired_status, f.diagnostic)
        if (
            diag_status
            and diag_status != f.status
            and (not f.status or not diag_status.endswith(".0.0"))
        ):
            f.status = diag_status
        if f.action == "delivered" or (f.status.startswith("2.") and f.action != "failed"):
            f.reason_hint = "delivered"
        elif (
            f.action in ("failed", "delayed")
            and not from_text
            and once(_says_expired, f.diagnostic)
        ):
            # The reporting MTA's own "gave up retrying" statement (not the remote reply).
            f.reason_hint = "expired"
        elif once(says_hostunknown, f.diagnostic):
            f.reason_hint = "hostunknown"
        f.message_id, f.envelope_sender, f.return_path_token = mid, sender, token
        f.explanation = explanation
        if not remote_mta:
            f.local_delivery = local_delivery(msg, text, f.diagnostic, once=once)
    return out


def detect(msg: Message, raw: bytes) -> list[Failure] | None:
    blocks = dsn_blocks(msg)
    if blocks is None:
        # A DSN pasted into a text part: recognise it by its per-recipient fields.
        text = first_text(msg)
        if "inal-Recipient:" not in text and "INAL-RECIPIENT:" not in text:
            return None
        blocks = parse_blocks(text)
    out = failures_from_blocks(blocks, msg, "rfc3464")
    if not out:
        return None
    return out

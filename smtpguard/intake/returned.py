"""Mail returned to the bounce domain -> verdicts, each with the evidence it deserves.

Whatever arrives at ``b+<token>@<bounce domain>`` is classified (RFC 3464 DSNs, the
non-standard formats, ARF reports, auto-replies); then each verdict is weighed:

* a **DSN verdict** is ``dsn-verified`` only when the address it came back to carries a
  token we signed (:mod:`smtpguard.intake.verp`), not expired, made for the very
  recipient the DSN reports, and (when the queue can tell) for a message we sent;
  otherwise it is ``dsn-unverified``, with the precise reason in the evidence note
  (``no-token``, ``bad-signature``, ``expired``, ``other-recipient``,
  ``unknown-message`` when the queue never sent that message to that recipient...).
  What each kind may do to the list is the policy's call: by default a verified DSN
  may suppress, an unverified one suppresses nobody;
* an **ARF report** (``feedback``) is ``arf`` evidence only when it is tied to our send
  the same way (the report came back to a signed return path, or the reported original
  still carries one in its Return-Path, made for the complaining recipient); anyone
  can mail an ARF report, so any other is ``arf-unverified`` and is only recorded;
* a report that **redacts the complaining recipient** (RFC 6590: a feedback loop may
  replace the local part, or leave the address out of the report and the original)
  still names one through our token: its keyed tag is matched against the recipients
  the message went to (:meth:`Weighed.recovered`), and the one that matches is the
  complainer (``arf``). A report naming an address at another domain than the token's
  recipient is no redaction (the message was forwarded and someone else complained):
  it stays ``arf-unverified``;
* **auto-replies** and challenge/response mail (``vacation``) change nothing and are
  not passed on.

Everyone who takes returned mail weighs it here, with :func:`judge`: the intake
listener, the offline feed and the milter. What was sent is asked of
:class:`SentRecords` (:class:`smtpguard.store.sent.SentLookup`: the relay's queue and
the milter's own messages).

The address the bounce came back to is the SMTP envelope recipient when there is one
(the listener, the milter); mail read from a mailbox has no envelope, so the headers that record
it (``Delivered-To``, ``X-Original-To``, ``Envelope-To``, then ``To``) are used - only
addresses at the bounce domain, and a header naming a token is no weaker than an
envelope naming it: the token's signature is what counts.
"""

from __future__ import annotations

import email.parser
import email.policy
import email.utils
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Protocol

from smtpguard.classify import Classifier, Verdict
from smtpguard.intake.verp import PREFIX, VerpCheck, VerpCodec, VerpToken
from smtpguard.policy import Evidence, EvidenceKind
from smtpguard.policy.rules import canonical

#: Headers that record the envelope recipient of stored mail, most specific first.
RECIPIENT_HEADERS = ("Delivered-To", "X-Original-To", "Envelope-To", "To")
#: Header bytes read to find them (the top of the message).
HEADER_LIMIT = 64 * 1024
#: Reasons of a failed check, most telling first (what the note says when several
#: return paths were tried).
_PRECEDENCE = (
    "other-recipient", "expired", "retired-key", "bad-signature", "unknown-key",
    "malformed", "no-token",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Batch:
    """Verdicts that share one piece of evidence (one ``VerdictSink.accept`` call)."""

    verdicts: tuple[Verdict, ...]
    evidence: Evidence


@dataclass(frozen=True, slots=True)
class Judgement:
    """What one returned message amounts to."""

    batches: tuple[Batch, ...]
    ignored: tuple[Verdict, ...] = ()  # auto-replies: change nothing

    @property
    def is_bounce(self) -> bool:
        return bool(self.batches or self.ignored)

    def summary(self) -> str:
        """One line: ``dsn-verified bob@example.org userunknown; arf ...``."""
        parts = [
            f"{b.evidence.kind} {v.recipient} {v.reason}"
            + (f" ({b.evidence.note})" if b.evidence.kind.endswith("-unverified") else "")
            for b in self.batches
            for v in b.verdicts
        ]
        parts += [f"ignored {v.recipient} {v.reason}" for v in self.ignored]
        return "; ".join(parts) or "not a bounce"


def header_recipients(data: bytes, domain: str) -> list[str]:
    """Addresses at ``domain`` in the headers that record where stored mail was sent."""
    headers = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(
        data[:HEADER_LIMIT]
    )
    found: list[str] = []
    suffix = "@" + domain.lower()
    for name in RECIPIENT_HEADERS:
        values = [str(v) for v in headers.get_all(name) or []]
        for _, address in email.utils.getaddresses(values):
            if address.lower().endswith(suffix) and address not in found:
                found.append(address)
        if found:
            return found
    return found


def _best(checks: list[tuple[str, VerpCheck]]) -> tuple[str, VerpCheck] | None:
    if not checks:
        return None
    verified = [c for c in checks if c[1].verified]
    if verified:
        return verified[0]
    return min(checks, key=lambda c: _PRECEDENCE.index(c[1].reason))


class SentRecords(Protocol):
    """What was sent (:class:`smtpguard.store.sent.SentLookup`): the queue's messages
    and the milter's, by the message id a token names."""

    def was_sent(self, message_id: int, recipient: str) -> bool: ...

    def recipients(self, message_id: int) -> Sequence[str]: ...


@dataclass(frozen=True, slots=True)
class Weighed:
    """One verdict and the evidence it deserves (before batching)."""

    verdict: Verdict
    kind: EvidenceKind
    note: str
    message_id: int | None = None  # verified (or redacted): the message the token names
    #: A complaint whose report redacts the recipient, carrying a token we signed: the
    #: recipient is still to be recovered from it (:meth:`recovered`).
    redacted: VerpToken | None = None

    def never_sent(self) -> Weighed:
        """That message never went to this recipient: a guessed id."""
        return replace(
            self,
            kind="arf-unverified" if self.verdict.reason == "feedback" else "dsn-unverified",
            note=f"unknown-message: message {self.message_id} never went to this recipient",
        )

    def recovered(self, sent_to: Sequence[str] | None) -> Weighed:
        """The complainer of a redacted report: the one recipient of the message the token
        names whose keyed tag it carries (``sent_to``: whom the message went to; None when
        that cannot be asked here)."""
        token, mid, named = self.redacted, self.message_id, self.verdict.recipient
        assert token is not None
        why = (
            "other-recipient: the token was made for another recipient than the report names"
            if named
            else "no-recipient: the report redacts the recipient"
        )
        if sent_to is None:
            return replace(self, note=f"{why}; message {mid} cannot be looked up here")
        matches = {canonical(r) for r in sent_to if token.names(r)}
        if len(matches) != 1:
            known = "no recipient of it carries the token's tag" if sent_to else "not known"
            return replace(self, note=f"{why}; message {mid}: {known}")
        (complainer,) = matches
        if named and canonical(named).rpartition("@")[2] != complainer.rpartition("@")[2]:
            # Redaction keeps the domain: this is someone else (the message was forwarded).
            return replace(self, note=f"{why}, at another domain (forwarded mail)")
        return Weighed(
            replace(self.verdict, recipient=complainer),
            "arf",
            f"return path of message {mid}; the report redacts the recipient: the token names it",
            mid,
        )


def weigh(
    data: bytes,
    recipients: Sequence[str],
    *,
    codec: VerpCodec | None,
    classifier: Classifier,
    now: float | None = None,
) -> tuple[list[Weighed], list[Verdict]]:
    """Classify ``data`` (returned to ``recipients``; empty: read them from the headers)
    and weigh each verdict; auto-replies come back apart (they change nothing)."""
    now = time.time() if now is None else now
    verdicts = classifier.message(data)
    if codec is not None and not recipients:
        recipients = header_recipients(data, codec.domain)
    weighed: list[Weighed] = []
    ignored: list[Verdict] = []
    for verdict in verdicts:
        if verdict.reason == "vacation":
            ignored.append(verdict)
            continue
        paths = list(recipients)
        if verdict.reason == "feedback" and codec is not None:
            # A feedback loop mails its report to an address of its own choosing, but
            # the report names the original's envelope sender (Original-Mail-From) and
            # the original keeps the Return-Path it was delivered with: ours, signed.
            paths += [verdict.envelope_sender] if verdict.envelope_sender else []
            if verdict.return_path_token:
                paths.append(f"{PREFIX}{verdict.return_path_token}@{codec.domain}")
        kind, note, token, message_id, redacted = _weigh(verdict, paths, codec, now)
        if token:
            verdict = replace(verdict, return_path_token=token)
        if verdict.reason == "feedback":
            # Anyone can mail an ARF report: only one tied to our send is enforced.
            kind = "arf" if kind == "dsn-verified" else "arf-unverified"
        weighed.append(Weighed(verdict, kind, note, message_id, redacted))
    return weighed, ignored


def settle(weighed: Weighed, sent: SentRecords | None) -> Weighed:
    """Ask what was sent: a verified token for a message that never went to that
    recipient is a guessed id; a redacted complaint's recipient is recovered."""
    mid = weighed.message_id
    if weighed.redacted is not None and mid is not None:
        return weighed.recovered(sent.recipients(mid) if sent is not None else None)
    if sent is not None and mid is not None and not sent.was_sent(mid, weighed.verdict.recipient):
        return weighed.never_sent()
    return weighed


def assemble(weighed: Sequence[Weighed], ignored: Sequence[Verdict], actor: str) -> Judgement:
    """Batch the weighed verdicts by their evidence (one sink call each)."""
    groups: dict[tuple[EvidenceKind, str], list[Verdict]] = {}
    for w in weighed:
        groups.setdefault((w.kind, w.note), []).append(w.verdict)
    batches = tuple(
        Batch(tuple(vs), Evidence(kind=kind, actor=actor, note=note))
        for (kind, note), vs in groups.items()
    )
    return Judgement(batches, tuple(ignored))


def judge(
    data: bytes,
    recipients: Sequence[str],
    *,
    codec: VerpCodec | None,
    classifier: Classifier,
    actor: str,
    sent: SentRecords | None = None,
    now: float | None = None,
) -> Judgement:
    """:func:`weigh`, :func:`settle` each verdict with what was sent (None: not known
    here, so no guessed id is caught and no redacted complainer recovered),
    :func:`assemble`."""
    weighed, ignored = weigh(data, recipients, codec=codec, classifier=classifier, now=now)
    return assemble([settle(w, sent) for w in weighed], ignored, actor)


def _weigh(
    verdict: Verdict,
    recipients: Sequence[str],
    codec: VerpCodec | None,
    now: float,
) -> tuple[EvidenceKind, str, str, int | None, VerpToken | None]:
    """(evidence kind, note, token, message id when verified, the token of a complaint
    whose report redacts the recipient) for one verdict."""
    if codec is None:
        return "dsn-unverified", "no-token: no bounce domain is configured", "", None, None
    complaint = verdict.reason == "feedback"
    if not verdict.recipient and not complaint:
        # A bounce that names nobody can condemn nobody, whatever its token says.
        return "dsn-unverified", "no-recipient: the bounce names no recipient", "", None, None
    named = verdict.recipient or None
    best = _best([(r, codec.check(r, named, now=now)) for r in recipients])
    if best is None:
        return "dsn-unverified", "no-token: not sent to a return path", "", None, None
    address, check = best
    token = address.partition("@")[0]
    unnamed = check.verified and named is None
    if complaint and check.token is not None and (unnamed or check.reason == "other-recipient"):
        # Our signature, unexpired, but the report names nobody, or someone the token was
        # not made for (redacted?): the message's recipients decide (settle).
        mid = check.token.message_id
        return "dsn-unverified", f"redacted: message {mid}", token, mid, check.token
    if not check.verified:
        return "dsn-unverified", f"{check.reason}: {check.detail}", token, None, None
    mid = check.message_id
    return "dsn-verified", f"return path of message {mid}", token, mid, None

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
* **auto-replies** and challenge/response mail (``vacation``) change nothing and are
  not passed on.

The address the bounce came back to is the SMTP envelope recipient when there is one
(the listener); mail read from a mailbox has no envelope, so the headers that record
it (``Delivered-To``, ``X-Original-To``, ``Envelope-To``, then ``To``) are used - only
addresses at the bounce domain, and a header naming a token is no weaker than an
envelope naming it: the token's signature is what counts.
"""

from __future__ import annotations

import email.parser
import email.policy
import email.utils
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from smtpguard.classify import Classifier, Verdict
from smtpguard.intake.verp import PREFIX, VerpCheck, VerpCodec
from smtpguard.policy import Evidence, EvidenceKind

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
            + (f" ({b.evidence.note})" if b.evidence.kind == "dsn-unverified" else "")
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


@dataclass(frozen=True, slots=True)
class Weighed:
    """One verdict and the evidence it deserves (before batching)."""

    verdict: Verdict
    kind: EvidenceKind
    note: str
    message_id: int | None = None  # dsn-verified: the queued message the token names

    def never_sent(self) -> Weighed:
        """The queue says that message never went to this recipient: a guessed id."""
        return replace(
            self,
            kind="dsn-unverified",
            note=f"unknown-message: message {self.message_id} never went to this recipient",
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
        kind, note, token, message_id = _weigh(verdict, paths, codec, now)
        if token:
            verdict = replace(verdict, return_path_token=token)
        if verdict.reason == "feedback":
            # Anyone can mail an ARF report: only one tied to our send is enforced.
            kind = "arf" if kind == "dsn-verified" else "arf-unverified"
        weighed.append(Weighed(verdict, kind, note, message_id))
    return weighed, ignored


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
    sent: Callable[[int, str], bool] | None = None,
    now: float | None = None,
) -> Judgement:
    """:func:`weigh`, check verified ones against the queue (``sent(message id,
    recipient)``, see :func:`smtpguard.store.queue.was_sent`; None: not checked),
    :func:`assemble`."""
    weighed, ignored = weigh(data, recipients, codec=codec, classifier=classifier, now=now)
    if sent is not None:
        weighed = [
            w.never_sent()
            if w.message_id is not None and not sent(w.message_id, w.verdict.recipient)
            else w
            for w in weighed
        ]
    return assemble(weighed, ignored, actor)


def _weigh(
    verdict: Verdict,
    recipients: Sequence[str],
    codec: VerpCodec | None,
    now: float,
) -> tuple[EvidenceKind, str, str, int | None]:
    """(evidence kind, note, token, message id when verified) for one verdict."""
    if codec is None:
        return "dsn-unverified", "no-token: no bounce domain is configured", "", None
    if not verdict.recipient:
        # A bounce that names nobody can condemn nobody, whatever its token says.
        return "dsn-unverified", "no-recipient: the bounce names no recipient", "", None
    best = _best([(r, codec.check(r, verdict.recipient, now=now)) for r in recipients])
    if best is None:
        return "dsn-unverified", "no-token: not sent to a return path", "", None
    address, check = best
    token = address.partition("@")[0]
    if not check.verified:
        return "dsn-unverified", f"{check.reason}: {check.detail}", token, None
    mid = check.message_id
    return "dsn-verified", f"return path of message {mid}", token, mid

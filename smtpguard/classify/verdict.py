"""The classifier's output record: one verdict per failed (or reported) recipient.

Every producer of bounce knowledge (the relay's inline replies, returned DSNs, ARF
reports, log lines) ends in this one shape, so the suppression policy and the
store only ever have to understand one record.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal, get_args

Bounce = Literal["hard", "soft", "none"]
Stage = Literal["connect", "helo", "mail", "rcpt", "data", "eom", "unknown"]
#: The SMTP stages a reply can answer, in session order (for rules, the CLI, checks).
STAGES: tuple[str, ...] = get_args(Stage)
#: Other names callers use for a stage. The greeting is the connect stage; EHLO, LHLO,
#: STARTTLS and AUTH all come before any address is given, so they count as ``helo``.
STAGE_ALIASES: dict[str, str] = {
    "greeting": "connect", "banner": "connect", "ehlo": "helo", "lhlo": "helo",
    "starttls": "helo", "tls": "helo", "auth": "helo", "mail from": "mail",
    "rcpt to": "rcpt", "bdat": "data", "end of data": "eom", "dot": "eom",
}  # fmt: skip
#: Stages before any recipient was named (RFC 5321 section 3.3): a reply there is about
#: the client or the sender, so no verdict at these stages ever suppresses a recipient.
PRE_RECIPIENT_STAGES = frozenset({"connect", "helo", "mail"})

#: Reasons that mean the *address itself* is bad (Sisimai's hard-bounce rule).
#: ``notaccept`` is conditional: only when the failure is permanent (not 4xx).
ADDRESS_REASONS = frozenset({"userunknown", "hostunknown", "hasmoved"})
#: Reasons that may suppress the recipient (when the bounce is hard): the suppression
#: list ranks an entry with one of them above every other machine-found reason.
SUPPRESS_REASONS = ADDRESS_REASONS | {"notaccept"}
#: Reasons that are not failures at all.
NON_BOUNCE_REASONS = frozenset({"delivered", "feedback", "vacation"})

#: The reason vocabulary (Sisimai v5), see the corpus README (``tests/corpus/README.md``).
REASONS = frozenset(
    {
        "authfailure", "badreputation", "blocked", "contenterror", "delivered",
        "emailtoolarge", "expired", "failedstarttls", "feedback", "filtered",
        "hasmoved", "hostunknown", "mailboxfull", "mailererror", "networkerror",
        "norelaying", "notaccept", "notcompliantrfc", "onhold", "policyviolation",
        "ratelimited", "rejected", "requireptr", "securityerror", "spamdetected",
        "suppressed", "suspend", "syntaxerror", "systemerror", "systemfull",
        "undefined", "userunknown", "vacation", "virusdetected",
    }
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Verdict:
    """Why one delivery to one recipient failed, and what to do about it.

    ``bounce`` answers "will this delivery, as sent, ever succeed?" (hard = no,
    soft = retry later, none = it was not a failure). ``suppress`` answers the
    narrower question "is the recipient address itself bad?": only then may the
    address be put on the suppression list. A policy or reputation rejection is
    ``bounce="hard"`` but ``suppress=False``: it is the sender's problem.
    """

    recipient: str = ""
    status: str = ""  # RFC 3463 enhanced status, e.g. "5.1.1"; "" when unknown
    reply_code: str = ""  # SMTP reply code, e.g. "550"; "" when unknown
    reason: str = "undefined"
    bounce: Bounce = "soft"
    suppress: bool = False
    diagnostic: str = ""
    remote_host: str = ""
    stage: Stage = "unknown"
    action: str = ""  # RFC 3464 Action: failed / delayed / delivered / relayed / expanded
    # What ties the bounce to the original send, when the bounce carries it.
    message_id: str = ""
    envelope_sender: str = ""
    return_path_token: str = ""
    feedback_type: str = ""  # ARF only: abuse, opt-out, fraud, ...
    rule: str = ""  # id of the rule that decided the reason ("" = none matched)
    format: str = ""  # detector that produced the verdict (rfc3464, arf, exim, reply, ...)
    extra: dict[str, str] = field(default_factory=dict)
    # RFC 3464 2.3.1 / 2.3.2: the address the sender gave (Original-Recipient, or the alias
    # Sendmail reports "expanded from") and the address the reporting MTA tried last
    # (Final-Recipient). ``recipient`` is the address we sent to: the original one when
    # the report names it, else the final one.
    original_recipient: str = ""
    final_recipient: str = ""
    provider: str = ""  # provider the remote host or recipient domain belongs to ("google")

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass(slots=True)
class Failure:
    """What a bounce format detector (or the relay) read off one recipient's failure.

    Structure only, no judgement: detectors in ``classify/formats/`` fill what the
    message says; :func:`smtpguard.classify.decide.decide` turns it into a
    :class:`Verdict` using the rules (wording) and the status/reply codes.
    ``reason_hint`` lets a detector pass a reason the *structure* proves (an ARF
    report is ``feedback``, an auto-reply is ``vacation``, a positive DSN is
    ``delivered``, an MTA's "retry timeout exceeded" section is ``expired``);
    wording-based reasons are the rules' job, not the detector's.
    ``diagnostic_type`` is RFC 3464's diagnostic-type (section 2.3.6: ``smtp``, ``x-unix``...)
    when the detector read one; ``x-unix`` says a local delivery program wrote the text.
    ``explanation`` is the reporting MTA's own human-readable text for the whole report
    (RFC 3464 section 2.1's first part), when it has one: a mailbox state it names
    ("account is disabled") outweighs a generic "user unknown" in ``diagnostic``.
    ``local_delivery`` names the MTA when the structure shows the reporting MTA delivered
    locally (it is the recipient's final destination, no remote server is quoted): its
    "no such user" is then the mailbox owner's own answer, whatever the SMTP stage.
    """

    recipient: str = ""
    status: str = ""
    reply_code: str = ""
    diagnostic: str = ""
    action: str = ""
    remote_host: str = ""
    stage: Stage = "unknown"
    reason_hint: str = ""
    message_id: str = ""
    envelope_sender: str = ""
    return_path_token: str = ""
    feedback_type: str = ""
    format: str = ""
    explanation: str = ""
    diagnostic_type: str = ""
    original_recipient: str = ""
    final_recipient: str = ""
    local_delivery: str = ""

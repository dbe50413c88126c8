"""Fields -> verdict: the one place that decides reason, ``bounce`` and ``suppress``.

Every producer (the relay's inline replies, returned DSNs, ARF reports, auto-replies)
hands a :class:`Failure` here, so the policy lives in one function.

Reason, first answer wins:

1. ``reason_hint`` - a fact the bounce *structure* proves (ARF = feedback, auto-reply =
   vacation, ``Action: delivered`` = delivered, an MTA's retry-timeout section =
   expired, an MTA's own "domain lookup failed" section = hostunknown);
   ``Action: delivered/relayed/expanded`` without a hint is ``delivered``; an
   ``expired`` hint yields to a specific enhanced status that names another cause
   ("5.4.312 Message expired, DNS query failed" is a network error);
2. the first text rule that matches the diagnostic (``rules/default.toml``) - wording
   beats codes, because servers reuse codes loosely (a ``550 5.1.1`` that says "too
   many recipients this hour" is rate limiting, not an unknown user);
3. the enhanced status table (RFC 3463), then the reply code table (RFC 5321);
4. ``undefined`` - for a returned message Sisimai's fallbacks instead: ``expired`` when
   ``Action: delayed``, else ``onhold``; either way counted as unexplained.

The SMTP stage refines this (RFC 5321 section 3.3): an address reason (or a generic
security / policy / filter answer, "5.7.1 Access denied") in reply to ``MAIL FROM`` is
about the sender (``rejected``); a refusal at connect / HELO that nothing else explains is
about the client (``blocked``); a generic "user unknown" that is KNOWN to answer DATA or
later (not ``RCPT TO``) and is not backed by a 5.1.x status is a recipient-side filter
(``filtered``), as Sisimai has it - when nothing says which command it answered, it stays
``userunknown``. Two more facts of the structure: a diagnostic of RFC 3464 type ``X-Unix``
comes from a local delivery program, so it is ``mailererror`` unless it names a mailbox
state (quota) or an unknown user that a 5.1.x status confirms; and when the reporting MTA's
own explanation (the DSN's human-readable part, before any recipient's lines) names a state
of an existing mailbox (disabled, full) while the diagnostic says "user unknown", the
mailbox state wins - conflicting evidence never suppresses.

Provider awareness: the remote host (or a host the text names, or the recipient's domain)
selects a provider from ``rules/providers.toml``; that provider's documented wording is
tried before the generic rules (:meth:`RuleSet.match`).

``bounce``: ``none`` for delivered / feedback / vacation (and positive actions);
``soft`` when the failure is temporary (4xx code, 4.x.x status, ``Action: delayed``, or
a rule that says so, e.g. greylisting); ``hard`` otherwise.

``suppress`` (Sisimai's hard-bounce rule, see the corpus README): the reason says the
*address itself* is bad - ``userunknown``, ``hostunknown``, ``hasmoved``, ``notaccept`` -
**and** the bounce is hard, **and** the reply came after a recipient was named (never at
connect, greeting, HELO/EHLO, STARTTLS or ``MAIL FROM``), **and** the text names no other
address than the verdict's recipient (a reply about ``<someone-else@x>`` is no evidence
about this recipient). A soft bounce never suppresses: a ``450 4.1.1`` is often a
recipient lookup that failed for a moment (Postfix's unverified-recipient defer), and
suppressing a good address is the worst mistake the classifier can make. Sisimai calls
a ``4.1.1 userunknown`` hard; we give up that agreement for precision.
"""

from __future__ import annotations

import re

from smtpguard.classify.reply import parse_reply
from smtpguard.classify.rules import Rule, RuleSet, normalize
from smtpguard.classify.verdict import (
    NON_BOUNCE_REASONS,
    PRE_RECIPIENT_STAGES,
    REASONS,
    STAGE_ALIASES,
    STAGES,
    SUPPRESS_REASONS,
    Failure,
    Verdict,
)

#: Reasons that say the recipient's mailbox exists (so the address is good).
MAILBOX_STATES = frozenset({"suspend", "mailboxfull", "systemfull"})
#: Reasons a local delivery program's (X-Unix) text may give; anything else is mailererror.
#: ``userunknown`` only survives when confirmed (a 5.1.x status: the program exited EX_NOUSER).
LOCAL_PROGRAM_REASONS = MAILBOX_STATES | {"mailererror", "userunknown"}
#: RFC 3464 section 2.3.3 actions that are not failures.
POSITIVE_ACTIONS = frozenset({"delivered", "relayed", "expanded"})
#: Reasons that, in reply to MAIL FROM, can only be about the sender: "550 5.1.1 unknown
#: user" there -> ``rejected`` (a 5.7.x "access denied" there has its own rule).
MAIL_STAGE_REJECTED = SUPPRESS_REASONS | {"filtered", "suspend", "mailboxfull"}
#: Local parts of role addresses a reply may name without being about a recipient
#: ("contact postmaster@example.net"): RFC 2142 mailbox names and the bounce sender.
ROLE_LOCAL_PARTS = frozenset(
    {"postmaster", "abuse", "hostmaster", "mailer-daemon", "webmaster", "noc", "security"}
)
#: Diagnostic text kept on a verdict.
MAX_DIAGNOSTIC = 1000
# An address in reply text: bounded, linear (no class overlaps '@').
_ADDR_RE = re.compile(
    r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]{1,64}@[A-Za-z0-9-]{1,63}(?:\.[A-Za-z0-9-]{1,63}){1,8}"
)
_STAGES = frozenset(STAGES)
_CODE_RE = re.compile(r"[2-5]\d\d")
_STATUS_RE = re.compile(r"[245]\.\d{1,3}\.\d{1,3}")
# "try again in 5 minutes", "retry after 300 seconds": a bounded, linear pattern.
_DELAY_RE = re.compile(r"(\d{1,6}) ?(seconds?|secs?|minutes?|mins?|hours?|hrs?)\b")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600}


def decide(
    failure: Failure, rules: RuleSet, *, returned: bool = True, sisimai_stages: bool = False
) -> Verdict:
    """Turn one :class:`Failure` into a :class:`Verdict`. Pure; never raises on odd fields.

    ``returned``: the failure was read off a returned message (a DSN or an MTA's
    bounce), where Sisimai's conventions apply so results compare with it: a failure
    without an enhanced status gets Sisimai's pseudo status for its reason (``5.0.911``
    for userunknown...) marked ``extra["status_source"] = "pseudo"``, and one that
    nothing explains is ``expired`` when ``Action: delayed``, else ``onhold`` when it
    has a diagnostic (Sisimai's "could not decide"), marked ``rule = "fallback:..."``.
    The relay's inline replies pass False: no pseudo status, plain ``undefined``.

    ``sisimai_stages``: Sisimai's stricter convention, where "user unknown" that nothing
    shows to answer ``RCPT TO`` (stage unknown too) is ``filtered`` unless a 5.1.x status
    backs it. Off by default (an unknown stage keeps the wording's reason); the labelled
    corpus follows it, so the benchmark scores both.
    """
    code = _text(failure.reply_code).strip()
    code = code if _CODE_RE.fullmatch(code) else ""
    status = _text(failure.status).strip()
    status = status if _STATUS_RE.fullmatch(status) else ""
    diagnostic = _text(failure.diagnostic)[: MAX_DIAGNOSTIC * 4]
    if diagnostic and (not code or not status):
        p_code, p_status, _ = parse_reply(diagnostic[:MAX_DIAGNOSTIC])
        code = code or p_code
        status = status or p_status
    action = _text(failure.action).strip().lower()
    stage = normalize_stage(failure.stage)
    recipient = _text(failure.recipient)
    provider = rules.providers.identify(_text(failure.remote_host), recipient, diagnostic)
    hint = failure.reason_hint if failure.reason_hint in REASONS else ""

    rule: Rule | None = None
    decided_by = ""
    reason = ""
    by_status = rules.status_reason(status)
    if hint == "expired" and by_status not in ("", "undefined", "expired", *SUPPRESS_REASONS):
        # "550 5.4.312 Message expired, DNS query failed": the MTA gave up, but the
        # specific enhanced status names why (Sisimai re-examines "expired" the same way).
        reason, decided_by = by_status, f"status:{status}"
    elif hint:
        reason, decided_by = hint, f"hint:{hint}"
    elif action in POSITIVE_ACTIONS or (
        action not in ("failed", "delayed") and (status.startswith("2") or code.startswith("2"))
    ):
        reason, decided_by = "delivered", f"action:{action or 'positive'}"
    else:
        text = normalize(diagnostic)
        rule = rules.match(text, status, code, stage, provider) if text else None
        if rule is not None:
            reason, decided_by = rule.reason, rule.id
            later = stage not in ("unknown", "mail", *rule.confirm_stages)
            if (
                rule.unconfirmed_reason
                and (later or (sisimai_stages and stage not in rule.confirm_stages))
                and not status_confirms(rules, status, rule.reason)
            ):
                # Sisimai's convention: "user unknown" known to answer DATA or later (not
                # RCPT TO, not backed by a 5.1.x) is a recipient-side filter. With no stage
                # known, the wording stands.
                reason, decided_by = rule.unconfirmed_reason, f"{rule.id}:unconfirmed"
        if not reason and by_status and by_status != "undefined":
            reason, decided_by = by_status, f"status:{status}"
        if not reason and code in rules.reply_code:
            reason, decided_by = rules.reply_code[code], f"reply_code:{code}"
        if _text(failure.diagnostic_type).strip().lower() == "x-unix" and (
            reason not in LOCAL_PROGRAM_REASONS
        ):
            # RFC 3464 2.3.6: an X-Unix diagnostic is a local delivery program's exit, not a
            # remote server's reply; only what it says about the mailbox (quota, no such
            # user confirmed by 5.1.x) is kept.
            reason, decided_by = "mailererror", f"diagnostic-type:x-unix:{decided_by or 'none'}"
        address_rule = rule is not None and rule.reason in SUPPRESS_REASONS
        if stage == "mail" and (address_rule or reason in MAIL_STAGE_REJECTED or not reason):
            # RFC 5321 3.3: a MAIL FROM reply is about the reverse-path, so "unknown
            # user" or "access denied" there means the sender, never the recipient.
            reason, decided_by = "rejected", f"stage:mail:{decided_by or 'none'}"
        if not reason and stage in ("connect", "helo"):
            # Refused before any address was given: the connecting client is the problem.
            reason, decided_by = "blocked", f"stage:{stage}"
        if not reason and returned:
            if action == "delayed":
                reason, decided_by = "expired", "fallback:delayed"
            elif diagnostic.strip():
                reason, decided_by = "onhold", "fallback:onhold"
        reason = reason or "undefined"
        if reason in SUPPRESS_REASONS and failure.explanation and stage != "mail":
            explanation = normalize(_text(failure.explanation)[:MAX_DIAGNOSTIC])
            state = rules.match_among(explanation, MAILBOX_STATES, status, code, stage)
            if state is not None:
                # The reporting MTA's own explanation names a state of an existing mailbox
                # (disabled, full): conflicting evidence, so the address is not condemned.
                rule, reason, decided_by = state, state.reason, f"{state.id}:explanation"

    temporary = (
        code.startswith("4")
        or status.startswith("4")
        or action == "delayed"
        or (rule is not None and rule.temporary)
    )
    if reason in NON_BOUNCE_REASONS or action in POSITIVE_ACTIONS:
        bounce = "none"
    elif temporary:
        bounce = "soft"
    else:
        bounce = "hard"
    suppress = (
        bounce == "hard"
        and reason in SUPPRESS_REASONS
        and stage not in PRE_RECIPIENT_STAGES
        and not names_other_address(diagnostic, failure)
    )

    extra: dict[str, str] = {}
    if rule is not None and rule.greylist:
        extra["greylist"] = "1"
        delay = retry_after(normalize(diagnostic))
        if delay is not None:
            extra["retry_after"] = str(delay)
    if not status and returned and bounce != "none" and reason in rules.pseudo_status:
        status = f"{'4' if temporary else '5'}.0.{rules.pseudo_status[reason]}"
        extra["status_source"] = "pseudo"

    return Verdict(
        recipient=recipient,
        status=status,
        reply_code=code,
        reason=reason,
        bounce=bounce,
        suppress=suppress,
        diagnostic=diagnostic[:MAX_DIAGNOSTIC],
        remote_host=failure.remote_host,
        stage=stage,  # type: ignore[arg-type]
        action=action,
        message_id=failure.message_id,
        envelope_sender=failure.envelope_sender,
        return_path_token=failure.return_path_token,
        feedback_type=failure.feedback_type,
        rule=decided_by,
        format=failure.format,
        extra=extra,
        original_recipient=_text(failure.original_recipient),
        final_recipient=_text(failure.final_recipient),
        provider=provider,
    )


def normalize_stage(stage: object) -> str:
    """A known stage name ("rcpt"), an alias of one ("starttls" -> "helo"), or "unknown"."""
    s = _text(stage).strip().lower()
    if s in _STAGES:
        return s
    return STAGE_ALIASES.get(s, "unknown")


def names_other_address(diagnostic: str, failure: Failure) -> bool:
    """Does the reply name an address that is not this recipient (any of its forms)?

    "550 5.1.1 <b@example.net>: User unknown" in a verdict for a@example.net is evidence
    about b, not a: it must not suppress a. Role addresses (postmaster@, abuse@...) a reply
    names as a contact do not count. A verdict without a recipient has nothing to protect.
    """
    recipient = _text(failure.recipient).lower()
    if not recipient or "@" not in diagnostic:
        return False
    mine = {
        recipient,
        _text(failure.original_recipient).lower(),
        _text(failure.final_recipient).lower(),
    }
    for n, m in enumerate(_ADDR_RE.finditer(diagnostic[: MAX_DIAGNOSTIC * 2])):
        addr = m.group(0).strip(".").lower()
        if addr not in mine and addr.partition("@")[0] not in ROLE_LOCAL_PARTS:
            return True
        if n >= 20:
            break
    return False


def status_confirms(rules: RuleSet, status: str, reason: str) -> bool:
    """Does the enhanced status back a rule's own reason?

    Yes when the status table maps it to that reason (5.1.1 -> userunknown), or when it is
    an addressing status (RFC 3463 section 3.2, X.1.XXX) with a detail the table does not
    know (vendors' 5.1.351, 5.1.10x): it still says "the address", not "a filter".
    """
    by_status = rules.status_reason(status)
    if by_status == reason:
        return True
    return not by_status and status.split(".")[1:2] == ["1"] and reason in SUPPRESS_REASONS


def _text(value: object) -> str:
    """A detector may leave a field None or give an int code: treat it as text."""
    return value if isinstance(value, str) else ("" if value is None else str(value))


def retry_after(text: str) -> int | None:
    """Seconds named in "try again in 5 minutes" / "greylisted for 300 seconds", if any."""
    m = _DELAY_RE.search(text)
    if not m:
        return None
    return int(m.group(1)) * _UNIT_SECONDS[m.group(2)[0]]

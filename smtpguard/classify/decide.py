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
about the client (``blocked``). Sisimai's stage rule, the default: a generic "user unknown"
that nothing shows to answer ``RCPT TO`` (stage unknown, or DATA and later) and no 5.1.x
status backs may be a recipient-side filter, so it is ``filtered`` - unless the structure
shows the mailbox owner itself speaking (:func:`confirmed_by`: the provider the remote
host / reporting MTA belongs to, in its documented "no such account" wording; or the
reporting MTA's own local delivery). Suppressing a good address is the worst error, so an
unconfirmed "user unknown" never suppresses. Any address verdict whose text is about the
*sender* (the sender's wording, or the envelope sender's domain named in the remote
reply: :func:`about_sender`) is ``rejected``. Two more facts of the structure: a
diagnostic of RFC 3464 type ``X-Unix`` comes from a local delivery program, so it is
``mailererror`` unless it names a mailbox state (quota) or an unknown user that a 5.1.x
status confirms; and when the reporting MTA's own explanation (the DSN's human-readable
part, before any recipient's lines) names a state of an existing mailbox (disabled, full)
while the diagnostic says "user unknown", the mailbox state wins - conflicting evidence
never suppresses. A final failure report whose only evidence is a transient (4yz) reply
code is ``expired``: the MTA retried until it gave up.

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
about this recipient; a "host unknown" reply naming a domain unrelated to the recipient's
is no evidence either). A soft bounce never suppresses: a ``450 4.1.1`` is often a
recipient lookup that failed for a moment (Postfix's unverified-recipient defer), and
suppressing a good address is the worst mistake the classifier can make. Sisimai calls
a ``4.1.1 userunknown`` hard; we give up that agreement for precision.
"""

from __future__ import annotations

import re

from smtpguard.classify.reply import parse_reply
from smtpguard.classify.rules import MAILBOX_STATES, Rule, RuleSet, normalize
from smtpguard.classify.verdict import (
    ADDRESS_REASONS,
    NON_BOUNCE_REASONS,
    PRE_RECIPIENT_STAGES,
    REASONS,
    STAGE_ALIASES,
    STAGES,
    SUPPRESS_REASONS,
    Failure,
    Verdict,
)

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
# A domain name in reply text: labels bounded, linear (classes do not overlap the dot).
_DOMAIN_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,62}(?:\.[a-z0-9-]{1,63}){1,8}")
# An SMTP reply code as quoted in a diagnostic: "553 ", "550-", "550:".
_REPLY_CODE_RE = re.compile(r"(?<![\w.])[245][0-5]\d(?=[ :-])")
#: Reasons whose wording says the failure concerns the sender (the reverse-path).
SENDER_REASONS = frozenset({"rejected"})
_CODE_RE = re.compile(r"[2-5]\d\d")
_STATUS_RE = re.compile(r"[245]\.\d{1,3}\.\d{1,3}")
# "try again in 5 minutes", "retry after 300 seconds": a bounded, linear pattern.
_DELAY_RE = re.compile(r"(\d{1,6}) ?(seconds?|secs?|minutes?|mins?|hours?|hrs?)\b")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600}


def decide(failure: Failure, rules: RuleSet, *, returned: bool = True) -> Verdict:
    """Turn one :class:`Failure` into a :class:`Verdict`. Pure; never raises on odd fields.

    ``returned``: the failure was read off a returned message (a DSN or an MTA's
    bounce), where Sisimai's conventions apply so results compare with it: a failure
    without an enhanced status gets Sisimai's pseudo status for its reason (``5.0.911``
    for userunknown...) marked ``extra["status_source"] = "pseudo"``, and one that
    nothing explains is ``expired`` when ``Action: delayed``, else ``onhold`` when it
    has a diagnostic (Sisimai's "could not decide"), marked ``rule = "fallback:..."``.
    The relay's inline replies pass False: no pseudo status, plain ``undefined``.
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
    provider, provider_by = rules.providers.identify_source(
        _text(failure.remote_host), recipient, diagnostic
    )
    hint = failure.reason_hint if failure.reason_hint in REASONS else ""
    text = normalize(diagnostic) if diagnostic else ""

    rule: Rule | None = None
    decided_by = ""
    reason = ""
    extra: dict[str, str] = {}
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
        rule = rules.match(text, status, code, stage, provider) if text else None
        if rule is not None:
            reason, decided_by = rule.reason, rule.id
            if (
                rule.unconfirmed_reason
                and stage not in rule.confirm_stages
                and stage != "mail"
                and not status_confirms(rules, status, rule.reason)
            ):
                # Sisimai's stage rule: "user unknown" that nothing shows to answer RCPT TO
                # (stage unknown, or DATA and later) and no 5.1.x status backs is a
                # recipient-side filter - unless the structure shows the mailbox owner
                # itself speaking (see confirmed_by).
                by = confirmed_by(rule, failure, provider, provider_by)
                if by:
                    extra["confirmed_by"] = by
                else:
                    reason, decided_by = rule.unconfirmed_reason, f"{rule.id}:unconfirmed"
        if not reason and by_status and by_status != "undefined":
            reason, decided_by = by_status, f"status:{status}"
        if not reason and code in rules.reply_code:
            reason, decided_by = rules.reply_code[code], f"reply_code:{code}"
            if code.startswith("4") and action == "failed":
                # RFC 5321 4.2.1: a 4yz reply is transient. A final failure report whose
                # only evidence is one says the MTA retried until it gave up.
                reason, decided_by = "expired", f"gave-up:{decided_by}"
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
            state = rules.explanation_state(_text(failure.explanation), status, code, stage)
            if state is not None:
                # The reporting MTA's own explanation names a state of an existing mailbox
                # (disabled, full): conflicting evidence, so the address is not condemned.
                rule, reason, decided_by = state, state.reason, f"{state.id}:explanation"

    if reason in ADDRESS_REASONS or (rule is not None and rule.reason in ADDRESS_REASONS):
        sender_side = about_sender(text, failure, stage, rules, status, code)
        if sender_side:
            # The reply is about the reverse-path (RFC 5321 3.3), whatever structure or
            # wording said "unknown": the sender's domain named as not existing, or the
            # sender's wording ("Sender verify failed: Unrouteable address").
            reason, decided_by = "rejected", f"sender:{sender_side}:{decided_by}"

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
        and not (
            reason == "hostunknown"
            and names_other_domain(diagnostic, recipient, whole=failure.format == "reply")
        )
    )

    if rule is not None and rule.greylist:
        extra["greylist"] = "1"
        delay = retry_after(text)
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


def confirmed_by(rule: Rule, failure: Failure, provider: str, provider_by: str) -> str:
    """Why an unknown-user rule stands without a stage: the mailbox owner said it ('' if not).

    Two structural facts make the answer the mailbox owner's own, whatever command it
    answered: the provider the remote host / reporting MTA / a host the text names belongs
    to (not merely the recipient's domain) answered in its documented "no such account"
    wording (``provider_confirms`` rules: Gmail's "The email account that you tried to
    reach does not exist"), or the reporting MTA delivered locally (it is the recipient's
    final destination) and says the local user does not exist (``Failure.local_delivery``,
    set by a named-MTA detector: qmail-local, IMail, Exim's routers, Courier's local
    delivery).
    """
    if rule.provider_confirms and provider in rule.providers and provider_by in ("host", "text"):
        return f"provider:{provider}"
    local = _text(failure.local_delivery)
    if local:
        return f"local-delivery:{local}"
    return ""


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


def about_sender(
    text: str, failure: Failure, stage: str, rules: RuleSet, status: str = "", code: str = ""
) -> str:
    """Is an address verdict really about the sender? ('' when not; else what shows it).

    ``"wording"``: the sender-side wording of the rules ("Sender verify failed",
    "Unroutable sender address", "Domain of sender address ... does not exist") is in the
    same text, at any stage - a structural hint such as Exim's "Unrouteable address" may
    be the sender verification's. ``"domain"``: the remote server's reply (the text from
    its reply code on) names the envelope sender's domain on its own (not inside an
    address) and the recipient's domain is another one: "553 neko.example.com does not
    exist" for a sender at neko.example.com says nothing about the recipient. ``text`` is
    the normalised diagnostic.
    """
    if not text:
        return ""
    if rules.match_among(text, SENDER_REASONS, status, code, stage) is not None:
        return "wording"
    sender_domain = _domain(_text(failure.envelope_sender))
    if not sender_domain or _related(sender_domain, _domain(_text(failure.recipient))):
        return ""
    reply = text if failure.format == "reply" else _reply_part(text)
    if sender_domain in reply and sender_domain in _standalone_domains(reply):
        return "domain"
    return ""


def names_other_domain(diagnostic: str, recipient: str, *, whole: bool = False) -> bool:
    """Does a remote "host unknown" reply name a domain unrelated to the recipient's?

    "550 5.1.2 Host unknown (Name server: mx.example.org: host not found)" for a recipient
    at example.org names the recipient's own MX: evidence. A reply naming some other
    domain ("553 neko.example.com does not exist" for a recipient at example.net) is about
    that domain, not the recipient's (the domain twin of :func:`names_other_address`).
    Only the remote server's words count (from its reply code on: the reporting MTA's own
    introduction names its own host; ``whole``: the text is the reply itself, as the relay
    sees it); domains inside addresses, URLs and the remote host's own label
    ("host mx.x[192.0.2.1]") do not.
    """
    mine = _domain(recipient)
    if not mine:
        return False
    low = diagnostic[: MAX_DIAGNOSTIC * 2].lower()
    reply = low if whole else _reply_part(low)
    return any(not _related(other, mine) for other in _standalone_domains(reply))


def _reply_part(text: str) -> str:
    """``text`` from its first SMTP reply code on ('' when it quotes no reply)."""
    m = _REPLY_CODE_RE.search(text)
    return text[m.start() :] if m else ""


def _domain(address: str) -> str:
    return address.rpartition("@")[2].strip(" <>.").lower() if "@" in address else ""


def _related(a: str, b: str) -> bool:
    """Same domain, or one a subdomain of the other (mx.example.org vs example.org)."""
    return a == b or a.endswith("." + b) or b.endswith("." + a)


def _standalone_domains(text: str) -> list[str]:
    """Domain names ``text`` states on their own: not part of an address ("@x"), a URL
    ("//x", "x/path") or a remote host label ("x[192.0.2.1]", "x [192.0.2.1]")."""
    out: list[str] = []
    for n, m in enumerate(_DOMAIN_RE.finditer(text)):
        if n >= 40:
            break
        name = m.group(0).strip(".-")
        if not name.rpartition(".")[2].isalpha():
            continue  # a version, an IP address, a queue id
        start, end = m.start(), m.end()
        before = text[max(0, start - 2) : start]
        after = text[end : end + 2]
        if before.endswith(("@", ".", "/", "-")) or after.startswith(("[", " [", "/", "@")):
            continue
        out.append(name)
    return out


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

"""The evidence rules: may this verdict, given where it came from, touch the list?

Pure functions, no I/O; the sink applies them to every verdict before anything
is written, whatever the classifier's own ``suppress`` flag says. In order:

1. an operator's decision (``manual``, ``import``) stands;
2. a complaint (``arf``) is about the address by definition; one we cannot tie to
   our send (``arf-unverified``: no valid signed return path in the report) is
   recorded, never enforced, since anyone can mail an ARF report; an unsubscribe
   (reason ``unsubscribe``) is about the address by definition too, and is taken
   only from an ESP's signed event (``webhook``): the recipient asked the ESP;
3. only a hard bounce can suppress;
4. a DNS answer (``dns``) says something about a domain, never an address:
   NXDOMAIN and null MX (``hostunknown``, ``notaccept``) are domain candidates
   (the sink then wants a second sighting; see :mod:`smtpguard.policy.sink`);
5. the verdict's reason must be about the *address itself* (``userunknown``,
   ``hostunknown``, ``hasmoved``, ``notaccept``); the classifier's own ``suppress``
   flag is weighed last (after rules 6-8, so the history says which structural
   rule spoke first);
6. a reply before any recipient was named (connect, greeting, HELO/EHLO,
   STARTTLS, AUTH, MAIL FROM) never suppresses a recipient;
7. a reply that names an address other than the recipient suppresses nobody
   (``550 5.1.1 <someone-else@...>`` at RCPT or after DATA); one that names the
   recipient is about it;
8. after DATA, a reply that does not name the recipient suppresses it only when
   the transaction had exactly that one recipient;
9. an unverified DSN (``dsn-unverified``) is recorded, never enforced: a forged
   bounce must not suppress anyone.

A soft bounce (:func:`judge_soft`) never suppresses on its own: one about the
recipient's mailbox (rules 6-9 hold for it too) counts toward the soft-bounce limit.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from smtpguard.address import normalize_address
from smtpguard.classify.verdict import SUPPRESS_REASONS, Verdict
from smtpguard.errors import AddressError
from smtpguard.policy.evidence import Evidence

#: Stages whose reply is about the session (the client, the sender), not a recipient.
SESSION_STAGES = frozenset({"connect", "helo", "mail"})
#: Stages after the final dot: one reply for every recipient of the transaction.
AFTER_DATA = frozenset({"data", "eom"})
#: What a DNS answer may say about a domain: it does not exist, or accepts no mail.
DNS_REASONS = frozenset({"hostunknown", "notaccept"})
#: How much of a reply is searched for addresses, and how many are taken.
MAX_SCANNED = 4096
MAX_NAMED = 20

# local@domain as replies write them: bare, in <...>, quoted in text. Linear: two
# bounded runs of characters that exclude the separators around them.
_NAMED = re.compile(r"([^\s<>()\[\]{}\"',;:@]{1,64})@([^\s<>()\[\]{}\"',;:@]{1,255})")

Ruling = Literal["address", "domain", "soft", "record", "ignore"]


@dataclass(frozen=True, slots=True)
class Judgement:
    """What the rules allow: an ``address`` or ``domain`` candidate, ``record`` only, or
    ``ignore``; ``why`` is one line for the history, the report and the logs."""

    ruling: Ruling
    why: str
    reason: str = ""  # the reason to record (a complaint's is "complaint")


def canonical(address: str) -> str:
    """The suppression key of an address, or the address lowercased if it is not valid."""
    try:
        return normalize_address(address)
    except AddressError:
        return address.strip().strip("<>").lower()


def named_addresses(text: str) -> list[str]:
    """The addresses a reply names, as suppression keys (at most :data:`MAX_NAMED`)."""
    found: list[str] = []
    for m in _NAMED.finditer(text[:MAX_SCANNED]):
        address = canonical(f"{m.group(1)}@{m.group(2).rstrip('.')}")
        if address not in found:
            found.append(address)
            if len(found) >= MAX_NAMED:
                break
    return found


def judge(verdict: Verdict, evidence: Evidence, recipient: str) -> Judgement:
    """Apply the rules (module doc) to one verdict; ``recipient`` is its suppression key."""
    kind = evidence.kind
    if kind in ("manual", "import"):
        return Judgement("address", f"{kind}: an operator's decision", verdict.reason)
    if kind in ("arf", "arf-unverified"):
        if verdict.reason != "feedback":
            return Judgement("ignore", f"{kind}: not a complaint ({verdict.reason})")
        if kind == "arf-unverified":
            return Judgement(
                "record", "a complaint not tied to our send is never enforced",
                "complaint",
            )  # fmt: skip
        return Judgement("address", "arf: the recipient complained", "complaint")
    if verdict.reason == "unsubscribe":
        if kind == "webhook":
            return Judgement("address", "webhook: the recipient unsubscribed", "unsubscribe")
        return Judgement("ignore", f"{kind}: an unsubscribe counts only from an ESP's event")
    if verdict.bounce != "hard":
        return Judgement("ignore", f"not a hard bounce ({verdict.bounce} {verdict.reason})")
    if kind == "dns":
        if verdict.reason in DNS_REASONS:
            return Judgement("domain", f"dns: {verdict.reason} {verdict.status}", verdict.reason)
        return Judgement("ignore", f"dns: {verdict.reason} says nothing about the domain")
    if verdict.reason not in SUPPRESS_REASONS:
        return Judgement("ignore", f"{verdict.reason} is not about the address itself")
    judgement = _about_recipient(verdict, evidence, recipient)
    if judgement.ruling != "ignore" and not verdict.suppress:
        why = verdict.extra.get("suppress_why") or verdict.rule or verdict.reason
        return Judgement("ignore", f"the classifier does not condemn the address ({why})")
    return judgement


def judge_soft(
    verdict: Verdict, evidence: Evidence, recipient: str, reasons: frozenset[str]
) -> Judgement:
    """A soft bounce that counts toward the recipient's soft-bounce limit: ruling ``soft``.

    Only a soft verdict whose reason is about the recipient's mailbox (``reasons``,
    ``policy.soft_bounce_reasons``) counts, and only when it is about this recipient by
    the same rules as a hard one (stage, named address, one-recipient transaction);
    an unverified DSN is recorded, never counted.
    """
    if verdict.bounce != "soft" or verdict.reason not in reasons:
        return Judgement("ignore", f"{verdict.bounce} {verdict.reason} does not count")
    if evidence.kind in ("manual", "import", "arf", "dns"):
        return Judgement("ignore", f"{evidence.kind}: soft bounces are not counted from it")
    j = _about_recipient(verdict, evidence, recipient)
    if j.ruling == "address":
        return Judgement("soft", f"soft bounce: {j.why}", verdict.reason)
    return j


def _about_recipient(verdict: Verdict, evidence: Evidence, recipient: str) -> Judgement:
    """Rules 6-9: is this verdict about ``recipient`` (and from evidence we enforce)?"""
    kind = evidence.kind
    stage = verdict.stage
    if kind == "session-reply" or stage in SESSION_STAGES:
        return Judgement("ignore", f"a reply at {stage} names no recipient")
    named = named_addresses(verdict.diagnostic)
    if named and recipient not in named:
        return Judgement("ignore", f"the reply names another address ({named[0]})")
    if (kind == "data-reply" or stage in AFTER_DATA) and not named:
        others = {canonical(r) for r in evidence.transaction_recipients}
        if others != {recipient}:
            n = len(evidence.transaction_recipients)
            return Judgement(
                "ignore", f"a reply after DATA to {n} recipients that names none of them"
            )
    why = f"{kind}: {verdict.reply_code} {verdict.status} {verdict.reason}".replace("  ", " ")
    if named:
        why += ", names the recipient"
    if kind == "dsn-unverified":
        return Judgement("record", f"{why}; an unverified DSN is never enforced", verdict.reason)
    return Judgement("address", why, verdict.reason)

"""What to tell Postfix about one recipient: a policy Decision as milter and policy replies.

The recipient policy decides (``accept``, ``reject``, ``defer``, ``discard``); the
operator chooses what a *suppressed* recipient gets in each service
(``on_suppressed``) and what Postfix hears when smtpguard itself cannot decide
(``on_error``). This module joins the two into an :class:`Answer`, then renders
it in each protocol's form. Pure functions: the adapters stay thin.

Why the reply forms differ:

* A milter reply reaches the SMTP client verbatim, so the milter answers with
  exactly the relay's text (``550 5.1.1 <bob@example.com>: recipient suppressed
  by smtpguard: userunknown since ...``). libmilter drops a reply holding a single
  ``%`` and Postfix turns ``%%`` back into ``%``, hence :func:`milter_reply`.
* A policy service's ``action=`` is an access(5) result: Postfix itself writes
  ``<recipient>: Recipient address rejected:`` between the status and our text.
  The numeric form ``550 5.1.1 text`` keeps the configured code and status
  (``REJECT text`` would use ``access_map_reject_code``, 554 by default), and
  the address prefix of our text is left out so it is not said twice.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal, Protocol

Verb = Literal["continue", "reject", "tempfail", "discard"]

#: The SMTP answer when smtpguard could not check a recipient and on_error says tempfail.
TROUBLE_CODE = 451
TROUBLE_STATUS = "4.3.0"
TROUBLE_TEXT = "smtpguard: temporary lookup failure, try again"
#: A suppressed recipient under ``on_suppressed = "tempfail"`` (a dry run that only delays).
DRY_RUN_CODE = 450

_ADDRESS_PREFIX = re.compile(r"\A<[^<>]*>: ")


class DecisionLike(Protocol):
    """The fields of a recipient policy's Decision that an answer needs."""

    @property
    def action(self) -> str: ...
    @property
    def code(self) -> int: ...
    @property
    def status(self) -> str: ...
    @property
    def text(self) -> str: ...
    @property
    def entry(self) -> EntryLike | None: ...


class EntryLike(Protocol):
    """The field of a suppression entry an answer counts (its evidence kind)."""

    @property
    def evidence(self) -> str: ...


@dataclass(frozen=True, slots=True)
class Answer:
    """One recipient's answer, before it is put in a protocol's words.

    ``trouble``: smtpguard could not decide (a failed lookup, an exception) and
    ``on_error`` chose this answer; the services count and log it as an error.
    ``hit``: the suppression entry's evidence kind when the list decided it (a hit,
    counted in ``smtpguard_suppression_hits_total`` as the relay counts its own).
    """

    verb: Verb
    code: int = 0
    status: str = ""
    text: str = ""
    trouble: bool = False
    hit: str | None = field(default=None, compare=False)

    @property
    def reply(self) -> str:
        """``"550 5.1.1 <bob@example.com>: recipient suppressed by smtpguard: ..."``."""
        return " ".join(part for part in (str(self.code), self.status, self.text) if part)


PASS = Answer("continue")


def trouble_answer(on_error: str) -> Answer:
    """What Postfix hears when smtpguard cannot decide: pass, or a 451 4.3.0 to retry."""
    if on_error in ("accept", "dunno"):
        return Answer("continue", trouble=True)
    return Answer("tempfail", TROUBLE_CODE, TROUBLE_STATUS, TROUBLE_TEXT, trouble=True)


def rcpt_answer(decision: DecisionLike, on_suppressed: str, on_error: str) -> Answer:
    """The answer for one recipient.

    ``on_suppressed`` (``reject``, ``tempfail``, ``discard``) applies to a
    suppressed recipient only (a rejection that carries a suppression entry);
    other rejections pass through. A deferral with a ``4.3.x`` status (mail
    system trouble: the store could not be read) is smtpguard's own trouble and
    gets ``on_error``, so the milter never blocks mail because of itself.
    """
    action = decision.action
    if action == "accept":
        return PASS
    if action == "defer":
        if decision.status.startswith("4.3."):
            return trouble_answer(on_error)
        return Answer("tempfail", decision.code, decision.status, decision.text)
    if action == "discard":
        return Answer("discard", decision.code, decision.status, decision.text)
    hit = decision.entry.evidence if decision.entry is not None else None
    if hit is not None and on_suppressed != "reject":
        if on_suppressed == "discard":
            return Answer("discard", decision.code, decision.status, decision.text, hit=hit)
        status = "4" + decision.status[1:] if decision.status else ""
        return Answer("tempfail", DRY_RUN_CODE, status, decision.text, hit=hit)
    return Answer("reject", decision.code, decision.status, decision.text, hit=hit)


def milter_reply(answer: Answer) -> tuple[str, str | None, str]:
    """``(code, status, text)`` for libmilter's setreply: ``%`` doubled (see module doc)."""
    return str(answer.code), answer.status or None, answer.text.replace("%", "%%")


def policy_action(answer: Answer) -> str:
    """The value of a policy reply's ``action=`` (see the module doc for the form).

    A policy service cannot drop one recipient (``DISCARD`` would drop the whole
    message for everyone), so a discard is answered like a rejection; a failed
    check under ``on_error = "defer"`` is ``DEFER_IF_PERMIT``: it delays the
    message only if no other restriction refuses it anyway.
    """
    if answer.verb == "continue":
        return "DUNNO"
    if answer.trouble:
        return f"DEFER_IF_PERMIT {answer.status} {answer.text}"
    text = _ADDRESS_PREFIX.sub("", answer.text) or answer.text
    return " ".join(part for part in (str(answer.code), answer.status, text) if part)

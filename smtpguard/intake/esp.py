"""An ESP's record of one recipient's failure -> a classifier :class:`Verdict`.

Amazon SES, SendGrid, Postmark and Mailgun report bounces in their own words: a type
of their own ("Permanent/NoEmail", "HardBounce", "Invalid Address") and, usually, the
remote server's reply. The reply is the stronger evidence, so it goes through the same
classifier as every returned DSN (rules, enhanced status, reply code). The ESP's type
only fills the gaps, in three ways:

* ``fallback``: the reason to use when the reply explains nothing (no text, or text no
  rule, status or code explains: ``undefined`` / ``onhold``). An ESP's type that says
  "the address does not exist" then yields ``userunknown``; a vague one stays vague.
* ``address``: the ESP says the failure was about the recipient address itself. The
  classifier calls a bare "user unknown" that was not the answer to ``RCPT TO``
  ``filtered`` (it may be a content filter's wording); an ESP that classified the
  bounce as an invalid address has seen the SMTP stage we cannot, so the reply is read
  as the answer to ``RCPT TO``.
* ``soft``: the ESP calls the failure temporary; the verdict is then soft (and never
  suppresses) whatever the reply says.
"""

from __future__ import annotations

from dataclasses import replace

from smtpguard.classify import Classifier, Failure, Verdict
from smtpguard.classify.decide import decide
from smtpguard.classify.verdict import NON_BOUNCE_REASONS

#: The reason of a recipient's own opt-out (the suppression list's ``unsubscribe``).
UNSUBSCRIBE = "unsubscribe"


def explains_nothing(verdict: Verdict) -> bool:
    """The classifier found no rule, status or code for it (``undefined``, Sisimai's
    ``onhold`` / ``expired`` fallbacks)."""
    return verdict.reason == "undefined" or verdict.rule.startswith("fallback:")


def esp_verdict(
    classifier: Classifier,
    failure: Failure,
    *,
    fallback: str = "",
    address: bool = False,
    soft: bool = False,
) -> Verdict:
    """Classify one ESP-reported failure (see the module doc for the three hints).

    Uses the classifier's rules but not its counters: these are not bounces the
    classifier read, and one record may be decided twice.
    """
    rules = classifier.rules
    if soft:
        failure = replace(failure, action="delayed")  # RFC 3464: not a final failure
    if fallback in NON_BOUNCE_REASONS:
        # A complaint, an auto-reply: what the ESP's record *is*, not what its text says.
        return decide(replace(failure, reason_hint=fallback), rules)
    verdict = decide(failure, rules)
    if address and verdict.rule.endswith(":unconfirmed") and failure.stage == "unknown":
        verdict = decide(replace(failure, stage="rcpt"), rules)
    if fallback and explains_nothing(verdict):
        verdict = decide(replace(failure, reason_hint=fallback), rules)
    return verdict


def unsubscribe_verdict(recipient: str, *, message_id: str, what: str, format: str) -> Verdict:
    """The recipient asked the ESP to send no more (an unsubscribe link, a one-click
    List-Unsubscribe): not a bounce, nothing to classify. Only an ESP's signed event
    carries it, and the policy takes it from nowhere else (evidence ``webhook``)."""
    return Verdict(
        recipient=recipient, reason=UNSUBSCRIBE, bounce="none", suppress=True, diagnostic=what,
        message_id=message_id, rule=f"{format}:{UNSUBSCRIBE}", format=format,
    )  # fmt: skip

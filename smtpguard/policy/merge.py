"""What a new sighting does to a listed entry: escalation and merging, one pure rule.

The relay's sink, operators' edits and a bulk import of a million rows all
merge through :func:`merge` (the store calls it for the writes it does on its
own: ``suppression add``, ``import``), so they give the same answer:

* a new address is **added**;
* a stronger reason **escalates** the entry (``mailboxfull`` -> ``userunknown``
  -> ``complaint``; see :func:`reason_rank`): the reason and its evidence
  (status, reply code, diagnostic, source, evidence kind) are replaced;
* anything else is **updated** (seen again): ``last_seen`` and ``count`` move,
  the stronger reason stays, a weaker one is only noted in the history;
* an entry whose expiry has passed counts as gone: it is **expired** in the
  history and the new sighting is **added** afresh.

No I/O: the caller reads the old entry and writes the result.
"""

from __future__ import annotations

from dataclasses import replace

from smtpguard.classify.verdict import SUPPRESS_REASONS
from smtpguard.store.entries import HistoryRow, Observation, SuppressionEntry, history_row

# Strength of a reason: a sighting with a higher rank escalates an entry.
# 3: a person decided (the recipient complained or unsubscribed, or the operator
#    said so); never overridden by a machine's bounce.
# 2: the address itself is provably bad (Sisimai's hard-bounce reasons).
# 1: everything else (soft reasons, recorded by hand or imported).
_PERSON_REASONS = frozenset({"complaint", "unsubscribe", "manual", "feedback"})


def reason_rank(reason: str) -> int:
    """How strong a reason for suppression is (higher wins; see module doc)."""
    if reason in _PERSON_REASONS:
        return 3
    if reason in SUPPRESS_REASONS:
        return 2
    return 1


def merge(
    old: SuppressionEntry | None, obs: Observation, actor: str, now: float
) -> tuple[SuppressionEntry, list[HistoryRow], str]:
    """The entry after ``obs``, the history rows that explain it, and the action."""
    history: list[HistoryRow] = []
    if old is not None and old.expired(now):
        history.append(history_row(old, "expired", now, actor, "expired before seen again", ""))
        old = None
    if old is None:
        new = obs.entry(now)
        history.append(history_row(new, "added", now, actor, obs.note, ""))
        return new, history, "added"

    first = obs.first_seen if obs.first_seen is not None else now
    last = obs.last_seen if obs.last_seen is not None else max(now, first)
    action = "escalated" if reason_rank(obs.reason) > reason_rank(old.reason) else "updated"
    # The entry keeps the strongest reason, and the evidence that goes with it:
    # replaced on escalation, refreshed when the same reason is seen again.
    if action == "escalated":
        evidence = (obs.reason, obs.status, obs.reply_code, obs.diagnostic, obs.source,
                    obs.evidence)  # fmt: skip
    elif obs.reason == old.reason:
        evidence = (
            old.reason,
            obs.status or old.status,
            obs.reply_code or old.reply_code,
            obs.diagnostic or old.diagnostic,
            obs.source,
            obs.evidence,
        )
    else:
        evidence = (old.reason, old.status, old.reply_code, old.diagnostic, old.source,
                    old.evidence)  # fmt: skip
    # An entry without expiry is permanent; otherwise the later expiry wins.
    expires = None if old.expires is None or obs.expires is None else max(old.expires, obs.expires)
    reason, status, reply_code, diagnostic, source, kind = evidence
    new = replace(
        old,
        reason=reason,
        status=status,
        reply_code=reply_code,
        diagnostic=diagnostic,
        source=source,
        first_seen=min(old.first_seen, first),
        last_seen=max(old.last_seen, last),
        count=old.count + obs.count,
        expires=expires,
        evidence=kind,
    )
    row = history_row(new, action, now, actor, obs.note, old.reason)
    if action == "updated" and obs.reason != new.reason:
        # A weaker reason seen again: the entry keeps its reason, the history
        # keeps what was seen.
        row = (*row[:7], obs.reason, obs.source, obs.status, obs.reply_code, obs.diagnostic,
               obs.evidence)  # fmt: skip
    history.append(row)
    return new, history, action

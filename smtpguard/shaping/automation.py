"""Automation rules: a reply that matches -> an action on the site for a while.

KumoMTA calls this Traffic Shaping Automation: providers tell a sender to stop
or slow down in documented words ("[TSS04] ... temporarily deferred", "RP-001"),
and the right answer to those words is known in advance. Rules are data (the
shaping file's ``[[automation]]`` tables); patterns were checked at load time
to be free of catastrophic backtracking and are searched in a bounded text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from smtpguard.shaping.limits import MAX_REPLY, AutomationRule


@dataclass(frozen=True)
class _Compiled:
    rule: AutomationRule
    regex: re.Pattern[str]


class Automation:
    """The rules in order (operator's first); :meth:`match` returns the first that applies."""

    def __init__(self, rules: tuple[AutomationRule, ...]) -> None:
        self._rules = [_Compiled(r, re.compile(r.match, re.IGNORECASE)) for r in rules]

    def __len__(self) -> int:
        return len(self._rules)

    def match(self, site: str, reply: str) -> AutomationRule | None:
        """The first rule for ``site`` whose pattern occurs in ``reply`` ("CODE TEXT")."""
        if not self._rules:
            return None
        text = " ".join(reply[:MAX_REPLY].split())
        for c in self._rules:
            if c.rule.sites and site not in c.rule.sites:
                continue
            if c.regex.search(text):
                return c.rule
        return None

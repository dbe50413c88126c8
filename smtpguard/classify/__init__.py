"""Bounce classification: SMTP replies and returned messages -> :class:`Verdict`.

Pure functions, no I/O. See ``decide.py`` (fields -> verdict), ``rules.py`` +
``rules/*.toml`` (wording -> reason), ``message.py`` + ``formats/`` (bounce bytes
-> per-recipient :class:`Failure` records).

The facade is :class:`Classifier`: load the rules once, then classify inline replies
(:meth:`Classifier.reply`) and returned messages (:meth:`Classifier.message`). Fed by
strangers, it never raises on its input.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import operator
from pathlib import Path
from typing import TYPE_CHECKING

from smtpguard.classify.verdict import Failure, Verdict

if TYPE_CHECKING:  # the rules load lazily: importing the package stays cheap
    from smtpguard.classify.rules import RuleSet

__all__ = ["Classifier", "Failure", "Verdict", "default_classifier"]

#: Every field of a Failure as one tuple (one C call): two failures with equal tuples are
#: the same failure, and are decided once (a tuple is ten times cheaper than ``repr``).
_FAILURE_KEY = operator.attrgetter(*(f.name for f in dataclasses.fields(Failure)))


class Classifier:
    """Rules compiled once; ``stats`` counts what was classified and what the rules missed.

    ``stats`` keys: ``replies``, ``messages``, ``verdicts``, ``undefined`` (verdicts no
    rule, status or code explained: reason ``undefined``, or for a returned message the
    ``onhold`` / ``expired`` fallback), ``not_bounce`` (messages with no verdict),
    ``errors`` (inputs a detector choked on), and ``reason.<name>`` per reason.
    """

    def __init__(self, rules: RuleSet) -> None:
        # Imported here, once, not per message: a classifier exists to be used, and an
        # import statement costs a few thousand instructions each time it runs.
        from smtpguard.classify.decide import decide
        from smtpguard.classify.message import extract
        from smtpguard.classify.reply import parse_reply

        self.rules = rules
        self.stats: collections.Counter[str] = collections.Counter()
        self._decide = decide
        self._extract = extract
        self._parse_reply = parse_reply

    @classmethod
    def load(cls, operator_rules: str | Path | None = None) -> Classifier:
        """Shipped rules plus the operator's file, if any. Raises RulesError (a UserError)."""
        from smtpguard.classify import rules

        return cls(rules.load(operator_rules))

    def clear_caches(self) -> None:
        """Forget remembered rule answers (a benchmark measuring cold work calls this)."""
        self.rules.clear_caches()

    # ------------------------------------------------------------------ decisions

    def decide(self, failure: Failure, *, returned: bool = True) -> Verdict:
        """One Failure -> Verdict, counted in :attr:`stats` (see :func:`decide.decide`)."""
        verdict = self._decide(failure, self.rules, returned=returned)
        self._count(verdict)
        return verdict

    def _count(self, verdict: Verdict) -> None:
        self.stats["verdicts"] += 1
        self.stats[f"reason.{verdict.reason}"] += 1
        if verdict.reason == "undefined" or verdict.rule.startswith("fallback:"):
            # Nothing explained it: plain "undefined", or a bounce's onhold/expired fallback.
            self.stats["undefined"] += 1

    def reply(
        self,
        code: int | str,
        text: str,
        *,
        stage: str = "unknown",
        recipient: str = "",
        remote_host: str = "",
    ) -> Verdict:
        """An inline SMTP reply as the relay sees it; ``text`` may start with the status.

        ``reply(550, "5.1.1 <a@b.example>: User unknown", stage="rcpt")``. ``text`` may
        also be the whole (multi-line) reply including codes.
        """
        self.stats["replies"] += 1
        code_s = str(code).strip()
        text = text if isinstance(text, str) else str(text)
        parse_reply = self._parse_reply
        p_code, status, body = parse_reply(text)
        if not p_code:
            _, status, body = parse_reply(f"{code_s} {text}") if code_s else ("", status, body)
        failure = Failure(
            recipient=recipient,
            status=status,
            reply_code=code_s or p_code,
            diagnostic=body,
            remote_host=remote_host,
            stage=stage,  # type: ignore[arg-type]
            format="reply",
        )
        return self.decide(failure, returned=False)

    def reply_line(self, line: str, *, stage: str = "unknown", recipient: str = "") -> Verdict:
        """A reply as one string: ``"550 5.1.1 <a@b.example>: User unknown"``."""
        code, _, _ = self._parse_reply(line)
        return self.reply(code, line, stage=stage, recipient=recipient)

    def message(self, data: bytes) -> list[Verdict]:
        """A returned message (bytes) -> one verdict per reported recipient; [] if not a bounce.

        Never raises: a detector that fails on hostile input costs that message, counted
        in ``stats["errors"]``, not the caller.
        """
        self.stats["messages"] += 1
        try:
            failures = self._extract(data)
        except Exception:
            self.stats["errors"] += 1
            return []
        verdicts: list[Verdict] = []
        # A report may list the same failure many times (a hostile one a hundred): each
        # distinct failure is decided once.
        decided: dict[object, Verdict] | None = {} if len(failures) > 1 else None
        for failure in failures:
            try:
                if decided is None:
                    verdicts.append(self.decide(failure))
                    continue
                key: object = _FAILURE_KEY(failure)
                try:
                    verdict = decided.get(key)
                except TypeError:  # a field that is not text (no shipped detector does it)
                    key = repr(failure)
                    verdict = decided.get(key)
                if verdict is None:
                    verdict = decided[key] = self.decide(failure)
                else:
                    # Its own copy: a caller may edit one verdict's ``extra``.
                    verdict = dataclasses.replace(verdict, extra=dict(verdict.extra))
                    self._count(verdict)
                verdicts.append(verdict)
            except Exception:
                self.stats["errors"] += 1
        if not verdicts:
            self.stats["not_bounce"] += 1
        return verdicts


@functools.cache
def default_classifier() -> Classifier:
    """The shipped rules, loaded once per process."""
    return Classifier.load()

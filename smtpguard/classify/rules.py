"""Wording -> reason rules, loaded from TOML data and compiled once.

Code handles structure; these rules handle *wording*: the diagnostic text of a reply
or a DSN ("550 5.1.1 <a@b>: User unknown") is matched against an ordered list of
rules and the first rule that matches names the reason. The rules ship in
``rules/default.toml``; an operator file (config ``classifier.rules_file`` or
``--rules``) adds to and overrides them.

Precedence (documented in the README, tested in tests/test_classify_rules.py):

1. operator rules before shipped rules;
2. within one file, higher ``priority`` first, then file order;
3. an operator rule with the ``id`` of a shipped rule replaces it (it moves to the
   operator's position); ``enabled = false`` in the operator file switches a shipped
   rule off.

The first matching rule wins, with one refinement: rules naming ``providers`` (see
``rules/providers.toml``) are tried first, and only, when the remote host or the
recipient's domain belongs to one of them; the generic rules follow.

Every shipped rule names its ``source``: the published document (a provider's SMTP error
reference, an MTA's manual, an RFC) where that wording is documented. Operator rules may
omit it. Wording comes from documentation, never from tuning on individual samples.

Matching is deliberately cheap and safe: the text is truncated to :data:`MAX_TEXT`
characters, lower-cased and whitespace-collapsed once (one line), then tested with plain
substring checks (``any`` / ``all`` / ``not``); regexes are allowed for the rare case a
substring cannot say it, are searched only in that bounded text, and any pattern that
could backtrack is refused at load time (:func:`regex_risk`): every quantifier must be
bounded, no quantified group may contain another quantifier or an alternation, and
adjacent variable-length quantifiers may not multiply into more than
:data:`MAX_REPEAT_PRODUCT` ways of splitting the text.
"""

from __future__ import annotations

import re
import re._constants as sre_constants
import re._parser as sre_parse
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from smtpguard.classify.providers import Providers
from smtpguard.classify.providers import load as load_providers
from smtpguard.classify.verdict import REASONS
from smtpguard.classify.verdict import STAGES as VERDICT_STAGES
from smtpguard.config import read_toml
from smtpguard.errors import ConfigError

#: Characters of diagnostic text the rules ever look at. Real diagnostics are a few
#: hundred characters; a hostile 1 MB line is cut before any matching.
MAX_TEXT = 4096

#: Answers of :meth:`RuleSet.match` remembered (the dict is cleared when full).
MEMO_SIZE = 4096
#: Characters of a reporting MTA's explanation searched for a mailbox state.
EXPLANATION_TEXT = 1000
#: Reasons that say the recipient's mailbox exists (so the address is good).
MAILBOX_STATES = frozenset({"suspend", "mailboxfull", "systemfull"})

#: Keys a ``[[rule]]`` table may have.
RULE_KEYS = frozenset(
    {
        "id", "reason", "any", "all", "regex", "not", "status", "codes", "stages",
        "priority", "temporary", "greylist", "unconfirmed_reason", "confirm_stages", "enabled",
        "note", "source", "providers", "provider_confirms",
    }
)  # fmt: skip
#: Largest bound a rule regex quantifier may have, and the most ways adjacent
#: variable-length quantifiers may split one stretch of text between them.
MAX_REPEAT = 1000
MAX_REPEAT_PRODUCT = 4096
#: Top-level keys of a rules file.
FILE_KEYS = frozenset({"rule", "status", "reply_code", "pseudo_status"})
STAGES = frozenset(VERDICT_STAGES)

_ID_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,79}")
_STATUS_PREFIX_RE = re.compile(r"[245](\.\d{1,3}){0,2}\.?")
_STATUS_KEY_RE = re.compile(r"[245X]\.\d{1,3}\.\d{1,3}")
_CODE_PREFIX_RE = re.compile(r"[245]\d{0,2}")
# Reply-code continuation prefixes that multi-line replies leave inside diagnostic text:
# "... is 550-5.7.1 likely suspicious" -> "... is likely suspicious" (RFC 5321 4.2.1).
# (The "not glued to a word" lookbehinds follow the first character, where the engine can
# still scan for it fast.)
_CONTINUATION_RE = re.compile(r"[245](?<![\w.][245])\d\d(?:[ -][245]\.\d{1,3}\.\d{1,3}(?![\w.])|-)")
_WS_RE = re.compile(r"\s+")


class RulesError(ConfigError):
    """A rules file that cannot be used: unreadable, bad TOML, unknown key, bad regex or reason."""


def normalize(text: str) -> str:
    """The form rules match against: bounded, lower-case, single spaces, no reply-code noise."""
    text = text[:MAX_TEXT].lower()
    if "-" in text or " " in text:
        text = _CONTINUATION_RE.sub(" ", text)
    return " ".join(text.split())


GRAM = 4
#: A 4-gram as a number: four bytes of the text's UTF-8 form read as one machine integer.
#: A substring of a text is a byte substring of its UTF-8 form, so a needle's grams are
#: among the text's; integers hash and compare without building a string per position.
Gram = int
#: Substrings shorter than this many bytes are tested directly, not through the index: a
#: longer one has a 4-gram at every offset class modulo 4 (see :func:`residue_grams`).
POSTED_MIN = GRAM + 3


def _utf8(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")


def text_grams(text: str) -> frozenset[Gram]:
    """The text's 4-byte windows at offsets 0, 4, 8... of its UTF-8 form, as integers.

    A quarter of all windows, read in C (the bytes cast to unsigned 32-bit integers). Any
    substring of at least :data:`POSTED_MIN` bytes, wherever it starts, has one of its own
    windows on that grid: the one of its offset class (:func:`residue_grams`).
    """
    data = _utf8(text)
    end = len(data) // GRAM * GRAM
    if not end:
        return frozenset()
    return frozenset(memoryview(data)[:end].cast("I"))


def _window(data: bytes, at: int) -> Gram:
    return int.from_bytes(data[at : at + GRAM], sys.byteorder)


def residue_grams(needle: str, rank: Callable[[Gram], object]) -> frozenset[Gram]:
    """For each offset class r (0..3) of the needle's windows, the best-ranked window at an
    offset j with j % 4 == r. Wherever the needle occurs in a text (at byte p), the windows
    of the class r = -p % 4 fall on the text's sampled grid (:func:`text_grams`), so one of
    these is among the text's grams. The needle must have at least POSTED_MIN bytes."""
    data = _utf8(needle)
    out = set()
    for r in range(GRAM):
        out.add(min((_window(data, j) for j in range(r, len(data) - GRAM + 1, GRAM)), key=rank))
    return frozenset(out)


@dataclass(frozen=True, slots=True)
class Rule:
    """One compiled rule. ``source`` is the file it came from (for error messages and ``rule``)."""

    id: str
    reason: str
    any: tuple[str, ...] = ()
    all: tuple[str, ...] = ()
    regex: tuple[re.Pattern[str], ...] = ()
    not_: tuple[str, ...] = ()
    status: tuple[str, ...] = ()
    codes: tuple[str, ...] = ()
    stages: frozenset[str] = frozenset()
    priority: int = 0
    temporary: bool = False
    greylist: bool = False
    unconfirmed_reason: str = ""
    confirm_stages: frozenset[str] = frozenset()
    enabled: bool = True
    source: str = ""  # the file the rule came from
    doc: str = ""  # where its wording is documented (the rule's ``source`` key)
    providers: frozenset[str] = frozenset()
    #: The providers' own documented "no such account" wording: when the provider answered
    #: for itself (remote host / reporting MTA, not only the recipient's domain) it
    #: confirms the rule's reason at any stage (see decide.confirmed_by).
    provider_confirms: bool = False

    def matches(self, text: str, status: str, code: str, stage: str) -> bool:
        """``text`` must already be :func:`normalize`-d."""
        if not self.matches_rest(text, status, code, stage):
            return False
        if self.any or self.regex:
            for s in self.any:
                if s in text:
                    return True
            for r in self.regex:  # noqa: SIM110 - a loop, not any(<generator>): runs per rule
                if r.search(text):
                    return True
            return False
        return True

    def matches_rest(self, text: str, status: str, code: str, stage: str) -> bool:
        """Every condition but ``any`` / ``regex``: what is left to check once one of the
        ``any`` substrings is known to be in ``text``."""
        if self.codes and not code.startswith(self.codes):
            return False
        if self.status and not status.startswith(self.status):
            return False
        if self.stages and stage not in self.stages:
            return False
        for s in self.all:
            if s not in text:
                return False
        for s in self.not_:  # noqa: SIM110 - a loop, not all(<generator>): runs per rule
            if s in text:
                return False
        return True


@dataclass(slots=True)
class RuleSet:
    """The effective, ordered rules plus the status / reply-code tables (all data)."""

    rules: list[Rule] = field(default_factory=list)
    #: RFC 3463 enhanced status -> reason; keys "5.1.1" (exact) or "X.1.1" (any class).
    status: dict[str, str] = field(default_factory=dict)
    #: SMTP reply code -> reason, the last resort before ``undefined``.
    reply_code: dict[str, str] = field(default_factory=dict)
    #: reason -> Sisimai pseudo detail ("911" gives 5.0.911) for bounces without a status.
    pseudo_status: dict[str, str] = field(default_factory=dict)
    sources: list[str] = field(default_factory=list)
    shipped_count: int = 0
    operator_count: int = 0
    providers: Providers = field(default_factory=Providers)
    _index: _GramIndex | None = field(default=None, repr=False)
    _memo: dict[tuple[str, str, str, str, str], Rule | None] = field(
        default_factory=dict, repr=False
    )
    #: The last text's candidates: the main match and the sender check of one verdict ask
    #: about the same text.
    _last_text: str | None = field(default=None, repr=False)  # None: nothing asked yet
    _last: tuple[set[int], set[int], frozenset[Gram]] = field(
        default=(set(), set(), frozenset()), repr=False
    )
    _states: tuple[Rule, ...] | None = field(default=None, repr=False)

    def match(
        self,
        text: str,
        status: str = "",
        code: str = "",
        stage: str = "unknown",
        provider: str = "",
    ) -> Rule | None:
        """The first rule matching the (already normalised) text, or None.

        Rules for ``provider`` first (its documented wording wins over generic wording),
        then the generic rules; other providers' rules are skipped. Answers are
        remembered (bounded): providers and MTAs repeat the same few replies endlessly.
        """
        key = (text, status, code, stage, provider)
        memo = self._memo
        if key in memo:
            return memo[key]
        found = self._match(text, status, code, stage, provider)
        if len(memo) >= MEMO_SIZE:
            memo.clear()
        memo[key] = found
        return found

    def _match(self, text: str, status: str, code: str, stage: str, provider: str) -> Rule | None:
        if provider:
            found = self._first(
                text, status, code, stage, ("provider", provider), lambda r: provider in r.providers
            )
            if found is not None:
                return found
        return self._first(text, status, code, stage, "generic", lambda r: not r.providers)

    def _first(
        self,
        text: str,
        status: str,
        code: str,
        stage: str,
        pool: object,
        wanted: Callable[[Rule], bool],
    ) -> Rule | None:
        """The first rule ``wanted`` accepts that matches the (normalised) text.

        ``pool`` names the set of rules ``wanted`` accepts (computed once per rule set):
        only the candidates in it are visited, picked by a set intersection in C rather
        than by calling ``wanted`` on every candidate.
        """
        rules = self.rules
        satisfied, candidates, grams = self._candidates(text)
        index = self._index
        assert index is not None  # built by _candidates
        accepted = index.pools.get(pool)
        if accepted is None:
            accepted = index.pools[pool] = frozenset(
                i for i, rule in enumerate(rules) if wanted(rule)
            )
        posted = index.posted
        for i in sorted(candidates & accepted):
            rule = rules[i]
            if i in satisfied:
                ok = rule.matches_rest(text, status, code, stage)
            elif i in posted:
                # None of its substrings is in the text (the index said so): only its
                # regexes can still match.
                gate = index.regex_gates[i]
                ok = False
                if (gate is None or not gate.isdisjoint(grams)) and rule.matches_rest(
                    text, status, code, stage
                ):
                    for r, literal in index.regex_literals[i]:
                        if literal in text and r.search(text):
                            ok = True
                            break
            else:
                ok = rule.matches(text, status, code, stage)
            if ok:
                return rule
        return None

    def explanation_state(
        self, explanation: str, status: str = "", code: str = "", stage: str = "unknown"
    ) -> Rule | None:
        """The mailbox-state rule (disabled, full) a reporting MTA's explanation matches.

        One explanation is shared by every recipient of a report: remembered (bounded).
        """
        key = (explanation, status, code, stage, "\x00explanation")
        memo = self._memo
        if key in memo:
            return memo[key]
        text = normalize(explanation[:EXPLANATION_TEXT])
        found = None
        for rule in self._state_rules():
            # A long text and three rules: testing their substrings directly is cheaper
            # than indexing the text's 4-grams.
            if rule.matches(text, status, code, stage):
                found = rule
                break
        if len(memo) >= MEMO_SIZE:
            memo.clear()
        memo[key] = found
        return found

    def _state_rules(self) -> tuple[Rule, ...]:
        """The generic rules naming a state of an existing mailbox, in order."""
        found = self._states
        if found is None:
            found = self._states = tuple(
                r for r in self.rules if r.reason in MAILBOX_STATES and not r.providers
            )
        return found

    def clear_caches(self) -> None:
        """Forget remembered answers (benchmarks measure cold matching with this)."""
        self._memo.clear()
        self._last_text = None
        self.providers.clear_caches()

    def _candidates(self, text: str) -> tuple[set[int], set[int], frozenset[Gram]]:
        """(rules whose ``any`` part is known to match, every rule that can match, the
        text's 4-grams).

        The index posts each ``any`` substring under its rarest 4-gram: the substrings
        whose gram the text has are tested (a handful, instead of every substring of every
        rule), and the rules they satisfy need only their other conditions checked. Rules
        the postings cannot decide (regexes, ``all``-only rules) are tested in full.
        """
        if text == self._last_text:
            return self._last
        index = self._index
        if index is None:
            index = self._index = _GramIndex.build(self.rules)
        grams = text_grams(text)
        satisfied: set[int] = set()
        postings = index.postings
        for g in grams & index.keys:
            for i, needle in postings[g]:
                if i not in satisfied and needle in text:
                    satisfied.add(i)
        for i, needle in index.short:
            if i not in satisfied and needle in text:
                satisfied.add(i)
        found = (satisfied, satisfied.union(index.full, index.with_regex), grams)
        self._last_text, self._last = text, found
        return found

    def match_among(
        self,
        text: str,
        reasons: frozenset[str],
        status: str = "",
        code: str = "",
        stage: str = "unknown",
    ) -> Rule | None:
        """The first generic rule giving one of ``reasons`` that matches the (normalised) text."""
        return self._first(
            text,
            status,
            code,
            stage,
            ("among", reasons),
            lambda r: r.reason in reasons and not r.providers,
        )

    def status_reason(self, status: str) -> str:
        """Reason for an enhanced status from the table: exact key, then any-class key."""
        if not status:
            return ""
        hit = self.status.get(status)
        if hit is None:
            hit = self.status.get("X" + status[1:], "")
        return hit


@dataclass(slots=True)
class _GramIndex:
    """``any`` substrings posted under 4-grams; what the postings cannot decide.

    Each substring of at least :data:`POSTED_MIN` bytes is posted under one window per
    offset class (:func:`residue_grams`), the rarest one of its class: the window the
    fewest substrings of all rules share, so common fragments ("user", "not ") open as few
    postings as possible. Shorter substrings are tested directly. A rule one of whose
    substrings is found is "satisfied" (its other conditions are checked); a rule with
    regexes and no substring found has only its regexes run; rules with neither
    (``all``-only) are tested in full.
    """

    postings: dict[Gram, tuple[tuple[int, str], ...]]
    keys: frozenset[Gram]
    #: (rule position, substring) pairs too short to post, tested on every text.
    short: tuple[tuple[int, str], ...]
    #: Rules tested in full (no ``any`` substrings and no regexes).
    full: frozenset[int]
    #: Rules whose ``any`` substrings the index decides (posted or short).
    posted: frozenset[int]
    #: Those of them with regexes, and the grams one of which a text must contain for one of
    #: the regexes to match (None: a regex without a long enough literal, always run).
    with_regex: frozenset[int]
    regex_gates: dict[int, frozenset[Gram] | None]
    #: Per rule with regexes: (regex, a substring every match of it puts in the normalised
    #: text, or ""): a regex whose substring is missing is not run (see _substring_gate).
    regex_literals: dict[int, tuple[tuple[re.Pattern[str], str], ...]]
    #: Rule positions a kind of search accepts ("generic", ("provider", name),
    #: ("among", reasons)), filled on first use (see :meth:`RuleSet._first`).
    pools: dict[object, frozenset[int]] = field(default_factory=dict)

    @classmethod
    def build(cls, rules: list[Rule]) -> _GramIndex:
        seen: dict[Gram, int] = {}
        for rule in rules:
            for needle in {*rule.any, *rule.all}:
                data = _utf8(needle)
                for g in {_window(data, j) for j in range(len(data) - GRAM + 1)}:
                    seen[g] = seen.get(g, 0) + 1

        def rank(g: Gram) -> tuple[int, Gram]:
            return (seen.get(g, 0), g)

        postings: dict[Gram, list[tuple[int, str]]] = {}
        short: list[tuple[int, str]] = []
        full: set[int] = set()
        posted: set[int] = set()
        with_regex: set[int] = set()
        regex_gates: dict[int, frozenset[Gram] | None] = {}
        regex_literals: dict[int, tuple[tuple[re.Pattern[str], str], ...]] = {}
        for i, rule in enumerate(rules):
            if not (rule.any or rule.regex):
                full.add(i)
                continue
            posted.add(i)
            for needle in rule.any:
                if len(_utf8(needle)) < POSTED_MIN:
                    short.append((i, needle))
                    continue
                for gram in residue_grams(needle, rank):
                    postings.setdefault(gram, []).append((i, needle))
            if rule.regex:
                with_regex.add(i)
                runs = [_literal_run(r.pattern) for r in rule.regex]
                regex_gates[i] = (
                    frozenset().union(*(residue_grams(run, rank) for run in runs))
                    if all(len(_utf8(run)) >= POSTED_MIN for run in runs)
                    else None
                )
                regex_literals[i] = tuple(
                    (r, _substring_gate(run)) for r, run in zip(rule.regex, runs, strict=True)
                )
        frozen = {g: tuple(v) for g, v in postings.items()}
        return cls(
            postings=frozen,
            keys=frozenset(frozen),
            short=tuple(short),
            full=frozenset(full),
            posted=frozenset(posted),
            with_regex=frozenset(with_regex),
            regex_gates=regex_gates,
            regex_literals=regex_literals,
        )


# --------------------------------------------------------------------------- loading


def shipped_path() -> Path:
    return Path(str(resources.files("smtpguard.classify").joinpath("rules/default.toml")))


def load(operator: str | Path | None = None) -> RuleSet:
    """Shipped rules, overlaid by the operator file if given. Raises :class:`RulesError`.

    Every shipped rule must name its ``source`` (where its wording is documented);
    operator rules may omit it.
    """
    shipped = _parse_file(shipped_path())
    require_sources(shipped.name, shipped.rules)
    operator_doc = _parse_file(Path(operator)) if operator else None
    ruleset = _merge(shipped, operator_doc)
    ruleset.providers = load_providers()
    known = ruleset.providers.names
    for rule in ruleset.rules:
        unknown = rule.providers - known
        if unknown:
            raise RulesError(
                f"{rule.source}: rule {rule.id!r}: unknown provider {sorted(unknown)[0]!r} "
                f"(known: {', '.join(sorted(known))})"
            )
    return ruleset


def require_sources(name: str, rules: list[Rule]) -> None:
    """Every shipped rule names where its wording is documented (its ``source``)."""
    for rule in rules:
        if rule.enabled and not rule.doc:
            raise RulesError(
                f"{name}: rule {rule.id!r}: shipped rules need a 'source' "
                "(the document where this wording is published)"
            )


def parse_text(name: str, text: str) -> list[Rule]:
    """Rules of a TOML document given as text (for checks and tests)."""
    import tomllib

    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise RulesError(f"{name}: invalid TOML: {e}") from None
    return _parse_doc(name, doc).rules


def check_file(path: str | Path) -> RuleSet:
    """Validate one file as an operator overlay (the shipped file validates itself)."""
    p = Path(path)
    if p.resolve() == shipped_path().resolve():
        return load(None)
    return load(p)


@dataclass(slots=True)
class _Parsed:
    name: str
    rules: list[Rule]
    status: dict[str, str]
    reply_code: dict[str, str]
    pseudo_status: dict[str, str]


def _parse_file(path: Path) -> _Parsed:
    return _parse_doc(str(path), read_toml(path, RulesError))


def _parse_doc(name: str, doc: dict[str, Any]) -> _Parsed:
    for key in doc:
        if key not in FILE_KEYS:
            known = ", ".join(sorted(FILE_KEYS))
            raise RulesError(f"{name}: unknown top-level key {key!r} (known: {known})")
    raw_rules = doc.get("rule", [])
    if not isinstance(raw_rules, list):
        raise RulesError(f"{name}: 'rule' must be an array of tables [[rule]]")
    rules: list[Rule] = []
    seen: set[str] = set()
    for n, raw in enumerate(raw_rules, 1):
        rule = _parse_rule(name, n, raw)
        if rule.id in seen:
            raise RulesError(f"{name}: rule {rule.id!r} (#{n}): duplicate id")
        seen.add(rule.id)
        rules.append(rule)
    # Stable sort: priority first, file order breaks ties.
    rules.sort(key=lambda r: -r.priority)
    return _Parsed(
        name=name,
        rules=rules,
        status=_parse_table(
            name, "status", doc.get("status", {}), _STATUS_KEY_RE, "5.1.1 or X.1.1"
        ),
        reply_code=_parse_table(
            name, "reply_code", doc.get("reply_code", {}), re.compile(r"[245]\d\d"), "550"
        ),
        pseudo_status=_parse_pseudo(name, doc.get("pseudo_status", {})),
    )


def _parse_table(
    name: str, table: str, raw: Any, key_re: re.Pattern[str], example: str
) -> dict[str, str]:
    if not isinstance(raw, dict):
        raise RulesError(f"{name}: [{table}] must be a table")
    out: dict[str, str] = {}
    for key, reason in raw.items():
        if not key_re.fullmatch(key):
            raise RulesError(f"{name}: [{table}] key {key!r}: expected a code like {example}")
        if not isinstance(reason, str) or reason not in REASONS:
            raise RulesError(f"{name}: [{table}] {key}: unknown reason {reason!r}")
        out[key] = reason
    return out


def _parse_pseudo(name: str, raw: Any) -> dict[str, str]:
    if not isinstance(raw, dict):
        raise RulesError(f"{name}: [pseudo_status] must be a table")
    out: dict[str, str] = {}
    for reason, detail in raw.items():
        if reason not in REASONS:
            raise RulesError(f"{name}: [pseudo_status] unknown reason {reason!r}")
        if not isinstance(detail, str) or not re.fullmatch(r"\d{3}", detail):
            raise RulesError(f'{name}: [pseudo_status] {reason}: expected three digits like "911"')
        out[reason] = detail
    return out


def _strings(where: str, key: str, value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise RulesError(f"{where}: {key} must be a list of non-empty strings")
    return tuple(value)


def _parse_rule(name: str, n: int, raw: Any) -> Rule:
    if not isinstance(raw, dict):
        raise RulesError(f"{name}: rule #{n}: expected a table [[rule]]")
    rid = raw.get("id")
    where = f"{name}: rule {rid!r} (#{n})" if isinstance(rid, str) else f"{name}: rule #{n}"
    if not isinstance(rid, str) or not _ID_RE.fullmatch(rid):
        raise RulesError(f"{where}: 'id' is required: lower-case letters, digits, '.', '_', '-'")
    for key in raw:
        if key not in RULE_KEYS:
            raise RulesError(
                f"{where}: unknown key {key!r} (known: {', '.join(sorted(RULE_KEYS))})"
            )
    enabled = raw.get("enabled", True)
    if not isinstance(enabled, bool):
        raise RulesError(f"{where}: enabled must be true or false")
    reason = raw.get("reason")
    if reason is None and not enabled:
        # `{ id = "x", enabled = false }` only switches a shipped rule off.
        return Rule(id=rid, reason="undefined", enabled=False, source=name)
    if not isinstance(reason, str) or reason not in REASONS:
        raise RulesError(
            f"{where}: unknown reason {reason!r} (known: {', '.join(sorted(REASONS))})"
        )
    unconfirmed = raw.get("unconfirmed_reason", "")
    if unconfirmed and unconfirmed not in REASONS:
        raise RulesError(f"{where}: unconfirmed_reason: unknown reason {unconfirmed!r}")

    def lowered(key: str) -> tuple[str, ...]:
        if key not in raw:
            return ()
        return tuple(normalize(s) for s in _strings(where, key, raw[key]))

    any_ = lowered("any")
    all_ = lowered("all")
    not_ = lowered("not")
    regex: list[re.Pattern[str]] = []
    for pattern in _strings(where, "regex", raw["regex"]) if "regex" in raw else ():
        try:
            compiled = re.compile(pattern, re.IGNORECASE)
        except re.error as e:
            raise RulesError(f"{where}: bad regex {pattern!r}: {e}") from None
        risk = regex_risk(pattern)
        if risk:
            raise RulesError(f"{where}: regex {pattern!r}: {risk} (backtracking risk)")
        regex.append(compiled)
    if not (any_ or all_ or regex):
        raise RulesError(f"{where}: needs at least one of any, all, regex")
    status = _strings(where, "status", raw["status"]) if "status" in raw else ()
    for s in status:
        if not _STATUS_PREFIX_RE.fullmatch(s):
            raise RulesError(f"{where}: status {s!r}: expected a prefix like '5', '5.7' or '5.7.1'")
    codes = _strings(where, "codes", raw["codes"]) if "codes" in raw else ()
    for c in codes:
        if not _CODE_PREFIX_RE.fullmatch(c):
            raise RulesError(
                f"{where}: codes {c!r}: expected a reply code prefix like '5', '55', '550'"
            )
    stages = _stage_list(where, raw, "stages")
    confirm_stages = _stage_list(where, raw, "confirm_stages")
    priority = raw.get("priority", 0)
    if not isinstance(priority, int) or isinstance(priority, bool):
        raise RulesError(f"{where}: priority must be an integer")
    flags = {}
    for key in ("temporary", "greylist", "provider_confirms"):
        value = raw.get(key, False)
        if not isinstance(value, bool):
            raise RulesError(f"{where}: {key} must be true or false")
        flags[key] = value
    for key in ("note", "source"):
        if key in raw and not (isinstance(raw[key], str) and raw[key].strip()):
            raise RulesError(f"{where}: {key} must be a non-empty string")
    providers = _strings(where, "providers", raw["providers"]) if "providers" in raw else ()
    for name in providers:
        if not _ID_RE.fullmatch(name):
            raise RulesError(f"{where}: providers: {name!r} is not a provider name")
    if flags["provider_confirms"] and not providers:
        raise RulesError(f"{where}: provider_confirms needs providers (whose wording it is)")
    return Rule(
        id=rid,
        reason=reason,
        any=any_,
        all=all_,
        regex=tuple(regex),
        not_=not_,
        status=status,
        codes=codes,
        stages=frozenset(stages),
        priority=priority,
        temporary=flags["temporary"] or flags["greylist"],
        greylist=flags["greylist"],
        unconfirmed_reason=unconfirmed,
        confirm_stages=frozenset(confirm_stages),
        enabled=enabled,
        source=name,
        doc=raw.get("source", ""),
        providers=frozenset(providers),
        provider_confirms=flags["provider_confirms"],
    )


def _literal_run(pattern: str) -> str:
    """The longest run of plain characters every match of ``pattern`` contains (lower case)."""
    try:
        tree = sre_parse.parse(pattern, re.IGNORECASE)
    except re.error:
        return ""
    best = cur = ""
    for op, av in tree:
        if op == sre_constants.LITERAL and isinstance(av, int):
            cur += chr(av).lower()
            best = max(best, cur, key=len)
        else:
            cur = ""
    return best


#: Letters a case-insensitive regex also matches with a character whose lower case is
#: not that letter ("s" matches the long s, "i" the dotless i): no substring gate uses them.
_EXTRA_FOLDS = frozenset("is")


def _substring_gate(run: str) -> str:
    """The longest piece of a regex's literal run (:func:`_literal_run`) that a match
    certainly leaves in the lower-cased text, as a plain substring ("" = no gate).

    A rule regex is case-insensitive and the text it searches is ``str.lower()``-ed, so
    a literal ASCII character of the pattern appears in the text as itself, except for
    the letters of :data:`_EXTRA_FOLDS`; non-ASCII characters are left out entirely.
    """
    best = cur = ""
    for ch in run:
        if ch.isascii() and ch not in _EXTRA_FOLDS:
            cur += ch
            best = max(best, cur, key=len)
        else:
            cur = ""
    return best


def regex_risk(pattern: str) -> str:
    """Why ``pattern`` could backtrack badly ('' when it cannot).

    Read from the parsed pattern (the same parser ``re`` uses): an unbounded quantifier
    (``*``, ``+``, ``{n,}``) or one over :data:`MAX_REPEAT`; a quantified group holding
    another quantifier or an alternation (``(a+)+``, ``(x|y)*``); adjacent variable
    quantifiers whose choices multiply past :data:`MAX_REPEAT_PRODUCT` (``\\s{0,99}\\s{0,99}``).
    A pattern with none of these does bounded work at each start position.
    """
    try:
        tree = sre_parse.parse(pattern, re.IGNORECASE)
    except re.error:
        return ""  # reported by re.compile
    return _seq_risk(list(tree))


_REPEATS = (sre_constants.MAX_REPEAT, sre_constants.MIN_REPEAT, sre_constants.POSSESSIVE_REPEAT)


def _has(items: list[tuple[object, object]], kinds: tuple[object, ...]) -> bool:
    for op, av in items:
        if op in kinds:
            return True
        for sub in _children(op, av):
            if _has(sub, kinds):
                return True
    return False


def _children(op: object, av: object) -> list[list[tuple[object, object]]]:
    if op in _REPEATS:
        return [list(av[2])]  # type: ignore[index]
    if op == sre_constants.SUBPATTERN:
        return [list(av[3])]  # type: ignore[index]
    if op == sre_constants.BRANCH:
        return [list(b) for b in av[1]]  # type: ignore[index]
    if op in (sre_constants.ASSERT, sre_constants.ASSERT_NOT, sre_constants.ATOMIC_GROUP):
        return [list(av[1] if op != sre_constants.ATOMIC_GROUP else av)]  # type: ignore[index]
    return []


def _seq_risk(items: list[tuple[object, object]]) -> str:
    product = 1
    for op, av in items:
        if op in _REPEATS:
            lo, hi, body = av  # type: ignore[misc]
            if _has(list(body), (*_REPEATS, sre_constants.BRANCH)):
                return "nested quantifier or quantified alternation"
            if hi == sre_constants.MAXREPEAT or hi > MAX_REPEAT:
                return f"unbounded quantifier (use {{m,n}} with n <= {MAX_REPEAT})"
            if hi != lo:
                product *= hi - lo + 1
                if product > MAX_REPEAT_PRODUCT:
                    return "adjacent variable quantifiers"
            continue
        product = 1
        for sub in _children(op, av):
            risk = _seq_risk(sub)
            if risk:
                return risk
    return ""


def _stage_list(where: str, raw: dict[str, Any], key: str) -> tuple[str, ...]:
    stages = _strings(where, key, raw[key]) if key in raw else ()
    for s in stages:
        if s not in STAGES:
            raise RulesError(
                f"{where}: {key}: stage {s!r} unknown (known: {', '.join(sorted(STAGES))})"
            )
    return stages


def _merge(shipped: _Parsed, operator: _Parsed | None) -> RuleSet:
    """Operator rules first; same id replaces the shipped rule; tables overlay key by key."""
    ops = operator.rules if operator else []
    overridden = {r.id for r in ops}
    rules = [r for r in ops if r.enabled] + [
        r for r in shipped.rules if r.enabled and r.id not in overridden
    ]
    status = dict(shipped.status)
    reply_code = dict(shipped.reply_code)
    pseudo = dict(shipped.pseudo_status)
    sources = [shipped.name]
    if operator:
        status.update(operator.status)
        reply_code.update(operator.reply_code)
        pseudo.update(operator.pseudo_status)
        sources.append(operator.name)
    return RuleSet(
        rules=rules,
        status=status,
        reply_code=reply_code,
        pseudo_status=pseudo,
        sources=sources,
        shipped_count=len(shipped.rules),
        operator_count=len(ops),
    )

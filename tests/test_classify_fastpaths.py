"""Each fast path of the classifier answers exactly what its plain, step-by-step reference does.

The speed work replaced Python loops by searches that run in C (one ``findall`` per header
section, one regex search for the returned original's separator line, ``str.find`` jumps
between '@' signs, rule candidates by set intersection and regexes gated by a literal
substring). The corpus golden test (test_classify_golden.py) shows no verdict moved on real
bounces; these properties hold the fast paths to their references on adversarial text:
odd line ends, blank and folded lines, long lines, non-ASCII that changes length when
lower-cased, and the characters case-insensitive regexes fold specially (long s, dotless i).
"""

from __future__ import annotations

import functools

from hypothesis import given, settings
from hypothesis import strategies as st

from smtpguard.classify import mime
from smtpguard.classify.formats import plaintext
from smtpguard.classify.rules import RuleSet, load, normalize

FAST = settings(max_examples=300, deadline=None)

# Pieces that make header sections interesting: names, colons, folding, blank-ish lines.
_HEADER_PIECES = st.sampled_from(
    ["From", "To", "Content-Type", "X-A", "x-a", ":", ": ", " ", "\t", "\n", "\r\n", "\r",
     "value", "\x0c", "a b", "\n ", "\n\t", " :", "\u0130", "\udcff", "Received"]
)  # fmt: skip


@FAST
@given(st.lists(_HEADER_PIECES, max_size=40).map("".join))
def test_header_fields_match_the_stepwise_reader(head: str) -> None:
    assert mime.header_fields(head) == mime._header_fields_stepwise(head)


# Pieces of bounce texts around the returned-original separators.
_TEXT_PIECES = st.sampled_from(
    ["\n", "\r\n", " ", "\t", "-----", "=== ", "original message", "Received:",
     "Return-Path:", "--- Below this line is a copy of the message.", "x@y.example",
     "<a@b.example>: User unknown", "550 5.1.1 ", "Recipient: ", "\u0130", "\u017f",
     "K", "word", "Content-Type: message/rfc822", "The original message follows"]
)  # fmt: skip
_TEXTS = st.one_of(
    st.lists(_TEXT_PIECES, max_size=60).map("".join),
    # A long line (cut to MAX_LINE) or many lines (cut to MAX_LINES).
    st.tuples(st.integers(990, 1010), _TEXT_PIECES).map(
        lambda t: "a" * t[0] + t[1] + "\n--- original"
    ),
    st.integers(1995, 2005).map(lambda n: "line\n" * n + "-- original message"),
)


def _reference_cut(text: str) -> str:
    """The separator search one bounded line at a time (the code before the speed work)."""
    lines = text.split("\n", plaintext.MAX_LINES)[: plaintext.MAX_LINES]
    lines = [ln[: plaintext.MAX_LINE] for ln in lines]
    for i, line in enumerate(lines):
        if i and plaintext._SEPARATOR_RE.match(line.lower()):
            return "\n".join(lines[:i])
    return "\n".join(lines)


@FAST
@given(_TEXTS)
def test_original_is_cut_where_the_line_by_line_search_cuts(text: str) -> None:
    assert plaintext.cut_original(text) == _reference_cut(text)


@FAST
@given(_TEXTS)
def test_anchors_found_from_at_signs_are_those_of_every_line(text: str) -> None:
    plaintext._scan.cache_clear()
    _lines, anchors = plaintext._scan(text)
    expected = []
    for i, line in enumerate(plaintext.bounded_lines(text)):
        found = plaintext._anchor(line)
        if found:
            expected.append((i, found[0], found[1]))
    assert anchors == expected[: plaintext.MAX_ANCHORS]


@functools.cache
def _rules() -> RuleSet:
    return load()


def _needles() -> list[str]:
    rules = _rules()
    return sorted({s for r in rules.rules for s in (*r.any, *r.all, *r.not_)})


def _reference_match(
    rules: RuleSet, text: str, status: str, code: str, stage: str, provider: str
) -> object:
    """Every rule tested in full, in order: the provider's rules first, then generic ones."""
    if provider:
        for rule in rules.rules:
            if provider in rule.providers and rule.matches(text, status, code, stage):
                return rule
    for rule in rules.rules:
        if not rule.providers and rule.matches(text, status, code, stage):
            return rule
    return None


_RULE_TEXTS = st.lists(
    st.one_of(
        st.sampled_from(_needles()),
        st.sampled_from(
            [
                " ",
                "rbl",
                "ube",
                "\u017f",
                "\u0131",
                "S",
                "I",
                "after 3 attempts",
                "for 5 days",
                "<a@b.example>: user unknown",
                "550: user unknown",
                "doesn't have a x account",
                "recipient address rejected",
                "messages from [192.0.2.1] weren't sent",
                "550-",
            ]
        ),
        st.text(max_size=5),
    ),
    max_size=12,
).map(lambda parts: normalize(" ".join(parts)))


@FAST
@given(
    _RULE_TEXTS,
    st.sampled_from(["", "5.1.1", "5.7.1", "4.2.1", "5.0.0"]),
    st.sampled_from(["", "550", "421", "554"]),
    st.sampled_from(["unknown", "rcpt", "mail", "data"]),
    st.sampled_from(["", "google", "microsoft", "yahoo"]),
)
def test_indexed_rule_match_is_the_first_rule_that_matches_in_full(
    text: str, status: str, code: str, stage: str, provider: str
) -> None:
    rules = _rules()
    rules.clear_caches()
    expected = _reference_match(rules, text, status, code, stage, provider)
    assert rules.match(text, status, code, stage, provider) is expected

"""The whole labelled dev corpus through the classifier: accuracy must not regress.

These are IN-SAMPLE figures (the rules were written while looking at this corpus); they
guard against regressions, they do not measure accuracy on unseen bounces.

The labels follow Sisimai's conventions, one of which the shipped classifier deliberately
does not: for Sisimai a "user unknown" that nothing shows to answer RCPT TO is "filtered";
the shipped default keeps the wording's reason unless the reply is known to answer DATA or
later (on unseen bounces that is what is right). So the corpus is scored twice: under
Sisimai's convention (``Classifier(sisimai_stages=True)``, comparable with the labels: the
floors that matter) and with the shipped default (floors that pin today's measurement).
Floors sit a little under what was measured when they were set (see the README's "Formats
and accuracy"). Scored in-process with the benchmark's own matching rules
(benchmarks/classify_bench.py), so the test and the published numbers cannot drift apart.
"""

from __future__ import annotations

import functools
import importlib.util
import json
from pathlib import Path
from types import ModuleType

import pytest

from smtpguard.classify import Classifier

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "classify_bench.py"

# metric -> lowest acceptable share (0..1), under Sisimai's convention. Measured when set:
# recipients 98.8%, status 94.4%, reason 92.6%, suppress agreement 98.1%, precision 100%,
# recall 94.3%. Each floor is the measurement less about half a point; precision stays at
# 99% (no wrong suppression is tolerated beyond noise).
FLOORS = {
    "recipients found": 0.985,
    "status exact match": 0.94,
    "reason exact match": 0.92,
    "suppress agreement": 0.975,
    "suppress precision": 0.99,
    "suppress recall": 0.935,
}
# The shipped default on the same labels. Measured when set: reason 89.2%, precision 87.2%
# (the labels call 15 unknown-stage "user unknown" replies "filtered"), recall 97.1%.
DEFAULT_FLOORS = {
    "recipients found": 0.985,
    "reason exact match": 0.885,
    "suppress precision": 0.865,
    "suppress recall": 0.965,
}


def _bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("classify_bench", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@functools.cache
def _scores(corpus: Path, sisimai_stages: bool = True) -> dict[str, tuple[int, int]]:
    classifier = Classifier.load(sisimai_stages=sisimai_stages)
    verdicts = [
        {"file": path.name, **v.to_dict()}
        for path in sorted(corpus.glob("*.eml"))
        for v in classifier.message(path.read_bytes())
    ]
    labels = [json.loads(line) for line in (corpus / "labels.jsonl").read_text().splitlines()]
    counts, _misses = _bench().score(labels, verdicts)
    return counts


@pytest.fixture
def scores(corpus: Path) -> dict[str, tuple[int, int]]:
    """Scored once per session (the corpus fixture is per test, the work is not)."""
    return _scores(corpus)


@pytest.mark.parametrize("metric", sorted(FLOORS))
def test_corpus_accuracy_stays_above_its_floor(
    scores: dict[str, tuple[int, int]], metric: str
) -> None:
    hits, total = scores[metric]
    assert total > 0
    assert hits / total >= FLOORS[metric], f"{metric}: {hits}/{total}"


@pytest.mark.parametrize("metric", sorted(DEFAULT_FLOORS))
def test_corpus_accuracy_of_the_shipped_default_stays_above_its_floor(
    corpus: Path, metric: str
) -> None:
    hits, total = _scores(corpus, sisimai_stages=False)[metric]
    assert hits / total >= DEFAULT_FLOORS[metric], f"{metric}: {hits}/{total}"

"""Every corpus file gets exactly the verdicts recorded in ``classify_golden.json``.

Speed work on the classifier (fast paths, combined regexes, skipped detectors) must not
change a single verdict: not the reason, status, recipient, suppress flag, diagnostic,
rule id or any other field. The golden file holds every verdict of every
``tests/corpus/sisimai-dev`` file as produced before that work began; a deliberate change
of behaviour (a new rule) regenerates it, and the diff of the JSON shows what moved:

    .venv/bin/python tests/test_classify_golden.py --write

The same verdicts are expected when the file's line ends are CRLF (bounces arrive both
ways; a byte-level fast path must not depend on it).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from smtpguard.classify import Classifier

GOLDEN = Path(__file__).with_name("classify_golden.json")
CORPUS = Path(__file__).resolve().parent / "corpus" / "sisimai-dev"


def _verdicts(classifier: Classifier, data: bytes) -> list[dict[str, object]]:
    # Through JSON and back: tuples and lists compare the way the stored file does.
    return json.loads(json.dumps([v.to_dict() for v in classifier.message(data)]))


def _crlf(data: bytes) -> bytes:
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def _golden() -> dict[str, list[dict[str, object]]]:
    return json.loads(GOLDEN.read_text())


def _files() -> list[Path]:
    return sorted(CORPUS.glob("*.eml"))


def test_golden_file_covers_every_corpus_file() -> None:
    assert sorted(_golden()) == [p.name for p in _files()]


@pytest.mark.parametrize("line_end", ["as stored", "crlf"])
def test_every_corpus_file_gets_its_golden_verdicts(line_end: str) -> None:
    classifier = Classifier.load()
    golden = _golden()
    changed = []
    for path in _files():
        data = path.read_bytes()
        got = _verdicts(classifier, data if line_end == "as stored" else _crlf(data))
        if got != golden.get(path.name):
            changed.append(path.name)
    assert not changed, f"{len(changed)} files changed verdicts: {changed[:20]}"


def _write() -> None:
    classifier = Classifier.load()
    out = {p.name: _verdicts(classifier, p.read_bytes()) for p in _files()}
    GOLDEN.write_text(json.dumps(out, sort_keys=True, indent=0) + "\n")
    print(f"wrote {GOLDEN} ({sum(map(len, out.values()))} verdicts, {len(out)} files)")


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        sys.exit("usage: test_classify_golden.py --write")
    _write()

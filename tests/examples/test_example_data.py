"""examples/data: the committed files are exactly what their generators write; basic properties."""

from __future__ import annotations

import collections
import json
import sys

from examples_util import ROOT

DATA = ROOT / "examples" / "data"


def _rows(name: str) -> list[dict]:
    return [json.loads(line) for line in (DATA / name).open(encoding="utf-8")]


def _generator(name: str):
    sys.path.insert(0, str(DATA))
    try:
        return __import__(name)
    finally:
        sys.path.remove(str(DATA))


def test_generators_reproduce_the_committed_files():
    train, test = _generator("classification_make").build()
    assert train == _rows("classification_train.jsonl") and test == _rows("classification_test.jsonl")
    train, test = _generator("translation_make").build()
    assert train == _rows("translation_train.jsonl") and test == _rows("translation_test.jsonl")


def test_classification_set_is_balanced_and_split_by_template():
    make = _generator("classification_make")
    train, test = _rows("classification_train.jsonl"), _rows("classification_test.jsonl")
    assert len(train) + len(test) >= 600
    assert len({r["text"] for r in train + test}) == len(train) + len(test)  # no duplicates
    counts = collections.Counter(r["label"] for r in train)
    assert set(counts) == set(make.TEMPLATES) and len(counts) >= 3
    assert min(counts.values()) > 0.7 * max(counts.values())
    assert {r["label"] for r in test} == set(counts)
    # the test file's sentences come from templates the training file never uses
    for label, templates in make.TEMPLATES.items():
        patterns = [_pattern(t) for t in templates]

        def used(rows):
            found = set()
            for r in rows:
                if r["label"] == label:  # noqa: B023  (used in this iteration)
                    hits = [i for i, p in enumerate(patterns) if p.fullmatch(r["text"])]  # noqa: B023
                    assert len(hits) == 1, (r["text"], hits)
                    found.add(hits[0])
            return found

        assert len(used(test)) == make.TEST_TEMPLATES and len(used(train)) == len(templates) - make.TEST_TEMPLATES
        assert not used(train) & used(test), label


def _pattern(template: str):
    """A template as a regex: any slot value, an optional greeting before and closing after."""
    import re

    body = re.escape(template[1:])
    body = re.sub(r"\\\{\w+\\\}", "(.+?)", body)
    return re.compile(r"(?:.*?[ ,:.] )?[" + template[0] + template[0].lower() + "]" + body + r"(?: .*)?")

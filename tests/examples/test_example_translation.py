"""examples/translation: the whole command on a tiny Llama with a character tokenizer."""

from __future__ import annotations

import json

from examples_util import ROOT, load_example
from tests.training.helpers import tiny_folder

run = load_example("translation/run.py", "example_translation_run")


def test_smoke_run_scores_before_and_after(tmp_path):
    import sacrebleu

    readme = (ROOT / "examples/translation/README.md").read_text()
    model = tiny_folder(tmp_path / "llama", kind="llama")
    out = run.main(["--smoke", "--model", model, "--out", str(tmp_path), "--samples", "3"])
    for key in ("bleu", "chrf", "loss", "perplexity"):
        assert key in out["first_eval"] and key in out["last_eval"]
    assert out["steps"] == 2
    assert out["last_eval"]["loss"] != out["first_eval"]["loss"]  # the adapter trained
    assert len(out["samples"]) == 3
    records = [json.loads(line) for line in (ROOT / "examples/data/translation_test.jsonl").open()]
    assert [s["reference"] for s in out["samples"]] == [r["target"] for r in records[:3]]
    # the README's columns are the samples' own strings; the scores are sacrebleu's
    assert out["samples"][0]["source"] in out["examples"]
    one = sacrebleu.corpus_chrf([out["samples"][0]["after"]], [[out["samples"][0]["reference"]]]).score
    assert 0.0 <= one <= 100.0
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    assert (ROOT / "examples/translation/README.md").read_text() == readme


def test_translation_data_files():
    for name, least in (("translation_train.jsonl", 400), ("translation_test.jsonl", 100)):
        rows = [json.loads(line) for line in (ROOT / "examples/data" / name).open()]
        assert len(rows) >= least
        for r in rows:
            assert r["prompt"] == "Translate into French: " + r["source"] and r["response"] == r["target"]
    train = {json.loads(line)["source"] for line in (ROOT / "examples/data/translation_train.jsonl").open()}
    test = {json.loads(line)["source"] for line in (ROOT / "examples/data/translation_test.jsonl").open()}
    assert not train & test

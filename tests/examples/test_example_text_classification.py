"""examples/text_classification: the five-way comparison and the more methods on a tiny BERT, the partial trainer."""

from __future__ import annotations

import json

import pytest
import torch

from examples_util import ROOT, load_example
from tests.training.helpers import tiny_folder

run = load_example("text_classification/run.py", "example_text_run")
import partial  # noqa: E402  (examples/text_classification, put on the path by run.py)


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    return tiny_folder(tmp_path_factory.mktemp("bert"), kind="bert", num_labels=4)


def test_smoke_run_compares_all_methods(bert, tmp_path):
    readme = (ROOT / "examples/text_classification/README.md").read_text()
    result = run.main(["--smoke", "--model", bert, "--out", str(tmp_path)])
    rows = {r["name"]: r for r in result["rows"]}
    assert list(rows) == list(run.FIRST)
    total = rows["full"]["total"]
    assert rows["full"]["trainable"] == total
    assert all(r["total"] == total for r in rows.values())  # adapters are not counted as model
    order = ["head", "bottleneck+head", "lora+head", "last2+head", "full"]
    assert [rows[n]["trainable"] for n in order] == sorted(rows[n]["trainable"] for n in order)
    assert (tmp_path / "lora_head" / "adapter_model.safetensors").is_file()
    assert json.loads((tmp_path / "lora_head" / "labels.json").read_text()) == [
        "account",
        "billing",
        "delivery",
        "technical",
    ]
    assert json.loads((tmp_path / "results.json").read_text())["table"] == result["table"]
    assert (ROOT / "examples/text_classification/README.md").read_text() == readme


def test_smoke_run_of_the_more_methods(bert, tmp_path):
    readme = (ROOT / "examples/text_classification/README.md").read_text()
    result = run.main(["--smoke", "--section", "more", "--model", bert, "--out", str(tmp_path)])
    rows = {r["name"]: r for r in result["rows"]}
    assert list(rows) == list(run.MORE)
    fresh, _ = ak_model(bert)
    total = sum(p.numel() for p in fresh.parameters())
    head = sum(p.numel() for n, p in fresh.named_parameters() if n.startswith("classifier."))
    for name, r in rows.items():
        assert r["total"] == total, name  # adapters are not counted as model
        assert head < r["trainable"] < total, name  # the adapter and the head train
        folder = tmp_path / name.replace("+", "_")
        assert (folder / "adapter_model.safetensors").is_file(), name
    assert json.loads((tmp_path / "results.json").read_text())["table"] == result["table"]
    assert (ROOT / "examples/text_classification/README.md").read_text() == readme


def test_collect_writes_only_its_section(tmp_path, monkeypatch):
    readme = tmp_path / "README.md"
    first = "<!-- results:start -->\nmeasured before\n<!-- results:end -->"
    readme.write_text(f"# t\n\n{first}\n\n<!-- results-more:start -->\nold\n<!-- results-more:end -->\ntail\n")
    monkeypatch.setattr(run, "HERE", tmp_path)
    row = dict(name="x+head", accuracy=0.5, macro_f1=0.25, trainable=10, total=100, file_bytes=2048, lr=1e-3, seconds=7)
    parts = []
    for i, rows in enumerate([[{**row, "name": "loha+head"}], [{**row, "name": "ia3+head"}]]):
        path = tmp_path / f"r{i}.json"
        path.write_text(json.dumps({"rows": rows, "machine": "m", "seconds": 9, "command": f"cmd {i}"}))
        parts.append(str(path))
    out = run.main(["--section", "more", "--collect", *parts])
    text = readme.read_text()
    assert first in text and text.endswith("tail\n") and "old" not in text
    assert "- `cmd 0` (9 s)\n- `cmd 1` (9 s)" in text and out["table"] in text
    assert "| ia3+head | 50.0 | 25.0 | 10 | 10.00 | 2 KiB | 0.001 | 7 s |\n| loha+head" in text  # in MORE order


def ak_model(bert):
    import adapterkit as ak

    return ak.load_model(bert, task="classification", num_labels=4)


def test_partial_training_changes_only_what_it_trains(bert, tmp_path):
    import adapterkit as ak

    config = run.config_for("last2+head", run.parse(["--smoke", "--model", bert, "--out", str(tmp_path)]))
    row, trained = partial.train_partial(config, run.VARIANTS["last2+head"][2], tmp_path / "p")
    fresh, _ = ak.load_model(bert, task="classification", num_labels=4)
    picked = run.VARIANTS["last2+head"][2](fresh)
    before = dict(fresh.named_parameters())
    changed = {n for n, p in trained.named_parameters() if not torch.equal(p, before[n])}
    frozen = {n for n in before if not picked(n)}
    assert changed and not changed & frozen
    assert {n for n in changed if not n.startswith("classifier.")}  # the blocks trained, not just the head
    assert row["trainable"] == sum(p.numel() for n, p in before.items() if picked(n))
    assert 0.0 <= row["accuracy"] <= 1.0 and 0.0 <= row["macro_f1"] <= 1.0


def test_last_blocks_names_the_top_of_the_encoder(bert):
    import adapterkit as ak

    model, _ = ak.load_model(bert, task="classification", num_labels=4)
    n = model.config.num_hidden_layers
    assert partial.last_blocks(model, 1) == [f"bert.encoder.layer.{n - 1}."]
    assert len(partial.last_blocks(model, 2)) == 2

"""Staged and partial fine-tuning: what each stage trains, layer-wise learning rates, resume, errors."""

import re

import pytest
import torch
from safetensors.torch import load_file

import adapterkit as ak
from adapterkit.training import TrainConfig
from adapterkit.training import stages as st
from tests.training.helpers import memorise_records, tiny_folder, whole_and_resumed, write_jsonl


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    return tiny_folder(tmp_path_factory.mktemp("bert") / "model", kind="bert", num_labels=2)


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    return tiny_folder(tmp_path_factory.mktemp("llama") / "model")


def _classify(tmp_path, model, stage_list, adapter=None, **output):
    rows = [{"text": f"item {i} {'good' if i % 2 else 'bad'}", "label": i % 2} for i in range(16)]
    data = write_jsonl(tmp_path / "cls.jsonl", rows)
    return {
        "model": {"name": model},
        "adapter": adapter,
        "stages": stage_list,
        "data": {"train": data, "format": "classification"},
        "optim": {"lr": 1e-2, "batch_size": 4, "schedule": "constant"},
        "output": dict({"dir": str(tmp_path / "out"), "progress": False, "plot": False}, **output),
    }


def _initial(folder):
    from transformers import AutoModelForSequenceClassification

    return dict(AutoModelForSequenceClassification.from_pretrained(folder).named_parameters())


def test_each_stage_trains_its_parameters_and_no_other(tmp_path, bert_dir):
    stage_list = [{"train": "head", "steps": 3}, {"top_blocks": 1, "steps": 3, "lr": 5e-3}]
    ak.train(_classify(tmp_path, bert_dir, stage_list, save_every=3))
    start = _initial(bert_dir)
    after = {s: load_file(str(tmp_path / f"out/checkpoints/step-{s:07d}/trainable.safetensors")) for s in (3, 6)}
    top = "bert.encoder.layer.1."
    assert set(after[3]) == {n for n in start if n.startswith(("classifier.", top))}
    for name in after[3]:
        head = name.startswith("classifier.")
        assert torch.equal(after[3][name], start[name]) != head, name  # stage 0: the head only
        assert torch.equal(after[6][name], after[3][name]) != (not head), name  # stage 1: the top block only
    final = dict(ak.train(_classify(tmp_path, bert_dir, stage_list)).model.named_parameters())
    for name, p in start.items():  # the bottom block and the embeddings never train
        if not name.startswith(("classifier.", top)):
            assert torch.equal(final[name], p), name
    saved = load_file(str(tmp_path / "out" / "trained.safetensors"))
    torch.testing.assert_close(saved["classifier.weight"], final["classifier.weight"])


def test_layer_wise_learning_rates_are_the_configured_ones(bert_dir):
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(bert_dir)
    st.apply(model, st.StageConfig(train=("all",)), set())
    lr, decay, layers = 1e-3, 0.8, model.config.num_hidden_layers
    groups = st.decayed_groups(model, lr, decay)
    got = {id(p): g["lr"] for g in groups for p in g["params"]}
    assert len(got) == sum(1 for _ in model.parameters())
    for name, p in model.named_parameters():
        block = re.match(r"bert\.encoder\.layer\.(\d+)\.", name)
        if block:
            want = lr * decay ** (layers - int(block.group(1)))
        elif "embeddings" in name:
            want = lr * decay ** (layers + 1)
        else:
            want = lr
        assert got[id(p)] == pytest.approx(want, rel=1e-12), name


def test_a_stage_with_layer_decay_builds_those_groups(tmp_path, bert_dir, monkeypatch):
    seen = []
    real = torch.optim.AdamW.__init__

    def spy(self, groups, *args, **kwargs):
        seen.append(sorted({g["lr"] for g in groups}))
        real(self, groups, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "__init__", spy)
    ak.train(
        _classify(
            tmp_path,
            bert_dir,
            [{"train": "head", "steps": 1}, {"train": "all", "steps": 1, "lr": 1e-3, "layer_decay": 0.5}],
        )
    )
    assert seen[0] == [1e-2]
    assert seen[1] == pytest.approx(sorted(1e-3 * 0.5**k for k in (0, 1, 2, 3)))


def test_resume_across_a_stage_boundary_equals_an_uninterrupted_run(tmp_path, llama_dir):
    data = write_jsonl(tmp_path / "train.jsonl", memorise_records(8))
    cfg = {
        "model": {"name": llama_dir},
        "adapter": {"method": "lora", "rank": 4, "dropout": 0.1},
        "data": {"train": data},
        "optim": {"lr": 1e-2, "batch_size": 2, "seed": 0},
        "stages": [
            {"train": "adapters", "steps": 3, "schedule": "constant"},
            {"train": "adapters", "top_blocks": 1, "steps": 3, "lr": 5e-3, "warmup_steps": 1},
        ],
        "output": {"progress": False, "plot": False, "save_every": 3},
    }
    result = whole_and_resumed(cfg, tmp_path, crash_at=4)
    assert result.steps == 6
    for file in ("adapter_model.safetensors", "trained.safetensors"):
        whole, resumed = (load_file(str(tmp_path / d / file)) for d in ("whole", "split"))
        assert whole.keys() == resumed.keys() and whole
        for key in whole:
            assert torch.equal(whole[key], resumed[key]), (file, key)


@pytest.mark.parametrize(
    "stage_list, message",
    [
        ([{"train": "head"}, {"train": "head", "lr": -1}], r"stages\[1\]\.lr"),
        ([{"train": "head", "step": 3}], r"stages\[0\].*unknown field 'step'.*steps"),
        ([{"train": "head", "steps": 2, "epochs": 1}], r"stages\[0\] gives both steps"),
        ([{"train": "heads"}], r"stages\[0\]\.train must be one of"),
        ([{"lr": 1e-3}], r"stages\[0\] trains nothing"),
        ([{"top_blocks": 1, "layer_decay": 1.5}], r"stages\[0\]\.layer_decay"),
        ([], "non-empty list"),
    ],
)
def test_stage_errors_name_the_stage_and_the_key(tmp_path, stage_list, message):
    with pytest.raises(ak.ConfigError, match=message):
        TrainConfig.from_dict(_classify(tmp_path, "x/model", stage_list))


def test_no_adapter_needs_stages_and_adapters_need_an_adapter(tmp_path, bert_dir):
    with pytest.raises(ak.ConfigError, match="no adapter"):
        TrainConfig.from_dict(_classify(tmp_path, bert_dir, None, adapter={"method": "none"}))
    with pytest.raises(ak.ConfigError, match=r"stages\[0\]\.train: adapters"):
        ak.train(_classify(tmp_path, bert_dir, [{"train": "adapters", "steps": 1}]))


def test_a_modules_stage_trains_only_the_named_modules(tmp_path, bert_dir):
    result = ak.train(_classify(tmp_path, bert_dir, [{"modules": ["LayerNorm"], "steps": 2}]))
    final = dict(result.model.named_parameters())
    start = _initial(bert_dir)
    changed = {n for n, p in start.items() if not torch.equal(final[n], p)}
    assert changed and changed <= {n for n in start if ".LayerNorm." in n}


def test_stage_lengths_and_a_round_trip_through_a_dict(tmp_path):
    stage_list = [{"train": "head", "steps": 5}, {"train": "all", "epochs": 2}, {"top_blocks": 1}]
    cfg = TrainConfig.from_dict(_classify(tmp_path, "x/model", stage_list))
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg and cfg.stages[0].train == ("head",)
    assert st.ends(cfg.stages, cfg.optim, 4) == [5, 5 + 8, 5 + 8 + 4 * cfg.optim.epochs]
    capped = cfg.replace({"optim.max_steps": 3})
    assert st.ends(capped.stages, capped.optim, 4) == [5, 13, 16]
    assert [st.stage_at(s, [5, 13, 16]) for s in (0, 4, 5, 12, 13, 15)] == [0, 0, 1, 1, 2, 2]


def test_a_top_block_and_head_stage_matches_a_plain_partial_loop(tmp_path, bert_dir):
    """The same steps written out by hand (examples/text_classification/partial.py) give the same model."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "examples/text_classification/partial.py"
    spec = importlib.util.spec_from_file_location("partial_reference", path)
    partial = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(partial)
    cfg = _classify(tmp_path, bert_dir, [{"train": "head", "top_blocks": 1, "schedule": "linear", "warmup_steps": 1}])
    cfg["optim"].update(max_steps=4, schedule="linear", warmup_steps=1)
    cfg["data"]["eval"] = cfg["data"]["train"]
    ours = dict(ak.train(cfg).model.named_parameters())
    config = TrainConfig.from_dict(dict(cfg, adapter={"method": "lora"}, stages=None))
    _, reference = partial.train_partial(
        config, lambda m: lambda n: n.startswith(("classifier.", *partial.last_blocks(m, 1))), tmp_path / "reference"
    )
    for name, p in reference.named_parameters():
        torch.testing.assert_close(ours[name], p, atol=1e-6, rtol=1e-5)
    assert any(not torch.equal(ours[n], p) for n, p in _initial(bert_dir).items())


def test_with_an_adapter_the_head_stage_trains_the_adapters_copy_of_the_head(tmp_path, bert_dir):
    stage_list = [{"train": "head", "steps": 2}, {"train": "adapters", "steps": 2}]
    ak.train(_classify(tmp_path, bert_dir, stage_list, adapter={"method": "lora", "rank": 2}, save_every=2))
    first = load_file(str(tmp_path / "out/checkpoints/step-0000002/trainable.safetensors"))
    assert "classifier.adapters.default.weight" in first and not any(".base." in n for n in first)
    start = _initial(bert_dir)
    assert not torch.equal(first["classifier.adapters.default.weight"], start["classifier.weight"])
    last = load_file(str(tmp_path / "out/checkpoints/step-0000004/trainable.safetensors"))
    lora_b = [n for n in first if n.endswith(".b")]  # LoRA's B starts at zero
    assert lora_b and all(not first[n].any() for n in lora_b)  # stage 0: the head only
    assert all(last[n].any() for n in lora_b)  # stage 1: the adapters

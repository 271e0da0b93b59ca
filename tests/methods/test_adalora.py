"""AdaLoRA against PEFT 0.21.2: forward, gradients, penalty, rank allocation, files; the loop; bad configs."""

import json

import pytest
import torch
import yaml
from safetensors.torch import load_file

import adapterkit as ak
from adapterkit.inject import adapter_layers
from adapterkit.methods.adalora import AdaLoRALayer
from tests.models import TinyCNN, tiny_llama, tokens

SCHEDULE = dict(init_r=4, target_r=2, tinit=1, tfinal=2, total_step=8, deltaT=1)


def _config(**changes):
    return ak.AdaLoRAConfig(**{**SCHEDULE, "alpha": 8.0, "targets": "all-linear", "init": "random", **changes})


def _peft_config(cfg: ak.AdaLoRAConfig):
    from peft import AdaLoraConfig

    return AdaLoraConfig(
        init_r=cfg.init_r,
        target_r=cfg.target_r,
        tinit=cfg.tinit,
        tfinal=cfg.tfinal,
        deltaT=cfg.deltaT,
        beta1=cfg.beta1,
        beta2=cfg.beta2,
        orth_reg_weight=cfg.orth_reg_weight,
        total_step=cfg.total_step,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=cfg.targets if isinstance(cfg.targets, str) else list(cfg.targets),
        init_lora_weights=False,
        task_type="CAUSAL_LM",
    )


def _ours(model):
    """{module: (a, e, b)} of the default adapter."""
    return {
        n: (l.adapters["default"].a, l.adapters["default"].e, l.adapters["default"].b)
        for n, l in adapter_layers(model)
        if isinstance(l, AdaLoRALayer)
    }


def _theirs(peft_model, names):
    inner = peft_model.base_model.model
    return {
        n: tuple(getattr(inner.get_submodule(n), k)["default"] for k in ("lora_A", "lora_E", "lora_B")) for n in names
    }


def _twins(cfg):
    """(adapterkit model, PEFT model) with the same AdaLoRA tensors."""
    from peft import get_peft_model

    ours = ak.attach(tiny_llama(), cfg)
    theirs = get_peft_model(tiny_llama(), _peft_config(cfg))
    mine = _ours(ours)
    with torch.no_grad():
        for name, tensors in _theirs(theirs, mine).items():
            for t, o in zip(tensors, mine[name]):
                t.copy_(o)
    return ours, theirs


def _loss(model, ids, peft: bool):
    out = model(input_ids=ids, labels=ids).loss
    return out if peft else out + ak.orthogonality(model)  # PEFT's forward adds the penalty itself


def test_logits_gradients_and_penalty_equal_peft():
    ours, theirs = _twins(_config(dropout=0.0))
    ids = tokens()
    assert len(_ours(ours)) == 14  # all-linear: 7 projections in each of 2 blocks, no lm_head
    torch.testing.assert_close(ours(input_ids=ids).logits, theirs(input_ids=ids).logits, atol=1e-5, rtol=1e-5)
    penalty = ak.orthogonality(ours)
    assert penalty > 0
    plain = ours(input_ids=ids, labels=ids).loss
    peft_loss = theirs(input_ids=ids, labels=ids).loss  # task loss + orth_reg_weight * penalty
    torch.testing.assert_close(plain + penalty, peft_loss, atol=1e-5, rtol=1e-5)
    _loss(ours, ids, peft=False).backward()
    peft_loss.backward()
    mine = _ours(ours)
    for name, tensors in _theirs(theirs, mine).items():
        for t, o in zip(tensors, mine[name]):
            torch.testing.assert_close(o.grad, t.grad, atol=1e-5, rtol=1e-4)


def test_one_allocator_update_makes_peft_masks():
    """The same weights and gradients: the same sensitivities, masks and rank pattern at every step."""
    cfg = _config(deltaT=2, total_step=12, tinit=2, tfinal=3)
    ours, theirs = _twins(cfg)
    allocator = ak.RankAllocator(ours)
    mine = _ours(ours)
    gen = torch.Generator().manual_seed(0)
    for step in range(cfg.total_step + 1):
        with torch.no_grad():
            for name, tensors in _theirs(theirs, mine).items():
                for t, o in zip(tensors, mine[name]):
                    t.grad = torch.randn(t.shape, generator=gen)
                    o.grad = t.grad.clone()
        theirs.base_model.update_and_allocate(step)
        allocator.step(ours, step)
        for name, tensors in _theirs(theirs, mine).items():
            assert torch.equal(tensors[1], mine[name][1]), (step, name)  # E, masked alike
    pattern = {k.replace(".lora_E.default", ""): v for k, v in theirs.peft_config["default"].rank_pattern.items()}
    assert dict(ak.adapter_config(ours, "default").rank_pattern) == {k: tuple(v) for k, v in pattern.items()}
    assert sum(sum(v) for v in pattern.values()) == cfg.target_r * 14


def _train(model, peft: bool, steps: int, allocator=None):
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=2e-2)
    patterns = []
    for step in range(steps):
        ids = torch.randint(0, 97, (2, 7), generator=torch.Generator().manual_seed(100 + step))
        _loss(model, ids, peft).backward()
        optimizer.step()
        if peft:
            model.base_model.update_and_allocate(step)
            found = model.peft_config["default"].rank_pattern
            patterns.append(found and {k.replace(".lora_E.default", ""): tuple(v) for k, v in found.items()})
        else:
            allocator.step(model, step)
            patterns.append(ak.adapter_config(model, "default").rank_pattern)
        optimizer.zero_grad()
    return patterns


@pytest.fixture(scope="module")
def trained():
    """Both models trained alike for total_step + 2 steps: (ours, theirs, their patterns, ours)."""
    cfg = _config()
    ours, theirs = _twins(cfg)
    theirs_patterns = _train(theirs, True, cfg.total_step + 2)
    ours_patterns = _train(ours, False, cfg.total_step + 2, ak.RankAllocator(ours))
    return ours, theirs, theirs_patterns, ours_patterns


def test_identical_training_gives_peft_rank_patterns(trained):
    ours, theirs, theirs_patterns, ours_patterns = trained
    assert [p and dict(p) for p in ours_patterns] == theirs_patterns
    final = dict(ours_patterns[-1])
    assert sum(map(sum, final.values())) == 2 * 14 and any(sum(v) != 2 for v in final.values())
    ids = tokens()
    torch.testing.assert_close(ours(input_ids=ids).logits, theirs(input_ids=ids).logits, atol=1e-4, rtol=1e-4)


def test_files_both_ways_with_a_rank_pattern(trained, tmp_path):
    from peft import PeftModel

    ours, theirs, _, _ = trained
    ids = tokens()
    ours.eval(), theirs.eval()
    ak.save_adapter(ours, tmp_path / "ours")
    theirs.save_pretrained(tmp_path / "theirs")
    ours_file, theirs_file = (load_file(str(tmp_path / d / "adapter_model.safetensors")) for d in ("ours", "theirs"))
    assert {k: v.shape for k, v in ours_file.items()} == {k: v.shape for k, v in theirs_file.items()}
    data = json.loads((tmp_path / "ours" / "adapter_config.json").read_text())
    peft_data = json.loads((tmp_path / "theirs" / "adapter_config.json").read_text())
    assert data["peft_type"] == "ADALORA" and data["rank_pattern"] == peft_data["rank_pattern"]
    with torch.no_grad():
        want = ours(input_ids=ids).logits
        loaded_by_peft = PeftModel.from_pretrained(tiny_llama(), str(tmp_path / "ours")).eval()
        torch.testing.assert_close(loaded_by_peft(input_ids=ids).logits, want, atol=1e-5, rtol=1e-5)
        loaded_by_us = ak.load_adapter(tiny_llama(), tmp_path / "theirs").eval()
        torch.testing.assert_close(
            loaded_by_us(input_ids=ids).logits, theirs(input_ids=ids).logits, atol=1e-5, rtol=1e-5
        )
    small = {n: a.shape[0] for n, (a, _, _) in _ours(loaded_by_us).items()}
    assert small == {n: sum(v) for n, v in data_pattern(data).items()}  # only the kept triplets
    ak.save_adapter(loaded_by_us, tmp_path / "again")  # saved again: the same file
    again = load_file(str(tmp_path / "again" / "adapter_model.safetensors"))
    assert again.keys() == theirs_file.keys() and all(torch.equal(again[k], theirs_file[k]) for k in again)


def test_files_both_ways_before_allocation(tmp_path):
    """No rank pattern yet: every layer holds init_r triplets, in both directions."""
    from peft import PeftModel

    ours, theirs = _twins(_config(targets=["q_proj", "down_proj"]))
    ids = tokens()
    ak.save_adapter(ours, tmp_path / "ours")
    theirs.save_pretrained(tmp_path / "theirs")
    assert json.loads((tmp_path / "ours" / "adapter_config.json").read_text())["rank_pattern"] is None
    with torch.no_grad():
        want = ours.eval()(input_ids=ids).logits
        by_peft = PeftModel.from_pretrained(tiny_llama(), str(tmp_path / "ours")).eval()
        torch.testing.assert_close(by_peft(input_ids=ids).logits, want, atol=1e-5, rtol=1e-5)
        by_us = ak.load_adapter(tiny_llama(), tmp_path / "theirs").eval()
        torch.testing.assert_close(by_us(input_ids=ids).logits, want, atol=1e-5, rtol=1e-5)
    got, want_cfg = ak.adapter_config(by_us, "default").to_dict(), ak.adapter_config(ours, "default").to_dict()
    assert set(got.pop("targets")) == set(want_cfg.pop("targets")) and got == want_cfg  # PEFT keeps a set


def data_pattern(data):
    return {k.removesuffix(".lora_E"): v for k, v in data["rank_pattern"].items()}


def test_merge_equals_unmerged_after_masking(trained):
    import copy

    ours = copy.deepcopy(trained[0]).eval()
    ids = tokens()
    with torch.no_grad():
        want = ours(input_ids=ids).logits
        ak.merge_adapter(ours)
        torch.testing.assert_close(ours(input_ids=ids).logits, want, atol=1e-5, rtol=1e-5)
        ak.unmerge_adapter(ours)
        merged = ak.merge(ours)
        assert not any(isinstance(m, ak.AdapterLayer) for m in merged.modules())
        torch.testing.assert_close(merged(input_ids=ids).logits, want, atol=1e-5, rtol=1e-5)


def test_train_command_runs_the_allocator_to_the_final_budget(tmp_path, capsys, monkeypatch):
    from adapterkit.cli import main
    from adapterkit.commands.inspect import describe
    from tests.training.helpers import memorise_records, tiny_folder, write_jsonl

    model_dir = tiny_folder(tmp_path / "model")
    data = write_jsonl(tmp_path / "train.jsonl", memorise_records(8))
    cfg = {
        "model": {"name": model_dir},
        "adapter": {
            "method": "adalora",
            "init_r": 4,
            "target_r": 2,
            "tinit": 1,
            "tfinal": 1,
            "total_step": 6,
            "targets": ["q_proj", "v_proj"],
            "alpha": 8,
        },
        "data": {"train": data},
        "optim": {"lr": 1e-2, "batch_size": 4, "max_steps": 6, "seed": 0},
        "eval": {"every": 0},
        "output": {"dir": str(tmp_path / "out"), "progress": False, "plot": False},
    }
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(cfg))
    import adapterkit.methods.adalora as package

    penalties, real = [], package.orthogonality
    monkeypatch.setattr(package, "orthogonality", lambda m, n="default": penalties.append(n) or real(m, n))
    assert main(["train", str(tmp_path / "run.yaml")]) == 0
    assert penalties == ["default"] * 6  # one penalty per (micro-)batch
    data = json.loads((tmp_path / "out" / "adapter_config.json").read_text())
    pattern = data_pattern(data)
    assert len(pattern) == 4 and sum(map(sum, pattern.values())) == 2 * 4  # target_r per layer on average
    tensors = load_file(str(tmp_path / "out" / "adapter_model.safetensors"))
    assert sum(v.shape[0] for k, v in tensors.items() if k.endswith("lora_E")) == 8
    info = describe(tmp_path / "out", "default")
    assert info["method"] == "adalora" and info["peft_type"] == "ADALORA"
    assert info["parameters"] == sum(v.numel() for v in tensors.values())
    capsys.readouterr()
    assert main(["inspect", str(tmp_path / "out")]) == 0
    shown = capsys.readouterr().out
    assert "8 of 16 kept over 4 modules" in shown and "adapterkit merge" in shown
    assert main(["merge", str(tmp_path / "out"), "--base", model_dir, "--out", str(tmp_path / "merged")]) == 0
    from transformers import AutoModelForCausalLM

    ids = torch.randint(3, 99, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        adapted = ak.load_adapter(AutoModelForCausalLM.from_pretrained(model_dir), tmp_path / "out").eval()
        merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
        torch.testing.assert_close(merged(input_ids=ids).logits, adapted(input_ids=ids).logits, atol=1e-5, rtol=1e-5)

    with pytest.raises(ak.ConfigError, match="--resume"):  # checkpoints do not hold the allocator
        cfg["output"]["save_every"] = 3
        ak.train(cfg)
        ak.train(cfg, resume=True)

    cfg["optim"]["max_steps"] = 4  # the final budget would come after the run's end
    (tmp_path / "short.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(ak.ConfigError, match="total_step"):
        ak.train(str(tmp_path / "short.yaml"))


def test_summary_counts_the_triplets():
    model = ak.attach(tiny_llama(), ak.AdaLoRAConfig(init_r=3, total_step=5, target_r=1, targets=["q_proj"]))
    s = ak.summary(model)
    assert s.rows == (("default", "adalora", 2 * (3 * 32 + 3 + 32 * 3), 2 * (3 * 32 + 3 + 32 * 3)),)
    assert "adalora" in str(s)


@pytest.mark.parametrize(
    "fields, match",
    [
        (dict(tinit=5, tfinal=5, total_step=10), "tinit"),
        (dict(total_step=None), "total_step is required"),
        (dict(total_step=0), "total_step"),
        (dict(target_r=5, init_r=4), "target_r"),
        (dict(beta1=1.0), "beta1"),
        (dict(orth_reg_weight=-0.1), "orth_reg_weight"),
        (dict(dropout=1.0), "dropout"),
        (dict(deltaT=0), "deltaT"),
        (dict(rank_pattern={"model.layers.0.self_attn.q_proj": [True]}), "rank_pattern"),
        (dict(init="pissa"), "init"),
        (dict(rank=4), "unknown field"),
    ],
)
def test_bad_configs_raise_config_error(fields, match):
    with pytest.raises(ak.ConfigError, match=match):
        ak.AdaLoRAConfig(**{**SCHEDULE, **fields})


def test_unsupported_modules_and_file_options_are_refused():
    from adapterkit.methods.adalora.files import config_from_file

    with pytest.raises(ak.UnsupportedModuleError, match="AdaLoRA"):
        ak.attach(TinyCNN(), ak.AdaLoRAConfig(total_step=5, targets=["conv"]))
    with pytest.raises(ak.ConfigError, match="use_dora"):
        config_from_file({"peft_type": "ADALORA", "total_step": 5, "use_dora": True})
    with pytest.raises(ak.ConfigError, match="ADALORA"):
        config_from_file({"peft_type": "ADALORA", "total_step": 5, "tinit": 5})


def test_allocator_misuse_and_sharded_runs_are_refused(monkeypatch):
    from adapterkit.training.adaptive import hooks_for

    model = ak.attach(tiny_llama(), _config(targets=["q_proj"]))
    with pytest.raises(ak.InputError, match="no gradient"):
        ak.RankAllocator(model).step(model, 0)
    other = ak.attach(tiny_llama(), ak.LoRAConfig(rank=2))
    with pytest.raises(ak.ConfigError, match="AdaLoRA"):
        ak.RankAllocator(other)
    assert hooks_for(other, 10) is None
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    with pytest.raises(ak.ConfigError, match="FSDP"):
        hooks_for(model, 10)


def test_rank_pattern_round_trips_and_a_quantized_base_merges():
    cfg = ak.AdaLoRAConfig(**SCHEDULE, rank_pattern={"b.q": [True, False, False, True], "a.v": [False] * 4})
    again = ak.AdaLoRAConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg and hash(again) == hash(cfg) and (cfg.rank("b.q"), cfg.rank("a.v"), cfg.rank("c")) == (2, 0, 4)
    model = ak.attach(ak.quantize(tiny_llama(hidden_size=64, intermediate_size=128), bits=4), _config())
    with torch.no_grad():
        want = model(input_ids=tokens()).logits
        torch.testing.assert_close(ak.merge(model)(input_ids=tokens()).logits, want, atol=1e-5, rtol=1e-5)


def test_the_example_config_reads():
    from pathlib import Path

    from adapterkit.training.config import TrainConfig

    path = Path(__file__).resolve().parents[2] / "examples" / "configs" / "smollm2_adalora.yaml"
    config = TrainConfig.from_yaml(path)
    assert isinstance(config.adapter, ak.AdaLoRAConfig) and config.adapter.total_step == config.optim.max_steps

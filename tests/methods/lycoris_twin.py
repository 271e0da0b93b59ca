"""The same model with the same LoHa / LoKr weights in adapterkit and PEFT, and the checks both test
files run on them: forward and gradients, training-mode dropout, files both ways, merging."""

from __future__ import annotations

import copy

import torch

import adapterkit as ak
from adapterkit.inject import adapter_layers
from tests.checks import assert_close_scaled
from tests.models import TinyCNN, tiny_llama, tokens


def image_inputs() -> tuple:
    gen = torch.Generator().manual_seed(4)
    return torch.randn(2, 3, 4, 4, generator=gen), torch.tensor([3, 5])


def run(model, kind: str):
    """The model's output on fixed inputs (``kind`` "cnn": TinyCNN's image and ids; else logits)."""
    return model(*image_inputs()) if kind == "cnn" else model(input_ids=tokens()).logits


MODELS = {"llama": tiny_llama, "cnn": TinyCNN}


def twins(make, ours_cfg, peft_cfg, prefix: str):
    """(base, adapterkit model, PEFT model, [(our parameter, PEFT's)]) with equal adapter weights."""
    import peft

    base = make()
    ours = ak.attach(copy.deepcopy(base), ours_cfg)
    theirs = peft.get_peft_model(copy.deepcopy(base), peft_cfg)
    inner, pairs = theirs.base_model.model, {}
    with torch.no_grad():
        for name, layer in adapter_layers(ours):
            peft_layer = inner.get_submodule(name)
            for leaf, mine in layer.adapters["default"].named_parameters():
                theirs_p = getattr(peft_layer, prefix + leaf)["default"]
                theirs_p.copy_(mine)
                pairs[f"{name}.{leaf}"] = (mine, theirs_p)
    n_peft = sum(1 for n, p in theirs.named_parameters() if p.requires_grad and prefix in n)
    assert pairs and n_peft == len(pairs)  # every PEFT tensor has its twin
    return base, ours, theirs, pairs


def check_forward_and_gradients(kind, ours, theirs, pairs, skip: tuple = ()) -> None:
    """Outputs and every adapter gradient equal PEFT's, except for tensors whose name ends in one of
    ``skip`` (where PEFT's gradient is known to be wrong; those are checked another way)."""
    out, expected = run(ours, kind), run(theirs, kind)
    with ak.disabled(ours):
        assert not torch.allclose(run(ours, kind), expected, atol=1e-3)  # the adapters matter
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)
    out.pow(2).mean().backward()
    expected.pow(2).mean().backward()
    for name, (mine, theirs_p) in pairs.items():
        if name.endswith(skip):
            continue
        torch.testing.assert_close(mine.grad, theirs_p.grad, atol=1e-5, rtol=1e-4)


def check_training_dropout(kind, ours, theirs) -> None:
    """In training, rank and module dropout draw the same random numbers as PEFT's: same outputs."""
    ours.train(), theirs.train()
    for seed in range(3):
        torch.manual_seed(seed)
        out = run(ours, kind)
        torch.manual_seed(seed)
        torch.testing.assert_close(out, run(theirs, kind), atol=1e-5, rtol=0)


def check_peft_files_load(kind, base, theirs, folder) -> None:
    theirs.eval().save_pretrained(folder)
    ours = ak.load_adapter(copy.deepcopy(base), folder)
    with torch.no_grad():
        torch.testing.assert_close(run(ours, kind), run(theirs, kind), atol=1e-5, rtol=0)


def check_files_load_in_peft(kind, base, ours, folder) -> None:
    import peft

    ak.save_adapter(ours.eval(), folder)
    theirs = peft.PeftModel.from_pretrained(copy.deepcopy(base), folder).eval()
    with torch.no_grad():
        torch.testing.assert_close(run(theirs, kind), run(ours, kind), atol=1e-5, rtol=0)


def check_merges(kind, ours, theirs) -> None:
    """merge_adapter / unmerge_adapter keep the output and restore W; ak.merge equals PEFT's merge."""
    ours.eval(), theirs.eval()
    with torch.no_grad():
        out = run(ours, kind)
        before = {k: v.clone() for k, v in ours.state_dict().items()}
        ak.merge_adapter(ours)
        torch.testing.assert_close(run(ours, kind), out, atol=1e-5, rtol=0)
        ak.unmerge_adapter(ours)
        assert all(torch.allclose(v, before[k], atol=1e-6) for k, v in ours.state_dict().items())
        merged = ak.merge(ours)
        assert not any(isinstance(m, ak.AdapterLayer) for m in merged.modules())
        torch.testing.assert_close(run(merged, kind), out, atol=1e-5, rtol=0)
        torch.testing.assert_close(run(theirs.merge_and_unload(), kind), out, atol=1e-5, rtol=0)


def check_tools(config, peft_type: str, folder) -> None:
    """ak.summary shows the method, ``adapterkit inspect`` reads its files, ``adapterkit train`` YAML
    names it."""
    from adapterkit.commands.inspect import describe
    from adapterkit.training.config import build_adapter

    model = ak.attach(tiny_llama(), config)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert ak.summary(model).rows == (("default", config.method, trainable, trainable),)
    assert config.method in str(ak.summary(model))
    ak.save_adapter(model, folder)
    info = describe(folder, "default")
    assert (info["method"], info["peft_type"], info["parameters"]) == (config.method, peft_type, trainable)
    assert not info["vllm"]["loads"] and "merge it into the model" in info["vllm"]["summary"]
    assert build_adapter({"method": config.method, "rank": 4, "targets": ["q_proj"]}) == type(config)(
        rank=4, targets=("q_proj",)
    )


def check_refused_file_options(config, folder) -> None:
    """Per-module ranks (PEFT's rank_pattern) are refused on load, naming the key."""
    import json

    import pytest

    model = ak.attach(tiny_llama(), config)
    ak.save_adapter(model, folder)
    path = folder / "adapter_config.json"
    data = json.loads(path.read_text())
    path.write_text(json.dumps({**data, "rank_pattern": {"q_proj": 2}}))
    with pytest.raises(ak.ConfigError, match="rank_pattern"):
        ak.load_adapter(tiny_llama(), folder)
    path.write_text(json.dumps({**data, "r": 0}))
    with pytest.raises(ak.ConfigError, match="file key 'r'"):
        ak.load_adapter(tiny_llama(), folder)


@torch.no_grad()
def _perturb(model) -> None:
    gen = torch.Generator().manual_seed(7)
    for p in model.parameters():
        if p.requires_grad:
            p.add_(torch.randn(p.shape, generator=gen) * 0.3)


def check_sequence_classification(ours_cfg, peft_cfg, folder) -> None:
    """A BERT classifier (PEFT's SEQ_CLS, the head trained as modules_to_save), files both ways."""
    import peft

    from tests.models import tiny_bert

    def logits(model):
        with torch.no_grad():
            return model(input_ids=tokens()).logits

    theirs = peft.get_peft_model(tiny_bert(), peft_cfg).eval()
    _perturb(theirs)
    theirs.save_pretrained(folder / "peft")
    torch.testing.assert_close(logits(ak.load_adapter(tiny_bert(), folder / "peft")), logits(theirs), atol=1e-5, rtol=0)
    ours = ak.attach(tiny_bert(), ours_cfg)
    _perturb(ours)
    ak.save_adapter(ours, folder / "ours")
    loaded = peft.PeftModel.from_pretrained(tiny_bert(), folder / "ours").eval()
    assert type(loaded).__name__ == "PeftModelForSequenceClassification"
    torch.testing.assert_close(logits(loaded), logits(ours), atol=1e-5, rtol=0)


def check_quantized_base(config) -> None:
    """On a 4-bit base: the update adds to the dequantized layer's output; ak.merge exports dense
    layers with the update in; merge_adapter is refused with the model unchanged."""
    model = ak.attach(ak.quantize(tiny_llama(hidden_size=64, intermediate_size=128), bits=4), config)
    _perturb(model)
    with torch.no_grad():
        expected = run(model, "llama")
        import pytest

        with pytest.raises(ak.MergeError, match="4-bit"):
            ak.merge_adapter(model)
        torch.testing.assert_close(run(model, "llama"), expected, atol=0, rtol=0)
        merged = ak.merge(model)
        assert type(merged.model.layers[0].self_attn.q_proj) is torch.nn.Linear
        torch.testing.assert_close(run(merged, "llama"), expected, atol=1e-5, rtol=1e-5)


def check_two_active(config) -> None:
    """Two active adapters' updates add up, in a layer's forward and in both merges."""
    model = ak.attach(tiny_llama(), config, name="a")
    ak.attach(model, config, name="b")
    _perturb(model)
    ak.set_active(model, ["a", "b"])
    layer = model.model.layers[0].mlp.up_proj
    x = torch.randn(3, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        base = layer.innermost()
        expected = base(x) + layer.adapters["a"](x, base) + layer.adapters["b"](x, base)
        torch.testing.assert_close(layer(x), expected, atol=1e-6, rtol=0)
        out = run(model, "llama")
        ak.merge_adapter(model)
        torch.testing.assert_close(run(model, "llama"), out, atol=1e-5, rtol=0)
        ak.unmerge_adapter(model)
        torch.testing.assert_close(run(ak.merge(model), "llama"), out, atol=1e-5, rtol=0)


def check_trains_from_yaml(method: str, folder) -> None:
    """``adapterkit train`` YAML with ``adapter: {method: ...}``: the loss falls, and PEFT loads the
    saved adapter with the trained model's outputs."""
    import peft
    from transformers import AutoModelForCausalLM

    from tests.training.helpers import memorise_records, tiny_folder, write_jsonl

    model_dir = tiny_folder(folder / "model")
    data = write_jsonl(folder / "train.jsonl", memorise_records(8))
    (folder / "run.yaml").write_text(
        f"model: {{name: {model_dir}}}\nadapter: {{method: {method}, rank: 4, alpha: 8, init: random}}\n"
        f"data: {{train: {data}, eval: {data}}}\n"
        "optim: {lr: 0.01, batch_size: 4, max_steps: 8, schedule: constant, seed: 0}\n"
        f"eval: {{every: 0}}\noutput: {{dir: {folder / 'out'}, progress: false}}\n"
    )
    result = ak.train(str(folder / "run.yaml"))
    assert result.last_eval["loss"] < result.first_eval["loss"]
    ids = torch.randint(3, 99, (2, 11), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = result.model.eval()(input_ids=ids).logits
        theirs = peft.PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model_dir), str(folder / "out"))
        # this model (initializer_range 0.5) has large logits: the tolerance scales with them
        assert_close_scaled(theirs.eval()(input_ids=ids).logits, ours)

"""LoRA initialisations that read the base weight (PiSSA, OLoRA, LoftQ) against PEFT 0.21:
the same A, B and rewritten base for the same weights, then logits, gradients, files both ways."""

import copy
import inspect

import pytest
import torch

import adapterkit as ak
from adapterkit.inject import adapter_layers
from tests.models import tiny_gpt2, tiny_llama, tokens

CASES = {
    "pissa-llama": (tiny_llama, dict(init="pissa", targets="all-linear")),
    "pissa-patterns-llama": (
        tiny_llama,
        dict(init="pissa", targets="all-linear", rank_pattern={"q_proj": 2}, alpha_pattern={"down_proj": 3}),
    ),
    "pissa-gpt2": (tiny_gpt2, dict(init="pissa", targets="all-linear")),
    "olora-llama": (tiny_llama, dict(init="olora", targets="all-linear")),
    "olora-rslora-llama": (tiny_llama, dict(init="olora", targets=["q_proj", "up_proj"], rslora=True)),
}


def _peft_config(options):
    from peft import LoraConfig

    targets = options["targets"]
    return LoraConfig(
        r=4,
        lora_alpha=8,
        init_lora_weights=options["init"],
        use_rslora=options.get("rslora", False),
        target_modules=targets if isinstance(targets, str) else list(targets),
        rank_pattern=options.get("rank_pattern", {}),
        alpha_pattern=options.get("alpha_pattern", {}),
        fan_in_fan_out=options.get("fan_in_fan_out", False),
    )


def _twins(case):
    from peft import get_peft_model

    factory, options = CASES[case]
    ours = ak.attach(factory(), ak.LoRAConfig(rank=4, alpha=8, **options))
    extra = {"fan_in_fan_out": True} if factory is tiny_gpt2 else {}
    theirs = get_peft_model(factory(), _peft_config({**options, **extra}))
    return ours, theirs


def _pairs(ours, theirs):
    """(adapterkit LoRA, its PEFT layer) for every adapted module."""
    inner = theirs.base_model.model
    return [(layer.adapters["default"], inner.get_submodule(name)) for name, layer in adapter_layers(ours)]


def _logits(model):
    return model(input_ids=tokens()).logits


@pytest.mark.parametrize("case", CASES)
def test_same_factors_and_residual_as_peft(case):
    ours, theirs = _twins(case)
    for lora, layer in _pairs(ours, theirs):
        torch.testing.assert_close(lora.a, layer.lora_A["default"].weight.to(lora.a.dtype), atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(lora.b, layer.lora_B["default"].weight.to(lora.b.dtype), atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(lora.scale, layer.scaling["default"])
    for (name, mine), (_, peft) in zip(ours.named_parameters(), theirs.base_model.model.named_parameters()):
        if not mine.requires_grad:  # the rewritten (residual) base weights
            torch.testing.assert_close(mine, peft, atol=1e-5, rtol=1e-4, msg=name)
    with torch.no_grad():  # the model starts unchanged, in both
        base = CASES[case][0]()
        torch.testing.assert_close(_logits(ours), _logits(base), atol=1e-5, rtol=0)
        torch.testing.assert_close(_logits(theirs), _logits(base), atol=1e-5, rtol=0)


@pytest.mark.parametrize("case", CASES)
def test_trained_logits_gradients_files_merge(case, tmp_path):
    from peft import PeftModel

    factory = CASES[case][0]
    ours, theirs = _twins(case)
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for lora, layer in _pairs(ours, theirs):  # the same trained factors in both
            lora.a.add_(torch.randn(lora.a.shape, generator=gen) * 0.1)
            lora.b.add_(torch.randn(lora.b.shape, generator=gen) * 0.1)
            layer.lora_A["default"].weight.copy_(lora.a)
            layer.lora_B["default"].weight.copy_(lora.b)
    torch.testing.assert_close(_logits(ours), _logits(theirs), atol=1e-5, rtol=0)
    _logits(ours).square().mean().backward()
    _logits(theirs).square().mean().backward()
    for lora, layer in _pairs(ours, theirs):
        torch.testing.assert_close(lora.a.grad, layer.lora_A["default"].weight.grad, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(lora.b.grad, layer.lora_B["default"].weight.grad, atol=1e-5, rtol=1e-4)
    with torch.no_grad():
        want = _logits(ours)
        # files record the init, which runs again on the original base when loaded (PEFT's behaviour)
        ak.save_adapter(ours, tmp_path / "ak")
        peft_back = PeftModel.from_pretrained(factory(), tmp_path / "ak")
        torch.testing.assert_close(_logits(peft_back), want, atol=1e-5, rtol=0)
        theirs.save_pretrained(tmp_path / "peft")
        ours_back = ak.load_adapter(factory(), tmp_path / "peft")
        torch.testing.assert_close(_logits(ours_back), want, atol=1e-5, rtol=0)
        merged = ak.merge(copy.deepcopy(ours))
        torch.testing.assert_close(_logits(merged), want, atol=1e-5, rtol=0)


def _llama64():
    return tiny_llama(hidden_size=64, intermediate_size=128)


def _peft_loftq():
    """PEFT's ``loftq_init`` as written, on the CPU (it picks a CUDA / XPU device for its work)."""
    import peft.utils.loftq_utils as loftq_utils

    source = inspect.getsource(loftq_utils.loftq_init)
    source = source.replace('"xpu" if is_xpu_available() else "cuda"', '"cpu"')
    assert '"cpu"' in source, "PEFT's loftq_init changed: update this test's device substitution"
    namespace = dict(vars(loftq_utils))
    exec(source, namespace)
    return namespace["loftq_init"]


@pytest.mark.parametrize("steps", [1, 3])
def test_loftq_same_as_peft_and_quantizes_to_its_codes(steps):
    pytest.importorskip("bitsandbytes")
    peft_loftq = _peft_loftq()
    # rows of 64: bitsandbytes 0.50.2's CPU dequantize_4bit gives wrong values for rows of 32
    # (the same codes and scales as adapterkit's; its error 0.033 against 0.007 on a 32x32 weight)
    original = _llama64()
    ours = ak.attach(
        _llama64(), ak.LoRAConfig(rank=4, alpha=4, init="loftq", loftq_iter=steps, targets=["q_proj", "up_proj"])
    )
    for name, layer in adapter_layers(ours):
        w = original.get_submodule(name).weight
        qweight, a, b = peft_loftq(w, num_bits=4, reduced_rank=4, num_iter=steps)
        lora = layer.adapters["default"]
        torch.testing.assert_close(layer.base.weight, qweight, atol=1e-6, rtol=0)
        torch.testing.assert_close(lora.a, a, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(lora.b, b, atol=1e-5, rtol=1e-4)
        # LoftQ's point: deq(Q) + B A is nearer W than plain NF4 is
        plain = ak.methods.lora.init.nf4_round_trip(w.float())
        assert (w - qweight - b @ a).norm() < (w - plain).norm()
    with torch.no_grad():
        want = _logits(ours)
        # quantizing the LoftQ layers stores exactly LoftQ's codes: the same model
        ak.quantize(ours, bits=4, double_quant=False, skip=["k_proj", "v_proj", "o_proj", "gate_proj", "down_proj"])
        assert type(ours.model.layers[0].self_attn.q_proj.base).__name__ == "QuantLinear"
        torch.testing.assert_close(_logits(ours), want, atol=1e-5, rtol=0)


def test_base_changing_init_refuses_quantized_and_embedding_bases():
    model = ak.quantize(tiny_llama(), bits=4)
    with pytest.raises(ak.UnsupportedModuleError, match="full-precision"):
        ak.attach(model, ak.LoRAConfig(rank=4, init="pissa", targets=["q_proj"]))
    with pytest.raises(ak.UnsupportedModuleError, match="Embedding"):
        ak.attach(tiny_llama(), ak.LoRAConfig(rank=4, init="olora", targets=["embed_tokens"]))


def test_pissa_niter_is_torchs_randomized_svd_like_peft():
    from peft import get_peft_model

    target = ["model.layers.0.self_attn.q_proj"]
    model = tiny_llama()  # (builds under its own seed)
    torch.manual_seed(11)
    ours = ak.attach(model, ak.LoRAConfig(rank=4, alpha=8, init="pissa_niter_2", targets=target))
    theirs = get_peft_model(tiny_llama(), _peft_config(dict(init=False, targets=target)))
    [(lora, layer)] = _pairs(ours, theirs)
    torch.manual_seed(11)
    layer.pissa_init("default", "pissa_niter_2")  # PEFT's own init on the same weight and seed
    torch.testing.assert_close(lora.a, layer.lora_A["default"].weight, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(lora.b, layer.lora_B["default"].weight, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(
        ours.model.layers[0].self_attn.q_proj.base.weight, layer.base_layer.weight, atol=1e-5, rtol=1e-4
    )


def _eva_batches(n=4):
    gen = torch.Generator().manual_seed(7)
    out = []
    for _ in range(n):
        ids = torch.randint(0, 97, (3, 12), generator=gen)
        mask = torch.ones_like(ids)
        mask[0, :3] = 0
        labels = ids.clone()
        labels[1, :2] = -100
        out.append({"input_ids": ids, "attention_mask": mask, "labels": labels})
    return out


# q / k / v see the same inputs (one shared PCA); whitening only where no layers share one (see eva.py)
EVA_CASES = [
    (dict(tau=0.9), ("q_proj", "k_proj", "v_proj", "down_proj")),
    (dict(rho=1.0, whiten=True, tau=0.9), ("q_proj", "o_proj", "down_proj")),
    (dict(adjust_scaling=False, tau=0.9), ("q_proj", "k_proj", "v_proj", "up_proj", "down_proj")),
]


@pytest.mark.parametrize("options, targets", EVA_CASES)
def test_eva_same_as_peft(options, targets, tmp_path):
    from peft import EvaConfig, LoraConfig, PeftModel, get_peft_model
    from peft.tuners.lora import initialize_lora_eva_weights

    cfg = ak.LoRAConfig(rank=4, alpha=8, init="eva", targets=targets, rank_pattern={"down_proj": 2})
    ours = ak.attach(tiny_llama(), cfg)
    ak.init_eva(ours, _eva_batches(), **options)
    theirs = get_peft_model(
        tiny_llama(),
        LoraConfig(
            r=4,
            lora_alpha=8,
            init_lora_weights="eva",
            target_modules=list(targets),
            rank_pattern={"down_proj": 2},
            eva_config=EvaConfig(
                rho=options.get("rho", 2.0),
                whiten=options.get("whiten", False),
                tau=options["tau"],
                adjust_scaling_factors=options.get("adjust_scaling", True),
            ),
        ),
    )
    initialize_lora_eva_weights(theirs, dataloader=_eva_batches(), show_progress_bar=False)
    inner = theirs.base_model.model
    ours_layers = {name: layer.adapters["default"] for name, layer in adapter_layers(ours)}
    peft_layers = {n: m for n, m in inner.named_modules() if hasattr(m, "lora_A") and "default" in m.lora_A}
    assert set(ours_layers) == set(peft_layers)  # the same layers kept (rank > 0)
    for name, lora in ours_layers.items():
        layer = peft_layers[name]
        assert lora.rank == layer.r["default"] and lora.scale == pytest.approx(layer.scaling["default"])
        torch.testing.assert_close(lora.a, layer.lora_A["default"].weight, atol=1e-5, rtol=1e-4)
        assert not lora.b.any()
    config = ak.adapter_config(ours, "default")
    peft_config = theirs.peft_config["default"]
    assert dict(config.rank_pattern) == peft_config.rank_pattern
    assert dict(config.alpha_pattern) == pytest.approx(peft_config.alpha_pattern)
    # trained: the same logits through the files, both ways
    gen = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for lora in ours_layers.values():
            lora.b.add_(torch.randn(lora.b.shape, generator=gen) * 0.1)
        want = _logits(ours)
    ak.save_adapter(ours, tmp_path / "ak")
    with torch.no_grad():
        torch.testing.assert_close(
            _logits(PeftModel.from_pretrained(tiny_llama(), tmp_path / "ak")), want, atol=1e-5, rtol=0
        )
        theirs.save_pretrained(tmp_path / "peft")
        back = ak.load_adapter(tiny_llama(), tmp_path / "peft")
        assert {n: l.adapters["default"].rank for n, l in adapter_layers(back)} == {
            n: l.rank for n, l in ours_layers.items()
        }


def test_eva_refuses_other_inits():
    model = ak.attach(tiny_llama(), ak.LoRAConfig(rank=4))
    with pytest.raises(ak.ConfigError, match="init='eva'"):
        ak.init_eva(model, _eva_batches())


@pytest.mark.parametrize("case", ["pissa-llama", "olora-rslora-llama", "pissa-patterns-llama"])
def test_save_as_lora_matches_peft_conversion(case, tmp_path):
    from peft import PeftModel
    from safetensors.torch import load_file

    factory = CASES[case][0]
    ours, theirs = _twins(case)
    theirs.peft_config["default"].init_lora_weights = True  # PEFT's recipe: the starting adapter, saved as plain
    theirs.save_pretrained(tmp_path / "start")
    theirs.peft_config["default"].init_lora_weights = CASES[case][1]["init"]
    gen = torch.Generator().manual_seed(8)
    with torch.no_grad():
        for lora, layer in _pairs(ours, theirs):
            lora.a.add_(torch.randn(lora.a.shape, generator=gen) * 0.1)
            lora.b.add_(torch.randn(lora.b.shape, generator=gen) * 0.1)
            layer.lora_A["default"].weight.copy_(lora.a)
            layer.lora_B["default"].weight.copy_(lora.b)
        want = _logits(ours)
    ak.save_as_lora(ours, tmp_path / "ours")
    theirs.save_pretrained(tmp_path / "peft", path_initial_model_for_weight_conversion=str(tmp_path / "start"))
    mine, peft = (
        load_file(tmp_path / "ours" / "adapter_model.safetensors"),
        load_file(tmp_path / "peft" / "adapter_model.safetensors"),
    )
    assert set(mine) == set(peft)
    for key in mine:
        torch.testing.assert_close(mine[key], peft[key], atol=1e-6, rtol=0, msg=key)
    with torch.no_grad():  # a plain LoRA of the original base: PEFT and adapterkit load it there
        torch.testing.assert_close(
            _logits(PeftModel.from_pretrained(factory(), tmp_path / "ours")), want, atol=1e-5, rtol=0
        )
        back = ak.load_adapter(factory(), tmp_path / "ours")
        assert ak.adapter_config(back, "default").init == "kaiming"
        torch.testing.assert_close(_logits(back), want, atol=1e-5, rtol=0)

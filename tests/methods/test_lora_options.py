"""LoRA options against PEFT 0.21 as the oracle: rank_pattern / alpha_pattern, bias, lora_bias,
trainable_token_indices. Each case: the same weights in both (through the files, both ways),
logits and gradients equal, merged equals unmerged."""

import copy
import warnings

import pytest
import torch

import adapterkit as ak
from adapterkit.io.state import entries
from tests.models import tiny_bert, tiny_gpt2, tiny_llama, tokens

PATTERNS = dict(rank_pattern={"q_proj": 2, r"layers\.1\.mlp\.down_proj": 6}, alpha_pattern={"v_proj": 3, "o_proj": 5})
CASES = {
    "patterns-llama": (tiny_llama, dict(targets="all-linear", **PATTERNS)),
    "patterns-rslora-gpt2": (
        tiny_gpt2,
        dict(targets="all-linear", rslora=True, rank_pattern={"c_attn": 3}, alpha_pattern={r"h\.1\..*c_proj": 7}),
    ),
    "patterns-bert": (
        tiny_bert,
        dict(
            targets=["query", "value", "dense"],
            rank_pattern={"query": 2},
            alpha_pattern={"value": 9, r"attention\.output\.dense": 2},
        ),
    ),
    "bias-all-gpt2": (tiny_gpt2, dict(targets=["c_attn"], bias="all")),
    "bias-lora-only-bert": (tiny_bert, dict(targets=["query", "value"], bias="lora_only")),
    "lora-bias-gpt2": (tiny_gpt2, dict(targets="all-linear", lora_bias=True)),
    "lora-bias-llama": (tiny_llama, dict(targets=["q_proj", "down_proj"], lora_bias=True, bias="lora_only")),
    "tokens-llama": (tiny_llama, dict(targets=["q_proj"], trainable_token_indices=[1, 5, 7])),
    "tokens-tied-llama": (
        lambda: tiny_llama(tie_word_embeddings=True),
        dict(targets=["q_proj"], trainable_token_indices=[3, 0, 9]),
    ),
    "tokens-tied-gpt2": (tiny_gpt2, dict(targets=["c_attn"], trainable_token_indices={"wte": [2, 4]})),
}


def _ours(case):
    factory, options = CASES[case]
    model = ak.attach(factory(), ak.LoRAConfig(rank=4, alpha=8, init="random", **options))
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():  # move every trainable tensor (base biases, token rows too) off its start
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=gen) * 0.1)
    return model


def _logits(model):
    return model(input_ids=tokens()).logits


def _peft_keys(theirs):
    """{file key: PEFT parameter} of the PEFT model's trainable tensors."""
    return {n.replace(".default", ""): p for n, p in theirs.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("case", CASES)
def test_same_as_peft_through_files(case, tmp_path):
    from peft import PeftModel

    factory = CASES[case][0]
    ours = _ours(case)
    ak.save_adapter(ours, tmp_path / "ak")
    theirs = PeftModel.from_pretrained(factory(), tmp_path / "ak", is_trainable=True)
    torch.testing.assert_close(_logits(ours), _logits(theirs), atol=1e-5, rtol=0)
    # gradients of every trained tensor, matched by file key
    _logits(ours).square().mean().backward()
    _logits(theirs).square().mean().backward()
    mine = {k: t for e in entries(ours, "default")[1] for k, t in e.tensors.items()}
    peft = _peft_keys(theirs)
    assert set(mine) <= set(peft) and all("modules_to_save" in k for k in set(peft) - set(mine))
    for key, tensor in mine.items():
        torch.testing.assert_close(tensor.grad, peft[key].grad, atol=1e-5, rtol=1e-4, msg=key)
    # PEFT saves -> adapterkit loads
    theirs.save_pretrained(tmp_path / "peft")
    back = ak.load_adapter(factory(), tmp_path / "peft")
    with torch.no_grad():
        torch.testing.assert_close(_logits(back), _logits(theirs), atol=1e-5, rtol=0)


@pytest.mark.parametrize("case", CASES)
def test_trainable_count_equals_peft(case):
    from peft import LoraConfig, get_peft_model

    factory, options = CASES[case]
    ours = ak.attach(factory(), ak.LoRAConfig(rank=4, alpha=8, **options))
    targets = options["targets"]
    theirs = get_peft_model(
        factory(),
        LoraConfig(
            r=4,
            lora_alpha=8,
            target_modules=targets if isinstance(targets, str) else list(targets),
            use_rslora=options.get("rslora", False),
            rank_pattern=options.get("rank_pattern", {}),
            alpha_pattern=options.get("alpha_pattern", {}),
            bias=options.get("bias", "none"),
            lora_bias=options.get("lora_bias", False),
            trainable_token_indices=options.get("trainable_token_indices"),
        ),
    )
    assert ak.summary(ours).trainable == theirs.get_nb_trainable_parameters()[0]


@pytest.mark.parametrize("case", CASES)
def test_merged_equals_unmerged(case):
    ours = _ours(case).eval()
    with torch.no_grad():
        want = _logits(ours)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            merged = ak.merge(copy.deepcopy(ours))
        torch.testing.assert_close(_logits(merged), want, atol=1e-5, rtol=0)


def test_pattern_picks_rank_and_scale_like_peft():
    from adapterkit.methods.lora.patterns import rank_alpha

    cfg = ak.LoRAConfig(
        rank=8, alpha=16, rank_pattern={"q_proj": 2, r"layers\.[01]\.self_attn\.k_proj": 3}, alpha_pattern={"proj": 1}
    )
    assert rank_alpha(cfg, "model.layers.0.self_attn.q_proj") == (2, 16)
    assert rank_alpha(cfg, "model.layers.1.self_attn.k_proj") == (3, 16)
    assert rank_alpha(cfg, "model.layers.1.mlp.up_proj") == (8, 16)  # "proj" must match a whole dotted suffix
    model = ak.attach(tiny_llama(), cfg)
    lora = model.model.layers[0].self_attn.q_proj.adapters["default"]
    assert (lora.rank, lora.scale, tuple(lora.a.shape)) == (2, 8.0, (2, 32))


def test_unmatched_pattern_warns():
    with pytest.warns(RuntimeWarning, match="match none"):
        ak.attach(tiny_llama(), ak.LoRAConfig(rank=4, targets=["q_proj"], rank_pattern={"nothing_here": 2}))


@pytest.mark.parametrize(
    "bad",
    [
        dict(rank_pattern={"q_proj": 0}),
        dict(rank_pattern={"(": 2}),
        dict(rank_pattern=[1, 2]),
        dict(alpha_pattern={"q": -1.0}),
        dict(bias="some"),
        dict(lora_bias=1),
        dict(lora_bias=True, dora=True),
        dict(trainable_token_indices=[]),
        dict(trainable_token_indices=[1, 1]),
        dict(trainable_token_indices=[-1]),
        dict(trainable_token_indices={"embed_tokens": "1"}),
        dict(init="pissa_niter_x"),
        dict(loftq_iter=0),
    ],
)
def test_bad_options_raise(bad):
    with pytest.raises(ak.ConfigError):
        ak.LoRAConfig(**bad)


def test_config_round_trip_and_file_keys():
    import json

    from adapterkit.methods.lora.files import config_from_file

    cfg = ak.LoRAConfig(
        rank=4,
        targets=["q_proj", "v_proj"],
        bias="lora_only",
        lora_bias=True,
        trainable_token_indices={"embed_tokens": [1, 2]},
        **{k: v for k, v in PATTERNS.items()},
    )
    assert ak.LoRAConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    model = ak.attach(tiny_llama(), cfg)
    data = ak.io.save.adapter_json(model, "default")
    assert data["rank_pattern"] == PATTERNS["rank_pattern"] and data["bias"] == "lora_only"
    assert data["trainable_token_indices"] == {"embed_tokens": [1, 2]} and data["lora_bias"] is True
    assert config_from_file(data) == cfg


def test_lora_bias_on_embedding_refused():
    with pytest.raises(ak.UnsupportedModuleError, match="lora_bias"):
        ak.attach(tiny_llama(), ak.LoRAConfig(targets=["embed_tokens"], lora_bias=True))


def test_token_rows_only_train_and_base_untouched():
    model = _ours("tokens-tied-llama")
    before = model.get_input_embeddings().innermost().weight.clone()
    _logits(model).sum().backward()
    assert not model.get_input_embeddings().innermost().weight.requires_grad
    torch.testing.assert_close(model.get_input_embeddings().innermost().weight, before, atol=0, rtol=0)
    with ak.disabled(model), torch.no_grad():
        ak.detach(copy.deepcopy(model))


def test_per_module_scale_survives_set_scale_and_calls_that_need_one_rank_refuse():
    model = ak.attach(
        tiny_llama(), ak.LoRAConfig(rank=4, alpha=8, targets=["q_proj", "v_proj"], alpha_pattern={"v_proj": 2})
    )
    v = model.model.layers[0].self_attn.v_proj.adapters["default"]
    assert v.scale == 0.5
    ak.set_scale(model, "default", 3.0)
    assert v.scale == 1.5
    ak.set_scale(model, "default", 1.0)
    assert v.scale == 0.5 and model.model.layers[0].self_attn.q_proj.adapters["default"].scale == 2.0
    with pytest.raises(ak.ConfigError, match="alpha_pattern"):
        ak.resize_rank(model, "default", 2)
    with pytest.raises(ak.ConfigError, match="plain|per-module"):
        ak.attach(model, ak.LoRAConfig(rank=4, targets=["q_proj"]), name="other")
        ak.combine(model, ["default", "other"], name="both")


def test_layer_replication_same_as_peft(tmp_path):
    from peft import LoraConfig, PeftModel, get_peft_model

    ranges = [[0, 2], [1, 2]]  # blocks 0, 1, 1: the last two share their weights
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # each copy's targets share weights with the other copy's
        ours = ak.attach(
            tiny_llama(),
            ak.LoRAConfig(rank=4, alpha=8, init="random", targets=["q_proj", "v_proj"], layer_replication=ranges),
        )
    blocks = ours.model.layers
    assert len(blocks) == 3 and ours.config.num_hidden_layers == 3
    assert blocks[1].self_attn.q_proj.base.weight is blocks[2].self_attn.q_proj.base.weight
    assert blocks[1].self_attn.q_proj.adapters["default"].a is not blocks[2].self_attn.q_proj.adapters["default"].a
    theirs = get_peft_model(
        tiny_llama(),
        LoraConfig(
            r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], layer_replication=ranges, init_lora_weights=False
        ),
    )
    assert ak.summary(ours).trainable == theirs.get_nb_trainable_parameters()[0]
    ak.save_adapter(ours, tmp_path / "ak")
    peft_back = PeftModel.from_pretrained(tiny_llama(), tmp_path / "ak", is_trainable=True)
    torch.testing.assert_close(_logits(ours), _logits(peft_back), atol=1e-5, rtol=0)
    _logits(ours).square().mean().backward()
    _logits(peft_back).square().mean().backward()
    peft = _peft_keys(peft_back)
    for key, tensor in {k: t for e in entries(ours, "default")[1] for k, t in e.tensors.items()}.items():
        torch.testing.assert_close(tensor.grad, peft[key].grad, atol=1e-5, rtol=1e-4, msg=key)
    peft_back.save_pretrained(tmp_path / "peft")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        back = ak.load_adapter(tiny_llama(), tmp_path / "peft")
        with torch.no_grad():
            torch.testing.assert_close(_logits(back), _logits(peft_back), atol=1e-5, rtol=0)
            merged = ak.merge(copy.deepcopy(ours))
            torch.testing.assert_close(_logits(merged), _logits(ours), atol=1e-5, rtol=0)
    with pytest.raises(ak.ConfigError, match="layer_replication"):
        ak.LoRAConfig(layer_replication=[[2, 1]])


def test_layer_replication_failing_attach_changes_nothing():
    model = tiny_llama()
    blocks = model.model.layers
    with pytest.raises(ak.TargetError):
        ak.attach(model, ak.LoRAConfig(targets=["no_such_proj"], layer_replication=[[0, 2], [0, 1]]))
    assert model.model.layers is blocks and model.config.num_hidden_layers == 2


def test_lora_bias_on_convolutions_same_as_peft(tmp_path):
    from peft import PeftModel

    from tests.models import TinyCNN

    gen = torch.Generator().manual_seed(4)
    inputs = (torch.randn(2, 3, 4, 4, generator=gen), torch.tensor([1, 5]))
    ours = ak.attach(
        TinyCNN(), ak.LoRAConfig(rank=2, targets=["conv", "fc"], init="random", lora_bias=True, bias="lora_only")
    )
    with torch.no_grad():
        for p in ours.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=gen) * 0.1)
    ak.save_adapter(ours, tmp_path)
    theirs = PeftModel.from_pretrained(TinyCNN(), tmp_path, is_trainable=True)
    torch.testing.assert_close(ours(*inputs), theirs(*inputs), atol=1e-5, rtol=0)
    ours(*inputs).square().sum().backward()
    theirs(*inputs).square().sum().backward()
    peft = _peft_keys(theirs)
    for key, tensor in {k: t for e in entries(ours, "default")[1] for k, t in e.tensors.items()}.items():
        torch.testing.assert_close(tensor.grad, peft[key].grad, atol=1e-5, rtol=1e-4, msg=key)
    with torch.no_grad():
        torch.testing.assert_close(ak.merge(copy.deepcopy(ours))(*inputs), ours(*inputs), atol=1e-5, rtol=0)


def test_loaded_adapter_freezes_its_base_biases_unless_trainable(tmp_path):
    ak.save_adapter(_ours("bias-all-gpt2"), tmp_path)
    frozen = ak.load_adapter(tiny_gpt2(), tmp_path)
    assert not any(p.requires_grad for p in frozen.parameters())
    trained = ak.load_adapter(tiny_gpt2(), tmp_path, trainable=True)
    assert (
        trained.transformer.h[0].ln_1.bias.requires_grad
        and trained.transformer.h[0].attn.c_attn.base.bias.requires_grad
    )
    assert not trained.transformer.h[0].ln_1.weight.requires_grad

"""LoKr against PEFT 0.21: forward and gradients with the same weights, training-mode dropout, files
both ways, merging; the factorization PEFT uses; bad configs."""

from __future__ import annotations

import pytest

import adapterkit as ak
from tests.methods import lycoris_twin as twin
from tests.models import tiny_llama

peft = pytest.importorskip("peft")

# id -> (model kind, adapterkit config, PEFT config): full and rank-r w1 / w2, Conv2d three ways
CASES = {
    "llama-all-linear": (
        "llama",
        ak.LoKrConfig(rank=4, alpha=6, init="random"),
        dict(r=4, alpha=6, target_modules="all-linear"),
    ),
    "llama-decompose-both": (
        "llama",
        ak.LoKrConfig(
            rank=1,
            alpha=3,
            decompose_both=True,
            decompose_factor=4,
            targets=["q_proj", "down_proj"],
            layers=[1],
            init="random",
        ),
        dict(
            r=1,
            alpha=3,
            decompose_both=True,
            decompose_factor=4,
            target_modules=["q_proj", "down_proj"],
            layers_to_transform=[1],
        ),
    ),
    "cnn-full": (
        "cnn",
        ak.LoKrConfig(rank=4, alpha=4, targets=["conv", "fc"], init="random"),
        dict(r=4, alpha=4, target_modules=["conv", "fc"]),
    ),
    "cnn-low-rank": (
        "cnn",
        ak.LoKrConfig(rank=1, alpha=2, targets=["conv", "fc"], init="random"),
        dict(r=1, alpha=2, target_modules=["conv", "fc"]),
    ),
    "cnn-effective": (
        "cnn",
        ak.LoKrConfig(rank=1, alpha=2, targets=["conv", "fc"], use_effective_conv2d=True, init="random"),
        dict(r=1, alpha=2, target_modules=["conv", "fc"], use_effective_conv2d=True),
    ),
}
cases = pytest.mark.parametrize("case", list(CASES))


def _twins(case):
    kind, ours_cfg, peft_kwargs = CASES[case]
    peft_cfg = peft.LoKrConfig(init_weights=False, **peft_kwargs)
    return (kind, *twin.twins(twin.MODELS[kind], ours_cfg, peft_cfg, "lokr_"))


@cases
def test_forward_and_gradients_equal_peft(case):
    kind, _, ours, theirs, pairs = _twins(case)
    twin.check_forward_and_gradients(kind, ours, theirs, pairs)


def test_the_factors_have_peft_shapes():
    from peft.tuners.lokr.layer import factorization as peft_factorization

    from adapterkit.methods.lokr.layers import factorization

    for n in range(1, 1500):
        for factor in (-1, 1, 2, 3, 4, 16):
            assert factorization(n, factor) == peft_factorization(n, factor)


@pytest.mark.parametrize("rank_dropout_scale", [False, True])
def test_rank_and_module_dropout_equal_peft_in_training(rank_dropout_scale):
    cfg = ak.LoKrConfig(
        rank=4, alpha=6, rank_dropout=0.3, module_dropout=0.2, rank_dropout_scale=rank_dropout_scale, init="random"
    )
    peft_cfg = peft.LoKrConfig(
        r=4,
        alpha=6,
        rank_dropout=0.3,
        module_dropout=0.2,
        target_modules="all-linear",
        rank_dropout_scale=rank_dropout_scale,
        init_weights=False,
    )
    _, ours, theirs, _ = twin.twins(tiny_llama, cfg, peft_cfg, "lokr_")
    twin.check_training_dropout("llama", ours, theirs)


@cases
def test_peft_files_load_with_equal_outputs(case, tmp_path):
    kind, base, _, theirs, _ = _twins(case)
    twin.check_peft_files_load(kind, base, theirs, tmp_path)


@cases
def test_adapterkit_files_load_in_peft(case, tmp_path):
    kind, base, ours, _, _ = _twins(case)
    twin.check_files_load_in_peft(kind, base, ours, tmp_path)


@pytest.mark.parametrize("case", ["llama-decompose-both", "cnn-effective"])
def test_merge_equals_unmerged_and_peft_merge(case):
    kind, _, ours, theirs, _ = _twins(case)
    twin.check_merges(kind, ours, theirs)


@pytest.mark.parametrize("init", ["kaiming", "lycoris"])
def test_starts_unchanged(init):
    model = ak.attach(tiny_llama(), ak.LoKrConfig(init=init, decompose_both=True))
    with ak.disabled(model):
        base = twin.run(model, "llama")
    assert (twin.run(model, "llama") - base).abs().max() == 0


def test_shows_in_the_tools(tmp_path):
    twin.check_tools(ak.LoKrConfig(rank=4), "LOKR", tmp_path / "a")
    twin.check_refused_file_options(ak.LoKrConfig(rank=4), tmp_path / "b")


def test_sequence_classification_files_both_ways(tmp_path):
    twin.check_sequence_classification(
        ak.LoKrConfig(rank=2, targets=["query", "value"], train_modules=["classifier"]),
        peft.LoKrConfig(task_type="SEQ_CLS", r=2, target_modules=["query", "value"]),
        tmp_path,
    )


def test_trains_from_a_yaml_config(tmp_path):
    twin.check_trains_from_yaml("lokr", tmp_path)


def test_two_active_adapters_add_up():
    twin.check_two_active(ak.LoKrConfig(rank=2, decompose_both=True))


def test_on_a_4bit_base_merging_dequantizes():
    twin.check_quantized_base(ak.LoKrConfig(rank=4))


@pytest.mark.parametrize(
    "fields,match",
    [
        (dict(rank=0), "rank"),
        (dict(alpha=0), "alpha"),
        (dict(rank_dropout=-0.1), "rank_dropout"),
        (dict(module_dropout=1), "module_dropout"),
        (dict(init="zeros"), "init"),
        (dict(targets=""), "targets"),
        (dict(decompose_both=1), "decompose_both"),
        (dict(decompose_factor=0), "decompose_factor"),
        (dict(decompose_factor=2.0), "decompose_factor"),
        (dict(rank_dropout_scale=None), "rank_dropout_scale"),
        (dict(rank_pattern={}), "unknown field"),
    ],
)
def test_bad_configs_raise_config_error(fields, match):
    with pytest.raises(ak.ConfigError, match=match):
        ak.LoKrConfig(**fields)


def test_unsupported_module_is_refused():
    with pytest.raises(ak.UnsupportedModuleError, match="LoKr adapts"):
        ak.attach(tiny_llama(), ak.LoKrConfig(targets=["embed_tokens"]))

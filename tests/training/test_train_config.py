"""Train configs: typed checks, clear errors naming the key and the valid keys, overrides."""

import pytest

import adapterkit as ak
from adapterkit.errors import ConfigError
from adapterkit.training.config import TrainConfig, apply_overrides

BASE = {"model": {"name": "m"}, "adapter": {"method": "lora", "rank": 4}, "data": {"train": "train.jsonl"}}


def config(**changes):
    data = {k: dict(v) for k, v in BASE.items()}
    for key, value in changes.items():
        section, _, field = key.partition("__")
        data.setdefault(section, {})[field] = value
    return TrainConfig.from_dict(data)


def test_defaults_and_round_trip():
    cfg = config(optim__lr="1e-4", optim__betas=[0.9, 0.95])
    assert cfg.optim.lr == 1e-4 and cfg.optim.betas == (0.9, 0.95)
    assert cfg.adapter == ak.LoRAConfig(rank=4)
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg


def test_unknown_key_names_it_and_lists_valid_keys():
    with pytest.raises(ConfigError) as err:
        config(optim__lrr=1e-4)
    text = str(err.value)
    assert "'lrr'" in text and "'optim'" in text and "did you mean 'lr'" in text
    assert "Valid fields:" in text and "batch_size" in text and "schedule" in text


def test_unknown_section():
    with pytest.raises(ConfigError, match=r"'optimizer'.*did you mean 'optim'.*Valid fields: model"):
        TrainConfig.from_dict(dict(BASE, optimizer={}))


def test_missing_section():
    with pytest.raises(ConfigError, match="section 'data' is missing"):
        TrainConfig.from_dict({"model": {"name": "m"}, "adapter": {"method": "lora"}})


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("optim__lr", "fast", r"optim.lr must be a number; got 'fast'"),
        ("optim__batch_size", 2.5, r"optim.batch_size must be an integer"),
        ("optim__schedule", "cosin", r"optim.schedule must be one of .*did you mean 'cosine'"),
        ("optim__optimizer", "adam", r"optim.optimizer must be one of 'adamw'"),
        ("model__gradient_checkpointing", "yes", r"model.gradient_checkpointing must be true or false"),
        ("data__format", "csv", r"data.format must be one of 'instruction'"),
        ("data__packing", True, r"packing works with format 'text' only"),
        ("eval__metric", "bleu", r"needs eval.generate: true"),
        ("optim__mixed_precision", "fp8", r"optim.mixed_precision must be one of 'no', 'bf16', 'fp16'"),
    ],
)
def test_bad_values(key, value, message):
    with pytest.raises(ConfigError, match=message):
        config(**{key: value})


def test_adapter_errors_name_the_field_and_the_method():
    with pytest.raises(ConfigError, match=r"adapter.*'rnk'.*did you mean 'rank'.*Valid fields"):
        TrainConfig.from_dict(dict(BASE, adapter={"method": "lora", "rnk": 4}))
    with pytest.raises(ConfigError, match=r"adapter.method 'lroa'.*did you mean 'lora'"):
        TrainConfig.from_dict(dict(BASE, adapter={"method": "lroa"}))
    with pytest.raises(ConfigError, match=r"'method' key"):
        TrainConfig.from_dict(dict(BASE, adapter={"rank": 4}))


def test_overrides_read_yaml_values():
    data = apply_overrides(BASE, ("optim.lr=3e-4", "optim.betas=[0.8, 0.9]", "eval.every=5"))
    cfg = TrainConfig.from_dict(data)
    assert cfg.optim.lr == 3e-4 and cfg.optim.betas == (0.8, 0.9) and cfg.eval.every == 5
    assert BASE["optim"] if "optim" in BASE else True  # the input is not changed
    with pytest.raises(ConfigError, match="section.key=value"):
        apply_overrides(BASE, ("lr=3",))


def test_from_yaml_and_replace(tmp_path):
    import yaml

    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(BASE))
    cfg = TrainConfig.from_yaml(path, ("optim.seed=3",))
    assert cfg.optim.seed == 3
    assert cfg.replace({"optim.seed": 4}).optim.seed == 4
    with pytest.raises(ConfigError, match="does not exist"):
        TrainConfig.from_yaml(tmp_path / "missing.yaml")
    path.write_text("model: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        TrainConfig.from_yaml(path)


def test_cli_reports_a_bad_config_in_one_line(tmp_path, capsys):
    from adapterkit.cli import main

    path = tmp_path / "c.yaml"
    path.write_text("model: {name: m}\nadapter: {method: lora}\ndata: {train: t.jsonl}\noptim: {lr: -1}\n")
    assert main(["train", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "optim.lr must be a positive number" in err


def test_fp16_on_a_cpu_is_refused_before_loading_anything(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU has fp16")
    cfg = config(optim__mixed_precision="fp16", model__name=str(tmp_path / "none"))
    with pytest.raises(ConfigError, match="'fp16' needs a GPU"):
        ak.train(cfg)


@pytest.mark.parametrize("name", ["smollm2_format.yaml", "minilm_sentiment.yaml"])
def test_example_configs_parse_and_their_data_reads(name):
    from pathlib import Path

    from adapterkit.training.data import read_records

    root = Path(__file__).resolve().parents[2]
    cfg = TrainConfig.from_yaml(root / "examples" / "configs" / name)
    for path in (cfg.data.train, cfg.data.eval):
        records = read_records(str(root / path), cfg.data.format)
        fields = ("text", "label") if cfg.data.format == "classification" else ("prompt", "response")
        assert len(records) >= 16 and all(f in r for r in records for f in fields)


def test_the_all_options_example_lists_every_key():
    import dataclasses
    from pathlib import Path

    import yaml

    from adapterkit.training.config import SECTIONS

    path = Path(__file__).resolve().parents[2] / "examples" / "configs" / "all_options.yaml"
    data = yaml.safe_load(path.read_text())
    cfg = TrainConfig.from_yaml(path)
    for name, section in SECTIONS.items():
        assert set(data[name]) == {f.name for f in dataclasses.fields(section)}, name
        assert getattr(cfg, name) == section(**{k: getattr(getattr(cfg, name), k) for k in data[name]})
    defaults = TrainConfig.from_dict({"model": {"name": "x"}, "adapter": {"method": "lora"}, "data": {"train": "t"}})
    for name in ("optim", "eval", "output"):  # the listed values are the defaults
        assert getattr(cfg, name) == getattr(defaults, name), name

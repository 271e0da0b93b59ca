"""Every run leaves curves.png (loss and learning rate) in its output folder."""

import json

import adapterkit as ak
from adapterkit.training.plot import read_metrics, smooth
from tests.training.helpers import memorise_records, tiny_folder, write_jsonl

PNG = b"\x89PNG\r\n\x1a\n"


def _config(tmp_path, model, **output):
    data = write_jsonl(tmp_path / "train.jsonl", memorise_records(8))
    return {
        "model": {"name": model},
        "adapter": {"method": "lora", "rank": 2},
        "data": {"train": data, "eval": data},
        "optim": {"lr": 1e-2, "batch_size": 4, "max_steps": 4, "schedule": "linear", "warmup_steps": 2},
        "output": dict({"dir": str(tmp_path / "out"), "progress": False, "log_every": 1}, **output),
    }


def test_a_run_leaves_a_png_of_its_curves(tmp_path):
    model = tiny_folder(tmp_path / "model")
    ak.train(_config(tmp_path, model))
    png = tmp_path / "out" / "curves.png"
    assert png.read_bytes()[:8] == PNG and png.stat().st_size > 0
    logged = [json.loads(x) for x in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    curves = read_metrics(tmp_path / "out")
    assert curves["steps"] == [e["step"] for e in logged if "lr" in e] == [1, 2, 3, 4]
    assert curves["eval_steps"] == [e["step"] for e in logged if "eval_loss" in e]


def test_no_png_when_switched_off(tmp_path):
    model = tiny_folder(tmp_path / "model")
    ak.train(_config(tmp_path, model, plot=False))
    assert (tmp_path / "out" / "adapter_model.safetensors").is_file()
    assert not (tmp_path / "out" / "curves.png").exists()


def test_smooth_is_a_trailing_mean():
    assert smooth([1.0, 3.0, 5.0, 7.0], 2) == [1.0, 2.0, 4.0, 6.0]


def test_cli_full_fine_tune_in_two_stages_leaves_the_model_and_its_curves(tmp_path, capsys):
    import yaml

    from adapterkit.cli import main

    model = tiny_folder(tmp_path / "model")
    cfg = _config(tmp_path, model)
    cfg["adapter"] = None
    cfg["stages"] = [{"train": "head", "steps": 2}, {"train": "all", "steps": 2, "lr": 1e-3}]
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["train", str(path)]) == 0
    out = capsys.readouterr().out
    assert "4 steps" in out and "model saved" in out and "curves.png" in out
    assert (tmp_path / "out" / "curves.png").read_bytes()[:8] == PNG
    assert read_metrics(tmp_path / "out")["stage_starts"] == [2]
    assert (tmp_path / "out" / "config.json").is_file() and not (tmp_path / "out" / "adapter_config.json").exists()

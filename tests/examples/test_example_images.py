"""examples/image_classification: the whole command in tiny settings, and its pieces."""

from __future__ import annotations

import torch
from safetensors.torch import load_file

from examples_util import ROOT, load_example

run = load_example("image_classification/run.py", "example_image_run")
D = run.D


def test_smoke_run_covers_every_backbone_and_method(tmp_path):
    readme = (ROOT / "examples/image_classification/README.md").read_text()
    result = run.main(["--smoke", "--out", str(tmp_path)])
    assert set(result["backbones"]) == set(run.BACKBONES)
    for name, b in result["backbones"].items():
        rows = b["rows"]
        assert {r["method"] for r in rows} == set(run.METHODS)
        assert all(0.0 <= r["accuracy"] <= 1.0 for r in rows)
        assert b["max_merge_gap"] < 1e-4  # ak.merge keeps the LoRA model's logits
        assert (tmp_path / f"{name}_digits0-4.safetensors").is_file()
        lines = b["table"].splitlines()  # methods are columns, k values rows
        assert lines[0] == "| images per class | " + " | ".join(run.METHODS) + " |"
        assert [line.split(" | ")[0] for line in lines[2:]] == ["| 2", "| trainable parameters"]
    assert (tmp_path / "results.json").is_file()
    assert (ROOT / "examples/image_classification/README.md").read_text() == readme  # --smoke writes no README


def _lora_params(model: torch.nn.Module, config) -> int:
    """rank x (fan_in + out) for each targeted Linear / Conv2d: A (r, in, kh, kw), B (out, r, 1, 1)."""
    total = 0
    for name, m in model.named_modules():
        if any(name == t or name.endswith("." + t) for t in config.targets):
            if isinstance(m, torch.nn.Conv2d):
                total += config.rank * (m.in_channels * m.kernel_size[0] * m.kernel_size[1] + m.out_channels)
            else:
                total += config.rank * (m.in_features + m.out_features)
    return total


def test_methods_train_exactly_their_parameters(tmp_path):
    for bb in run.BACKBONES.values():
        torch.manual_seed(0)
        path = tmp_path / f"{bb.name}.safetensors"
        run.save_file(bb.make().state_dict(), str(path))
        checkpoint = load_file(str(path))
        plain = bb.make(classes=5)
        head = sum(p.numel() for n, p in plain.named_parameters() if n.startswith(bb.head + "."))
        everything = sum(p.numel() for p in plain.parameters())
        assert run.trainable(run.build(bb, "scratch", checkpoint, 0)) == everything
        assert run.trainable(run.build(bb, "full", checkpoint, 0)) == everything
        assert run.trainable(run.build(bb, "head", checkpoint, 0)) == head
        lora = run.build(bb, "lora+head", checkpoint, 0)
        assert run.trainable(lora) == head + _lora_params(plain, bb.lora)
        # the pretrained body is loaded; the head is new
        full = run.build(bb, "full", checkpoint, 0)
        for name, value in full.state_dict().items():
            if not name.startswith(bb.head + "."):
                torch.testing.assert_close(value, checkpoint[name])


def test_splits_and_few_shot_draws():
    old_train, old_test, pool, test = D.load()
    assert len(old_train) + len(old_test) + len(pool) + len(test) == 1797
    from sklearn.datasets import load_digits

    target = load_digits().target
    assert len(pool) + len(test) == int((target >= 5).sum())
    assert torch.bincount(test.y).tolist() == [round(int((target == c).sum()) * 0.5) for c in D.NEW_CLASSES]
    shots = D.few_shot(pool, 3, seed=7)
    assert torch.bincount(shots.y).tolist() == [3] * 5
    again = D.few_shot(pool, 3, seed=7)
    torch.testing.assert_close(shots.x, again.x)
    other = D.few_shot(pool, 3, seed=8)
    assert not torch.equal(shots.x, other.x)

"""Transfer on handwritten digits: pretrain on 0-4, fine-tune on 5-9 from k images per class.

    python examples/image_classification/run.py            # the README's tables (a few minutes)
    python examples/image_classification/run.py --smoke    # tiny settings, for the tests

Two backbones, a small CNN and a tiny ViT, each pretrained on digits 0-4 and saved as a
safetensors checkpoint. For each k and seed, from the same k labelled images per class:
- ``scratch``:   the model from random weights, every parameter trained;
- ``head``:      the pretrained model frozen, a new linear head trained;
- ``lora+head``: LoRA on the pretrained model's convolutions (CNN) or patch embedding and
                 attention / MLP linear layers (ViT), plus the new head as a trained module
                 (``train_modules``);
- ``full``:      the pretrained model with a new head, every parameter trained (for reference).
Each LoRA model is then folded back with ``ak.merge`` and must give the same logits.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import digits as D  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from example_report import machine, one_thread, write_results  # noqa: E402
import adapterkit as ak  # noqa: E402

HERE = Path(__file__).resolve().parent
METHODS = ("scratch", "head", "lora+head", "full")


@dataclass(frozen=True)
class Backbone:
    """A model family: how to build it, its head's name, its LoRA config, its learning rates."""

    name: str
    make: type
    head: str
    lora: ak.LoRAConfig
    lr: dict
    pretrain_lr: float
    pretrain_steps: int


BACKBONES = {
    "cnn": Backbone(
        "cnn",
        D.DigitsCNN,
        "head",
        ak.LoRAConfig(rank=4, alpha=8, targets=("conv1", "conv2", "conv3", "fc"), train_modules=("head",)),
        {"scratch": 3e-3, "head": 1e-2, "lora+head": 1e-2, "full": 1e-3},
        3e-3,
        1500,
    ),
    "vit": Backbone(
        "vit",
        D.DigitsViT,
        "vit.classifier",
        ak.LoRAConfig(
            rank=8,
            alpha=16,
            targets=("projection", "q_proj", "k_proj", "v_proj", "o_proj", "fc1", "fc2"),
            train_modules=("classifier",),
        ),
        {"scratch": 1e-3, "head": 1e-2, "lora+head": 3e-3, "full": 3e-4},
        1e-3,
        800,
    ),
}


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--backbones", nargs="+", default=list(BACKBONES), choices=list(BACKBONES))
    p.add_argument("--shots", type=int, nargs="+", default=[2, 5, 10], help="labelled images per class")
    p.add_argument("--seeds", type=int, default=3, help="runs per (k, method), each a new draw and head")
    p.add_argument("--steps", type=int, default=200, help="fine-tuning steps")
    p.add_argument("--out", type=Path, default=HERE / "out", help="checkpoints and results.json go here")
    p.add_argument("--smoke", action="store_true", help="tiny settings; the README is left alone")
    args = p.parse_args(argv)
    args.pretrain_scale = 1.0
    if args.smoke:
        args.shots, args.seeds, args.steps, args.pretrain_scale = [2], 1, 5, 0.02
    return args


def pretrain(bb: Backbone, data, scale: float, path: Path) -> float:
    """Train ``bb`` on digits 0-4 and save it as safetensors; returns its test accuracy."""
    old_train, old_test, _, _ = data
    torch.manual_seed(0)
    model = bb.make()
    D.fit(model, old_train, steps=max(1, int(bb.pretrain_steps * scale)), lr=bb.pretrain_lr, seed=0)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(model.state_dict(), str(path))
    return D.accuracy(model, old_test)


def build(bb: Backbone, method: str, checkpoint: dict, seed: int) -> nn.Module:
    """The model a method starts from; its trainable parameters are exactly the ones to train."""
    torch.manual_seed(seed)
    model = bb.make(classes=len(D.NEW_CLASSES))  # its head is new, seeded like the scratch model's
    if method == "scratch":
        return model
    body = {k: v for k, v in checkpoint.items() if not k.startswith(bb.head + ".")}
    missing, unexpected = model.load_state_dict(body, strict=False)
    assert not unexpected and all(k.startswith(bb.head + ".") for k in missing), (missing, unexpected)
    if method == "head":
        for name, p in model.named_parameters():
            p.requires_grad_(name.startswith(bb.head + "."))
    elif method == "lora+head":
        ak.attach(model, bb.lora)
    return model


def trainable(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def merge_gap(model: nn.Module, test: D.Split) -> float:
    """Largest logit change when the LoRA model is folded into plain modules by ``ak.merge``."""
    model.eval()
    with torch.no_grad():
        before = model(test.x)
        merged = ak.merge(model)
        after = merged(test.x)
    assert not any(isinstance(m, ak.AdapterLayer) for m in merged.modules())
    return float((before - after).abs().max())


def run_one(bb: Backbone, method: str, k: int, seed: int, checkpoint: dict, data, steps: int) -> dict:
    _, _, pool, test = data
    shots = D.few_shot(pool, k, seed)
    model = build(bb, method, checkpoint, seed)
    row = {"backbone": bb.name, "method": method, "k": k, "seed": seed, "trainable": trainable(model)}
    D.fit(model, shots, steps=steps, lr=bb.lr[method], seed=seed)
    row["accuracy"] = D.accuracy(model, test)
    if method == "lora+head":
        row["summary"] = str(ak.summary(model))
        row["merge_gap"] = merge_gap(model, test)
    return row


def mean_sd(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.1f} ± {sd:.1f}"


def table(rows: list[dict], shots: list[int]) -> str:
    """One row per k, one column per method: test accuracy (%), mean ± sd over seeds."""

    def accs(k, m):
        return [100 * r["accuracy"] for r in rows if r["k"] == k and r["method"] == m]

    params = {m: next(r["trainable"] for r in rows if r["method"] == m) for m in METHODS}
    lines = ["| images per class | " + " | ".join(METHODS) + " |", "|---:|" + "---:|" * len(METHODS)]
    lines += [f"| {k} | " + " | ".join(mean_sd(accs(k, m)) for m in METHODS) + " |" for k in shots]
    lines.append("| trainable parameters | " + " | ".join(f"{params[m]:,}" for m in METHODS) + " |")
    return "\n".join(lines)


def run_backbone(bb: Backbone, args, data) -> dict:
    path = args.out / f"{bb.name}_digits0-4.safetensors"
    pre_acc = pretrain(bb, data, args.pretrain_scale, path)
    print(f"[{bb.name}] pretrained on digits 0-4: test accuracy {100 * pre_acc:.1f}% -> {path}")
    checkpoint = load_file(str(path))
    rows = [
        run_one(bb, m, k, seed, checkpoint, data, args.steps)
        for k in args.shots
        for seed in range(args.seeds)
        for m in METHODS
    ]
    print(next(r["summary"] for r in rows if "summary" in r))
    out = {
        "pretrain_accuracy": pre_acc,
        "rows": rows,
        "table": table(rows, args.shots),
        "max_merge_gap": max(r["merge_gap"] for r in rows if "merge_gap" in r),
    }
    print(f"[{bb.name}] test accuracy (%) on digits 5-9:\n{out['table']}")
    return out


def main(argv=None) -> dict:
    args = parse(argv)
    if not args.smoke:  # the README tables: on one thread (example_report.one_thread)
        one_thread()
    t0 = time.perf_counter()
    data = D.load()
    result = {"backbones": {name: run_backbone(BACKBONES[name], args, data) for name in args.backbones}}
    result.update(
        seconds=time.perf_counter() - t0,
        machine=machine(),
        n_test=len(data[3]),
        command=" ".join(["python examples/image_classification/run.py"] + list(argv or sys.argv[1:])),
    )
    gap = max(b["max_merge_gap"] for b in result["backbones"].values())
    print(f"ak.merge: largest logit change over all LoRA runs {gap:.1e}; total {result['seconds']:.0f} s")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(result, indent=1))
    if not args.smoke:
        write_readme(report(result, args))
    return result


def report(result: dict, args) -> str:
    lines = [
        f"Command: `{result['command']}`  ",
        f"Machine: {result['machine']}; the whole command took {result['seconds']:.0f} s.",
        "",
        f"Test accuracy (%) on the {result['n_test']} held-out images of digits 5-9, mean ± standard "
        f"deviation over {args.seeds} seeds (each seed draws its own k images per class and its own new head).",
    ]
    for name, b in result["backbones"].items():
        lines += [
            "",
            f"**{name}** (pretrained on digits 0-4: {100 * b['pretrain_accuracy']:.1f}% test accuracy; "
            f"`ak.merge` changed no logit by more than {b['max_merge_gap']:.1e})",
            "",
            b["table"],
        ]
    return "\n".join(lines)


def write_readme(text: str) -> None:
    write_results(HERE / "README.md", text)


if __name__ == "__main__":
    main()

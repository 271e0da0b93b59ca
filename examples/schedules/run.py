"""One LoRA fine-tune under three learning-rate schedules (constant, linear, cosine; each with warmup),
and a PNG of their learning-rate and loss curves.

    python examples/schedules/run.py            # the README's table and schedules.png
    python examples/schedules/run.py --smoke --model DIR    # a few steps on a tiny model (tests)

The run is examples/text_classification/lora.yaml (all-MiniLM-L6-v2, LoRA rank 8 + a new head,
the customer-message topics) with ``optim.schedule`` changed and 10% warmup. The schedule at
optimizer step t of T, with W warmup steps and p = (t - W) / (T - W):
    lr(t) = lr * (t + 1) / W                    while t < W, then
    constant: lr;   linear: lr * (1 - p);   cosine: lr * (1 + cos(pi p)) / 2.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

import adapterkit as ak
from adapterkit.training import TrainConfig

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
SCHEDULES = ("constant", "linear", "cosine")


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="minilm-l6", help="an alias or a local transformers folder (BERT family)")
    p.add_argument("--out", type=Path, default=HERE / "out", help="runs, results.json and schedules.png go here")
    p.add_argument("--warmup-ratio", type=float, default=0.1)
    p.add_argument("--epochs", type=int, default=None, help="instead of lora.yaml's 3")
    p.add_argument("--smoke", action="store_true", help="6 steps each; the README is left alone")
    return p.parse_args(argv)


def config_for(schedule: str, args) -> TrainConfig:
    changes = {"data.train": str(ROOT / "examples/data/classification_train.jsonl"),
               "data.eval": str(ROOT / "examples/data/classification_test.jsonl"),
               "model.name": args.model, "output.dir": str(args.out / schedule), "output.progress": False,
               "optim.schedule": schedule, "optim.warmup_ratio": args.warmup_ratio, "optim.warmup_steps": 0}
    if args.epochs:
        changes["optim.epochs"] = args.epochs
    if args.smoke:
        changes.update({"optim.max_steps": 6, "optim.batch_size": 4, "eval.max_batches": 2})
    return TrainConfig.from_yaml(ROOT / "examples/text_classification/lora.yaml").replace(changes)


def run_schedule(schedule: str, args) -> dict:
    """Train once; every step's loss and learning rate come back through a callback."""
    curve: list[tuple[int, float, float]] = []
    started = time.perf_counter()
    result = ak.train(config_for(schedule, args), callbacks=[lambda step, logs: curve.append(
        (step, logs["loss"], logs["lr"]))])
    tail = [loss for _, loss, _ in curve[-max(1, len(curve) // 10):]]
    return {"schedule": schedule, "steps": [c[0] for c in curve], "loss": [c[1] for c in curve],
            "lr": [c[2] for c in curve], "final_loss": sum(tail) / len(tail),
            "accuracy": result.last_eval["accuracy"], "macro_f1": result.last_eval["macro_f1"],
            "seconds": time.perf_counter() - started}


def smooth(values: list[float], width: int) -> list[float]:
    """Trailing moving average over ``width`` steps (fewer at the start)."""
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v - (values[i - width] if i >= width else 0.0)
        out.append(total / min(i + 1, width))
    return out


def plot(runs: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_lr, ax_loss) = plt.subplots(1, 2, figsize=(11, 4))
    width = max(1, len(runs[0]["loss"]) // 20)
    for r in runs:
        ax_lr.plot(r["steps"], r["lr"], label=r["schedule"])
        line, = ax_loss.plot(r["steps"], smooth(r["loss"], width),
                             label=f"{r['schedule']} (test accuracy {100 * r['accuracy']:.1f}%)")
        ax_loss.plot(r["steps"], r["loss"], color=line.get_color(), alpha=0.2, linewidth=0.8)
    ax_lr.set(xlabel="optimizer step", ylabel="learning rate", title="learning rate")
    ax_loss.set(xlabel="optimizer step", ylabel="training loss", yscale="log",
                title=f"training loss (faint: per step; bold: mean of {width} steps)")
    for ax in (ax_lr, ax_loss):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def table(runs: list[dict]) -> str:
    lines = ["| schedule | training loss, last 10% of steps | test accuracy (%) | macro F1 (%) | wall time |",
             "|---|---:|---:|---:|---:|"]
    lines += [f"| {r['schedule']} | {r['final_loss']:.4f} | {100 * r['accuracy']:.1f} | {100 * r['macro_f1']:.1f} | "
              f"{r['seconds']:.0f} s |" for r in runs]
    return "\n".join(lines)


def main(argv=None) -> dict:
    args = parse(argv)
    started = time.perf_counter()
    runs = [run_schedule(s, args) for s in SCHEDULES]
    args.out.mkdir(parents=True, exist_ok=True)
    png = args.out / "schedules.png"
    plot(runs, png, f"LoRA on {Path(args.model).name}: {len(runs[0]['steps'])} steps, "
                    f"{int(100 * args.warmup_ratio)}% warmup, peak lr {max(runs[0]['lr']):g}")
    import os

    result = {"runs": runs, "table": table(runs), "png": str(png), "seconds": time.perf_counter() - started,
              "machine": f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPU cores, "
                         f"torch {torch.__version__} ({torch.get_num_threads()} threads)",
              "command": " ".join(["python examples/schedules/run.py", *(argv or sys.argv[1:])])}
    print(result["table"])
    print(f"curves: {png}")
    (args.out / "results.json").write_text(json.dumps(result, indent=1))
    if not args.smoke:
        (HERE / "schedules.png").write_bytes(png.read_bytes())
        write_readme(result)
    return result


def write_readme(result: dict) -> None:
    text = (f"Command: `{result['command']}`  \nMachine: {result['machine']}; the whole command took "
            f"{result['seconds']:.0f} s.\n\n{result['table']}\n\n![learning rate and loss curves](schedules.png)")
    readme = HERE / "README.md"
    start, end = "<!-- results:start -->", "<!-- results:end -->"
    head, rest = readme.read_text().split(start, 1)
    readme.write_text(head + start + "\n" + text + "\n" + end + rest.split(end, 1)[1])


if __name__ == "__main__":
    main()

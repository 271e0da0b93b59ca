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
import sys
import time
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from example_report import machine, one_thread, write_results  # noqa: E402
import adapterkit as ak
from adapterkit.training import TrainConfig
from adapterkit.training.plot import plot_curves, smooth  # noqa: F401  (smooth: used by callers)

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
    changes = {
        "data.train": str(ROOT / "examples/data/classification_train.jsonl"),
        "data.eval": str(ROOT / "examples/data/classification_test.jsonl"),
        "model.name": args.model,
        "output.dir": str(args.out / schedule),
        "output.progress": False,
        "optim.schedule": schedule,
        "optim.warmup_ratio": args.warmup_ratio,
        "optim.warmup_steps": 0,
    }
    if args.epochs:
        changes["optim.epochs"] = args.epochs
    if args.smoke:
        changes.update({"optim.max_steps": 6, "optim.batch_size": 4, "eval.max_batches": 2})
    return TrainConfig.from_yaml(ROOT / "examples/text_classification/lora.yaml").replace(changes)


def run_schedule(schedule: str, args) -> dict:
    """Train once; every step's loss and learning rate come back through a callback."""
    curve: list[tuple[int, float, float]] = []
    started = time.perf_counter()
    result = ak.train(
        config_for(schedule, args), callbacks=[lambda step, logs: curve.append((step, logs["loss"], logs["lr"]))]
    )
    tail = [loss for _, loss, _ in curve[-max(1, len(curve) // 10) :]]
    return {
        "schedule": schedule,
        "steps": [c[0] for c in curve],
        "loss": [c[1] for c in curve],
        "lr": [c[2] for c in curve],
        "final_loss": sum(tail) / len(tail),
        "accuracy": result.last_eval["accuracy"],
        "macro_f1": result.last_eval["macro_f1"],
        "seconds": time.perf_counter() - started,
    }


def plot(runs: list[dict], path: Path, title: str) -> None:
    """The runs' learning-rate and loss curves (adapterkit.training.plot), labelled with their accuracy."""
    plot_curves(
        [dict(r, label=f"{r['schedule']} (test accuracy {100 * r['accuracy']:.1f}%)") for r in runs], path, title
    )


def table(runs: list[dict]) -> str:
    lines = [
        "| schedule | training loss, last 10% of steps | test accuracy (%) | macro F1 (%) | wall time |",
        "|---|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {r['schedule']} | {r['final_loss']:.4f} | {100 * r['accuracy']:.1f} | {100 * r['macro_f1']:.1f} | "
        f"{r['seconds']:.0f} s |"
        for r in runs
    ]
    return "\n".join(lines)


def main(argv=None) -> dict:
    args = parse(argv)
    if not args.smoke:  # the README tables: on one thread (example_report.one_thread)
        one_thread()
    started = time.perf_counter()
    runs = [run_schedule(s, args) for s in SCHEDULES]
    args.out.mkdir(parents=True, exist_ok=True)
    png = args.out / "schedules.png"
    plot(
        runs,
        png,
        f"LoRA on {Path(args.model).name}: {len(runs[0]['steps'])} steps, "
        f"{int(100 * args.warmup_ratio)}% warmup, peak lr {max(runs[0]['lr']):g}",
    )
    result = {
        "runs": runs,
        "table": table(runs),
        "png": str(png),
        "seconds": time.perf_counter() - started,
        "machine": machine(),
        "command": " ".join(["python examples/schedules/run.py", *(argv or sys.argv[1:])]),
    }
    print(result["table"])
    print(f"curves: {png}")
    (args.out / "results.json").write_text(json.dumps(result, indent=1))
    if not args.smoke:
        (HERE / "schedules.png").write_bytes(png.read_bytes())
        write_readme(result)
    return result


def write_readme(result: dict) -> None:
    text = (
        f"Command: `{result['command']}`  \nMachine: {result['machine']}; the whole command took "
        f"{result['seconds']:.0f} s.\n\n{result['table']}\n\n![learning rate and loss curves](schedules.png)"
    )
    write_results(HERE / "README.md", text)


if __name__ == "__main__":
    main()

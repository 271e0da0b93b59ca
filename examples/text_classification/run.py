"""Text classification with a pretrained encoder: five ways to fine-tune it, one table.

    python examples/text_classification/run.py            # the README's table
    python examples/text_classification/run.py --smoke    # a few steps (needs --model for tests)

all-MiniLM-L6-v2 (``minilm-l6``: BERT, 6 blocks, hidden 384, 22.7M parameters) gets a new
classification head and learns the four topics of examples/data/classification_*.jsonl:
- ``head``:            the encoder frozen, only the new head trains;
- ``lora+head``:       LoRA on every linear layer + the head (``ak.train`` with lora.yaml);
- ``bottleneck+head``: bottleneck adapters + the head (``ak.train`` with bottleneck.yaml);
- ``last2+head``:      the last two blocks and the head train, the rest is frozen;
- ``full``:            every parameter trains.
Same data, batches, epochs, schedule and seed for all; learning rates per method (below).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parent))
from partial import last_blocks, train_partial  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from example_report import machine, write_results  # noqa: E402
import adapterkit as ak  # noqa: E402
from adapterkit.training import TrainConfig  # noqa: E402

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
# name -> (YAML config its data/optim settings come from, learning rate, what trains without an adapter)
VARIANTS = {
    "head": ("lora.yaml", 5e-3, lambda m: lambda n: n.startswith("classifier.")),
    "lora+head": ("lora.yaml", None, None),
    "bottleneck+head": ("bottleneck.yaml", None, None),
    "last2+head": ("lora.yaml", 1e-4, lambda m: lambda n: n.startswith(("classifier.", *last_blocks(m, 2)))),
    "full": ("lora.yaml", 5e-5, lambda m: lambda n: True),
}


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="minilm-l6", help="an alias or a local transformers folder (BERT family)")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--out", type=Path, default=HERE / "out", help="adapters and results.json go here")
    p.add_argument("--smoke", action="store_true", help="3 steps on 32 sentences; the README is left alone")
    return p.parse_args(argv)


def config_for(name: str, args) -> TrainConfig:
    yaml_name, lr, _ = VARIANTS[name]
    data = {
        "data.train": str(ROOT / "examples/data/classification_train.jsonl"),
        "data.eval": str(ROOT / "examples/data/classification_test.jsonl"),
        "model.name": args.model,
        "output.dir": str(args.out / name.replace("+", "_")),
        "output.progress": False,
    }
    if lr is not None:
        data["optim.lr"] = lr
    if args.smoke:
        data.update({"optim.max_steps": 3, "optim.batch_size": 4, "eval.max_batches": 2})
    return TrainConfig.from_yaml(HERE / yaml_name).replace(data)


def run_adapter(config: TrainConfig) -> dict:
    started = time.perf_counter()
    result = ak.train(config)
    seconds = time.perf_counter() - started
    model = result.model
    adapter_params = sum(p.numel() for _, layer in ak.inject.adapter_layers(model) for p in layer.adapters.parameters())
    file = result.output_dir / "adapter_model.safetensors"
    return dict(
        accuracy=result.last_eval["accuracy"],
        macro_f1=result.last_eval["macro_f1"],
        steps=result.steps,
        trainable=sum(p.numel() for p in model.parameters() if p.requires_grad),
        total=sum(p.numel() for p in model.parameters()) - adapter_params,
        file_bytes=file.stat().st_size,
        seconds=seconds,
        summary=str(ak.summary(model)),
    )


def run_variant(name: str, args) -> dict:
    config = config_for(name, args)
    trains = VARIANTS[name][2]
    row = run_adapter(config) if trains is None else train_partial(config, trains, Path(config.output.dir))[0]
    row.update(name=name, lr=config.optim.lr)
    print(
        f"{name}: accuracy {100 * row['accuracy']:.1f}%, macro F1 {100 * row['macro_f1']:.1f}, "
        f"{row['trainable']:,} trained, {row['seconds']:.0f} s",
        flush=True,
    )
    return row


def size(n: int) -> str:
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n / 2**10:.0f} KiB"


def table(rows: list[dict]) -> str:
    lines = [
        "| method | accuracy (%) | macro F1 (%) | trained parameters | % of model | file to ship | "
        "learning rate | wall time |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['name']} | {100 * r['accuracy']:.1f} | {100 * r['macro_f1']:.1f} | {r['trainable']:,} | "
            f"{100 * r['trainable'] / r['total']:.2f} | {size(r['file_bytes'])} | {r['lr']:g} | "
            f"{r['seconds']:.0f} s |"
        )
    return "\n".join(lines)


def main(argv=None) -> dict:
    args = parse(argv)
    started = time.perf_counter()
    rows = [run_variant(name, args) for name in args.variants]
    result = {
        "rows": rows,
        "table": table(rows),
        "machine": machine(),
        "seconds": time.perf_counter() - started,
        "command": " ".join(["python examples/text_classification/run.py", *(argv or sys.argv[1:])]),
    }
    lora = next((r for r in rows if "summary" in r), None)
    if lora:
        print(lora["summary"])
    print(result["table"])
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(result, indent=1))
    if not args.smoke:
        write_readme(result)
    return result


def write_readme(result: dict) -> None:
    text = (
        f"Command: `{result['command']}`  \nMachine: {result['machine']}; the whole command took "
        f"{result['seconds']:.0f} s (wall time per method includes loading the model).\n\n{result['table']}"
    )
    write_results(HERE / "README.md", text)


if __name__ == "__main__":
    main()

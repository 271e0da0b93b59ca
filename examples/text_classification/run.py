"""Text classification with a pretrained encoder: five ways to fine-tune it, one table; more methods, a second.

    python examples/text_classification/run.py                   # the README's first table
    python examples/text_classification/run.py --section more    # its second table: the other methods
    python examples/text_classification/run.py --smoke           # a few steps (needs --model for tests)

all-MiniLM-L6-v2 (``minilm-l6``: BERT, 6 blocks, hidden 384, 22.7M parameters) gets a new
classification head and learns the four topics of examples/data/classification_*.jsonl:
- ``head``:            the encoder frozen, only the new head trains;
- ``lora+head``:       LoRA on every linear layer + the head (``ak.train`` with lora.yaml);
- ``bottleneck+head``: bottleneck adapters + the head (``ak.train`` with bottleneck.yaml);
- ``last2+head``:      the last two blocks and the head train, the rest is frozen;
- ``full``:            every parameter trains.
The second section (``MORE``): ``<method>+head`` trains that method's adapter + the head with
``ak.train`` and ``<method>.yaml`` (IA3, LoHa, LoKr, AdaLoRA, VeRA, LN tuning, OFT, BOFT, Compacter,
LoReFT). Same data, batches, epochs, schedule and seed for all; learning rates per method (below,
and in each YAML)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parent))
from partial import last_blocks, train_partial  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from example_report import machine, one_thread, write_results  # noqa: E402
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
FIRST = tuple(VARIANTS)
# the README's second table: each method's adapter + the head, from <method>.yaml (its lr included)
MORE = tuple(
    f"{m}+head" for m in ("ia3", "loha", "lokr", "adalora", "vera", "ln_tuning", "oft", "boft", "compacter", "loreft")
)
VARIANTS.update({name: (f"{name.split('+')[0]}.yaml", None, None) for name in MORE})
SECTIONS = {"first": FIRST, "more": MORE}


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="minilm-l6", help="an alias or a local transformers folder (BERT family)")
    p.add_argument(
        "--section", choices=list(SECTIONS), default="first", help="which README table (and default variants)"
    )
    p.add_argument("--variants", nargs="+", choices=list(VARIANTS), help="default: the section's")
    p.add_argument("--out", type=Path, default=HERE / "out", help="adapters and results.json go here")
    p.add_argument("--smoke", action="store_true", help="3 steps on 32 sentences; the README is left alone")
    p.add_argument(
        "--collect",
        nargs="+",
        type=Path,
        metavar="RESULTS",
        help="train nothing: write the section's table from these results.json (runs split across processes)",
    )
    args = p.parse_args(argv)
    args.variants = args.variants or list(SECTIONS[args.section])
    return args


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
        adapter = TrainConfig.from_yaml(HERE / yaml_name).adapter
        if adapter.method == "adalora":  # its rank schedule must end within the run
            data["adapter.total_step"] = 3
        if adapter.method == "compacter":  # the tiny test model's bottleneck must divide by phm_dim
            data["adapter.bottleneck_dim"] = adapter.phm_dim
    return TrainConfig.from_yaml(HERE / yaml_name).replace(data)


def run_adapter(config: TrainConfig) -> dict:
    started = time.perf_counter()
    result = ak.train(config)
    seconds = time.perf_counter() - started
    model = result.model
    adapter_params = sum(p.numel() for _, layer in ak.inject.adapter_layers(model) for p in layer.adapters.parameters())
    files = [result.output_dir / f for f in ("adapter_model.safetensors", "trained.safetensors")]
    return dict(
        accuracy=result.last_eval["accuracy"],
        macro_f1=result.last_eval["macro_f1"],
        steps=result.steps,
        trainable=sum(p.numel() for p in model.parameters() if p.requires_grad),
        total=sum(p.numel() for p in model.parameters()) - adapter_params,
        file_bytes=sum(f.stat().st_size for f in files if f.is_file()),
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
    if not args.smoke:  # the README tables: on one thread (example_report.one_thread)
        one_thread()
    if args.collect:
        return collect(args.collect, args.section)
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
        write_readme([result], args.section)
    return result


def collect(paths: list[Path], section: str) -> dict:
    """The section's README table from the results.json of runs made apart (e.g. two at once)."""
    results = [json.loads(Path(p).read_text()) for p in paths]
    rows = sorted((r for result in results for r in result["rows"]), key=lambda r: list(VARIANTS).index(r["name"]))
    write_readme(results, section)
    return {"rows": rows, "table": table(rows)}


def write_readme(results: list[dict], section: str = "first") -> None:
    rows = sorted((r for result in results for r in result["rows"]), key=lambda r: list(VARIANTS).index(r["name"]))
    if len(results) == 1:
        (r,) = results
        ran = f"Command: `{r['command']}`  \nMachine: {r['machine']}; the whole command took {r['seconds']:.0f} s"
    else:
        commands = "\n".join(f"- `{r['command']}` ({r['seconds']:.0f} s)" for r in results)
        ran = f"Commands, one per results.json:\n\n{commands}\n\nMachine: {results[0]['machine']}"
    text = f"{ran} (wall time per method includes loading the model).\n\n{table(rows)}"
    write_results(HERE / "README.md", text, "" if section == "first" else section)


if __name__ == "__main__":
    main()

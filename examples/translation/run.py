"""English -> French translation by LoRA instruction tuning of SmolLM2-135M-Instruct.

    python examples/translation/run.py                     # the README's tables
    python examples/translation/run.py --smoke --model DIR # a few steps on a tiny model (tests)

Trains with ``ak.train`` and translate.yaml (the same run as ``adapterkit train
examples/translation/translate.yaml``): LoRA rank 16 on every linear layer, loss on the French
response only. Before and after training it scores the 120 held-out pairs: BLEU and chrF
(sacrebleu) of greedy translations against the references, and the mean loss per reference token
and its perplexity exp(loss). LoRA starts with B = 0, so "before" is the base model itself.
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
from adapterkit.training.data import prompt_ids, read_records
from adapterkit.training.evaluate import generate_texts

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="smollm2-135m", help="an alias or a local causal-LM folder")
    p.add_argument("--out", type=Path, default=HERE / "out", help="the adapter and results.json go here")
    p.add_argument("--samples", type=int, default=6, help="held-out sentences shown before / after")
    p.add_argument("--smoke", action="store_true", help="2 steps, short generations; the README is left alone")
    return p.parse_args(argv)


def config_for(args) -> TrainConfig:
    changes = {
        "data.train": str(ROOT / "examples/data/translation_train.jsonl"),
        "data.eval": str(ROOT / "examples/data/translation_test.jsonl"),
        "model.name": args.model,
        "output.dir": str(args.out / "adapter"),
    }
    if args.smoke:
        changes.update(
            {"optim.max_steps": 2, "optim.batch_size": 4, "eval.max_new_tokens": 4, "output.progress": False}
        )
    return TrainConfig.from_yaml(HERE / "translate.yaml").replace(changes)


def samples(result, config: TrainConfig, n: int) -> list[dict]:
    """Greedy translations of the first ``n`` held-out sentences by the base model and the tuned one."""
    d = config.data
    records = read_records(d.eval, d.format)[:n]
    prompts = [prompt_ids(result.tokenizer, r[d.prompt_field], d) for r in records]
    model, k = result.model, config.eval.max_new_tokens
    model.eval()
    with ak.disabled(model):
        before = generate_texts(model, result.tokenizer, prompts, k, "cpu")
    after = generate_texts(model, result.tokenizer, prompts, k, "cpu")
    return [
        {"source": r["source"], "reference": r["target"], "before": b, "after": a}
        for r, b, a in zip(records, before, after)
    ]


def scores_table(first: dict, last: dict) -> str:
    rows = [
        ("BLEU", "bleu", "{:.1f}"),
        ("chrF", "chrf", "{:.1f}"),
        ("loss per reference token", "loss", "{:.3f}"),
        ("perplexity", "perplexity", "{:.2f}"),
    ]
    lines = ["| on the 120 held-out pairs | base model | after LoRA |", "|---|---:|---:|"]
    lines += [f"| {label} | {fmt.format(first[key])} | {fmt.format(last[key])} |" for label, key, fmt in rows]
    return "\n".join(lines)


def samples_table(rows: list[dict]) -> str:
    def cell(s: str) -> str:
        return s.replace("|", "\\|").replace("\n", " ")

    lines = ["| English | reference | base model | after LoRA |", "|---|---|---|---|"]
    lines += [
        f"| {cell(r['source'])} | {cell(r['reference'])} | {cell(r['before'])} | {cell(r['after'])} |" for r in rows
    ]
    return "\n".join(lines)


def main(argv=None) -> dict:
    args = parse(argv)
    if not args.smoke:  # the README tables: on one thread (example_report.one_thread)
        one_thread()
    config = config_for(args)
    started = time.perf_counter()
    result = ak.train(config)
    shown = samples(result, config, args.samples)
    model = result.model
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    file = result.output_dir / "adapter_model.safetensors"
    out = {
        "first_eval": result.first_eval,
        "last_eval": result.last_eval,
        "samples": shown,
        "steps": result.steps,
        "train_seconds": result.train_seconds,
        "seconds": time.perf_counter() - started,
        "trained": trained,
        "total": sum(p.numel() for p in model.parameters()) - trained,
        "adapter_bytes": file.stat().st_size,
        "machine": machine(),
        "command": " ".join(["python examples/translation/run.py", *(argv or sys.argv[1:])]),
    }
    out["scores"] = scores_table(result.first_eval, result.last_eval)
    out["examples"] = samples_table(shown)
    print(out["scores"])
    print(out["examples"])
    (args.out / "results.json").write_text(json.dumps(out, indent=1, ensure_ascii=False))
    if not args.smoke:
        write_readme(out)
    return out


def write_readme(out: dict) -> None:
    text = "\n".join(
        [
            f"Command: `{out['command']}`  ",
            f"Machine: {out['machine']}. {out['steps']} optimizer steps in {out['train_seconds']:.0f} s; the whole "
            f"command (loading, two scored evaluations with generation, samples) took {out['seconds']:.0f} s.  ",
            f"Trained: {out['trained']:,} LoRA parameters ({100 * out['trained'] / out['total']:.2f}% of "
            f"{out['total']:,}); adapter file {out['adapter_bytes'] / 2**20:.1f} MiB.",
            "",
            out["scores"],
            "",
            "Greedy translations of the first held-out sentences:",
            "",
            out["examples"],
        ]
    )
    write_results(HERE / "README.md", text)


if __name__ == "__main__":
    main()

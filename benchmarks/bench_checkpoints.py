"""Trainer checkpoints of an adapted SmolLM2-135M: bytes on disk, with and without ak.checkpoint_callback().

The real SmolLM2-135M-Instruct (``adapterkit.models.load_model("smollm2-135m")``: 30 layers, hidden
576, 134.5M parameters, fp32, offline), one LoRA adapter, transformers' Trainer for 2 steps with a
checkpoint after each (``save_steps=1``), batch 2 x 64 tokens. For each run the bytes of every file
of the last checkpoint, of the adapter alone (``ak.save_adapter``'s ``adapter_model.safetensors``)
and of the base model's own ``model.safetensors``; and, as a check, the largest logit difference
between the trained model and a fresh base with the checkpoint's adapter loaded (``ak.load_adapter``).

    HF_HUB_OFFLINE=1 python benchmarks/bench_checkpoints.py --out /tmp/ckpt-bench --markdown benchmarks/checkpoints.md
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import time
from pathlib import Path

import torch

import adapterkit as ak

CASES = {
    "LoRA r8 q,v": dict(rank=8, alpha=16, targets=("q_proj", "v_proj")),
    "LoRA r8 all-linear": dict(rank=8, alpha=16, targets="all-linear"),
}
TEXTS = [
    "The capital of France is Paris.",
    "Water boils at one hundred degrees Celsius at sea level.",
    "A haiku has three lines of five, seven and five syllables.",
    "The Pacific is the largest ocean.",
    "Photosynthesis turns light, water and carbon dioxide into sugar.",
    "Seven times eight is fifty-six.",
]


def dataset(tokenizer, length: int = 64):
    batch = tokenizer(TEXTS, padding="max_length", max_length=length, truncation=True, return_tensors="pt")
    rows = []
    for ids, mask in zip(batch["input_ids"], batch["attention_mask"]):  # (T,), (T,)
        rows.append({"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, -100)})
    return rows


def sizes(folder: Path) -> dict[str, int]:
    return {p.relative_to(folder).as_posix(): p.stat().st_size for p in sorted(folder.rglob("*")) if p.is_file()}


def run(case: str, callback: bool, out: Path) -> dict:
    from transformers import Trainer, TrainingArguments

    model, tokenizer = ak.load_model("smollm2-135m")
    ak.attach(model, ak.LoRAConfig(**CASES[case]))
    args = TrainingArguments(
        output_dir=str(out),
        per_device_train_batch_size=2,
        max_steps=2,
        save_steps=1,
        learning_rate=1e-3,
        report_to=[],
        use_cpu=True,
        logging_strategy="no",
        disable_tqdm=True,
    )
    start = time.perf_counter()
    Trainer(
        model=model,
        args=args,
        train_dataset=dataset(tokenizer),
        callbacks=[ak.checkpoint_callback()] if callback else [],
    ).train()
    seconds = time.perf_counter() - start
    ak.save_adapter(model, out / "adapter")
    last = out / "checkpoint-2"
    result = {
        "case": case,
        "callback": callback,
        "seconds": seconds,
        "files": sizes(last),
        "folder": sum(sizes(last).values()),
        "adapter": (out / "adapter" / "adapter_model.safetensors").stat().st_size,
    }
    if callback:  # the checkpoint's adapter on a fresh base gives the trained model's logits
        x = dataset(tokenizer)[0]["input_ids"][None]  # (1, T)
        fresh = ak.load_adapter(ak.load_model("smollm2-135m")[0], last).eval()
        with torch.no_grad():
            result["max_logit_diff"] = float((fresh(x).logits - model.eval()(x).logits).abs().max())
    return result


def markdown(results: list[dict], base_bytes: int) -> str:
    lines = [
        "| adapter | checkpoints | checkpoint folder | model.safetensors | optimizer.pt | "
        "adapter_model.safetensors | folder / adapter | folder / base model |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        f = r["files"]
        lines.append(
            f"| {r['case']} | {'ak.checkpoint_callback()' if r['callback'] else 'plain Trainer'} | "
            f"{r['folder']:,} | {f.get('model.safetensors', 0):,} | {f.get('optimizer.pt', 0):,} | "
            f"{r['adapter']:,} | {r['folder'] / r['adapter']:.1f} | {r['folder'] / base_bytes:.3f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("/tmp/adapterkit-bench-checkpoints"))
    parser.add_argument("--markdown", type=Path, help="also write the table to this file")
    opts = parser.parse_args()
    from adapterkit.models import model_path

    base_bytes = (Path(model_path("smollm2-135m")) / "model.safetensors").stat().st_size
    results = []
    for case in CASES:
        for callback in (True, False):
            out = opts.out / f"{case.replace(' ', '_').replace(',', '')}-{'callback' if callback else 'plain'}"
            shutil.rmtree(out, ignore_errors=True)
            results.append(run(case, callback, out))
            print(results[-1])
    table = markdown(results, base_bytes)
    print(f"base model.safetensors: {base_bytes:,} bytes\n{table}")
    if opts.markdown:
        import transformers

        machine = (
            f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
            f"transformers {transformers.__version__}, adapterkit {ak.__version__}"
        )
        details = "\n".join(
            f"- {r['case']}, {'callback' if r['callback'] else 'plain'}: "
            + ", ".join(f"{k} {v:,}" for k, v in r["files"].items())
            + (
                f"; max |logit difference|, trained model vs fresh base + the checkpoint's "
                f"adapter: {r['max_logit_diff']:.3g}"
                if "max_logit_diff" in r
                else ""
            )
            for r in results
        )
        opts.markdown.write_text(
            f"# Trainer checkpoints: bytes on disk\n\nCommand: `HF_HUB_OFFLINE=1 python "
            f"benchmarks/bench_checkpoints.py --markdown benchmarks/checkpoints.md`\n\n"
            f"Machine: {machine}. Base model.safetensors: {base_bytes:,} bytes.\n\n"
            f"{table}\n\nFiles of the last checkpoint (bytes):\n{details}\n"
        )


if __name__ == "__main__":
    main()

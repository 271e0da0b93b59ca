"""`adapterkit plan` against measurement, and the README's worked examples.

--part grid      predicted vs measured memory of one training step (adapterkit's loss, backward,
                 clipping, optimizer) for Llama-shaped models of several sizes (random weights from
                 configs), dense / 4-bit / 8-bit bases, LoRA / dropout / DoRA, ranks 8-64, batch x
                 sequence, checkpointing on and off, AdamW and 8-bit AdamW, bf16, padded batches,
                 and a BERT classifier. Each case in its own fresh process; bytes in use from glibc
                 (see adapterkit/planning/measure.py). Prints a markdown table and the largest error
                 of each component.
--part examples  Llama 3.2 1B / 3B, Llama 3.1 8B / 70B (published dimensions, nothing downloaded) on
                 8, 16, 24 and 80 GB GPUs: the fastest setting that fits, as the README shows it.

    python benchmarks/bench_plan.py --part grid --json plan_grid.json     # ~10-20 min on 2 cores
    python benchmarks/bench_plan.py --part grid --only S                   # one model size
    python benchmarks/bench_plan.py --part examples
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

from adapterkit.methods.lora.config import LoRAConfig
from adapterkit.planning import Quant, Settings, calibrate
from model_shapes import SMOLLM2_135M

MIB = 2**20
MODELS = {
    "S": dict(
        model_type="llama",
        hidden_size=256,
        intermediate_size=688,
        num_hidden_layers=4,
        num_attention_heads=8,
        num_key_value_heads=4,
        vocab_size=8000,
        max_position_embeddings=512,
    ),
    "M": dict(
        model_type="llama",
        hidden_size=512,
        intermediate_size=1376,
        num_hidden_layers=8,
        num_attention_heads=8,
        num_key_value_heads=8,
        vocab_size=8000,
        max_position_embeddings=512,
    ),
    "S, vocab 256": dict(
        model_type="llama",
        hidden_size=256,
        intermediate_size=688,
        num_hidden_layers=4,
        num_attention_heads=8,
        num_key_value_heads=4,
        vocab_size=256,
        max_position_embeddings=512,
    ),
    "SmolLM2-135M": dict(model_type="llama", **SMOLLM2_135M),
    "MiniLM-L6": dict(
        model_type="bert",
        hidden_size=384,
        intermediate_size=1536,
        num_hidden_layers=6,
        num_attention_heads=12,
        vocab_size=30522,
        max_position_embeddings=512,
    ),
}


def _lora(**kw) -> LoRAConfig:
    return LoRAConfig(**{"rank": 8, "alpha": 16, "init": "random", **kw})


def grid() -> list[tuple[str, str, Settings]]:
    """(model, case name, settings)."""
    base = Settings(batch_size=4, seq_len=128, adapter=_lora(), device="cpu")
    variants = {
        "fp32 LoRA r8": {},
        "fp32 LoRA r8, checkpointing": dict(checkpointing=True),
        "fp32 DoRA r8": dict(adapter=_lora(dora=True)),
        "fp32 LoRA r8 dropout 0.1": dict(adapter=_lora(dropout=0.1)),
        "fp32 LoRA r64": dict(adapter=_lora(rank=64)),
        "fp32 LoRA r8, 2 x 256": dict(batch_size=2, seq_len=256),
        "fp32 LoRA r8, padded batch": dict(padded=True),
        "fp32 LoRA r8, 8-bit AdamW": dict(optimizer="adamw8bit"),
        "4-bit LoRA r8": dict(quant=Quant(4)),
        "4-bit LoRA r16 dropout, checkpointing": dict(
            quant=Quant(4), checkpointing=True, adapter=_lora(rank=16, dropout=0.1)
        ),
        "4-bit DoRA r8, checkpointing": dict(quant=Quant(4), checkpointing=True, adapter=_lora(dora=True)),
        "8-bit LoRA r8, 8-bit AdamW": dict(quant=Quant(8), optimizer="adamw8bit"),
        "bf16 LoRA r8": dict(dtype="bfloat16"),
        "bf16 DoRA r8, checkpointing": dict(dtype="bfloat16", checkpointing=True, adapter=_lora(dora=True)),
    }
    out = [(m, name, base.replace(**kw)) for m in ("S", "M") for name, kw in variants.items()]
    for name in (
        "fp32 LoRA r8",
        "fp32 LoRA r8, checkpointing",
        "fp32 DoRA r8",
        "4-bit LoRA r8",
        "4-bit DoRA r8, checkpointing",
        "bf16 LoRA r8",
    ):  # the last block's backward is the peak
        out.append(("S, vocab 256", name, base.replace(**variants[name])))
    small = base.replace(batch_size=2, seq_len=128)
    out += [
        ("SmolLM2-135M", "fp32 LoRA r16", small.replace(adapter=_lora(rank=16))),
        (
            "SmolLM2-135M",
            "4-bit LoRA r16, checkpointing",
            small.replace(adapter=_lora(rank=16), quant=Quant(4), checkpointing=True),
        ),
        ("SmolLM2-135M", "bf16 DoRA r8", small.replace(dtype="bfloat16", adapter=_lora(dora=True))),
    ]
    cls = base.replace(batch_size=8, seq_len=128, task="classification")
    out += [
        ("MiniLM-L6", "fp32 LoRA r8", cls),
        ("MiniLM-L6", "fp32 LoRA r8, checkpointing", cls.replace(checkpointing=True)),
    ]
    return out


def run_grid(only: str | None) -> dict:
    cases = [c for c in grid() if only is None or c[0] == only]
    rows = []
    for model, name, s in cases:  # one server per case keeps a failure local and shows progress
        start = time.time()
        row = calibrate.run([(MODELS[model], s)])[0]
        row.update(model=model, case=name, seconds=round(time.time() - start, 1))
        rows.append(row)
        e = row["error"]
        print(
            f"| {model} | {name} | {row['predicted']['peak'] / MIB:.1f} | {row['measured']['peak'] / MIB:.1f} | "
            f"{100 * e['peak']:+.1f}% | {100 * e['weights']:+.1f}% | {100 * e['states']:+.1f}% | "
            f"{100 * e['held']:+.1f}% | {row['phase']} |",
            flush=True,
        )
    worst = {c: max((r["error"][c] for r in rows), key=abs) for c in calibrate.COMPONENTS}
    print("largest error: " + ", ".join(f"{c} {100 * v:+.1f}%" for c, v in worst.items()))
    return {"rows": rows, "largest_error": worst}


LLAMAS = {  # published dimensions (Meta's config.json files); nothing is downloaded
    "Llama 3.2 1B": dict(
        model_type="llama",
        hidden_size=2048,
        intermediate_size=8192,
        num_hidden_layers=16,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=64,
        vocab_size=128256,
        tie_word_embeddings=True,
        rope_theta=500000.0,
        max_position_embeddings=131072,
    ),
    "Llama 3.2 3B": dict(
        model_type="llama",
        hidden_size=3072,
        intermediate_size=8192,
        num_hidden_layers=28,
        num_attention_heads=24,
        num_key_value_heads=8,
        head_dim=128,
        vocab_size=128256,
        tie_word_embeddings=True,
        rope_theta=500000.0,
        max_position_embeddings=131072,
    ),
    "Llama 3.1 8B": dict(
        model_type="llama",
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        vocab_size=128256,
        rope_theta=500000.0,
        max_position_embeddings=131072,
    ),
    "Llama 3.1 70B": dict(
        model_type="llama",
        hidden_size=8192,
        intermediate_size=28672,
        num_hidden_layers=80,
        num_attention_heads=64,
        num_key_value_heads=8,
        vocab_size=128256,
        rope_theta=500000.0,
        max_position_embeddings=131072,
    ),
}
EXAMPLE_SET = (
    "model.dtype=bfloat16",
    "adapter.rank=16",
    "adapter.alpha=32",
    "optim.batch_size=8",
    "data.max_length=2048",
    "data.packing=true",
)


def run_examples() -> dict:
    import adapterkit as ak
    from adapterkit.planning.units import fmt

    out = {}
    print("settings: " + " ".join(f"--set {s}" for s in EXAMPLE_SET))
    print("| model | as configured (bf16, batch 8 x 2048) | 8 GB | 16 GB | 24 GB | 80 GB |")
    print("|---|---|---|---|---|---|")
    for name, config in LLAMAS.items():
        cells, plain = [], None
        for gb in (8, 16, 24, 80):
            p = ak.plan(config, EXAMPLE_SET, gpu_memory=f"{gb}GB", limit=1)
            plain = p.estimate
            if p.options:
                o = p.options[0]
                s = o.settings
                how = f"{s.quant.bits}-bit" if s.quant else "bf16"
                cells.append(
                    f"{fmt(o.estimate.total)}: {how}, {s.batch_size} x {s.grad_accum} accum, "
                    f"ckpt {'on' if s.checkpointing else 'off'}"
                )
            else:
                cells.append(f"no (smallest {fmt(p.closest.estimate.total)})")
            out[f"{name} {gb}GB"] = p.to_dict()
        print(f"| {name} ({plain.inventory.params / 1e9:.2f}B) | {fmt(plain.total)} | " + " | ".join(cells) + " |")
    return out


def conditions() -> dict:
    import torch
    import transformers

    return {
        "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "load_avg": os.getloadavg(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--part", choices=("grid", "examples"), default="grid")
    p.add_argument("--only", choices=tuple(MODELS), help="grid: one model only (e.g. S)")
    p.add_argument("--json", help="also write the results to this file")
    args = p.parse_args(argv)
    results = {"conditions": conditions()}
    print(results["conditions"], flush=True)
    if args.part == "grid":
        print("| model | case | predicted peak MiB | measured MiB | peak | weights | states | held | peak at |")
        print("|---|---|---|---|---|---|---|---|---|")
        results["grid"] = run_grid(args.only)
    else:
        results["examples"] = run_examples()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1, default=str)


if __name__ == "__main__":
    main()

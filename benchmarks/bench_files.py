"""Adapter files: size on disk, save time and load time, adapterkit vs PEFT, on a 135M Llama.

The base is Llama-shaped like SmolLM2-135M (30 layers, hidden 576, vocab 49152, tied embeddings,
134.5M parameters), built from a config with random weights (no download). For each adapter
config both libraries save the same adapter; the load is timed into a fresh copy of the base
(the copy is made outside the timed region), median of ``--repeats`` runs, in one process. A save
is timed after one untimed warm-up save; adapterkit's includes fsync of each file and folder.

    python benchmarks/bench_files.py --repeats 5
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

import adapterkit as ak
from model_shapes import SMOLLM2_135M


CASES = {  # name -> adapterkit config (PEFT gets the same one through its own keys)
    "LoRA r16 all-linear": dict(rank=16, alpha=32, targets="all-linear"),
    "LoRA r8 q,v": dict(rank=8, alpha=16, targets=("q_proj", "v_proj")),
    "DoRA r16 all-linear": dict(rank=16, alpha=32, targets="all-linear", dora=True),
}


def base_model():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(**SMOLLM2_135M, rope_theta=100000.0)).eval()


def peft_config(cfg: dict):
    from peft import LoraConfig

    targets = cfg["targets"] if isinstance(cfg["targets"], str) else list(cfg["targets"])
    return LoraConfig(
        r=cfg["rank"],
        lora_alpha=cfg["alpha"],
        target_modules=targets,
        use_dora=cfg.get("dora", False),
        init_lora_weights=False,
        task_type="CAUSAL_LM",
    )


def timed(fn, template, repeats: int) -> float:
    """Median seconds of ``fn(fresh copy of template)``; the copy is not timed."""
    times = []
    for _ in range(repeats):
        model = copy.deepcopy(template)
        start = time.perf_counter()
        fn(model)
        times.append(time.perf_counter() - start)
        del model
    return statistics.median(times)


def repeated(fn, repeats: int) -> float:
    """Median seconds of ``fn()`` after one untimed warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def run_case(name: str, cfg: dict, template, folder: Path, repeats: int) -> dict:
    from peft import PeftModel, get_peft_model

    ours = ak.attach(copy.deepcopy(template), ak.LoRAConfig(init="random", **cfg))
    theirs = get_peft_model(copy.deepcopy(template), peft_config(cfg))
    a_dir, p_dir = folder / "ours", folder / "peft"
    row = {"case": name, "params": ak.summary(ours).trainable}
    row["ak_save"] = repeated(lambda: ak.save_adapter(ours, a_dir, overwrite=True), repeats)
    row["peft_save"] = repeated(lambda: theirs.save_pretrained(p_dir), repeats)
    row["ak_bytes"] = (a_dir / "adapter_model.safetensors").stat().st_size
    row["peft_bytes"] = (p_dir / "adapter_model.safetensors").stat().st_size
    row["ak_load"] = timed(lambda m: ak.load_adapter(m, a_dir), template, repeats)
    row["peft_load"] = timed(lambda m: PeftModel.from_pretrained(m, p_dir), template, repeats)
    row["ak_load_peft_file"] = timed(lambda m: ak.load_adapter(m, p_dir), template, repeats)
    row["peft_load_ak_file"] = timed(lambda m: PeftModel.from_pretrained(m, a_dir), template, repeats)
    return row


def table(rows: list[dict]) -> str:
    lines = [
        "| adapter | trainable params | file: adapterkit | file: PEFT | save: adapterkit | save: PEFT "
        "| load: adapterkit | load: PEFT | adapterkit loads PEFT's file | PEFT loads adapterkit's file |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['case']} | {r['params']:,} | {r['ak_bytes'] / 2**20:.2f} MiB | {r['peft_bytes'] / 2**20:.2f} MiB "
            f"| {r['ak_save'] * 1e3:.0f} ms | {r['peft_save'] * 1e3:.0f} ms | {r['ak_load'] * 1e3:.0f} ms "
            f"| {r['peft_load'] * 1e3:.0f} ms | {r['ak_load_peft_file'] * 1e3:.0f} ms "
            f"| {r['peft_load_ak_file'] * 1e3:.0f} ms |"
        )
    return "\n".join(lines)


def main() -> None:
    import peft
    import transformers

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    template = base_model()
    n = sum(p.numel() for p in template.parameters())
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, cfg in CASES.items():
            rows.append(run_case(name, cfg, template, Path(tmp) / name.replace(" ", "_"), args.repeats))
    print(f"Base: Llama-shaped like SmolLM2-135M, {n / 1e6:.1f}M parameters, fp32, random weights.")
    print(
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), transformers {transformers.__version__}, "
        f"peft {peft.__version__}, adapterkit {ak.__version__}. Save and load: median of {args.repeats}.\n"
    )
    print(table(rows))


if __name__ == "__main__":
    main()

"""Every adapter method on the Llama-shaped benchmark model: trainable parameters, adapter file
size and training-step time, adapterkit beside PEFT where PEFT has the method.

AdaLoRA's step also adds the orthogonality penalty and runs the rank allocator (PEFT:
``update_and_allocate``), masking at every step (tinit 0, deltaT 1).

Model: Llama-shaped from a config (hidden 512, intermediate 1376, 8 layers, 8 heads, vocab 8000;
33.5M parameters, the same as bench_lora.py), batch 4 x 128 tokens, fp32 on CPU.

- params: trainable parameters after attach (``ak.summary``; PEFT: requires_grad count).
- file:   bytes of ``adapter_model.safetensors`` written by ``ak.save_adapter`` / ``save_pretrained``.
- step:   forward + backward + AdamW on the adapter, median of ``--steps`` after 2 warm-up steps;
          adapterkit and PEFT alternate step by step in one process (same weights, same batch);
          ratio = adapterkit median / PEFT median; on a shared, loaded machine the ratio of the fastest
          steps (least disturbed by other processes) is the steadier figure.

    python benchmarks/bench_methods.py                      # every method (about 2 minutes on 2 cores)
    python benchmarks/bench_methods.py --methods ia3 prefix --steps 3
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import tempfile
import time
import warnings

import torch

import adapterkit as ak

MODEL = dict(
    hidden_size=512,
    intermediate_size=1376,
    num_hidden_layers=8,
    num_attention_heads=8,
    num_key_value_heads=8,
    vocab_size=8000,
    max_position_embeddings=256,
)
BATCH, SEQ, N_VIRTUAL = 4, 128, 20


def methods():
    """name -> (adapterkit config, PEFT config or None)."""
    import peft

    task = "CAUSAL_LM"
    return {
        "lora": (
            ak.LoRAConfig(rank=16, alpha=32, targets="all-linear"),
            peft.LoraConfig(task_type=task, r=16, lora_alpha=32, target_modules="all-linear"),
        ),
        "ia3": (ak.IA3Config(), peft.IA3Config(task_type=task)),
        "loha": (
            ak.LoHaConfig(rank=8, alpha=8, targets="all-linear"),
            peft.LoHaConfig(task_type=task, r=8, alpha=8, target_modules="all-linear"),
        ),
        "lokr": (
            ak.LoKrConfig(rank=8, alpha=8, targets="all-linear"),
            peft.LoKrConfig(task_type=task, r=8, alpha=8, target_modules="all-linear"),
        ),
        "prompt": (
            ak.PromptTuningConfig(num_virtual_tokens=N_VIRTUAL),
            peft.PromptTuningConfig(task_type=task, num_virtual_tokens=N_VIRTUAL),
        ),
        "p_tuning": (
            ak.PromptEncoderConfig(num_virtual_tokens=N_VIRTUAL, encoder_hidden_size=128),
            peft.PromptEncoderConfig(task_type=task, num_virtual_tokens=N_VIRTUAL, encoder_hidden_size=128),
        ),
        "prefix": (
            ak.PrefixTuningConfig(num_virtual_tokens=N_VIRTUAL),
            peft.PrefixTuningConfig(task_type=task, num_virtual_tokens=N_VIRTUAL),
        ),
        "prefix_mlp": (
            ak.PrefixTuningConfig(num_virtual_tokens=N_VIRTUAL, projection=True, encoder_hidden_size=128),
            peft.PrefixTuningConfig(
                task_type=task, num_virtual_tokens=N_VIRTUAL, prefix_projection=True, encoder_hidden_size=128
            ),
        ),
        "adalora": (
            ak.AdaLoRAConfig(init_r=12, target_r=8, total_step=1000, alpha=32, targets="all-linear"),
            peft.AdaLoraConfig(
                task_type=task, init_r=12, target_r=8, total_step=1000, lora_alpha=32, target_modules="all-linear"
            ),
        ),
        "vera": (
            ak.VeRAConfig(rank=256, targets="all-linear"),
            peft.VeraConfig(task_type=task, r=256, target_modules="all-linear"),
        ),
        "ln_tuning": (ak.LNTuningConfig(), peft.LNTuningConfig(task_type=task)),
        "oft": (
            ak.OFTConfig(block_size=32, targets="all-linear"),
            peft.OFTConfig(task_type=task, oft_block_size=32, target_modules="all-linear"),
        ),
        "boft": (
            ak.BOFTConfig(block_size=4, targets="all-linear"),
            peft.BOFTConfig(task_type=task, boft_block_size=4, target_modules="all-linear"),
        ),
        "houlsby": (ak.BottleneckConfig(preset="houlsby", reduction_factor=16), None),
        "pfeiffer": (ak.BottleneckConfig(preset="pfeiffer", reduction_factor=16), None),
        "parallel": (ak.BottleneckConfig(preset="parallel", reduction_factor=16, scale=4.0), None),
        "compacter": (ak.CompacterConfig(), None),  # AdapterHub's defaults: houlsby, phm_dim 4, rank 1, rf 32
        "compacter_pp": (ak.CompacterConfig(preset="pfeiffer"), None),
        "loreft": (ak.LoReFTConfig(rank=4, positions="f7+l7"), None),  # the paper's instruction-tuning setting
    }


def base_model():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(**MODEL)).train()


def _trainable(model) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _file_bytes(save) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        save(tmp)
        return os.path.getsize(os.path.join(tmp, "adapter_model.safetensors"))


def _stepper(model, ids):
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    adaptive = _adaptive(model)

    def step() -> float:
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss = model(input_ids=ids, labels=ids).loss
        (loss if adaptive is None else adaptive[0](loss)).backward()
        optimizer.step()
        if adaptive is not None:
            adaptive[1]()
        return time.perf_counter() - start

    return step


def _adaptive(model):
    """AdaLoRA's extra work in a step, both libraries: (loss -> loss with the orthogonality penalty,
    the rank allocation after the optimizer step); None for other methods."""
    count = [0]

    def after(allocate):
        count[0] += 1
        allocate(count[0])

    if hasattr(model, "base_model") and hasattr(model.base_model, "update_and_allocate"):
        return (lambda loss: loss), lambda: after(model.base_model.update_and_allocate)  # PEFT adds the penalty
    if ak.adapter_names(model) and ak.adapter_config(model, "default").method == "adalora":
        allocator = ak.RankAllocator(model)
        return (lambda loss: loss + ak.orthogonality(model)), lambda: after(lambda k: allocator.step(model, k))
    return None


def measure(name, ours_cfg, peft_cfg, base, ids, steps: int) -> dict:
    ours = ak.attach(copy.deepcopy(base), ours_cfg)
    row = {
        "method": name,
        "ak_params": ak.summary(ours).trainable,
        "ak_file": _file_bytes(lambda d: ak.save_adapter(ours, d)),
    }
    runs = {"ak": (_stepper(ours, ids), [])}
    if peft_cfg is not None:
        import peft

        theirs = peft.get_peft_model(copy.deepcopy(base), peft_cfg).train()
        row.update(peft_params=_trainable(theirs), peft_file=_file_bytes(theirs.save_pretrained))
        runs["peft"] = (_stepper(theirs, ids), [])
    for i in range(steps + 2):
        order = list(runs) if i % 2 == 0 else list(reversed(runs))
        for lib in order:
            took = runs[lib][0]()
            if i >= 2:
                runs[lib][1].append(took)
    for lib, (_, times) in runs.items():
        row[f"{lib}_ms"] = 1000 * statistics.median(times)
        row[f"{lib}_min_ms"] = 1000 * min(times)
    return row


def table(rows) -> str:
    lines = [
        "| method | trainable (ak) | trainable (PEFT) | file (ak) | file (PEFT) | step ak | step PEFT | ratio "
        "| ratio of fastest steps |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        peft_ms = r.get("peft_ms")
        cells = [
            r["method"],
            f"{r['ak_params']:,}",
            f"{r['peft_params']:,}" if "peft_params" in r else "-",
            f"{r['ak_file'] / 1024:.1f} KiB",
            f"{r['peft_file'] / 1024:.1f} KiB" if "peft_file" in r else "-",
            f"{r['ak_ms']:.0f} ms",
            f"{peft_ms:.0f} ms" if peft_ms else "-",
            f"{r['ak_ms'] / peft_ms:.2f}" if peft_ms else "-",
            f"{r['ak_min_ms'] / r['peft_min_ms']:.2f}" if peft_ms else "-",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--methods", nargs="*", default=None, help="subset of method names")
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", os.cpu_count() or 1)))
    all_methods = methods()
    chosen = args.methods or list(all_methods)
    base = base_model()
    ids = torch.randint(0, MODEL["vocab_size"], (BATCH, SEQ), generator=torch.Generator().manual_seed(1))
    rows = []
    for name in chosen:
        rows.append(measure(name, *all_methods[name], base, ids, args.steps))
        print(f"{name}: {rows[-1]}", file=sys.stderr, flush=True)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {BATCH}x{SEQ}, "
        f"{sum(p.numel() for p in base.parameters()) / 1e6:.1f}M parameters"
    )
    print(table(rows))


if __name__ == "__main__":
    main()

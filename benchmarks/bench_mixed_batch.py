"""Mixed-adapter batches on CPU: adapterkit's ``adapter_names=`` against PEFT's, same weights, one process.

Model: Llama-shaped from a config (hidden 512, intermediate 1376, 4 layers, 8 heads, vocab 8000),
fp32, eval mode, ``torch.inference_mode``; LoRA rank 16 / alpha 32 on every linear layer; 4 and 16
adapters with the same A / B tensors in both libraries (adapterkit's copied into PEFT's modules).
A batch of 32 x 64 tokens, row i using adapter i mod n ("mixed"), against the same batch with one
adapter for every row ("single": the ordinary forward with that adapter active) and the base model.
Forwards only. Every model runs in turn, the order reversed every other round; medians of
``--rounds`` rounds, and the median of per-round ratios ("paired").

    python benchmarks/bench_mixed_batch.py                      # about 5 minutes on 2 busy cores
    python benchmarks/bench_mixed_batch.py --adapters 4 --rounds 3
    python benchmarks/bench_mixed_batch.py --threads 1 --clock cpu --json out.json
    python benchmarks/bench_mixed_batch.py --seq 16 --generate 16  # greedy decoding instead

Targets: mixed >= 2x PEFT's mixed throughput at 16 adapters; mixed within 1.3x of single.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see bench_lora.py: spinning waits on a shared machine

import torch  # noqa: E402

import adapterkit as ak  # noqa: E402
from adapterkit.inject import adapter_layers  # noqa: E402

MODEL = dict(
    hidden_size=512,
    intermediate_size=1376,
    num_hidden_layers=4,
    num_attention_heads=8,
    num_key_value_heads=8,
    vocab_size=8000,
    max_position_embeddings=128,
)
BATCH, SEQ, RANK, ALPHA = 32, 64, 16, 32
CLOCK = {"wall": time.perf_counter, "cpu": time.process_time}


def base_model():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(**MODEL)).eval()


def names_of(n: int) -> list[str]:
    return [f"task{i}" for i in range(n)]


def build(n: int):
    """(adapterkit model, PEFT model): the same base and the same n adapters."""
    from peft import LoraConfig, get_peft_model

    ours = base_model()
    cfg = ak.LoRAConfig(rank=RANK, alpha=ALPHA, targets="all-linear", init="random")
    peft_cfg = LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules="all-linear", init_lora_weights=False)
    theirs = get_peft_model(base_model(), peft_cfg, adapter_name=names_of(n)[0])
    for name in names_of(n):
        ak.attach(ours, cfg, name=name)
        if name not in theirs.peft_config:
            theirs.add_adapter(name, peft_cfg)
    _copy(ours, theirs, names_of(n))
    ak.set_active(ours, names_of(n)[0])
    theirs.set_adapter(names_of(n)[0])
    return ours.eval(), theirs.eval()


@torch.no_grad()
def _copy(ours, theirs, names) -> None:
    inner = theirs.base_model.model
    for layer_name, layer in adapter_layers(ours):
        target = inner.get_submodule(layer_name)
        for name in names:
            target.lora_A[name].weight.copy_(layer.adapters[name].a)
            target.lora_B[name].weight.copy_(layer.adapters[name].b)


def runs_for(n: int, ours, theirs, ids, new_tokens: int) -> dict:
    """The four timed calls for n adapters: forwards, or ``generate`` of ``new_tokens`` tokens."""
    names = [names_of(n)[i % n] for i in range(BATCH)]
    if not new_tokens:
        return {
            (n, "adapterkit", "mixed"): lambda: ours(input_ids=ids, adapter_names=names),
            (n, "peft", "mixed"): lambda: theirs(input_ids=ids, adapter_names=names),
            (n, "adapterkit", "single"): lambda: ours(input_ids=ids),
            (n, "peft", "single"): lambda: theirs(input_ids=ids),
        }
    kw = generate_kwargs(new_tokens)

    def ours_mixed():
        with ak.mixed_batch(ours, names):  # generate cannot take adapter_names itself (rows.py)
            return ours.generate(ids, **kw)

    return {
        (n, "adapterkit", "mixed"): ours_mixed,
        (n, "peft", "mixed"): lambda: theirs.generate(input_ids=ids, adapter_names=names, **kw),
        (n, "adapterkit", "single"): lambda: ours.generate(ids, **kw),
        (n, "peft", "single"): lambda: theirs.generate(input_ids=ids, **kw),
    }


def generate_kwargs(new_tokens: int) -> dict:
    return dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, pad_token_id=0)


def check_equal(runs: dict, n: int) -> str:
    """How far adapterkit's mixed result is from PEFT's: logits, or generated tokens."""
    with torch.inference_mode():
        a, b = runs[(n, "adapterkit", "mixed")](), runs[(n, "peft", "mixed")]()
    if isinstance(a, torch.Tensor):
        return f"generated tokens equal: {torch.equal(a, b)}"
    return f"max |adapterkit - PEFT| of the mixed logits = {(a.logits - b.logits).abs().max().item():.2e}"


def alternate(runs: dict, rounds: int, warmup: int, clock) -> dict:
    keys = list(runs)
    with torch.inference_mode():
        for _ in range(warmup):
            for key in keys:
                runs[key]()
        times = {key: [] for key in keys}
        for i in range(rounds):
            for key in keys if i % 2 == 0 else keys[::-1]:
                start = clock()
                runs[key]()
                times[key].append(clock() - start)
    return times


def paired(times, a, b) -> float:
    return statistics.median(x / y for x, y in zip(times[a], times[b]))


def report(times: dict, counts: list[int], seq: int, new_tokens: int) -> dict:
    med = {k: statistics.median(v) for k, v in times.items()}
    base = med[("base",)]
    what = f"generate {new_tokens} tokens after" if new_tokens else "forward of"
    print(f"\nbase model (no adapters): {base * 1e3:.1f} ms to {what} a batch of {BATCH} x {seq}")
    print(
        "| adapters | adapterkit mixed | PEFT mixed | adapterkit single | PEFT single | "
        "PEFT mixed / ak mixed (>= 2) | ak mixed / ak single (<= 1.3) |"
    )
    print("|---|---|---|---|---|---|---|")
    out = {"base_ms": base * 1e3, "seq": seq, "new_tokens": new_tokens, "rows": []}
    for n in counts:
        k = lambda lib, kind: (n, lib, kind)  # noqa: E731, B023  (used in this iteration)
        speedup = med[k("peft", "mixed")] / med[k("adapterkit", "mixed")]
        overhead = med[k("adapterkit", "mixed")] / med[k("adapterkit", "single")]
        row = {
            "adapters": n,
            **{
                f"{lib}_{kind}_ms": med[k(lib, kind)] * 1e3
                for lib in ("adapterkit", "peft")
                for kind in ("mixed", "single")
            },
            "speedup_vs_peft": speedup,
            "speedup_paired": paired(times, k("peft", "mixed"), k("adapterkit", "mixed")),
            "mixed_over_single": overhead,
            "mixed_over_single_paired": paired(times, k("adapterkit", "mixed"), k("adapterkit", "single")),
        }
        out["rows"].append(row)
        print(
            f"| {n} | {row['adapterkit_mixed_ms']:.1f} ms | {row['peft_mixed_ms']:.1f} ms | "
            f"{row['adapterkit_single_ms']:.1f} ms | {row['peft_single_ms']:.1f} ms | "
            f"**{speedup:.2f}x** (paired {row['speedup_paired']:.2f}) | "
            f"**{overhead:.2f}x** (paired {row['mixed_over_single_paired']:.2f}) |"
        )
    return out


def versions() -> dict:
    import peft
    import transformers

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "adapterkit": ak.__version__,
        "machine": platform.machine(),
        "processor": platform.processor() or "?",
        "cpus": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "load_average": os.getloadavg(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--adapters", default="4,16", help="comma-separated adapter counts")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--seq", type=int, default=SEQ, help="tokens per row (1: the shape of a decoding step)")
    parser.add_argument(
        "--generate",
        type=int,
        default=0,
        metavar="N",
        help="time greedy generate of N new tokens instead of one forward",
    )
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--clock", choices=CLOCK, default="wall")
    parser.add_argument("--json", default=None, help="write the figures here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    counts = [int(c) for c in args.adapters.split(",")]
    info = versions()
    print(" ".join(f"{k}={v}" for k, v in info.items()))
    ids = torch.randint(0, MODEL["vocab_size"], (BATCH, args.seq), generator=torch.Generator().manual_seed(1))
    runs, base = {}, base_model()
    if args.generate:
        runs[("base",)] = lambda: base.generate(ids, **generate_kwargs(args.generate))
    else:
        runs[("base",)] = lambda: base(input_ids=ids)
    for n in counts:
        ours, theirs = build(n)
        new = runs_for(n, ours, theirs, ids, args.generate)
        print(f"{n} adapters: {check_equal(new, n)}")
        runs.update(new)
    times = alternate(runs, args.rounds, args.warmup, CLOCK[args.clock])
    out = report(times, counts, args.seq, args.generate)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "versions": info,
                    "args": vars(args),
                    **out,
                    "times": {" ".join(map(str, k)): v for k, v in times.items()},
                },
                f,
                indent=1,
            )


if __name__ == "__main__":
    sys.exit(main())

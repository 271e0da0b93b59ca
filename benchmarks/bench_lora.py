"""LoRA / DoRA on CPU: adapterkit against PEFT, side by side, on the same weights.

Model: Llama-shaped (hidden 512, intermediate 1376, 8 layers, 8 heads, vocab 8000), batch 4 x 128,
rank 16 / alpha 32 on every linear layer; variants plain, dropout 0.1 and DoRA.

- step:   forward + backward + AdamW; the six models (two libraries x three variants) run in
          turn in one process, the order flipping each round; medians, the ratio adapterkit /
          PEFT of the medians, and the median of the per-round ratios ("paired").
- memory: bytes in use (glibc mallinfo2, MALLOC_MMAP_THRESHOLD_=65536 so large blocks are
          counted exactly) after a training forward minus before it: the activations kept for
          backward. A fresh process per library and variant.
- infer:  inference forward (eval, no_grad) of the unmerged model against the merged one.

    python benchmarks/bench_lora.py                    # everything (5-10 minutes on 2 busy cores)
    python benchmarks/bench_lora.py --part step --steps 5 --variants plain,dora
    python benchmarks/bench_lora.py --part step --threads 1 --clock cpu   # steadier when shared
    python benchmarks/bench_lora.py --part step --compile --threads 1 --clock cpu   # compiled models
    python benchmarks/bench_lora.py --part memory --compile                         # compiled, memory
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import subprocess
import sys
import time

# On a shared machine, spinning OpenMP threads that wait for a descheduled partner make a
# 2-thread step 5-10x slower; passive waiting keeps timings meaningful. Both libraries run
# under the same setting. Set OMP_WAIT_POLICY yourself to override.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lora_setup as S  # noqa: E402

MIB = 2**20
CLOCK = {"wall": time.perf_counter, "cpu": time.process_time}
_clock = time.perf_counter


def _timed(fn) -> float:
    start = _clock()
    fn()
    return _clock() - start


def _alternate(runs: dict, rounds: int, warmup: int) -> tuple[dict, dict]:
    """Median seconds per named callable, run in turn (order reversed every other round),
    and every round's time per name."""
    names = list(runs)
    for _ in range(warmup):
        for name in names:
            runs[name]()
    times = {name: [] for name in names}
    for i in range(rounds):
        for name in names if i % 2 == 0 else names[::-1]:
            times[name].append(_timed(runs[name]))
    return {name: statistics.median(t) for name, t in times.items()}, times


def _paired(times: dict, a, b) -> float:
    """Median over rounds of a's time / b's time in the same round (robust to load drifting)."""
    return statistics.median(x / y for x, y in zip(times[a], times[b]))


def bench_step(variants, rounds: int, warmup: int, compile_: bool = False) -> dict:
    """All models of all variants in one loop, so every ratio comes from the same run.

    ``compile_``: each model's forward runs through ``torch.compile`` (inductor), the first warm-up
    step compiling it. Six models share transformers' code objects, so the recompile limit is raised
    (else the later models would silently run eager)."""
    ids = S.batch()
    base = S.base_model()
    if compile_:
        import torch._dynamo

        torch._dynamo.config.recompile_limit = 64
        torch._dynamo.config.accumulated_recompile_limit = 4096
    runs = {}
    for variant in variants:
        for lib, model in zip(("adapterkit", "peft"), S.pair(variant, base)):
            opt = S.optimizer(model)
            forward = torch.compile(model) if compile_ else model
            runs[(variant, lib)] = lambda f=forward, opt=opt: S.train_step(f, opt, ids)
    med, times = _alternate(runs, rounds, warmup)
    ref = med.get(("plain", "peft"))
    out = {}
    for variant in variants:
        ours, theirs = med[(variant, "adapterkit")], med[(variant, "peft")]
        out[variant] = {
            "adapterkit": ours,
            "peft": theirs,
            "ratio": ours / theirs,
            "paired_ratio": _paired(times, (variant, "adapterkit"), (variant, "peft")),
        }
        if ref:
            out[variant].update(adapterkit_vs_peft_plain=ours / ref, peft_vs_peft_plain=theirs / ref)
        line = (
            f"step {variant:8s} adapterkit {ours * 1e3:7.1f} ms  peft {theirs * 1e3:7.1f} ms  "
            f"ratio {ours / theirs:.3f} (paired {out[variant]['paired_ratio']:.3f})"
        )
        if ref:
            line += f"  (vs PEFT plain: adapterkit {ours / ref:.3f}, peft {theirs / ref:.3f})"
        print(line, flush=True)
    return out


def memory_child(lib: str, variant: str, repeats: int = 3, compile_: bool = False) -> dict:
    """Activation bytes held by one training forward (run in a fresh process); ``compile_``: of the
    ``torch.compile``'d model (compiled by the first, untimed step)."""
    ids = S.batch()
    model = S.one(lib, variant)
    forward = torch.compile(model) if compile_ else model
    opt = S.optimizer(model)
    S.train_step(forward, opt, ids)  # optimizer state and every lazy buffer exist from here on
    opt.zero_grad(set_to_none=True)
    held = []
    for _ in range(repeats):
        before = S.bytes_in_use()
        loss = forward(input_ids=ids, labels=ids).loss
        held.append(S.bytes_in_use() - before)
        loss.backward()
        opt.zero_grad(set_to_none=True)
        del loss
    return {"held_mib": statistics.median(held) / MIB}


def bench_memory(variants, compile_: bool = False) -> dict:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    jobs = [("full", "plain")] + [(lib, v) for v in variants for lib in ("adapterkit", "peft")]
    out = {}
    for lib, variant in jobs:
        short = {"adapterkit": "ak"}.get(lib, lib)
        cmd = [sys.executable, os.path.abspath(__file__), "--memory-child", short, variant]
        cmd += ["--compile"] if compile_ else []
        res = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
        held = json.loads(res.stdout.strip().splitlines()[-1])["held_mib"]
        key = "full" if lib == "full" else variant
        out.setdefault(key, {})[lib] = held
        print(f"memory {key:8s} {lib:10s} {held:7.1f} MiB", flush=True)
    for variant in variants:
        out[variant]["ratio"] = out[variant]["adapterkit"] / out[variant]["peft"]
    return out


def bench_infer(rounds: int, warmup: int, variant: str = "plain") -> dict:
    """Unmerged / merged inference time, adapterkit and PEFT (same weights, eval, no_grad)."""
    import adapterkit as ak

    ids = S.batch()
    ours, theirs = S.pair(variant)
    ours.eval(), theirs.eval()
    ours_merged = ak.merge(copy.deepcopy(ours))
    theirs_merged = copy.deepcopy(theirs).merge_and_unload()

    def run(model):
        def go():
            with torch.no_grad():
                model(input_ids=ids)

        return go

    med, _ = _alternate(
        {
            "adapterkit": run(ours),
            "adapterkit_merged": run(ours_merged),
            "peft": run(theirs),
            "peft_merged": run(theirs_merged),
        },
        rounds,
        warmup,
    )
    med["adapterkit_ratio"] = med["adapterkit"] / med["adapterkit_merged"]
    med["peft_ratio"] = med["peft"] / med["peft_merged"]
    print(
        f"infer {variant}: adapterkit unmerged/merged {med['adapterkit_ratio']:.3f} "
        f"({med['adapterkit'] * 1e3:.1f} / {med['adapterkit_merged'] * 1e3:.1f} ms); "
        f"peft {med['peft_ratio']:.3f} ({med['peft'] * 1e3:.1f} / {med['peft_merged'] * 1e3:.1f} ms)",
        flush=True,
    )
    return med


def _conditions(threads: int) -> dict:
    import peft
    import transformers

    return {
        "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "threads": threads,
        "load_avg": os.getloadavg(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
    }


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--part", choices=("all", "step", "memory", "infer"), default="all")
    p.add_argument("--variants", default="plain,dropout,dora", help="comma-separated: plain,dropout,dora")
    p.add_argument("--steps", type=int, default=15, help="timed rounds per variant (each runs both)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument(
        "--clock",
        choices=tuple(CLOCK),
        default="wall",
        help="wall: elapsed time; cpu: this process's CPU time (steadier on a busy machine)",
    )
    p.add_argument("--compile", action="store_true", help="step and memory parts with torch.compile'd models")
    p.add_argument("--json", help="also write the results to this file")
    p.add_argument("--memory-child", nargs=2, metavar=("LIB", "VARIANT"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    global _clock
    _clock = CLOCK[args.clock]
    if args.memory_child:
        print(json.dumps(memory_child(*args.memory_child, compile_=args.compile)))
        return
    variants = [v for v in args.variants.split(",") if v]
    for v in variants:
        if v not in S.VARIANTS:
            p.error(f"unknown variant {v!r}; choose from {', '.join(S.VARIANTS)}")
    results = {"conditions": dict(_conditions(args.threads), clock=args.clock, compile=args.compile)}
    print(results["conditions"], flush=True)
    if args.part in ("all", "step"):
        results["step"] = bench_step(variants, args.steps, max(args.warmup, 2 if args.compile else 0), args.compile)
    if args.part in ("all", "memory"):
        results["memory"] = bench_memory(variants, args.compile)
    if args.part in ("all", "infer"):
        results["infer"] = bench_infer(2 * args.steps, args.warmup)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()

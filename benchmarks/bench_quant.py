"""4-bit quantized linear layer and QLoRA training step: adapterkit against bitsandbytes (+ PEFT).

Part ``layer``: forward and forward+backward of one layer, M tokens x (K -> N), with and without a
rank-16 LoRA branch, for the contenders of quant_setup.py. On CUDA: bf16, Triton kernels, medians
of ``triton.testing.do_bench``; M in {1, 16, 512, 4096}, (K, N) in {(4096, 4096), (4096, 14336),
(14336, 4096)}. On CPU: fp32 (or --dtype), adapterkit as ``auto`` runs it (the C++ kernel up to
``qmatmul_cpu.SMALL_M`` rows, the PyTorch reference above), on the reference alone and on the C++
kernel alone (where ``auto`` should switch), against bitsandbytes' CPU code, medians of --reps
runs (perf_counter); by default the (4096, 4096) shape and M in {1, 4, 16, 512}. The crossover:

    OMP_NUM_THREADS=1 python benchmarks/bench_quant.py --part layer --no-bnb --reps 5 \
        --m 16 32 64 96 128 --shapes 4096x4096 576x1536 1536x576 576x576

Part ``step``: one QLoRA training step (rank 16 all-linear, gradient checkpointing, AdamW) of a
Llama-shaped model, adapterkit vs PEFT + bitsandbytes, each in a fresh process: tokens/s and peak
memory (CUDA: allocated; CPU: the process's peak resident set, model load included). CUDA preset:
about 1.1B parameters, bf16, batch 4 x 1024. CPU presets, fp32: ``cpu`` (a small Llama) and
``smollm2`` (SmolLM2-135M's shapes, batch 4 x 128).

    python benchmarks/bench_quant.py --part layer            # tables on stdout, --json FILE to keep them
    python benchmarks/bench_quant.py --part step
    OMP_NUM_THREADS=1 python benchmarks/bench_quant.py --part step --preset smollm2 --steps 3

Part ``step-paired``: the same step, both libraries in one process, their steps alternating; the
median and range of the per-pair time ratios (adapterkit / PEFT), --steps pairs. Use it for time on
a machine whose speed drifts; --part step for memory.

    OMP_NUM_THREADS=1 python benchmarks/bench_quant.py --part step-paired --preset smollm2 --steps 8

Part ``generate``: greedy generation (batch 1, a 16-token prompt, --new-tokens) with the preset's
QLoRA model in eval mode: ms per new token for adapterkit (``auto``: on CPU the C++ kernel for these
few rows), adapterkit on the reference alone, and PEFT + bitsandbytes, runs alternating in one process,
timed in process CPU seconds (so use one thread: OMP_NUM_THREADS=1).

    OMP_NUM_THREADS=1 python benchmarks/bench_quant.py --part generate --preset smollm2 --steps 5
    OMP_NUM_THREADS=1 python benchmarks/bench_quant.py --part generate --preset smollm2 --steps 5 --dtype bfloat16
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import quant_setup as S  # noqa: E402
from model_shapes import SMOLLM2_135M  # noqa: E402

CUDA = torch.cuda.is_available()
SHAPES = [(4096, 4096), (4096, 14336), (14336, 4096)]


def _sync():
    if CUDA:
        torch.cuda.synchronize()


def time_ms(fn, reps: int) -> float:
    """Median milliseconds of fn(): do_bench on CUDA, perf_counter medians on CPU."""
    if CUDA:
        import triton.testing

        return float(triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median"))
    fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def _runner(contender, x, training: bool):
    """A no-argument callable: forward (no_grad) or forward + backward."""
    if not training:

        def run():
            with torch.no_grad():
                contender(x)

        return run
    dy = None

    def run():
        nonlocal dy
        y = contender(x)
        dy = torch.ones_like(y) if dy is None else dy
        y.backward(dy)

    return run


def bench_layer(args) -> list:
    device, dtype = ("cuda", torch.bfloat16) if CUDA else ("cpu", torch.float32)
    dtype = getattr(torch, args.dtype) if args.dtype else dtype
    backend = "triton" if CUDA else "auto"
    rows = []
    for k, n in args.shapes:
        layer = S.Layer(k, n, args.rank, device, dtype, need_bnb=not args.no_bnb)
        for lora in (False, True):
            for training in (False, True):
                contenders = S.builders(layer, lora, training, backend, not args.no_bnb)
                for m in args.m:
                    x = torch.randn(m, k, device=device, dtype=dtype, requires_grad=training)
                    row = {"mode": "fwd+bwd" if training else "fwd", "lora": lora, "M": m, "K": k, "N": n}
                    for name, contender in contenders.items():
                        row[name] = round(time_ms(_runner(contender, x, training), args.reps), 4)
                        layer.a.grad = layer.b.grad = None
                    rows.append(row)
                    print(json.dumps(row), flush=True)
        del layer
    return rows


def layer_table(rows: list) -> str:
    names = [
        "adapterkit",
        "adapterkit_reference",
        "adapterkit_cpu_kernel",
        "bnb_dequant",
        "bnb_matmul_4bit",
        "peft_bnb",
        "dense",
    ]
    names = [n for n in names if any(n in r for r in rows)]
    head = (
        "| mode | LoRA | M | K x N | "
        + " | ".join(f"{n} ms" for n in names)
        + " | dense / adapterkit | peft_bnb / adapterkit |"
    )
    lines = [head, "|" + "---|" * (len(names) + 6)]
    dense_ms = {(r["mode"], r["M"], r["K"], r["N"]): r.get("dense") for r in rows if not r["lora"]}
    for r in rows:
        cells = [f"{r[n]:.3f}" if n in r else "" for n in names]
        floor = dense_ms.get((r["mode"], r["M"], r["K"], r["N"]))
        ratio_dense = f"{floor / r['adapterkit']:.2f}x" if floor else ""
        ratio_peft = f"{r['peft_bnb'] / r['adapterkit']:.2f}x" if "peft_bnb" in r else ""
        lines.append(
            f"| {r['mode']} | {'r16' if r['lora'] else '-'} | {r['M']} | {r['K']} x {r['N']} | "
            + " | ".join(cells)
            + f" | {ratio_dense} | {ratio_peft} |"
        )
    return "\n".join(lines)


# -- the training step ------------------------------------------------------------------------------
PRESETS = {
    "1b": dict(
        config=dict(
            hidden_size=2048,
            intermediate_size=5632,
            num_hidden_layers=22,
            num_attention_heads=32,
            num_key_value_heads=4,
            vocab_size=32000,
            max_position_embeddings=2048,
        ),
        batch=4,
        seq=1024,
        dtype="bfloat16",
    ),
    "smollm2": dict(  # SmolLM2-135M's shapes (random weights: the speed does not depend on them)
        config=SMOLLM2_135M,
        batch=4,
        seq=128,
        dtype="float32",
    ),
    "cpu": dict(
        config=dict(
            hidden_size=256,
            intermediate_size=704,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=2,
            vocab_size=1000,
            max_position_embeddings=256,
        ),
        batch=2,
        seq=128,
        dtype="float32",
    ),
}


def _save_model(preset: dict, folder: str) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    if os.path.exists(os.path.join(folder, "config.json")):
        return
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**preset["config"])).to(getattr(torch, preset["dtype"]))
    model.save_pretrained(folder)


def _load(lib: str, folder: str, dtype: torch.dtype, device: str):
    from transformers import AutoModelForCausalLM

    if lib == "adapterkit":
        import adapterkit as ak

        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).to(device)
        ak.quantize(model, bits=4, quant_type="nf4", double_quant=True, compute_dtype=dtype)
        ak.prepare_for_kbit_training(model)
        return ak.attach(model, ak.LoRAConfig(rank=16, alpha=32, targets="all-linear"))
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import BitsAndBytesConfig

    quant = BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=dtype
    )
    model = AutoModelForCausalLM.from_pretrained(folder, quantization_config=quant, dtype=dtype, device_map=device)
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=True)
    return get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear"))


def _trainer(lib: str, preset: dict, folder: str):
    """(step, trainable parameters): one library's model on ``folder``, ready to train."""
    device, dtype = ("cuda" if CUDA else "cpu"), getattr(torch, preset["dtype"])
    model = _load(lib, folder, dtype, device)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    ids = torch.randint(0, preset["config"]["vocab_size"], (preset["batch"], preset["seq"]), device=device)

    def step():
        start = time.perf_counter()
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        _sync()
        return time.perf_counter() - start

    for _ in range(2):
        step()
    return step, params


def step_child(args) -> dict:
    """One library's training steps in this process; prints one JSON line."""
    preset = PRESETS[args.preset]
    step, params = _trainer(args.lib, preset, args.folder)
    if CUDA:
        torch.cuda.reset_peak_memory_stats()
    median = statistics.median(step() for _ in range(args.steps))
    out = {
        "lib": args.lib,
        "preset": args.preset,
        "step_s": round(median, 4),
        "tokens_per_s": round(preset["batch"] * preset["seq"] / median, 1),
        "trainable": sum(p.numel() for p in params),
    }
    if CUDA:
        out["peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 3)
    else:  # the process's peak resident set, model load included
        import resource

        out["peak_gib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3)
    print("RESULT " + json.dumps(out), flush=True)
    return out


def step_paired(args) -> list:
    """Both libraries in this process, their steps alternating (ABBA): each pair's time ratio.

    A shared machine whose speed drifts by 10% over minutes moves separate runs' ratio by as much;
    it moves the ratio of two steps taken back to back far less. Memory needs --part step.
    """
    preset_name, folder = _preset_and_folder(args)
    steps = {lib: _trainer(lib, PRESETS[preset_name], folder)[0] for lib in ("adapterkit", "peft")}
    times = {"adapterkit": [], "peft": []}
    for i in range(args.steps):
        for lib in ("adapterkit", "peft") if i % 2 == 0 else ("peft", "adapterkit"):
            times[lib].append(steps[lib]())
    ratios = sorted(a / p for a, p in zip(times["adapterkit"], times["peft"]))
    row = {
        "preset": preset_name,
        "pairs": args.steps,
        "adapterkit_step_s": round(statistics.median(times["adapterkit"]), 4),
        "peft_step_s": round(statistics.median(times["peft"]), 4),
        "time_ratio_median": round(statistics.median(ratios), 3),
        "time_ratio_range": [round(ratios[0], 3), round(ratios[-1], 3)],
    }
    print(json.dumps(row), flush=True)
    return [row]


def bench_generate(args) -> list:
    """Greedy generation, batch 1, with the QLoRA model of a preset (LoRA attached, eval mode): time per
    new token for adapterkit as ``auto`` runs it, adapterkit on the reference alone, and PEFT +
    bitsandbytes, in one process, the runs alternating; --steps rounds, medians. Timed in CPU seconds
    of this process (``time.process_time``): on a shared machine wall time swings with other jobs."""
    from adapterkit_kernels import ops

    preset_name, folder = _preset_and_folder(args)
    preset, device = PRESETS[preset_name], ("cuda" if CUDA else "cpu")
    dtype = getattr(torch, args.dtype or preset["dtype"])
    models = {lib: _load(lib, folder, dtype, device).eval() for lib in ("adapterkit", "peft")}
    prompt = torch.randint(0, preset["config"]["vocab_size"], (1, 16), device=device)
    runs = {
        "adapterkit": ("adapterkit", "auto"),
        "adapterkit_reference": ("adapterkit", "reference"),
        "peft_bnb": ("peft", "auto"),
    }

    def per_token(name) -> float:
        lib, backend = runs[name]
        with ops.use_backend(backend), torch.no_grad():
            start = time.process_time()
            out = models[lib].generate(
                input_ids=prompt,
                max_new_tokens=args.new_tokens,
                min_new_tokens=args.new_tokens,
                do_sample=False,
                use_cache=True,
                pad_token_id=0,
            )
            _sync()
        assert out.shape[1] == prompt.shape[1] + args.new_tokens
        return (time.process_time() - start) / args.new_tokens

    for name in runs:  # warm-up: builds, repacks, allocator
        per_token(name)
    times = {name: [] for name in runs}
    for i in range(args.steps):
        for name in runs if i % 2 == 0 else reversed(list(runs)):
            times[name].append(per_token(name))
    row = {"preset": preset_name, "dtype": str(dtype)[6:], "new_tokens": args.new_tokens, "rounds": args.steps}
    row.update({f"{name}_ms_per_token": round(1e3 * statistics.median(t), 2) for name, t in times.items()})
    ratios = sorted(a / p for a, p in zip(times["adapterkit"], times["peft_bnb"]))  # per round: drift cancels
    row["time_ratio_vs_peft_bnb"] = round(statistics.median(ratios), 3)
    row["time_ratio_range"] = [round(ratios[0], 3), round(ratios[-1], 3)]
    print(json.dumps(row), flush=True)
    return [row]


def _preset_and_folder(args) -> tuple[str, str]:
    """The preset asked for (by device when none) and the folder its saved model is in."""
    preset = args.preset or ("1b" if CUDA else "cpu")
    folder = args.folder or os.path.join(os.environ.get("TMPDIR", "/tmp"), f"adapterkit_bench_{preset}")
    _save_model(PRESETS[preset], folder)
    return preset, folder


def bench_step(args) -> list:
    preset, folder = _preset_and_folder(args)
    rows = []
    for lib in ("adapterkit", "peft"):
        cmd = [
            sys.executable,
            os.path.abspath(__file__),
            "--part",
            "step-child",
            "--lib",
            lib,
            "--preset",
            preset,
            "--folder",
            folder,
            "--steps",
            str(args.steps),
        ]
        done = subprocess.run(cmd, capture_output=True, text=True)
        lines = [ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")]
        if done.returncode or not lines:
            raise SystemExit(f"{lib} step failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
        rows.append(json.loads(lines[-1][7:]))
        print(json.dumps(rows[-1]), flush=True)
    return rows


def step_table(rows: list) -> str:
    a, p = rows
    mem = f" | {a['peak_gib']} | {p['peak_gib']} | {a['peak_gib'] / p['peak_gib']:.2f}x" if "peak_gib" in a else ""
    head = (
        "| preset | adapterkit tok/s | PEFT+bnb tok/s | speed-up"
        + (" | adapterkit GiB | PEFT+bnb GiB | memory ratio" if mem else "")
        + " |"
    )
    return "\n".join(
        [
            head,
            "|" + "---|" * (7 if mem else 4),
            f"| {a['preset']} | {a['tokens_per_s']} | {p['tokens_per_s']} | "
            f"{a['tokens_per_s'] / p['tokens_per_s']:.2f}x{mem} |",
        ]
    )


def machine() -> dict:
    import transformers

    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "device": torch.cuda.get_device_name() if CUDA else platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
    }
    for name in ("triton", "bitsandbytes", "peft"):
        try:
            info[name] = __import__(name).__version__
        except ImportError:
            info[name] = None
    return info


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=["layer", "step", "step-paired", "step-child", "generate"], default="layer")
    parser.add_argument("--new-tokens", type=int, default=32, help="generate: new tokens per run")
    parser.add_argument("--m", type=int, nargs="+", default=[1, 16, 512, 4096] if CUDA else [1, 4, 16, 512])
    parser.add_argument(
        "--shapes",
        type=lambda s: tuple(int(v) for v in s.split("x")),
        nargs="+",
        default=SHAPES if CUDA else SHAPES[:1],
        help="K x N pairs, e.g. 4096x14336",
    )
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument(
        "--dtype",
        choices=["float32", "bfloat16"],
        help="layer, generate: compute dtype (default: layer bf16 on CUDA, fp32 on CPU; generate the preset's)",
    )
    parser.add_argument("--reps", type=int, default=3, help="CPU timing runs per case (median)")
    parser.add_argument("--no-bnb", action="store_true", help="adapterkit and dense only")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--preset", choices=list(PRESETS))
    parser.add_argument("--lib", choices=["adapterkit", "peft"])
    parser.add_argument("--folder")
    parser.add_argument("--json", help="write the results and the machine here")
    args = parser.parse_args(argv)
    if not args.no_bnb and importlib.util.find_spec("bitsandbytes") is None:
        print("bitsandbytes is not installed: adapterkit and dense only (carry its wheel to compare)", flush=True)
        args.no_bnb = True
    if args.part == "step-child":
        return step_child(args)
    info = machine()
    print(json.dumps(info), flush=True)
    if args.part in ("step-paired", "generate"):
        rows = step_paired(args) if args.part == "step-paired" else bench_generate(args)
    else:
        rows = bench_layer(args) if args.part == "layer" else bench_step(args)
        print()
        print(layer_table(rows) if args.part == "layer" else step_table(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": info, "part": args.part, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()

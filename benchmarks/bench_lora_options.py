"""LoRA options on CPU, adapterkit against PEFT in one process: initialisation time and a training step.

- init:  ``ak.attach`` vs ``get_peft_model`` with init pissa / pissa_niter_4 / olora / loftq, rank 16
         on every linear layer of a SmolLM2-135M-shaped Llama with random weights (hidden 576,
         30 layers, intermediate 1536, 9 heads, 3 kv heads, vocab 49152). Each try gets a fresh copy
         of the base (these inits rewrite it); the libraries alternate, medians of --repeats tries.
         PEFT's LoftQ picks a CUDA / XPU device for its work; here its ``loftq_init`` runs as
         written with that device replaced by the CPU (the same substitution as tests/methods/test_lora_init.py).
- step:  forward + backward + AdamW, rank_pattern / alpha_pattern with bias="all", and lora_bias,
         on a Llama h512 / 8 layers / vocab 8000 with attention and MLP biases, batch 4 x 128 (the
         model of lora_cpu.md plus biases); PEFT gets the same weights through adapterkit's files.
         The two alternate; the median of per-round ratios is reported.

    python benchmarks/bench_lora_options.py                       # both parts
    python benchmarks/bench_lora_options.py --part init --repeats 3 --inits pissa,olora
"""

from __future__ import annotations

import argparse
import copy
import inspect
import json
import platform
import statistics
import sys
import tempfile
import time
import warnings

import torch
from model_shapes import SMOLLM2_135M

STEP_MODEL = dict(
    hidden_size=512,
    intermediate_size=1376,
    num_hidden_layers=8,
    num_attention_heads=8,
    num_key_value_heads=8,
    vocab_size=8000,
    max_position_embeddings=256,
    attention_bias=True,
    mlp_bias=True,
)
STEP_VARIANTS = {
    "patterns+bias_all": dict(rank_pattern={"q_proj": 32, "down_proj": 8}, alpha_pattern={"v_proj": 16}, bias="all"),
    "lora_bias": dict(lora_bias=True, bias="lora_only"),
}


def _llama(shape: dict, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(**shape))


def _peft_loftq_on_cpu() -> None:
    import peft.tuners.lora.layer as layer
    import peft.utils.loftq_utils as loftq_utils

    source = inspect.getsource(loftq_utils.loftq_init).replace('"xpu" if is_xpu_available() else "cuda"', '"cpu"')
    namespace = dict(vars(loftq_utils))
    exec(source, namespace)
    layer.loftq_init = namespace["loftq_init"]


def _time_init(library: str, base, init: str) -> float:
    import adapterkit as ak

    model = copy.deepcopy(base)
    start = time.perf_counter()
    if library == "adapterkit":
        ak.attach(model, ak.LoRAConfig(rank=16, alpha=16, init=init, targets="all-linear"))
    else:
        from peft import LoraConfig, get_peft_model

        get_peft_model(
            model,
            LoraConfig(
                r=16,
                lora_alpha=16,
                init_lora_weights=init,
                target_modules="all-linear",
                loftq_config={"loftq_bits": 4, "loftq_iter": 1} if init == "loftq" else {},
            ),
        )
    return time.perf_counter() - start


def part_init(inits: list[str], repeats: int) -> dict:
    _peft_loftq_on_cpu()
    base = _llama(SMOLLM2_135M).eval()
    out = {}
    for init in inits:
        times = {"adapterkit": [], "peft": []}
        for round_ in range(repeats):
            order = ["adapterkit", "peft"] if round_ % 2 == 0 else ["peft", "adapterkit"]
            for library in order:
                times[library].append(_time_init(library, base, init))
        med = {k: statistics.median(v) for k, v in times.items()}
        out[init] = {
            "adapterkit_s": med["adapterkit"],
            "peft_s": med["peft"],
            "ratio": med["adapterkit"] / med["peft"],
            "tries": times,
        }
        print(
            f"init {init:14s} adapterkit {med['adapterkit']:.2f} s  peft {med['peft']:.2f} s  "
            f"ratio {out[init]['ratio']:.3f}",
            flush=True,
        )
    return out


def _step_models(options: dict):
    import adapterkit as ak
    from peft import PeftModel

    ours = ak.attach(
        _llama(STEP_MODEL).train(), ak.LoRAConfig(rank=16, alpha=32, targets="all-linear", init="random", **options)
    )
    with tempfile.TemporaryDirectory() as folder:
        ak.save_adapter(ours, folder)
        theirs = PeftModel.from_pretrained(_llama(STEP_MODEL).train(), folder, is_trainable=True)
    return ours, theirs


def _step(model, optimizer, ids) -> float:
    start = time.perf_counter()
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def part_step(steps: int) -> dict:
    ids = torch.randint(0, STEP_MODEL["vocab_size"], (4, 128), generator=torch.Generator().manual_seed(1))
    out = {}
    for variant, options in STEP_VARIANTS.items():
        ours, theirs = _step_models(options)
        n_ours = sum(p.numel() for p in ours.parameters() if p.requires_grad)
        n_theirs = sum(p.numel() for p in theirs.parameters() if p.requires_grad)
        assert n_ours == n_theirs, (n_ours, n_theirs)
        models = {"adapterkit": ours, "peft": theirs}
        opts = {
            k: torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-4) for k, m in models.items()
        }
        for k in models:  # warm-up
            _step(models[k], opts[k], ids)
        times, ratios = {"adapterkit": [], "peft": []}, []
        for round_ in range(steps):
            order = ["adapterkit", "peft"] if round_ % 2 == 0 else ["peft", "adapterkit"]
            got = {k: _step(models[k], opts[k], ids) for k in order}
            for k, v in got.items():
                times[k].append(v)
            ratios.append(got["adapterkit"] / got["peft"])
        med = {k: statistics.median(v) for k, v in times.items()}
        out[variant] = {
            "adapterkit_ms": 1e3 * med["adapterkit"],
            "peft_ms": 1e3 * med["peft"],
            "ratio_of_medians": med["adapterkit"] / med["peft"],
            "paired": statistics.median(ratios),
            "trainable": n_ours,
        }
        print(
            f"step {variant:18s} adapterkit {1e3 * med['adapterkit']:.0f} ms  peft {1e3 * med['peft']:.0f} ms  "
            f"ratio {out[variant]['ratio_of_medians']:.3f}  paired {out[variant]['paired']:.3f}",
            flush=True,
        )
        del ours, theirs, models, opts
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--part", choices=["init", "step", "all"], default="all")
    parser.add_argument("--inits", default="pissa,pissa_niter_4,olora,loftq")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    import peft
    import transformers

    result = {
        "machine": platform.machine(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "threads": args.threads,
    }
    if args.part in ("init", "all"):
        result["init"] = part_init(args.inits.split(","), args.repeats)
    if args.part in ("step", "all"):
        result["step"] = part_step(args.steps)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()

"""How exact merge_adapter / unmerge_adapter are in bf16, on SmolLM2-135M (30 layers, hidden 576).

    python benchmarks/bench_merge_bf16.py [--cycles 20] [--ratio 0.1] [--json out.json]

For LoRA (rank 16, all-linear), DoRA and IA3, each with adapter weights set so that they change the
model (LoRA: rms(scale B A) = ratio * rms(W) per layer; DoRA: magnitudes 1% off the norm; IA3: 1 + 0.1 N):
- logits: max |merged - unmerged| / max |unmerged|, next to bf16's own error on this model
  (max |bf16 - fp32| / max |fp32| for the unmerged model);
- weights after one merge + unmerge: the share restored bit for bit, the largest error in bf16 steps
  (ulps of the original value);
- the same after ``--cycles`` merge / unmerge cycles with the adapter changing between them (B or the
  vectors moved by 1%, as training would), the RL loop's pattern;
- PEFT 0.21's merge_adapter / unmerge_adapter on the same LoRA weights, for comparison.
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch

import adapterkit as ak
from adapterkit.inject import adapter_layers

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.peft_twin: the PEFT twin builder


def ulps(got: torch.Tensor, want: torch.Tensor) -> torch.Tensor:
    """|got - want| in bf16 steps at ``want`` (one step = 2^(e - 8) for |want| = m 2^e, m in [0.5, 1))."""
    _, exponent = torch.frexp(want.float())
    return (got.float() - want.float()).abs() / torch.ldexp(torch.ones_like(want, dtype=torch.float32), exponent - 8)


def base_tensors(model) -> dict[str, torch.Tensor]:
    return {n: t.detach().clone() for n, t in model.state_dict().items()
            if ".adapters." not in n and "lora_" not in n and "ia3_" not in n}


def restored(model, before: dict) -> dict:
    """Share of base weights equal bit for bit to ``before``; largest error in ulps."""
    now = base_tensors(model)
    same = total = 0
    worst = 0.0
    for name, want in before.items():
        got = now[name]
        same += int((got == want).sum())
        total += want.numel()
        worst = max(worst, float(ulps(got, want).max()))
    return {"exact_share": same / total, "max_ulps": worst}


@torch.no_grad()
def set_adapters(model, variant: str, ratio: float, gen: torch.Generator) -> None:
    for _, layer in adapter_layers(model):
        adapter = layer.adapters["default"]
        if variant == "ia3":
            adapter.ia3_l.copy_(1 + 0.1 * torch.randn(adapter.ia3_l.shape, generator=gen))
            continue
        adapter.b.copy_(torch.randn(adapter.b.shape, generator=gen))
        weight = layer.innermost().weight.float()
        update = adapter.update(torch.float32)
        adapter.b.mul_(ratio * weight.pow(2).mean().sqrt() / update.pow(2).mean().sqrt())
        if variant == "dora":
            from adapterkit.methods.lora.functional import dora_norm

            norm = dora_norm(weight, adapter.a, adapter.b, adapter.scale)
            adapter.magnitude.copy_(norm * (1 + 0.01 * torch.randn(norm.shape, generator=gen)))


@torch.no_grad()
def nudge(model, gen: torch.Generator) -> None:
    """Move the adapter by ~1%, as a training step would."""
    for p in model.parameters():
        if p.requires_grad:
            p.mul_(1 + 0.01 * torch.randn(p.shape, generator=gen))


def config(variant: str) -> ak.AdapterConfig:
    if variant == "ia3":
        return ak.IA3Config()
    return ak.LoRAConfig(rank=16, alpha=32, targets="all-linear", dora=variant == "dora")


def logits(model, ids) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits.float()


def run(base, ids, variant: str, ratio: float, cycles: int) -> dict:
    gen = torch.Generator().manual_seed(0)
    fp32 = ak.attach(copy.deepcopy(base), config(variant))
    set_adapters(fp32, variant, ratio, gen)
    model = copy.deepcopy(fp32).to(torch.bfloat16)
    ref32, unmerged = logits(fp32, ids), logits(model, ids)
    before = base_tensors(model)
    start = time.perf_counter()
    ak.merge_adapter(model)
    merge_s = time.perf_counter() - start
    merged = logits(model, ids)
    ak.unmerge_adapter(model)
    out = {
        "logits_merged_vs_unmerged": float((merged - unmerged).abs().max() / unmerged.abs().max()),
        "logits_bf16_vs_fp32": float((unmerged - ref32).abs().max() / ref32.abs().max()),
        "merge_s": merge_s,
        "one_cycle": restored(model, before),
    }
    for _ in range(cycles - 1):
        nudge(model, gen)
        ak.merge_adapter(model)
        ak.unmerge_adapter(model)
    out[f"{cycles}_cycles"] = restored(model, before)
    print(variant, json.dumps(out), flush=True)
    if variant == "lora":
        out["peft"] = run_peft(model, before, cycles, ratio)
    return out


def run_peft(ours, before: dict, cycles: int, ratio: float) -> dict:
    """PEFT's merge / unmerge on the same (bf16) weights and adapter."""
    import peft

    from tests.peft_twin import copy_to_peft

    base = ak.detach(copy.deepcopy(ours))
    base.load_state_dict({n.replace(".base.", "."): t for n, t in before.items()})
    theirs = peft.get_peft_model(base, peft.LoraConfig(r=16, lora_alpha=32, target_modules="all-linear"))
    copy_to_peft(ours, theirs)
    gen = torch.Generator().manual_seed(1)
    theirs.merge_adapter()
    theirs.unmerge_adapter()
    inner = {n.removeprefix("base_model.model."): t for n, t in theirs.state_dict().items()}
    one = _restored_peft(inner, before)
    for _ in range(cycles - 1):
        nudge(theirs, gen)
        theirs.merge_adapter()
        theirs.unmerge_adapter()
    inner = {n.removeprefix("base_model.model."): t for n, t in theirs.state_dict().items()}
    return {"one_cycle": one, f"{cycles}_cycles": _restored_peft(inner, before)}


def _restored_peft(state: dict, before: dict) -> dict:
    same = total = 0
    worst = 0.0
    for name, want in before.items():
        got = state.get(name.replace(".base.", ".base_layer."), state.get(name))
        same += int((got == want).sum())
        total += want.numel()
        worst = max(worst, float(ulps(got, want).max()))
    return {"exact_share": same / total, "max_ulps": worst}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=20)
    parser.add_argument("--ratio", type=float, default=0.1)
    parser.add_argument("--variants", default="lora,dora,ia3")
    parser.add_argument("--json")
    args = parser.parse_args()
    base, _ = ak.load_model("smollm2-135m")
    base.eval()
    ids = torch.randint(0, base.config.vocab_size, (2, 32), generator=torch.Generator().manual_seed(5))
    results = {"torch": torch.__version__, "ratio": args.ratio, "cycles": args.cycles}
    for variant in args.variants.split(","):
        results[variant] = run(base, ids, variant, args.ratio, args.cycles)
        print(variant, json.dumps(results[variant], indent=1), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()

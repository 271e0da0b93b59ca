"""How exact merge_adapter / unmerge_adapter are in bf16, on SmolLM2-135M (30 layers, hidden 576).

    python benchmarks/bench_merge_bf16.py [--cycles 20] [--ratio 0.1] [--json out.json]

For LoRA (rank 16, all-linear), DoRA and IA3, each with adapter weights set so that they change the
model (LoRA: rms(scale B A) = ratio * rms(W) per layer; DoRA: magnitudes 1% off the norm; IA3: 1 + 0.1 N):
- logits: max |merged - unmerged| / max |unmerged| in bf16, next to bf16's own error on this model
  (max |bf16 - fp32| / max |fp32|, unmerged) and the merged bf16 model's against fp32;
- base weights after one merge + unmerge: the share restored bit for bit, the relative error
  ||W_after - W|| / ||W|| (all base weights), and the largest error in bf16 steps at the larger of
  |W| and |W merged|;
- after ``--cycles`` merge / unmerge cycles with the adapter moved by 1% between them (as training
  would, the RL loop's pattern): the same shares and errors, and the base model's logits
  (``ak.disabled``) against those before the first merge;
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


def step(x: torch.Tensor) -> torch.Tensor:
    """One bf16 step at |x|: 2^(e - 8) for |x| = m 2^e, m in [0.5, 1)."""
    _, exponent = torch.frexp(x.float())
    return torch.ldexp(torch.ones_like(x, dtype=torch.float32), exponent - 8)


def base_tensors(state: dict) -> dict[str, torch.Tensor]:
    """Base weights under one naming (adapterkit's ``.base.`` and PEFT's ``.base_layer.`` dropped)."""
    return {
        n.replace(".base_layer.", ".").replace(".base.", ".").removeprefix("base_model.model."): t.detach().clone()
        for n, t in state.items()
        if not any(k in n for k in (".adapters.", "lora_", "ia3_"))
    }


def compare(now: dict, before: dict, merged: dict | None = None) -> dict:
    """Share of base weights equal bit for bit; relative Frobenius error; largest error in steps."""
    same = total = 0
    err_sq = ref_sq = worst = 0.0
    for name, want in before.items():
        got = now[name]
        same += int((got == want).sum())
        total += want.numel()
        diff = got.float() - want.float()
        err_sq += float(diff.pow(2).sum())
        ref_sq += float(want.float().pow(2).sum())
        if merged is not None:
            at = torch.maximum(want.float().abs(), merged[name].float().abs())
            worst = max(worst, float((diff.abs() / step(at)).max()))
    out = {"exact_share": same / total, "rel_error": (err_sq / ref_sq) ** 0.5}
    if merged is not None:
        out["max_steps"] = worst
    return out


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


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def cycle(model, merge, unmerge, disabled, ids, cycles: int, gen) -> dict:
    """One merge + unmerge measured, then ``cycles - 1`` more with the adapter moving in between."""
    before = base_tensors(model.state_dict())
    with disabled():
        base_logits = logits(model, ids)
    unmerged = logits(model, ids)
    start = time.perf_counter()
    merge()
    merge_s = time.perf_counter() - start
    merged_state, merged = base_tensors(model.state_dict()), logits(model, ids)
    unmerge()
    out = {
        "merge_s": merge_s,
        "logits_merged_vs_unmerged": rel(merged, unmerged),
        "one_cycle": compare(base_tensors(model.state_dict()), before, merged_state),
    }
    for _ in range(cycles - 1):
        nudge(model, gen)
        merge()
        unmerge()
    out[f"{cycles}_cycles"] = compare(base_tensors(model.state_dict()), before)
    with disabled():
        out[f"{cycles}_cycles"]["base_logits_drift"] = rel(logits(model, ids), base_logits)
    return out, merged


def run(base, ids, variant: str, ratio: float, cycles: int) -> dict:
    gen = torch.Generator().manual_seed(0)
    fp32 = ak.attach(copy.deepcopy(base), config(variant))
    set_adapters(fp32, variant, ratio, gen)
    model = copy.deepcopy(fp32).to(torch.bfloat16)
    ref32, unmerged = logits(fp32, ids), logits(model, ids)
    theirs = peft_twin(model) if variant == "lora" else None
    out, merged = cycle(
        model,
        lambda: ak.merge_adapter(model),
        lambda: ak.unmerge_adapter(model),
        lambda: ak.disabled(model),
        ids,
        cycles,
        gen,
    )
    out.update(logits_bf16_vs_fp32=rel(unmerged, ref32), logits_merged_bf16_vs_fp32=rel(merged, ref32))
    print(variant, json.dumps(out), flush=True)
    if theirs is not None:
        out["peft"], _ = cycle(
            theirs,
            theirs.merge_adapter,
            theirs.unmerge_adapter,
            theirs.disable_adapter,
            ids,
            cycles,
            torch.Generator().manual_seed(0),
        )
        print("peft", json.dumps(out["peft"]), flush=True)
    return out


def peft_twin(ours):
    """PEFT's LoRA on a copy of the same bf16 base, with the same adapter weights."""
    import peft

    from tests.peft_twin import copy_to_peft

    theirs = peft.get_peft_model(
        ak.detach(copy.deepcopy(ours)), peft.LoraConfig(r=16, lora_alpha=32, target_modules="all-linear")
    )
    copy_to_peft(ours, theirs)
    return theirs.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=20)
    parser.add_argument("--ratio", type=float, default=0.1)
    parser.add_argument("--variants", default="lora,dora,ia3")
    parser.add_argument("--model", default="smollm2-135m", help="an alias or a transformers folder")
    parser.add_argument("--json")
    args = parser.parse_args()
    base, _ = ak.load_model(args.model)
    base.eval()
    ids = torch.randint(0, base.config.vocab_size, (2, 32), generator=torch.Generator().manual_seed(5))
    results = {"model": args.model, "torch": torch.__version__, "ratio": args.ratio, "cycles": args.cycles}
    for variant in args.variants.split(","):
        results[variant] = run(base, ids, variant, args.ratio, args.cycles)
        print(variant, json.dumps(results[variant], indent=1), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()

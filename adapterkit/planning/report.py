"""A plan as a table a user reads at a glance, and as JSON (bytes everywhere)."""

from __future__ import annotations

from .estimate import Estimate
from .units import fmt

SHOWN = (
    "weights",
    "adapter parameters",
    "optimizer states",
    "optimizer objects (CPU only)",
    "gradients",
    "activations kept for backward",
    "logits and loss",
    "backward buffers",
    "allocator overhead",
    "CUDA context",
)


def _adapter_text(est: Estimate) -> str:
    a, s = est.settings.adapter, est.settings
    kind = "DoRA" if a.dora else "LoRA"
    drop = f", dropout {a.dropout:g}" if a.dropout else ""
    return (
        f"{kind} r{a.rank}{drop} on {len(est.inventory.targets)} modules "
        f"({est.trainable / 1e6:.2f}M trainable), optimizer {s.optimizer}"
    )


def _base_text(est: Estimate) -> str:
    s = est.settings
    if s.quant is None:
        return s.dtype
    q = s.quant
    kind = f"{q.quant_type}{', double quant' if q.double_quant else ''}" if q.bits == 4 else "int8"
    return f"{q.bits}-bit ({kind}, block {q.block}), compute {s.dtype}"


def header(est: Estimate, title: str) -> list[str]:
    from .shape import describe

    s = est.settings
    return [
        f"{title}: {describe(est.shape, est.inventory.params)}",
        f"  batch {s.batch_size} x {s.seq_len} tokens, grad_accum {s.grad_accum}, base {_base_text(est)}, "
        f"checkpointing {'on' if s.checkpointing else 'off'}{', padded batches' if s.padded else ''}, device {s.device}",
        f"  {_adapter_text(est)}",
    ]


def _notes(est: Estimate) -> dict:
    s, shape = est.settings, est.shape
    layers = [x.total for x in est.layers]
    per = max(layers) if layers else 0
    preds = s.batch_size * (s.seq_len - 1)
    return {
        "weights": f"of which quantization constants {fmt(est.components['quantization constants'])}"
        if s.quant
        else "",
        "activations kept for backward": (
            f"block inputs only ({fmt(s.tokens * shape.hidden * s.b)} per block)"
            if s.checkpointing
            else f"{fmt(per)} per block x {shape.layers}"
        ),
        "logits and loss": (
            f"log_softmax kept + 2 gradients, fp32: {shape.vocab} x {preds} tokens x 12 bytes"
            if s.loss_chunks == 1
            else f"in {s.loss_chunks} chunks"
        ),
        "backward buffers": "the last block's backward" + (" (recomputed)" if s.checkpointing else ""),
        "gradients": "" if est.peak_phase == "optimizer step" else "alive at the peak",
        "allocator overhead": "caching allocator, assumed 5%" if s.device == "cuda" else "",
        "CUDA context": "context, kernels, cuBLAS workspace (assumed)" if s.device == "cuda" else "",
    }


def table(est: Estimate, title: str = "adapterkit plan") -> str:
    """The breakdown of one estimate."""
    notes = _notes(est)
    rows = [(name, est.components[name], notes.get(name, "")) for name in SHOWN if est.components.get(name)]
    width = max(len(r[0]) for r in rows)
    lines = header(est, title) + [""]
    lines += [f"  {name:<{width}}  {fmt(value):>11}  {note}".rstrip() for name, value, note in rows]
    lines.append(f"  {'-' * (width + 13)}")
    label = "predicted peak" if est.settings.device == "cpu" else "predicted peak (device total)"
    lines.append(f"  {label:<{width}}  {fmt(est.total):>11}  at: {est.peak_phase}")
    return "\n".join(lines)


def options_table(options, budget: int) -> str:
    """Settings that fit, fastest first, with the keys to set."""
    if not options:
        return ""
    lines = [
        f"settings that fit in {fmt(budget)} ({budget / 1e9:.1f} GB), fastest first "
        "(speed: estimated, relative to the first):"
    ]
    top = options[0].speed
    for i, o in enumerate(options, 1):
        s = o.settings
        keys = " ".join(f"--set {k}={_yaml(v)}" for k, v in o.changes.items()) or "(as configured)"
        quant = f"{s.quant.bits}-bit" if s.quant else s.dtype
        lines.append(
            f"  {i:>2}. speed {o.speed / top:4.2f}  {fmt(o.estimate.total):>10}  micro-batch {s.batch_size} x "
            f"accum {s.grad_accum}, {quant}, ckpt {'on' if s.checkpointing else 'off'}, {s.optimizer}"
        )
        lines.append(f"      {keys}")
    return "\n".join(lines)


def _yaml(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def to_dict(est: Estimate) -> dict:
    s = est.settings
    return {
        "model": {
            "model_type": est.shape.model_type,
            "parameters": est.inventory.params,
            "layers": est.shape.layers,
            "hidden": est.shape.hidden,
            "vocab": est.shape.vocab,
        },
        "settings": {
            **s.yaml_keys(),
            "task": s.task,
            "padded": s.padded,
            "device": s.device,
            "adapter": s.adapter.to_dict(),
            "adapter_modules": len(est.inventory.targets),
            "trainable_parameters": est.trainable,
        },
        "components": dict(est.components),
        "per_block": [dict(x.items, total=x.total) for x in est.layers],
        "phases": {k: est.static + v for k, v in est.phases.items()},
        "peak_phase": est.peak_phase,
        "peak_allocated": est.peak,
        "total": est.total,
    }

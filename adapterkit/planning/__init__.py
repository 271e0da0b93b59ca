"""``ak.plan``: will this fine-tune fit my GPU, and which settings make it fit.

From a model's config alone (no weights are loaded), the predicted peak memory of one training
step, broken into weights, adapter parameters, optimizer states, gradients, activations kept
for backward, logits and loss, backward buffers and the allocator's overhead:

    peak = weights + adapter + optimizer states + max over the step's phases of
           (activations + logits/loss + backward buffers + gradients alive then)

The formulas (shape.py, weights.py, activations.py, estimate.py) follow the tensors adapterkit's
own Functions and the model save for backward; they were checked against the bytes a real step
uses on a CPU (``measure.py``, ``benchmarks/bench_plan.py``, ``benchmarks/plan.md``).

    import adapterkit as ak
    p = ak.plan("smollm2-135m", overrides=["optim.batch_size=4", "model.dtype=bfloat16"],
                gpu_memory="8GB")
    print(p)                 # the table, and the settings that fit, fastest first
    p.estimate.total         # bytes
    p.to_dict()              # the same as `adapterkit plan ... --json`
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional, Sequence

from .estimate import Estimate, estimate
from .search import Option, fitting
from .settings import Quant, Settings
from .shape import ModelShape, model_shape
from .units import fmt, parse_memory


@dataclasses.dataclass(frozen=True)
class Plan:
    """An estimate, and with a memory budget the settings that fit (fastest first)."""

    estimate: Estimate
    budget: Optional[int] = None
    options: tuple = ()
    closest: Optional[Option] = None

    @property
    def fits(self) -> Optional[bool]:
        return None if self.budget is None else self.estimate.total <= self.budget

    def __str__(self) -> str:
        from .report import options_table, table

        text = table(self.estimate)
        if self.budget is None:
            return text
        verdict = "fits" if self.fits else "does NOT fit"
        text += f"\n\nas configured: {verdict} in {fmt(self.budget)} ({self.budget / 1e9:.1f} GB)"
        if self.options:
            return text + "\n\n" + options_table(self.options, self.budget)
        if self.closest is not None:
            keys = " ".join(f"--set {k}={v}" for k, v in self.closest.changes.items())
            text += (
                f"\nno searched setting fits; the smallest needs {fmt(self.closest.estimate.total)}: {keys}"
                "\n(shorten data.max_length, or train on a larger GPU)"
            )
        return text

    def to_dict(self) -> dict:
        from .report import to_dict

        out: dict[str, Any] = to_dict(self.estimate)
        if self.budget is not None:
            out["budget"] = self.budget
            out["fits"] = self.fits
            out["options"] = [
                {
                    "speed": o.speed / self.options[0].speed,
                    "total": o.estimate.total,
                    "peak_allocated": o.estimate.peak,
                    "set": o.changes,
                    "settings": o.settings.yaml_keys(),
                }
                for o in self.options
            ]
        return out


def shape_and_settings(
    model: Any, overrides: Sequence[str] = (), device: str = "cuda", **changes
) -> tuple[ModelShape, Settings]:
    """(shape, settings) for a model or training YAML with ``section.key=value`` overrides."""
    from .source import full_config, is_yaml, model_config, train_config

    config = train_config(model, overrides)
    source = config.model.name if is_yaml(model) else model
    shape = model_shape(full_config(model_config(source)))
    task = config.model.task or (
        "classification" if config.data.format == "classification" or shape.family == "encoder" else "causal-lm"
    )
    return shape, Settings.from_train_config(config, task, device).replace(**changes)


def plan(
    model: Any, overrides: Sequence[str] = (), gpu_memory: Any = None, device: str = "cuda", limit: int = 10, **changes
) -> Plan:
    """Predict the peak memory of fine-tuning ``model``: a transformers config, a config dict, a
    folder with config.json, an alias (smollm2-135m, minilm-l6) or a training YAML.

    overrides: training-config keys, ``["optim.batch_size=4", "model.gradient_checkpointing=true"]``.
    gpu_memory: "24GB", "24GiB", "24000MB" or bytes: also search the settings that fit.
    changes: Settings fields outside the training config (adapter_dtype, loss_chunks, use_cache).
    """
    shape, settings = shape_and_settings(model, overrides, device, **changes)
    est = estimate(shape, settings)
    if gpu_memory is None:
        return Plan(est)
    budget = parse_memory(gpu_memory)
    options, closest = fitting(shape, settings, budget, limit)
    return Plan(est, budget, tuple(options), closest)


__all__ = [
    "Plan",
    "Settings",
    "Quant",
    "ModelShape",
    "Estimate",
    "plan",
    "estimate",
    "model_shape",
    "parse_memory",
    "shape_and_settings",
]

"""Predicted against measured: the same (config, settings) given to ``estimate`` and to a real step.

For each case, the errors (predicted / measured - 1) of:
    weights   weights + adapter parameters       vs bytes in use after building the model
    states    optimizer states (+ their objects) vs bytes added by the first optimizer step
    held      activations + loss kept            vs bytes in use after forward + loss minus before
    peak      the predicted peak                 vs the highest sample during the second step
All on a CPU (``device="cpu"`` estimates), where the heap counts every byte (see measure.py).
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

from .estimate import Estimate, estimate
from .measure import measure_many
from .settings import Settings
from .shape import model_shape
from .source import full_config

COMPONENTS = ("weights", "states", "held", "peak")


def case(config: dict, s: Settings, threads: int = 1) -> dict:
    """The measurement case (measure.py) that runs what ``s`` describes."""
    q = None if s.quant is None else dataclasses.asdict(s.quant)
    return {
        "config": dict(config),
        "task": s.task,
        "dtype": s.dtype,
        "adapter": s.adapter.to_dict(),
        "quantization": q,
        "gradient_checkpointing": s.checkpointing,
        "optimizer": s.optimizer,
        "batch_size": s.batch_size,
        "seq_len": s.seq_len,
        "padded": s.padded,
        "threads": threads,
    }


def predicted(est: Estimate) -> dict:
    c = est.components
    return {
        "weights": c["weights"] + c["adapter parameters"],
        "states": c["optimizer states"] + c["optimizer objects (CPU only)"],
        "held": est.held,
        "peak": est.peak,
    }


def run(pairs: Sequence[tuple[dict, Settings]], threads: int = 1) -> list[dict]:
    """[{"predicted": {...}, "measured": {...}, "error": {...}}] for (config, settings) pairs."""
    cases, estimates = [], []
    for config, s in pairs:
        s = s.replace(device="cpu")
        full = full_config(config)
        estimates.append(estimate(model_shape(full), s))
        cases.append(case(config, s, threads))
    rows = []
    for est, measured in zip(estimates, measure_many(cases)):
        pred = predicted(est)
        err = {k: pred[k] / measured[k] - 1 if measured[k] else 0.0 for k in COMPONENTS}
        rows.append({"predicted": pred, "measured": measured, "error": err, "phase": est.peak_phase})
    return rows

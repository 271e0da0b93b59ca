"""Loss and learning-rate curves as a PNG (matplotlib, Agg backend, imported only when plotting).

``plot_run(folder)`` reads a run's ``metrics.jsonl`` and writes ``curves.png`` beside it: the
learning rate per logged step (left) and the training loss (right, log scale; faint per logged
step, bold its trailing mean over ``width`` points), plus eval loss where it was measured, and
dotted vertical lines where a new stage starts (runs with ``stages:``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Sequence

PNG_NAME = "curves.png"


def smooth(values: Sequence[float], width: int) -> list[float]:
    """Trailing moving average over ``width`` points (fewer at the start)."""
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v - (values[i - width] if i >= width else 0.0)
        out.append(total / min(i + 1, width))
    return out


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_curves(runs: Sequence[dict], path: Path, title: str) -> None:
    """One PNG of several runs; each run: ``{"label", "steps", "loss", "lr"}`` and optionally
    ``"eval_steps"`` / ``"eval_loss"`` and ``"stage_starts"`` (steps where a stage began)."""
    plt = _pyplot()
    fig, (ax_lr, ax_loss) = plt.subplots(1, 2, figsize=(11, 4))
    width = max(1, max(len(r["loss"]) for r in runs) // 20)
    for r in runs:
        ax_lr.plot(r["steps"], r["lr"], label=r["label"])
        (line,) = ax_loss.plot(r["steps"], smooth(r["loss"], width), label=r["label"])
        ax_loss.plot(r["steps"], r["loss"], color=line.get_color(), alpha=0.2, linewidth=0.8)
        if r.get("eval_steps"):
            ax_loss.plot(
                r["eval_steps"], r["eval_loss"], "o--", color=line.get_color(), label=f"{r['label']}: eval loss"
            )
    for start in runs[0].get("stage_starts", ()):
        for ax in (ax_lr, ax_loss):
            ax.axvline(start, color="gray", linestyle=":", linewidth=1)
    ax_lr.set(xlabel="optimizer step", ylabel="learning rate", title="learning rate")
    ax_loss.set(
        xlabel="optimizer step",
        ylabel="loss",
        yscale="log",
        title=f"training loss (faint: per logged step; bold: mean of {width})",
    )
    for ax in (ax_lr, ax_loss):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def read_metrics(folder: Path) -> dict:
    """The curves in ``folder/metrics.jsonl``: steps, loss, lr, eval_steps, eval_loss, stage_starts."""
    out: dict = {"steps": [], "loss": [], "lr": [], "eval_steps": [], "eval_loss": [], "stage_starts": []}
    stage = 0
    path = Path(folder) / "metrics.jsonl"
    if not path.is_file():
        return out
    for line in path.read_text().splitlines():
        entry = json.loads(line) if line.strip() else {}
        if "loss" in entry and "lr" in entry:
            out["steps"].append(entry["step"])
            out["loss"].append(entry["loss"])
            out["lr"].append(entry["lr"])
            if entry.get("stage", 0) != stage:  # the first logged step of a new stage
                stage = entry["stage"]
                out["stage_starts"].append(entry["step"] - 1)
        if "eval_loss" in entry:
            out["eval_steps"].append(entry["step"])
            out["eval_loss"].append(entry["eval_loss"])
    return out


def plot_run(folder: Path, title: Optional[str] = None) -> Optional[Path]:
    """Write ``folder/curves.png`` from the run's metrics; None when nothing was logged."""
    folder = Path(folder)
    curves = read_metrics(folder)
    if not curves["steps"]:
        return None
    path = folder / PNG_NAME
    plot_curves([dict(curves, label="train")], path, title or f"{folder.name}: {curves['steps'][-1]} steps")
    return path

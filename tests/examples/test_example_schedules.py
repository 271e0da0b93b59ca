"""examples/schedules: three schedules on a tiny BERT; the logged learning rates are the schedule's."""

from __future__ import annotations

import math

from examples_util import ROOT, load_example
from tests.training.helpers import tiny_folder

run = load_example("schedules/run.py", "example_schedules_run")


def _expected(step: int, total: int, warmup: int, schedule: str) -> float:
    """The lr factor after ``step`` optimizer steps, written out independently of adapterkit."""
    if step < warmup:
        return (step + 1) / warmup
    p = min(1.0, (step - warmup) / (total - warmup))
    return {"constant": 1.0, "linear": 1.0 - p, "cosine": (1 + math.cos(math.pi * p)) / 2}[schedule]


def test_smoke_run_logs_each_schedule_and_plots(tmp_path):
    readme = (ROOT / "examples/schedules/README.md").read_text()
    model = tiny_folder(tmp_path / "bert", kind="bert", num_labels=4)
    result = run.main(["--smoke", "--model", model, "--out", str(tmp_path), "--warmup-ratio", "0.5"])
    runs = {r["schedule"]: r for r in result["runs"]}
    assert list(runs) == list(run.SCHEDULES)
    peak = run.config_for("constant", run.parse(["--model", model])).optim.lr
    total, warmup = 6, 3
    for name, r in runs.items():
        assert r["steps"] == list(range(1, total + 1))
        # logged after step s: the lr the next step will use
        want = [peak * _expected(s, total, warmup, name) for s in r["steps"]]
        assert all(math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-12) for a, b in zip(r["lr"], want)), name
    png = tmp_path / "schedules.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    assert (ROOT / "examples/schedules/README.md").read_text() == readme


def test_smooth_is_a_trailing_mean():
    assert run.smooth([1.0, 3.0, 5.0, 7.0], 2) == [1.0, 2.0, 4.0, 6.0]

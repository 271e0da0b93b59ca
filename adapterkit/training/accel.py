"""Accelerate around a run: the ``Accelerator`` it trains with, its log, its progress bar, its end.

Accelerate keeps one state per process (device, processes, mixed precision): the first
``Accelerator`` fixes it, and a later one asking for other settings is refused by Accelerate.
adapterkit does not reset that state (it is Accelerate's private business): a second ``ak.train``
in the same process with another ``optim.mixed_precision`` is an error that says so; run it in a
new process (``adapterkit train`` is one).
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import torch

from ..errors import ConfigError
from .config import TrainConfig


def accelerator_for(config: TrainConfig):
    """The run's ``Accelerator``: CPU unless CUDA is there, the config's mixed precision and trackers."""
    from accelerate import Accelerator

    trackers = config.output.trackers
    if trackers == "auto":
        trackers = "tensorboard" if importlib.util.find_spec("tensorboard") else "none"
    cpu = not torch.cuda.is_available() or os.environ.get("ACCELERATE_USE_CPU", "").lower() == "true"
    if cpu and config.optim.mixed_precision == "fp16":
        raise ConfigError("optim.mixed_precision 'fp16' needs a GPU; on a CPU use 'bf16' or 'no'.")
    try:
        return Accelerator(
            cpu=cpu,
            mixed_precision=config.optim.mixed_precision,
            log_with=None if trackers == "none" else trackers,
            project_dir=config.output.dir,
        )
    except ValueError as err:
        if "already been initialized" not in str(err):
            raise
        raise ConfigError(
            f"optim.mixed_precision={config.optim.mixed_precision!r}: this process already trained with other "
            f"Accelerate settings, and Accelerate fixes them once per process ({err}). Run this config in a "
            "new process (`adapterkit train config.yaml`), or keep the earlier run's mixed_precision."
        ) from None


def shutdown(accelerator) -> None:
    """Wait for all, close trackers and the process group (avoids a crash at exit)."""
    accelerator.wait_for_everyone()
    accelerator.end_training()
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


class Log:
    """metrics.jsonl in the output folder (main process), plus Accelerate's trackers."""

    def __init__(self, accelerator, folder: Path, history: list):
        self.acc, self.path, self.history = accelerator, folder / "metrics.jsonl", history

    def __call__(self, step: int, values: dict) -> None:
        entry = dict(step=step, **values)
        self.history.append(entry)
        if self.acc.is_main_process:
            with open(self.path, "a") as f:
                f.write(json.dumps(entry) + "\n")
        if self.acc.trackers:
            self.acc.log({k: v for k, v in values.items() if isinstance(v, (int, float))}, step=step)


def progress(accelerator, config: TrainConfig, total: int, start: int):
    """The run's tqdm bar (main process, unless output.progress is off)."""
    from tqdm.auto import tqdm

    show = config.output.progress and accelerator.is_main_process
    return tqdm(total=total, initial=start, disable=not show, desc="train", dynamic_ncols=True)

"""Checkpoints for an exact resume: trainable weights, optimizer, schedule, RNG and position.

Layout of ``<output>/checkpoints/step-<N>/``:
    trainable.safetensors   every parameter that trains (adapter weights, trained modules)
    optimizer.pt            the optimizer's state dict (read back with weights_only=True)
    scheduler.json          the schedule's state dict
    state.json              step, early-stopping state, metrics so far, the run's config
    rng-<rank>.safetensors  torch's CPU (and CUDA) generator state of each process
    rng-<rank>.json         Python's ``random`` state of each process
Every process writes into ``.step-<N>.partial`` and the main process renames it when all are
done, so a crash leaves either a whole checkpoint or none. The data position is the step
number (see batches.py). A sharded (FSDP) model's weights and optimizer state are gathered whole
by all processes first (the optimizer's then keyed by parameter names: ``"optimizer": "names"``
in state.json), so a checkpoint holds whole tensors however the run was sharded.
"""

from __future__ import annotations

import dataclasses
import json
import random
import re
import shutil
from pathlib import Path
from typing import Optional

import torch
from safetensors.torch import save_file

from ..errors import AdapterFileError
from ..io.atomic import replace_folder
from . import sharding
from .state import RunState

_STEP = re.compile(r"step-(\d+)\Z")


def trainable_state(model, names=None) -> dict[str, torch.Tensor]:
    """Whole CPU copies of the parameters that train (or those named: with stages, all that train in
    any stage). A sharded model's are gathered: every process calls."""
    return sharding.gather(
        model, [n for n, p in model.named_parameters() if (p.requires_grad if names is None else n in names)]
    )


def save(accelerator, folder: Path, model, optimizer, scheduler, state: RunState, keep: int, names=None) -> Path:
    """Write checkpoint ``step-<state.step>`` (every process calls); older ones beyond ``keep`` go."""
    step = state.step
    final = folder / f"step-{step:07d}"
    tmp = folder / f".step-{step:07d}.partial"
    rank, unwrapped = accelerator.process_index, accelerator.unwrap_model(model)
    whole = None
    if sharding.is_sharded(unwrapped):  # collectives: every process joins
        whole = trainable_state(unwrapped, names), sharding.optimizer_state(unwrapped, optimizer)
        state = dataclasses.replace(state, optimizer="names")
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    try:
        _write(accelerator, tmp, rank, unwrapped, optimizer, scheduler, state, names, whole)
    except BaseException:  # a full disk, ...: no half-written checkpoint is left behind
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        replace_folder(tmp, final)  # an older checkpoint of this step is replaced only now
        for old in sorted(checkpoints(folder))[:-keep]:
            shutil.rmtree(old[1], ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def _write(accelerator, tmp: Path, rank: int, model, optimizer, scheduler, state: RunState, names, whole) -> None:
    gen = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        gen["cuda"] = torch.cuda.get_rng_state()
    save_file(gen, str(tmp / f"rng-{rank}.safetensors"))
    (tmp / f"rng-{rank}.json").write_text(json.dumps(random.getstate()))
    if accelerator.is_main_process:
        weights, optim_state = whole or (trainable_state(model, names), optimizer.state_dict())
        save_file(weights, str(tmp / "trainable.safetensors"))
        torch.save(optim_state, tmp / "optimizer.pt")
        (tmp / "scheduler.json").write_text(json.dumps(scheduler.state_dict()))
        (tmp / "state.json").write_text(json.dumps(state.to_json(), indent=1))


def checkpoints(folder: Path) -> list[tuple[int, Path]]:
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _STEP.match(p.name))]
    return sorted(f for f in found if (f[1] / "state.json").is_file())


def latest(folder: Path) -> Optional[Path]:
    found = checkpoints(folder)
    return found[-1][1] if found else None


def restore(saved, accelerator, model, optimizer, scheduler) -> RunState:
    """Apply a checkpoint read and checked by ``resume.read`` / ``resume.check_fit``; returns its state. With ``optimizer`` None (a new stage starts here) the optimizer's and the
    schedule's state are not restored. Sharded (FSDP) and unsharded runs resume from each other."""
    model = accelerator.unwrap_model(model)
    by_names, sharded = saved.state.optimizer == "names", sharding.is_sharded(model)
    if optimizer is not None:
        try:
            if sharded:
                sharding.load_optimizer_state(
                    model,
                    optimizer,
                    saved.optimizer if by_names else sharding.state_by_names(model, optimizer, saved.optimizer),
                )
            else:
                optimizer.load_state_dict(
                    sharding.state_by_indices(model, optimizer, saved.optimizer) if by_names else saved.optimizer
                )
        except (ValueError, KeyError, TypeError, RuntimeError) as err:
            raise AdapterFileError(
                f"checkpoint file {str(saved.path / 'optimizer.pt')!r} does not fit this "
                f"run's optimizer ({err}); resume with the config it was written with."
            ) from None
        scheduler.load_state_dict(saved.scheduler)
    if sharded:
        sharding.load_whole(model, saved.weights)
    else:
        params = dict(model.named_parameters())
        with torch.no_grad():
            for name, tensor in saved.weights.items():
                params[name].copy_(tensor)
    if saved.rng is not None:
        gen, py_state = saved.rng
        torch.set_rng_state(gen["cpu"])
        if "cuda" in gen and torch.cuda.is_available():
            torch.cuda.set_rng_state(gen["cuda"])
        random.setstate(py_state)
    return saved.state


def load(path: Path, accelerator, model, optimizer, scheduler, names=None) -> RunState:
    """Read, check and restore checkpoint ``path`` (see resume.py); returns the saved state."""
    from . import resume

    saved = resume.read(path, accelerator.process_index)
    resume.check_fit(saved, accelerator.unwrap_model(model), optimizer, scheduler, names)
    return restore(saved, accelerator, model, optimizer, scheduler)

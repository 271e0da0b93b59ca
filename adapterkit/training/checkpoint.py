"""Checkpoints for an exact resume: trainable weights, optimizer, schedule, RNG and position.

Layout of ``<output>/checkpoints/step-<N>/``:
    trainable.safetensors   every parameter that trains (adapter weights, trained modules)
    optimizer.pt            the optimizer's state dict (read back with weights_only=True)
    scheduler.json          the schedule's state dict
    state.json              step, early-stopping state, metrics so far
    rng-<rank>.safetensors  torch's CPU (and CUDA) generator state of each process
    rng-<rank>.json         Python's ``random`` state of each process
Every process writes into ``.step-<N>.partial`` and the main process renames it when all are
done, so a crash leaves either a whole checkpoint or none. The data position is the step
number (see batches.py). A sharded (FSDP) model's weights and optimizer state are gathered whole
by all processes first (the optimizer's then keyed by parameter names: ``"optimizer": "names"``
in state.json), so a checkpoint holds whole tensors however the run was sharded.
"""
from __future__ import annotations

import json
import random
import re
import shutil
from pathlib import Path
from typing import Optional

import torch
from safetensors.torch import load_file, save_file

from ..errors import AdapterFileError
from . import sharding

_STEP = re.compile(r"step-(\d+)\Z")


def trainable_state(model, names=None) -> dict[str, torch.Tensor]:
    """Whole CPU copies of the parameters that train (or those named: with stages, all that train in
    any stage). A sharded model's are gathered: every process calls."""
    return sharding.gather(model, [n for n, p in model.named_parameters()
                                   if (p.requires_grad if names is None else n in names)])


def save(accelerator, folder: Path, step: int, model, optimizer, scheduler, state: dict, keep: int,
         names=None) -> Path:
    final = folder / f"step-{step:07d}"
    tmp = folder / f".step-{step:07d}.partial"
    rank, unwrapped = accelerator.process_index, accelerator.unwrap_model(model)
    sharded = sharding.is_sharded(unwrapped)
    if sharded:  # collectives: every process joins
        weights, optim_state = trainable_state(unwrapped, names), sharding.optimizer_state(unwrapped, optimizer)
        state = dict(state, optimizer="names")
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    gen = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        gen["cuda"] = torch.cuda.get_rng_state()
    save_file(gen, str(tmp / f"rng-{rank}.safetensors"))
    (tmp / f"rng-{rank}.json").write_text(json.dumps(random.getstate()))
    if accelerator.is_main_process:
        if not sharded:
            weights, optim_state = trainable_state(unwrapped, names), optimizer.state_dict()
        save_file(weights, str(tmp / "trainable.safetensors"))
        torch.save(optim_state, tmp / "optimizer.pt")
        (tmp / "scheduler.json").write_text(json.dumps(scheduler.state_dict()))
        (tmp / "state.json").write_text(json.dumps(dict(state, step=step), indent=1))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        for old in sorted(checkpoints(folder))[:-keep]:
            shutil.rmtree(old[1], ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def checkpoints(folder: Path) -> list[tuple[int, Path]]:
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _STEP.match(p.name))]
    return sorted(f for f in found if (f[1] / "state.json").is_file())


def latest(folder: Path) -> Optional[Path]:
    found = checkpoints(folder)
    return found[-1][1] if found else None


def load(path: Path, accelerator, model, optimizer, scheduler, names=None) -> dict:
    """Restore everything saved in ``path``; returns the saved state (with ``step``). With
    ``optimizer`` None (a new stage starts here) its state and the schedule's are not read."""
    model = accelerator.unwrap_model(model)
    saved = json.loads((path / "state.json").read_text())
    sharded, by_names = sharding.is_sharded(model), saved.pop("optimizer", None) == "names"
    weights = load_file(str(path / "trainable.safetensors"))
    params = dict(model.named_parameters())
    missing = [n for n, p in params.items() if (p.requires_grad if names is None else n in names)
               and n not in weights]
    extra = [n for n in weights if n not in params]
    if missing or extra:
        raise AdapterFileError(
            f"checkpoint {str(path)!r} does not fit this model (missing {missing[:3]}, unexpected "
            f"{extra[:3]}); resume with the config it was written with, or start without --resume."
        )
    if sharded:
        sharding.load_whole(model, weights)
    else:
        with torch.no_grad():
            for name, tensor in weights.items():
                params[name].copy_(tensor)
    if optimizer is not None:
        optim_state = torch.load(path / "optimizer.pt", weights_only=True, map_location="cpu")
        if sharded:  # a checkpoint of an unsharded run (DDP, one process) resumes with FSDP, and back
            sharding.load_optimizer_state(model, optimizer, optim_state if by_names else
                                          sharding.state_by_names(model, optimizer, optim_state))
        else:
            optimizer.load_state_dict(sharding.state_by_indices(model, optimizer, optim_state) if by_names
                                      else optim_state)
        scheduler.load_state_dict(json.loads((path / "scheduler.json").read_text()))
    rank = accelerator.process_index
    rng_file = path / f"rng-{rank}.safetensors"
    if rng_file.is_file():
        gen = load_file(str(rng_file))
        torch.set_rng_state(gen["cpu"])
        if "cuda" in gen and torch.cuda.is_available():
            torch.cuda.set_rng_state(gen["cuda"])
        version, inner, gauss = json.loads((path / f"rng-{rank}.json").read_text())
        random.setstate((version, tuple(inner), gauss))
    return saved

"""Resuming a run: find the checkpoint, read every file of it and check it before anything is restored.

``resume``: False (a fresh run), True (``--resume``: the newest checkpoint in ``output.dir``; an error
when there is none) or ``"auto"`` (``--resume auto``: resume when there is a checkpoint, otherwise
say so on stderr and start fresh).

``read`` parses every file of a checkpoint (see checkpoint.py for the layout) and checks its
types; ``check_config`` compares the settings the checkpoint was written with to this run's (a
changed ``adapter.rank`` is named as such); ``check_fit`` checks each tensor against the model
and the optimizer. Each error names the file and says what to do; the model, the optimizer and
the files on disk are untouched until all of them pass.
"""

from __future__ import annotations

import dataclasses
import json
import pickle
import random
import sys
from pathlib import Path
from typing import Any, Optional

import torch

from ..errors import AdapterFileError, ConfigError
from . import checkpoint
from .state import RunState, whole_number

MODES = (False, True, "auto")
# settings a checkpoint's tensors depend on: changing one between runs makes it unusable
_FIXED = (
    "adapter",
    "quantization",
    "stages",
    "model.task",
    "model.num_labels",
    "optim.optimizer",
    "optim.loraplus_ratio",
)
# optimizer state tensors shaped like their parameter (torch's Adam/AdamW/SGD, bitsandbytes')
_SHAPED = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq", "momentum_buffer", "state1", "state2")


@dataclasses.dataclass
class Saved:
    """A checkpoint read back whole: every file parsed, nothing applied yet."""

    path: Path
    state: RunState
    weights: dict[str, torch.Tensor]
    optimizer: dict
    scheduler: dict
    rng: Optional[tuple[dict, tuple]]  # (torch generators, Python's random state), if saved for this rank

    @property
    def step(self) -> int:
        return self.state.step


def check_mode(resume: Any) -> None:
    if not any(resume is m or (isinstance(m, str) and resume == m) for m in MODES):
        raise ConfigError(f"resume must be False, True or 'auto'; got {resume!r}.")


def _hint(path: Path) -> str:
    """What to do about a bad checkpoint: fall back to the one before it, or start afresh."""
    older = [p for _, p in checkpoint.checkpoints(path.parent) if p != path and p.name < path.name]
    fresh = "train without --resume to start afresh (that replaces the checkpoints)"
    if older:
        return f"Delete {str(path)!r} to resume from {older[-1].name}, or {fresh}."
    return f"{fresh[0].upper()}{fresh[1:]}."


def _bad(path: Path, file: str, problem: str) -> AdapterFileError:
    return AdapterFileError(f"checkpoint file {str(path / file)!r} {problem}. {_hint(path)}")


def find(out: Path, resume, save_every: int, main_process: bool = True) -> Optional[Path]:
    """The checkpoint folder to resume from, or None for a fresh start."""
    if resume is False:
        return None
    folder = out / "checkpoints"
    found = checkpoint.latest(folder)
    if found is not None:
        return found
    if resume == "auto":
        if main_process:
            print(
                f"adapterkit: no checkpoint in {str(folder)!r}; --resume auto starts a fresh run.",
                file=sys.stderr,
                flush=True,
            )
        return None
    why = " (output.save_every is 0: this config writes none)" if not save_every else ""
    raise ConfigError(
        f"--resume: no checkpoint in {str(folder)!r} to resume from{why}. Train without --resume "
        f"to start a fresh run, or with --resume auto to resume only when there is one."
    )


def _json(path: Path, file: str) -> Any:
    try:
        return json.loads((path / file).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise _bad(path, file, "is missing") from None
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        raise _bad(path, file, f"is not valid JSON ({err})") from None


def _state(path: Path) -> RunState:
    try:
        return RunState.from_json(_json(path, "state.json"))
    except ValueError as err:
        raise _bad(path, "state.json", str(err)) from None


def _tensors(path: Path, file: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    if not (path / file).is_file():
        raise _bad(path, file, "is missing")
    try:
        return load_file(str(path / file), device="cpu")
    except Exception as err:  # noqa: BLE001 - safetensors raises its own error types
        raise _bad(path, file, f"is truncated or corrupt ({err})") from None


def _optimizer(path: Path) -> dict:
    file = path / "optimizer.pt"
    if not file.is_file():
        raise _bad(path, "optimizer.pt", "is missing")
    try:  # never unpickle: tensors and plain containers only
        data = torch.load(file, weights_only=True, map_location="cpu")
    except Exception as err:  # noqa: BLE001 - truncated, garbage, or objects weights_only refuses
        if isinstance(err, pickle.UnpicklingError) and "GLOBAL" in str(err):  # a class or function
            # torch's own message suggests weights_only=False: never, here
            raise _bad(
                path,
                "optimizer.pt",
                "holds objects other than tensors and plain values, which adapterkit never unpickles",
            ) from None
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if isinstance(err, pickle.UnpicklingError):
            reason = "not data that torch.save wrote"  # torch's own words advise unsafe loading
        raise _bad(path, "optimizer.pt", f"is truncated or corrupt ({reason})") from None
    groups = data.get("param_groups") if isinstance(data, dict) else None
    if not (
        isinstance(data.get("state") if isinstance(data, dict) else None, dict)
        and isinstance(groups, list)
        and all(isinstance(g, dict) and isinstance(g.get("params"), list) for g in groups)
    ):
        raise _bad(path, "optimizer.pt", "is not an optimizer state (no 'state' and 'param_groups')")
    return data


def _scheduler(path: Path) -> dict:
    data = _json(path, "scheduler.json")
    if not (
        isinstance(data, dict)
        and whole_number(data.get("last_epoch"), -1)
        and isinstance(data.get("base_lrs"), list)
        and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in data["base_lrs"])
    ):
        raise _bad(path, "scheduler.json", "is not a learning-rate schedule's state (last_epoch, base_lrs)")
    return data


def _rng(path: Path, rank: int) -> Optional[tuple[dict, tuple]]:
    name = f"rng-{rank}.safetensors"
    if not (path / name).is_file():
        return None  # written by a run with fewer processes: this one keeps its own seed
    gen = _tensors(path, name)
    cpu = gen.get("cpu")
    if cpu is None or cpu.dtype != torch.uint8 or cpu.shape != torch.get_rng_state().shape:
        raise _bad(path, name, "does not hold torch's CPU generator state ('cpu')")
    py = _json(path, f"rng-{rank}.json")
    try:
        state = (py[0], tuple(py[1]), py[2])
        random.Random().setstate(state)  # checked on a throwaway generator
    except (TypeError, ValueError, IndexError, KeyError, OverflowError):
        raise _bad(path, f"rng-{rank}.json", "does not hold Python's random state") from None
    return gen, state


def read(path: Path, rank: int = 0) -> Saved:
    """Every file of checkpoint ``path`` parsed and type-checked; nothing applied."""
    state = _state(path)
    return Saved(
        path, state, _tensors(path, "trainable.safetensors"), _optimizer(path), _scheduler(path), _rng(path, rank)
    )


def _value(data: dict, key: str) -> Any:
    section, _, field = key.partition(".")
    value = data.get(section)
    return value.get(field) if field and isinstance(value, dict) else value


def _changes(before: Any, now: Any, key: str) -> list[str]:
    """``key: before -> now`` for each field that differs (fields of a section one by one)."""
    if isinstance(before, dict) and isinstance(now, dict):
        fields = list(dict.fromkeys([*before, *now]))
        return [c for f in fields for c in _changes(before.get(f), now.get(f), f"{key}.{f}")]
    return [] if before == now else [f"{key} {before!r} -> {now!r}"]


def check_config(saved: Saved, config) -> None:
    """The settings the checkpoint's tensors depend on are the same in this run's config."""
    written = saved.state.config
    if not written:
        return  # a checkpoint from before configs were recorded
    now = json.loads(json.dumps(config.to_dict()))  # tuples as lists, as in the file
    changed = [c for key in _FIXED for c in _changes(_value(written, key), _value(now, key), key)]
    if changed:
        raise ConfigError(
            f"checkpoint {str(saved.path)!r} was written with other settings than this config: "
            f"{'; '.join(changed[:4])}. Resume with the settings it was written with, or train without "
            f"--resume to start afresh (that replaces the checkpoints)."
        )


def check_fit(saved: Saved, model, optimizer, scheduler, names=None) -> None:
    """Every tensor fits: weights to the model's parameters, optimizer state to its parameter groups."""
    params = dict(model.named_parameters())
    wanted = [n for n, p in params.items() if (p.requires_grad if names is None else n in names)]
    missing = [n for n in wanted if n not in saved.weights]
    extra = [n for n in saved.weights if n not in params]
    if missing or extra:
        parts = [
            f"{label} {', '.join(names[:3])}" for label, names in (("missing", missing), ("unexpected", extra)) if names
        ]
        raise _bad(
            saved.path,
            "trainable.safetensors",
            f"does not fit this model ({'; '.join(parts)}): resume with the config it was written with",
        )
    for name, tensor in saved.weights.items():
        if tuple(tensor.shape) != tuple(params[name].shape):
            raise _bad(
                saved.path,
                "trainable.safetensors",
                f"holds {name!r} with shape {tuple(tensor.shape)}, "
                f"but this model's is {tuple(params[name].shape)} (the adapter's rank or the model "
                f"changed since it was written)",
            )
    if optimizer is not None and saved.state.optimizer != "names":  # FSDP's is keyed by names
        _check_optimizer(saved, optimizer, scheduler)


def _check_optimizer(saved: Saved, optimizer, scheduler) -> None:
    groups, mine = saved.optimizer["param_groups"], optimizer.param_groups
    sizes, my_sizes = [len(g["params"]) for g in groups], [len(g["params"]) for g in mine]
    if sizes != my_sizes:
        raise _bad(
            saved.path,
            "optimizer.pt",
            f"has parameter groups of sizes {sizes}, this run's optimizer "
            f"{my_sizes} (optim.loraplus_ratio, the stages or the adapter changed since it was written)",
        )
    by_id = dict(zip([i for g in groups for i in g["params"]], [p for g in mine for p in g["params"]]))
    for key, entry in saved.optimizer["state"].items():
        if key not in by_id or not isinstance(entry, dict):
            raise _bad(saved.path, "optimizer.pt", f"holds state for a parameter {key!r} it has no group for")
        _check_shapes(saved, entry, tuple(by_id[key].shape))
    if len(saved.scheduler["base_lrs"]) != len(mine):
        raise _bad(
            saved.path,
            "scheduler.json",
            f"has {len(saved.scheduler['base_lrs'])} learning rates for {len(mine)} parameter groups",
        )


def _check_shapes(saved: Saved, entry: dict, shape: tuple) -> None:
    for name, value in entry.items():
        if isinstance(value, dict):  # bitsandbytes nests its state
            _check_shapes(saved, value, shape)
        elif name in _SHAPED and isinstance(value, torch.Tensor) and tuple(value.shape) != shape:
            raise _bad(
                saved.path,
                "optimizer.pt",
                f"holds {name} of shape {tuple(value.shape)} for a parameter of shape {shape}",
            )

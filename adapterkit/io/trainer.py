"""Trainer checkpoints that hold the adapters, in PEFT's layout, instead of the whole model.

    trainer = Trainer(model=model, args=args, train_dataset=data, callbacks=[ak.checkpoint_callback()])

Without the callback, transformers' Trainer checkpoints with ``model.save_pretrained``: the whole
model, base weights under their own names (``adapterkit/state_dict.py``), adapters beside them;
``from_pretrained`` loads the real base model from it and ``resume_from_checkpoint`` restores
everything, but each checkpoint is as big as the model. With it, each ``checkpoint-N`` holds:

    adapter_config.json, adapter_model.safetensors, README.md
        what ``ak.save_adapter`` writes: PEFT's ``PeftModel.from_pretrained`` and
        ``ak.load_adapter`` read them;
    model.safetensors
        only the adapters' tensors, under the keys of ``model.state_dict()``: what
        ``trainer.train(resume_from_checkpoint=...)`` and ``load_best_model_at_end`` read back;
    optimizer.pt, scheduler.pt, rng_state.pth, trainer_state.json, training_args.bin
        the Trainer's own state, as it writes it.

and no ``config.json``: ``from_pretrained(checkpoint)`` then loads the base model that
adapter_config.json names and puts the adapter on it (transformers' PEFT integration), or fails
when it names none; it never builds a model with weights missing.

How, with public hooks only: a state-dict hook on the model is armed at the last callback event
before the Trainer saves (``on_step_end`` / ``on_epoch_end`` / ``on_log`` / ``on_evaluate``, once
no logging or evaluation is left before the save) and disarms itself after one ``state_dict()``
call, the Trainer's own in ``save_pretrained``, which so writes only the adapters' tensors; the
model's ``state_dict()`` is whole at every other moment. ``on_save`` then deletes the
``config.json`` the Trainer wrote and adds the adapter files; if the whole model got written after
all (some other ``state_dict()`` call took the armed hook), it rewrites ``model.safetensors`` with
the adapters only. A load hook (from ``on_init_end`` to ``on_train_end``) keeps loads of
adapter-only weights from listing every base weight as missing.

Limits: until ``on_save``, a checkpoint being written holds the Trainer's ``config.json`` next to
the adapter-only weights, so a run killed in the Trainer's own checkpoint write leaves a
half-written checkpoint (as the Trainer does without adapters), and the hook armed: the model's next
``state_dict()`` is then adapter-only, until ``train()`` runs again. ``trainer.save_model()`` writes
the whole model, as without the callback; write the final adapter with ``ak.save_adapter``.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Optional

from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn
from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from transformers.utils import CONFIG_NAME, SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME

from ..errors import AdapterNameError
from ..inject import adapter_layers, adapter_names
from .atomic import staged
from .save import save_adapter
from .state import logical_name


def adapter_prefixes(model: nn.Module, prefix: str = "") -> tuple[str, ...]:
    """Every ``model.state_dict()`` key that starts with one of these is an adapter's tensor."""
    names = (logical_name(model, name) for name, _ in adapter_layers(model))
    return tuple(dict.fromkeys(f"{prefix}{n}.adapters." if n else f"{prefix}adapters." for n in names))


def keep_adapters(model: nn.Module, state: dict, prefix: str, local_metadata: dict) -> None:
    """State-dict post-hook: drop every tensor that is not an adapter's (none if there is no adapter)."""
    keep = adapter_prefixes(model, prefix)
    if keep:
        for key in [k for k in state if k.startswith(prefix) and not k.startswith(keep)]:
            del state[key]


class ArmedSave:
    """State-dict post-hook: the one ``state_dict()`` call it is armed for keeps only the adapters."""

    def __init__(self):
        self.armed = False

    def __call__(self, model: nn.Module, state: dict, prefix: str, local_metadata: dict) -> None:
        if self.armed:
            self.armed = False
            keep_adapters(model, state, prefix, local_metadata)


class AdapterLoads:
    """Load hooks: a state dict of adapter tensors only leaves the base as it is, not 'missing'."""

    def __init__(self):
        self.pending: list[Optional[tuple[str, tuple[str, ...]]]] = []

    def before(self, model: nn.Module, state: dict, prefix: str, *_) -> None:
        keep = adapter_prefixes(model, prefix)
        keys = [k for k in state if k.startswith(prefix)]
        only = bool(keep and keys) and all(k.startswith(keep) for k in keys)
        self.pending.append((prefix, keep) if only else None)

    def after(self, model: nn.Module, incompatible) -> None:
        entry = self.pending.pop() if self.pending else None
        if entry is not None:
            prefix, keep = entry
            incompatible.missing_keys[:] = [
                k for k in incompatible.missing_keys if k.startswith(keep) or not k.startswith(prefix)
            ]


def _adapter_weights_only(folder: Path, model: nn.Module) -> None:
    """``model.safetensors`` with the adapters' tensors only, whatever the Trainer wrote there."""
    weights, index = folder / SAFE_WEIGHTS_NAME, folder / SAFE_WEIGHTS_INDEX_NAME
    keep = adapter_prefixes(model)
    if weights.is_file() and not index.is_file():
        with safe_open(str(weights), "pt") as f:
            if all(k.startswith(keep) for k in f.keys()):
                return
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items() if k.startswith(keep)}
    with staged() as stage:
        stage(weights, lambda tmp: save_file(state, str(tmp), metadata={"format": "pt"}))
    if index.is_file():  # a sharded whole model: its shards and index go once the small file is in
        for shard in set(json.loads(index.read_text())["weight_map"].values()):
            (folder / shard).unlink(missing_ok=True)
        index.unlink()


def finish_checkpoint(folder: Path, model: nn.Module) -> None:
    """A checkpoint the Trainer just wrote: its config.json out, adapter-only weights, the adapter files in."""
    if not folder.is_dir():
        warnings.warn(
            f"adapterkit: no checkpoint folder {str(folder)!r} to write the adapter into "
            f"(hyperparameter search runs keep theirs elsewhere); it holds what the Trainer wrote.",
            stacklevel=2,
        )
        return
    (folder / CONFIG_NAME).unlink(missing_ok=True)  # first: from here on no loader reads it as a model
    _adapter_weights_only(folder, model)
    save_adapter(model, folder, overwrite=True)


class AdapterCheckpoints(TrainerCallback):
    """A ``transformers.TrainerCallback``: checkpoints hold the adapters (see the module docstring).

    Works with ``Trainer`` and its subclasses (TRL's ``SFTTrainer``). Every adapter of the model
    is saved (``default`` at the folder's top, others in sub-folders, as ``save_adapter`` does).
    """

    def __init__(self):
        self.saves: Optional[ArmedSave] = None
        self.handles: list = []
        self.loads_hooked = False

    def _hook_loads(self, model: nn.Module) -> None:
        if not self.loads_hooked:
            loads = AdapterLoads()
            self.handles += [
                model.register_load_state_dict_pre_hook(loads.before),
                model.register_load_state_dict_post_hook(loads.after),
            ]
            self.loads_hooked = True

    def _arm(self, args, control, evaluated: bool = False) -> None:
        """Armed when the Trainer's next step is the save: nothing left to log or evaluate first."""
        if self.saves is not None:
            save = control.should_save or (evaluated and args.save_strategy == "best")
            self.saves.armed = bool(save and not control.should_evaluate and not control.should_log)

    def _disarm(self, *args, **kwargs) -> None:
        if self.saves is not None:
            self.saves.armed = False

    def on_init_end(self, args, state, control, model=None, **kwargs):
        if model is not None:
            self._hook_loads(model)

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if not adapter_names(model):
            raise AdapterNameError(
                "ak.checkpoint_callback() saves a model's adapters, but this model has none; attach "
                "one first (ak.attach), or leave the callback out to checkpoint the whole model."
            )
        self._hook_loads(model)
        self._disarm()
        if self.saves is None:
            self.saves = ArmedSave()
            self.handles.append(model.register_state_dict_post_hook(self.saves))

    def on_step_end(self, args, state, control, **kwargs):
        self._arm(args, control)

    on_epoch_end = on_log = on_step_end
    on_step_begin = on_epoch_begin = _disarm

    def on_evaluate(self, args, state, control, **kwargs):
        self._arm(args, control, evaluated=True)

    def on_save(self, args, state, control, model=None, **kwargs):
        self._disarm()
        if args.should_save:
            finish_checkpoint(Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}", model)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        for handle in self.handles:
            handle.remove()
        self.handles, self.saves, self.loads_hooked = [], None, False


def checkpoint_callback() -> AdapterCheckpoints:
    """The callback that makes Trainer checkpoints hold the adapters: ``Trainer(..., callbacks=[it])``."""
    return AdapterCheckpoints()

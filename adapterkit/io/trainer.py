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

How, with public hooks only: from ``on_train_begin`` to ``on_train_end`` a state-dict hook on the
model keeps only the adapters' tensors, so the Trainer's own ``save_pretrained`` writes the small
file; ``on_save`` then deletes the ``config.json`` it wrote and adds the adapter files. A load hook
(from ``on_init_end``) keeps loads of such adapter-only files from listing every base weight as
missing. While the Trainer writes a checkpoint (until ``on_save``), the folder holds its
``config.json`` next to the adapter-only weights: a run killed then leaves a half-written
checkpoint. ``trainer.save_model()`` outside training writes the whole model as above; write the
adapter with ``ak.save_adapter(model, folder)``.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Optional

from torch import nn
from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from transformers.utils import CONFIG_NAME

from ..errors import AdapterNameError
from ..inject import adapter_layers, adapter_names
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
            incompatible.missing_keys[:] = [k for k in incompatible.missing_keys
                                            if k.startswith(keep) or not k.startswith(prefix)]


def finish_checkpoint(folder: Path, model: nn.Module) -> None:
    """A checkpoint the Trainer just wrote: its config.json out, the adapter files in."""
    if not folder.is_dir():
        warnings.warn(f"adapterkit: no checkpoint folder {str(folder)!r} to write the adapter into "
                      f"(hyperparameter search runs keep theirs elsewhere); it holds what the Trainer wrote.")
        return
    (folder / CONFIG_NAME).unlink(missing_ok=True)  # first: the weights there are only the adapters'
    save_adapter(model, folder, overwrite=True)


class AdapterCheckpoints(TrainerCallback):
    """A ``transformers.TrainerCallback``: checkpoints hold the adapters (see the module docstring).

    Works with ``Trainer`` and its subclasses (TRL's ``SFTTrainer``). Every adapter of the model
    is saved (``default`` at the folder's top, others in sub-folders, as ``save_adapter`` does).
    """

    def __init__(self):
        self.handles: dict[str, list] = {}

    def _hook(self, kind: str, model: nn.Module) -> None:
        if kind in self.handles:
            return
        if kind == "loads":
            loads = AdapterLoads()
            self.handles[kind] = [model.register_load_state_dict_pre_hook(loads.before),
                                  model.register_load_state_dict_post_hook(loads.after)]
        else:
            self.handles[kind] = [model.register_state_dict_post_hook(keep_adapters)]

    def on_init_end(self, args, state, control, model=None, **kwargs):
        if model is not None:
            self._hook("loads", model)

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if not adapter_names(model):
            raise AdapterNameError(
                "ak.checkpoint_callback() saves a model's adapters, but this model has none; attach "
                "one first (ak.attach), or leave the callback out to checkpoint the whole model."
            )
        self._hook("loads", model)
        self._hook("saves", model)

    def on_save(self, args, state, control, model=None, **kwargs):
        if args.should_save:
            finish_checkpoint(Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}", model)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        for handles in self.handles.values():
            for handle in handles:
                handle.remove()
        self.handles.clear()


def checkpoint_callback() -> AdapterCheckpoints:
    """The callback that makes Trainer checkpoints hold the adapters: ``Trainer(..., callbacks=[it])``."""
    return AdapterCheckpoints()

"""TRL's DPO and GRPO trainers for adapterkit models: the reference model is the policy itself with
its adapters disabled (``ak.disabled``), so the base weights are held once.

TRL recognises adapters only on a ``PeftModel``; given any other model it loads a second, full copy
of the weights (from ``model.config.name_or_path``) as the reference. These subclasses hand TRL the
reference through its own seams instead, and change nothing else:

- ``DPOTrainer``: TRL's ``precompute_ref_log_probs`` (turned on here) computes the reference
  log-probs once, before training, with the public ``compute_ref_log_probs``, which this class runs
  under ``ak.disabled(model)``. Training reads them from the dataset: no reference forward at all.
- ``GRPOTrainer``: with ``beta != 0`` the reference scores each generated batch; TRL calls
  ``trainer.ref_model(...)`` for it, and here ``ref_model`` is ``DisabledAdapters(model)``, the policy
  run under ``ak.disabled`` and ``torch.no_grad``. With ``use_vllm=True`` the weight sync sends
  ``ak.base_state_dict(model, merged=True)`` (see ``vllm_sync``).

Both add ``ak.checkpoint_callback()`` to the callbacks unless one is there already, so their
checkpoints hold the adapters in PEFT's layout and the trainer's state, not the whole model
(``adapterkit/io/trainer.py``); ``adapter_checkpoints=False`` leaves the callbacks as given.

    from trl import DPOConfig
    from adapterkit.integrations.trl import DPOTrainer

    ak.attach(model, ak.LoRAConfig(rank=16, alpha=32, targets="all-linear"))
    DPOTrainer(model, args=DPOConfig("out", beta=0.1), train_dataset=pairs, processing_class=tok).train()
"""

from __future__ import annotations

import copy

import torch
import trl
from datasets import IterableDataset
from torch import nn

from ..anatomy import output_head
from ..errors import ConfigError, TargetError
from ..inject import adapter_names, disabled
from ..io.trainer import AdapterCheckpoints, checkpoint_callback
from ..layer import AdapterLayer
from .vllm_sync import VLLMWeightSync

__all__ = ["DPOTrainer", "GRPOTrainer", "DisabledAdapters"]


class DisabledAdapters:
    """The reference policy: ``model`` itself with its adapters disabled, called like a model.

    Holds no weights: ``ref(**inputs)`` is ``model(**inputs)`` under ``ak.disabled(model)`` and
    ``torch.no_grad()``, that is the base model's output.
    """

    def __init__(self, model: nn.Module):
        self.model = model

    def __call__(self, *args, **kwargs):
        with torch.no_grad(), disabled(self.model):
            return self.model(*args, **kwargs)


class DPOTrainer(trl.DPOTrainer):
    """``trl.DPOTrainer`` whose reference is ``model`` with its adapters disabled.

    ``model`` must carry adapterkit adapters (``ak.attach``). The reference log-probs are computed once
    before training (``precompute_ref_log_probs`` is set on a copy of ``args``; datasets for
    ``evaluate`` go in ``eval_dataset`` here, as TRL asks in that mode). Checkpoints hold the adapters
    (``adapter_checkpoints=False``: whatever the given callbacks make of them). Other arguments are TRL's.
    """

    def __init__(
        self,
        model: nn.Module,
        ref_model=None,
        args: trl.DPOConfig | None = None,
        *,
        adapter_checkpoints: bool = True,
        **kwargs,
    ):
        _check_policy(model, "DPOTrainer", kwargs.get("peft_config"))
        if ref_model is not None:
            raise ConfigError(
                "DPOTrainer got a ref_model, but its reference is the model itself with its adapters "
                "disabled (one copy of the weights). Omit ref_model, or use trl.DPOTrainer to train "
                "against a separate reference model."
            )
        _check_map_style(kwargs.get("train_dataset"), kwargs.get("eval_dataset"))
        args = copy.copy(args) if args is not None else trl.DPOConfig(_run_name(model, "DPO"))
        _check_no_sync(args)
        args.precompute_ref_log_probs = True
        if adapter_checkpoints:
            kwargs["callbacks"] = with_checkpoint_callback(kwargs.get("callbacks"))
        super().__init__(model, None, args, **kwargs)

    def compute_ref_log_probs(self, model, inputs):
        """TRL's reference log-probs of one padded batch, from ``model`` with its adapters disabled."""
        with disabled(model):
            return super().compute_ref_log_probs(model, inputs)


class GRPOTrainer(trl.GRPOTrainer):
    """``trl.GRPOTrainer`` whose reference (``beta != 0``) is ``model`` with its adapters disabled.

    ``model`` must carry adapterkit adapters. With ``use_vllm=True`` the weights sent to vLLM are the
    base model's own parameters with the adapters folded in. Checkpoints hold the adapters, as in
    ``DPOTrainer``. Other arguments are TRL's.
    """

    def __init__(
        self,
        model: nn.Module,
        reward_funcs=None,
        args: trl.GRPOConfig | None = None,
        *,
        adapter_checkpoints: bool = True,
        **kwargs,
    ):
        _check_policy(model, "GRPOTrainer", kwargs.get("peft_config"))
        args = copy.copy(args) if args is not None else trl.GRPOConfig(_run_name(model, "GRPO"))
        _check_no_sync(args)
        if adapter_checkpoints:
            kwargs["callbacks"] = with_checkpoint_callback(kwargs.get("callbacks"))
        # TRL builds its reference model only when beta != 0: build the trainer with beta 0, then set it.
        beta, args.beta = args.beta, 0.0
        super().__init__(model, reward_funcs, args, **kwargs)
        args.beta = self.beta = beta
        if beta != 0.0:
            self.ref_model = DisabledAdapters(self.model)
        if self.use_vllm:
            _check_unsharded(self)
            self.vllm_generation = VLLMWeightSync(self.vllm_generation, self.model)


def with_checkpoint_callback(callbacks) -> list:
    """``callbacks`` with ``ak.checkpoint_callback()`` added, unless one (or its class) is there."""
    callbacks = list(callbacks or [])
    given = any(
        isinstance(c, AdapterCheckpoints) or (isinstance(c, type) and issubclass(c, AdapterCheckpoints))
        for c in callbacks
    )
    return callbacks if given else callbacks + [checkpoint_callback()]


def _check_policy(model, trainer: str, peft_config) -> None:
    """The policy must be an instance with adapterkit adapters, and none on the output head."""
    if not isinstance(model, nn.Module):
        raise ConfigError(
            f"{trainer} takes a model instance with adapterkit adapters, got {type(model).__name__}. "
            f"Load the model, ak.attach(model, ak.LoRAConfig(...)), then pass it."
        )
    if peft_config is not None:
        raise ConfigError(
            f"{trainer} got a peft_config; adapterkit attaches the adapter itself. Call "
            f"ak.attach(model, config) first and omit peft_config."
        )
    if not adapter_names(model):
        raise ConfigError(
            f"{trainer}: {type(model).__name__} has no adapterkit adapter, so its reference would be the "
            f"model being trained. Attach one first (ak.attach(model, ak.LoRAConfig(...))); for a PEFT "
            f"model use trl.{trainer} itself."
        )
    head = output_head(model)
    if isinstance(head, AdapterLayer):
        raise TargetError(
            f"{trainer}: the output head ({type(head.innermost()).__name__}) has an adapter, which TRL "
            f"would ignore: it computes log-probs from the head's weight directly. Leave the head out of "
            f"targets and train_modules (targets='all-linear' already does)."
        )


def _check_no_sync(args) -> None:
    if getattr(args, "sync_ref_model", False):
        raise ConfigError(
            "sync_ref_model=True: the reference here is the frozen base model (adapters disabled), so "
            "there is no reference copy to synchronise. Set sync_ref_model=False."
        )


def _check_map_style(*datasets) -> None:
    for data in datasets:
        for part in data.values() if isinstance(data, dict) else [data]:
            if isinstance(part, IterableDataset):
                raise ConfigError(
                    "DPOTrainer computes the reference log-probs once, before training, into the dataset, "
                    "which needs a map-style datasets.Dataset; got an IterableDataset. Load it without "
                    "streaming (e.g. Dataset.from_generator)."
                )


def _check_unsharded(trainer: trl.GRPOTrainer) -> None:
    plugin = trainer.args.deepspeed_plugin
    if trainer.is_fsdp_enabled or (plugin is not None and plugin.zero_stage == 3):
        raise ConfigError(
            "use_vllm=True with FSDP or DeepSpeed ZeRO-3: adapterkit's vLLM weight sync reads whole "
            "(unsharded) weights. Use DDP or ZeRO-1/2, or generate without vLLM (use_vllm=False)."
        )


def _run_name(model: nn.Module, method: str) -> str:
    """TRL's default output folder, ``<model name>-<method>``."""
    name = str(getattr(model, "name_or_path", "") or "model").rstrip("/").split("/")[-1]
    return f"{name}-{method}"

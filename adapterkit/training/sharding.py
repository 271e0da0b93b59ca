"""FSDP2 (torch's ``fully_shard``) in the training loop, asked for by an Accelerate config.

``accelerate launch --config_file fsdp.yaml`` (``distributed_type: FSDP``, ``fsdp_version: 2``)
starts the processes and sets ``ACCELERATE_USE_FSDP`` and the ``FSDP_*`` settings. Then:

- where Accelerate runs FSDP itself (a GPU machine), the loop hands it the model and the
  optimizer together (``accelerator.prepare(model, optimizer)``, as FSDP2 requires);
- on a CPU, Accelerate 1.15 does not: its state picks FSDP only for GPU-like devices, so the
  processes come up as ``MULTI_CPU`` and ``prepare`` would wrap the model in DDP, silently. There
  adapterkit shards the model itself, as Accelerate's FSDP2 path does: ``fully_shard`` on each
  transformer block (the config's ``fsdp_transformer_layer_cls_to_wrap``, else the blocks
  adapterkit finds), then on the whole model, over a gloo mesh of all processes; the optimizer is
  built on the sharded parameters and prepared alone.

A sharded parameter is a DTensor: each process holds a slice. ``gather`` makes whole tensors of
the parameters asked for (``DTensor.full_tensor()``, a collective every process must join, in the
same order): the adapter is saved from those, by the main process only. Only floating-point
parameters are sharded; a quantized base's packed codes and scales are buffers, which FSDP2
leaves whole on every process (so a 4-bit base is replicated, its float weights sharded).
After ``train`` the model is still sharded over a process group that is gone: read the adapter
from the saved files.
"""

from __future__ import annotations

import contextlib
import os
from typing import Callable, Iterable, Optional

import torch
from torch import nn

from ..anatomy import blocks
from ..errors import ConfigError

# FSDP plugin settings the CPU path does not carry out: refused rather than ignored. (Loading settings,
# fsdp_cpu_ram_efficient_loading / fsdp_sync_module_states, change no result: every process loads the
# whole model before it is sharded. fsdp_state_dict_type is for accelerator.save_state: the adapter is
# always saved whole.)
_CPU_UNSUPPORTED = {"activation_checkpointing": "fsdp_activation_checkpointing (use model.gradient_checkpointing)"}


def requested() -> bool:
    """Whether the launch asked for FSDP (``accelerate launch`` with an FSDP config sets this)."""
    return os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"


def deepspeed_requested() -> bool:
    return os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"


def accelerate_runs_fsdp(accelerator) -> bool:
    from accelerate.utils import DistributedType

    return accelerator.distributed_type == DistributedType.FSDP


def plugin(accelerator):
    """The FSDP settings: Accelerate's own plugin, or one built from the launch's FSDP_* variables."""
    from accelerate.utils import FullyShardedDataParallelPlugin

    if accelerate_runs_fsdp(accelerator):
        return accelerator.state.fsdp_plugin
    return FullyShardedDataParallelPlugin()


def check(config, accelerator) -> None:
    """Refuse, with what to do instead, what this FSDP path does not run."""
    if deepspeed_requested():
        raise ConfigError(
            "the Accelerate config asks for DeepSpeed, which adapterkit train does not run: its loop accumulates "
            "gradients and clips them itself and saves the optimizer state from the main process, which DeepSpeed "
            "does inside its engine and per partition (on a CPU, Accelerate 1.15 cannot run it either: "
            f"it set up {accelerator.distributed_type.value}). Shard with an FSDP config (fsdp_version: 2) instead, "
            "or train on N processes with --num-processes N (DDP)."
        )
    if not requested():
        return
    p = plugin(accelerator)
    if p.fsdp_version != 2:
        raise ConfigError(
            f"the Accelerate config asks for FSDP version {p.fsdp_version}; adapterkit trains "
            "with FSDP2 (torch's fully_shard): set fsdp_version: 2 in its fsdp_config."
        )
    if config.stages:
        raise ConfigError(
            "stages: with FSDP are not supported (a sharded model cannot change what trains "
            "between stages); run the stages with DDP (--num-processes N) or one process."
        )
    if config.eval.generate:
        raise ConfigError(
            "eval.generate with FSDP is not supported (generation lengths differ between "
            "processes, while each forward of a sharded model needs them all); set "
            "eval.generate: false and run `adapterkit generate` on the saved adapter."
        )
    if not accelerate_runs_fsdp(accelerator):
        _check_cpu(p, accelerator)


def _check_cpu(p, accelerator) -> None:
    from torch.distributed.fsdp import CPUOffloadPolicy

    unsupported = [text for attr, text in _CPU_UNSUPPORTED.items() if getattr(p, attr, False)]
    if isinstance(p.cpu_offload, CPUOffloadPolicy):
        unsupported.append("fsdp_offload_params (the parameters are on the CPU already)")
    if accelerator.mixed_precision != "no":
        unsupported.append(f"mixed_precision {accelerator.mixed_precision!r} (use 'no')")
    if unsupported:
        raise ConfigError(
            f"FSDP on a CPU (adapterkit's fully_shard path) does not run: {'; '.join(unsupported)}. "
            "Turn these off in the Accelerate config, or train on a GPU machine."
        )


def _units(model: nn.Module, names: Optional[Iterable[str]]) -> list[nn.Module]:
    """The modules sharded one by one before the whole model: the transformer blocks."""
    if names:
        names = set(names)
        found = [m for m in model.modules() if type(m).__name__ in names]
        if not found:
            raise ConfigError(
                f"fsdp_transformer_layer_cls_to_wrap {sorted(names)} names no module class of "
                f"{type(model).__name__}; name its decoder layer class (e.g. LlamaDecoderLayer)."
            )
        return found
    return [model.get_submodule(b.prefix) for b in blocks(model)]


def shard(accelerator, model: nn.Module) -> nn.Module:
    """``fully_shard`` each block, then the model (in place), over all processes on the CPU."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    p = plugin(accelerator)
    mesh = init_device_mesh(accelerator.device.type, (accelerator.num_processes,))
    for unit in _units(model, p.transformer_cls_names_to_wrap):
        fully_shard(unit, mesh=mesh, reshard_after_forward=p.reshard_after_forward)
    fully_shard(model, mesh=mesh)
    return model


def prepare(accelerator, model: nn.Module, make_optimizer: Callable[[nn.Module], torch.optim.Optimizer]):
    """(sharded model, optimizer over its sharded parameters), ready to train."""
    if accelerate_runs_fsdp(accelerator):
        model, optimizer = accelerator.prepare(model, make_optimizer(model))
        how = "Accelerate's FSDP2"
    else:
        model = shard(accelerator, model.to(accelerator.device))
        optimizer, how = accelerator.prepare(make_optimizer(model)), "adapterkit's fully_shard (CPU)"
    accelerator.print(f"FSDP2 through {how}: {accelerator.num_processes} processes; {describe(model)}")
    return model, optimizer


def describe(model: nn.Module) -> str:
    """How much of what trains this process holds: ``this process holds 2048 of 4096 trained values``."""
    from torch.distributed.tensor import DTensor

    trained = [p for p in model.parameters() if p.requires_grad]
    local = sum(p.to_local().numel() if isinstance(p, DTensor) else p.numel() for p in trained)
    return f"this process holds {local} of {sum(p.numel() for p in trained)} trained values"


def is_sharded(model: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def no_sync(accelerator, model):
    """No gradient reduction on this micro-batch (FSDP2: ``set_requires_gradient_sync(False)``)."""
    if not is_sharded(model):
        return accelerator.no_sync(model)
    return _fsdp_no_sync(model)


@contextlib.contextmanager
def _fsdp_no_sync(model):
    model.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)


def whole(tensor: torch.Tensor) -> torch.Tensor:
    """A detached CPU copy of the whole tensor; for a DTensor a collective (all processes call)."""
    from torch.distributed.tensor import DTensor

    t = tensor.detach()
    if isinstance(t, DTensor):
        t = t.full_tensor()
    return t.to("cpu", copy=True).contiguous()


def gather(model: nn.Module, names: Iterable[str]) -> dict[str, torch.Tensor]:
    """Whole CPU copies of the named parameters and buffers, in model order (every process calls)."""
    wanted = set(names)
    tensors = dict(model.named_parameters())
    tensors.update(model.named_buffers())
    return {n: whole(t) for n, t in tensors.items() if n in wanted}


def adapter_tensor_names(model: nn.Module) -> set[str]:
    """The names of the parameters and buffers that the model's adapters save."""
    from ..inject import adapter_names
    from ..io.state import entries, tensor_names

    ids = tensor_names(model)
    wanted: set[str] = set()
    for adapter in adapter_names(model):
        for entry in entries(model, adapter)[1]:
            wanted.update(ids[id(t)][0] for t in entry.tensors.values() if id(t) in ids)
    return wanted


def _options(**kw):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, **kw)


def _inner(optimizer):
    return getattr(optimizer, "optimizer", optimizer)  # accelerate's AcceleratedOptimizer wraps it


def optimizer_state(model: nn.Module, optimizer) -> dict:
    """A sharded model's optimizer state, whole, keyed by parameter names (every process calls;
    the main process gets it, the others an empty state)."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    return get_optimizer_state_dict(model, _inner(optimizer), options=_options(cpu_offload=True))


def load_optimizer_state(model: nn.Module, optimizer, state: dict) -> None:
    """Load what ``optimizer_state`` gave into the optimizer of the sharded ``model``."""
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

    set_optimizer_state_dict(model, _inner(optimizer), state, options=_options())


def load_whole(model: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Copy whole tensors into the named parameters of the sharded ``model`` (each process keeps its slice)."""
    from torch.distributed.checkpoint.state_dict import set_model_state_dict

    set_model_state_dict(model, tensors, options=_options(strict=False))


def eval_passes(
    model: nn.Module, shards: list, n: int, batch_size: int, processes: int, max_batches: Optional[int]
) -> int:
    """How many evaluation forwards this process runs: its shards, or, for a sharded model (each
    forward gathers parameters from every process), as many as the process with the most (rank 0)."""
    if not is_sharded(model):
        return len(shards)
    from .batches import eval_shards

    most = len(eval_shards(n, batch_size, processes, 0))
    return most if max_batches is None else min(most, max_batches)


def _pairs(model: nn.Module, optimizer, saved: dict):
    """(saved key, parameter name) of each parameter, group by group, in the optimizer's order."""
    from ..errors import AdapterFileError

    names = {id(p): n for n, p in model.named_parameters()}
    groups = _inner(optimizer).param_groups
    if [len(g["params"]) for g in groups] != [len(g["params"]) for g in saved["param_groups"]]:
        raise AdapterFileError(
            "the checkpoint's optimizer state holds other parameter groups than this run's "
            "optimizer; resume with the config it was written with, or start without --resume."
        )
    return [
        (key, names[id(p)]) for g, s in zip(groups, saved["param_groups"]) for p, key in zip(g["params"], s["params"])
    ]


def _rekeyed(saved: dict, pairs: list) -> dict:
    key = dict(pairs)
    return {
        "state": {key[k]: v for k, v in saved["state"].items()},
        "param_groups": [dict(g, params=[key[k] for k in g["params"]]) for g in saved["param_groups"]],
    }


def state_by_names(model: nn.Module, optimizer, saved: dict) -> dict:
    """torch's optimizer state (keyed by parameter index) keyed by parameter names instead, the form
    ``load_optimizer_state`` takes: a checkpoint of an unsharded run resumed with FSDP."""
    return _rekeyed(saved, _pairs(model, optimizer, saved))


def state_by_indices(model: nn.Module, optimizer, saved: dict) -> dict:
    """The reverse: a sharded run's optimizer state (by names) for ``optimizer.load_state_dict``."""
    index = iter(range(sum(len(g["params"]) for g in _inner(optimizer).param_groups)))
    return _rekeyed(saved, [(name, next(index)) for name, _ in _pairs(model, optimizer, saved)])

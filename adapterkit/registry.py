"""The methods adapterkit knows: config class -> how to place and build the adapter.

A method registers once (in its package's ``__init__``); ``attach``, ``summary``, the contract
test suite and the file code look methods up here instead of special-casing them.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Optional

from torch import Tensor, nn

from .config import AdapterConfig
from .errors import ConfigError
from .layer import AdapterLayer


@dataclasses.dataclass(frozen=True)
class Method:
    """How one method enters a model.

    config: its config class.  layer: the AdapterLayer subclass that wraps a base.
    where(model, config) -> {module name: placement}: the modules to wrap, each with what ``build``
        needs to know about its place (a role, sizes; None when the method needs nothing).
    build(base, config, placement) -> the adapter's module for one base (held in
        ``layer.adapters[name]``).
    """

    config: type[AdapterConfig]
    layer: type[AdapterLayer]
    where: Callable[[nn.Module, AdapterConfig], dict[str, Any]]
    build: Callable[[nn.Module, AdapterConfig, Any], nn.Module]
    files: Optional["FileFormat"] = None  # how adapterkit.io saves and loads it (None: it cannot)
    more_layers: tuple[type, ...] = ()  # other AdapterLayer classes of the method, for a placement
    # whose ``layer`` attribute names one (LoRA on parameters: methods/lora/params.py)
    after_attach: Optional[Callable[[nn.Module, AdapterConfig, str], None]] = None
    # (model, config, adapter name): changes beyond the wrapped layers, inside attach's transaction
    # (LoRA: base biases to train, trainable token rows)


# PEFT's key prefix for tensors of layer-based methods (PeftModel.base_model.model is the model).
PEFT_PREFIX = "base_model.model."


@dataclasses.dataclass(frozen=True)
class FileFormat:
    """How one method's adapters are written to and read from disk (``adapterkit.io`` uses it).

    On disk: ``adapter_config.json`` (``peft_type`` plus the config under PEFT's keys) and
    ``adapter_model.safetensors`` (tensors under PEFT's keys, adapter name left out).

    peft_type: the config's ``peft_type`` ("LORA", "IA3", "PROMPT_TUNING", ...); a method PEFT
        lacks uses a name of its own (e.g. "ADAPTERKIT_BOTTLENECK").
    config_to_file(config, model) -> dict: the config under PEFT's keys. ``io`` adds
        ``peft_type``, ``base_model_name_or_path``, ``task_type`` and ``modules_to_save`` (from the
        config's ``train_modules``, if it has that field) and keeps keys the function already set.
    config_from_file(data) -> config: the inverse; ``data`` is the whole JSON object. Keys it does
        not know are ignored (PEFT writes many); values adapterkit cannot honour raise ConfigError.
    state_to_file(module_name, adapter) -> {key: tensor}: one adapter layer's tensors under their
        full file keys (e.g. ``PEFT_PREFIX + module_name + ".lora_A.weight"``); ``module_name`` is
        the wrapped module's name in the model, ``adapter`` is ``layer.adapters[name]``.
    state_from_file(module_name, adapter, tensors) -> None: copy ``tensors`` (exactly the keys
        ``state_to_file`` gives, shapes already checked) into the adapter. None: ``io`` copies each
        tensor into the one ``state_to_file`` returned under its key, which must then be the
        adapter's own parameter or buffer.
    """

    peft_type: str
    config_to_file: Callable[[AdapterConfig, nn.Module], dict[str, Any]]
    config_from_file: Callable[[Mapping[str, Any]], AdapterConfig]
    state_to_file: Callable[[str, nn.Module], dict[str, Tensor]]
    state_from_file: Optional[Callable[[str, nn.Module, Mapping[str, Tensor]], None]] = None
    trained_prefix: str = PEFT_PREFIX  # key prefix of train_modules copies ("base_model." for
    # PEFT's prompt-learning methods, whose PeftModel holds the model itself as base_model)
    sizes_from_file: Optional[Callable[[AdapterConfig, Mapping[str, tuple]], list[str]]] = None
    # (config, {key: shape} of the file) -> problems: the config's sizes against the tensors, checked
    # before ``attach`` allocates anything (a corrupt ``r: 10**15`` must not reach the allocator)
    for_model: Optional[Callable[[AdapterConfig, Mapping[str, Any], nn.Module], AdapterConfig]] = None
    # (config, file's JSON, model) -> the config to attach on this model, where the file's meaning
    # depends on the model (LoRA: PEFT's ensure_weight_tying adapts a tied output embedding too)
    extra_to_file: Optional[Callable[[nn.Module, AdapterConfig, str], dict[str, Tensor]]] = None
    # (model, config, adapter name) -> {file key: live tensor}: tensors of the adapter held outside
    # its method's layers (LoRA: trained base biases, trainable token rows); saved, checked and
    # filled like the layers' own


METHODS: dict[str, Method] = {}


def register(method: Method) -> Method:
    METHODS[method.config.method] = method
    return method


def method_for(config: AdapterConfig) -> Method:
    found = METHODS.get(getattr(config, "method", None))
    if found is None or not isinstance(config, found.config):
        known = ", ".join(m.config.__name__ for m in METHODS.values())
        raise ConfigError(f"{type(config).__name__} is not a method config; use one of: {known}.")
    return found


def method_for_peft_type(peft_type: Any) -> Method:
    """The registered method that reads files with this ``peft_type``."""
    for method in METHODS.values():
        if method.files is not None and method.files.peft_type == peft_type:
            return method
    known = sorted(m.files.peft_type for m in METHODS.values() if m.files is not None)
    raise ConfigError(f"peft_type {peft_type!r} is not supported; adapterkit reads: {', '.join(known) or 'none'}.")

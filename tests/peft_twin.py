"""The same model with the same LoRA weights in PEFT: the oracle for adapterkit's numerics."""

from __future__ import annotations

import torch

import adapterkit as ak
from adapterkit.inject import adapter_layers
from adapterkit.methods.lora import LoRALayer


def peft_lora_config(cfg: ak.LoRAConfig, **extra):
    from peft import LoraConfig

    return LoraConfig(
        r=cfg.rank,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=cfg.targets if isinstance(cfg.targets, str) else list(cfg.targets),
        use_rslora=cfg.rslora,
        use_dora=cfg.dora,
        init_lora_weights=False,
        modules_to_save=list(cfg.train_modules) or None,
        **extra,
    )


@torch.no_grad()
def copy_to_peft(ours, theirs, name: str = "default") -> None:
    """Copy adapterkit's LoRA tensors of adapter ``name`` into the PEFT model, module by module."""
    inner = theirs.base_model.model
    for layer_name, layer in adapter_layers(ours):
        if not isinstance(layer, LoRALayer) or name not in layer.adapters:
            continue
        lora = layer.adapters[name]
        peft_layer = inner.get_submodule(layer_name)
        if lora.kind == "embedding":
            peft_layer.lora_embedding_A[name].copy_(lora.a)
            peft_layer.lora_embedding_B[name].copy_(lora.b)
            continue
        peft_layer.lora_A[name].weight.copy_(lora.a)
        peft_layer.lora_B[name].weight.copy_(lora.b)
        if lora.magnitude is not None:
            peft_layer.lora_magnitude_vector[name].weight.copy_(lora.magnitude)


@torch.no_grad()
def copy_by_file_keys(ours, theirs, name: str = "default") -> None:
    """Copy adapterkit's LoRA tensors of adapter ``name`` (Linear targets and target_parameters alike)
    into the PEFT model through their file keys: PEFT's parameter is the key with the adapter name
    inserted (``...lora_A.weight`` -> ``...lora_A.<name>.weight``)."""
    from adapterkit.io.state import entries

    params = dict(theirs.named_parameters())
    for entry in entries(ours, name)[1]:
        if entry.trained:
            continue
        for key, tensor in entry.tensors.items():
            for part in (".lora_A.", ".lora_B."):
                key = key.replace(f"{part}weight", f"{part}{name}.weight")
            params[key].copy_(tensor)


def twins(factory, cfg: ak.LoRAConfig, **peft_extra):
    """(adapterkit model, PEFT model) built from ``factory()`` with identical adapter weights."""
    from peft import get_peft_model

    ours = ak.attach(factory(), cfg)
    theirs = get_peft_model(factory(), peft_lora_config(cfg, **peft_extra))
    copy_to_peft(ours, theirs)
    return ours, theirs


def peft_reference(run, what: str):
    """``run()``, a PEFT reference computation; a test whose reference PEFT itself cannot compute
    under the installed versions skips, naming why, instead of passing without a comparison."""
    import peft
    import pytest
    import transformers

    try:
        return run()
    except ValueError as error:
        if "does not support past key values" not in str(error):
            raise
        pytest.skip(f"PEFT {peft.__version__} cannot run {what} under transformers {transformers.__version__}: {error}")


def named_twins(factory, configs: dict, **peft_extra):
    """(adapterkit model, PEFT model) holding the adapters ``{name: ak.LoRAConfig}`` with identical
    weights, both in eval mode; the last adapter is active in both (as ``attach`` leaves it)."""
    from peft import get_peft_model

    ours, theirs = factory(), None
    for name, cfg in configs.items():
        ak.attach(ours, cfg, name=name)
        if theirs is None:
            theirs = get_peft_model(factory(), peft_lora_config(cfg, **peft_extra), adapter_name=name)
        else:
            theirs.add_adapter(name, peft_lora_config(cfg, **peft_extra))
        copy_to_peft(ours, theirs, name)
    theirs.set_adapter(name)
    return ours.eval(), theirs.eval()

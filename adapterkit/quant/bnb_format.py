"""QuantLinear's state dict in bitsandbytes' format, so a quantized model saves and reloads.

A 4-bit QuantLinear holds the bytes a bitsandbytes ``Linear4bit`` holds (``adapterkit_kernels.formats``),
so its ``state_dict`` names them as ``Linear4bit`` does, under the module's own ``weight`` key:

    weight                                  uint8 (ceil(n / 2), 1): the packed codes
    bias                                    the bias, if any
    weight.absmax                           fp32 (blocks,), or uint8 codes when double-quantized
    weight.quant_map                        fp32 (16,): the NF4 / FP4 levels
    weight.nested_absmax, weight.nested_quant_map   double quantization's scales and 256 levels
    weight.quant_state.bitsandbytes__<nf4|fp4>      uint8: JSON of quant_type, blocksize, dtype,
                                            shape, nested_blocksize, nested_dtype, nested_offset

and ``ak.quantize`` records the matching ``BitsAndBytesConfig`` in ``model.config.quantization_config``
(``record_quantization``). ``save_pretrained`` then writes what transformers writes for a model it
loaded with ``BitsAndBytesConfig(load_in_4bit=True)``: ``from_pretrained`` (with bitsandbytes
installed) loads it as ``Linear4bit`` layers with the same bytes, and ``ak.quantize`` of that model
gives back the same QuantLinear layers. ``load_state_dict`` reads both this form and the
buffers' own names (``codes``, ``absmax``, ...).

8-bit QuantLinear layers (blockwise int8) have no bitsandbytes counterpart (``Linear8bitLt`` keeps
one scale per row), so their ``weight`` is the dequantized dense weight in the compute dtype, which
``from_pretrained`` loads as a plain ``nn.Linear``, and ``weight.int8_codes`` / ``weight.int8_absmax``
carry the exact codes for ``load_state_dict`` (``from_pretrained`` reports them as unexpected): a
reload that is right, at 1.25x the bytes of the dense fp32 weight; each ``state_dict()`` call holds
that dense copy of every 8-bit layer until it is dropped (adapter-only Trainer checkpoints included).

Not covered: transformers keeps some modules of some classes dense whatever the config says (T5's
``wo``); ``from_pretrained`` of a save with those quantized stops with a size-mismatch error (it does
not load random weights). ``ak.quantize(model, skip=["wo"])`` avoids it.
"""

from __future__ import annotations

import json
from typing import Optional

import torch
from torch import nn

from adapterkit_kernels import formats

from ..errors import AdapterFileError

PACKED = "weight"
QUANT_STATE = "weight.quant_state.bitsandbytes__"
INT8 = ("weight.int8_codes", "weight.int8_absmax")


def raw(tensor: torch.Tensor) -> torch.Tensor:
    """An fp32 tensor as its int32 bit pattern (no copy), which dtype casts leave alone; others as they are."""
    return tensor.view(torch.int32) if tensor.dtype == torch.float32 else tensor


def real(tensor: torch.Tensor) -> torch.Tensor:
    """The inverse of ``raw``: an int32 buffer of QuantLinear holds fp32 bits (its int8 codes are int8)."""
    return tensor.view(torch.float32) if tensor.dtype == torch.int32 else tensor


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def saved(layer: nn.Module, state: dict, prefix: str, local_metadata: dict) -> None:
    """State-dict post-hook: the buffers -> bitsandbytes' keys (4-bit) or dense + int8 (8-bit)."""
    if prefix + "codes" not in state:
        return
    bias = state.pop(prefix + "bias", None)
    stored = {
        name: real(state.pop(prefix + name))
        for name in ("codes", "absmax", "nested_absmax", "nested_offset", "nested_levels")
        if prefix + name in state
    }
    if layer.bits == 8:
        with torch.no_grad():
            state[prefix + PACKED] = layer.dequantize()
        if bias is not None:
            state[prefix + "bias"] = bias
        state[prefix + INT8[0]], state[prefix + INT8[1]] = stored["codes"], stored["absmax"]
        return
    state[prefix + PACKED] = stored["codes"].reshape(-1, 1)
    if bias is not None:
        state[prefix + "bias"] = bias
    about = {
        "quant_type": layer.quant_type,
        "blocksize": layer.block,
        "dtype": _dtype_name(layer.compute_dtype),
        "shape": [layer.out_features, layer.in_features],
    }
    state[prefix + "weight.absmax"] = stored["absmax"]
    # copies: tables shared between layers would be dropped as shared tensors by save_pretrained
    state[prefix + "weight.quant_map"] = formats.code_table(layer.quant_type, layer.codes.device).clone()
    if layer.double_quant:
        state[prefix + "weight.nested_absmax"] = stored["nested_absmax"]
        state[prefix + "weight.nested_quant_map"] = stored["nested_levels"].clone()
        about.update(
            nested_blocksize=formats.NESTED_BLOCK, nested_dtype="float32", nested_offset=stored["nested_offset"].item()
        )
    text = json.dumps(about).encode("utf-8")
    state[prefix + QUANT_STATE + layer.quant_type] = torch.tensor(list(text), dtype=torch.uint8)


def _quant_state(state: dict, prefix: str) -> Optional[dict]:
    keys = [k for k in state if k.startswith(prefix + QUANT_STATE)]
    if not keys:
        return None
    if len(keys) > 1:
        raise AdapterFileError(f"{prefix}weight: {len(keys)} quant_state entries ({keys}); expected one")
    return json.loads(bytes(state.pop(keys[0]).cpu().tolist()).decode("utf-8"))


def _mismatch(layer: nn.Module, prefix: str, what: str, saved_value, own) -> AdapterFileError:
    return AdapterFileError(
        f"{prefix}weight was saved with {what} {saved_value!r} but this layer has {own!r}; quantize the model "
        f"the way it was saved (ak.quantize(model, bits=4, quant_type=..., double_quant=..., block=...)) "
        f"before loading it"
    )


def before_load(layer: nn.Module, state: dict, prefix: str, *_) -> None:
    """Load pre-hook: bitsandbytes' keys (or dense + int8) -> the buffers; the buffers' own names pass.
    Either way fp32 scales are handed over as the int32 bits the buffers hold (``raw``)."""
    _to_buffers(layer, state, prefix)
    for name in ("absmax", "nested_absmax", "nested_offset", "nested_levels"):
        if prefix + name in state:
            state[prefix + name] = raw(state[prefix + name])


def _to_buffers(layer: nn.Module, state: dict, prefix: str) -> None:
    """bitsandbytes' keys (or dense + int8) -> the buffers' own names, in place."""
    if prefix + "codes" in state or prefix + PACKED not in state:
        return
    if layer.bits == 8:
        if prefix + INT8[0] in state:
            del state[prefix + PACKED]  # the dense copy: the codes are exact
            state[prefix + "codes"], state[prefix + "absmax"] = state.pop(prefix + INT8[0]), state.pop(prefix + INT8[1])
        return
    about = _quant_state(state, prefix)
    if about is None:
        return  # a dense weight: torch reports it as unexpected and the buffers as missing
    shape = (layer.out_features, layer.in_features)
    for what, value, own in (
        ("quant_type", about.get("quant_type"), layer.quant_type),
        ("blocksize", about.get("blocksize"), layer.block),
        ("shape", tuple(about.get("shape") or ()), shape),
        ("double quantization", "nested_offset" in about, layer.double_quant),
    ):
        if value != own:
            raise _mismatch(layer, prefix, what, value, own)
    if layer.double_quant and about.get("nested_blocksize") != formats.NESTED_BLOCK:
        raise _mismatch(layer, prefix, "nested_blocksize", about.get("nested_blocksize"), formats.NESTED_BLOCK)
    levels = state.pop(prefix + "weight.quant_map", None)
    if levels is not None and not torch.equal(levels.float().cpu(), formats.code_table(layer.quant_type)):
        raise AdapterFileError(
            f"{prefix}weight.quant_map is not the standard {layer.quant_type} table; "
            f"QuantLinear reads only bitsandbytes' own NF4 / FP4 levels"
        )
    state[prefix + "codes"] = state.pop(prefix + PACKED).reshape(-1)
    state[prefix + "absmax"] = state.pop(prefix + "weight.absmax")
    if layer.double_quant:
        state[prefix + "nested_absmax"] = state.pop(prefix + "weight.nested_absmax")
        state[prefix + "nested_levels"] = state.pop(prefix + "weight.nested_quant_map")
        state[prefix + "nested_offset"] = torch.tensor(float(about["nested_offset"]), dtype=torch.float32)


def hook(layer: nn.Module) -> None:
    """Register both hooks on a QuantLinear (called from its ``__init__``)."""
    layer.register_state_dict_post_hook(saved)
    layer.register_load_state_dict_pre_hook(before_load)


def _linears(module: nn.Module, prefix: str = ""):
    """(name the module has without adapters, module) for each linear-like layer, adapters' own skipped."""
    from .. import bases
    from ..layer import AdapterLayer

    for name, child in module.named_children():
        if isinstance(module, AdapterLayer):
            if child is module.adapters:
                continue
            full = prefix[:-1] if child is module.base else f"{prefix}{name}"  # the wrapped base keeps its name
        else:
            full = f"{prefix}{name}"
        if bases.base_kind(child) in ("linear", "conv1d", "quant") and not isinstance(child, AdapterLayer):
            yield full, child
        yield from _linears(child, full + "." if full else "")


def record_quantization(model: nn.Module) -> None:
    """Set ``model.config.quantization_config`` to the ``BitsAndBytesConfig`` of its 4-bit layers.

    Every linear layer that is not a 4-bit QuantLinear (the head, ``skip``, 8-bit layers) is listed in
    ``llm_int8_skip_modules``, so ``from_pretrained`` keeps exactly those dense. A model with no 4-bit
    layer loses a quantization_config that this function wrote. Does nothing without a transformers config.
    """
    from .convert import _bnb_kind
    from .linear import QuantLinear

    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "to_dict"):
        return
    four, dense = [], []
    for name, module in _linears(model):
        if _bnb_kind(module):
            return  # bitsandbytes' own layers: transformers' record of them stands
        (four if isinstance(module, QuantLinear) and module.bits == 4 else dense).append((name, module))
    current = getattr(config, "quantization_config", None)
    if not four:
        if isinstance(current, dict) and current.get("quant_method") == "bitsandbytes":
            del config.quantization_config  # a record written here (transformers keeps a BitsAndBytesConfig)
        return
    from transformers import BitsAndBytesConfig

    first = four[0][1]
    record = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=first.quant_type,
        bnb_4bit_use_double_quant=first.double_quant,
        bnb_4bit_compute_dtype=first.compute_dtype,
        llm_int8_skip_modules=[name for name, _ in dense],
    ).to_dict()
    # transformers reads quant_type and the scales of each layer from its quant_state; the rest is shared
    config.quantization_config = record

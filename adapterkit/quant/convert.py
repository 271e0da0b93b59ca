"""Swap a model's linear layers for QuantLinear: ``quantize``, bitsandbytes conversion, ``requantize``.

``quantize(model, bits=4, quant_type="nf4")`` replaces each ``nn.Linear`` by a QuantLinear, in place.
As transformers' bitsandbytes integration does, the output head (``get_output_embeddings()``)
stays dense, and embeddings are never linear layers. A bitsandbytes ``Linear4bit`` (a model that
transformers loaded with ``BitsAndBytesConfig``) becomes a QuantLinear holding the same bytes.
A transformers model gets the matching ``quantization_config`` in its config (``bnb_format``), so
``save_pretrained`` writes a folder that ``from_pretrained`` loads as the same 4-bit model.
"""

from __future__ import annotations

import sys
from typing import Iterable, Iterator, Optional, Sequence

import torch
from torch import nn

from adapterkit_kernels import formats

from .. import bases
from ..errors import ConfigError, UnsupportedModuleError
from ..layer import AdapterLayer
from .bnb_format import record_quantization
from .linear import QuantLinear


def _children(module: nn.Module, prefix: str = "") -> Iterator[tuple[str, nn.Module, nn.Module]]:
    """(name, parent, child) below ``module``; never inside an adapter's own modules."""
    for name, child in module.named_children():
        if isinstance(module, AdapterLayer) and child is module.adapters:
            continue
        full = f"{prefix}{name}"
        yield full, module, child
        yield from _children(child, full + ".")


def _bnb_kind(module: nn.Module) -> Optional[str]:
    bnb = sys.modules.get("bitsandbytes.nn")
    if bnb is None:
        return None
    if isinstance(module, bnb.Linear4bit):
        return "4bit"
    if isinstance(module, bnb.Linear8bitLt):
        return "8bit"
    return None


def from_bnb_linear4bit(module: nn.Module, compute_dtype: Optional[torch.dtype] = None) -> QuantLinear:
    """A bitsandbytes ``Linear4bit`` as a QuantLinear with the same bytes (nothing re-quantized).

    Read through the module's own ``state_dict()``, bitsandbytes' saved form, which ``bnb_format``
    parses for QuantLinear anyway. (On a CPU with AVX512-BF16, bitsandbytes repacks a layer for its
    inference kernel; its ``state_dict`` gives the standard codes back, with the scales it rounded
    to bf16 then.)
    """
    if module.weight.quant_state is None:
        raise UnsupportedModuleError(
            "this Linear4bit holds no quantized weight yet (quant_state is None); "
            "move it to its device or load its state first"
        )
    saved = module.state_dict()  # bitsandbytes undoes its CPU repacking here, quant_state included
    state = module.weight.quant_state
    if state.nested and state.state2.blocksize != formats.NESTED_BLOCK:
        raise UnsupportedModuleError(
            f"nested block size {state.state2.blocksize} is not supported; expected {formats.NESTED_BLOCK}"
        )
    out_features, in_features = state.shape
    bias = module.bias
    layer = QuantLinear(
        in_features,
        out_features,
        bias is not None,
        4,
        state.quant_type,
        state.blocksize,
        bool(state.nested),
        compute_dtype or getattr(module, "compute_dtype", None) or state.dtype,
        device=module.weight.device,
    )
    layer.load_state_dict(saved)
    if bias is not None:
        layer.bias.requires_grad_(bias.requires_grad)
    return layer


def _check(bits: int, quant_type: str, block: int, double_quant: bool) -> None:
    if bits not in (4, 8):
        raise ConfigError(f"bits={bits!r} is not supported; use bits=4 (nf4 or fp4) or bits=8 (blockwise int8)")
    if bits == 4 and quant_type not in formats.QUANT_TYPES_4BIT:
        raise ConfigError(f"quant_type={quant_type!r} is not a 4-bit type; use 'nf4' (default) or 'fp4'")
    if block not in formats.BLOCKS:
        raise ConfigError(f"block={block!r} is not supported; use one of {formats.BLOCKS}")


def _head_ids(model: nn.Module) -> set:
    """The output head (``get_output_embeddings()``), kept dense as transformers does."""
    from ..anatomy import output_head

    head = output_head(model)
    return {id(head)} if head is not None else set()


def _matches(name: str, patterns: Sequence[str]) -> bool:
    return any(name == p or name.endswith("." + p) for p in patterns)


def quantize(
    model: nn.Module,
    bits: int = 4,
    quant_type: str = "nf4",
    double_quant: bool = True,
    compute_dtype: Optional[torch.dtype] = None,
    skip: Iterable[str] = (),
    block: int = 64,
    keep_head: bool = True,
) -> nn.Module:
    """Replace ``nn.Linear`` (and transformers ``Conv1D``) layers by QuantLinear, in place.

    Returns the model. Subclasses of ``nn.Linear`` that other code reads the weight of directly
    (e.g. ``nn.MultiheadAttention.out_proj``) are left as they are.

    bits: 4 (``quant_type`` nf4 | fp4, ``double_quant`` of the scales) or 8 (blockwise int8).
    compute_dtype: the dtype matmuls run in (default: each layer's weight dtype).
    skip: module names (or name suffixes, e.g. "lm_head", "classifier") to keep dense.
    keep_head: keep the output head (``get_output_embeddings()``) dense, as transformers does.
    """
    _check(bits, quant_type, block, double_quant)
    head_ids = _head_ids(model) if keep_head else set()
    patterns = [skip] if isinstance(skip, str) else list(skip)
    swaps = []
    for name, parent, child in _children(model):
        if id(child) in head_ids or _matches(name, patterns):
            continue
        kind = _bnb_kind(child)
        if kind == "8bit":
            raise UnsupportedModuleError(
                f"{name} is a bitsandbytes Linear8bitLt (LLM.int8 format), which "
                "QuantLinear does not read; load the model in 4-bit or unquantized"
            )
        if kind == "4bit":
            swaps.append((parent, name, from_bnb_linear4bit(child, compute_dtype)))
        elif type(child) is nn.Linear:
            swaps.append(
                (parent, name, QuantLinear.from_linear(child, bits, quant_type, block, double_quant, compute_dtype))
            )
        elif bases.base_kind(child) == "conv1d":
            swaps.append(
                (parent, name, QuantLinear.from_conv1d(child, bits, quant_type, block, double_quant, compute_dtype))
            )
    for parent, name, new in swaps:
        setattr(parent, name.rsplit(".", 1)[-1], new)
    record_quantization(model)  # model.config.quantization_config: save_pretrained writes bitsandbytes' format
    return model


def requantize(
    model: nn.Module,
    bits: int = 4,
    quant_type: str = "nf4",
    double_quant: bool = True,
    skip: Iterable[str] = (),
    block: int = 64,
) -> nn.Module:
    """Quantize a merged (dense) model again: an explicit, lossy step (see tests for its error)."""
    return quantize(model, bits, quant_type, double_quant, None, skip, block)

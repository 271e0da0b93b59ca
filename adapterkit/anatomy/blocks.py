"""Where things sit in a transformer block, found from module names and types only.

No per-model tables: a *block* is an element of the first ``nn.ModuleList`` on a module's path
(``model.layers.3``, ``transformer.h.3``, ``encoder.layer.3``). Inside a block, the linear-like
modules (Linear, Conv1D, quantized linear) split into

- attention modules: a path component below the block contains ``attn`` or ``attention``
  (``self_attn``, ``attn``, ``attention``, ``SelfAttention``, ``EncDecAttention``); each such
  component roots one attention sub-layer, whose LAST linear is its output projection
  (``o_proj``, ``attn.c_proj``, ``attention.output.dense``, ``o``);
- keys / values: attention linears named like a key or value projection, or a fused q-k-v one;
- feed-forward modules: the other linears of the block, in registration order; the first takes the
  feed-forward input (``gate_proj``, ``c_fc``, ``intermediate.dense``, ``wi``) and the last is its
  output projection (``down_proj``, ``mlp.c_proj``, ``output.dense``, ``wo``).

This holds for Llama-, GPT-2-, BERT-, ViT- and T5-style blocks (and OPT, GPT-NeoX, Falcon, Phi,
DistilBERT naming). Mixture-of-experts blocks are not understood: give explicit targets there.

A *stack* is the ``nn.ModuleList`` the blocks sit in (``model.layers``); an encoder-decoder model
has two.
"""

from __future__ import annotations

import dataclasses
import re

from torch import nn

from .. import bases
from ..errors import TargetError
from .modules import logical_modules

_ATTENTION = re.compile(r"attn|attention", re.IGNORECASE)
KEY_VALUE = (
    "k_proj",
    "v_proj",
    "key",
    "value",
    "k",
    "v",
    "wk",
    "wv",
    "k_lin",
    "v_lin",
    "key_proj",
    "value_proj",
    "c_attn",
    "qkv_proj",
    "query_key_value",
    "Wqkv",
    "qkv",
)


@dataclasses.dataclass
class Block:
    """Module names (full, as in ``model.named_modules()``) by role, for one transformer block."""

    index: int
    prefix: str = ""
    attention_out: list[str] = dataclasses.field(default_factory=list)
    key_value: list[str] = dataclasses.field(default_factory=list)
    ffn: list[str] = dataclasses.field(default_factory=list)

    @property
    def ffn_in(self) -> str | None:
        return self.ffn[0] if self.ffn else None

    @property
    def ffn_out(self) -> str | None:
        return self.ffn[-1] if len(self.ffn) > 1 else None


def block_of(model: nn.Module, name: str) -> tuple[str, int] | None:
    """The block holding module ``name``: ('model.layers.3', 3) for 'model.layers.3.mlp.down_proj'
    (the number after the first ``nn.ModuleList`` on its path), or None outside any block."""
    module, parts = model, name.split(".")
    for i, part in enumerate(parts[:-1]):
        module = getattr(module, part)
        if isinstance(module, nn.ModuleList) and parts[i + 1].isdigit():
            return ".".join(parts[: i + 2]), int(parts[i + 1])
    return None


def block_index(model: nn.Module, name: str) -> int | None:
    """The index of the block holding module ``name`` (``model.layers.3.mlp`` -> 3), or None."""
    where = block_of(model, name)
    return None if where is None else where[1]


def blocks(model: nn.Module) -> list[Block]:
    """The transformer blocks of ``model`` with their modules by role, in model order."""
    found: dict[str, Block] = {}
    attention_roots: dict[str, list[str]] = {}
    for name, module in logical_modules(model):
        if not name or not bases.is_linear_like(module):
            continue
        where = block_of(model, name)
        if where is None:
            continue
        prefix, index = where
        block = found.setdefault(prefix, Block(index, prefix))
        below = name[len(prefix) + 1 :].split(".")
        root = next((i for i, part in enumerate(below[:-1]) if _ATTENTION.search(part)), None)
        if root is None:
            block.ffn.append(name)
            continue
        attention_roots.setdefault(prefix + "." + ".".join(below[: root + 1]), []).append(name)
        if below[-1] in KEY_VALUE:
            block.key_value.append(name)
    for names in attention_roots.values():
        prefix, _ = block_of(model, names[-1])
        found[prefix].attention_out.append(names[-1])
    if not found:
        raise TargetError(
            f"found no transformer blocks (an nn.ModuleList of layers holding Linear / Conv1D modules) in "
            f"{type(model).__name__}; give explicit targets (module-name suffixes or a regex) instead."
        )
    return list(found.values())


def stacks(model: nn.Module) -> dict[str, list[Block]]:
    """{stack name ('model.layers'): its blocks, by index} for each stack of blocks in ``model``."""
    found: dict[str, list[Block]] = {}
    for block in blocks(model):
        found.setdefault(block.prefix.rsplit(".", 1)[0], []).append(block)
    return {name: sorted(held, key=lambda b: b.index) for name, held in found.items()}


def pick(model: nn.Module, role: str, layers=None) -> list[str]:
    """Names of modules with ``role`` ('attention_out', 'key_value', 'ffn_in', 'ffn_out') in the
    blocks whose index is in ``layers`` (all blocks when None)."""
    out: list[str] = []
    for block in blocks(model):
        if layers is not None and block.index not in layers:
            continue
        value = getattr(block, role)
        out.extend(value if isinstance(value, list) else [value] if value else [])
    if not out:
        raise TargetError(
            f"found no {role.replace('_', ' ')} module in the blocks of {type(model).__name__}"
            f"{'' if layers is None else f' with indices {list(layers)}'}; give explicit targets instead."
        )
    return out

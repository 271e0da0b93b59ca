"""LoRA on nn.MultiheadAttention: its packed in_proj and its out_proj (PEFT's ``MultiheadAttention``).

nn.MultiheadAttention uses ``in_proj_weight`` (3E, E) and ``out_proj.weight`` (E, E) as tensors inside
its forward (it never calls ``out_proj``), so no branch can be hooked onto them. The adapter runs the
module's own forward with the updated weights put in for that one call (``torch.func.functional_call``:
nothing in the module changes, gradients reach A and B):

    in_proj_weight' = in_proj_weight + sum_k s_k B_k A_k      A_k (r, E), B_k (3E, r)
    out_proj.weight' = out_proj.weight + sum_k s_k Bo_k Ao_k  Ao_k (r, E), Bo_k (E, r)

As in PEFT: both projections are adapted (there is no choosing one), query / key / value must share
the embedding size, no DoRA, no dropout on the branch (PEFT merges the weights for the call too), no
mixed-adapter batches. Files: ``<M>.lora_A.weight`` / ``lora_B.weight`` (in_proj) and
``<M>.base_layer.out_proj.lora_A.weight`` / ``lora_B.weight`` (out_proj), PEFT's keys.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ...errors import InputError, UnsupportedModuleError


def check(base: nn.MultiheadAttention, config) -> None:
    if base.kdim != base.embed_dim or base.vdim != base.embed_dim:
        raise UnsupportedModuleError(
            f"LoRA on nn.MultiheadAttention needs query, key and value of one size (kdim = vdim = embed_dim = "
            f"{base.embed_dim}); this one has kdim={base.kdim}, vdim={base.vdim} (PEFT has the same limit)."
        )
    if config.dora:
        raise UnsupportedModuleError(
            "DoRA on nn.MultiheadAttention is not supported (nor in PEFT); use dora=False "
            "or leave the attention module out of the targets."
        )


def add_out_proj(lora, base: nn.MultiheadAttention, place: dict) -> None:
    """The out_proj pair Ao (r, E), Bo (E, r) next to the in_proj pair ``lora.a`` / ``lora.b``."""
    r, e = lora.a.shape[0], base.embed_dim
    lora.a_out = nn.Parameter(torch.empty(r, e, **place))
    lora.b_out = nn.Parameter(torch.empty(e, r, **place))


def _weights(base: nn.MultiheadAttention, adapters) -> dict[str, Tensor]:
    w_in, w_out = base.in_proj_weight, base.out_proj.weight
    for lora in adapters:
        w_in = w_in + (lora.b @ lora.a).to(w_in.dtype) * lora.scale
        w_out = w_out + (lora.b_out @ lora.a_out).to(w_out.dtype) * lora.scale
    return {"in_proj_weight": w_in, "out_proj.weight": w_out}


def forward(layer, query: Tensor, *args, **kwargs):
    """The attention's output (and weights) with the active adapters' updates in its projections."""
    if layer.rows is not None:
        raise InputError(
            "adapter_names: nn.MultiheadAttention with LoRA does not take a mixed-adapter batch "
            "(as in PEFT); run one adapter at a time."
        )
    base = layer.base
    adapters = layer.active_adapters()
    if not adapters:
        return base(query, *args, **kwargs)
    return torch.func.functional_call(base, _weights(base, adapters), (query, *args), kwargs)


@torch.no_grad()
def merged(base: nn.MultiheadAttention, adapters) -> nn.Module:
    """``base`` with the adapters' updates written into its two weights."""
    new = _weights(base, adapters)
    base.in_proj_weight.copy_(new["in_proj_weight"])
    base.out_proj.weight.copy_(new["out_proj.weight"])
    return base


def state_to_file(prefix: str, lora) -> dict[str, Tensor]:
    return {
        f"{prefix}.lora_A.weight": lora.a,
        f"{prefix}.lora_B.weight": lora.b,
        f"{prefix}.base_layer.out_proj.lora_A.weight": lora.a_out,
        f"{prefix}.base_layer.out_proj.lora_B.weight": lora.b_out,
    }

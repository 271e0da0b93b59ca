"""resize_rank: cut a LoRA adapter to a lower rank by truncated SVD, layer by layer.

    D = s B A  (out, in; a Conv2d's A flattened to (rank, in kh kw); an embedding's B A is (dim, num))
    D = U S V^T,   D_k = U_k S_k V_k^T    the best rank-k approximation of D (Eckart-Young)
    B' = U_k sqrt(S_k) / sqrt(s),  A' = sqrt(S_k) V_k^T / sqrt(s),  so  s B' A' = D_k

s is the adapter's current scale; the config gets ``rank=k`` and the alpha that keeps alpha / rank
(alpha / sqrt(rank) with rsLoRA) as before, so a saved file computes the same. The singular values
come from QR of the factors and the SVD of an r x r core, in float64 (``low_rank_svd``: never
forming D); they are split evenly between the factors (both train well afterwards). DoRA keeps its magnitude (its norm
follows the new factors). The factors become new Parameters: an optimizer holding the old ones must
be made again. All or nothing: every layer's factors are computed before any is replaced.
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import Tensor, nn

from ...errors import ConfigError
from ...inject import refuse_while_merged
from .patterns import refuse_patterns
from .scaling import loras, refuse_mha


def resize_rank(model: nn.Module, name: str, rank: int) -> nn.Module:
    """Give LoRA adapter ``name`` rank ``rank`` (<= its rank) by truncated SVD; returns ``model``."""
    if isinstance(rank, bool) or not isinstance(rank, int) or rank <= 0:
        raise ConfigError(f"resize_rank takes a positive int rank; got {rank!r}.")
    modules = loras(model, name)
    refuse_mha(modules, "resize_rank", grouped=True)
    refuse_while_merged(model, f"resize adapter {name!r}")
    config = modules[0].config
    refuse_patterns(config, "resize_rank")
    have = max(lora.a.shape[0] for lora in modules)
    if rank > have:
        raise ConfigError(
            f"resize_rank: adapter {name!r} has rank {have}; SVD can only lower it (got {rank}). "
            f"Attach a new adapter of rank {rank} to grow it."
        )
    alpha = config.scale * (math.sqrt(rank) if config.rslora else rank)
    new_config = dataclasses.replace(config, rank=rank, alpha=alpha)
    factors = [_truncated(lora, rank) for lora in modules]
    for a, b in factors:
        if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
            raise ConfigError(f"resize_rank: adapter {name!r} holds NaN or Inf values; its SVD is undefined.")
    for lora, (a, b) in zip(modules, factors):
        trains = lora.a.requires_grad
        lora.a = nn.Parameter(a, requires_grad=trains)
        lora.b = nn.Parameter(b, requires_grad=lora.b.requires_grad)
        lora.config = new_config
    return model


@torch.no_grad()
def _truncated(lora, rank: int) -> tuple[Tensor, Tensor]:
    """(A', B') in the adapter's layouts and dtype (module docstring)."""
    a, b = lora.a, lora.b
    r, out = a.shape[0], b.shape[0]
    u, s, vh = low_rank_svd(b.reshape(out, r), a.reshape(r, -1) * lora.scale)
    acc = u.dtype
    k = min(rank, s.shape[0])
    root = (s[:k] / abs(lora.scale)).sqrt() if lora.scale else s[:k].sqrt()
    sign = -1.0 if lora.scale < 0 else 1.0
    new_b = torch.zeros(out, rank, dtype=acc, device=u.device)
    new_a = torch.zeros(rank, vh.shape[1], dtype=acc, device=u.device)
    new_b[:, :k] = u[:, :k] * root * sign
    new_a[:k] = root.unsqueeze(1) * vh[:k]
    return new_a.reshape(rank, *a.shape[1:]).to(a.dtype), new_b.reshape(out, rank, *b.shape[2:]).to(b.dtype)


def low_rank_svd(b: Tensor, a: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The thin SVD U S V^T of B A (out, r) @ (r, in) in float64, without forming B A:
    B = Q_b R_b, A^T = Q_a R_a, R_b R_a^T = U_c S V_c^T, so U = Q_b U_c, V = Q_a V_c. O((out + in) r^2)."""
    qb, rb = torch.linalg.qr(b.detach().double())  # (out, r), (r, r)
    qa, ra = torch.linalg.qr(a.detach().double().t())  # (in, r), (r, r)
    uc, s, vch = torch.linalg.svd(rb @ ra.t())
    return qb @ uc, s, vch @ qa.t()

"""How ``ak.combine`` merges several adapters' tensors T_1..T_n with weights w_1..w_n (PEFT's rules).

    task arithmetic (``linear``, ``svd``):  T = sum_i w_i T_i
    magnitude prune:  T = sum_i w_i P(T_i)           P keeps the ``density`` share of largest |t|
    TIES (Yadav et al. 2023, arXiv:2306.01708):
        T = sum_i w_i P(T_i) [sign P(T_i) = s] / max(1, #{i: sign P(T_i) = s})   elementwise,
        s = sign of sum_i P(T_i) (``majority_sign_method="total"``) or of sum_i sign P(T_i)
        (``"frequency"``); ties at 0 count as +1
    DARE (Yu et al. 2023, arXiv:2311.03099): P is random instead: keep each t with probability
        ``density`` and divide by it (``dare_linear``: then task arithmetic; ``dare_ties``: then TIES)

``density`` in (0, 1]; 1 keeps everything. DARE draws its masks from torch's default generator with
``torch.bernoulli`` on a tensor filled with ``density``, one draw per tensor in the order PEFT draws
them, so ``torch.manual_seed`` makes a combination repeatable.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor

from ...errors import ConfigError

PRUNING = ("ties", "dare_linear", "dare_ties", "magnitude_prune")
SIGN_METHODS = ("total", "frequency")


def _weighted(stack: Tensor, weights: Sequence[float]) -> Tensor:
    """stack (n, ...) times w_i on each T_i."""
    w = torch.tensor(list(weights), dtype=stack.dtype, device=stack.device)
    return stack * w.view(-1, *([1] * (stack.dim() - 1)))


def keep_largest(t: Tensor, density: float) -> Tensor:
    """``t`` with all but its int(density * numel) largest-magnitude entries set to 0."""
    if density >= 1:
        return t
    mask = torch.zeros(t.numel(), dtype=t.dtype, device=t.device)
    k = int(density * t.numel())
    mask[torch.topk(t.abs().reshape(-1), k=k, largest=True).indices] = 1
    return t * mask.view(t.shape)


def keep_random(t: Tensor, density: float) -> Tensor:
    """DARE: each entry kept with probability ``density`` and divided by it (the mean is kept)."""
    if density >= 1:
        return t
    mask = torch.bernoulli(torch.full_like(t, density))
    return t * mask / density


def majority_mask(stack: Tensor, method: str) -> Tensor:
    """(n, ...) bool: where T_i's sign agrees with the elected sign (see the module docstring)."""
    sign = stack.sign()
    votes = stack.sum(0) if method == "total" else sign.sum(0)
    elected = torch.where(votes >= 0, 1.0, -1.0).to(sign.dtype)
    return sign == elected


def merge(
    how: str, tensors: Sequence[Tensor], weights: Sequence[float], density: Optional[float], sign_method: str = "total"
) -> Tensor:
    """The merged tensor of ``tensors`` (same shapes) by rule ``how`` (``svd`` forms: without it)."""
    base = how[: -len("_svd")] if how.endswith("_svd") else how
    if base in ("linear", "svd"):
        return _weighted(torch.stack(list(tensors)), weights).sum(0)
    prune = keep_random if base.startswith("dare") else keep_largest
    stack = torch.stack([prune(t, density) for t in tensors])
    if base in ("magnitude_prune", "dare_linear"):
        return _weighted(stack, weights).sum(0)
    mask = majority_mask(stack, sign_method)  # elected from the unweighted tensors, as PEFT
    kept = (_weighted(stack, weights) * mask).sum(0)
    return kept / mask.sum(0).clamp(min=1)


def check_options(how: str, density: Optional[float], sign_method: str) -> None:
    """ConfigError for a density or sign method that ``how`` needs and lacks, or does not use."""
    base = how[: -len("_svd")] if how.endswith("_svd") else how
    if base in PRUNING:
        ok = isinstance(density, (int, float)) and not isinstance(density, bool) and 0 < density <= 1
        if not ok:
            raise ConfigError(
                f"combine how={how!r} needs density, the share of entries kept, in (0, 1]; got {density!r}."
            )
    elif density is not None:
        raise ConfigError(
            f"combine how={how!r} does not prune; density={density!r} is only for "
            f"{', '.join(PRUNING)} and their _svd forms."
        )
    if sign_method not in SIGN_METHODS:
        raise ConfigError(f"combine majority_sign_method must be one of {SIGN_METHODS}; got {sign_method!r}.")
    if sign_method != "total" and base not in ("ties", "dare_ties"):
        raise ConfigError(f"combine how={how!r} elects no sign; majority_sign_method is for ties and dare_ties.")

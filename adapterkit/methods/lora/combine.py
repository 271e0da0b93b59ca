"""combine: a new LoRA adapter made from existing ones (PEFT's ``add_weighted_adapter``).

With s_i each adapter's scale and w_i its weight (negative weights subtract):

- ``"cat"``: exact. A' = [w_1 s_1 A_1; w_2 s_2 A_2; ...] (ranks add up), B' = [B_1, B_2, ...],
  scale 1, so B' A' = sum_i w_i s_i B_i A_i: the adapters' weighted sum, as one adapter.
- ``"linear"``, ``"ties"``, ``"dare_linear"``, ``"dare_ties"``, ``"magnitude_prune"`` (equal ranks):
  the factors are merged separately (merge_types.py), A' = merge(A_i, sign(c_i) sqrt|c_i|),
  B' = merge(B_i, sqrt|c_i|) with c_i = w_i s_i, scale 1. Exact for one adapter; for several an
  approximation (cross terms B_i A_j), as in PEFT.
- ``"svd"``, ``"ties_svd"``, ``"dare_linear_svd"``, ``"dare_ties_svd"``, ``"magnitude_prune_svd"``: the
  dense updates D_i = s_i B_i A_i are merged by the rule (``svd``: sum_i w_i D_i), then cut to
  ``rank`` (default: the largest rank) by truncated SVD: D = U S V^T, B' = U_r S_r, A' = V_r^T, scale 1
  (``svd_clamp``: both clipped to that quantile of their entries' values, as PEFT).

One adapter: always ``"linear"`` (PEFT's rule). A layer that holds only some of the adapters merges
those. DoRA adapters are refused: each learned its own magnitude vector, and no rule above combines
them (PEFT 0.21 gave the result a fresh magnitude ||W||, dropping what was learned; PEFT 0.22
refuses too). ``density`` and ``majority_sign_method``: merge_types.py.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Optional, Sequence

import torch
from torch import Tensor, nn

from ...config import check_adapter_name
from ...errors import AdapterNameError, ConfigError, MergeError
from ...inject import adapter_config, adapter_layers, adapter_names, refuse_while_merged, set_active
from ...transaction import unchanged_on_error
from .config import LoRAConfig
from .layers import LoRA, LoRALayer
from .merge_types import check_options, merge
from .scaling import refuse_mha

FACTORED = ("linear", "ties", "dare_linear", "dare_ties", "magnitude_prune")
SVD = ("svd", "ties_svd", "dare_linear_svd", "dare_ties_svd", "magnitude_prune_svd")
HOW = ("cat",) + FACTORED + SVD


def combine(
    model: nn.Module,
    names: Sequence[str],
    name: str,
    weights: Optional[Sequence[float]] = None,
    how: str = "cat",
    rank: Optional[int] = None,
    density: Optional[float] = None,
    majority_sign_method: str = "total",
    svd_clamp: Optional[float] = None,
) -> nn.Module:
    """Add adapter ``name`` = the weighted combination of LoRA adapters ``names``; make it active.

    ``rank``: the new rank of the ``_svd`` forms (default: the largest of the adapters' ranks).
    ``density``: share of entries kept by ties / dare / magnitude_prune, in (0, 1].
    """
    weights, configs = _checked(model, names, name, weights, how, (density, majority_sign_method, rank, svd_clamp))
    how = "linear" if len(names) == 1 else how
    ranks = [c.rank for c in configs]
    if how in FACTORED and len(set(ranks)) > 1:
        raise ConfigError(f"combine how={how!r} needs equal ranks; got {ranks}. Use how='cat' or an _svd form.")
    new_rank = sum(ranks) if how == "cat" else (rank or max(ranks)) if how in SVD else ranks[0]
    layers = [
        (ln, layer)
        for ln, layer in adapter_layers(model)
        if isinstance(layer, LoRALayer) and any(n in layer.adapters for n in names)
    ]
    config = dataclasses.replace(
        configs[0],
        rank=new_rank,
        alpha=float(new_rank),
        rslora=False,
        targets=tuple(ln for ln, _ in layers),
        exclude=(),
        layers=None,
        train_modules=(),
    )
    refuse_mha([lo for _, layer in layers for n, lo in layer.adapters.items() if n in names], "combine")
    options = dict(density=density, sign_method=majority_sign_method, clamp=svd_clamp)
    factors = [_factors(layer, names, weights, new_rank, how, options) for _, layer in layers]  # may draw
    for (ln, _), (a, b) in zip(layers, factors):
        if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
            raise MergeError(
                f"combine: adapters {list(names)} hold NaN or Inf values in {ln}; the combination "
                "would be NaN. Check those adapters' weights (a diverged training run?)."
            )
    with unchanged_on_error(model), torch.random.fork_rng(devices=[]):  # new modules' init: no draws seen
        for (_, layer), (a, b) in zip(layers, factors):
            layer.add(name, _module(layer.innermost(), config, a, b))
        set_active(model, name)
    return model


def _checked(model: nn.Module, names, name: str, weights, how: str, options: tuple):
    """(weights as a list, the adapters' configs); errors for every bad argument, nothing changed."""
    density, majority_sign_method, rank, svd_clamp = options
    check_adapter_name(name)
    refuse_while_merged(model, "combine adapters")
    if name in adapter_names(model):
        raise AdapterNameError(f"an adapter named {name!r} is already attached; pick another name.")
    if how not in HOW:
        raise ConfigError(f"combine how={how!r}; expected one of {HOW}.")
    if isinstance(names, str) or not all(isinstance(n, str) for n in names):
        raise AdapterNameError(f"combine takes a list of adapter names; got {names!r}.")
    weights = [1.0] * len(names) if weights is None else list(weights)
    if not all(isinstance(w, (int, float)) and not isinstance(w, bool) and math.isfinite(w) for w in weights):
        raise ConfigError(f"combine weights must be finite numbers; got {weights!r}.")
    if not names or len(weights) != len(names):
        raise ConfigError(f"combine needs one weight per adapter; got {len(names)} names, {len(weights)} weights.")
    check_options(how, density, majority_sign_method)
    _check_svd_options(how, rank, svd_clamp)
    configs = [adapter_config(model, n) for n in names]
    for n, cfg in zip(names, configs):
        if not isinstance(cfg, LoRAConfig):
            raise ConfigError(f"combine takes LoRA adapters; {n!r} is {type(cfg).__name__}.")
        if cfg.dora:
            raise ConfigError(
                f"combine: {n!r} is a DoRA adapter, and combining DoRA adapters is not defined: each "
                "learned its own magnitude vector, which no combination rule merges (PEFT >= 0.22 "
                "refuses it too). Merge them into the base one after another (ak.merge_adapter), or "
                "combine plain LoRA adapters."
            )
        extras = [
            f
            for f in ("rank_pattern", "alpha_pattern", "lora_bias", "trainable_token_indices")
            if getattr(cfg, f, None)
        ] + (["bias"] if getattr(cfg, "bias", "none") != "none" else [])
        if extras:
            raise ConfigError(
                f"combine takes LoRA adapters without per-module ranks or trained biases / "
                f"tokens; {n!r} uses {', '.join(extras)}."
            )
    return weights, configs


def _check_svd_options(how: str, rank, clamp) -> None:
    if rank is not None and (how not in SVD or isinstance(rank, bool) or not isinstance(rank, int) or rank <= 0):
        raise ConfigError(
            f"combine rank={rank!r}: a positive int, for the _svd forms only ({', '.join(SVD)}); how={how!r}."
        )
    if clamp is not None and (
        how not in SVD or isinstance(clamp, bool) or not isinstance(clamp, (int, float)) or not 0 < clamp <= 1
    ):
        raise ConfigError(f"combine svd_clamp={clamp!r}: a quantile in (0, 1], for the _svd forms only; how={how!r}.")


@torch.no_grad()
def _module(base: nn.Module, config: LoRAConfig, a: Tensor, b: Tensor) -> LoRA:
    new = LoRA(base, config)
    new.a.copy_(a)
    new.b.copy_(b)
    return new


@torch.no_grad()
def _factors(layer: LoRALayer, names, weights, rank: int, how: str, options: dict) -> tuple[Tensor, Tensor]:
    """(A', B') of this layer's share of the combination (module docstring)."""
    held = [(layer.adapters[n], w) for n, w in zip(names, weights) if n in layer.adapters]
    if how == "cat":
        return _cat(held, rank)
    if how in SVD:
        return _svd(held, rank, how, options)
    coef = [w * lora.scale for lora, w in held]
    a = merge(
        how,
        [lora.a for lora, _ in held],
        [math.copysign(math.sqrt(abs(c)), c) for c in coef],
        options["density"],
        options["sign_method"],
    )
    b = merge(
        how, [lora.b for lora, _ in held], [math.sqrt(abs(c)) for c in coef], options["density"], options["sign_method"]
    )
    return a.to(held[0][0].a.dtype), b.to(held[0][0].b.dtype)


def _cat(held, rank: int) -> tuple[Tensor, Tensor]:
    """The held adapters' blocks one after another (PEFT's order), zero rows / columns up to ``rank``."""
    a = torch.cat([lora.a * (w * lora.scale) for lora, w in held], 0)
    b = torch.cat([lora.b for lora, _ in held], 1)
    return _pad(a, 0, rank), _pad(b, 1, rank)


def _pad(t: Tensor, dim: int, size: int) -> Tensor:
    if t.shape[dim] >= size:
        return t
    shape = list(t.shape)
    shape[dim] = size - t.shape[dim]
    return torch.cat([t, t.new_zeros(shape)], dim)


def _svd(held, rank: int, how: str, options: dict) -> tuple[Tensor, Tensor]:
    """Merge the dense updates, then B' = U_r S_r, A' = V_r^T (zero-padded where rank > min(out, in))."""
    first = held[0][0]
    deltas = [lora.update(torch.float32 if first.a.dtype != torch.float64 else torch.float64) for lora, _ in held]
    if first.kind == "embedding":
        deltas = [d.t() for d in deltas]  # back to B A: (dim, num)
    shape_a, out = first.a.shape[1:], first.b.shape[0]
    mats = [d.reshape(out, -1) for d in deltas]  # (out, in * k..)
    total = merge(how, mats, [w for _, w in held], options["density"], options["sign_method"])
    u, s, vh = torch.linalg.svd(total, full_matrices=False)
    u, vh = u[:, :rank] * s[:rank], vh[:rank]
    if options["clamp"] is not None:
        hi = torch.quantile(torch.cat([u.flatten(), vh.flatten()]), options["clamp"])
        u, vh = u.clamp(-hi, hi), vh.clamp(-hi, hi)
    b, a = _pad(u, 1, rank), _pad(vh, 0, rank)
    b = b.reshape(out, rank, *([1] * len(first.b.shape[2:])))
    return a.reshape(rank, *shape_a).to(first.a.dtype), b.to(first.b.dtype)

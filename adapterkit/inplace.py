"""merge_adapter / unmerge_adapter: fold adapters into the base weights in place, and take them out.

For loops that merge, hand the weights to a generator and unmerge at every step (RL). The names and
behaviour are PEFT's (``merge_adapter`` / ``unmerge_adapter``), so code written for PEFT reads the
same. Unlike ``ak.merge`` (one way: plain modules, no adapterkit left) the adapter layers stay in
place; while merged they skip the merged adapters' branches, the model computes the same function,
and ``model.state_dict()`` holds the merged weights.

Per base layer (fold.py): merge W' = row * W * col + add, unmerge W = (W' - add) / (row * col),
computed in fp32 from the weight as stored and rounded once to its dtype. LoRA on Linear, Conv1D,
Embedding and Conv1d / Conv2d / Conv3d (groups 1), DoRA (s = m / ||W + scale B A|| taken from the
unmerged W and kept for unmerge, as PEFT does), IA3, LoHa, LoKr, AdaLoRA, VeRA (added updates), OFT and
BOFT (W' = s * W T^T with T their input rotation, kept and inverted in fp64 on unmerge) and LN tuning
(the norm takes the trained copy's values, its own are kept for unmerge: ``merge_in_place`` /
``unmerge_in_place`` on the layer).

Precision. fp32: merge and unmerge are exact up to rounding (one rounding each). bf16: a weight comes
back bit for bit unless |W + update| lies in a higher power-of-two band than |W|; otherwise it is off
by at most one step (1.5 in the worst case of the two roundings; tested) at the larger of |W| and
|W merged|. Measured with ``python benchmarks/bench_merge_bf16.py --cycles 20`` on SmolLM2-135M in
bf16, LoRA r16 all-linear with updates 10% of W: one round trip gives 94.7% of the weights back bit
for bit, relative error ||dW|| / ||W|| = 5.4e-4 (PEFT: 93.0%, 9.4e-4); after 20 cycles with the
adapter moving in between, 91.5% and 1.5e-3 (PEFT: 77.4%, 2.7e-3). DoRA: 94.5% / 82.8%; IA3:
98.9% / 95.0% (benchmarks/merge.md).

Refused, with the model unchanged (MergeError): a 4-bit / 8-bit base (W cannot change in place
without re-quantizing), a base weight tied to another module's (merging would change both), a DoRA
adapter left unmerged next to merged ones (its norm is taken from the base weight), part of the
adapters of a module that holds adapters of two methods one inside the other. While merged,
attach / load / delete / set_active / combine / detach / ``ak.disabled`` and forwards that would
train a merged adapter raise MergeError; ``ak.merge`` works (what is merged stays merged).
"""

from __future__ import annotations

import warnings
from typing import Iterable, Optional, Union

import torch
from torch import nn

from . import bases
from .anatomy import tied_parameters, tied_with
from .errors import AdapterNameError, MergeError
from .fold import Fold, compute_dtype
from .inject import _unknown, active_names, adapter_layers, merged_adapters
from .layer import AdapterLayer, own_method
from .methods.trained_module import TrainedModule

_IN_PLACE = ("linear", "conv1d", "embedding") + bases.CONV_KINDS


class _Stack:
    """The adapter layers around one base module, outermost first, and what each merges."""

    def __init__(self, name: str, base: nn.Module):
        self.name, self.base = name, base
        self.layers: list[tuple[AdapterLayer, tuple[str, ...]]] = []
        self.folds: list[Fold] = []  # one per layer that merges, innermost first

    def merging(self) -> list[tuple[AdapterLayer, tuple[str, ...]]]:
        """(layer, names) of the layers that merge something, innermost first."""
        return [(layer, names) for layer, names in reversed(self.layers) if names]


def merge_adapter(model: nn.Module, names: Union[str, Iterable[str], None] = None, safe: bool = False) -> nn.Module:
    """Fold the active adapters (or the active ones among ``names``) into the base weights in place;
    returns ``model``. ``ak.unmerge_adapter(model)`` takes them out again.

    The output does not change (up to rounding). ``safe=True`` computes every merged weight first and
    raises MergeError, leaving the model untouched, if any holds NaN or Inf (a second pass over the
    weights: twice the compute, no extra memory). Adapters already merged: nothing to do (a warning).
    """
    wanted = _wanted(model, names)
    already = merged_adapters(model)
    if already:
        if set(wanted) <= set(already):
            warnings.warn(f"adapters {wanted} are already merged into the base weights; nothing to do.", stacklevel=2)
            return model
        raise MergeError(
            f"adapters {already} are merged already; merging {wanted} on top is not supported. Call "
            f"ak.unmerge_adapter(model), then ak.merge_adapter(model, names=[...]) with all of them."
        )
    stacks = [s for s in _stacks(model, wanted) if any(names for _, names in s.layers)]
    own = [s for s in stacks if _merges_itself(s)]  # layers that swap in values (LN tuning)
    stacks = [s for s in stacks if not _merges_itself(s)]
    tied = tied_parameters(model)
    for stack in stacks:  # check everything before changing anything
        _check(stack, wanted, tied)
        stack.folds = _folds(stack)
    for stack in own:
        _check_own(stack, safe)
    for stack in stacks if safe else ():
        _check_finite(stack, *_merged(stack))
    for stack in stacks:
        if not _add_in_place(stack.base, stack.merging(), stack.folds, sign=1):
            _write(stack.base, *_merged(stack))
        for (layer, names), fold in zip(stack.merging(), stack.folds):
            layer.merged_names, layer.merged_fold = names, fold
    for stack in own:
        for layer, names in stack.merging():
            layer.merge_in_place(names)
    return model


def unmerge_adapter(model: nn.Module) -> nn.Module:
    """Take the adapters merged by ``ak.merge_adapter`` out of the base weights; returns ``model``."""
    stacks = [s for s in _stacks(model, ()) if any(layer.merged_names for layer, _ in s.layers)]
    if not stacks:
        warnings.warn("no adapter is merged into the base weights; nothing to unmerge.", stacklevel=2)
        return model
    for stack in stacks:
        if _merges_itself(stack):
            for layer, _ in stack.layers:
                if layer.merged_names:
                    layer.unmerge_in_place()
            continue
        merged = [(layer, layer.merged_names) for layer, _ in stack.layers if layer.merged_names]
        folds = [layer.merged_fold for layer, _ in merged]
        if not _add_in_place(stack.base, merged, folds, sign=-1):
            weight, bias = _read(stack.base, with_bias=any(f.bias_row is not None for f in folds))
            for (layer, _), fold in zip(merged, folds):  # outermost first: the inverse of the merge
                weight, bias = fold.invert(weight, bias, layer.fold_add(fold, weight.dtype))
            _write(stack.base, weight, bias)
        for layer, _ in stack.layers:
            layer.merged_names, layer.merged_fold = (), None
    return model


def _wanted(model: nn.Module, names) -> list[str]:
    active = active_names(model)
    if any(layer.disabled for _, layer in adapter_layers(model)):
        raise MergeError("merge_adapter was called inside ak.disabled(model); leave that block first.")
    if names is None:
        if not active:
            raise MergeError("the model has no active adapter to merge; attach or load one, or ak.set_active it.")
        return active
    is_list = isinstance(names, (list, tuple)) and all(isinstance(n, str) for n in names)
    if not isinstance(names, str) and not (is_list and names):
        raise AdapterNameError(
            f"merge_adapter takes names=None (the active adapters), an adapter name or a non-empty list "
            f"of names; got {names!r}. Active here: {active}."
        )
    wanted = [names] if isinstance(names, str) else list(names)
    for name in wanted:
        if name not in active:
            if not any(name in layer.adapters for _, layer in adapter_layers(model)):
                raise _unknown(model, name)
            raise MergeError(
                f"adapter {name!r} is not active (active: {active}); merge_adapter folds active adapters "
                f"so that the model's output stays the same. Call ak.set_active(model, ...) first."
            )
    return wanted


def _stacks(model: nn.Module, wanted) -> list[_Stack]:
    """One _Stack per adapted base module (layers nested around it grouped), in model order."""
    stacks: dict[int, _Stack] = {}
    for name, layer in adapter_layers(model):
        if isinstance(layer, TrainedModule):  # whole-module copies (train_modules) are not merged
            continue
        base = layer.innermost()
        stack = stacks.setdefault(id(base), _Stack(name, base))
        stack.layers.append((layer, tuple(n for n in layer.active if n in wanted)))  # the layer's order
    return list(stacks.values())


def _merges_itself(stack: _Stack) -> bool:
    """A lone layer that merges in place by itself (``merge_in_place`` / ``unmerge_in_place``)."""
    return len(stack.layers) == 1 and own_method(stack.layers[0][0], "merge_in_place") is not None


def _check_own(stack: _Stack, safe: bool) -> None:
    for layer, names in stack.layers:
        if len(names) > 1:
            raise MergeError(f"{stack.name}: {layer.method} merges one adapter at a time; asked for {list(names)}.")
        if safe and names:
            values = [t for t in layer.adapters[names[0]].state_dict().values() if t.is_floating_point()]
            if not all(bool(torch.isfinite(t).all()) for t in values):
                raise MergeError(
                    f"{stack.name}: merging {list(names)} gives NaN or Inf weights; nothing was merged. "
                    "The adapter's tensors are likely broken: check them or reload it."
                )


def _check(stack: _Stack, wanted, tied) -> None:
    base, where = stack.base, stack.name
    for layer, names in stack.layers:
        if names and own_method(layer, "fold") is None:
            raise MergeError(
                f"{where}: {layer.method} adapters ({list(names)}) cannot be merged into the base weights; "
                f"merge_adapter folds LoRA, DoRA, IA3, LoHa, LoKr, AdaLoRA, VeRA, OFT, BOFT and LN tuning (LoRA "
                f"on parameters, target_parameters, only through ak.merge). Pass names= without them."
            )
    kind = bases.base_kind(base)
    if kind == "mha" or (kind in bases.CONV_KINDS and base.groups > 1):
        raise MergeError(
            f"{where}: LoRA's update of a {type(base).__name__}"
            f"{' (two projections used inside its forward)' if kind == 'mha' else ' with groups > 1 is not grouped'}"
            f" cannot be merged in place; keep it unmerged{', or export with ak.merge' if kind == 'mha' else ''}."
        )
    if kind not in _IN_PLACE or not base.weight.dtype.is_floating_point:
        raise MergeError(
            f"{where}: its base is a {type(base).__name__} without a dense float weight (a 4-bit / 8-bit "
            f"layer); merging in place would have to re-quantize W + update, which loses the update and "
            f"cannot be undone exactly. Keep the adapter unmerged (hand the adapter itself to the "
            f"generator: ak.save_adapter, vLLM loads LoRA files), or export a dense copy with ak.merge."
        )
    others = tied_with(base, where, tied)
    if others:
        raise MergeError(
            f"{where} shares its weight with {', '.join(others)} (tied weights): merging in place would "
            f"change {', '.join(others)} too. Leave {where} out of the adapter's targets (exclude=[...]), "
            f"or export with ak.merge, which gives {where} a weight of its own."
        )
    _check_mixed(stack, wanted)


def _check_mixed(stack: _Stack, wanted) -> None:
    """Adapters left unmerged next to merged ones must not read the base weight (DoRA), and nested
    layers of two methods merge all or nothing (each one's branch acts on the other's output)."""
    left = [(layer, n) for layer, _ in stack.layers for n in layer.active if n not in wanted]
    dora = [
        n
        for layer, _ in stack.layers
        for n in layer.active
        if getattr(layer.adapters[n], "magnitude", None) is not None
    ]
    if len(stack.layers) > 1 and (left or dora):
        raise MergeError(
            f"{stack.name} holds adapters of several methods one inside the other "
            f"({', '.join(layer.method for layer, _ in stack.layers)}); merging in place takes all of "
            f"their active adapters at once{' and no DoRA' if dora else ''}. Merge them all "
            f"(names=None), or use ak.merge."
        )
    unmerged_dora = [n for layer, n in left if getattr(layer.adapters[n], "magnitude", None) is not None]
    if unmerged_dora:
        raise MergeError(
            f"{stack.name}: DoRA adapter(s) {unmerged_dora} would stay unmerged next to merged ones, but "
            f"DoRA's norm is taken from the base weight, which merging changes. Merge them too."
        )
    for layer, names in stack.layers:  # a merged DoRA rescales every adapter before it: those too
        if dora and names and tuple(layer.active[: len(names)]) != names:
            raise MergeError(
                f"{stack.name}: its adapters compose in their active order {list(layer.active)} and DoRA "
                f"rescales those before it, so merging in place takes a leading run of that order; got "
                f"{list(names)}. Merge them all (names=None), or set_active them in another order first."
            )


def _check_finite(stack: _Stack, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> None:
    if bool(torch.isfinite(weight).all()) and (bias is None or bool(torch.isfinite(bias).all())):
        return
    raise MergeError(
        f"{stack.name}: merging {[n for _, names in stack.layers for n in names]} gives NaN or Inf "
        f"weights; nothing was merged. The adapter's tensors are likely broken: check them "
        f"(e.g. torch.isfinite on its parameters) or reload it."
    )


def _read(base: nn.Module, with_bias: bool = True) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """(W in LoRA's layout, bias) as new tensors in the compute dtype (fp32; fp64 for fp64)."""
    weight = bases.dense_weight(base)
    acc = compute_dtype(weight.dtype)
    bias = getattr(base, "bias", None) if with_bias else None
    return weight.detach().to(acc, copy=True), None if bias is None else bias.detach().to(acc, copy=True)


def _folds(stack: _Stack) -> list[Fold]:
    """Each merging layer's Fold, from the unmerged weight; refuses maps that cannot be undone."""
    dtype = compute_dtype(bases.dense_weight(stack.base).dtype)
    unmerged: list[torch.Tensor] = []

    def weight() -> torch.Tensor:  # read once, only for the layers that need W (DoRA)
        if not unmerged:
            unmerged.append(_read(stack.base, with_bias=False)[0])
        return unmerged[0]

    folds = [layer.fold(names, dtype, weight) for layer, names in stack.merging()]
    for fold, (_layer, names) in zip(folds, stack.merging()):
        if not fold.invertible():
            raise MergeError(
                f"{stack.name}: merging {list(names)} would scale rows or columns of the weight by zero "
                f"or a non-finite value (IA3 vector or DoRA magnitude), so it could not be unmerged. "
                f"Check those tensors, or use ak.merge, which is not undone."
            )
    return folds


def _merged(stack: _Stack) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """(W', b') of the stack's base, b' None when no fold scales the bias."""
    weight, bias = _read(stack.base, with_bias=any(f.bias_row is not None for f in stack.folds))
    for (layer, _), fold in zip(stack.merging(), stack.folds):  # innermost first
        weight, bias = fold.apply(weight, bias, layer.fold_add(fold, weight.dtype))
    return weight, bias


@torch.no_grad()
def _add_in_place(base: nn.Module, layers, folds: list[Fold], sign: int) -> bool:
    """The common case in one pass over W: one layer whose map is W +- add (LoRA). torch computes
    ``W.add_(add)`` in fp32 (add's dtype) and rounds once into W's dtype, as the general path does.
    False (nothing done) for any other map."""
    if len(folds) != 1 or folds[0].factors() or folds[0].right is not None:
        return False
    weight = bases.dense_weight(base)
    add = layers[0][0].fold_add(folds[0], compute_dtype(weight.dtype))
    weight.add_(add, alpha=sign)
    return True


@torch.no_grad()
def _write(base: nn.Module, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> None:
    """Round once into the base's own tensors (the same Parameters: optimizers and views see it)."""
    bases.dense_weight(base).copy_(weight)
    if bias is not None:
        base.bias.copy_(bias)

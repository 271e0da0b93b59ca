"""Task heads over a frozen backbone, and partial fine-tuning.

``replace_head(model, num_labels)`` swaps a classification head for a fresh one with a new number
of outputs (the model keeps its class; ``config.num_labels`` follows). Train it with an adapter by
naming it in the adapter's ``train_modules`` (saved with the adapter, PEFT's ``modules_to_save``),
or on its own with ``unfreeze``.

``unfreeze(model, last=N)`` makes the parameters of chosen transformer blocks (the last N, or
given indices) and chosen modules trainable, in place: partial fine-tuning, alongside adapters
(call it after ``attach``, which freezes every non-adapter parameter) or instead of them.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn

from .anatomy import label_head, stacks
from .errors import TargetError, close_matches
from .layer import AdapterLayer
from .targets import matches


def replace_head(model: nn.Module, num_labels: int, name: Optional[str] = None) -> str:
    """Replace the classification head by a new ``nn.Linear(in, num_labels)``; returns its name.

    The new head is initialised as the model initialises its own layers (``_init_weights``) and
    is trainable; ``model.config.num_labels`` (and its label maps) follow. Call it before ``attach``
    and pass the returned name in ``train_modules`` to train and save it with the adapter.
    """
    if isinstance(num_labels, bool) or not isinstance(num_labels, int) or num_labels < 1:
        raise TargetError(f"num_labels must be a positive integer; got {num_labels!r}.")
    config = getattr(model, "config", None)
    name = name or _default_head(model, getattr(config, "num_labels", None))
    names = dict(model.named_modules())
    if name not in names:
        raise TargetError(f"no module named {name!r}{close_matches(name, names)}.")
    old = names[name]
    if isinstance(old, AdapterLayer) or not isinstance(old, nn.Linear):
        raise TargetError(
            f"{name!r} is a {type(old).__name__}; replace_head swaps a plain nn.Linear head. "
            "Call it before attaching adapters."
        )
    new = nn.Linear(
        old.in_features, num_labels, bias=old.bias is not None, device=old.weight.device, dtype=old.weight.dtype
    )
    init = getattr(model, "_init_weights", None)
    if callable(init):
        with torch.no_grad():
            init(new)
    parent_name, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, attr, new)
    if config is not None:
        config.num_labels = num_labels  # transformers rebuilds id2label / label2id from it
    if isinstance(getattr(model, "num_labels", None), int):  # the copy task models keep for their loss
        model.num_labels = num_labels
    return name


def unfreeze(
    model: nn.Module,
    last: Optional[int] = None,
    layers: Optional[Sequence[int]] = None,
    modules: Sequence[str] = (),
) -> list[str]:
    """Make chosen blocks and modules trainable (in place); returns the names of the new trainable
    parameters. ``last``: the last N blocks of each stack of blocks; ``layers``: block indices;
    ``modules``: module-name suffixes or a regex (e.g. ``["norm"]``). Adapter parameters are never
    touched; other parameters keep their state.
    """
    if last is None and layers is None and not modules:
        raise TargetError("unfreeze needs last=N, layers=[...] or modules=[...].")
    prefixes = _block_prefixes(model, last, layers) if (last is not None or layers is not None) else []
    names = [n for n, _ in model.named_modules() if n]
    chosen = prefixes + ([n for n in names if matches(n, modules)] if modules else [])
    if modules and not any(matches(n, modules) for n in names):
        raise TargetError(f"unfreeze modules={modules!r} matches no module name.")
    adapter_params = {id(p) for m in model.modules() if isinstance(m, AdapterLayer) for p in m.adapters.parameters()}
    done = []
    for pname, p in model.named_parameters():
        if id(p) in adapter_params or not any(pname.startswith(c + ".") for c in chosen):
            continue
        if not p.requires_grad and p.is_floating_point():
            p.requires_grad_(True)
            done.append(pname)
    return done


def _default_head(model: nn.Module, num_labels: Optional[int]) -> str:
    name = label_head(model, num_labels)
    if name is None:
        raise TargetError(
            f"found no Linear layer with {num_labels} outputs (config.num_labels) in {type(model).__name__}; "
            "name the head: replace_head(model, n, name='classifier')."
        )
    return name


def _block_prefixes(model: nn.Module, last: Optional[int], layers: Optional[Sequence[int]]) -> list[str]:
    out = []
    for found in stacks(model).values():
        if last is not None:
            if isinstance(last, bool) or not isinstance(last, int) or last < 1:
                raise TargetError(f"unfreeze last must be a positive integer; got {last!r}.")
            out += [b.prefix for b in found[-last:]]
        if layers is not None:
            out += [b.prefix for b in found if b.index in set(layers)]
    return out

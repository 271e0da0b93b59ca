"""Mixed-adapter batches: row i of a batch runs with adapter ``names[i]`` alone (PEFT's ``adapter_names``).

    y_i = f(x_i; base + adapter names[i])          names[i] == "__base__": y_i = f(x_i; base)

Two ways in, both for inference (eval mode):
- ``model(**inputs, adapter_names=[...])``, one name per row: a forward pre-hook on the model,
  installed by ``attach`` and removed by ``detach``, takes the names out of the call's arguments and
  hands them to the adapter layers for that call; a forward hook that always runs takes them back.
- ``with ak.mixed_batch(model, names): model.generate(...)``: the same for every call in the block.
  ``generate`` refuses keyword arguments that its model's ``forward`` does not declare, so the
  names cannot ride in its arguments as they do through PEFT's wrapper class. In the block a batch
  with k times as many rows as names (``num_beams=k`` or ``num_return_sequences=k`` repeat each
  prompt k times in a row, as PEFT repeats the names) gives each name its k consecutive rows.

The layers that compute per row (LoRA: ``methods/lora/mixed.py``; ``train_modules`` copies) read
``layer.rows``, a ``Rows`` object shared by the model's layers for one call or block: it holds the
names and, per batch size and device, each adapter's row indices. State lives in the model's own
layers, so two models never share it; one model runs one mixed batch at a time.
"""

from __future__ import annotations

import contextlib
import copy
import weakref
from typing import Any, Iterator, Optional, Sequence

import torch
from torch import Tensor, nn

from .errors import AdapterNameError, InputError, MergeError, UnsupportedModuleError, close_matches
from .layer import AdapterLayer

BASE = "__base__"  # PEFT's name for "no adapter" in adapter_names


class Rows:
    """The adapter names of a batch's rows, and their row indices (computed once per batch size)."""

    def __init__(self, names: Sequence[str], repeat: bool):
        self.names = tuple(names)
        self.repeat = repeat  # a batch may hold k rows per name (generate's beams / sequences)
        self.cache: dict = {}  # what layers build once per call or block (mixed.py: stacked factors)
        self._groups: dict = {}

    def expanded(self, batch: int) -> tuple[str, ...]:
        """One name per row of a batch of ``batch`` rows."""
        n = len(self.names)
        if batch == n:
            return self.names
        if self.repeat and batch % n == 0:
            return tuple(name for name in self.names for _ in range(batch // n))
        how = "one name per row, or one per prompt given to generate" if self.repeat else "one name per row"
        raise InputError(
            f"adapter_names has {n} names but the batch has {batch} rows; give {how} (\"{BASE}\" for the base model)."
        )

    def groups(self, batch: int, device: torch.device) -> dict[str, Tensor]:
        """{adapter name: its rows, ascending (n,) int64}, first-seen order; base rows left out."""
        key = (batch, device)
        found = self._groups.get(key)
        if found is None:
            rows: dict[str, list[int]] = {}
            for i, name in enumerate(self.expanded(batch)):
                if name != BASE:
                    rows.setdefault(name, []).append(i)
            flat = torch.tensor([i for r in rows.values() for i in r], dtype=torch.int64, device=device)
            found = self._groups[key] = dict(zip(rows, flat.split([len(r) for r in rows.values()])))
        return found


# -- which layers compute per row ---------------------------------------------------------------
def _per_row_layers() -> tuple[type, ...]:
    from .methods.lora.layers import LoRALayer
    from .methods.trained_module import TrainedModule

    return LoRALayer, TrainedModule


def checked(model: nn.Module, names: Any, repeat: bool) -> Rows:
    """``Rows`` for ``names`` after checking them against the model; clear errors otherwise."""
    if (
        isinstance(names, str)
        or not isinstance(names, (list, tuple))
        or not names
        or not all(isinstance(n, str) for n in names)
    ):
        raise InputError(
            f"adapter_names takes a non-empty list of adapter names, one per row (\"{BASE}\" for the "
            f"base model); got {names!r:.80}."
        )
    if model.training:
        raise InputError(
            "adapter_names (a mixed-adapter batch) is for inference; call model.eval() first "
            "(PEFT refuses it in training mode too)."
        )
    layers = [m for m in model.modules() if isinstance(m, AdapterLayer)]
    have = list(dict.fromkeys(n for layer in layers for n in layer.adapters.keys()))
    for name in dict.fromkeys(names):
        if name != BASE and name not in have:
            raise AdapterNameError(
                f"adapter_names names {name!r}{close_matches(name, have + [BASE])}, which this model does "
                f"not have; valid names: {', '.join(map(repr, have)) or 'none'} and {BASE!r} (the base model)."
            )
    _check_layers(layers, set(names))
    return Rows(names, repeat)


def _check_layers(layers: list[AdapterLayer], named: set[str]) -> None:
    per_row = _per_row_layers()
    for layer in layers:
        if isinstance(layer, per_row):
            merged = getattr(layer, "merged_names", ())  # adapters merged into the base in place, where
            # the layer keeps such a list (their update is then in every row's base output)
            if merged:
                raise MergeError(
                    f"adapter_names cannot pick adapters per row while {list(merged)} are merged into the "
                    "base weights; call ak.unmerge_adapter(model) first."
                )
            continue
        held = sorted(named & set(layer.adapters.keys()))
        if held:
            raise UnsupportedModuleError(
                f"adapter_names picks adapters per row, which works for LoRA adapters (and their "
                f"train_modules); {held[0]!r} is an adapter of method {layer.method}. Name only LoRA adapters."
            )
        if layer.active_adapters():
            raise UnsupportedModuleError(
                f"adapter_names runs each row with its named adapter alone, but {layer.method} adapter(s) "
                f"{list(layer.active)} are active and cannot be switched per row; deactivate them "
                f"(ak.set_active(model, [...]) with LoRA adapters only) or use ak.disabled."
            )


# -- handing the rows to the layers ---------------------------------------------------------------
def _hand_out(model: nn.Module, rows: Optional[Rows]) -> list[tuple[AdapterLayer, Optional[Rows]]]:
    """Give ``rows`` to every per-row layer; returns what each held before."""
    per_row = _per_row_layers()
    before = []
    for module in model.modules():
        if isinstance(module, per_row):
            before.append((module, module.rows))
            module.rows = rows
    return before


def _take_back(before: list[tuple[AdapterLayer, Optional[Rows]]]) -> None:
    for layer, rows in before:
        layer.rows = rows


@contextlib.contextmanager
def mixed_batch(model: nn.Module, adapter_names: Sequence[str]) -> Iterator[nn.Module]:
    """Inside the block, row i of every batch uses adapter ``adapter_names[i]`` alone.

    For ``model.generate``:  ``with ak.mixed_batch(model, ["a", "b", "__base__"]):
    model.generate(ids, num_beams=2)``; each name covers its prompt's beams / returned sequences.
    """
    rows = checked(model, adapter_names, repeat=True)
    before = _hand_out(model, rows)
    try:
        yield model
    finally:
        _take_back(before)


# -- the model's hooks --------------------------------------------------------------------------
class _Hooks:
    """A model's pre-hook (takes ``adapter_names`` out of the call) and always-run forward hook.

    ``_INSTALLED`` maps each model to its hooks, so that ``release_hooks`` can remove them; a deep
    copy of the model gets its own entry (``__deepcopy__``), so that detaching the copy removes the
    copy's hooks.
    """

    def __init__(self, model: Optional[nn.Module] = None):
        self.calls: list = []  # per forward in flight: what the layers held before it, or None
        self.handles: tuple = ()
        self.owner = None if model is None else weakref.ref(model)

    def __getstate__(self) -> dict:  # pickled with the model: everything but the weak reference
        return {"calls": [], "handles": self.handles, "owner": None}

    def __deepcopy__(self, memo: dict) -> "_Hooks":
        twin = _Hooks()
        memo[id(self)] = twin
        twin.handles = copy.deepcopy(self.handles, memo)  # they point at the copy's hook dicts
        owner = self.owner() if self.owner is not None else None
        copied = memo.get(id(owner)) if owner is not None else None
        if isinstance(copied, nn.Module):
            twin.owner = weakref.ref(copied)
            _INSTALLED[copied] = twin
        return twin

    def pre(self, model: nn.Module, args: tuple, kwargs: dict):
        self.calls.append(None)
        if "adapter_names" not in kwargs:
            return None
        kwargs = dict(kwargs)
        names = kwargs.pop("adapter_names")
        if names is not None:  # None: an ordinary call (as PEFT)
            rows = checked(model, names, repeat=False)
            batch = _batch_size(args, kwargs)
            if batch is not None:
                rows.expanded(batch)  # a length mismatch fails before the model runs
            self.calls[-1] = _hand_out(model, rows)
        return args, kwargs

    def post(self, model: nn.Module, args: tuple, output: Any) -> None:
        before = self.calls.pop() if self.calls else None
        if before is not None:
            _take_back(before)


_INPUTS = ("input_ids", "inputs_embeds", "decoder_input_ids", "pixel_values", "input_values", "input_features")


def _batch_size(args: tuple, kwargs: dict) -> Optional[int]:
    first = args[0] if args else next((kwargs[k] for k in _INPUTS if kwargs.get(k) is not None), None)
    return first.shape[0] if isinstance(first, Tensor) and first.dim() > 0 else None


_INSTALLED: "weakref.WeakKeyDictionary[nn.Module, _Hooks]" = weakref.WeakKeyDictionary()


def install_hooks(model: nn.Module) -> None:
    """Register the model's hooks once (``attach`` calls it)."""
    if model in _INSTALLED:
        return
    hooks = _Hooks(model)
    hooks.handles = (
        model.register_forward_pre_hook(hooks.pre, with_kwargs=True, prepend=True),
        model.register_forward_hook(hooks.post, always_call=True),
    )
    _INSTALLED[model] = hooks


def release_hooks(model: nn.Module) -> None:
    """Remove the model's hooks once no adapter layer is left in it (``detach``, ``merge``)."""
    hooks = _INSTALLED.get(model)
    if hooks is None or any(isinstance(m, AdapterLayer) for m in model.modules()):
        return
    for handle in hooks.handles:
        handle.remove()
    del _INSTALLED[model]

"""The model-level forward pre-hook that feeds virtual tokens to the model.

The trained tensors live in adapter layers around the input embeddings (found by structure);
one forward pre-hook on the model rewrites the call's arguments:

- prefix (first call, empty cache): the cache gets every layer's prefix keys/values (n_k);
- prompts (first call): ``inputs_embeds = [P; E(input_ids)]`` (n_p rows), labels get n_p
  ``-100`` in front, token type ids n_p zeros;
- always: the attention mask gets n_k + n_p ones in front; ``position_ids`` / ``cache_position``
  move by n_k + n_p (the virtual tokens take the first positions), as PEFT's models see them.

Calls with a non-empty cache (``generate``'s later steps) only get the mask and positions moved,
so ``model.generate`` works unchanged. ``detach`` removes the hook with the last such layer.

The cache argument is ``cache`` in transformers >= 5.24 and ``past_key_values`` before (the old
name is still accepted there, with a warning): the hook reads either, and hands the cache on under
the name the model's ``forward`` declares.
"""

from __future__ import annotations

import copy
import functools
import inspect
import weakref
from typing import Optional

import torch
from torch import Tensor, nn

from ... import checkpointing
from ...errors import InputError, UnsupportedModuleError


def virtual_token_layers(model: nn.Module) -> list:
    from .layers import VirtualTokenLayer

    return [m for m in model.modules() if isinstance(m, VirtualTokenLayer)]


class _Hook:
    """The model's pre-hook, kept with its handle so that ``release`` removes exactly it.

    ``_INSTALLED`` maps each model to its hook; a deep copy of the model copies the hook with it
    (it sits in the model's hooks), and the copy registers itself for the copied model, its handle
    pointing at the copy's hooks.
    """

    def __init__(self, model: Optional[nn.Module] = None):
        self.handle = None
        self.owner = None if model is None else weakref.ref(model)

    def __call__(self, model: nn.Module, args: tuple, kwargs: dict):
        return _pre_hook(model, args, kwargs)

    def __getstate__(self) -> dict:  # pickled with the model: everything but the weak reference
        return {"handle": self.handle, "owner": None}

    def __deepcopy__(self, memo: dict) -> "_Hook":
        twin = _Hook()
        memo[id(self)] = twin
        twin.handle = copy.deepcopy(self.handle, memo)
        owner = self.owner() if self.owner is not None else None
        copied = memo.get(id(owner)) if owner is not None else None
        if isinstance(copied, nn.Module):
            twin.owner = weakref.ref(copied)
            _INSTALLED[copied] = twin
        return twin


_INSTALLED: "weakref.WeakKeyDictionary[nn.Module, _Hook]" = weakref.WeakKeyDictionary()


def install(model: nn.Module) -> None:
    """Register the hook once per model."""
    if model in _INSTALLED:
        return
    hook = _Hook(model)
    hook.handle = model.register_forward_pre_hook(hook, with_kwargs=True)
    _INSTALLED[model] = hook


def release(model: nn.Module) -> None:
    """Remove the hook when no virtual-token layer is left in the model."""
    if virtual_token_layers(model) or model not in _INSTALLED:
        return
    _INSTALLED.pop(model).handle.remove()


def _pre_hook(model: nn.Module, args: tuple, kwargs: dict):
    active = [a for layer in virtual_token_layers(model) for a in layer.active_adapters()]
    if not active:
        return None
    prefixes = [a for a in active if a.kind == "prefix"]
    prompts = [a for a in active if a.kind != "prefix"]
    if prefixes and model.training and checkpointing.is_on(model):
        raise UnsupportedModuleError(
            "prefix tuning feeds its keys/values through the model's cache, which transformers drops in "
            "layers under activation (gradient) checkpointing; call model.activation_checkpointing_disable() "
            "(gradient_checkpointing_disable() before transformers 5.23), or use "
            "prompt tuning / P-tuning (PromptTuningConfig, PromptEncoderConfig), which work with it."
        )
    kwargs = dict(kwargs)
    if args:  # positional arguments by name (input_ids, attention_mask, ...)
        names = [
            p
            for p, v in inspect.signature(model.forward).parameters.items()
            if v.kind in (v.POSITIONAL_ONLY, v.POSITIONAL_OR_KEYWORD)
        ]
        kwargs.update(zip(names, args))
    key, cache = _take_cache(model, kwargs)
    done = cached_length(cache)
    first = done == 0
    n_prefix = sum(a.num_virtual_tokens for a in prefixes)
    n_prompt = sum(a.num_virtual_tokens for a in prompts)
    _check_room(cache, done + _length(kwargs) + (n_prefix + n_prompt if first else 0), n_prefix + n_prompt)
    if first and prefixes:  # later calls (generate's steps) find everything in the cache already
        kv = torch.cat([a.key_values() for a in prefixes], dim=-2)
        cache = _filled_cache(model, cache, kv, _batch(kwargs))
    if cache is not None:
        kwargs[key] = cache
    if first and prompts:
        _prepend_prompts(model, kwargs, torch.cat([a.prompt() for a in prompts], dim=0))
    _shift(kwargs, n_prefix, n_prompt, first)
    return (), kwargs


CACHE_NAMES = ("cache", "past_key_values")  # transformers >= 5.24, and before


def cache_argument(model: nn.Module) -> str:
    """The name under which ``model.forward`` takes the key/value cache (or, for a task model whose
    forward passes ``**kwargs`` on, its backbone's: BERT's classifiers take no cache of their own)."""
    backbone = getattr(model, "base_model", None)
    return _cache_name(type(model), type(backbone) if isinstance(backbone, nn.Module) else None)


@functools.lru_cache(maxsize=None)
def _cache_name(model_cls: type, backbone_cls) -> str:
    """Read once per class pair: every decoding step asks."""
    for cls in (model_cls, backbone_cls):
        if cls is not None:
            params = inspect.signature(cls.forward).parameters
            found = next((name for name in CACHE_NAMES if name in params), None)
            if found:
                return found
    return "past_key_values"


def _take_cache(model: nn.Module, kwargs: dict) -> tuple[str, object]:
    """Remove the cache from ``kwargs`` under either name; (the model's name for it, the cache)."""
    given = [kwargs.pop(name) for name in CACHE_NAMES if kwargs.get(name) is not None]
    for name in CACHE_NAMES:
        kwargs.pop(name, None)
    if len(given) > 1 and given[0] is not given[1]:
        raise InputError(
            "the call passed two different caches, as `cache` and as `past_key_values`; pass one of them "
            "(`cache` on transformers >= 5.24)."
        )
    return cache_argument(model), (given[0] if given else None)


def cached_length(cache) -> int:
    """Tokens already in a cache: a transformers ``Cache``, a legacy tuple of (k, v) pairs, or None."""
    if cache is None:
        return 0
    if hasattr(cache, "get_seq_length"):
        return int(cache.get_seq_length())
    if isinstance(cache, (tuple, list)) and cache and cache[0] is not None:
        return int(cache[0][0].shape[-2])  # ((B, H, T, hd), (B, H, T, hd)) per layer
    return 0


def _batch(kwargs: dict) -> int:
    x = kwargs.get("input_ids")
    return (x if x is not None else kwargs["inputs_embeds"]).shape[0]


def _length(kwargs: dict) -> int:
    x = kwargs.get("input_ids")
    x = x if x is not None else kwargs.get("inputs_embeds")
    return 0 if x is None else x.shape[1]


def _check_room(cache, needed: int, virtual: int) -> None:
    """A fixed-size cache (transformers' StaticCache) must hold the virtual tokens too."""
    sizes = [
        layer.max_cache_len
        for layer in getattr(cache, "layers", None) or ()
        if getattr(layer, "max_cache_len", None) and not getattr(layer, "is_sliding", False)
    ]
    if sizes and needed > min(sizes):
        raise InputError(
            f"the static cache holds {min(sizes)} tokens, but this call needs {needed}, of which {virtual} "
            "are the adapters' virtual tokens (generate(cache_implementation='static') does not count them). "
            "Use the default dynamic cache, or pass cache=StaticCache(config=model.config, max_cache_len="
            f"prompt length + max_new_tokens + {virtual})."
        )


def _filled_cache(model: nn.Module, cache, kv: Tensor, batch: int):
    """``cache`` (a new DynamicCache when None) holding the prefix; kv (layers, 2, H, n, hd)."""
    if cache is None:
        from transformers import DynamicCache

        cache = DynamicCache(config=model.config)
    dtype = next(p for p in model.parameters()).dtype
    for i in range(kv.shape[0]):
        k = kv[i, 0].unsqueeze(0).expand(batch, -1, -1, -1).to(dtype)  # (B, H, n, hd)
        v = kv[i, 1].unsqueeze(0).expand(batch, -1, -1, -1).to(dtype)
        cache.update(k, v, i)
    return cache


def _prepend_prompts(model: nn.Module, kwargs: dict, prompt: Tensor) -> None:
    """[P; E(x)] as inputs_embeds; labels and token type ids extended to match. prompt (n, D)."""
    embeds = kwargs.get("inputs_embeds")
    if embeds is None:
        ids = kwargs.pop("input_ids")
        embeds = model.get_input_embeddings()(ids)  # (B, T, D)
    kwargs["input_ids"] = None
    batch, length, n = embeds.shape[0], embeds.shape[1], prompt.shape[0]
    kwargs["inputs_embeds"] = torch.cat([prompt.to(embeds.dtype).unsqueeze(0).expand(batch, -1, -1), embeds], 1)
    labels = kwargs.get("labels")
    if labels is not None and labels.dim() == 2 and labels.shape[1] == length:  # token labels only
        kwargs["labels"] = torch.cat([labels.new_full((batch, n), -100), labels], 1)
    types = kwargs.get("token_type_ids")
    if types is not None:
        kwargs["token_type_ids"] = torch.cat([types.new_zeros(batch, n), types], 1)


def _shift(kwargs: dict, n_prefix: int, n_prompt: int, first: bool) -> None:
    """Attention mask, position ids and cache positions, moved past the virtual tokens."""
    total = n_prefix + n_prompt
    mask = kwargs.get("attention_mask")
    if mask is not None and mask.dim() == 2:
        kwargs["attention_mask"] = torch.cat([mask.new_ones(mask.shape[0], total), mask], 1)
    for key in ("position_ids", "cache_position"):
        pos = kwargs.get(key)
        if pos is None:
            continue
        moved = pos + total
        if first and n_prompt:
            lead = torch.arange(n_prefix, total, device=pos.device, dtype=pos.dtype)
            lead = lead.expand(*pos.shape[:-1], n_prompt)
            moved = torch.cat([lead, moved], -1)
        kwargs[key] = moved

"""Trainable tokens: only some rows of an embedding train (PEFT's ``trainable_token_indices``).

For token ids T = (t_1..t_n) the adapter holds V (n, dim), starting as the base rows E[T]:

    embedding:  y = E'[ids]              E' = E with rows T replaced by V
    tied head:  logits = x E'^T (+ b)    (an output layer sharing E uses the same V)

The base weight stays frozen and unchanged; only V trains (n * dim numbers instead of num * dim).
On disk (PEFT's layout): ``base_model.model.<embedding>.token_adapter.trainable_tokens_delta`` (n, dim)
- the new rows themselves, despite the name - and ``trainable_token_indices`` in the config: a list
(the input embedding) or ``{module: ids}``. With tied input / output embeddings
(``tie_word_embeddings``) the output layer uses the input embedding's V, as PEFT ties them; only
the input embedding's V is saved.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...errors import ConfigError, InputError, TargetError, UnsupportedModuleError
from ...layer import AdapterLayer
from ...registry import PEFT_PREFIX
from ...anatomy import input_embedding, unwrapped

_KEY = "token_adapter.trainable_tokens_delta"


def check_token_indices(owner: str, value: Any) -> Optional[tuple]:
    """None, a tuple of token ids, or a tuple of (module suffix, ids) pairs; validated."""
    if value is None:
        return None
    if isinstance(value, dict) or (
        isinstance(value, (list, tuple)) and value and all(isinstance(p, (list, tuple)) for p in value)
    ):
        pairs = value.items() if isinstance(value, dict) else value
        out = []
        for pair in pairs:
            if len(pair) != 2 or not isinstance(pair[0], str) or not pair[0]:
                raise ConfigError(f"{owner}.trainable_token_indices maps module names to token ids; got {pair!r}.")
            out.append((pair[0], _ids(owner, pair[1])))
        if not out:
            raise ConfigError(f"{owner}.trainable_token_indices is empty; give token ids or leave it None.")
        return tuple(out)
    return _ids(owner, value)


def _ids(owner: str, ids: Any) -> tuple[int, ...]:
    if (
        not isinstance(ids, (list, tuple))
        or not ids
        or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in ids)
    ):
        raise ConfigError(
            f"{owner}.trainable_token_indices: token ids are a non-empty list of non-negative ints; got {ids!r}."
        )
    if len(set(ids)) != len(ids):
        raise ConfigError(f"{owner}.trainable_token_indices lists a token id twice: {list(ids)!r}.")
    return tuple(ids)


class TrainableTokens(nn.Module):
    """One adapter's new rows V (n, dim) for token ids ``indices`` of one embedding."""

    def __init__(self, weight: Tensor, indices: tuple[int, ...], config, shared: Optional["TrainableTokens"] = None):
        super().__init__()
        self.config = config
        self.indices = indices
        self._source = [shared] if shared is not None else []  # a tied output layer: the embedding's V
        if shared is None:
            self.own = nn.Parameter(weight.detach()[list(indices)].clone())
        self.register_buffer("index", torch.tensor(indices, dtype=torch.long, device=weight.device), persistent=False)
        self.tied = shared is not None

    @property
    def values(self) -> Tensor:
        """V (n, dim): this module's own, or the tied input embedding's (held once, counted once)."""
        return self._source[0].own if self._source else self.own

    def extra_repr(self) -> str:
        return f"tokens={len(self.indices)}" + (", tied" if self.tied else "")


class TokenLayer(AdapterLayer):
    """An embedding (or a linear output layer tied to it) whose rows ``indices`` an adapter replaces."""

    method = "lora"

    def forward(self, x, *args, **kwargs):
        if self.rows is not None:
            raise InputError(
                "a mixed-adapter batch (adapter_names=) does not take adapters with "
                "trainable_token_indices; run those adapters one at a time."
            )
        y = self.base(x, *args, **kwargs)
        for tokens in self.active_adapters():
            y = self._replace(x, y, tokens)
        return y

    def _replace(self, x: Tensor, y: Tensor, tokens: TrainableTokens) -> Tensor:
        base = self.innermost()
        values, index = tokens.values, tokens.index.to(y.device)
        if isinstance(base, nn.Embedding):  # ids (...) -> (..., dim): rows T from V
            slot = torch.full((base.num_embeddings,), -1, dtype=torch.long, device=y.device)
            slot[index] = torch.arange(index.numel(), device=y.device)
            where = slot[x]  # (...)
            rows = F.embedding(where.clamp_min(0), values).to(y.dtype)  # (..., dim)
            scale = getattr(base, "embed_scale", None)  # scaled embeddings (Gemma) scale V too
            if scale is not None:
                rows = rows * torch.as_tensor(scale).to(rows)
            return torch.where((where >= 0).unsqueeze(-1), rows, y)
        # a tied output layer: x (..., dim) -> logits (..., num), columns T from V
        cols = x.to(values.dtype) @ values.t()  # (..., n)
        if getattr(base, "bias", None) is not None:
            cols = cols + base.bias[index]
        return y.index_copy(-1, index, cols.to(y.dtype))

    def merged(self) -> nn.Module:
        """The base with each active adapter's rows written into its weight."""
        base = self.innermost()
        with torch.no_grad():
            for tokens in self.active_adapters():
                base.weight[tokens.index.to(base.weight.device)] = tokens.values.to(base.weight)
        return base


def _targets(model: nn.Module, config) -> dict[str, tuple[int, ...]]:
    """{module name: ids}: a list means the input embedding."""
    from ...anatomy import logical_modules
    from ...targets import matches

    spec = config.trainable_token_indices
    names = {id(m): n for n, m in logical_modules(model) if n}
    if isinstance(spec[0], tuple):
        out = {}
        for suffix, ids in spec:
            found = [n for n in names.values() if matches(n, (suffix,))]
            if len(found) != 1:
                raise TargetError(
                    f"trainable_token_indices names {suffix!r}, which matches "
                    f"{len(found)} modules ({found[:4]}); name one embedding."
                )
            out[found[0]] = ids
        return out
    emb = unwrapped(input_embedding(model))
    if emb is None or id(emb) not in names:
        raise TargetError(
            "trainable_token_indices as a list needs the model's input embedding "
            "(get_input_embeddings); give {module name: ids} instead."
        )
    return {names[id(emb)]: spec}


def _tied_outputs(model: nn.Module, embedding: str) -> list[str]:
    """Modules sharing the input embedding's weight, when the model says its embeddings are tied."""
    from ... import anatomy

    if not getattr(getattr(model, "config", None), "tie_word_embeddings", False):
        return []
    module = model.get_submodule(embedding)
    inner = unwrapped(module)
    return anatomy.tied_with(inner, embedding, anatomy.tied_parameters(model))


def attach_tokens(model: nn.Module, config, name: str) -> None:
    """Wrap the embeddings ``config.trainable_token_indices`` names (attach's after-step)."""
    from ...inject import _wrap

    if config.trainable_token_indices is None:
        return
    targets = _targets(model, config)
    emb_inner = unwrapped(input_embedding(model))
    made: dict[str, TrainableTokens] = {}
    for module_name, ids in targets.items():
        module = model.get_submodule(module_name)
        inner = unwrapped(module)
        if isinstance(module, AdapterLayer) and not isinstance(module, TokenLayer):
            raise UnsupportedModuleError(
                f"trainable_token_indices: {module_name!r} is already adapted "
                f"({type(module).__name__}); leave it out of targets / train_modules."
            )
        if not isinstance(inner, (nn.Embedding, nn.Linear)):
            raise UnsupportedModuleError(
                f"trainable_token_indices: {module_name!r} is a {type(inner).__name__}, not an Embedding or Linear."
            )
        num = inner.weight.shape[0]
        if max(ids) >= num:
            raise ConfigError(
                f"trainable_token_indices for {module_name!r}: id {max(ids)} is out of range "
                f"(the layer has {num} rows)."
            )
        if module_name in made:
            continue
        shared = None
        if inner is not emb_inner and emb_inner is not None:
            for other, tokens in made.items():
                if module_name in _tied_outputs(model, other) and tokens.indices == ids:
                    shared = tokens
        layer = _wrap(model, module_name, TokenLayer)
        made[module_name] = TrainableTokens(inner.weight, ids, config, shared)
        layer.add(name, made[module_name])
        if inner is emb_inner:
            for tied in _tied_outputs(model, module_name):
                if tied not in targets and tied not in made:
                    tied_layer = _wrap(model, tied, TokenLayer)
                    made[tied] = TrainableTokens(inner.weight, ids, config, made[module_name])
                    tied_layer.add(name, made[tied])


def tokens_to_file(model: nn.Module, name: str) -> dict[str, Tensor]:
    """{PEFT key: V} of adapter ``name``'s token rows (tied copies are not saved)."""
    from ...io.state import logical_name

    out = {}
    for layer_name, layer in model.named_modules():
        if isinstance(layer, TokenLayer) and name in layer.adapters and not layer.adapters[name].tied:
            out[f"{PEFT_PREFIX}{logical_name(model, layer_name)}.{_KEY}"] = layer.adapters[name].values
    return out

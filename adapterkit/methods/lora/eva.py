"""EVA: LoRA's A from the principal directions of each layer's inputs (``init="eva"``).

Explained Variance Adaptation (Paischer et al. 2024, arXiv:2410.07170). For each adapted layer,
the inputs x (the non-padding, non-ignored token positions) of a few batches feed an incremental
PCA (truncated randomized SVD, seed 42); once the top components stop turning (cosine similarity
with the previous batch's >= tau), A = the top right-singular vectors V_k^T (k, in), B = 0.
Ranks are redistributed across layers: the sum of the configs' ranks goes to the components with
the largest explained-variance ratios, at most round(rho * rank) per layer (a layer may get 0 and
is then left unadapted); with ``adjust_scaling`` alpha follows the rank so the scale stays. Layers
that see the same inputs (q / k / v) share one PCA.

This follows PEFT's ``initialize_lora_eva_weights`` (``peft/tuners/lora/eva.py``, its
``IncrementalPCA``) step by step, so the same model, data and config give the same A and ranks.
The new ranks and alphas go into the config's ``rank_pattern`` / ``alpha_pattern`` (full module
names) and ``targets``, which is what the files record, as PEFT's. One difference: with ``whiten``,
PEFT divides the shared PCA's components in place once per layer that uses them, so of layers
sharing inputs (q / k / v) the second and third get them divided again; here each layer gets
V_k^T / sqrt(S_k) once (the paper's whitening). Without sharing both agree.
"""

from __future__ import annotations

import dataclasses
from collections import Counter, defaultdict
from itertools import cycle
from typing import Iterable, Mapping, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...errors import ConfigError, InputError


class IncrementalPCA:
    """PCA updated batch by batch (Ross et al. 2008, as scikit-learn's and PEFT's), randomized SVD."""

    def __init__(self, n_components: int, seed: int = 42, niter: int = 4):
        self.n_components, self.q, self.seed, self.niter = n_components, 2 * n_components, seed, niter
        self.components = None

    def _svd(self, x: Tensor):
        with torch.random.fork_rng():
            torch.manual_seed(self.seed)
            u, s, v = torch.svd_lowrank(x, q=self.q, niter=self.niter)
        return u, s, v.mH

    @staticmethod
    def _mean_var(x, last_mean, last_var, last_count):
        new_count = torch.tensor([x.shape[0]], device=x.device)
        count = last_count + new_count
        last_sum = (
            torch.zeros(x.shape[1], dtype=torch.float64, device=x.device)
            if last_mean is None
            else last_mean * last_count
        )
        new_sum = x.sum(dim=0, dtype=torch.float64)
        mean = (last_sum + new_sum) / count
        temp = x - new_sum / new_count
        correction = temp.sum(dim=0, dtype=torch.float64).square()
        new_unnormalized = temp.square_().sum(dim=0, dtype=torch.float64) - correction / new_count
        if last_var is None:
            return mean, new_unnormalized / count, count
        ratio = last_count.double() / new_count
        unnormalized = last_var * last_count + new_unnormalized + ratio / count * (last_sum / ratio - new_sum).square()
        return mean, unnormalized / count, count

    def partial_fit(self, x: Tensor) -> None:
        """Fold the rows of ``x`` (n, features) into the fit."""
        x = x.clone()
        first = self.components is None
        if first:
            self.mean, self.var, self.seen = None, None, torch.tensor([0], device=x.device)
        mean, var, total = self._mean_var(x, self.mean, self.var, self.seen)
        if first:
            x -= mean
        else:
            batch_mean = x.mean(dim=0)
            x -= batch_mean
            factor = torch.sqrt((self.seen.double() / total) * x.shape[0])
            x = torch.vstack((self.singular_values.view(-1, 1) * self.components, x, factor * (self.mean - batch_mean)))
        _, s, vt = self._svd(x)
        rows = torch.argmax(vt.abs(), dim=1)  # deterministic signs (svd_flip on V)
        vt *= torch.sign(vt[range(vt.shape[0]), rows]).view(-1, 1)
        self.seen, self.mean, self.var = total, mean, var
        self.components = vt[: self.n_components]
        self.singular_values = s[: self.n_components]
        self.explained_variance_ratio = (s**2 / torch.sum(var * total))[: self.n_components]


class _Recorder:
    """A forward hook on one adapted layer: the rows of its input that the batch's mask keeps."""

    def __init__(self):
        self.positions: Optional[Tensor] = None  # (m, 2) (batch, position) indices, set per batch
        self.seen: list = []
        self.pca: Optional[IncrementalPCA] = None
        self.converged: Optional[Tensor] = None
        self.tau = 1.0

    def rows(self, inputs) -> Tensor:
        x = inputs[0] if isinstance(inputs, (tuple, list)) else inputs
        return x[self.positions.T.unbind()]  # (m, in)

    @torch.no_grad()
    def __call__(self, module, inputs, output) -> None:
        states = self.rows(inputs)
        if self.pca is None:  # the first pass: which layers see the same inputs
            self.seen.append(hash(tuple(states.cpu().view(-1).tolist())))
            return
        previous = None if self.pca.components is None else self.pca.components.clone()
        if states.shape[0] < self.pca.n_components:
            return
        self.pca.partial_fit(states.to(torch.float32))
        if previous is not None:
            self.converged = F.cosine_similarity(self.pca.components, previous) >= self.tau


def _positions(batch: Mapping, use_label_mask: bool, label_mask_value: int) -> Tensor:
    if not isinstance(batch, Mapping) or "input_ids" not in batch:
        raise InputError(
            "init_eva takes batches as dicts of model inputs with 'input_ids' (and optionally "
            "'attention_mask', 'labels')."
        )
    mask = batch.get("attention_mask", torch.ones_like(batch["input_ids"])).bool()
    if use_label_mask and "labels" in batch:
        mask = mask & (batch["labels"] != label_mask_value)
    return mask.nonzero()


def _distribute(recorders, layer_map, same, budget, max_components) -> dict[str, int]:
    variances = {k: r.pca.explained_variance_ratio[: max_components[k]] for k, r in recorders.items()}
    keys, values = zip(*[(k, c) for k, name in layer_map.items() for c in variances[name]])
    order = torch.stack(values).argsort(descending=True)
    counts = Counter([keys[i] for i in order[:budget]])
    counts = {k: counts.get(k, 0) for k in layer_map}
    for k, k_hook in same.items():
        if counts[k_hook] < counts[k]:
            counts[k_hook], counts[k] = counts[k], counts[k_hook]
    return counts


def _lora_layers(model: nn.Module, name: str) -> dict[str, nn.Module]:
    from .layers import LoRALayer

    from ...io.state import logical_name

    found = {}
    for layer_name, layer in model.named_modules():
        if (
            isinstance(layer, LoRALayer)
            and name in layer.adapters
            and layer.adapters[name].kind != "embedding"
            and layer.adapters[name].kind != "conv2d"
        ):
            found[logical_name(model, layer_name)] = layer
    return found


@torch.no_grad()
def eva_components(
    model: nn.Module,
    batches: Iterable[Mapping],
    name: str = "default",
    rho: float = 2.0,
    tau: float = 0.99,
    whiten: bool = False,
    use_label_mask: bool = True,
    label_mask_value: int = -100,
) -> dict[str, Tensor]:
    """{module name: A (k, in)} of adapter ``name``'s layers, k the redistributed rank (PEFT's
    ``get_eva_state_dict``); the model runs with its adapters disabled, in eval mode."""
    from ...inject import disabled

    if not rho >= 1.0 or not 0.0 <= tau <= 1.0:
        raise ConfigError(f"init_eva: rho must be >= 1 and tau in [0, 1]; got rho={rho!r}, tau={tau!r}.")
    layers = _lora_layers(model, name)
    if not layers:
        raise ConfigError(f"init_eva: adapter {name!r} has no Linear / Conv1D layer to initialise.")
    if len(batches) == 0:
        raise InputError("init_eva: the batches are empty; give at least one batch of model inputs.")
    recorders = {n: _Recorder() for n in layers}
    max_components = {n: round(layer.adapters[name].rank * rho) for n, layer in layers.items()}
    budget = sum(layer.adapters[name].rank for layer in layers.values())
    handles = {n: layers[n].register_forward_hook(r) for n, r in recorders.items()}
    training = model.training
    model.eval()
    try:
        with disabled(model):
            first = next(iter(batches))
            for r in recorders.values():
                r.positions = _positions(first, use_label_mask, label_mask_value)
            model(**first)
            groups = defaultdict(list)
            for n, r in recorders.items():
                groups[r.seen[0]].append(n)
            same = {other: names[0] for names in groups.values() if len(names) > 1 for other in names[1:]}
            for names in groups.values():
                top = max(max_components[n] for n in names)
                for n in names:
                    max_components[n] = top
            for n in list(recorders):
                handles.pop(n).remove()
                if n in same:
                    del recorders[n]
                    continue
                r = recorders[n]
                r.pca, r.tau = IncrementalPCA(max_components[n]), tau
                r.converged = torch.zeros(max_components[n], dtype=torch.bool)
                handles[n] = layers[n].register_forward_hook(r)
            ranks = _fit(
                model,
                batches,
                layers,
                recorders,
                handles,
                same,
                budget,
                max_components,
                use_label_mask,
                label_mask_value,
            )
    finally:
        for handle in handles.values():
            if handle is not None:
                handle.remove()
        model.train(training)
    out = {}
    layer_map = {**{n: n for n in recorders}, **same}
    for n, rank in ranks.items():
        pca = recorders[layer_map[n]].pca
        u = pca.components[:rank]
        if whiten:
            u = u / pca.singular_values[:rank].sqrt().reshape(-1, 1)
        out[n] = u
    return out


def _fit(model, batches, layers, recorders, handles, same, budget, max_components, use_label_mask, mask_value):
    """Feed batches (cycling) until every layer's top components for its rank have converged."""
    converged = {n: False for n in recorders}
    ranks = dict(max_components)
    layer_map = {**{n: n for n in recorders}, **same}
    for batch in cycle(batches):
        positions = _positions(batch, use_label_mask, mask_value)
        for n, r in recorders.items():
            done = bool(torch.all(r.converged[: ranks[n]]))
            if not converged[n] and done and handles[n] is not None:
                handles[n].remove()
                handles[n], converged[n] = None, True
                continue
            if converged[n] and not done:
                handles[n], converged[n] = layers[n].register_forward_hook(r), False
            r.positions = positions
        if all(converged.values()):
            return ranks
        model(**batch)
        if all(r.pca.components is not None for r in recorders.values()):
            ranks = _distribute(recorders, layer_map, same, budget, max_components)
    return ranks  # pragma: no cover (cycle never ends)


@torch.no_grad()
def init_eva(
    model: nn.Module,
    batches: Iterable[Mapping],
    name: str = "default",
    rho: float = 2.0,
    tau: float = 0.99,
    whiten: bool = False,
    adjust_scaling: bool = True,
    use_label_mask: bool = True,
    label_mask_value: int = -100,
) -> nn.Module:
    """Set adapter ``name``'s A from data (EVA); returns ``model``. ``name`` must be attached with
    ``init="eva"``. ``batches``: a sized iterable of dicts of model inputs (a DataLoader).

    A layer whose rank changes gets new A / B (B zero); one given rank 0 loses the adapter; the
    config's ``rank_pattern`` / ``alpha_pattern`` / ``targets`` then say where the ranks went.
    """
    from ...inject import adapter_config, check_model
    from ...transaction import unchanged_on_error
    from .layers import LoRA

    check_model(model, "init_eva")
    config = adapter_config(model, name)
    if getattr(config, "init", None) != "eva":
        raise ConfigError(
            f"init_eva: adapter {name!r} was attached with init={getattr(config, 'init', None)!r}; "
            f"attach it with LoRAConfig(init='eva')."
        )
    found = eva_components(model, batches, name, rho, tau, whiten, use_label_mask, label_mask_value)
    layers = _lora_layers(model, name)
    rank_pattern, alpha_pattern, kept = {}, {}, []
    with unchanged_on_error(model):
        for module_name, layer in layers.items():
            lora = layer.adapters[name]
            a = found[module_name]
            rank, alpha = a.shape[0], lora.alpha
            if rank == 0:
                _drop(model, module_name, layer, name)
                continue
            if rank != lora.rank:
                alpha = alpha * rank / lora.rank if adjust_scaling else alpha
                trainable = lora.a.requires_grad
                lora = LoRA(layer.innermost(), lora.config, rank=rank, alpha=alpha).requires_grad_(trainable)
                layer.add(name, lora)
            lora.a.copy_(a.to(lora.a))
            kept.append(module_name)
            if rank != config.rank:
                rank_pattern[module_name] = rank
            if alpha != config.alpha:
                alpha_pattern[module_name] = alpha
        targets = tuple(kept) + tuple(n for n in _other_targets(model, name) if n not in kept)
        new = dataclasses.replace(
            config, targets=targets, layers=None, exclude=(), rank_pattern=rank_pattern, alpha_pattern=alpha_pattern
        )
        for _, layer in _all_layers(model, name):
            layer.adapters[name].config = new
    return model


def _other_targets(model, name):
    """Adapted layers EVA leaves alone (embeddings, Conv2d): they stay targets."""
    from .layers import LoRALayer
    from ...io.state import logical_name

    return [
        logical_name(model, n)
        for n, layer in model.named_modules()
        if isinstance(layer, LoRALayer)
        and name in layer.adapters
        and layer.adapters[name].kind in ("embedding", "conv2d")
    ]


def _all_layers(model, name):
    from ...layer import AdapterLayer

    return [
        (n, m)
        for n, m in model.named_modules()
        if isinstance(m, AdapterLayer) and name in m.adapters and hasattr(m.adapters[name], "config")
    ]


def _drop(model, module_name, layer, name) -> None:
    from ...targets import get_parent

    layer.remove(name)
    if not layer.adapters:
        parent, attr = get_parent(model, module_name)
        setattr(parent, attr, layer.base)

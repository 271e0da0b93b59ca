"""LoRA on parameters (PEFT's ``target_parameters``): fused mixture-of-experts weights.

transformers 5 stores a mixture of experts' weights as 3-D parameters of one module (Mixtral,
Qwen2-MoE, Qwen3-MoE: ``experts.gate_up_proj`` (E, 2I, H), ``experts.down_proj`` (E, H, I)),
not as Linear layers. LoRA (Hu et al. 2021, arXiv:2106.09685) goes onto each expert's matrix:

    W'_e = W_e + scale * B_e @ A_e        A_e (rank, in), B_e (out, rank), e = 0 .. E-1

and the owner module runs as it is, with W' in place of W (``torch.func.functional_call``: the
module is wrapped, its class and its parameters stay untouched). A 2-D parameter (out, in), e.g.
a router's ``gate.weight``, is one expert. The weight layout is the module's: (E, out, in), or
(E, in, out) when the module says ``is_transposed`` (then W'_e = W_e + scale * (B_e A_e)^T).

Tensors, as PEFT's ``ParamWrapper`` keeps them (its file layout): A (rank * E, in) with expert
e's rows at [e * rank, (e + 1) * rank); B (out, rank * E) with expert e's columns at e, e + E,
e + 2E, ... (PEFT reshapes B to (out, rank, E)). A parameter may have a rank and alpha of its
own (``rank_pattern`` / ``alpha_pattern``, matched against ``module.parameter`` as PEFT does). Several parameters of one module are nested
wrappers in PEFT, the parameter registered last outermost: its keys are ``M.lora_A.weight``, the
one before ``M.base_layer.lora_A.weight``, and so on. Init as PEFT: A Kaiming-uniform
(a = sqrt(5), fan-in ``in``) or normal (std 1 / rank), B zero. No dropout (PEFT refuses it
there: dropout acts on a layer's input, and here the update is folded into the weight).
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor, nn

from ...errors import InputError, TargetError, UnsupportedModuleError, close_matches
from ...layer import AdapterLayer
from ...registry import PEFT_PREFIX
from ...anatomy import logical_modules
from ...targets import matches
from .config import LoRAConfig
from .layers import _init_pair


@dataclasses.dataclass(frozen=True)
class ParamTargets:
    """Where LoRA goes on one module: the names of its targeted parameters, in registration order."""

    owner: str
    names: tuple[str, ...]

    @property
    def layer(self) -> type:
        return ParamLoRALayer


def owners(model: nn.Module, config: LoRAConfig, modules: list[str]) -> dict[str, ParamTargets]:
    """{module name: ParamTargets} for the parameters ``config.target_parameters`` names (suffixes
    of ``module.parameter`` names, as PEFT matches them); ``modules``: the config's module targets."""
    targets = config.target_parameters
    if not targets:
        return {}
    found: dict[str, list[str]] = {}
    keys = []
    for owner, module in logical_modules(model):
        for pname, param in module.named_parameters(recurse=False):
            key = f"{owner}.{pname}" if owner else pname
            keys.append(key)
            if matches(key, targets):
                _check_param(model, owner, key, param, modules)
                found.setdefault(owner, []).append(pname)
    for target in targets:
        if not any(matches(f"{o}.{p}", (target,)) for o, names in found.items() for p in names):
            _no_match(model, target, keys)
    return {owner: ParamTargets(owner, tuple(names)) for owner, names in found.items()}


def _check_param(model: nn.Module, owner: str, key: str, param: Tensor, modules: list[str]) -> None:
    if not owner:
        raise TargetError(
            f"target_parameters: {key!r} belongs to the model itself; LoRA on a parameter wraps "
            "the module that holds it, so the parameter must belong to a sub-module."
        )
    if param.ndim not in (2, 3) or not param.is_floating_point():
        raise UnsupportedModuleError(
            f"target_parameters: {key!r} is a {param.ndim}-D {param.dtype} tensor {tuple(param.shape)}; LoRA on "
            "parameters takes 2-D (out, in) or 3-D fused-expert (experts, out, in) float weights (as PEFT)."
        )
    if owner in modules:
        raise TargetError(
            f"{owner!r} is both a module target (targets) and the owner of target_parameters entry "
            f"{key!r}; adapt it one way: exclude it from targets, or drop the parameter."
        )
    held = model.get_submodule(owner)
    if isinstance(held, AdapterLayer) and not isinstance(held, ParamLoRALayer):
        raise UnsupportedModuleError(
            f"target_parameters: {owner!r} already holds a {held.method} adapter on the module itself; LoRA on "
            f"its parameter {key!r} would not reach the weight that adapter reads. Use targets for it instead."
        )


def _no_match(model: nn.Module, target: str, keys: list[str]) -> None:
    modules = {n for n, _ in logical_modules(model) if n}
    if any(matches(n, (target,)) for n in modules):
        inside = sorted({k.rsplit(".", 1)[-1] for k in keys if matches(k.rsplit(".", 1)[0], (target,))})
        raise TargetError(
            f"target_parameters entry {target!r} names a module, not a parameter; name its "
            f"parameters, e.g. {', '.join(f'{target}.{p}' for p in inside[:3]) or '(it has none)'}."
        )
    tails = {".".join(k.split(".")[-2:]) for k in keys}
    raise TargetError(
        f"target_parameters entry {target!r} matches no parameter{close_matches(target, tails)}; "
        "entries are parameter names or their suffixes, e.g. 'experts.gate_up_proj'."
    )


def layout(base: nn.Module, name: str) -> tuple[int, int, int, bool]:
    """(experts E, in, out, stored as (E, in, out)) of parameter ``name`` of ``base``, as PEFT reads it."""
    shape = getattr(base, name).shape
    if len(shape) == 2:
        return 1, shape[1], shape[0], False
    transposed = bool(getattr(base, "is_transposed", False))
    experts, first, second = shape
    return (experts, first, second, True) if transposed else (experts, second, first, False)


class ParamLoRA(nn.Module):
    """One adapter's factors for the targeted parameters of one module: ``a[p]`` (rank * E, in),
    ``b[p]`` (out, rank * E) per parameter name p."""

    def __init__(self, base: nn.Module, targets: ParamTargets, config: LoRAConfig):
        super().__init__()
        self.config, self.names = config, targets.names
        self.a, self.b = nn.ParameterDict(), nn.ParameterDict()
        self.ranks, self.scales = {}, {}  # per parameter (rank_pattern / alpha_pattern)
        for name in self.names:
            rank, self.scales[name] = config.parameter_rank_and_scale(f"{targets.owner}.{name}")
            self.ranks[name] = rank
            weight = getattr(base, name)
            experts, n_in, n_out, _ = layout(base, name)
            place = dict(device=weight.device, dtype=weight.dtype)
            self.a[name] = nn.Parameter(torch.empty(rank * experts, n_in, **place))
            self.b[name] = nn.Parameter(torch.empty(n_out, rank * experts, **place))
            _init_pair(self.a[name], self.b[name], config.init, rank)
        self.layouts = {name: layout(base, name) for name in self.names}
        self.ndims = {name: getattr(base, name).ndim for name in self.names}

    def extra_repr(self) -> str:
        return ", ".join(f"{n}: rank={self.ranks[n]}, scale={self.scales[n]:g}" for n in self.names)

    def factors(self, name: str, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """(lhs, rhs) with update = scale * lhs @ rhs in the parameter's layout: (out, r) @ (r, in)
        for a 2-D parameter, (E, out, r) @ (E, r, in) or (E, in, r) @ (E, r, out) for a 3-D one."""
        experts, _, _, transposed = self.layouts[name]
        a, b = self.a[name].to(dtype), self.b[name].to(dtype)
        if self.ndims[name] == 2:
            return b, a
        a3 = a.reshape(experts, self.ranks[name], a.shape[-1])  # (E, r, in)
        b3 = b.reshape(b.shape[0], self.ranks[name], experts).permute(2, 0, 1)  # (E, out, r)
        return (a3.transpose(1, 2), b3.transpose(1, 2)) if transposed else (b3, a3)

    def added(self, name: str, weight: Tensor) -> Tensor:
        """``weight`` + scale * B A, per expert, in the parameter's layout (a new tensor)."""
        lhs, rhs = self.factors(name, weight.dtype)
        if weight.ndim == 2:
            return torch.addmm(weight, lhs, rhs, alpha=self.scales[name])
        return torch.baddbmm(weight, lhs, rhs, alpha=self.scales[name])

    @torch.no_grad()
    def delta(self, name: str, weight: Tensor) -> Tensor:
        """scale * B A in the layout of ``weight`` (for merging)."""
        return self.added(name, torch.zeros_like(weight))

    def file_tensors(self, module_name: str) -> dict[str, Tensor]:
        """PEFT's keys: the last targeted parameter's wrapper outermost, each earlier one a
        ``base_layer`` deeper."""
        out = {}
        for i, name in enumerate(self.names):
            prefix = PEFT_PREFIX + module_name + ".base_layer" * (len(self.names) - 1 - i)
            out[f"{prefix}.lora_A.weight"] = self.a[name]
            out[f"{prefix}.lora_B.weight"] = self.b[name]
        return out


class ParamLoRALayer(AdapterLayer):
    """A module whose parameters carry LoRA: it runs with W + scale * B A in place of each targeted W."""

    method = "lora"
    merges_params = True  # ak.merge folds into the module's own parameters, not a Linear weight

    def forward(self, *args, **kwargs):
        if self.rows is not None:
            raise InputError(
                "adapter_names (a mixed-adapter batch) is not supported for LoRA on parameters "
                "(target_parameters), as in PEFT; run one adapter per batch."
            )
        if self.merged_names:
            self.check_merged_forward()
        adapters = self.active_adapters()
        if not adapters:
            return self.base(*args, **kwargs)
        weights: dict[str, Tensor] = {}
        for adapter in adapters:
            for name in adapter.names:
                weights[name] = adapter.added(name, weights.get(name, getattr(self.base, name)))
        return torch.func.functional_call(self.base, weights, args, kwargs)

    @torch.no_grad()
    def merged(self) -> nn.Module:
        """The module with the active adapters' updates added to its parameters (in place)."""
        base = self.base
        for adapter in self.active_adapters():
            for name in adapter.names:
                weight = getattr(base, name)
                weight.add_(adapter.delta(name, weight).to(weight.dtype))
        return base

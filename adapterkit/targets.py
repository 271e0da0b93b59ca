"""Which modules an adapter goes into: targets, exclusions and transformer-block indices.

Names are the model's own module names. A module already wrapped by an adapter layer is seen
as the module it wraps (same name, the innermost base's type), so a second adapter can target it.
What a name means in the model (its block, the output head, the modules as the user built them)
is read by ``anatomy``; ``logical_modules`` and ``block_index`` are also importable from here.

Forms of ``targets`` (and ``exclude``):
- ``"all-linear"``: every Linear / Conv1D / quantized linear layer except the output head
  (``model.get_output_embeddings()``), as PEFT chooses them;
- a list of name suffixes: ``"q_proj"`` matches ``model.layers.0.self_attn.q_proj``;
- a string: a regular expression that must match the whole module name.

Modules saved whole with the adapter are never targets, nor anything inside them (PEFT's rule:
"adapters should never match on modules to save"): the ``train_modules`` and the task heads
PEFT's task wrapper saves as ``modules_to_save`` (``classifier`` / ``score`` for a
sequence- or token-classification model, ``qa_outputs`` for question answering: ``io/tasks.py``).
So RoBERTa's ``classifier`` (a module with ``dense`` and ``out_proj`` inside) is saved and
loaded as one module, never as LoRA layers inside a saved copy. A file loads with the heads of
its own ``task_type`` (``file_task``): a PEFT file saved without a task adapts heads like any module.
"""

from __future__ import annotations

import contextlib
import contextvars
import re
from typing import Optional, Sequence, Union

from torch import nn

from . import bases
from .anatomy import block_index, logical_modules, output_head_name
from .errors import TargetError, UnsupportedModuleError, close_matches

Spec = Union[str, Sequence[str]]


def matches(name: str, spec: Spec) -> bool:
    if isinstance(spec, str):
        return re.fullmatch(spec, name) is not None
    return any(name == s or name.endswith("." + s) for s in spec)


def resolve(
    model: nn.Module,
    targets: Spec,
    exclude: Spec = (),
    layers: Optional[Sequence[int]] = None,
    also_exclude: Sequence[str] = (),
    check_kinds: bool = True,
) -> list[str]:
    """Names of the modules to adapt; raises TargetError / UnsupportedModuleError.

    ``check_kinds``: refuse targets LoRA cannot wrap (a method with its own kinds checks them)."""
    modules = [(n, m) for n, m in logical_modules(model) if n]
    names = [n for n, _ in modules]
    if not names:
        raise TargetError(
            f"adapterkit replaces a model's sub-modules, and this {type(model).__name__} has none; "
            f"put it in a container (e.g. nn.Sequential(layer)) and target its name ('0')."
        )
    if targets == "all-linear":
        head = output_head_name(model)
        picked = [n for n, m in modules if bases.is_linear_like(m) and n != head]
        if not picked:
            raise TargetError(f"targets='all-linear' found no linear layer in {type(model).__name__}.")
    else:
        picked = [n for n in names if matches(n, targets)]
        _check_found(targets, picked, names)
        for name, module in modules:
            if check_kinds and name in picked and bases.base_kind(module) is None:
                inner = [n for n, m in modules if n.startswith(name + ".") and bases.base_kind(m)]
                hint = f" Adaptable modules inside it: {', '.join(inner[:4])}." if inner else ""
                own = [p for p, t in module.named_parameters(recurse=False) if t.ndim in (2, 3)]
                if own:  # e.g. fused mixture-of-experts weights
                    hint += (
                        f" To put LoRA on its own parameters, use target_parameters="
                        f"{[name.rsplit('.', 1)[-1] + '.' + p for p in own[:2]]}."
                    )
                raise UnsupportedModuleError(
                    f"target {name!r} is a {type(module).__name__}; LoRA adapts only "
                    f"{', '.join(bases.SUPPORTED)}.{hint}"
                )
    picked = [n for n in picked if not matches(n, exclude)]
    whole = tuple(also_exclude) + task_heads(model)
    inside = [n for n in picked if within(n, whole)]
    picked = [n for n in picked if n not in inside]
    if inside and not picked:
        raise TargetError(
            f"targets={targets!r} picks only {', '.join(inside[:4])}, inside modules saved whole with the "
            f"adapter ({', '.join(whole)}: train_modules, and the heads PEFT's task wrapper saves for this "
            f"{type(model).__name__}); a saved module is trained as a whole copy, not adapted. Target "
            "other modules, or name the head in train_modules to train it."
        )
    if layers is not None:
        wanted = set(layers)
        picked = [n for n in picked if block_index(model, n) in wanted]
        if not picked:
            found = sorted({i for i in (block_index(model, n) for n in names) if i is not None})
            raise TargetError(f"layers={list(layers)} selects no targeted module; blocks here: {found}.")
    if not picked:
        raise TargetError(f"targets={targets!r} minus exclude={exclude!r} leaves no module to adapt.")
    return picked


def within(name: str, spec: Sequence[str]) -> bool:
    """Whether module ``name`` is, or lies inside, a module whose name ``spec`` matches (suffixes)."""
    parts = name.split(".")
    return bool(spec) and any(matches(".".join(parts[:i]), tuple(spec)) for i in range(1, len(parts) + 1))


_FILE_TASK: contextvars.ContextVar = contextvars.ContextVar("file_task")


@contextlib.contextmanager
def file_task(task: Optional[str]):
    """Inside the block, heads are those of ``task`` (a file's ``task_type``, as PEFT reads it: a
    PEFT file saved without a task adapts a classifier's head like any other module)."""
    token = _FILE_TASK.set(task)
    try:
        yield
    finally:
        _FILE_TASK.reset(token)


def task_heads(model: nn.Module) -> tuple[str, ...]:
    """The head names PEFT's wrapper for this model's task saves whole (``modules_to_save``); while
    a file loads, those of the file's task (``file_task``)."""
    from .io.tasks import PEFT_HEADS, task_type

    task = _FILE_TASK.get(task_type(model))
    return PEFT_HEADS.get(task, ()) if isinstance(task, str) else ()


def _check_found(targets: Spec, picked: list[str], names: list[str]) -> None:
    suffixes = {n.rsplit(".", 1)[-1] for n in names}
    if isinstance(targets, str):
        if not picked:
            raise TargetError(
                f"target regex {targets!r} matches no module name (it must match the whole name, "
                f"e.g. {names[-1]!r}){close_matches(targets, suffixes | set(names))}."
            )
        return
    for suffix in targets:
        if not any(n == suffix or n.endswith("." + suffix) for n in picked):
            raise TargetError(
                f"target {suffix!r} matches no module{close_matches(suffix, suffixes)}. "
                f"Module names end in: {', '.join(sorted(suffixes)[:20])}."
            )


def get_parent(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    """The module holding ``name`` and the attribute it is held under."""
    parent_name, _, child = name.rpartition(".")
    return (model.get_submodule(parent_name) if parent_name else model), child

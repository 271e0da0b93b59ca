"""Which modules share a parameter (tied weights).

Tying is found structurally: two modules are tied when they hold the same ``nn.Parameter`` object
(``lm_head.weight is model.embed_tokens.weight`` in SmolLM2, GPT-2, T5...), whatever the config
says and whatever the modules are called. An adapter layer counts as the module it wraps.
"""

from __future__ import annotations

from typing import Iterable

from torch import nn

from ..layer import AdapterLayer
from .heads import output_head
from .modules import unwrapped


def tied_parameters(model: nn.Module) -> dict[int, list[str]]:
    """``id(parameter)`` -> names of the modules holding it directly, for every parameter held by
    more than one module. An adapter layer's name stands for the module it wraps."""
    holders: dict[int, list[str]] = {}
    inside: list[str] = []  # prefixes of adapter layers: their insides are seen through the layer
    for name, module in model.named_modules(remove_duplicate=False):
        if any(name.startswith(prefix) for prefix in inside):
            continue
        if isinstance(module, AdapterLayer):
            inside.append(name + ".")
            module = module.innermost()
        for param in module.parameters(recurse=False):
            holders.setdefault(id(param), []).append(name)
    return {key: names for key, names in holders.items() if len(names) > 1}


def tied_with(module: nn.Module, name: str, tied: dict[int, list[str]]) -> list[str]:
    """The other modules that share a parameter of ``module`` (known in the model as ``name``)."""
    others: dict[str, None] = {}
    for param in module.parameters(recurse=False):
        others.update(dict.fromkeys(n for n in tied.get(id(param), ()) if n != name))
    return list(others)


def untie(model: nn.Module, modules: Iterable[nn.Module]) -> None:
    """Give each of ``modules`` its own copy of the parameters it shares with other modules.

    When a model's config ties input and output embeddings (``tie_word_embeddings``) and one of
    them is untied here, the flag is set to False, so that ``save_pretrained`` / ``from_pretrained``
    (and loaders such as vLLM that read the flag) keep two matrices.
    """
    tied = tied_parameters(model)
    untied = []
    for module in modules:
        for pname, param in list(module.named_parameters(recurse=False)):
            if id(param) in tied:
                setattr(module, pname, nn.Parameter(param.detach().clone(), requires_grad=param.requires_grad))
                untied.append(module)
    get_input = getattr(model, "get_input_embeddings", None)
    embeddings = [unwrapped(get_input() if callable(get_input) else None), unwrapped(output_head(model))]
    if any(m is e for m in untied for e in embeddings):
        config = getattr(model, "config", None)
        text = config.get_text_config() if hasattr(config, "get_text_config") else None
        for cfg in (config, text):
            if getattr(cfg, "tie_word_embeddings", False):
                cfg.tie_word_embeddings = False

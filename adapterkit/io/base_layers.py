"""Base-model weights that PEFT saves next to an adapter, and what loading does with them.

PEFT's ``save_pretrained`` (``save_embedding_layers="auto"``, ``peft.utils.save_and_load``) adds
the model's own embedding weights to an adapter file in two cases:

- ``embed_tokens`` or ``lm_head`` is in ``target_modules``: the wrapped layer's weight, under
  ``base_model.model.<module>.base_layer.weight``, whether or not it changed;
- the vocabulary was resized (the model's ``vocab_size`` differs from its base's
  ``config.json``): the input and output embeddings whole, ``base_model.model.<module>.weight``.

``PeftModel.from_pretrained`` copies these into the base model. adapterkit does what is right
for each: a tensor equal to the model's weight (in the file's dtype) changes nothing and is
skipped; one of the same shape with other values (new token rows from a resize, a trained
embedding) is copied into the base layer, as PEFT does, with a warning, since ``ak.detach`` and
``ak.disabled`` then keep those values; one of another shape (a resized vocabulary) is refused
with the size to resize to. Only layers the adapter wraps (``.base_layer.``) and the model's
input / output embeddings (found with ``get_input_embeddings`` / ``get_output_embeddings``) are
read this way; any other unknown tensor is an error (``diagnose.py``).

Saving, adapterkit writes these only for a resized vocabulary (``resized_embeddings``), where the
adapter is wrong without them; an unchanged embedding is not copied into every adapter file.
"""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path

import torch
from torch import Tensor, nn

from ..errors import AdapterFileError
from ..layer import AdapterLayer
from ..registry import PEFT_PREFIX
from ..anatomy import base_module, input_embedding, output_head, unwrapped


@dataclasses.dataclass
class BaseTensor:
    """One base weight from the file: the file key, the model's module and its parameter name."""

    key: str
    module: str
    param: str
    tensor: Tensor


def _embedding_modules(model: nn.Module) -> dict[str, nn.Module]:
    """{name: original module} of the model's input and output embeddings (by identity)."""
    wanted = []
    for module in (unwrapped(input_embedding(model)), unwrapped(output_head(model))):
        if module is not None:
            wanted.append(module)
    found = {}
    for name, module in model.named_modules():
        inner = unwrapped(module)
        if any(inner is w for w in wanted) and name not in found and not _inside_layer(model, name):
            found[name] = inner
    return found


def _inside_layer(model: nn.Module, name: str) -> bool:
    parts = name.split(".")
    return any(isinstance(model.get_submodule(".".join(parts[:i])), AdapterLayer) for i in range(1, len(parts)))


def split(model: nn.Module, adapted: list[str], unexpected: dict[str, Tensor], prefix: str) -> list[BaseTensor]:
    """The base weights among ``unexpected`` file tensors (see the module docstring).

    ``adapted``: logical names of the layers the adapter wraps; ``prefix``: the method's key prefix
    for whole modules (``base_model.model.`` for LoRA, ``base_model.`` for prompt methods)."""
    places = [(f"{PEFT_PREFIX}{m}.base_layer.", m, base_module(model, m)) for m in adapted]
    places += [(f"{prefix}{m}.", m, inner) for m, inner in _embedding_modules(model).items() if m not in adapted]
    found = []
    for key, tensor in unexpected.items():
        for start, module, inner in places:
            rest = key[len(start) :]
            if key.startswith(start) and rest in dict(inner.named_parameters()):
                found.append(BaseTensor(key, module, rest, tensor))
                break
    return found


def resized_embeddings(model: nn.Module, adapted: list[str], trained: list[str], prefix: str) -> dict[str, Tensor]:
    """What PEFT's ``save_embedding_layers="auto"`` adds for a resized vocabulary: the input and output
    embeddings whole, when their rows differ from ``vocab_size`` in the base's ``config.json``
    (read only where the base was a local folder, an alias's included: no hub look-up). Without
    them the adapter would meet freshly drawn rows for the new tokens wherever it is loaded."""
    base_vocab = _base_vocab_size(model)
    out = {}
    for name, inner in _embedding_modules(model).items():
        weight = getattr(inner, "weight", None)
        if base_vocab is None or weight is None or weight.shape[0] == base_vocab or name in trained:
            continue
        out[f"{PEFT_PREFIX}{name}.base_layer.weight" if name in adapted else f"{prefix}{name}.weight"] = weight
    return out


def _base_vocab_size(model: nn.Module):
    import json

    name = getattr(getattr(model, "config", None), "name_or_path", None)
    file = Path(name) / "config.json" if name else None
    if file is None or not file.is_file():
        return None
    try:
        size = json.loads(file.read_text(encoding="utf-8")).get("vocab_size")
    except (OSError, ValueError):
        return None
    return size if isinstance(size, int) else None


def _live(model: nn.Module, item: BaseTensor) -> Tensor:
    return dict(base_module(model, item.module).named_parameters())[item.param]


def check(model: nn.Module, found: list[BaseTensor], folder: Path) -> list[BaseTensor]:
    """The base weights whose values differ from the model's (to copy); refuses other shapes."""
    from .read import WEIGHTS_NAME

    differ = []
    for item in found:
        live = _live(model, item)
        if tuple(item.tensor.shape) != tuple(live.shape):
            raise AdapterFileError(_shape_message(item, tuple(live.shape), folder / WEIGHTS_NAME))
        if not torch.equal(live.detach().to("cpu", item.tensor.dtype), item.tensor):
            differ.append(item)
    return differ


def _shape_message(item: BaseTensor, live: tuple, file: Path) -> str:
    shape = tuple(item.tensor.shape)
    head = (
        f"{str(file)!r} holds the base weight {item.key!r} with shape {shape}, but this model's "
        f"{item.module}.{item.param} is {live}."
    )
    if len(shape) == 2 and len(live) == 2 and shape[1] == live[1]:
        return (
            f"{head} PEFT saves it when the vocabulary was resized: load the tokenizer the adapter was "
            f"trained with and call model.resize_token_embeddings({shape[0]}) before loading the adapter."
        )
    return f"{head} The file was saved from another model (compare its base_model_name_or_path)."


@torch.no_grad()
def apply(model: nn.Module, differ: list[BaseTensor], folder: Path) -> None:
    """Copy the differing base weights into the model's base layers, and say so."""
    if not differ:
        return
    worst = max(float((_live(model, i).detach().cpu().float() - i.tensor.float()).abs().max()) for i in differ)
    for item in differ:
        _live(model, item).copy_(item.tensor)
    names = ", ".join(sorted({f"{i.module}.{i.param}" for i in differ}))
    warnings.warn(
        f"load_adapter: {str(folder)!r} holds base weights for {names} that differ from this model's "
        f"(largest difference {worst:.3g}); PEFT saves them when those layers were resized or trained. "
        f"They were copied into the model's base layers, as PEFT does: ak.disabled and ak.detach keep "
        f"these values. Load a fresh base model to get the original weights back.",
        UserWarning,
        stacklevel=3,
    )

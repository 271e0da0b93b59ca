"""A model's heads: the output head that maps hidden states to the vocabulary, and classification heads.

- The output head is what ``model.get_output_embeddings()`` returns (transformers' own answer:
  ``lm_head`` in causal and seq2seq LMs), None for a model without one; the input embedding,
  likewise, is ``model.get_input_embeddings()``.
- A classification head is a module named as transformers names them in sequence- and
  token-classification models (``classifier``, ``score``); the one that ``replace_head`` swaps by
  default is the last ``nn.Linear`` with ``config.num_labels`` outputs.

Which heads PEFT's task wrapper saves whole (``modules_to_save``) is a file-format rule and lives
with the task types in ``io/tasks.py``.
"""

from __future__ import annotations

from typing import Optional

from torch import nn

from ..layer import AdapterLayer

CLASSIFIER_NAMES = ("classifier", "score")


def _ask(model: nn.Module, getter: str) -> Optional[nn.Module]:
    get = getattr(model, getter, None)
    try:
        found = get() if callable(get) else None
    except (NotImplementedError, AttributeError):  # PreTrainedModel's default for models without one
        return None
    return found if isinstance(found, nn.Module) else None


def output_head(model: nn.Module) -> Optional[nn.Module]:
    """``model.get_output_embeddings()`` as the model holds it now (an adapter layer if one wraps
    it), or None when the model has none."""
    return _ask(model, "get_output_embeddings")


def input_embedding(model: nn.Module) -> Optional[nn.Module]:
    """``model.get_input_embeddings()`` as the model holds it now (an adapter layer if one wraps
    it), or None when the model has none."""
    return _ask(model, "get_input_embeddings")


def output_head_name(model: nn.Module) -> Optional[str]:
    """The name of the output head in ``model`` (through an adapter layer wrapping it), or None."""
    head = output_head(model)
    if head is None:
        return None
    for name, module in model.named_modules():
        if module is head or (isinstance(module, AdapterLayer) and module.innermost() is head):
            return name
    return None


def classifier_heads(model: nn.Module) -> tuple[str, ...]:
    """The ``CLASSIFIER_NAMES`` that name a module of ``model`` (its last name component)."""
    names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    return tuple(h for h in CLASSIFIER_NAMES if h in names)


def head_names(model: nn.Module) -> tuple[str, ...]:
    """Name suffixes of the model's heads: its classification heads, then its output head."""
    out = output_head_name(model)
    return classifier_heads(model) + ((out,) if out else ())


def label_head(model: nn.Module, num_labels: Optional[int]) -> Optional[str]:
    """The last ``nn.Linear`` with ``num_labels`` outputs (any Linear when None), or None: the head
    whose outputs are the labels (``classifier``, ``score``, ``out_proj``)."""
    found = [
        n
        for n, m in model.named_modules()
        if isinstance(m, nn.Linear) and (num_labels is None or m.out_features == num_labels)
    ]
    return found[-1] if found else None

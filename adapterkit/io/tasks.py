"""PEFT's ``task_type`` and the transformers model classes it stands for.

``PeftModel.from_pretrained`` picks its wrapper class by the file's ``task_type``; the wrong one
silently breaks an adapter (a ``PeftModel`` without a task ignores prompt-tuning virtual tokens
on a bare ``BertModel``), so adapterkit writes the task of the model it saved from:

==================  ======================================  =============================
task_type           transformers class (Auto class)         heads PEFT always saves
==================  ======================================  =============================
CAUSAL_LM           *ForCausalLM, *LMHeadModel              -
SEQ_2_SEQ_LM        encoder-decoder *ForConditionalGeneration, *MTModel  -
SEQ_CLS             *ForSequenceClassification              classifier, score
TOKEN_CLS           *ForTokenClassification                 classifier, score
QUESTION_ANS        *ForQuestionAnswering                   qa_outputs
FEATURE_EXTRACTION  a bare model (BertModel, LlamaModel)    -
==================  ======================================  =============================

A class is placed by transformers' own tables of Auto classes (its class or a parent class
listed there), else by its name's ending, else FEATURE_EXTRACTION when the model is its own
``base_model`` (no head). Other models (masked LM, vision, plain ``nn.Module``) get ``null``.

PEFT's classification wrappers wrap every module whose name ends with one of their head names
and then require its tensors in the file (``KeyError`` otherwise), so ``save_adapter`` saves the
weights of such heads even when the adapter did not train them (``heads_to_save``).
"""

from __future__ import annotations

import sys
from typing import Optional

from torch import nn

from ..anatomy import output_head

TASK_TYPES = ("CAUSAL_LM", "SEQ_2_SEQ_LM", "SEQ_CLS", "TOKEN_CLS", "QUESTION_ANS", "FEATURE_EXTRACTION")
AUTO_CLASS = {
    "CAUSAL_LM": "AutoModelForCausalLM",
    "SEQ_2_SEQ_LM": "AutoModelForSeq2SeqLM",
    "SEQ_CLS": "AutoModelForSequenceClassification",
    "TOKEN_CLS": "AutoModelForTokenClassification",
    "QUESTION_ANS": "AutoModelForQuestionAnswering",
    "FEATURE_EXTRACTION": "AutoModel",
}
WHAT = {
    "CAUSAL_LM": "a causal language model",
    "SEQ_2_SEQ_LM": "an encoder-decoder (seq2seq) model",
    "SEQ_CLS": "a model with a sequence-classification head",
    "TOKEN_CLS": "a model with a token-classification head",
    "QUESTION_ANS": "a model with a question-answering head",
    "FEATURE_EXTRACTION": "a bare model without a head",
}
# PeftModelForSequenceClassification / ...TokenClassification / ...QuestionAnswering (peft_model.py)
PEFT_HEADS = {"SEQ_CLS": ("classifier", "score"), "TOKEN_CLS": ("classifier", "score"), "QUESTION_ANS": ("qa_outputs",)}
_TABLES = {
    "CAUSAL_LM": "MODEL_FOR_CAUSAL_LM_MAPPING_NAMES",
    "SEQ_2_SEQ_LM": "MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES",
    "SEQ_CLS": "MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES",
    "TOKEN_CLS": "MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING_NAMES",
    "QUESTION_ANS": "MODEL_FOR_QUESTION_ANSWERING_MAPPING_NAMES",
    "FEATURE_EXTRACTION": "MODEL_MAPPING_NAMES",
}
_ENDINGS = (
    ("ForCausalLM", "CAUSAL_LM"),
    ("LMHeadModel", "CAUSAL_LM"),
    ("ForSequenceClassification", "SEQ_CLS"),
    ("ForTokenClassification", "TOKEN_CLS"),
    ("ForQuestionAnswering", "QUESTION_ANS"),
)


def _table_names(task: str) -> set[str]:
    from transformers.models.auto import modeling_auto

    names: set[str] = set()
    for value in getattr(modeling_auto, _TABLES[task], {}).values():
        names.update([value] if isinstance(value, str) else value)
    return names


def _pretrained(model: nn.Module) -> bool:
    transformers = sys.modules.get("transformers")
    return transformers is not None and isinstance(model, transformers.PreTrainedModel)


def task_type(model: nn.Module) -> Optional[str]:
    """PEFT's ``task_type`` for ``model`` (see the module docstring), or None."""
    if not _pretrained(model):
        return None
    classes = [c.__name__ for c in type(model).__mro__]
    for task in TASK_TYPES:
        if any(name in _table_names(task) for name in classes):
            return task
    name = classes[0]
    for ending, task in _ENDINGS:
        if name.endswith(ending):
            return task
    if getattr(model.config, "is_encoder_decoder", False) and output_head(model) is not None:
        return "SEQ_2_SEQ_LM"
    return "FEATURE_EXTRACTION" if model.base_model is model else None


def auto_class(task: str):
    """The transformers Auto class that loads a model for PEFT task ``task``."""
    import transformers

    return getattr(transformers, AUTO_CLASS[task])


def heads_to_save(model: nn.Module, task: Optional[str], trained: tuple[str, ...]) -> dict[str, nn.Module]:
    """{name: module} of the heads PEFT's wrapper for ``task`` will expect in the file, that the
    adapter does not already save (``trained``: its ``train_modules``). PEFT matches by
    ``name.endswith(head)`` (``peft.utils.other._set_trainable``), so this does too."""
    from ..layer import AdapterLayer
    from ..methods.trained_module import TrainedModule
    from ..targets import logical_modules, matches

    found = {}
    for name, module in logical_modules(model):
        if not name or not name.endswith(PEFT_HEADS.get(task, ())) or matches(name, trained):
            continue
        # a head another adapter trains is saved as the base has it; one a method wraps is left alone
        wrapped = any(isinstance(m, AdapterLayer) and not isinstance(m, TrainedModule) for m in _path(model, name))
        if not wrapped and any(p.is_floating_point() for p in module.parameters()):
            found[name] = module
    return found


def _path(model: nn.Module, name: str) -> list[nn.Module]:
    parts, module, out = name.split("."), model, []
    for part in parts:
        module = getattr(module, part)
        out.append(module)
    return out


def mismatch(file_task: Optional[str], model: nn.Module) -> Optional[str]:
    """A sentence on why an adapter for ``file_task`` does not fit ``model``, or None if the tasks agree."""
    mine = task_type(model)
    if file_task not in TASK_TYPES or mine is None or file_task == mine:
        return None
    return (
        f"the file's task_type is {file_task} (an adapter for {WHAT[file_task]}), but this model is a "
        f"{type(model).__name__} ({mine}: {WHAT[mine]}). Load the base with transformers' "
        f"{AUTO_CLASS[file_task]}.from_pretrained(...) (with num_labels as trained, for a classifier) "
        f"and load the adapter into that model"
    )

"""The sections of a train config; each a frozen dataclass checked in ``__post_init__``.

Types are checked (and YAML strings like ``1e-4`` read as numbers) by ``config.build_section``;
here each section checks choices and ranges.
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Union

from ..errors import ConfigError, close_matches


def _choice(section: str, name: str, value, choices: tuple) -> None:
    if value not in choices:
        raise ConfigError(
            f"{section}.{name} must be one of {', '.join(map(repr, choices))}; got {value!r}"
            f"{close_matches(str(value), map(str, choices))}."
        )


def _at_least(section: str, name: str, value, low, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < low:
        raise ConfigError(f"{section}.{name} must be a number >= {low}; got {value!r}.")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """name: an alias (smollm2-135m, minilm-l6), a local transformers folder, or a hub name.
    task: causal-lm, classification or seq2seq (encoder-decoder, AutoModelForSeq2SeqLM; default:
    from data.format or the alias, else causal-lm).
    num_labels: classes of a classification head (default: from the data).
    dtype: the weights' dtype. gradient_checkpointing: recompute activations in backward."""

    name: str = ""
    task: Optional[str] = None
    num_labels: Optional[int] = None
    dtype: str = "float32"
    gradient_checkpointing: bool = False

    def __post_init__(self):
        if not self.name:
            raise ConfigError("model.name is missing; give an alias (smollm2-135m, minilm-l6) or a folder.")
        if self.task is not None:
            _choice("model", "task", self.task, ("causal-lm", "classification", "seq2seq"))
        _choice("model", "dtype", self.dtype, ("float32", "bfloat16", "float16"))
        _at_least("model", "num_labels", self.num_labels, 2, allow_none=True)


@dataclasses.dataclass(frozen=True)
class QuantConfig:
    """A quantized frozen base (ak.quantize): bits 4 or 8; quant_type nf4 / fp4 (4-bit);
    double_quant: quantize the scales too; block: weights per scale; skip: modules kept dense."""

    bits: int = 4
    quant_type: str = "nf4"
    double_quant: bool = True
    block: int = 64
    skip: tuple[str, ...] = ()

    def __post_init__(self):
        _choice("quantization", "bits", self.bits, (4, 8))
        _choice("quantization", "quant_type", self.quant_type, ("nf4", "fp4"))
        from adapterkit_kernels.formats import BLOCKS  # the block sizes the kernels take

        _choice("quantization", "block", self.block, BLOCKS)


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """train / eval: JSONL, CSV or text files. eval_split: fraction of train held out when no
    eval file is given. format: instruction (prompt, response), chat (messages), text,
    classification (text, label), or seq2seq (source, target: the encoder reads the source, the
    decoder is trained on the target). Loss on the response only for instruction and chat."""

    train: str = ""
    eval: Optional[str] = None
    eval_split: float = 0.0
    format: str = "instruction"
    max_length: int = 512
    packing: bool = False
    chat_template: bool = True
    system_prompt: Optional[str] = None
    prompt_field: str = "prompt"
    response_field: str = "response"
    messages_field: str = "messages"
    text_field: str = "text"
    label_field: str = "label"
    source_field: str = "source"
    target_field: str = "target"

    def __post_init__(self):
        if not self.train:
            raise ConfigError("data.train is missing; give the path of a JSONL, CSV or text file.")
        _choice("data", "format", self.format, ("instruction", "chat", "text", "classification", "seq2seq"))
        _at_least("data", "max_length", self.max_length, 2)
        if not 0.0 <= self.eval_split < 1.0:
            raise ConfigError(f"data.eval_split must be in [0, 1); got {self.eval_split!r}.")
        if self.packing and self.format != "text":
            raise ConfigError(f"data.packing works with format 'text' only; format is {self.format!r}.")


OPTIMIZERS = ("adamw", "adamw8bit", "paged_adamw8bit", "sgd")
SCHEDULES = ("constant", "linear", "cosine")


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """batch_size is per process; the global batch is batch_size x processes x grad_accum.
    loraplus_ratio: LoRA+ (Hayou et al. 2024, arXiv:2402.12354), B's lr = ratio x lr.
    max_steps (optimizer steps) overrides epochs. mixed_precision: no, bf16 or fp16."""

    optimizer: str = "adamw"
    lr: float = 2e-4
    weight_decay: float = 0.0
    betas: tuple[float, ...] = (0.9, 0.999)
    loraplus_ratio: Optional[float] = None
    schedule: str = "cosine"
    warmup_steps: int = 0
    warmup_ratio: float = 0.0
    batch_size: int = 8
    grad_accum: int = 1
    max_grad_norm: Optional[float] = 1.0
    epochs: int = 1
    max_steps: Optional[int] = None
    mixed_precision: Union[str, bool] = "no"  # YAML reads a bare `no` as false
    seed: int = 0

    def __post_init__(self):
        if self.mixed_precision is False:
            object.__setattr__(self, "mixed_precision", "no")
        _choice("optim", "optimizer", self.optimizer, OPTIMIZERS)
        _choice("optim", "schedule", self.schedule, SCHEDULES)
        _choice("optim", "mixed_precision", self.mixed_precision, ("no", "bf16", "fp16"))
        if not self.lr > 0:
            raise ConfigError(f"optim.lr must be a positive number; got {self.lr!r}.")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ConfigError(f"optim.betas must be two numbers in [0, 1); got {list(self.betas)!r}.")
        for name, low in (
            ("batch_size", 1),
            ("grad_accum", 1),
            ("epochs", 1),
            ("warmup_steps", 0),
            ("weight_decay", 0),
            ("warmup_ratio", 0),
        ):
            _at_least("optim", name, getattr(self, name), low)
        _at_least("optim", "max_steps", self.max_steps, 1, allow_none=True)
        _at_least("optim", "max_grad_norm", self.max_grad_norm, 0, allow_none=True)
        _at_least("optim", "loraplus_ratio", self.loraplus_ratio, 1, allow_none=True)
        if self.warmup_ratio >= 1:
            raise ConfigError(f"optim.warmup_ratio must be below 1; got {self.warmup_ratio!r}.")


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """every: evaluate every N optimizer steps (0: only at the end). metric: the one early
    stopping watches (loss, perplexity, accuracy, macro_f1, bleu, chrf). patience: evaluations
    without improvement before stopping (None: never). generate: also generate and score
    BLEU / chrF on the eval set's responses. max_batches limits each evaluation."""

    every: int = 0
    batch_size: Optional[int] = None
    metric: str = "loss"
    patience: Optional[int] = None
    min_delta: float = 0.0
    generate: bool = False
    max_new_tokens: int = 32
    max_batches: Optional[int] = None
    at_start: bool = True

    def __post_init__(self):
        _choice("eval", "metric", self.metric, ("loss", "perplexity", "accuracy", "macro_f1", "bleu", "chrf"))
        _at_least("eval", "every", self.every, 0)
        _at_least("eval", "batch_size", self.batch_size, 1, allow_none=True)
        _at_least("eval", "patience", self.patience, 1, allow_none=True)
        _at_least("eval", "max_new_tokens", self.max_new_tokens, 1)
        _at_least("eval", "max_batches", self.max_batches, 1, allow_none=True)
        if self.metric in ("bleu", "chrf") and not self.generate:
            raise ConfigError(f"eval.metric {self.metric!r} needs eval.generate: true.")


@dataclasses.dataclass(frozen=True)
class OutputConfig:
    """dir: where the adapter (and checkpoints/, metrics.jsonl) go. save_every: checkpoint every
    N optimizer steps (0: never); keep: checkpoints kept. trackers: auto (TensorBoard when
    installed), none, or an Accelerate tracker name. progress: show a progress bar. plot: write
    curves.png (loss and learning rate from metrics.jsonl) when the run ends."""

    dir: str = "runs/adapter"
    save_every: int = 0
    keep: int = 2
    log_every: int = 10
    trackers: str = "auto"
    progress: bool = True
    plot: bool = True

    def __post_init__(self):
        _at_least("output", "save_every", self.save_every, 0)
        _at_least("output", "keep", self.keep, 1)
        _at_least("output", "log_every", self.log_every, 1)

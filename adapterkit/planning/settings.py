"""Settings: everything a memory estimate depends on besides the model's shape.

Each field is read from the training config, key in brackets; ``Settings.from_train_config`` does
that, so ``adapterkit plan run.yaml`` plans exactly what ``adapterkit train run.yaml`` runs.

The fields after ``device`` are not training-config keys: they describe setups of other tools, so
that published memory figures can be reproduced (see tests/test_plan_published.py).
"""

from __future__ import annotations

import dataclasses
from typing import Optional

from ..errors import ConfigError
from ..methods.lora.config import LoRAConfig

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
OPTIMIZERS = ("adamw", "adamw8bit", "paged_adamw8bit", "sgd", "paged_adamw32bit")
DEVICES = ("cuda", "cpu")


@dataclasses.dataclass(frozen=True)
class Quant:
    """A quantized frozen base [quantization.bits, quant_type, double_quant, block, skip]."""

    bits: int = 4
    quant_type: str = "nf4"
    double_quant: bool = True
    block: int = 64
    skip: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class Settings:
    """batch_size [optim.batch_size], seq_len [data.max_length], grad_accum [optim.grad_accum],
    dtype [model.dtype], checkpointing [model.gradient_checkpointing], optimizer [optim.optimizer],
    quant [quantization], adapter [adapter] (LoRA / DoRA), task [model.task], padded (batches
    padded to their longest row: true unless [data.packing]), device: cuda (kernels, allocator and
    context of a GPU) or cpu (what the calibration on a CPU measures).

    adapter_dtype: the adapters' dtype (None: adapterkit's rule, the base layer's float dtype, fp32
    for a 4-bit base without bias). loss_chunks: the loss computed in this many chunks of tokens
    (1: adapterkit's loss, which upcasts all the logits at once). use_cache: the model's
    ``use_cache`` (adapterkit train turns it off only with checkpointing)."""

    batch_size: int = 8
    seq_len: int = 512
    grad_accum: int = 1
    dtype: str = "float32"
    checkpointing: bool = False
    optimizer: str = "adamw"
    quant: Optional[Quant] = None
    adapter: LoRAConfig = LoRAConfig()
    task: str = "causal-lm"
    padded: bool = False
    device: str = "cuda"
    adapter_dtype: Optional[str] = None
    loss_chunks: int = 1
    use_cache: Optional[bool] = None

    def __post_init__(self):
        for name in ("batch_size", "seq_len", "grad_accum", "loss_chunks"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"plan setting {name} must be a positive integer; got {value!r}.")
        for name, value, choices in (
            ("dtype", self.dtype, tuple(DTYPE_BYTES)),
            ("optimizer", self.optimizer, OPTIMIZERS),
            ("device", self.device, DEVICES),
        ):
            if value not in choices:
                raise ConfigError(f"plan setting {name} must be one of {', '.join(choices)}; got {value!r}.")
        if self.adapter_dtype is not None and self.adapter_dtype not in DTYPE_BYTES:
            raise ConfigError(
                f"plan setting adapter_dtype must be one of {', '.join(DTYPE_BYTES)}; got {self.adapter_dtype!r}."
            )
        if not isinstance(self.adapter, LoRAConfig):
            method = getattr(self.adapter, "method", type(self.adapter).__name__)
            raise ConfigError(
                f"plan estimates LoRA and DoRA adapters (adapter.method: lora); method {method!r} is not modelled."
            )

    @property
    def b(self) -> int:
        """Bytes per element of activations (the model's dtype)."""
        return DTYPE_BYTES[self.dtype]

    @property
    def tokens(self) -> int:
        """Tokens in one micro-batch."""
        return self.batch_size * self.seq_len

    @property
    def cache_on(self) -> bool:
        return (not self.checkpointing) if self.use_cache is None else self.use_cache

    def replace(self, **changes) -> "Settings":
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_train_config(cls, config, task: str, device: str = "cuda") -> "Settings":
        """The settings ``adapterkit train`` runs with ``config`` (a TrainConfig)."""
        if config.optim.mixed_precision != "no":
            raise ConfigError(
                f"plan models model.dtype runs, not optim.mixed_precision {config.optim.mixed_precision!r} "
                "(autocast keeps a cast copy of each frozen weight for backward); set model.dtype=bfloat16 "
                "and optim.mixed_precision=no to plan a bf16 run."
            )
        if config.adapter is None:
            raise ConfigError("plan estimates adapter training; the config has no adapter (adapter: null).")
        q = config.quantization
        quant = None if q is None else Quant(q.bits, q.quant_type, q.double_quant, q.block, tuple(q.skip))
        return cls(
            batch_size=config.optim.batch_size,
            seq_len=config.data.max_length,
            grad_accum=config.optim.grad_accum,
            dtype=config.model.dtype,
            checkpointing=config.model.gradient_checkpointing,
            optimizer=config.optim.optimizer,
            quant=quant,
            adapter=config.adapter,
            task=task,
            padded=not config.data.packing,
            device=device,
        )

    def yaml_keys(self) -> dict:
        """The training-config keys that give these settings."""
        keys = {
            "optim.batch_size": self.batch_size,
            "optim.grad_accum": self.grad_accum,
            "data.max_length": self.seq_len,
            "model.dtype": self.dtype,
            "model.gradient_checkpointing": self.checkpointing,
            "optim.optimizer": self.optimizer,
        }
        if self.quant is not None:
            keys["quantization.bits"] = self.quant.bits
        return keys

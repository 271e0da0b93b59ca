"""The trained tensors of the virtual-token methods, one module per adapter.

PromptTable:   P = E_v                                  (n, D)               prompt tuning
PromptEncoder: P = MLP(E_v) or MLP(BiLSTM(E_v))         (n, D)               P-tuning
PrefixEncoder: [K; V] = E_v or Linear(tanh(Linear(E_v)))  (n, layers*2*kv_dim)  prefix tuning
Parameter names follow PEFT's modules (``embedding``, ``mlp_head``, ``lstm_head``, ``transform``).
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor, nn

from .config import PrefixTuningConfig, PromptEncoderConfig, PromptTuningConfig


@dataclasses.dataclass(frozen=True)
class Geometry:
    """Key/value layout of a model's attention layers: (layers, kv heads, head_dim)."""

    layers: int
    heads: int
    head_dim: int

    @property
    def kv_dim(self) -> int:
        return self.heads * self.head_dim


class PromptTable(nn.Module):
    """Prompt tuning: the virtual tokens' embeddings themselves."""

    kind = "prompt"

    def __init__(self, config: PromptTuningConfig, embeddings: nn.Embedding, token_ids=None):
        super().__init__()
        self.config = config
        self.num_virtual_tokens = n = config.num_virtual_tokens
        weight = embeddings.weight
        self.embedding = nn.Parameter(torch.empty(n, weight.shape[1], dtype=weight.dtype, device=weight.device))
        with torch.no_grad():
            if token_ids is None:
                nn.init.normal_(self.embedding)
            else:
                self.embedding.copy_(weight[torch.as_tensor(token_ids, device=weight.device)])

    def prompt(self) -> Tensor:
        return self.embedding  # (n, D)

    def saved(self) -> Tensor:
        return self.embedding

    def load_saved(self, table: Tensor) -> None:
        with torch.no_grad():
            self.embedding.copy_(table)


def _as_table(module: nn.Module, table: Tensor, *drop: str) -> None:
    """Hold ``table`` as the adapter's only tensor (PEFT's inference form); drop the encoder."""
    old = module.embedding
    module.embedding = nn.Parameter(table.detach().to(old.device, old.dtype).clone(), requires_grad=old.requires_grad)
    for name in drop:
        setattr(module, name, None)


class PromptEncoder(nn.Module):
    """P-tuning: P = mlp_head(E_v), or mlp_head(lstm_head(E_v)) for the LSTM encoder."""

    kind = "prompt"

    def __init__(self, config: PromptEncoderConfig, dim: int, like: Tensor):
        super().__init__()
        self.config = config
        self.num_virtual_tokens = n = config.num_virtual_tokens
        hidden = config.encoder_hidden_size or dim
        self.embedding = nn.Parameter(torch.randn(n, dim))
        if config.encoder == "lstm":
            self.lstm_head = nn.LSTM(
                dim,
                hidden,
                num_layers=config.encoder_num_layers,
                dropout=config.encoder_dropout,
                bidirectional=True,
                batch_first=True,
            )
            self.mlp_head = nn.Sequential(nn.Linear(2 * hidden, 2 * hidden), nn.ReLU(), nn.Linear(2 * hidden, dim))
        else:
            self.lstm_head = None
            self.mlp_head = nn.Sequential(
                nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, dim)
            )
        self.to(device=like.device, dtype=like.dtype)

    def saved(self) -> Tensor:
        return self.prompt()

    def load_saved(self, table: Tensor) -> None:
        _as_table(self, table, "lstm_head", "mlp_head")

    def prompt(self) -> Tensor:
        if self.mlp_head is None:  # loaded from a file: the encoder's output itself
            return self.embedding
        v = self.embedding.unsqueeze(0)  # (1, n, D)
        if self.lstm_head is not None:
            v = self.lstm_head(v)[0]  # (1, n, 2 * hidden)
        return self.mlp_head(v)[0]  # (n, D)


class PrefixEncoder(nn.Module):
    """Prefix tuning: per-layer keys and values, flattened as PEFT stores them."""

    kind = "prefix"

    def __init__(self, config: PrefixTuningConfig, geometry: Geometry, like: Tensor):
        super().__init__()
        self.config = config
        self.geometry = geometry
        self.num_virtual_tokens = n = config.num_virtual_tokens
        width = geometry.layers * 2 * geometry.kv_dim
        if config.projection:
            hidden = config.encoder_hidden_size or geometry.kv_dim
            self.embedding = nn.Parameter(torch.randn(n, geometry.kv_dim))
            self.transform = nn.Sequential(nn.Linear(geometry.kv_dim, hidden), nn.Tanh(), nn.Linear(hidden, width))
        else:
            self.embedding = nn.Parameter(torch.randn(n, width))
            self.transform = None
        self.to(device=like.device, dtype=like.dtype)

    def saved(self) -> Tensor:
        return self.flat()

    def load_saved(self, table: Tensor) -> None:
        if self.transform is None:
            with torch.no_grad():
                self.embedding.copy_(table)
        else:
            _as_table(self, table, "transform")

    def flat(self) -> Tensor:
        """(n, layers * 2 * kv_dim): what PEFT saves as ``prompt_embeddings``."""
        return self.embedding if self.transform is None else self.transform(self.embedding)

    def key_values(self) -> Tensor:
        """(layers, 2, heads, n, head_dim): layer l's keys at [l, 0], values at [l, 1]."""
        g = self.geometry
        kv = self.flat().view(self.num_virtual_tokens, g.layers, 2, g.heads, g.head_dim)
        return kv.permute(1, 2, 3, 0, 4)

"""LoReFT modules and the layer that wraps a transformer block with them.

    Phi(h) = dropout(h + R^T (W h + b - R h))      at the chosen positions of the block's output

R is ``torch.nn.utils.parametrizations.orthogonal`` of a (rank, hidden) weight (Householder map,
no (hidden, hidden) buffer), so its rows stay orthonormal while R trains. That map reads the signs
of its raw weight's diagonal by truncating it to an integer, so weight decay (AdamW) would shrink
a 1 to 0.999 and zero a row of R; a parametrization before it (``_UnitSigns``) hands it exact
+-1 signs whatever the optimizer does to the diagonal. torch's Householder product has no
bf16 / fp16 kernel, so the interventions keep fp32 tensors in a bf16 / fp16 model and compute in fp32.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrizations, parametrize

from ...errors import UnsupportedModuleError
from ...layer import AdapterLayer
from . import positions
from .config import LoReFTConfig


class _UnitSigns(nn.Module):
    """X with its diagonal replaced by the signs of that diagonal (+1 for 0)."""

    def forward(self, X: Tensor) -> Tensor:
        diagonal = X.diagonal()
        signs = torch.where(diagonal < 0, -1.0, 1.0).to(X.dtype)
        return X + _diagonal_matrix(signs - diagonal, X.shape)  # no gradient reaches the diagonal

    def right_inverse(self, X: Tensor) -> Tensor:
        return X


def _diagonal_matrix(values: Tensor, shape: tuple[int, int]) -> Tensor:
    out = values.new_zeros(shape)
    out.diagonal().copy_(values)
    return out


class Intervention(nn.Module):
    """Phi(h) = h + R^T (W h + b - R h); rotation.weight = R (rank, hidden), source = (W, b)."""

    def __init__(self, hidden: int, config: LoReFTConfig, place: dict):
        super().__init__()
        rotation = nn.Linear(hidden, config.rank, bias=False, **place)
        parametrize.register_parametrization(rotation, "weight", _UnitSigns())
        self.rotation = parametrizations.orthogonal(rotation, orthogonal_map="householder", use_trivialization=False)
        self.source = nn.Linear(hidden, config.rank, **place)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, h: Tensor) -> Tensor:
        # h (..., hidden) -> (..., hidden)
        if self.source.weight.dtype not in (torch.float32, torch.float64):
            raise UnsupportedModuleError(
                f"LoReFT's tensors are {self.source.weight.dtype} (the model was cast after attach); torch's "
                f"orthogonal parametrization needs float32: attach LoReFT after casting the model to "
                f"{self.source.weight.dtype} (its tensors then stay float32), or cast the model back."
            )
        h = h.to(self.source.weight.dtype)
        R = self.rotation.weight  # (rank, hidden), R R^T = I
        return self.dropout(h + (self.source(h) - h @ R.T) @ R)  # h + R^T (W h + b - R h)


class LoReFT(nn.Module):
    """One adapter's interventions in one block: 'first', 'last' or (tied) 'both'."""

    def __init__(self, hidden: int, config: LoReFTConfig, place: dict):
        super().__init__()
        self.config = config
        self.parts = nn.ModuleDict({part: Intervention(hidden, config, place) for part in config.parts()})

    def extra_repr(self) -> str:
        return f"positions={self.config.positions}, rank={self.config.rank}"

    def forward(self, h: Tensor, first: Tensor, last: Tensor) -> Tensor:
        # h (B, T, hidden); first, last (B,) -> (B, T, hidden)
        p, s = self.config.first, self.config.last
        head, tail = positions.take(first, last, p, s, h.shape[1])
        edits = []  # computed from the block's output, then written: the last positions win overlaps
        for index, part in ((head, "first"), (tail, "last")):
            if index.shape[1]:
                unit = self.parts["both" if "both" in self.parts else part]
                where = index[..., None].expand(-1, -1, h.shape[-1])
                edits.append((where, unit(h.gather(1, where)).to(h.dtype)))
        for where, value in edits:
            h = h.scatter(1, where, value)
        return h


class LoReFTLayer(AdapterLayer):
    """A transformer block whose output hidden states the active LoReFT adapters edit in turn."""

    method = "loreft"
    transparent = True  # LoRA, bottleneck adapters... still find the block's modules by their names

    def forward(self, *args, **kwargs):
        out = self.base(*args, **kwargs)
        adapters = self.active_adapters()
        if not adapters:
            return out
        h = out[0] if isinstance(out, tuple) else out
        if not isinstance(h, Tensor) or h.dim() != 3:
            raise UnsupportedModuleError(
                f"LoReFT edits the (batch, tokens, hidden) states a block outputs; "
                f"{type(self.base).__name__} returned {type(h).__name__}. Use another method here."
            )
        found = positions.ends(h)
        if found is None:
            return out
        for adapter in adapters:
            h = adapter(h, *found)
        return (h,) + tuple(out[1:]) if isinstance(out, tuple) else h

    def release(self, model: nn.Module) -> None:
        """Called after this layer left ``model``: drops the mask hook with the last LoReFT layer."""
        positions.release(model, any(isinstance(m, LoReFTLayer) for m in model.modules()))

"""LoReFTConfig: low-rank linear subspace representation finetuning (Wu et al. 2024, "ReFT:
Representation Finetuning for Language Models", arXiv:2404.03592).

LoReFT edits hidden states, not weights. At chosen positions of the output of chosen transformer
blocks it replaces each hidden state h (hidden,) by

    Phi(h) = h + R^T (W h + b - R h)

with R (rank, hidden) having orthonormal rows (R R^T = I), W (rank, hidden), b (rank,): inside
the rank-dimensional subspace spanned by R's rows, h's coordinates R h are moved to W h + b.
Positions as pyreft and AdapterHub name them: ``"f3"`` the first 3 tokens, ``"l2"`` the last 2,
``"f1+l1"`` both; "first" and "last" skip padding (read from the model's ``attention_mask``).
Untied, the first and the last positions have an intervention each; ``tied_weights`` shares one.
As in pyreft and AdapterHub, dropout applies to Phi(h) and W, b start as ``nn.Linear``'s.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Optional

from ...config import AdapterConfig, check_layers
from ...errors import ConfigError

_POSITIONS = re.compile(r"(?:f(\d+))?(?:\+?l(\d+))?\Z")


@dataclasses.dataclass(frozen=True)
class LoReFTConfig(AdapterConfig):
    """LoReFT interventions on the hidden states that transformer blocks output.

    Args:
        rank: r, the dimension of the edited subspace (pyreft's ``low_rank_dimension``).
        layers: indices of the blocks whose output is edited (None: all blocks).
        positions: ``"f<p>"``, ``"l<s>"`` or ``"f<p>+l<s>"``: the first p and last s tokens.
        tied_weights: one intervention (R, W, b) for first and last positions instead of two.
        dropout: dropout probability on the edited hidden states while training.
    """

    method = "loreft"

    rank: int = 1
    layers: Optional[tuple[int, ...]] = None
    positions: str = "f1+l1"
    tied_weights: bool = False
    dropout: float = 0.0

    def __post_init__(self):
        self._positive("rank", integer=True)
        self._set("layers", check_layers(type(self).__name__, self.layers))
        found = _POSITIONS.match(self.positions) if isinstance(self.positions, str) else None
        if found is None or not any(found.groups()) or self.first + self.last == 0:
            raise ConfigError(
                f"LoReFTConfig.positions must read 'f<p>', 'l<s>' or 'f<p>+l<s>' with p, s >= 1 (the first "
                f"p and last s tokens, e.g. 'f1+l1', 'f3'); got {self.positions!r}."
            )
        if not isinstance(self.tied_weights, bool):
            raise ConfigError(f"LoReFTConfig.tied_weights must be True or False; got {self.tied_weights!r}.")
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)) or not 0 <= self.dropout < 1:
            raise ConfigError(f"LoReFTConfig.dropout must be a probability in [0, 1); got {self.dropout!r}.")

    def _count(self, group: int) -> int:
        found = _POSITIONS.match(self.positions) if isinstance(self.positions, str) else None
        value = found.group(group) if found else None
        return int(value) if value else 0

    @property
    def first(self) -> int:
        """p: how many of the first tokens are edited."""
        return self._count(1)

    @property
    def last(self) -> int:
        """s: how many of the last tokens are edited."""
        return self._count(2)

    def parts(self) -> tuple[str, ...]:
        """The interventions one block holds: ('both',) when tied, else 'first' and/or 'last'."""
        if self.tied_weights:
            return ("both",)
        return tuple(part for part, n in (("first", self.first), ("last", self.last)) if n)

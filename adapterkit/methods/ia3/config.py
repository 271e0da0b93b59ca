"""IA3Config: learned scaling vectors (Liu et al. 2022, "Few-Shot Parameter-Efficient Fine-Tuning is
Better and Cheaper than In-Context Learning", arXiv:2205.05638).

Keys and values are rescaled per output feature, ``y = l * (W x + b)``; the feed-forward output
projection rescales its input, ``y = W (l * x) + b``. Every ``l`` starts at 1 (the model starts
unchanged) and folds into W exactly, so IA3 is mergeable.
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Union

from ...config import AdapterConfig, check_layers
from ...errors import ConfigError

INITS = ("ones", "random")


@dataclasses.dataclass(frozen=True)
class IA3Config(AdapterConfig):
    """(IA)^3: element-wise scaling of keys, values and the feed-forward input.

    Args:
        targets: ``"auto"`` (key and value projections, fused q-k-v projections, and each block's
            feed-forward output projection, found by module names and types), a list of module-name
            suffixes, or a regular expression matched against the full module name.
        feedforward: which targets scale their INPUT (``y = W (l x)``) instead of their output:
            ``"auto"`` (each block's feed-forward output projection), suffixes, or a regex. PEFT's
            ``feedforward_modules``; must be a subset of the targets.
        exclude: modules never to adapt (suffixes or regex).
        layers: indices of the transformer blocks to adapt (None: all).
        init: ``"ones"`` (identity at start) or ``"random"`` (normal around 1; for tests).
        train_modules: whole modules trained and saved with the adapter (e.g. ``["classifier"]``).
    """

    method = "ia3"

    targets: Union[str, tuple[str, ...]] = "auto"
    feedforward: Union[str, tuple[str, ...]] = "auto"
    exclude: Union[str, tuple[str, ...]] = ()
    layers: Optional[tuple[int, ...]] = None
    init: str = "ones"
    train_modules: tuple[str, ...] = ()

    def __post_init__(self):
        for name in ("targets", "feedforward", "exclude", "train_modules"):
            self._tuple(name)
        if isinstance(self.train_modules, str):
            self._set("train_modules", (self.train_modules,))
        if self.targets in ((), ""):
            raise ConfigError("IA3Config.targets is empty; give 'auto', module-name suffixes or a regex.")
        self._set("layers", check_layers(type(self).__name__, self.layers))
        self._choice("init", INITS)

"""LNTuningConfig: tune only the normalization layers (Zhao et al. 2023, "Tuning LayerNorm in
Attention: Towards Efficient Multi-Modal LLM Finetuning", arXiv:2312.11420).

Each adapted norm gets a trainable copy: ``y = norm'(x)``, with norm' = norm at the start (gamma, and
beta where the norm has one, trained); the base norm stays frozen. Merging puts the copy's values in.
"""

from __future__ import annotations

import dataclasses
from typing import Union

from ...config import AdapterConfig
from ...errors import ConfigError


@dataclasses.dataclass(frozen=True)
class LNTuningConfig(AdapterConfig):
    """LayerNorm / RMSNorm tuning.

    Args:
        targets: ``"auto"`` (every normalization layer: ``nn.LayerNorm``, ``nn.RMSNorm`` and model
            classes named ``*Norm``, e.g. ``LlamaRMSNorm``), module-name suffixes, or a regex.
            Targets must be leaf modules with parameters.
        exclude: modules never to adapt (suffixes or regex).
        train_modules: whole modules trained and saved with the adapter (e.g. ``["classifier"]``).
    """

    method = "ln_tuning"

    targets: Union[str, tuple[str, ...]] = "auto"
    exclude: Union[str, tuple[str, ...]] = ()
    train_modules: tuple[str, ...] = ()

    def __post_init__(self):
        for field in ("targets", "exclude", "train_modules"):
            self._tuple(field)
        if isinstance(self.train_modules, str):
            self._set("train_modules", (self.train_modules,))
        if self.targets in ((), ""):
            raise ConfigError("LNTuningConfig.targets is empty; give 'auto', module-name suffixes or a regex.")
        if self.exclude == "auto":
            raise ConfigError("LNTuningConfig.exclude cannot be 'auto'.")

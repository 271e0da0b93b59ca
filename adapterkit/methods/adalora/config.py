"""AdaLoRAConfig: an SVD-shaped low-rank update whose rank budget is allocated while training.

AdaLoRA (Zhang et al. 2023, "Adaptive Budget Allocation for Parameter-Efficient Fine-Tuning",
arXiv:2303.10512) writes the update of a frozen weight W as P diag(E) Q:

    W' = W + B (E * A) * alpha / (init_r + 1e-5)        A (r, in), E (r, 1), B (out, r)

and during training masks the singular values E of the least important triplets (allocator.py)
until ``target_r`` triplets per layer remain on average, with an orthogonality penalty on A and B
(regulariser.py). The schedule: ``tinit`` steps at the full budget, a cubic decrease of the budget
until step ``total_step - tfinal`` (masks every ``deltaT`` steps), then ``tfinal`` steps with the
final masks. Names follow PEFT's ``AdaLoraConfig`` (``init_r``, ``target_r``, ``deltaT``, ...).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional, Union

from ...config import AdapterConfig, check_layers
from ...errors import ConfigError

INITS = ("default", "random")

Pattern = tuple[tuple[str, tuple[bool, ...]], ...]


@dataclasses.dataclass(frozen=True)
class AdaLoRAConfig(AdapterConfig):
    """Adaptive-rank LoRA (PEFT's AdaLoRA).

    Args:
        init_r: triplets per layer at the start (> 0).
        target_r: average triplets per layer at the end (0 < target_r <= init_r).
        total_step: the number of optimizer steps the schedule spans (PEFT requires it).
        tinit: steps at the full budget before masking starts.
        tfinal: steps at the end with the final masks (the budget fixed).
        deltaT: masks are recomputed every ``deltaT`` steps while the budget falls.
        beta1, beta2: EMA factors (in (0, 1)) of the sensitivity and of its uncertainty.
        orth_reg_weight: weight of the orthogonality penalty on A and B (>= 0).
        alpha: the update's factor (PEFT's ``lora_alpha``): scale = alpha / init_r.
        dropout: dropout probability on the input of the low-rank branch, in [0, 1).
        targets: ``"all-linear"``, module-name suffixes, or a regular expression.
        exclude: modules never to adapt, in the same forms (no "all-linear").
        layers: indices of the transformer blocks to adapt (None: all).
        init: ``"default"`` (E zero, A and B normal with std 0.02: the model starts unchanged) or
            ``"random"`` (all three standard normal; for tests).
        rank_pattern: {module name: init_r booleans, the triplets kept}; set by the allocator and
            read from files, where layers hold only the kept triplets. None: every triplet.
        train_modules: whole modules trained and saved with the adapter.
    """

    method = "adalora"

    init_r: int = 12
    target_r: int = 8
    total_step: Optional[int] = None
    tinit: int = 0
    tfinal: int = 0
    deltaT: int = 1
    beta1: float = 0.85
    beta2: float = 0.85
    orth_reg_weight: float = 0.5
    alpha: float = 8.0
    dropout: float = 0.0
    targets: Union[str, tuple[str, ...]] = "all-linear"
    exclude: Union[str, tuple[str, ...]] = ()
    layers: Optional[tuple[int, ...]] = None
    init: str = "default"
    rank_pattern: Optional[Pattern] = None
    train_modules: tuple[str, ...] = ()

    def __post_init__(self):
        name = type(self).__name__
        for field in ("init_r", "target_r", "total_step", "deltaT"):
            if field == "total_step" and self.total_step is None:
                raise ConfigError(
                    f"{name}.total_step is required: the number of optimizer steps the rank "
                    "schedule spans (e.g. the run's max_steps), as PEFT's AdaLoraConfig requires."
                )
            self._positive(field, integer=True)
        for field in ("tinit", "tfinal"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"{name}.{field} must be a non-negative integer; got {value!r}.")
        if self.target_r > self.init_r:
            raise ConfigError(
                f"{name}.target_r ({self.target_r}) is above init_r ({self.init_r}); the budget "
                "only shrinks. Lower target_r or raise init_r."
            )
        if self.tinit >= self.total_step - self.tfinal:
            raise ConfigError(
                f"{name}: tinit ({self.tinit}) + tfinal ({self.tfinal}) leave no steps of "
                f"total_step ({self.total_step}) to allocate the budget in; decrease tinit / "
                "tfinal or increase total_step."
            )
        for field in ("beta1", "beta2"):
            self._fraction(field, open_low=True)
        self._fraction("dropout", open_low=False)
        w = self.orth_reg_weight
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not 0 <= w < float("inf"):
            raise ConfigError(f"{name}.orth_reg_weight must be a number >= 0; got {w!r}.")
        self._positive("alpha")
        for field in ("targets", "exclude", "train_modules"):
            self._tuple(field)
        if isinstance(self.train_modules, str):
            self._set("train_modules", (self.train_modules,))
        if self.targets in ((), ""):
            raise ConfigError(f"{name}.targets is empty; give 'all-linear', suffixes or a regex.")
        if self.exclude == "all-linear":
            raise ConfigError(f"{name}.exclude cannot be 'all-linear'.")
        self._set("layers", check_layers(name, self.layers))
        self._choice("init", INITS)
        self._set("rank_pattern", self._pattern(self.rank_pattern))

    def _fraction(self, field: str, open_low: bool) -> None:
        value = getattr(self, field)
        ok = (
            isinstance(value, (int, float))
            and not isinstance(value, bool)
            and (0 < value < 1 if open_low else 0 <= value < 1)
        )
        if not ok:
            raise ConfigError(
                f"{type(self).__name__}.{field} must be a number in "
                f"{'(0, 1)' if open_low else '[0, 1)'}; got {value!r}."
            )

    def _pattern(self, value: Any) -> Optional[Pattern]:
        """A mapping (or pairs) of module name -> init_r booleans, stored as sorted pairs."""
        if value is None:
            return None
        pairs = value.items() if isinstance(value, Mapping) else value
        out = []
        try:
            for module, mask in pairs:
                mask = tuple(mask)
                if (
                    not isinstance(module, str)
                    or len(mask) != self.init_r
                    or not all(isinstance(m, bool) for m in mask)
                ):
                    raise ValueError
                out.append((module, mask))
        except (TypeError, ValueError):
            raise ConfigError(
                f"{type(self).__name__}.rank_pattern must map module names to lists of init_r "
                f"({self.init_r}) booleans; got {value!r:.200}."
            ) from None
        return tuple(sorted(out))

    # -- what the pattern means ------------------------------------------------------------
    def kept(self, module: str) -> Optional[tuple[bool, ...]]:
        """The triplets of ``module`` kept by the rank pattern (None: all of them)."""
        return dict(self.rank_pattern).get(module) if self.rank_pattern else None

    def rank(self, module: str) -> int:
        """The number of triplets ``module``'s adapter holds when built from this config."""
        kept = self.kept(module)
        return self.init_r if kept is None else sum(kept)

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        if self.rank_pattern is not None:
            out["rank_pattern"] = {module: list(mask) for module, mask in self.rank_pattern}
        return out

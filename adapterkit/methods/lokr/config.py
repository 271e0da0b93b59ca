"""LoKrConfig: low-rank Kronecker product (Yeh et al. 2023, "Navigating Text-To-Image Customization:
From LyCORIS Fine-Tuning to Model Evaluation", arXiv:2309.14859; LyCORIS's LoKr).

    dW = kron(w1, w2) * scale,    scale = alpha / rank

out = a * b and in = c * d are each split into two factors (``factorization``); w1 (a, c) and
w2 (b, d) are full matrices, or products of rank-r factors where r is small against their sizes
(w2 always then, w1 with ``decompose_both``), as PEFT decides. Mergeable. The file format is PEFT's
``LoKrConfig``.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from ...errors import ConfigError
from ..lycoris.config import LycorisConfig


@dataclasses.dataclass(frozen=True)
class LoKrConfig(LycorisConfig):
    """LoKr; the fields of ``LycorisConfig`` (rank, alpha, rank_dropout, module_dropout, targets,
    exclude, layers, use_effective_conv2d, init, train_modules) and:

    decompose_both: also write w1 as a rank-r product w1_a @ w1_b where r < max(a, c) / 2.
    decompose_factor: split each size n into (m, n / m) with m as close to this factor as divides
        n (-1: as close to sqrt(n) as possible).
    rank_dropout_scale: rescale the kept rows by the kept fraction under rank dropout.
    init: ``"kaiming"`` (w1 zero, w2 Kaiming-uniform: the model starts unchanged), ``"lycoris"``
        (w1 Kaiming-uniform, w2 zero: LyCORIS's choice) or ``"random"`` (both Kaiming-uniform).
        PEFT's ``init_weights`` true / "lycoris" / false.
    """

    method = "lokr"
    INITS: ClassVar[tuple[str, ...]] = ("kaiming", "lycoris", "random")

    decompose_both: bool = False
    decompose_factor: int = -1
    rank_dropout_scale: bool = False

    def __post_init__(self):
        super().__post_init__()
        self._flag("decompose_both")
        self._flag("rank_dropout_scale")
        f = self.decompose_factor
        if isinstance(f, bool) or not isinstance(f, int) or not (f == -1 or f > 0):
            raise ConfigError(
                f"LoKrConfig.decompose_factor must be -1 (near the square root) or a positive integer; got {f!r}."
            )

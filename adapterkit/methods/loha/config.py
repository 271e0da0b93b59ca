"""LoHaConfig: low-rank Hadamard product (Hyeon-Woo et al. 2022, "FedPara: Low-Rank Hadamard
Product for Communication-Efficient Federated Learning", arXiv:2108.06098; LyCORIS's LoHa).

    dW = (w1_a @ w1_b) * (w2_a @ w2_b) * scale,    scale = alpha / rank

with w*_a (out, rank) and w*_b (rank, in): the element-wise product of two rank-r matrices has rank
up to r^2 from 2 r (in + out) parameters. Mergeable. The file format is PEFT's ``LoHaConfig``.
"""

from __future__ import annotations

import dataclasses

from ..lycoris.config import LycorisConfig


@dataclasses.dataclass(frozen=True)
class LoHaConfig(LycorisConfig):
    """LoHa; the fields are ``LycorisConfig``'s (rank, alpha, rank_dropout, module_dropout, targets,
    exclude, layers, use_effective_conv2d, init, train_modules).

    init: ``"kaiming"`` (w1_a, w1_b, w2_a Kaiming-uniform, w2_b zero: the model starts unchanged)
    or ``"random"`` (all Kaiming-uniform). PEFT's ``init_weights`` true / false.
    """

    method = "loha"

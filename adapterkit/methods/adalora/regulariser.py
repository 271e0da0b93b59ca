"""AdaLoRA's orthogonality penalty, added to the training loss (Zhang et al. 2023, eq. 4).

    R = orth_reg_weight * mean over the tensors P in {A, B of every layer} of ||C_P - I||_F
    C_A = A A^T (r, r),  C_B = B^T B (r, r)

A (r, in) holds the right singular vectors as rows, B (out, r) the left ones as columns, so R
pushes both towards orthonormal sets. This is the term PEFT's ``AdaLoraModel.forward`` adds to
``outputs.loss`` for the trainable adapter (it counts masked triplets too).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .layers import AdaLoRALayer


def orthogonality(model: nn.Module, name: str = "default") -> Tensor:
    """The penalty for adapter ``name`` (a scalar tensor, 0 when no layer holds it)."""
    from ...inject import adapter_layers

    terms = []
    weight = None
    for _, layer in adapter_layers(model):
        if not isinstance(layer, AdaLoRALayer) or name not in layer.adapters:
            continue
        adapter = layer.adapters[name]
        weight = adapter.config.orth_reg_weight
        for cov in (adapter.a @ adapter.a.t(), adapter.b.t() @ adapter.b):  # (r, r)
            eye = torch.eye(*cov.shape, dtype=cov.dtype, device=cov.device)
            terms.append(torch.norm(cov - eye, p="fro"))
    if not terms:
        return torch.zeros(())
    return weight * (sum(terms) / len(terms))

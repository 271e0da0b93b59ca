"""Shared test assertions and probes."""

from __future__ import annotations

import torch

from tests.models import tokens


def assert_close_scaled(got, want, rtol: float = 1e-5, atol_scale: float = 1e-5) -> None:
    """``assert_close`` with ``atol = atol_scale * max|want|``: rounding grows with the values."""
    torch.testing.assert_close(got, want, rtol=rtol, atol=atol_scale * want.abs().max().item())


def token_logits(model) -> torch.Tensor:
    """The model's logits on the shared test tokens, without gradients."""
    with torch.no_grad():
        return model(input_ids=tokens()).logits

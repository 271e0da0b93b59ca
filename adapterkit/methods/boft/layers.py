"""BOFT in one layer: a butterfly of Cayley rotations on the input, a scale on the output rows.

    y = s * (W (B^T x)) + b          x (..., in) -> x B;  s (out,);  B (in, in) from R (m, D, b, b)
With one factor B = blockdiag(Q_1 .. Q_D) and the rotation runs block by block (no (in, in) matrix).
Several active adapters: x B_1 B_2 ..., scales multiply. Folding: W' = s * W (B_1 B_2 ...)^T, b kept.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ... import bases
from ...errors import ConfigError
from ...fold import Fold
from ...layer import AdapterLayer
from ..vera.layers import place
from .butterfly import cayley, dense_butterfly, permutation_matrices
from .config import BOFTConfig


def sizes(n_in: int, config: BOFTConfig) -> tuple[int, int]:
    """(blocks per factor D, block size b) for a layer with ``n_in`` inputs; PEFT's checks."""
    given = config.block_size or config.block_num
    m = config.butterfly_factor
    if (
        n_in % given
        or (m > 1 and n_in % (given * 2 ** (m - 1)))
        or (m > 1 and config.block_num and config.block_num % 2 ** (m - 1))
    ):
        field = "block_size" if config.block_size else "block_num"
        raise ConfigError(
            f"BOFTConfig.{field}={given} with butterfly_factor={m} does not fit a layer with "
            f"{n_in} inputs; pick one that divides {n_in} (times 2^(factor-1))."
        )
    d, b = (n_in // given, given) if config.block_size else (given, n_in // given)
    if m > 1 and (d % 2 or b % 2):
        raise ConfigError(
            f"BOFT with butterfly_factor={m} needs an even block count and size; a layer with "
            f"{n_in} inputs gets {d} blocks of {b}."
        )
    return d, b


class BOFT(nn.Module):
    """One adapter in one layer: boft_R (m, D, b, b) and boft_s (out, 1), PEFT's tensors."""

    def __init__(self, base: nn.Module, config: BOFTConfig):
        super().__init__()
        self.config = config
        self.n_in, n_out = bases.features(base)
        self.d, self.b = sizes(self.n_in, config)
        where = place(base)
        self.boft_R = nn.Parameter(torch.zeros(config.butterfly_factor, self.d, self.b, self.b, **where))
        self.boft_s = nn.Parameter(torch.ones(n_out, 1, **where))
        if config.init == "random":
            with torch.no_grad():
                self.boft_R.normal_(0.0, 0.1)
                self.boft_s.normal_(1.0, 0.1)
        perms = permutation_matrices(self.n_in, self.d, self.b, config.butterfly_factor)
        self.register_buffer(
            "perms", perms.to(where["device"]) if config.butterfly_factor > 1 else None, persistent=False
        )

    def extra_repr(self) -> str:
        return f"factors={self.config.butterfly_factor}, blocks={self.d}, block_size={self.b}"

    def blocks(self) -> Tensor:
        """The Cayley blocks (m, D, b, b), with dropout in training (PEFT's multiplicative dropout:
        a share p of the blocks of one random factor become I)."""
        q = cayley(self.boft_R)
        p = self.config.dropout
        if self.training and p > 0:
            m, d = q.shape[:2]
            pick = torch.randint(0, m, (1,)).item()
            n = int(p * d)
            mask = torch.cat([torch.ones(n, device=q.device), torch.zeros(d - n, device=q.device)])
            full = torch.zeros(m, d, 1, 1, device=q.device, dtype=q.dtype)
            full[pick] = mask[torch.randperm(d)].view(d, 1, 1).to(q.dtype)
            q = (1 - full) * q + full * torch.eye(self.b, device=q.device, dtype=q.dtype)
        return q

    def rotate(self, x: Tensor) -> Tensor:
        # x (..., in) -> x B (..., in)
        q = self.blocks()
        if self.perms is None:  # one factor: block by block
            xb = x.to(q.dtype).reshape(*x.shape[:-1], self.d, self.b)
            return torch.einsum("...dk,dkc->...dc", xb, q[0]).reshape(x.shape).to(x.dtype)
        return (x.to(q.dtype) @ dense_butterfly(q, self.perms)).to(x.dtype)

    @torch.no_grad()
    def matrix(self, dtype: torch.dtype) -> Tensor:
        """B (in, in) in ``dtype``."""
        q = cayley(self.boft_R).to(dtype)
        if self.perms is None:
            return torch.block_diag(*q[0])
        return dense_butterfly(q, self.perms.to(dtype))


class BOFTLayer(AdapterLayer):
    """A linear base and its BOFT adapters."""

    method = "boft"

    def forward(self, x, *args, **kwargs):
        if self.merged_names:
            self.check_merged_forward()
        adapters = self.active_adapters()
        if not adapters:
            return self.base(x, *args, **kwargs)
        for adapter in adapters:
            x = adapter.rotate(x)
        y = self.base(x, *args, **kwargs)
        scale = adapters[0].boft_s.squeeze(-1)
        for adapter in adapters[1:]:
            scale = scale * adapter.boft_s.squeeze(-1)
        bias = getattr(self.innermost(), "bias", None)
        if bias is None:
            return y * scale.to(y.dtype)  # (..., out)
        return (y - bias) * scale.to(y.dtype) + bias  # the bias is not rescaled

    @staticmethod
    def _map(adapters: list[BOFT], dtype) -> tuple[Tensor, Tensor]:
        """(T, s): W' = s * W T^T with T = B_1 B_2 ... (in, in), s (out, 1)."""
        total, scale = adapters[0].matrix(dtype), adapters[0].boft_s.detach().to(dtype)
        for adapter in adapters[1:]:
            total = total @ adapter.matrix(dtype)
            scale = scale * adapter.boft_s.detach().to(dtype)
        return total, scale

    def merged(self) -> nn.Module:
        """The base with W' = s * W (B_1 B_2 ...)^T."""
        base = self.innermost()
        if not self.active_adapters():
            return base
        weight = bases.dense_weight(base)
        acc = torch.promote_types(weight.dtype, torch.float32)
        total, scale = self._map(self.active_adapters(), acc)
        w = weight.to(acc)
        return bases.folded(base, (scale * (w @ total.t()) - w).to(weight.dtype))

    # -- merging in place (see adapterkit/fold.py) ----------------------------------------
    @torch.no_grad()
    def fold(self, names, dtype: torch.dtype, weight=None) -> Fold:
        adapters = [self.adapters[n] for n in names]
        if len(adapters) == 1 and adapters[0].perms is None:  # keep the blocks, not an (in, in) matrix
            a = adapters[0]
            blocks = cayley(a.boft_R[0].detach().to(dtype)).transpose(-2, -1).contiguous()
            return Fold(row=a.boft_s.detach().to(dtype), right=blocks)  # W' = s * W blockdiag(Q^T)
        total, scale = self._map(adapters, dtype)
        return Fold(row=scale, right=total.t().unsqueeze(0).contiguous())  # W' = s * W T^T

    def fold_add(self, fold: Fold, dtype: torch.dtype) -> None:
        return None

"""The rotation blocks of OFT from their free parameters, as PEFT 0.21 computes them.

q (n, b(b-1)/2): the upper triangles of n skew-symmetric blocks Q (n, b, b), Q = U - U^T.
Cayley:           R = (I - Q)(I + Q)^-1                    (orthogonal)
Cayley-Neumann:   R = I + 2Q + 2Q^2 + ... + 2Q^(t-2) + Q^(t-1)  for t terms (t = 3 as t = 4; PEFT's loop)
COFT projection:  q <- q                 if ||Q||_F <= eps / sqrt(n)
                  q <- q * eps' / ||Q||_F  otherwise, eps' = eps / sqrt(n)
"""

from __future__ import annotations

import torch
from torch import Tensor


def skew(q: Tensor, b: int) -> Tensor:
    """(n, b(b-1)/2) -> (n, b, b) skew-symmetric."""
    rows, cols = torch.triu_indices(b, b, 1, device=q.device)
    m = q.new_zeros(q.shape[0], b, b)
    m[:, rows, cols] = q
    return m - m.transpose(-2, -1)


def cayley(q: Tensor, b: int, neumann: bool, terms: int) -> Tensor:
    """The n rotation blocks (n, b, b) in q's dtype."""
    s = skew(q, b)
    eye = torch.eye(b, device=q.device, dtype=q.dtype).expand_as(s)
    if not neumann:
        return torch.linalg.solve(eye + s, eye - s, left=False)
    r = eye.clone()
    if terms > 1:
        r = r + 2 * s
    if terms > 2:
        power = s @ s
        r = r + 2 * power
        for _ in range(3, terms - 1):
            power = power @ s
            r = r + 2 * power
        r = r + power @ s
    return r


@torch.no_grad()
def project(q: Tensor, b: int, eps: float) -> Tensor:
    """COFT: q scaled back onto the ball ||Q||_F <= eps / sqrt(n), per block."""
    s = skew(q, b)
    radius = eps / torch.sqrt(torch.tensor(float(s.shape[0])))
    norm = torch.linalg.matrix_norm(s, keepdim=True)  # (n, 1, 1)
    out = torch.where(norm <= radius, s, radius * (s / norm))
    rows, cols = torch.triu_indices(b, b, 1, device=q.device)
    return out[:, rows, cols]

"""The reference QLoRA matmul (the CPU path): its gradients, and the order that lets a checkpointed
block skip its last base matmul when it recomputes."""

import pytest
import torch
from torch.utils.checkpoint import checkpoint

from adapterkit_kernels import reference


def _layer(n, k, r, seed=0):
    g = torch.Generator().manual_seed(seed)
    qw = reference.quantize(torch.randn(n, k, generator=g), 4, "nf4", 64, True)
    a = (torch.randn(r, k, generator=g) / k**0.5).requires_grad_()
    b = (torch.randn(n, r, generator=g) / r**0.5).requires_grad_()
    return qw, a, b


@pytest.mark.parametrize("x_grad", [True, False])
def test_qlora_equals_plain_torch_forward_and_backward(x_grad):
    qw, a, b = _layer(70, 130, 5)
    x = torch.randn(37, 130, requires_grad=x_grad)
    dy = torch.randn(37, 70)
    y = reference.qlora(x, qw, a, b, 1.5)
    wanted = [t for t in (x, a, b) if t.requires_grad]
    grads = torch.autograd.grad(y, wanted, dy)

    w = reference.dequantize(qw)  # plain torch on the same dense weight
    ref_in = [t.detach().clone().requires_grad_(t.requires_grad) for t in (x, a, b)]
    yr = ref_in[0] @ w.t() + 1.5 * (ref_in[0] @ ref_in[1].t()) @ ref_in[2].t()
    ref_grads = torch.autograd.grad(yr, [t for t in ref_in if t.requires_grad], dy)
    torch.testing.assert_close(y, yr, rtol=1e-5, atol=1e-5)
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_checkpointed_block_does_not_recompute_its_last_base_matmul(monkeypatch):
    """x -> QLoRA 1 -> relu -> QLoRA 2 under non-reentrant checkpointing: the recompute needs
    layer 1's output (relu keeps it) but nothing of layer 2's after its kept x, A, B."""
    (q1, a1, b1), (q2, a2, b2) = _layer(48, 40, 4, 1), _layer(40, 48, 4, 2)

    def block(x):
        return reference.qlora(torch.relu(reference.qlora(x, q1, a1, b1, 2.0)), q2, a2, b2, 2.0)

    x, dy = torch.randn(6, 40, requires_grad=True), torch.randn(6, 40)
    plain = torch.autograd.grad(block(x), (x, a1, b1, a2, b2), dy)

    calls = []
    dequantize = reference.dequantize
    monkeypatch.setattr(reference, "dequantize", lambda qw, *a, **k: calls.append(id(qw)) or dequantize(qw, *a, **k))
    y = checkpoint(block, x, use_reentrant=False)
    assert calls == [id(q1), id(q2)]
    calls.clear()
    grads = torch.autograd.grad(y, (x, a1, b1, a2, b2), dy)
    # layer 2's input gradient, the recompute of layer 1's base (not layer 2's), layer 1's input gradient
    assert calls == [id(q2), id(q1), id(q1)]
    for got, want in zip(grads, plain):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)

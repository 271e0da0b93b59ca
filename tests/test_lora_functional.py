"""LoRAFunction / DoRAFunction against plain autograd, and the statistics of their dropout."""

import math

import pytest
import torch

from adapterkit.methods.lora.functional import (
    DoRAFunction,
    LoRAFunction,
    dora_norm,
    keep_mask,
    new_seed,
    pack_mask,
    unpack_mask,
)

CPU = torch.device("cpu")
N, IN, OUT, R = 6, 5, 4, 3


def _inputs(dtype=torch.float64, bias=True):
    g = torch.Generator().manual_seed(0)

    def t(*shape, grad=True):
        return torch.randn(*shape, generator=g, dtype=dtype).requires_grad_(grad)

    return dict(
        x=t(N, IN),
        y=t(N, OUT),
        a=t(R, IN),
        b=t(OUT, R),
        m=t(OUT).abs().detach().add(0.5).requires_grad_(),
        bias=t(OUT) if bias else None,
        w=t(OUT, IN, grad=False),
    )


def _lora_reference(x, y, a, b, scale, keep=None, p=0.0):
    xd = x if keep is None else x * keep / (1 - p)
    return y + scale * (xd @ a.t()) @ b.t()


def _dora_reference(x, y_b, a, b, m, bias, norm, scale):
    z = y_b + scale * (x @ a.t()) @ b.t()
    if bias is not None:
        z = z - bias
    s = m / norm.detach()
    return s * z + (bias if bias is not None else 0)


def test_lora_forward_and_grads_equal_autograd():
    t = _inputs()
    out = LoRAFunction.apply(t["x"], t["y"], t["a"], t["b"], 1.5, 0.0, None)
    ref = _lora_reference(t["x"], t["y"], t["a"], t["b"], 1.5)
    torch.testing.assert_close(out, ref)
    dy = torch.randn_like(out)
    got = torch.autograd.grad(out, [t["x"], t["y"], t["a"], t["b"]], dy)
    want = torch.autograd.grad(ref, [t["x"], t["y"], t["a"], t["b"]], dy)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)


@pytest.mark.parametrize("seed", [None, 1234])
def test_lora_gradcheck(seed):
    t = _inputs()
    # with a fixed seed the mask is fixed, so the function is deterministic and gradcheck applies
    fn = lambda x, y, a, b: LoRAFunction.apply(x, y, a, b, 2.0, 0.3, seed)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (t["x"], t["y"], t["a"], t["b"]))


@pytest.mark.parametrize("bias", [True, False])
def test_dora_forward_and_grads_equal_autograd(bias):
    t = _inputs(bias=bias)
    norm = dora_norm(t["w"], t["a"], t["b"], 0.7)
    args = (t["x"], t["y"], t["a"], t["b"], t["m"], t["bias"], norm, 0.7, 0.0, None)
    out = DoRAFunction.apply(*args)
    ref = _dora_reference(t["x"], t["y"], t["a"], t["b"], t["m"], t["bias"], norm, 0.7)
    torch.testing.assert_close(out, ref)
    dy = torch.randn_like(out)
    wrt = [t["x"], t["y"], t["a"], t["b"], t["m"]]
    for g, w in zip(torch.autograd.grad(out, wrt, dy), torch.autograd.grad(ref, wrt, dy)):
        torch.testing.assert_close(g, w)


@pytest.mark.parametrize("seed", [None, 99])
def test_dora_gradcheck(seed):
    t = _inputs()
    norm = dora_norm(t["w"], t["a"], t["b"], 0.7)

    def fn(x, y_b, a, b, m):
        return DoRAFunction.apply(x, y_b, a, b, m, t["bias"].detach(), norm, 0.7, 0.25, seed)

    assert torch.autograd.gradcheck(fn, (t["x"], t["y"], t["a"], t["b"], t["m"]))


def test_dora_norm_equals_dense_norm():
    t = _inputs()
    for scale in (0.5, 2.0):
        dense = torch.linalg.norm(t["w"] + scale * t["b"] @ t["a"], dim=1)
        torch.testing.assert_close(dora_norm(t["w"], t["a"], t["b"], scale).double(), dense)


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_mask_rate_is_p(p):
    n = 200_000
    keep = keep_mask(torch.Size([n]), p, seed=7, device=CPU)
    assert set(keep.unique().tolist()) <= {0.0, 1.0}
    sigma = math.sqrt(p * (1 - p) / n)
    assert abs((1 - keep.mean().item()) - p) < 5 * sigma


def test_mask_is_fixed_by_seed_and_varies_with_it():
    shape = torch.Size([64, 33])
    a = keep_mask(shape, 0.2, 5, CPU)
    assert torch.equal(a, keep_mask(shape, 0.2, 5, CPU))
    assert not torch.equal(a, keep_mask(shape, 0.2, 6, CPU))
    torch.manual_seed(3)
    first = new_seed()
    torch.manual_seed(3)
    assert new_seed() == first


def test_mask_elements_are_independent():
    # neighbours come from the same 64-bit draw: their joint keep rate must still be (1-p)^2
    p, n = 0.3, 400_000
    keep = keep_mask(torch.Size([n]), p, seed=11, device=CPU)
    for lag in (1, 2, 3, 4, 5):
        both = (keep[:-lag] * keep[lag:]).mean().item()
        assert abs(both - (1 - p) ** 2) < 5 * math.sqrt((1 - p) ** 2 * (1 - (1 - p) ** 2) / n)


@pytest.mark.parametrize("n", [1, 7, 8, 9, 63, 1000])
def test_pack_unpack_round_trip(n):
    keep = (torch.rand(n) < 0.5).float()
    bits = pack_mask(keep)
    assert bits.dtype == torch.uint8 and bits.numel() == math.ceil(n / 8)
    assert torch.equal(unpack_mask(bits, keep.shape).float(), keep)


def _identity_branch(p, seed, n=256, d=32):
    """A = I, B = I: the branch output is exactly drop(x), so the mask can be read back."""
    x = torch.randn(n, d, dtype=torch.float64).add_(3).requires_grad_()  # no zeros in x
    y = torch.zeros(n, d, dtype=torch.float64)
    eye = torch.eye(d, dtype=torch.float64)
    a, b = eye.clone().requires_grad_(), eye.clone().requires_grad_()
    out = LoRAFunction.apply(x, y, a, b, 1.0, p, seed)
    return x, a, out


def test_dropout_scales_kept_values_by_one_over_keep_rate():
    p = 0.25
    x, _, out = _identity_branch(p, seed=21)
    kept = out != 0
    torch.testing.assert_close(out[kept], x.detach()[kept] / (1 - p))
    assert 0.6 < kept.double().mean().item() < 0.9


def test_backward_uses_the_forward_mask():
    p = 0.4
    x, a, out = _identity_branch(p, seed=33)
    kept = (out != 0).double()
    dy = torch.randn_like(out)
    dx, da = torch.autograd.grad(out, [x, a], dy)
    torch.testing.assert_close(dx, dy * kept / (1 - p))  # zero exactly where forward dropped
    # dA = dh^T drop(x) with B = I: the same mask again
    torch.testing.assert_close(da, dy.t() @ (x.detach() * kept / (1 - p)))


def test_dropout_is_unbiased():
    # E[drop(x)] = x: the mean over many seeds approaches x
    x = torch.randn(64, 16, dtype=torch.float64)
    total = torch.zeros_like(x)
    runs = 400
    for seed in range(runs):
        total += x * keep_mask(x.shape, 0.2, seed, CPU).double() / 0.8
    torch.testing.assert_close(total / runs, x, atol=0.25 * x.abs().max().item(), rtol=0)
    assert (total / runs - x).abs().mean() < 0.05 * x.abs().mean()


def test_saved_for_backward_is_small():
    """With dropout, no tensor of x's size is kept besides x itself (no dropped copy, no float mask)."""
    n, d, r = 512, 64, 4
    x = torch.randn(n, d, requires_grad=True)
    a = torch.randn(r, d, requires_grad=True)
    b = torch.randn(d, r, requires_grad=True)
    saved = []

    def pack(t):
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        LoRAFunction.apply(x, torch.zeros(n, d), a, b, 1.0, 0.1, new_seed())
    big = [t for t in saved if t.numel() >= x.numel() and t.data_ptr() != x.data_ptr()]
    assert big == []
    mask = [t for t in saved if t.dtype == torch.uint8]
    assert len(mask) == 1 and mask[0].numel() == x.numel() // 8


@pytest.mark.parametrize("dora,quant", [(False, False), (True, False), (False, True)], ids=["lora", "dora", "qlora"])
def test_hooks_on_the_base_run_and_their_change_reaches_the_output(dora, quant):
    """A forward hook a user put on a module before attach stays on the wrapped base: it runs
    (LoRA never computes the base itself) and what it returns is the base output LoRA adds to.
    On a quantized base, plain LoRA runs inside the base's own call (one pass over x: the fused
    kernel on CUDA), so there the hook sees, and changes, base + LoRA."""
    import adapterkit as ak

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.Linear(32, 16))
    if quant:  # the quantized base and LoRA run as one call of the base (QuantLinear.forward's lora=)
        model = ak.quantize(model, bits=4, block=32)
    x = torch.randn(4, 5, 64)
    calls = []
    model[1].register_forward_hook(lambda mod, inp, out: calls.append(1) or out * 2.0)
    ak.attach(model, ak.LoRAConfig(rank=3, alpha=6, dora=dora, targets=["0", "1"], init="random")).eval()
    out = model(x)
    assert calls == [1]
    layer = model[1]
    h = model[0](x)
    if quant:
        lora = layer.adapters["default"]
        base = torch.nn.functional.linear(h, layer.innermost().dequantize(), layer.innermost().bias)
        want = 2.0 * (base + lora.scale * (h @ lora.a.t()) @ lora.b.t())
    else:
        want = layer.adapters["default"].plain(h, layer.base(h), layer.base(h), layer.innermost())
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5 * want.abs().max().item())
    with ak.disabled(model):
        torch.testing.assert_close(model(x), layer.base(model[0](x)))  # the doubled base alone


def test_dora_weight_norm_follows_changes_of_the_base_weight():
    import copy

    import adapterkit as ak

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 6)).double()
    ak.attach(model, ak.LoRAConfig(rank=2, dora=True, targets=["0"], init="random"))
    x = torch.randn(3, 8, dtype=torch.float64)
    with torch.no_grad():
        model(x)  # fills any cache
        model[0].base.weight.mul_(1.5)
        want = ak.merge(copy.deepcopy(model))(x)
        torch.testing.assert_close(model(x), want)


def test_dropout_masks_survive_gradient_checkpointing():
    """Recomputed forwards draw the same masks: gradients equal those without checkpointing."""
    import adapterkit as ak
    from adapterkit import checkpointing
    from tests.models import tiny_llama, tokens

    grads = []
    for checkpointed in (False, True):
        model = ak.attach(tiny_llama(), ak.LoRAConfig(rank=4, dropout=0.3, init="random")).train()
        if checkpointed:
            checkpointing.enable(model)
        torch.manual_seed(7)
        ids = tokens()
        model(input_ids=ids, labels=ids).loss.backward()
        grads.append([p.grad.clone() for p in model.parameters() if p.requires_grad])
    assert len(grads[0]) > 0
    for g0, g1 in zip(*grads):
        torch.testing.assert_close(g0, g1)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_dora_and_dropout_train_in_half_precision(dtype):
    import adapterkit as ak

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 16), torch.nn.Linear(16, 8)).to(dtype)
    ak.attach(model, ak.LoRAConfig(rank=4, dora=True, dropout=0.2, targets=["0", "1"], init="random"))
    out = model.train()(torch.randn(5, 16, dtype=dtype))
    assert out.dtype == dtype
    out.float().square().mean().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert grads and all(g is not None and g.dtype == dtype and torch.isfinite(g).all() for g in grads)

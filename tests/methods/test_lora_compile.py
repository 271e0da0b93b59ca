"""``torch.compile(fullgraph=True)`` traces a Llama block with LoRA, LoRA + dropout and DoRA (+ dropout)
without a graph break, forward and backward; the plain forward (what the compiler traces under
dropout) equals the autograd Functions of the eager path."""

import pytest
import torch

import adapterkit as ak
from adapterkit.layer import AdapterLayer
from tests.checks import assert_close_scaled
from tests.models import tiny_llama

VARIANTS = {
    "lora": {},
    "lora_dropout": {"dropout": 0.1},
    "dora": {"dora": True},
    "dora_dropout": {"dora": True, "dropout": 0.1},
}


@pytest.fixture(autouse=True)
def _inductor_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    torch.compiler.reset()
    yield
    torch.compiler.reset()


def _block(**options):
    model = tiny_llama(hidden_size=32, num_hidden_layers=1)
    ak.attach(model, ak.LoRAConfig(rank=4, alpha=8, targets="all-linear", init="random", **options))
    model.train()
    x = torch.randn(2, 6, 32)
    pos = model.model.rotary_emb(x, torch.arange(6)[None])
    block = model.model.layers[0]

    def step(h):
        out = block(h, position_embeddings=pos)
        return (out[0] if isinstance(out, tuple) else out).square().mean()

    return model, step, x


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_block_compiles_without_graph_breaks(variant):
    """fullgraph=True raises at any graph break. Without dropout the compiled gradients equal the
    eager ones; with it the compiled training loss differs from the dropout-free (eval) one."""
    model, step, x = _block(**VARIANTS[variant])
    params = [p for p in model.parameters() if p.requires_grad]
    x = x.requires_grad_()
    compiled = torch.autograd.grad(torch.compile(step, fullgraph=True, backend="aot_eager")(x), [x, *params])
    assert all(g.isfinite().all() and g.abs().sum() > 0 for g in compiled)
    if "dropout" not in variant:
        for got, want in zip(compiled, torch.autograd.grad(step(x), [x, *params])):
            assert_close_scaled(got, want, rtol=1e-4)
    else:
        loss = torch.compile(step, fullgraph=True, backend="aot_eager")(x)
        model.eval()
        assert not torch.allclose(loss, step(x))


@pytest.mark.parametrize("variant", ["lora", "dora"])
def test_plain_forward_equals_the_functions(variant):
    """Dropout 0 in training: the Functions' path and ``LoRA.plain`` give the same values and gradients."""
    model, _, _ = _block(**VARIANTS[variant])
    layer = next(m for m in model.modules() if isinstance(m, AdapterLayer))
    lora = layer.adapters["default"]
    x = torch.randn(3, 5, layer.innermost().in_features)
    params = [lora.a, lora.b] + ([lora.magnitude] if lora.magnitude is not None else [])
    fast = layer(x)
    y = layer.innermost()(x)
    plain = lora.plain(x, y, y, layer.innermost())
    assert_close_scaled(plain, fast)
    g = torch.randn_like(fast)
    for got, want in zip(torch.autograd.grad(plain, params, g), torch.autograd.grad(fast, params, g)):
        assert_close_scaled(got, want, rtol=1e-4)

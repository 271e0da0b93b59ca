"""``torch.compile(fullgraph=True)`` traces a Llama block with LoRA, LoRA + dropout and DoRA (+ dropout)
without a graph break, forward and backward; the plain forward (what the compiler traces under
dropout) equals the autograd Functions of the eager path."""

import pytest
import torch
import torch.utils.checkpoint

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


def _mlp_block(**options):
    """A feed-forward block of plain torch modules with LoRA, its loss under torch's non-reentrant
    gradient checkpoint (what ak.prepare_for_kbit_training turns on). Not a transformers layer:
    transformers 5.25's decoder layers do not compile under a checkpoint at all, adapters or not
    (their forward sets a context variable: dynamo's "HOP: Unsafe side effect")."""
    model = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.SiLU(), torch.nn.Linear(64, 32))
    ak.attach(model, ak.LoRAConfig(rank=4, alpha=8, targets=["0", "2"], init="random", **options))
    model.train()

    def block(h):  # the layers, not the model's own call (whose hooks sit outside a block's checkpoint)
        return model[2](model[1](model[0](h)))

    def step(h):
        return torch.utils.checkpoint.checkpoint(block, h, use_reentrant=False).square().mean()

    return model, step, torch.randn(2, 6, 32)


def _block(**options):
    """A one-block Llama with LoRA and ``step(h)``, its loss."""
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


CASES = [(v, "aot_eager", False) for v in VARIANTS] + [
    ("lora_dropout", "inductor", False),
    ("dora_dropout", "inductor", False),
    ("lora_dropout", "aot_eager", True),
    ("dora_dropout", "inductor", True),
]


@pytest.mark.parametrize("variant,backend,checkpointed", CASES)
def test_block_compiles_without_graph_breaks(variant, backend, checkpointed):
    """fullgraph=True raises at any graph break. The compiled loss and gradients equal the same step
    run eagerly (whose checkpoint restores the generator for its recompute); with dropout from the
    same generator state, which gives the same masks
    (the dropout branch is a custom op taking its seed from one drawn as the eager Functions draw
    it), and the loss then differs from the dropout-free (eval) one. Checkpointed, the compiled
    recompute must reuse the forward's masks, not draw new ones, for the gradients to agree."""
    model, step, x = (_mlp_block if checkpointed else _block)(**VARIANTS[variant])
    params = [p for p in model.parameters() if p.requires_grad]
    x = x.requires_grad_()
    compiled_step = torch.compile(step, fullgraph=True, backend=backend)
    torch.manual_seed(1)
    loss = compiled_step(x)
    compiled = torch.autograd.grad(loss, [x, *params])
    assert all(g.isfinite().all() and g.abs().sum() > 0 for g in compiled)
    torch.manual_seed(1)
    eager_loss = step(x)
    assert_close_scaled(loss, eager_loss, rtol=1e-5)
    for got, want in zip(compiled, torch.autograd.grad(eager_loss, [x, *params])):
        assert_close_scaled(got, want, rtol=1e-4)
    if "dropout" in variant:
        model.eval()
        assert not torch.allclose(loss, step(x))


@pytest.mark.parametrize("variant", ["lora_dropout", "dora_dropout"])
def test_compiled_dropout_keeps_a_packed_mask_not_a_dropped_copy(variant):
    """The compiled training graph keeps what the eager Functions keep: x, the (N, r) h and the mask
    at one bit per element; no (N, in) dropped copy of x or float mask per adapted layer (what
    ``F.dropout`` traced would keep). Counted with saved_tensors_hooks over the compiled forward."""
    model, step, x = _block(**VARIANTS[variant])
    x = x.requires_grad_()
    compiled_step = torch.compile(step, fullgraph=True, backend="aot_eager")
    compiled_step(x)  # compile first: the count is of a run

    def saved_bytes(fn):
        seen = {}

        def pack(t):
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            fn(x)
        return sum(seen.values())

    # the same block with dropout 0: the difference is what dropout keeps
    no_dropout, step0, _ = _block(**{k: v for k, v in VARIANTS[variant].items() if k != "dropout"})
    no_dropout.load_state_dict(model.state_dict())
    compiled0 = torch.compile(step0, fullgraph=True, backend="aot_eager")
    compiled0(x)
    extra = saved_bytes(compiled_step) - saved_bytes(compiled0)
    layers = [m for m in model.modules() if isinstance(m, AdapterLayer)]
    inputs = sum(x.shape[0] * x.shape[1] * layer.innermost().in_features for layer in layers)  # N x in, summed
    assert extra <= inputs / 8 + 64 * len(layers)  # the packed bits (a byte per 8 elements), rounding
    assert extra > 0


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

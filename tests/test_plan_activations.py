"""The activations plan counts are the tensors autograd really keeps, byte for byte.

A tiny model is built for real; every tensor saved for backward during the training loss (the
model's ops and adapterkit's own LoRA / DoRA Functions, which save through the same hooks) is
recorded once per storage; parameters and buffers are left out. That sum must equal the
prediction of the kept activations and loss (``Estimate.held`` without the CPU-only graph
objects). Exact, because both count the same tensors.
"""

import pytest
import torch

from adapterkit.methods.lora.config import LoRAConfig
from adapterkit.planning import estimate
from adapterkit.planning.calibrate import case
from adapterkit.planning.measure import _batch, _build
from adapterkit.planning.settings import Quant, Settings
from adapterkit.planning.shape import model_shape
from adapterkit.planning.source import full_config
from adapterkit.training.evaluate import batch_loss

LLAMA = dict(
    model_type="llama",
    hidden_size=64,
    intermediate_size=176,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=300,
)
BASE = Settings(batch_size=2, seq_len=16, device="cpu", adapter=LoRAConfig(rank=4, init="random"))


def _saved_bytes(model, batch, task) -> int:
    own = {t.untyped_storage().data_ptr() for t in list(model.parameters()) + list(model.buffers())}
    seen: dict = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in own:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        batch_loss(model, batch, task)
    return sum(seen.values())


CASES = {
    "llama fp32 LoRA": (LLAMA, {}),
    "llama bf16 DoRA": (LLAMA, dict(dtype="bfloat16", adapter=LoRAConfig(rank=4, dora=True, init="random"))),
    "llama dropout": (LLAMA, dict(adapter=LoRAConfig(rank=4, dropout=0.1, init="random"))),
    "llama 4-bit LoRA": (LLAMA, dict(quant=Quant(4))),
    "llama 4-bit DoRA + dropout": (LLAMA, dict(quant=Quant(4), adapter=LoRAConfig(rank=4, dora=True, dropout=0.1))),
    "llama q,v only, block 1": (LLAMA, dict(adapter=LoRAConfig(rank=4, targets=("q_proj", "v_proj"), layers=(1,)))),
    "llama MLP only": (LLAMA, dict(adapter=LoRAConfig(rank=4, targets=("gate_proj", "up_proj", "down_proj")))),
    "llama padded": (LLAMA, dict(padded=True)),
    "mistral": (dict(LLAMA, model_type="mistral"), {}),
    "qwen2 (q/k/v biases)": (dict(LLAMA, model_type="qwen2"), {}),
    "qwen3 (q/k norms)": (dict(LLAMA, model_type="qwen3", head_dim=16), {}),
    "bert classification": (
        dict(
            model_type="bert",
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            vocab_size=300,
        ),
        dict(task="classification"),
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_kept_activations_are_exact(name):
    config, changes = CASES[name]
    s = BASE.replace(**changes)
    est = estimate(model_shape(full_config(config)), s)
    predicted = est.held - est.shape.layers * 100 * 1024  # without the CPU graph objects
    c = case(config, s)
    model = _build(c)
    measured = _saved_bytes(model, _batch(c, model.config.vocab_size), s.task)
    assert predicted == measured, {k: v for b in est.layers for k, v in b.items.items() if v}

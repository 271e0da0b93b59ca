"""The predicted peak of a training step is within 10% of the measured one, on a small grid.

Each case is a real step of adapterkit's training loss, backward, clipping and optimizer, on a
Llama- (or BERT-) shaped model with random weights, measured in its own fresh process (glibc bytes
in use, see adapterkit/planning/measure.py). The full grid, with larger models, is
benchmarks/bench_plan.py; its table is benchmarks/plan.md.
"""

import pytest

from adapterkit.methods.lora.config import LoRAConfig
from adapterkit.planning import calibrate
from adapterkit.planning.settings import Quant, Settings

TOLERANCE = 0.10  # on the peak; the other components are reported, and checked loosely below

LLAMA = dict(
    model_type="llama",
    hidden_size=128,
    intermediate_size=344,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=4000,
    max_position_embeddings=256,
)
LLAMA_MHA = dict(
    LLAMA,
    hidden_size=192,
    intermediate_size=512,
    num_hidden_layers=2,
    num_attention_heads=6,
    num_key_value_heads=6,
    vocab_size=256,
)  # small vocab: the block's backward is the peak
BERT = dict(
    model_type="bert",
    hidden_size=128,
    intermediate_size=512,
    num_hidden_layers=2,
    num_attention_heads=4,
    vocab_size=4000,
)

BASE = Settings(batch_size=2, seq_len=64, device="cpu")


def lora(**kw):
    return LoRAConfig(**{"rank": 8, "init": "random", **kw})


GRID = {
    "fp32 LoRA r8": (LLAMA, BASE.replace(adapter=lora())),
    "fp32 LoRA checkpointing": (LLAMA, BASE.replace(adapter=lora(), checkpointing=True)),
    "fp32 DoRA": (LLAMA, BASE.replace(adapter=lora(dora=True))),
    "fp32 LoRA r16 dropout 0.1": (LLAMA, BASE.replace(adapter=lora(rank=16, dropout=0.1))),
    "4-bit LoRA": (LLAMA, BASE.replace(adapter=lora(), quant=Quant(4))),
    "4-bit DoRA checkpointing": (LLAMA, BASE.replace(adapter=lora(dora=True), quant=Quant(4), checkpointing=True)),
    "bf16 LoRA 8-bit AdamW": (LLAMA, BASE.replace(adapter=lora(rank=64), dtype="bfloat16", optimizer="adamw8bit")),
    "fp32 LoRA padded batch": (LLAMA, BASE.replace(adapter=lora(), batch_size=4, seq_len=32, padded=True)),
    "MHA, small vocab": (LLAMA_MHA, BASE.replace(adapter=lora())),
    "BERT classification": (BERT, BASE.replace(adapter=lora(), task="classification")),
}


@pytest.fixture(scope="module")
def results():
    names = list(GRID)
    rows = calibrate.run([GRID[n] for n in names])
    return dict(zip(names, rows))


def _table(results) -> str:
    lines = [f"{'case':30s} " + " ".join(f"{c:>9s}" for c in calibrate.COMPONENTS)]
    for name, row in results.items():
        lines.append(f"{name:30s} " + " ".join(f"{100 * row['error'][c]:+8.1f}%" for c in calibrate.COMPONENTS))
    return "\n".join(lines)


@pytest.mark.parametrize("name", list(GRID))
def test_peak_within_ten_percent(results, name):
    row = results[name]
    assert abs(row["error"]["peak"]) <= TOLERANCE, (
        f"{name}: predicted {row['predicted']['peak']} vs measured {row['measured']['peak']} bytes\n" + _table(results)
    )


SLACK = 2**20  # bytes: CPU-only runtime buffers (bf16 matmul scratch left by the first step: ~0.7 MiB)


def test_components_close(results):
    """Weights and optimizer states are exact up to Python objects; the activations kept for
    backward are the Functions' saved tensors (a few percent for the autograd graph's objects)."""
    for name, row in results.items():
        for component, bound in (("weights", 0.05), ("states", 0.10), ("held", 0.10)):
            pred, meas = row["predicted"][component], row["measured"][component]
            assert abs(pred - meas) <= max(bound * meas, SLACK), f"{name} {component}\n" + _table(results)

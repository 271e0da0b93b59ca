"""Activations kept for backward, tensor by tensor, as adapterkit's Functions and the model save them.

N tokens per micro-batch, b bytes per element of the model dtype; d hidden, I intermediate,
q = H * head_dim, kv = KV * head_dim, r the rank. Per decoder block (Llama-style), where the
block's input needs a gradient (every block after the first adapted one):

    RMSNorm x2            4d + 4       its input in fp32 (a copy, or the fp32 input itself) and 1/rms
    normed input          b d          kept by the q/k/v adapters (LoRA saves x); same for gate/up
    attention             b (2q + 2kv) + 4H   q, k (after rotary), v, output; fp32 logsumexp
                          (padded batches: k and v repeated to H heads, 2q, and the mask as a float bias, B T^2 b)
    MLP                   3 b I        gate output (for act'), up output and act(gate) (for the
                                       product); + b I when down is adapted (its input)
    LoRA                  b r          h = drop(x) A^T per adapted layer (not on the fused 4-bit
                                       CUDA path, which recomputes it; the CPU 4-bit path keeps it);
                                       dropout: the keep-mask packed to 1 bit per input element, in / 8 bytes
    DoRA                  + its output where no other op keeps it (q, k, o, down; v with the
                          generation cache on), + s (out,) per layer
    Qwen3 q/k norms       4 (q + kv) + 4 (H + KV)

The first block's norm keeps nothing (the embeddings are frozen). Per model: rotary cos/sin
2 T head_dim b, the final norm 4d + 4 per token, and the loss: log_softmax of the logits in fp32,
4 V per predicted token (B (T - 1) of them) and 8 per target id.

BERT-style encoder block: LayerNorm x2 b d + 8; attention b 4d + 4H (flash / efficient kernels;
on a CPU with attention dropout the math kernel keeps q, k, v and three B H T^2 score tensors);
dropout masks 1 byte per element on CUDA, b on a CPU; GELU input b I, its output b I when
the down layer is adapted; the layer input b d when q/k/v are adapted.

Gradient checkpointing (non-reentrant, per block) keeps only each block's input, b d per token
(and, as transformers then makes the embeddings' output need a gradient, a BERT-style model's
embedding LayerNorm and dropout keep theirs).
"""

from __future__ import annotations

import dataclasses
import math

from .settings import Settings
from .shape import ModelShape
from .weights import Inventory, Target, adapter_dtype_bytes

ATTN = ("q", "k", "v")


@dataclasses.dataclass(frozen=True)
class Layer:
    """One block's kept bytes for a whole micro-batch: item -> bytes."""

    index: int
    items: dict

    @property
    def total(self) -> int:
        return sum(self.items.values())


def by_layer(inv: Inventory) -> dict[int, dict[str, Target]]:
    out: dict[int, dict[str, Target]] = {}
    for t in inv.targets:
        if t.layer >= 0 and t.role != "other":
            out.setdefault(t.layer, {})[t.role] = t
    return out


def _adapter_items(adapted: dict[str, Target], s: Settings, n: int, shared_out: set) -> dict:
    """What the LoRA / DoRA Functions keep beyond their (shared) input x."""
    a, b, items = s.adapter, s.b, {}
    h = bits = dora = const = 0
    for role, t in adapted.items():
        fused = t.quantized and not a.dora and a.dropout == 0  # one Function: x, A, B
        h += 0 if fused and s.device == "cuda" else n * a.rank * b  # CPU: reference.qlora keeps h
        if a.dropout > 0:
            bits += math.ceil(n * t.n_in / 8)
        if a.dora:
            const += t.n_out * b
            dora += 0 if role in shared_out else n * t.n_out * b
        if t.quantized and not fused and adapter_dtype_bytes(t, s) != b:
            const += a.rank * (t.n_in + t.n_out) * b  # A and B cast to the compute dtype, kept
    items.update(
        {
            "LoRA h = x A^T (N, r)": h,
            "dropout masks, 1 bit each": bits,
            "DoRA outputs kept": dora,
            "per-layer constants": const,
        }
    )
    return items


def decoder_layer(shape: ModelShape, s: Settings, index: int, adapted: dict, rg_in: bool) -> Layer:
    """Kept bytes of one Llama-style block (see the module docstring)."""
    n, b, d, i_ = s.tokens, s.b, shape.hidden, shape.intermediate
    q, kv, heads = shape.q_dim, shape.kv_dim, shape.heads
    rg = {r: rg_in or r in adapted for r in ATTN}
    attn = any(rg.values())
    repeat = s.padded and shape.kv_heads < heads
    kv_kept = q if repeat else kv
    rg_h1 = rg_in or attn or "o" in adapted
    rg_g, rg_u = rg_h1 or "gate" in adapted, rg_h1 or "up" in adapted
    items = {
        "input RMSNorm (fp32 input, 1/rms)": n * (4 * d + 4) if rg_in else 0,
        "normed input (q/k/v adapters)": n * d * b if any(r in adapted for r in ATTN) else 0,
        "q/k norms (fp32)": (n * (4 * q + 4 * heads) * rg["q"] + n * (4 * kv + 4 * shape.kv_heads) * rg["k"])
        if shape.qk_norm
        else 0,
        "attention q, k, v, out, logsumexp": n * (b * (2 * q + 2 * kv_kept) + 4 * heads) if attn else 0,
        "attention mask as a float bias (padded)": s.batch_size * s.seq_len**2 * b if attn and s.padded else 0,
        "o_proj input": n * q * b if "o" in adapted and not attn else 0,
        "post-attention RMSNorm": n * (4 * d + 4) if rg_h1 else 0,
        "normed input (gate/up adapters)": n * d * b if ("gate" in adapted or "up" in adapted) else 0,
        "MLP gate output, up output, act": n * i_ * b * (2 * rg_g + rg_u),
        "MLP product (down adapter input)": n * i_ * b if "down" in adapted else 0,
    }
    shared = {"gate", "up"} | (set() if (s.cache_on or repeat) else {"v"})
    items.update(_adapter_items(adapted, s, n, shared))
    return Layer(index, items)


def encoder_layer(shape: ModelShape, s: Settings, index: int, adapted: dict, rg_in: bool) -> Layer:
    """Kept bytes of one BERT-style block (see the module docstring)."""
    n, b, d, i_ = s.tokens, s.b, shape.hidden, shape.intermediate
    attn = rg_in or any(r in adapted for r in ATTN)
    mask = (1 if s.device == "cuda" else b) if shape.hidden_dropout > 0 else 0
    math_kernel = s.device == "cpu" and shape.attention_dropout > 0  # q, k, v, 3 score tensors
    if math_kernel:
        attention, shared = n * b * (3 * d + 3 * shape.heads * s.seq_len), {"v", "up"}
    else:
        attention, shared = n * (4 * d * b + 4 * shape.heads), {"q", "k", "v", "up"}
    items = {
        "layer input (q/k/v adapters)": n * d * b if any(r in adapted for r in ATTN) else 0,
        "attention": attention if attn else 0,
        "o input (a copy of the attention output)": n * d * b if "o" in adapted and math_kernel else 0,
        "dropout masks": 2 * n * d * mask if attn else 0,
        "LayerNorms (input, mean, 1/std)": 2 * n * (d * b + 8) if attn else 0,
        "normed input (intermediate adapter)": n * d * b if "up" in adapted else 0,
        "GELU input": n * i_ * b if attn or "up" in adapted else 0,
        "GELU output (down adapter input)": n * i_ * b if "down" in adapted else 0,
    }
    items.update(_adapter_items(adapted, s, n, shared))
    return Layer(index, items)


def layers(shape: ModelShape, s: Settings, inv: Inventory) -> list[Layer]:
    """Every block's kept bytes, without checkpointing."""
    per = by_layer(inv)
    first = min((t.layer for t in inv.targets if t.layer >= 0), default=shape.layers)
    if any(t.layer < 0 and t.role == "other" and "embed" in t.name for t in inv.targets):
        first = -1
    build = decoder_layer if shape.family == "decoder" else encoder_layer
    return [build(shape, s, i, per.get(i, {}), i > first) for i in range(shape.layers)]


def model_items(shape: ModelShape, s: Settings, inv: Inventory, any_grad: bool) -> dict:
    """Kept bytes outside the blocks: rotary tables, mask, final norm, pooler."""
    n, b = s.tokens, s.b
    items = {}
    if shape.family == "decoder":
        items["rotary cos/sin"] = 2 * s.seq_len * shape.head_dim * b if any_grad else 0
        items["final RMSNorm"] = n * (4 * shape.hidden + 4) if any_grad else 0
    else:
        pooled = any(t.role == "other" and "pooler" in t.name for t in inv.targets)
        items["last hidden states (pooler adapter)"] = n * shape.hidden * b if pooled else 0
        # the head (classifier) takes LoRA only when not saved whole (train_modules, PEFT's task heads):
        # then it keeps its input and x A^T
        head = any(t.role == "other" and t.name.split(".")[0] in ("classifier", "score") for t in inv.targets)
        labels = int(shape.config.get("num_labels") or 2)  # pooler in/out, dropout, head; fp32 loss
        items["classification head"] = (
            s.batch_size * ((2 + head) * shape.hidden * b + s.adapter.rank * b * head + 4 * labels + 8) + 36
        )
        # checkpointing makes the embeddings' output need a gradient (transformers'
        # enable_input_require_grads): their LayerNorm and dropout then keep their inputs too
        mask = (1 if s.device == "cuda" else b) if shape.hidden_dropout > 0 else 0
        items["embeddings LayerNorm and dropout"] = n * (shape.hidden * (b + mask) + 8) if s.checkpointing else 0
    return items

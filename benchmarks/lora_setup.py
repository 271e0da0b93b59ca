"""The models the LoRA benchmark compares: one Llama-shaped base, adapterkit's and PEFT's LoRA on it.

Both libraries get a copy of the same base weights and the same A / B / magnitude tensors
(adapterkit's are copied into PEFT's modules), so they compute the same function.
"""

from __future__ import annotations

import copy
import ctypes
import gc

import torch

import adapterkit as ak
from adapterkit.inject import adapter_layers

# Llama-shaped model from a config: 33.5M parameters.
MODEL = dict(
    hidden_size=512,
    intermediate_size=1376,
    num_hidden_layers=8,
    num_attention_heads=8,
    num_key_value_heads=8,
    vocab_size=8000,
    max_position_embeddings=256,
)
BATCH, SEQ = 4, 128
RANK, ALPHA = 16, 32

# variant -> (dropout, dora); "full" means full fine-tuning (no adapter), for reference.
VARIANTS = {"plain": (0.0, False), "dropout": (0.1, False), "dora": (0.0, True)}


def base_model(seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(**MODEL))
    return model.train()


def batch(seed: int = 1) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, MODEL["vocab_size"], (BATCH, SEQ), generator=gen)  # (B, T)


def ak_config(variant: str) -> ak.LoRAConfig:
    dropout, dora = VARIANTS[variant]
    # "random": B is not zero, so the adapted model differs from the base (as after training).
    return ak.LoRAConfig(rank=RANK, alpha=ALPHA, dropout=dropout, dora=dora, targets="all-linear", init="random")


def peft_config(variant: str):
    from peft import LoraConfig

    dropout, dora = VARIANTS[variant]
    return LoraConfig(
        r=RANK,
        lora_alpha=ALPHA,
        lora_dropout=dropout,
        use_dora=dora,
        target_modules="all-linear",
        init_lora_weights=False,
    )


@torch.no_grad()
def copy_to_peft(ours, theirs) -> None:
    """Give the PEFT model adapterkit's adapter tensors, module by module."""
    inner = theirs.base_model.model
    for name, layer in adapter_layers(ours):
        lora = layer.adapters["default"]
        target = inner.get_submodule(name)
        target.lora_A["default"].weight.copy_(lora.a)
        target.lora_B["default"].weight.copy_(lora.b)
        if lora.magnitude is not None:
            target.lora_magnitude_vector["default"].weight.copy_(lora.magnitude)


def pair(variant: str, base=None):
    """(adapterkit model, PEFT model) on copies of one base, with identical adapter tensors."""
    from peft import get_peft_model

    base = base_model() if base is None else base
    ours = ak.attach(copy.deepcopy(base), ak_config(variant))
    theirs = get_peft_model(copy.deepcopy(base), peft_config(variant))
    copy_to_peft(ours, theirs)
    return ours.train(), theirs.train()


def one(lib: str, variant: str):
    """A single model: ``lib`` is "ak", "peft" or "full" (full fine-tuning of the base)."""
    base = base_model()
    if lib == "full":
        return base
    ours = ak.attach(copy.deepcopy(base) if lib == "peft" else base, ak_config(variant))
    if lib == "ak":
        return ours.train()
    from peft import get_peft_model

    theirs = get_peft_model(base, peft_config(variant))
    copy_to_peft(ours, theirs)
    del ours
    return theirs.train()


def optimizer(model) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW(params, lr=1e-4)


def train_step(model, opt, ids) -> float:
    """Forward + backward + AdamW: one training step on a causal-LM loss."""
    opt.zero_grad(set_to_none=True)
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    opt.step()
    return float(loss)


class _Mallinfo2(ctypes.Structure):
    _fields_ = [
        (f, ctypes.c_size_t)
        for f in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


def bytes_in_use() -> int:
    """Heap bytes in use (glibc mallinfo2): small blocks in arenas plus mmapped blocks."""
    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = _Mallinfo2
    gc.collect()
    info = libc.mallinfo2()
    return info.uordblks + info.hblkhd

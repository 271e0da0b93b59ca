"""The README's ten lines: LoRA on a small Llama built from a config (no download)."""

import torch
from transformers import LlamaConfig, LlamaForCausalLM

import adapterkit as ak

model = LlamaForCausalLM(
    LlamaConfig(hidden_size=256, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4, vocab_size=1000)
)
ak.attach(model, ak.LoRAConfig(rank=16, alpha=32, dropout=0.05, targets="all-linear"))
print(ak.summary(model))
ids = torch.randint(0, 1000, (2, 16))
loss = model(input_ids=ids, labels=ids).loss
loss.backward()
assert all((p.grad is not None) == p.requires_grad for p in model.parameters())
with ak.disabled(model):
    base_loss = model(input_ids=ids, labels=ids).loss
model = ak.merge(model)
print(
    f"loss {loss.item():.4f} (base alone {base_loss.item():.4f}); merged: {type(model.model.layers[0].mlp.up_proj).__name__}"
)

"""Tiny models built from configs (no download): the fixtures most tests run on."""

from __future__ import annotations

import torch
from torch import nn

VOCAB = 97


def tiny_llama(**overrides):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=VOCAB,
        max_position_embeddings=64,
    )
    cfg.update(overrides)
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(**cfg)).eval()


def tiny_gpt2(**overrides):
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = dict(n_embd=32, n_layer=2, n_head=4, vocab_size=VOCAB, n_positions=64)
    cfg.update(overrides)
    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(**cfg)).eval()


def tiny_bert(num_labels: int = 3, **overrides):
    from transformers import BertConfig, BertForSequenceClassification

    cfg = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        vocab_size=VOCAB,
        max_position_embeddings=64,
        num_labels=num_labels,
    )
    cfg.update(overrides)
    torch.manual_seed(0)
    return BertForSequenceClassification(BertConfig(**cfg)).eval()


def tiny_t5(**overrides):
    from transformers import T5Config, T5ForConditionalGeneration

    cfg = dict(
        d_model=32,
        d_ff=64,
        d_kv=8,
        num_layers=2,
        num_decoder_layers=2,
        num_heads=4,
        vocab_size=VOCAB,
        decoder_start_token_id=0,
        pad_token_id=0,
        eos_token_id=1,
    )
    cfg.update(overrides)
    torch.manual_seed(0)
    return T5ForConditionalGeneration(T5Config(**cfg)).eval()


def tiny_vit(**overrides):
    from transformers import ViTConfig, ViTForImageClassification

    cfg = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=16,
        patch_size=4,
        num_channels=3,
        num_labels=5,
    )
    cfg.update(overrides)
    torch.manual_seed(0)
    return ViTForImageClassification(ViTConfig(**cfg)).eval()


class TinyCNN(nn.Module):
    """A plain nn.Module with every base kind LoRA supports."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(VOCAB, 8)
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.fc = nn.Linear(6 * 4 * 4 + 8, 10)
        self.head = nn.Linear(10, 5)

    def forward(self, image, ids):
        # image (B, 3, 4, 4), ids (B,) -> (B, 5)
        features = torch.cat([self.conv(image).flatten(1), self.embed(ids)], dim=1)
        return self.head(torch.relu(self.fc(features)))


def tokens(batch: int = 2, length: int = 7) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(1))


def tiny_opt(**overrides):
    from transformers import OPTConfig, OPTForCausalLM

    cfg = dict(
        hidden_size=32,
        ffn_dim=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        vocab_size=VOCAB,
        max_position_embeddings=64,
        word_embed_proj_dim=32,
        pad_token_id=0,
        bos_token_id=2,
        eos_token_id=2,
    )
    cfg.update(overrides)
    torch.manual_seed(0)
    return OPTForCausalLM(OPTConfig(**cfg)).eval()


def tiny_qwen2(**overrides):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    cfg = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=VOCAB,
        max_position_embeddings=64,
    )
    cfg.update(overrides)
    torch.manual_seed(0)
    return Qwen2ForCausalLM(Qwen2Config(**cfg)).eval()

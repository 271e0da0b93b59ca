"""anatomy: blocks and the roles of their layers on several architectures, which block holds a
module, stacks of blocks, and the heads, read from module names, types and identity."""

from __future__ import annotations

import pytest
import torch

import adapterkit as ak
from adapterkit import anatomy, targets
from tests.models import tiny_bert, tiny_llama, tiny_t5

OTHER = {  # architecture -> (config, model class, (attention out, key/value, ffn in, ffn out) in block 0)
    "OPT": (
        dict(
            hidden_size=32,
            num_attention_heads=4,
            num_hidden_layers=2,
            vocab_size=97,
            ffn_dim=64,
            word_embed_proj_dim=32,
        ),
        "OPTForCausalLM",
        ("self_attn.out_proj", "k_proj v_proj", "fc1", "fc2"),
    ),
    "GPTNeoX": (
        dict(hidden_size=32, num_attention_heads=4, num_hidden_layers=2, vocab_size=97, intermediate_size=64),
        "GPTNeoXForCausalLM",
        ("attention.dense", "query_key_value", "mlp.dense_h_to_4h", "mlp.dense_4h_to_h"),
    ),
    "DistilBert": (
        dict(dim=32, n_heads=4, n_layers=2, hidden_dim=64, vocab_size=97),
        "DistilBertForSequenceClassification",
        ("attention.out_lin", "k_lin v_lin", "ffn.lin1", "ffn.lin2"),
    ),
}


@pytest.mark.parametrize("arch", list(OTHER))
def test_roles_on_other_architectures(arch):
    import transformers

    blocks = anatomy.blocks

    kwargs, cls, (attn_out, kv, ffn_in, ffn_out) = OTHER[arch]
    config = getattr(transformers, f"{arch}Config")(**kwargs)
    block = blocks(getattr(transformers, cls)(config))[0]
    assert block.attention_out[0].endswith("." + attn_out)
    assert {n.rsplit(".", 1)[-1] for n in block.key_value} == set(kv.split())
    assert block.ffn_in.endswith("." + ffn_in) and block.ffn_out.endswith("." + ffn_out)


def test_block_of_and_block_index_on_a_model_with_adapters():
    model = ak.attach(tiny_llama(), ak.LoRAConfig(rank=2, targets=["down_proj"]))
    name = "model.layers.1.mlp.down_proj"
    assert anatomy.block_of(model, name) == ("model.layers.1", 1)
    assert anatomy.block_index(model, name) == targets.block_index(model, name) == 1
    assert anatomy.block_of(model, "lm_head") is None and anatomy.block_index(model, "") is None


def test_stacks_of_an_encoder_decoder_model():
    model = tiny_t5()
    found = anatomy.stacks(model)
    assert list(found) == ["encoder.block", "decoder.block"]
    for stack, held in found.items():
        assert [b.prefix for b in held] == [f"{stack}.{i}" for i in range(len(held))]
        assert all(block.prefix.startswith(stack + ".") for block in held)
    assert anatomy.stacks(tiny_llama())["model.layers"][-1].index == 1


def test_heads():
    llama = ak.attach(tiny_llama(), ak.LoRAConfig(rank=2, targets=["lm_head"]))
    assert anatomy.output_head_name(llama) == "lm_head" and targets.output_head_name(llama) == "lm_head"
    assert anatomy.unwrapped(anatomy.output_head(llama)) is llama.lm_head.base
    assert anatomy.head_names(llama) == ("lm_head",)
    bert = tiny_bert(num_labels=3)
    assert anatomy.output_head(bert) is None and anatomy.classifier_heads(bert) == ("classifier",)
    assert anatomy.head_names(bert) == ("classifier",)
    assert anatomy.label_head(bert, 3) == "classifier" and anatomy.label_head(bert, 5) is None
    assert anatomy.output_head(torch.nn.Linear(2, 2)) is None

"""The architecture matrix: tiny random models of the families people fine-tune, built from
configs. For each, "all-linear" LoRA attaches, trains (the loss falls), saves and loads back with
equal outputs, merges equal to unmerged, generates where the model generates (equal to the merged
model's tokens), and equals PEFT on the same weights where PEFT supports the case."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

import adapterkit as ak
from adapterkit.io.tasks import PEFT_HEADS, task_type
from adapterkit.methods.lora import LoRALayer
from tests.checks import assert_close_scaled
from tests.peft_twin import copy_by_file_keys

V = 97
TEXT = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    vocab_size=V,
    max_position_embeddings=64,
)


def _model(config_cls: str, model_cls: str, **config):
    import transformers

    torch.manual_seed(0)
    return getattr(transformers, model_cls)(getattr(transformers, config_cls)(**config)).eval()


def _ids(batch=2, length=7):
    return torch.randint(3, V, (batch, length), generator=torch.Generator().manual_seed(1))


def _causal():
    ids = _ids()
    return {"input_ids": ids, "labels": ids}


def _classify():
    return {"input_ids": _ids(), "labels": torch.tensor([0, 1])}


def _seq2seq():
    return {"input_ids": _ids(), "labels": _ids(2, 4)}


def _pixels(size=16, channels=3):
    return lambda: {
        "pixel_values": torch.randn(2, channels, size, size, generator=torch.Generator().manual_seed(2)),
        "labels": torch.tensor([0, 1]),
    }


def _clip():
    return {"input_ids": _ids(), "pixel_values": _pixels()()["pixel_values"], "return_loss": True}


def _whisper():
    features = torch.randn(2, 16, 32, generator=torch.Generator().manual_seed(3))  # (B, mel bins, frames)
    return {"input_features": features, "labels": _ids(2, 4)}


def _ctc():
    return {
        "input_values": torch.randn(2, 400, generator=torch.Generator().manual_seed(4)),
        "labels": torch.randint(1, 20, (2, 5), generator=torch.Generator().manual_seed(5)),
    }


KV = dict(num_key_value_heads=2)
# name: (model factory, inputs, kind: "causal" | "seq2seq" | other (no generate))
FAMILIES = {
    "llama": (lambda: _model("LlamaConfig", "LlamaForCausalLM", **KV, **TEXT), _causal, "causal"),
    "qwen2": (lambda: _model("Qwen2Config", "Qwen2ForCausalLM", **KV, **TEXT), _causal, "causal"),
    "qwen3": (lambda: _model("Qwen3Config", "Qwen3ForCausalLM", head_dim=8, **KV, **TEXT), _causal, "causal"),
    "mistral": (lambda: _model("MistralConfig", "MistralForCausalLM", **KV, **TEXT), _causal, "causal"),
    "gemma2": (lambda: _model("Gemma2Config", "Gemma2ForCausalLM", head_dim=8, **KV, **TEXT), _causal, "causal"),
    "gemma3": (lambda: _model("Gemma3TextConfig", "Gemma3ForCausalLM", head_dim=8, **KV, **TEXT), _causal, "causal"),
    "phi3": (
        lambda: _model("Phi3Config", "Phi3ForCausalLM", pad_token_id=0, eos_token_id=1, bos_token_id=2, **KV, **TEXT),
        _causal,
        "causal",
    ),
    "gpt2": (
        lambda: _model(
            "GPT2Config",
            "GPT2LMHeadModel",
            n_embd=32,
            n_layer=2,
            n_head=4,
            vocab_size=V,
            n_positions=64,
            bos_token_id=1,
            eos_token_id=2,
        ),
        _causal,
        "causal",
    ),
    "gpt-neox": (
        lambda: _model("GPTNeoXConfig", "GPTNeoXForCausalLM", eos_token_id=2, bos_token_id=1, **TEXT),
        _causal,
        "causal",
    ),
    "falcon": (
        lambda: _model(
            "FalconConfig",
            "FalconForCausalLM",
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            vocab_size=V,
            eos_token_id=2,
            bos_token_id=1,
        ),
        _causal,
        "causal",
    ),
    "opt": (
        lambda: _model(
            "OPTConfig",
            "OPTForCausalLM",
            hidden_size=32,
            ffn_dim=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            vocab_size=V,
            max_position_embeddings=64,
            word_embed_proj_dim=32,
            pad_token_id=0,
            bos_token_id=2,
            eos_token_id=2,
        ),
        _causal,
        "causal",
    ),
    "mixtral": (
        lambda: _model("MixtralConfig", "MixtralForCausalLM", num_local_experts=4, num_experts_per_tok=2, **KV, **TEXT),
        _causal,
        "causal",
    ),
    "qwen2-moe": (
        lambda: _model(
            "Qwen2MoeConfig",
            "Qwen2MoeForCausalLM",
            num_experts=4,
            num_experts_per_tok=2,
            moe_intermediate_size=32,
            shared_expert_intermediate_size=32,
            **KV,
            **TEXT,
        ),
        _causal,
        "causal",
    ),
    "qwen3-moe": (
        lambda: _model(
            "Qwen3MoeConfig",
            "Qwen3MoeForCausalLM",
            num_experts=4,
            num_experts_per_tok=2,
            moe_intermediate_size=32,
            head_dim=8,
            **KV,
            **TEXT,
        ),
        _causal,
        "causal",
    ),
    "bert": (lambda: _model("BertConfig", "BertForSequenceClassification", num_labels=2, **TEXT), _classify, "cls"),
    "roberta": (
        lambda: _model("RobertaConfig", "RobertaForSequenceClassification", num_labels=2, pad_token_id=1, **TEXT),
        _classify,
        "cls",
    ),
    "deberta-v2": (
        lambda: _model("DebertaV2Config", "DebertaV2ForSequenceClassification", num_labels=2, **TEXT),
        _classify,
        "cls",
    ),
    "t5": (
        lambda: _model(
            "T5Config",
            "T5ForConditionalGeneration",
            d_model=32,
            d_ff=64,
            d_kv=8,
            num_layers=2,
            num_heads=4,
            vocab_size=V,
            decoder_start_token_id=0,
            pad_token_id=0,
            eos_token_id=1,
        ),
        _seq2seq,
        "seq2seq",
    ),
    "bart": (
        lambda: _model(
            "BartConfig",
            "BartForConditionalGeneration",
            d_model=32,
            encoder_layers=2,
            decoder_layers=2,
            encoder_attention_heads=4,
            decoder_attention_heads=4,
            encoder_ffn_dim=64,
            decoder_ffn_dim=64,
            vocab_size=V,
            max_position_embeddings=64,
        ),
        _seq2seq,
        "seq2seq",
    ),
    "vit": (
        lambda: _model(
            "ViTConfig",
            "ViTForImageClassification",
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            image_size=16,
            patch_size=4,
            num_labels=2,
        ),
        _pixels(),
        "image",
    ),
    "resnet": (
        lambda: _model(
            "ResNetConfig",
            "ResNetForImageClassification",
            embedding_size=8,
            hidden_sizes=[8, 16],
            depths=[1, 1],
            num_labels=2,
        ),
        _pixels(),
        "image",
    ),
    "clip": (
        lambda: _model(
            "CLIPConfig",
            "CLIPModel",
            text_config=dict(
                hidden_size=32,
                intermediate_size=64,
                num_hidden_layers=2,
                num_attention_heads=4,
                vocab_size=V,
                max_position_embeddings=64,
            ),
            vision_config=dict(
                hidden_size=32,
                intermediate_size=64,
                num_hidden_layers=2,
                num_attention_heads=4,
                image_size=16,
                patch_size=4,
            ),
            projection_dim=16,
        ),
        _clip,
        "clip",
    ),
    "whisper": (
        lambda: _model(
            "WhisperConfig",
            "WhisperForConditionalGeneration",
            d_model=32,
            encoder_layers=2,
            decoder_layers=2,
            encoder_attention_heads=4,
            decoder_attention_heads=4,
            encoder_ffn_dim=64,
            decoder_ffn_dim=64,
            vocab_size=V,
            num_mel_bins=16,
            max_source_positions=16,
            max_target_positions=32,
            decoder_start_token_id=1,
            pad_token_id=0,
            eos_token_id=2,
            bos_token_id=1,
        ),
        _whisper,
        "seq2seq",
    ),
    "wav2vec2-ctc": (
        lambda: _model(
            "Wav2Vec2Config",
            "Wav2Vec2ForCTC",
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            vocab_size=20,
            conv_dim=(16, 16),
            conv_stride=(5, 4),
            conv_kernel=(10, 8),
            num_conv_pos_embeddings=8,
            num_conv_pos_embedding_groups=2,
            ctc_loss_reduction="mean",
            pad_token_id=0,
        ),
        _ctc,
        "ctc",
    ),
}
NAMES = sorted(FAMILIES)
# transformers 5 keeps experts as fused 3-D parameters and the router's weight in a module of its own:
# "all-linear" does not reach them, target_parameters does (LoRA per expert, PEFT's ParamWrapper)
MOE = ("mixtral", "qwen2-moe", "qwen3-moe")
EXPERTS = ("experts.gate_up_proj", "experts.down_proj", "mlp.gate.weight")
CONFIG = ak.LoRAConfig(rank=4, alpha=8, targets="all-linear")


def _config(family: str) -> ak.LoRAConfig:
    return dataclasses.replace(CONFIG, target_parameters=EXPERTS) if family in MOE else CONFIG


def _out(model, inputs):
    out = model(**inputs)
    return out.logits_per_image if hasattr(out, "logits_per_image") else out.logits


def _noised(model):
    """Adapter B factors moved off zero, so the adapter changes the output."""
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for _name, p in model.named_parameters():
            if p.requires_grad:
                p.add_(0.2 * torch.randn(p.shape, generator=gen))
    return model


def _close(actual, expected, rtol=1e-4):
    assert_close_scaled(actual, expected, rtol=rtol, atol_scale=rtol)


@torch.no_grad()
def _eval_loss(model, inputs) -> float:
    flags = {m: m.training for m in model.modules()}
    model.eval()
    loss = model(**inputs).loss.item()
    for m, flag in flags.items():
        m.training = flag
    return loss


KNOWN: dict[str, str] = {}


@pytest.mark.parametrize(
    "family",
    [pytest.param(n, marks=pytest.mark.xfail(strict=True, reason=KNOWN[n])) if n in KNOWN else n for n in NAMES],
)
def test_attach_train_save_load_merge(family, tmp_path):
    make, inputs_fn, kind = FAMILIES[family]
    base, inputs = make(), inputs_fn()
    model = ak.attach(copy.deepcopy(base), _config(family))
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert trainable and sum(p.numel() for p in trainable) < sum(p.numel() for p in base.parameters())
    model.train()
    for module in model.modules():  # running statistics are base state, not saved with an adapter (as
        if isinstance(module, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):  # in PEFT): keep them frozen
            module.eval()
    optim = torch.optim.AdamW(trainable, lr=1e-2)
    before = _eval_loss(model, inputs)  # without dropout: the loss falls, not the noise
    for _ in range(6):
        model(**inputs).loss.backward()
        optim.step()
        optim.zero_grad()
    after = _eval_loss(model, inputs)
    assert after < before, (before, after)
    model.eval()
    with torch.no_grad():
        expected = _out(model, inputs)
        assert not torch.allclose(expected, _out(base, inputs))  # the adapter changed the output
        ak.save_adapter(model, tmp_path / "a")
        loaded = ak.load_adapter(copy.deepcopy(base), tmp_path / "a").eval()
        _close(_out(loaded, inputs), expected, rtol=1e-5)
        merged = ak.merge(copy.deepcopy(model))
        assert not any(isinstance(m, ak.AdapterLayer) for m in merged.modules())
        _close(_out(merged, inputs), expected)
        if kind in ("causal", "seq2seq"):
            source = {k: v for k, v in inputs.items() if k not in ("labels",)}
            kw = dict(max_new_tokens=3, do_sample=False, pad_token_id=0)
            assert torch.equal(model.generate(**source, **kw), merged.generate(**source, **kw))


def _headed_task(model):
    """The task adapterkit writes for ``model`` where PEFT's wrapper for it saves heads whole, else None."""
    task = task_type(model)
    return task if task in PEFT_HEADS else None


@pytest.mark.parametrize("family", NAMES)
def test_equals_peft_on_the_same_weights(family):
    """Both sides get the same targets: "all-linear" as PEFT resolves it for the task adapterkit writes
    in its files (PEFT's task wrapper saves its heads whole); for a mixture of experts, the modules
    adapterkit picks plus the same target_parameters (PEFT's all-linear on Mixtral also converts
    transformers-4 expert names into parameter targets, with ranks of its own)."""
    peft = pytest.importorskip("peft")
    make, inputs_fn, _ = FAMILIES[family]
    base, inputs = make(), inputs_fn()
    config = _config(family)
    ours = _noised(ak.attach(copy.deepcopy(base), config)).eval()
    ours_layers = {n for n, _ in ak.inject.adapter_layers(ours)}
    targets = "all-linear"
    if family in MOE:
        targets = sorted(n for n, layer in ak.inject.adapter_layers(ours) if isinstance(layer, LoRALayer))
    theirs = peft.get_peft_model(
        copy.deepcopy(base),
        peft.LoraConfig(
            r=4,
            lora_alpha=8,
            target_modules=targets,
            init_lora_weights=False,
            task_type=_headed_task(base),
            target_parameters=list(config.target_parameters) or None,
        ),
    ).eval()
    theirs_layers = {
        n.removeprefix("base_model.model.").replace(".base_layer", "")
        for n, m in theirs.named_modules()
        if hasattr(m, "lora_A")
    }
    assert ours_layers == theirs_layers  # "all-linear" picks the same modules as PEFT
    copy_by_file_keys(ours, theirs)
    with torch.no_grad():
        _close(_out(ours, inputs), _out(theirs, inputs), rtol=1e-5)


def test_expert_weights_stored_as_fused_parameters_are_refused_clearly():
    """transformers 5 stores a mixture of experts' weights as fused parameters, not Linear layers:
    targeting the module is refused, naming the way that works (target_parameters)."""
    model = FAMILIES["mixtral"][0]()
    with pytest.raises(ak.UnsupportedModuleError, match="experts"):
        ak.attach(model, ak.LoRAConfig(targets=("experts",)))
    with pytest.raises(ak.TargetError, match="experts.gate_up_proj"):
        ak.attach(model, ak.LoRAConfig(targets=("q_proj",), target_parameters=("experts",)))

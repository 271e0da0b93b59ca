"""Prompt tuning, P-tuning and prefix tuning against PEFT 0.21: logits and loss with weights
copied structurally, PEFT files both ways, gradients, inits (generation: test_prompt_generate.py)."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch

import adapterkit as ak
from adapterkit import checkpointing
from adapterkit.inject import adapter_layers
from adapterkit.methods.prompt import VirtualTokenLayer
from tests.models import VOCAB, tiny_bert, tiny_gpt2, tiny_llama, tokens
from tests.peft_twin import peft_reference

peft = pytest.importorskip("peft")

N = 3
METHODS = {
    "prompt": (
        lambda: ak.PromptTuningConfig(num_virtual_tokens=N),
        lambda task: peft.PromptTuningConfig(task_type=task, num_virtual_tokens=N),
    ),
    "ptuning-mlp": (
        lambda: ak.PromptEncoderConfig(num_virtual_tokens=N, encoder_hidden_size=24),
        lambda task: peft.PromptEncoderConfig(task_type=task, num_virtual_tokens=N, encoder_hidden_size=24),
    ),
    "ptuning-lstm": (
        lambda: ak.PromptEncoderConfig(num_virtual_tokens=N, encoder="lstm", encoder_hidden_size=12),
        lambda task: peft.PromptEncoderConfig(
            task_type=task, num_virtual_tokens=N, encoder_hidden_size=12, encoder_reparameterization_type="LSTM"
        ),
    ),
    "prefix": (
        lambda: ak.PrefixTuningConfig(num_virtual_tokens=N),
        lambda task: peft.PrefixTuningConfig(task_type=task, num_virtual_tokens=N),
    ),
    "prefix-mlp": (
        lambda: ak.PrefixTuningConfig(num_virtual_tokens=N, projection=True, encoder_hidden_size=20),
        lambda task: peft.PrefixTuningConfig(
            task_type=task, num_virtual_tokens=N, prefix_projection=True, encoder_hidden_size=20
        ),
    ),
}
MODELS = {"llama": (tiny_llama, "CAUSAL_LM"), "gpt2": (tiny_gpt2, "CAUSAL_LM"), "bert": (tiny_bert, "SEQ_CLS")}
GRID = [(m, k) for m in METHODS for k in MODELS]


def _inputs(task):
    ids = tokens()
    mask = torch.ones_like(ids)
    mask[0, :2] = 0  # left padding
    labels = ids if task == "CAUSAL_LM" else torch.tensor([0, 2])
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def _adapter(model, name="default"):
    return next(layer.adapters[name] for _, layer in adapter_layers(model) if isinstance(layer, VirtualTokenLayer))


def _pair(method, model):
    make, task = MODELS[model]
    ours_cfg, peft_cfg = METHODS[method]
    base = make()
    ours = ak.attach(copy.deepcopy(base), ours_cfg())
    theirs = peft.get_peft_model(copy.deepcopy(base), peft_cfg(task))
    encoder = theirs.prompt_encoder["default"]
    mine = _adapter(ours)
    with torch.no_grad():
        mine.embedding.copy_(encoder.embedding.weight)
        for part in ("mlp_head", "lstm_head", "transform"):
            if getattr(mine, part, None) is not None:
                getattr(mine, part).load_state_dict(getattr(encoder, part).state_dict())
        if task == "SEQ_CLS":  # PEFT trains a copy of the head; ours is the original, equal at start
            assert torch.equal(theirs.base_model.classifier.modules_to_save["default"].weight, base.classifier.weight)
    return base, ours, theirs.eval(), task


@pytest.mark.parametrize("method,model", GRID)
def test_logits_and_loss_match_peft(method, model):
    _, ours, theirs, task = _pair(method, model)
    b = peft_reference(lambda: theirs(**_inputs(task)), f"{method} on {model}")
    a = ours(**_inputs(task))
    assert a.logits.shape == b.logits.shape
    if method.startswith(("prompt", "ptuning")) and task == "CAUSAL_LM":
        assert a.logits.shape[1] == N + tokens().shape[1]  # virtual tokens come first, as in PEFT
    torch.testing.assert_close(a.logits, b.logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(a.loss, b.loss, atol=1e-5, rtol=1e-5)


def _noise(model, seed=5):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.3 * torch.randn(p.shape, generator=gen))


@pytest.mark.parametrize("method,model", GRID)
def test_peft_files_load_with_identical_logits(method, model, tmp_path):
    base, _, theirs, task = _pair(method, model)
    _noise(theirs)
    expected = peft_reference(lambda: theirs(**_inputs(task)).logits, f"{method} on {model}")
    theirs.save_pretrained(tmp_path)
    ours = ak.load_adapter(copy.deepcopy(base), tmp_path)
    torch.testing.assert_close(ours(**_inputs(task)).logits, expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("method,model", GRID)
def test_adapterkit_files_load_in_peft(method, model, tmp_path):
    make, task = MODELS[model]
    base = make()
    config = METHODS[method][0]()
    if task == "SEQ_CLS":  # PEFT's SEQ_CLS models expect the trained head in the file
        import dataclasses

        config = dataclasses.replace(config, train_modules=("classifier",))
    ours = ak.attach(copy.deepcopy(base), config)
    _noise(ours)
    ak.save_adapter(ours, tmp_path)
    theirs = peft.PeftModel.from_pretrained(copy.deepcopy(base), tmp_path).eval()
    expected = peft_reference(lambda: theirs(**_inputs(task)).logits, f"{method} on {model}")
    torch.testing.assert_close(ours(**_inputs(task)).logits, expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("method", list(METHODS))
def test_gradients_reach_the_virtual_tokens_only(method):
    model = ak.attach(tiny_llama(), METHODS[method][0]())
    model(**_inputs("CAUSAL_LM")).loss.backward()
    adapter = _adapter(model)
    assert adapter.embedding.grad is not None and adapter.embedding.grad.abs().sum() > 0
    assert all(p.grad is None for n, p in model.named_parameters() if ".adapters." not in n)


def test_init_from_text_matches_peft(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {f"w{i}": i for i in range(VOCAB - 1)} | {"[UNK]": VOCAB - 1}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]").save_pretrained(tmp_path)
    text = "w5 w17 w3"
    base = tiny_llama()
    ours = ak.attach(
        copy.deepcopy(base),
        ak.PromptTuningConfig(num_virtual_tokens=7, init="text", init_text=text, tokenizer=str(tmp_path)),
    )
    theirs = peft.get_peft_model(
        copy.deepcopy(base),
        peft.PromptTuningConfig(
            task_type="CAUSAL_LM",
            num_virtual_tokens=7,
            prompt_tuning_init="TEXT",
            prompt_tuning_init_text=text,
            tokenizer_name_or_path=str(tmp_path),
        ),
    )
    expected = base.model.embed_tokens.weight[[5, 17, 3, 5, 17, 3, 5]]
    torch.testing.assert_close(_adapter(ours).embedding, expected)
    torch.testing.assert_close(_adapter(ours).embedding, theirs.prompt_encoder["default"].embedding.weight)


def test_init_from_vocabulary_copies_embedding_rows():
    model = ak.attach(tiny_llama(), ak.PromptTuningConfig(num_virtual_tokens=5, init="vocab"))
    table, rows = _adapter(model).embedding, model.model.embed_tokens.weight
    assert all((rows == row).all(dim=1).any() for row in table)


def test_prompt_and_prefix_together_and_positional_input():
    ids = tokens()
    model = ak.attach(tiny_llama(), ak.PromptTuningConfig(num_virtual_tokens=2), name="p")
    ak.attach(model, ak.PrefixTuningConfig(num_virtual_tokens=3), name="k")
    ak.set_active(model, ["p", "k"])
    out = model(ids).logits  # positional input_ids
    assert out.shape == (2, 2 + ids.shape[1], VOCAB)
    assert model.generate(ids, max_new_tokens=3, do_sample=False, pad_token_id=0).shape == (2, ids.shape[1] + 3)
    ak.set_active(model, "k")
    assert model(ids).logits.shape == (2, ids.shape[1], VOCAB)
    ak.detach(model)
    assert not model._forward_pre_hooks


def test_config_errors_name_the_problem():
    with pytest.raises(ak.ConfigError, match="init_text"):
        ak.PromptTuningConfig(init="text")
    with pytest.raises(ak.ConfigError, match="encoder"):
        ak.PromptEncoderConfig(encoder="gru")
    with pytest.raises(ak.ConfigError, match="num_virtual_tokens"):
        ak.PrefixTuningConfig(num_virtual_tokens=0)
    from tests.models import tiny_t5

    with pytest.raises(ak.UnsupportedModuleError, match="encoder-decoder"):
        ak.attach(tiny_t5(), ak.PrefixTuningConfig())
    with pytest.raises(ak.UnsupportedModuleError, match="get_input_embeddings"):
        ak.attach(torch.nn.Sequential(torch.nn.Linear(3, 3)), ak.PromptTuningConfig())


def test_gradient_checkpointing_works_with_prompts_and_is_refused_clearly_with_prefixes():
    ids = tokens()
    prompt = ak.attach(tiny_llama(), ak.PromptTuningConfig(num_virtual_tokens=2)).train()
    plain = copy.deepcopy(prompt)
    prefix = ak.attach(tiny_llama(), ak.PrefixTuningConfig(num_virtual_tokens=2)).train()
    with warnings.catch_warnings():  # no deprecated transformers name (gradient_ -> activation_checkpointing)
        warnings.simplefilter("error", FutureWarning)
        checkpointing.enable(prompt, use_reentrant=True)  # transformers' default
        torch.testing.assert_close(prompt(ids, labels=ids).loss, plain(ids, labels=ids).loss)
        checkpointing.enable(prefix, use_reentrant=True)
        with pytest.raises(ak.UnsupportedModuleError, match="activation_checkpointing_disable"):
            prefix(ids, labels=ids)


def test_hook_is_kept_by_handle_and_deep_copies_get_their_own():
    """The model's virtual-token hook: one per model, a deep copy has its own (detaching the copy
    leaves the original's), and detach removes it, so the base model's forward comes back."""
    model = tiny_llama()
    base = model(input_ids=tokens()).logits
    ak.attach(model, ak.PromptTuningConfig(num_virtual_tokens=3))
    ak.attach(model, ak.PromptTuningConfig(num_virtual_tokens=2), name="second")
    with torch.no_grad():
        for _, layer in adapter_layers(model):
            for adapter in layer.adapters.values():
                for p in adapter.parameters():
                    p.normal_()
    adapted = model(input_ids=tokens()).logits
    twin = copy.deepcopy(model)
    torch.testing.assert_close(twin(input_ids=tokens()).logits, adapted)
    ak.detach(twin)
    torch.testing.assert_close(twin(input_ids=tokens()).logits, base)
    torch.testing.assert_close(model(input_ids=tokens()).logits, adapted)  # the original keeps its hook
    ak.detach(model)
    torch.testing.assert_close(model(input_ids=tokens()).logits, base)
    ak.attach(model, ak.PromptTuningConfig(num_virtual_tokens=3))  # installs again, once
    assert model(input_ids=tokens()).logits.shape[1] == tokens().shape[1] + 3

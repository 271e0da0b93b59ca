"""LoRA on embed_tokens / lm_head against PEFT 0.21, both ways: the base-layer weights PEFT saves
beside them, tied embeddings (with and without ensure_weight_tying), a resized vocabulary."""

import warnings

import pytest
import torch
from safetensors.torch import load_file, save_file

import adapterkit as ak
from adapterkit.errors import AdapterFileError
from tests.models import tiny_llama, tokens

peft = pytest.importorskip("peft")

CASES = {  # name: (model overrides, PEFT LoraConfig fields)
    "embed": ({}, dict(target_modules=["q_proj", "embed_tokens"])),
    "lm_head": ({}, dict(target_modules=["q_proj", "lm_head"])),
    "both": ({}, dict(target_modules=["embed_tokens", "lm_head"])),
    "tied-embed": (dict(tie_word_embeddings=True), dict(target_modules=["embed_tokens"])),
    "tied-lm_head": (dict(tie_word_embeddings=True), dict(target_modules=["lm_head"])),
    "tied-both": (dict(tie_word_embeddings=True), dict(target_modules=["embed_tokens", "lm_head"])),
    "tied-ensure": (dict(tie_word_embeddings=True), dict(target_modules=["embed_tokens"], ensure_weight_tying=True)),
    "tied-ensure-both": (
        dict(tie_word_embeddings=True),
        dict(target_modules=["embed_tokens", "lm_head"], ensure_weight_tying=True),
    ),
    "tied-save-embed": (
        dict(tie_word_embeddings=True),
        dict(target_modules=["q_proj"], modules_to_save=["embed_tokens"]),
    ),
    "tied-save-embed-ensure": (
        dict(tie_word_embeddings=True),
        dict(target_modules=["q_proj"], modules_to_save=["embed_tokens"], ensure_weight_tying=True),
    ),
}


def _logits(model):
    with torch.no_grad():
        return model(input_ids=tokens()).logits


def _close(got, expected):
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-5)  # logits up to ~500 here


def _peft_model(overrides, fields):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PEFT's notes on tied weights and saved embeddings
        theirs = peft.get_peft_model(tiny_llama(**overrides), peft.LoraConfig(r=2, init_lora_weights=False, **fields))
    with torch.no_grad():
        for name, p in theirs.named_parameters():
            if "modules_to_save" in name:
                p.add_(torch.randn_like(p))
    return theirs.eval()


def _save(theirs, folder):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs.save_pretrained(folder)


@pytest.mark.parametrize("case", CASES)
def test_peft_saves_adapterkit_loads(tmp_path, case):
    overrides, fields = CASES[case]
    theirs = _peft_model(overrides, fields)
    _save(theirs, tmp_path)
    keys = load_file(tmp_path / "adapter_model.safetensors")
    if "modules_to_save" not in fields:  # PEFT wrote the unchanged base embeddings beside the adapter
        assert any(".base_layer.weight" in k for k in keys)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # base weights equal to the model's: nothing to say
        warnings.filterwarnings("ignore", message=".*tied weights")  # attach's note on tied embeddings
        ours = ak.load_adapter(tiny_llama(**overrides), tmp_path)
    _close(_logits(ours), _logits(theirs))
    assert (_logits(ours) - _logits(tiny_llama(**overrides))).abs().max() > 1e-3


@pytest.mark.parametrize("case", [c for c in CASES if "ensure" not in c])
def test_adapterkit_saves_peft_loads(tmp_path, case):
    overrides, fields = CASES[case]
    targets = [t for t in fields["target_modules"]]
    ours = ak.attach(
        tiny_llama(**overrides),
        ak.LoRAConfig(rank=2, targets=targets, init="random", train_modules=fields.get("modules_to_save", ())),
    )
    with torch.no_grad():
        for _name, p in ours.named_parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.1)
    ak.save_adapter(ours, tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = peft.PeftModel.from_pretrained(tiny_llama(**overrides), tmp_path).eval()
    _close(_logits(theirs), _logits(ours))
    again = ak.load_adapter(tiny_llama(**overrides), tmp_path)
    _close(_logits(again), _logits(ours))


def test_changed_base_embedding_is_loaded_into_the_base_with_a_warning(tmp_path):
    theirs = _peft_model({}, dict(target_modules=["q_proj", "embed_tokens"]))
    with torch.no_grad():  # e.g. rows of new tokens, trained or initialised before the adapter
        theirs.base_model.model.model.embed_tokens.base_layer.weight[:5].normal_()
    _save(theirs, tmp_path)
    model = tiny_llama()
    with pytest.warns(UserWarning, match=r"model\.embed_tokens\.weight.*copied into the model's base layers"):
        ak.load_adapter(model, tmp_path)
    _close(_logits(model), _logits(theirs))
    with warnings.catch_warnings():  # PEFT's own loader does the same
        warnings.simplefilter("ignore")
        peft_again = peft.PeftModel.from_pretrained(tiny_llama(), tmp_path).eval()
    _close(_logits(peft_again), _logits(theirs))


def test_base_weights_saved_in_lower_precision_are_not_a_change(tmp_path):
    theirs = _peft_model({}, dict(target_modules=["embed_tokens"]))
    _save(theirs, tmp_path)
    file = tmp_path / "adapter_model.safetensors"
    save_file({k: v.to(torch.bfloat16) for k, v in load_file(file).items()}, file, metadata={"format": "pt"})
    model = tiny_llama()
    before = model.model.embed_tokens.weight.clone()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ak.load_adapter(model, tmp_path)
    assert torch.equal(model.model.embed_tokens.base.weight, before)  # the model keeps its fp32 weights


def test_resized_vocabulary(tmp_path):
    base_dir = tmp_path / "base"
    tiny_llama().save_pretrained(base_dir)
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(base_dir).eval()  # PEFT compares with its config.json
    model.resize_token_embeddings(101)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = peft.get_peft_model(
            model, peft.LoraConfig(r=2, target_modules=["q_proj"], init_lora_weights=False)
        ).eval()
        theirs.save_pretrained(tmp_path / "adapter")  # PEFT adds the resized embeddings whole
    keys = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    assert keys["base_model.model.model.embed_tokens.weight"].shape == (101, 32)
    with pytest.raises(AdapterFileError, match=r"resize_token_embeddings\(101\)"):
        ak.load_adapter(tiny_llama(), tmp_path / "adapter")
    fresh = tiny_llama()
    fresh.resize_token_embeddings(101)
    with torch.no_grad():  # new rows drawn afresh: the file's rows replace them
        fresh.model.embed_tokens.weight[97:].normal_()
        fresh.lm_head.weight[97:].normal_()
    with pytest.warns(UserWarning, match="embed_tokens.weight"):
        ak.load_adapter(fresh, tmp_path / "adapter")
    ids = torch.tensor([[100, 98, 3, 7]])
    with torch.no_grad():
        _close(fresh(input_ids=ids).logits, theirs(input_ids=ids).logits)


@pytest.mark.parametrize("targets", [["q_proj"], ["q_proj", "embed_tokens"]])
def test_adapterkit_saves_a_resized_vocabulary_as_peft_does(tmp_path, targets):
    from transformers import LlamaForCausalLM

    tiny_llama().save_pretrained(tmp_path / "base")
    model = LlamaForCausalLM.from_pretrained(tmp_path / "base").eval()
    model.resize_token_embeddings(101)  # new tokens: their rows exist only in this model
    ak.attach(model, ak.LoRAConfig(rank=2, targets=targets, init="random"))
    ak.save_adapter(model, tmp_path / "adapter")
    keys = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    emb = "base_layer.weight" if "embed_tokens" in targets else "weight"
    assert keys[f"base_model.model.model.embed_tokens.{emb}"].shape == (101, 32)
    assert keys["base_model.model.lm_head.weight"].shape == (101, 32)
    ids = torch.tensor([[100, 99, 3, 7]])
    with torch.no_grad():
        expected = model(input_ids=ids).logits
    for loader in ("adapterkit", "peft"):
        fresh = LlamaForCausalLM.from_pretrained(tmp_path / "base").eval()
        fresh.resize_token_embeddings(101)
        with torch.no_grad():
            fresh.model.embed_tokens.weight[97:].normal_()
            fresh.lm_head.weight[97:].normal_()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            loaded = (
                ak.load_adapter(fresh, tmp_path / "adapter")
                if loader == "adapterkit"
                else peft.PeftModel.from_pretrained(fresh, tmp_path / "adapter").eval()
            )
        with torch.no_grad():
            _close(loaded(input_ids=ids).logits, expected)

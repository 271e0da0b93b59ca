"""adapterkit's LoRA, rsLoRA and DoRA against PEFT 0.21 on the same weights."""

import pytest
import torch

import adapterkit as ak
from tests.models import tiny_bert, tiny_gpt2, tiny_llama, tokens
from tests.peft_twin import twins

MODELS = {"llama": tiny_llama, "gpt2": tiny_gpt2, "bert": tiny_bert}
VARIANTS = {
    "lora": dict(),
    "rslora": dict(rslora=True),
    "dora": dict(dora=True),
}


def _peft_extra(model_name):
    if model_name == "bert":  # the task adapterkit's files say: PEFT's wrapper keeps the head out of LoRA
        return {"task_type": "SEQ_CLS"}
    return {"fan_in_fan_out": True} if model_name == "gpt2" else {}


def _twins(model_name, variant):
    cfg = ak.LoRAConfig(rank=4, alpha=8, targets="all-linear", init="random", **VARIANTS[variant])
    return twins(MODELS[model_name], cfg, **_peft_extra(model_name))


def _logits(model, x):
    return model(input_ids=x).logits


@pytest.mark.parametrize("model_name", MODELS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_logits_equal_peft(model_name, variant):
    ours, theirs = _twins(model_name, variant)
    x = tokens()
    with torch.no_grad():
        torch.testing.assert_close(_logits(ours, x), _logits(theirs, x), atol=1e-5, rtol=0)
        with ak.disabled(ours), theirs.disable_adapter():
            torch.testing.assert_close(_logits(ours, x), _logits(theirs, x), atol=1e-5, rtol=0)


@pytest.mark.parametrize("model_name", MODELS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_gradients_equal_peft(model_name, variant):
    ours, theirs = _twins(model_name, variant)
    x = tokens()
    _logits(ours, x).square().mean().backward()
    _logits(theirs, x).square().mean().backward()
    peft_grads = {}
    for name, p in theirs.named_parameters():
        if p.requires_grad:
            peft_grads[name] = p.grad
    for layer_name, layer in ak.inject.adapter_layers(ours):
        lora = layer.adapters["default"]
        prefix = f"base_model.model.{layer_name}"
        torch.testing.assert_close(lora.a.grad, peft_grads[f"{prefix}.lora_A.default.weight"], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(lora.b.grad, peft_grads[f"{prefix}.lora_B.default.weight"], atol=1e-5, rtol=1e-4)
        if lora.magnitude is not None:
            torch.testing.assert_close(
                lora.magnitude.grad, peft_grads[f"{prefix}.lora_magnitude_vector.default.weight"], atol=1e-5, rtol=1e-4
            )


@pytest.mark.parametrize("model_name", MODELS)
@pytest.mark.parametrize("targets", ["all-linear", ("q_proj", "v_proj", "c_attn", "query", "value")])
@pytest.mark.parametrize("dora", [False, True])
def test_trainable_counts_equal_peft(model_name, targets, dora):
    from peft import LoraConfig, get_peft_model

    model = MODELS[model_name]()
    present = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    if not isinstance(targets, str):
        targets = tuple(t for t in targets if t in present)
    head = ("classifier",) if model_name == "bert" else ()  # PEFT's SEQ_CLS wrapper trains the head whole
    cfg = ak.LoRAConfig(rank=8, alpha=16, targets=targets, dora=dora, train_modules=head)
    ours = ak.attach(model, cfg)
    theirs = get_peft_model(
        MODELS[model_name](),
        LoraConfig(
            r=8,
            lora_alpha=16,
            use_dora=dora,
            task_type="SEQ_CLS" if head else None,
            target_modules=targets if isinstance(targets, str) else list(targets),
        ),
    )
    trainable, total = theirs.get_nb_trainable_parameters()
    assert ak.summary(ours).trainable == trainable
    assert ak.summary(ours).total == total


def test_train_modules_match_peft_modules_to_save():
    from peft import LoraConfig, get_peft_model

    cfg = ak.LoRAConfig(rank=4, alpha=8, targets=("query", "value"), train_modules=("classifier",))
    ours = ak.attach(tiny_bert(), cfg)
    theirs = get_peft_model(
        tiny_bert(), LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value"], modules_to_save=["classifier"])
    )
    assert ak.summary(ours).trainable == theirs.get_nb_trainable_parameters()[0]
    x = tokens()
    with torch.no_grad():
        torch.testing.assert_close(ours(input_ids=x).logits, theirs(input_ids=x).logits)


def test_eval_mode_dropout_equals_peft():
    cfg = ak.LoRAConfig(rank=4, alpha=8, dropout=0.3, targets="all-linear", init="random")
    ours, theirs = twins(tiny_llama, cfg)
    ours.eval(), theirs.eval()
    x = tokens()
    with torch.no_grad():
        torch.testing.assert_close(ours(input_ids=x).logits, theirs(input_ids=x).logits, atol=1e-5, rtol=0)


def test_embedding_and_conv2d_equal_peft():
    from tests.models import TinyCNN

    cfg = ak.LoRAConfig(rank=2, alpha=6, targets=("conv", "embed", "fc"), init="random")
    ours, theirs = twins(TinyCNN, cfg)
    image, ids = torch.randn(2, 3, 4, 4), torch.tensor([3, 5])
    with torch.no_grad():
        # PEFT initialises embeddings' A to zero even with init_lora_weights=False: make them differ from 0
        for _, layer in ak.inject.adapter_layers(ours):
            layer.adapters["default"].a.normal_()
        from tests.peft_twin import copy_to_peft

        copy_to_peft(ours, theirs)
        expected = theirs(image, ids)
        with ak.disabled(ours):
            assert not torch.allclose(ours(image, ids), expected, atol=1e-3)  # the adapters matter
        torch.testing.assert_close(ours(image, ids), expected, atol=1e-5, rtol=0)

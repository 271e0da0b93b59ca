"""Mixed-adapter batches (``adapter_names=``): each row equals that row run alone with its adapter,
and equals PEFT's ``model(x, adapter_names=...)`` on PEFT twins with the same weights."""

import pytest
import torch

import adapterkit as ak
from adapterkit.inject import adapter_layers
from tests.models import TinyCNN, tiny_bert, tiny_gpt2, tiny_llama, tiny_t5, tokens
from tests.peft_twin import named_twins

BASE = "__base__"
NAMES = ["y", BASE, "x", "z", "x", "y"]


def _lora(**kw):
    return ak.LoRAConfig(**{"rank": 4, "alpha": 8, "targets": "all-linear", "init": "random", **kw})


def _three(factory, **kw):
    """A model with adapters x, y, z (ranks 4, 2, 6; c rsLoRA), in eval mode."""
    model = factory()
    for name, extra in (("x", {}), ("y", {"rank": 2, "alpha": 6}), ("z", {"rank": 6, "rslora": True})):
        ak.attach(model, _lora(**{**extra, **kw}), name=name)
    return model.eval()


def _alone(model, names, run):
    """Row i run by itself with adapter names[i] active (the base model for "__base__")."""
    before, outs = ak.active_names(model), []
    for i, name in enumerate(names):
        if name == BASE:
            with ak.disabled(model):
                outs.append(run(i))
        else:
            ak.set_active(model, name)
            outs.append(run(i))
    ak.set_active(model, before)
    return torch.cat(outs)


def _close(got, expected):
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("factory", [tiny_llama, tiny_gpt2], ids=["llama", "gpt2"])
def test_each_row_equals_that_row_alone(factory):
    model, x = _three(factory), tokens(len(NAMES))
    with torch.no_grad():
        got = model(input_ids=x, adapter_names=NAMES).logits
        expected = _alone(model, NAMES, lambda i: model(input_ids=x[i : i + 1]).logits)
        assert not torch.allclose(got[0], got[2], atol=1e-3)  # the adapters differ
    _close(got, expected)
    assert all(layer.rows is None for _, layer in adapter_layers(model))  # handed back after the call
    assert ak.active_names(model) == ["z"]


@pytest.mark.parametrize(
    "names",
    [
        ["x", "x", "y", "y"],  # already in segments: no gather of the input
        ["x"] * 5 + ["y", "z"],  # uneven: padding would more than double the rows, so a loop per adapter
        ["z", BASE, BASE, BASE],  # one adapter, most rows base
        [BASE, BASE],  # nothing to add
    ],
)
def test_segment_shapes_equal_rows_alone(names):
    model, x = _three(tiny_llama), tokens(len(names))
    with torch.no_grad():
        got = model(input_ids=x, adapter_names=names).logits
        _close(got, _alone(model, names, lambda i: model(input_ids=x[i : i + 1]).logits))


@pytest.mark.parametrize("factory", [tiny_llama, tiny_gpt2], ids=["llama", "gpt2"])
def test_equals_peft(factory):
    configs = {"x": _lora(), "y": _lora(rank=2, alpha=6), "z": _lora(rank=6, rslora=True)}
    ours, theirs = named_twins(factory, configs, **({"fan_in_fan_out": True} if factory is tiny_gpt2 else {}))
    x = tokens(len(NAMES))
    with torch.no_grad():
        _close(ours(input_ids=x, adapter_names=NAMES).logits, theirs(input_ids=x, adapter_names=NAMES).logits)


def test_embedding_and_conv2d_rows_equal_peft_and_rows_alone():
    configs = {n: ak.LoRAConfig(rank=2, alpha=4, targets=("conv", "embed", "fc"), init="random") for n in "xy"}
    ours, theirs = named_twins(TinyCNN, configs)
    with torch.no_grad():
        for _, layer in adapter_layers(ours):  # PEFT starts embeddings' A at zero: make it matter
            for name in "xy":
                layer.adapters[name].a.normal_()
        from tests.peft_twin import copy_to_peft

        for name in "xy":
            copy_to_peft(ours, theirs, name)
        image, ids, names = torch.randn(4, 3, 4, 4), torch.tensor([3, 5, 7, 9]), ["x", BASE, "y", "x"]
        got = ours(image, ids, adapter_names=names)
        _close(got, theirs(image, ids, adapter_names=names))
        _close(got, _alone(ours, names, lambda i: ours(image[i : i + 1], ids[i : i + 1])))


def test_dora_rows_equal_rows_alone_where_peft_refuses_them():
    model = tiny_llama()
    ak.attach(model, _lora(dora=True), name="x")
    ak.attach(model, _lora(rank=2), name="y")
    model.eval()
    x, names = tokens(4), ["x", "y", BASE, "x"]
    with torch.no_grad():
        for _, layer in adapter_layers(model):  # magnitudes off ||W + s B A||, where they start
            layer.adapters["x"].magnitude.mul_(1.5)
        got = model(input_ids=x, adapter_names=names).logits
        _close(got, _alone(model, names, lambda i: model(input_ids=x[i : i + 1]).logits))


def test_train_modules_copies_per_row_equal_peft_modules_to_save():
    configs = {n: _lora(targets=("query", "value"), train_modules=("classifier",)) for n in "xy"}
    ours, theirs = named_twins(tiny_bert, configs)
    with torch.no_grad():
        for name in "xy":  # the copies start equal to the base head: make them differ
            copy = ours.classifier.adapters[name]
            copy.weight.normal_()
            theirs.base_model.model.classifier.modules_to_save[name].weight.copy_(copy.weight)
        x, names = tokens(4), ["x", BASE, "y", "y"]
        got = ours(input_ids=x, adapter_names=names).logits
        _close(got, _alone(ours, names, lambda i: ours(input_ids=x[i : i + 1]).logits))
        _close(got, theirs(input_ids=x, adapter_names=names).logits)


def test_encoder_decoder_rows_equal_rows_alone():
    model, x, names = _three(tiny_t5), tokens(3), ["z", BASE, "x"]
    target = tokens(3, 4)
    with torch.no_grad():
        got = model(input_ids=x, decoder_input_ids=target, adapter_names=names).logits
        expected = _alone(
            model, names, lambda i: model(input_ids=x[i : i + 1], decoder_input_ids=target[i : i + 1]).logits
        )
    _close(got, expected)


def test_quantized_base_rows_equal_rows_alone():
    model = ak.quantize(tiny_llama(), bits=4)
    for name in "xy":
        ak.attach(model, _lora(), name=name)
    model.eval()
    x, names = tokens(3), ["y", "x", BASE]
    with torch.no_grad():
        got = model(input_ids=x, adapter_names=names).logits
        _close(got, _alone(model, names, lambda i: model(input_ids=x[i : i + 1]).logits))


def test_gradients_flow_per_row_in_eval_mode():
    model, x, names = _three(tiny_llama), tokens(3), ["x", "z", "x"]
    model(input_ids=x, adapter_names=names).logits.square().sum().backward()
    got = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    for i, name in enumerate(names):
        ak.set_active(model, name)
        model(input_ids=x[i : i + 1]).logits.square().sum().backward()
    expected = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert got.keys() == expected.keys() and not any("adapters.y." in n for n in got)
    for name in got:
        scale = expected[name].abs().max().item()
        torch.testing.assert_close(got[name], expected[name], rtol=1e-4, atol=1e-5 * scale)


def test_none_is_an_ordinary_call_and_disabled_wins():
    model, x = _three(tiny_llama), tokens(2)
    with torch.no_grad():
        plain = model(input_ids=x).logits
        torch.testing.assert_close(model(input_ids=x, adapter_names=None).logits, plain, rtol=0, atol=0)
        with ak.disabled(model):
            base = model(input_ids=x).logits
            torch.testing.assert_close(model(input_ids=x, adapter_names=["x", "y"]).logits, base, rtol=0, atol=0)


# -- errors ---------------------------------------------------------------------------------------
def test_unknown_name_names_the_valid_ones():
    model = _three(tiny_llama)
    with pytest.raises(ak.AdapterNameError, match=r"'w'.*valid names: 'x', 'y', 'z' and '__base__'"):
        model(input_ids=tokens(2), adapter_names=["x", "w"])
    with pytest.raises(ak.AdapterNameError, match="did you mean '__base__'"):
        model(input_ids=tokens(2), adapter_names=["x", "__bass__"])


@pytest.mark.parametrize("names", [["x"], ["x", "y", "z"], "x", [], ["x", 3], ("x", None)])
def test_bad_names_are_refused_before_the_model_runs(names):
    model = _three(tiny_llama)
    with pytest.raises(ak.InputError, match="adapter_names"):
        model(input_ids=tokens(2), adapter_names=names)
    assert all(layer.rows is None for _, layer in adapter_layers(model))


def test_training_mode_is_refused():
    model = _three(tiny_llama).train()
    with pytest.raises(ak.InputError, match=r"inference.*model.eval\(\)"):
        model(input_ids=tokens(2), adapter_names=["x", "y"])


def test_an_error_inside_the_forward_hands_the_rows_back():
    model = _three(tiny_llama)
    with pytest.raises(IndexError):
        model(input_ids=torch.tensor([[1, 500]] * 2), adapter_names=["x", "y"])  # id past the vocabulary
    assert all(layer.rows is None for _, layer in adapter_layers(model))
    with torch.no_grad():
        model(input_ids=tokens(2))  # an ordinary call still works


def test_methods_without_rows_are_refused_clearly():
    model = ak.attach(tiny_llama(), _lora(), name="lora")
    ak.attach(model, ak.IA3Config(init="random"), name="ia3")
    model.eval()
    with pytest.raises(ak.UnsupportedModuleError, match="'ia3' is an adapter of method ia3"):
        model(input_ids=tokens(2), adapter_names=["lora", "ia3"])
    with pytest.raises(ak.UnsupportedModuleError, match=r"ia3 adapter\(s\) \['ia3'\] are active"):
        model(input_ids=tokens(2), adapter_names=["lora", BASE])
    ak.set_active(model, "lora")
    with torch.no_grad():
        model(input_ids=tokens(2), adapter_names=["lora", BASE])  # IA3 inactive: fine

    prompt = ak.attach(tiny_llama(), ak.PromptTuningConfig(num_virtual_tokens=2), name="p").eval()
    with pytest.raises(ak.UnsupportedModuleError, match="prompt_tuning"):
        prompt(input_ids=tokens(2), adapter_names=["p", BASE])


def test_detach_removes_the_hooks():
    model = tiny_llama()
    pre, post = len(model._forward_pre_hooks), len(model._forward_hooks)  # noqa: SLF001 - torch's own count
    _three(lambda: model)
    assert len(model._forward_pre_hooks) == pre + 1 and len(model._forward_hooks) == post + 1  # noqa: SLF001
    ak.detach(model)
    assert len(model._forward_pre_hooks) == pre and len(model._forward_hooks) == post  # noqa: SLF001


# -- generate -------------------------------------------------------------------------------------
GREEDY = dict(max_new_tokens=5, do_sample=False, pad_token_id=0)


@pytest.mark.parametrize("beams", [1, 2])
def test_generate_in_a_block_equals_each_row_alone(beams):
    model, x, names = _three(tiny_llama), tokens(3), ["z", BASE, "x"]
    kw = dict(GREEDY, num_beams=beams, num_return_sequences=beams)
    with torch.no_grad():
        with ak.mixed_batch(model, names) as same:
            assert same is model
            got = model.generate(x, **kw)  # (3 * beams, 7 + 5)
        expected = _alone(model, names, lambda i: model.generate(x[i : i + 1], **kw))
    assert torch.equal(got, expected)
    assert all(layer.rows is None for _, layer in adapter_layers(model))


def test_generate_with_beams_equals_peft():
    configs = {"x": _lora(), "y": _lora(rank=2, alpha=6)}
    ours, theirs = named_twins(tiny_llama, configs)
    x, names = tokens(3), ["y", "x", BASE]
    kw = dict(GREEDY, num_beams=2, num_return_sequences=2)
    with torch.no_grad(), ak.mixed_batch(ours, names):
        got = ours.generate(x, **kw)
    assert torch.equal(got, theirs.generate(input_ids=x, adapter_names=names, **kw))


def test_encoder_decoder_generate_with_beams_equals_each_row_alone():
    model, x, names = _three(tiny_t5), tokens(2), ["y", "x"]
    kw = dict(max_new_tokens=4, do_sample=False, num_beams=2)
    with torch.no_grad():
        with ak.mixed_batch(model, names):
            got = model.generate(x, **kw)
        expected = _alone(model, names, lambda i: model.generate(x[i : i + 1], **kw))
    assert torch.equal(got, expected)


def test_generate_refuses_the_keyword_so_the_block_carries_the_names():
    model = _three(tiny_llama)
    with pytest.raises(ValueError, match="adapter_names"):  # transformers' check of generate's kwargs
        model.generate(tokens(2), adapter_names=["x", "y"], **GREEDY)


def test_block_checks_names_and_lengths():
    model = _three(tiny_llama)
    with pytest.raises(ak.AdapterNameError, match="valid names"):
        with ak.mixed_batch(model, ["x", "nope"]):
            pass
    with pytest.raises(ak.InputError, match="2 names but the batch has 3 rows"):
        with torch.no_grad(), ak.mixed_batch(model, ["x", "y"]):
            model(input_ids=tokens(3))
    assert all(layer.rows is None for _, layer in adapter_layers(model))


def test_segments_pad_short_groups_and_give_up_on_uneven_ones():
    from adapterkit.methods.lora.mixed import _segments
    from adapterkit.rows import Rows

    cpu = torch.device("cpu")
    seg = _segments(Rows(["y", BASE, "x", "y", "x", "x"], repeat=False), 6, cpu, ("y", "x"))
    assert (seg.k, seg.m) == (2, 3)
    assert seg.take.tolist() == [0, 3, 0, 2, 4, 5]  # y's segment padded with its first row
    assert seg.dest.tolist() == [0, 3, 2, 4, 5] and seg.keep.tolist() == [0, 1, 3, 4, 5]
    assert _segments(Rows(["x"] * 5 + ["y", "z"], repeat=False), 7, cpu, ("x", "y", "z")) is None


def test_a_deep_copy_has_hooks_of_its_own_and_pickles():
    import copy
    import io

    model, x, names = _three(tiny_llama), tokens(2), ["x", "y"]
    twin = copy.deepcopy(model)
    with torch.no_grad():
        expected = model(input_ids=x, adapter_names=names).logits
        torch.testing.assert_close(twin(input_ids=x, adapter_names=names).logits, expected, rtol=0, atol=0)
    ak.detach(twin)
    assert not twin._forward_pre_hooks and not twin._forward_hooks  # noqa: SLF001 - torch's own dicts
    assert len(model._forward_pre_hooks) == 1 and len(model._forward_hooks) == 1  # noqa: SLF001
    buffer = io.BytesIO()
    torch.save(model, buffer)
    loaded = torch.load(io.BytesIO(buffer.getvalue()), weights_only=False)
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=x, adapter_names=names).logits, expected, rtol=0, atol=0)

"""save_adapter(state_dict=...): the adapter's tensors read from a given state dict (a sharded
model's, gathered whole: ``accelerator.get_state_dict(model)``), as PEFT's save_pretrained does."""

import pytest
import torch
from safetensors.torch import load_file

import adapterkit as ak
from adapterkit.errors import AdapterFileError
from tests.models import tiny_llama


def _model():
    return ak.attach(tiny_llama(), ak.LoRAConfig(rank=4, init="random", train_modules=("lm_head",)))


def test_tensors_come_from_the_state_dict(tmp_path):
    model = _model()
    ak.save_adapter(model, tmp_path / "live")
    given = {k: v + 1 for k, v in model.state_dict().items()}  # other values than the live ones
    ak.save_adapter(model, tmp_path / "given", state_dict=given)
    live, saved = (load_file(str(tmp_path / d / "adapter_model.safetensors")) for d in ("live", "given"))
    assert live.keys() == saved.keys() and any("lm_head" in k for k in saved)  # train_modules copy too
    for key in live:
        torch.testing.assert_close(saved[key], live[key] + 1, rtol=0, atol=1e-6)
    ak.save_adapter(model, tmp_path / "same", state_dict=model.state_dict())
    same = load_file(str(tmp_path / "same" / "adapter_model.safetensors"))
    assert all(torch.equal(same[k], live[k]) for k in live)


def test_only_what_the_adapter_saves_is_needed_and_a_missing_tensor_is_named(tmp_path):
    model = _model()
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    state = model.state_dict()
    ak.save_adapter(model, tmp_path / "part", state_dict={n: state[n] for n in names}, dtype="bf16")
    assert all(
        v.dtype == torch.bfloat16 for v in load_file(str(tmp_path / "part" / "adapter_model.safetensors")).values()
    )
    with pytest.raises(AdapterFileError, match=r"has no 'model\.layers\.0\.self_attn\.q_proj\.adapters\.default\.a'"):
        ak.save_adapter(model, tmp_path / "bad", state_dict={n: state[n] for n in names[1:]})
    assert not (tmp_path / "bad").exists()  # nothing half-written

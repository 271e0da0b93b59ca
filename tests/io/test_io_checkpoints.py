"""transformers' Trainer (and TRL's SFTTrainer) checkpoints of an adapted model: with
ak.checkpoint_callback() they hold the adapter in PEFT's layout plus the trainer's state, resume
exactly, and load with PEFT, ak.load_adapter and from_pretrained; without it they hold the whole
model under the base's own key names and still resume exactly."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import adapterkit as ak
from adapterkit.io.state import state_to_save
from tests.models import VOCAB, tiny_llama, tokens

TRAINER_FILES = {"optimizer.pt", "scheduler.pt", "rng_state.pth", "trainer_state.json", "training_args.bin"}
ADAPTER_FILES = {"adapter_config.json", "adapter_model.safetensors"}


def _adapted(model=None):
    return ak.attach(
        model if model is not None else tiny_llama(),
        ak.LoRAConfig(rank=4, alpha=8, dropout=0.1, targets=["q_proj", "v_proj", "up_proj"]),
    )


def _data(n=16):
    rows = torch.randint(0, VOCAB, (n, 8), generator=torch.Generator().manual_seed(3))
    return [{"input_ids": row, "labels": row} for row in rows]


def _args(out, **kw):
    from transformers import TrainingArguments

    base = dict(
        output_dir=str(out),
        per_device_train_batch_size=4,
        max_steps=4,
        learning_rate=1e-2,
        report_to=[],
        save_strategy="steps",
        save_steps=2,
        use_cpu=True,
        logging_strategy="no",
        disable_tqdm=True,
    )
    return TrainingArguments(**{**base, **kw})


def _train(model, out, callback=True, extra=(), resume=None, trainer_kw=None, **kw):
    from transformers import Trainer

    callbacks = ([ak.checkpoint_callback()] if callback else []) + list(extra)
    trainer = Trainer(
        model=model, args=_args(out, **kw), train_dataset=_data(), callbacks=callbacks, **(trainer_kw or {})
    )
    trainer.train(resume_from_checkpoint=resume)
    return trainer


def _stop_at(step):
    from transformers import TrainerCallback

    class Stop(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == step:
                control.should_training_stop = True

    return Stop()


def _state_dict_spy(sizes):
    """Records how many tensors each model.state_dict() call during training returns (the hook runs
    after ak.checkpoint_callback()'s own, so it sees what the Trainer's save_pretrained writes)."""
    from transformers import TrainerCallback

    class Spy(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kwargs):
            self.handle = model.register_state_dict_post_hook(lambda m, sd, prefix, meta: sizes.append(len(sd)))

        def on_train_end(self, args, state, control, **kwargs):
            self.handle.remove()

    return Spy()


def _assert_same_adapter(got: dict, want: dict):
    assert got.keys() == want.keys()
    for key, value in want.items():  # a tolerance scaled to the values (the runs are in fact bit-equal)
        torch.testing.assert_close(got[key], value, rtol=0, atol=1e-6 * float(value.abs().max()) + 1e-12)


def _logits(model):
    model.eval()
    with torch.no_grad():
        return model(tokens()).logits


def test_checkpoints_hold_the_adapter_and_the_trainer_state_not_the_model(tmp_path):
    sizes = []
    model = _adapted()
    _train(model, tmp_path, extra=[_state_dict_spy(sizes)])
    assert sizes == [len(state_to_save(model, "default"))] * 2  # the Trainer never wrote the whole model
    for step in (2, 4):
        folder = tmp_path / f"checkpoint-{step}"
        files = {p.name for p in folder.iterdir()}
        assert ADAPTER_FILES | TRAINER_FILES <= files
        assert "config.json" not in files  # from_pretrained never reads these weights as a model
        weights = load_file(folder / "model.safetensors")  # what resume_from_checkpoint reads
        assert set(weights) == {k for k in model.state_dict() if ".adapters." in k}
        assert json.loads((folder / "adapter_config.json").read_text())["peft_type"] == "LORA"
    _assert_same_adapter(
        load_file(tmp_path / "checkpoint-4" / "adapter_model.safetensors"), state_to_save(model, "default")
    )
    base_bytes = sum(t.numel() * t.element_size() for t in tiny_llama().state_dict().values())
    assert (tmp_path / "checkpoint-4" / "model.safetensors").stat().st_size < base_bytes / 5
    # training is over: the model's state dict is whole again
    assert set(tiny_llama().state_dict()) < set(model.state_dict())


@pytest.mark.parametrize("callback", [True, False], ids=["adapter-checkpoints", "whole-model-checkpoints"])
def test_resume_from_a_middle_checkpoint_equals_an_uninterrupted_run(tmp_path, callback):
    whole = _adapted()
    _train(whole, tmp_path / "whole", callback)
    _train(_adapted(), tmp_path / "cut", callback, extra=[_stop_at(2)])
    assert not (tmp_path / "cut" / "checkpoint-4").exists()
    resumed = _adapted()
    with torch.no_grad():  # the adapter must come from the checkpoint
        for p in resumed.parameters():
            if p.requires_grad:
                p.fill_(0.5)
    _train(resumed, tmp_path / "cut", callback, resume=str(tmp_path / "cut" / "checkpoint-2"))
    _assert_same_adapter(state_to_save(resumed, "default"), state_to_save(whole, "default"))
    assert (tmp_path / "cut" / "checkpoint-4").is_dir()


def test_the_final_adapter_loads_with_peft_and_adapterkit(tmp_path):
    from peft import PeftModel

    model = _adapted()
    _train(model, tmp_path)
    want = _logits(model)
    folder = tmp_path / "checkpoint-4"
    theirs = PeftModel.from_pretrained(tiny_llama(), folder)
    torch.testing.assert_close(_logits(theirs), want, rtol=1e-5, atol=1e-6)
    ours = ak.load_adapter(tiny_llama(), folder)
    torch.testing.assert_close(_logits(ours), want, rtol=0, atol=0)


def test_from_pretrained_of_a_checkpoint_is_the_trained_model(tmp_path):
    """No config.json: transformers loads the base adapter_config.json names, then the adapter."""
    from transformers import AutoModelForCausalLM, LlamaForCausalLM

    tiny_llama().save_pretrained(tmp_path / "base")
    model = _adapted(LlamaForCausalLM.from_pretrained(tmp_path / "base"))
    _train(model, tmp_path / "run")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "checkpoint-4")
    torch.testing.assert_close(_logits(reloaded), _logits(model), rtol=1e-5, atol=1e-6)


def test_from_pretrained_of_a_checkpoint_without_a_named_base_fails_loudly(tmp_path):
    from transformers import AutoModelForCausalLM

    _train(_adapted(), tmp_path, max_steps=2)  # a base built from a config has no name to load
    with pytest.raises((OSError, ValueError, TypeError)):
        AutoModelForCausalLM.from_pretrained(tmp_path / "checkpoint-2")


def test_whole_model_checkpoints_reload_the_real_base(tmp_path):
    """Without the callback: the whole model, base weights under their own names."""
    from transformers import LlamaForCausalLM

    _train(_adapted(), tmp_path, callback=False, max_steps=2)
    fresh, info = LlamaForCausalLM.from_pretrained(tmp_path / "checkpoint-2", output_loading_info=True)
    assert not info["missing_keys"]
    base = tiny_llama().state_dict()
    for key, value in fresh.state_dict().items():
        assert torch.equal(value, base[key]), key


@pytest.mark.parametrize("strategy", ["steps", "best"])
def test_load_best_model_at_end_loads_the_best_adapter(tmp_path, strategy):
    scores = iter([3.0, 1.0, 2.0])  # evaluated after steps 1, 2, 3: the best checkpoint is the middle one
    sizes = []
    model = _adapted()
    trainer = _train(
        model,
        tmp_path,
        extra=[_state_dict_spy(sizes)],
        max_steps=3,
        save_steps=1,
        save_strategy=strategy,
        eval_strategy="steps",
        eval_steps=1,
        load_best_model_at_end=True,
        metric_for_best_model="score",
        greater_is_better=False,
        trainer_kw=dict(eval_dataset=_data(4), compute_metrics=lambda _: {"score": next(scores)}),
    )
    saved = sorted(p.name for p in tmp_path.iterdir())
    assert saved == ["checkpoint-1", "checkpoint-2"] + (["checkpoint-3"] if strategy == "steps" else [])
    assert sizes == [len(state_to_save(model, "default"))] * len(saved)
    assert Path(trainer.state.best_model_checkpoint).name == "checkpoint-2"
    best = load_file(tmp_path / "checkpoint-2" / "adapter_model.safetensors")
    _assert_same_adapter(state_to_save(model, "default"), best)
    first = load_file(tmp_path / "checkpoint-1" / "adapter_model.safetensors")
    assert any(not torch.equal(first[k], best[k]) for k in best)


def test_adapter_only_loads_do_not_report_the_base_as_missing(tmp_path):
    model = _adapted()
    _train(model, tmp_path, max_steps=2)
    from transformers import Trainer

    fresh = _adapted()
    Trainer(model=fresh, args=_args(tmp_path / "other"), callbacks=[ak.checkpoint_callback()])
    result = fresh.load_state_dict(load_file(tmp_path / "checkpoint-2" / "model.safetensors"), strict=False)
    assert not result.missing_keys and not result.unexpected_keys
    result = _adapted().load_state_dict(load_file(tmp_path / "checkpoint-2" / "model.safetensors"), strict=False)
    assert set(result.missing_keys) == set(tiny_llama().state_dict())  # without the callback: listed


def test_a_4bit_base_checkpoints_only_the_adapter(tmp_path):
    """QLoRA: the checkpoint holds no quantized base either; the adapter reloads onto a fresh one."""
    model = _adapted(ak.quantize(tiny_llama(), bits=4))
    _train(model, tmp_path, max_steps=2)
    folder = tmp_path / "checkpoint-2"
    assert set(load_file(folder / "model.safetensors")) == {k for k in model.state_dict() if ".adapters." in k}
    loaded = ak.load_adapter(ak.quantize(tiny_llama(), bits=4), folder)
    torch.testing.assert_close(_logits(loaded), _logits(model), rtol=0, atol=0)


def _state_sizes(sizes):
    from transformers import TrainerCallback

    class Sizes(TrainerCallback):  # runs after ak.checkpoint_callback(): its state_dict() takes an armed hook
        def on_step_end(self, args, state, control, model=None, **kwargs):
            sizes.append(len(model.state_dict()))

    return Sizes()


def test_a_state_dict_call_before_a_save_still_leaves_a_small_checkpoint(tmp_path):
    """Another state_dict() call right before a save takes the armed hook: the Trainer then writes
    the whole model, and on_save rewrites model.safetensors with the adapters only."""
    sizes = []
    model = _adapted()
    _train(model, tmp_path, extra=[_state_sizes(sizes)])
    whole, adapters = len(model.state_dict()), len(state_to_save(model, "default"))
    assert sizes == [whole, adapters, whole, adapters]  # steps 1-4; saves after steps 2 and 4
    for step in (2, 4):
        folder = tmp_path / f"checkpoint-{step}"
        assert len(load_file(folder / "model.safetensors")) == adapters
        assert "config.json" not in {p.name for p in folder.iterdir()}


def test_a_failed_evaluation_at_a_save_step_leaves_the_state_dict_whole(tmp_path):
    def fail(_):
        raise RuntimeError("evaluation failed")

    model = _adapted()
    with pytest.raises(RuntimeError, match="evaluation failed"):
        _train(
            model,
            tmp_path,
            eval_strategy="steps",
            eval_steps=2,
            trainer_kw=dict(eval_dataset=_data(4), compute_metrics=fail),
        )
    assert set(tiny_llama().state_dict()) < set(model.state_dict())


def test_the_callback_refuses_a_model_without_adapters(tmp_path):
    with pytest.raises(ak.AdapterNameError, match="has none"):
        _train(tiny_llama(), tmp_path, max_steps=1)


def test_sft_trainer_checkpoints_hold_the_adapter(tmp_path):
    pytest.importorskip("trl")
    from datasets import Dataset
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast
    from trl import SFTConfig, SFTTrainer

    words = Tokenizer(WordLevel({f"t{i}": i for i in range(VOCAB)}, unk_token="t0"))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=words, pad_token="t0", eos_token="t1")
    rows = torch.randint(2, VOCAB, (16, 8), generator=torch.Generator().manual_seed(3)).tolist()
    model = _adapted()
    args = SFTConfig(
        output_dir=str(tmp_path),
        per_device_train_batch_size=4,
        max_steps=2,
        save_steps=1,
        learning_rate=1e-2,
        report_to=[],
        use_cpu=True,
        logging_strategy="no",
        disable_tqdm=True,
        bf16=False,
    )  # SFTConfig turns bf16 autocast on where it can; compare in fp32
    SFTTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_dict({"input_ids": rows}),
        processing_class=tokenizer,
        callbacks=[ak.checkpoint_callback()],
    ).train()
    for step in (1, 2):
        files = {p.name for p in (tmp_path / f"checkpoint-{step}").iterdir()}
        assert ADAPTER_FILES | TRAINER_FILES <= files and "config.json" not in files
    loaded = ak.load_adapter(tiny_llama(), tmp_path / "checkpoint-2")
    torch.testing.assert_close(_logits(loaded), _logits(model), rtol=0, atol=0)

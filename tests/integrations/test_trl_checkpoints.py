"""adapterkit's TRL trainers checkpoint the adapters (ak.checkpoint_callback() by default): a tiny DPO
run resumes exactly from a middle checkpoint, and the checkpoint's adapter loads in PEFT."""

import json

import pytest
import torch
from safetensors.torch import load_file

pytest.importorskip("trl")

import trl  # noqa: E402
from datasets import Dataset  # noqa: E402

import adapterkit as ak  # noqa: E402
from adapterkit.integrations.trl import DPOTrainer  # noqa: E402
from adapterkit.io.state import state_to_save  # noqa: E402
from adapterkit.io.trainer import AdapterCheckpoints  # noqa: E402
from tests.models import tiny_llama  # noqa: E402
from tests.training.helpers import char_tokenizer  # noqa: E402

TRAINER_FILES = {"optimizer.pt", "scheduler.pt", "rng_state.pth", "trainer_state.json", "training_args.bin"}
ADAPTER_FILES = {"adapter_config.json", "adapter_model.safetensors"}


def _base(tok):
    return tiny_llama(vocab_size=len(tok), pad_token_id=0, eos_token_id=1, bos_token_id=None)


def _policy(tok):
    return ak.attach(_base(tok), ak.LoRAConfig(rank=4, alpha=8, targets="all-linear", init="random"))


def _pairs():
    return Dataset.from_list([{"prompt": f"q{i}?", "chosen": f" yes{i}", "rejected": f" no{i}"} for i in range(8)])


def _args(out, **kw):
    return trl.DPOConfig(
        str(out),
        per_device_train_batch_size=4,
        max_steps=4,
        learning_rate=1e-2,
        beta=0.1,
        save_strategy="steps",
        save_steps=2,
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
        logging_strategy="no",
        seed=0,
        bf16=False,
        **kw,
    )


def _logits(model, tok):
    ids = torch.tensor([tok("q1? yes1")["input_ids"]])
    model.eval()
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_dpo_checkpoints_hold_the_adapter_resume_exactly_and_load_in_peft(tmp_path):
    from peft import PeftModel

    tok = char_tokenizer(template=False)
    whole = _policy(tok)
    DPOTrainer(whole, args=_args(tmp_path / "whole"), train_dataset=_pairs(), processing_class=tok).train()
    middle, last = tmp_path / "whole" / "checkpoint-2", tmp_path / "whole" / "checkpoint-4"
    for folder in (middle, last):
        files = {p.name for p in folder.iterdir()}
        assert ADAPTER_FILES | TRAINER_FILES <= files and "config.json" not in files
        assert set(load_file(folder / "model.safetensors")) == {k for k in whole.state_dict() if ".adapters." in k}
        assert json.loads((folder / "adapter_config.json").read_text())["peft_type"] == "LORA"
    base_bytes = sum(t.numel() * t.element_size() for t in _base(tok).state_dict().values())
    assert (last / "model.safetensors").stat().st_size < base_bytes / 5  # no full-model weights

    resumed = _policy(tok)
    with torch.no_grad():  # the adapter must come from the checkpoint
        for p in resumed.parameters():
            if p.requires_grad:
                p.fill_(0.5)
    DPOTrainer(resumed, args=_args(tmp_path / "resumed"), train_dataset=_pairs(), processing_class=tok).train(
        resume_from_checkpoint=str(middle)
    )
    got, want = state_to_save(resumed, "default"), state_to_save(whole, "default")
    assert got.keys() == want.keys()
    for key, value in want.items():
        torch.testing.assert_close(got[key], value, rtol=0, atol=1e-6 * float(value.abs().max()) + 1e-12)
    assert any(
        not torch.equal(value, load_file(middle / "adapter_model.safetensors")[key]) for key, value in want.items()
    )  # the last two steps did change the adapter

    theirs = PeftModel.from_pretrained(_base(tok), last)
    torch.testing.assert_close(_logits(theirs, tok), _logits(whole, tok), rtol=1e-5, atol=1e-5)


def test_a_given_callback_is_not_doubled_and_the_default_can_be_turned_off(tmp_path):
    tok = char_tokenizer(template=False)

    def count(**kw):
        trainer = DPOTrainer(_policy(tok), args=_args(tmp_path), train_dataset=_pairs(), processing_class=tok, **kw)
        return sum(isinstance(c, AdapterCheckpoints) for c in trainer.callback_handler.callbacks)

    assert count() == 1
    assert count(callbacks=[ak.checkpoint_callback()]) == 1
    assert count(callbacks=[AdapterCheckpoints]) == 1
    assert count(adapter_checkpoints=False) == 0

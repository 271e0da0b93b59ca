"""Encoder-decoder (T5) fine-tuning from source/target data: LoRA trains, saves, merges, generates."""
import copy

import pytest
import torch
import torch.nn.functional as F

import adapterkit as ak
from adapterkit.training.data import collate, tokenize
from adapterkit.training.sections import DataConfig
from tests.training.helpers import char_tokenizer, write_jsonl

RECORDS = [{"source": f"n{i}", "target": f"={i * 3 % 10}"} for i in range(8)]


@pytest.fixture(scope="module")
def t5_dir(tmp_path_factory):
    from tests.models import tiny_t5

    path = tmp_path_factory.mktemp("t5") / "model"
    tok = char_tokenizer(template=False)
    tiny_t5(vocab_size=len(tok)).save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


def _config(tmp_path, model, **optim):
    data = write_jsonl(tmp_path / "pairs.jsonl", RECORDS)
    return {"model": {"name": model}, "adapter": {"method": "lora", "rank": 4, "alpha": 8},
            "data": {"train": data, "eval": data, "format": "seq2seq"},
            "optim": dict({"lr": 2e-2, "batch_size": 4, "max_steps": 40, "schedule": "constant"}, **optim),
            "eval": {"generate": True, "max_new_tokens": 4},
            "output": {"dir": str(tmp_path / "out"), "progress": False}}


def test_examples_are_source_and_target_with_eos():
    tok = char_tokenizer(template=False)
    ex = tokenize(RECORDS[:2], tok, DataConfig(train="x", format="seq2seq"), "x")
    assert ex[0]["input_ids"] == tok("n0", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert ex[0]["labels"] == tok("=0", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    batch = collate([{"input_ids": [5, 6, 7], "labels": [8]}, {"input_ids": [5], "labels": [9, 9]}], 0)
    assert batch["labels"].tolist() == [[8, -100], [9, 9]] and batch["input_ids"].shape == (2, 3)


def test_lora_on_t5_trains_saves_merges_and_generates(tmp_path, t5_dir):
    from transformers import AutoModelForSeq2SeqLM

    result = ak.train(_config(tmp_path, t5_dir))
    assert type(result.model).__name__ == "T5ForConditionalGeneration"
    assert result.last_eval["loss"] < 0.3 * result.first_eval["loss"]
    assert {"bleu", "chrf"} <= set(result.last_eval)
    model = result.model.eval()
    batch = collate(tokenize(RECORDS, result.tokenizer, DataConfig(train="x", format="seq2seq"), "x"), 0)
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                       labels=batch["labels"]).logits
        # the loss the loop reports is plain token cross-entropy of the target
        reference = F.cross_entropy(logits.flatten(0, 1), batch["labels"].flatten(), ignore_index=-100)
        assert reference.item() == pytest.approx(result.last_eval["loss"], rel=1e-4)
        # reload the saved adapter on a fresh base: the same outputs
        fresh = ak.load_adapter(AutoModelForSeq2SeqLM.from_pretrained(t5_dir), str(tmp_path / "out")).eval()
        again = fresh(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                      labels=batch["labels"]).logits
        torch.testing.assert_close(again, logits, atol=1e-5, rtol=1e-5)
        merged = ak.merge(copy.deepcopy(model))
        out = merged(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]).logits
        torch.testing.assert_close(out, logits, atol=1e-5, rtol=1e-5)
        kwargs = dict(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], max_new_tokens=4,
                      do_sample=False)
        generated = merged.generate(**kwargs)
        torch.testing.assert_close(model.generate(**kwargs), generated)
    # greedy: after the start token comes the argmax of the first decoder position
    assert generated[:, 0].tolist() == [model.config.decoder_start_token_id] * len(RECORDS)
    assert generated[:, 1].tolist() == logits[:, 0].argmax(-1).tolist()
    texts = result.tokenizer.batch_decode(generated, skip_special_tokens=True)
    assert all(t.startswith("=") for t in texts), texts  # the targets' shape was learnt


def test_seq2seq_task_follows_the_data_format(tmp_path, t5_dir):
    from adapterkit.training import TrainConfig
    from adapterkit.training.setup import model_task

    cfg = TrainConfig.from_dict(_config(tmp_path, t5_dir))
    assert model_task(cfg) == "seq2seq"
    with pytest.raises(ak.ConfigError, match="data.format"):
        TrainConfig.from_dict(dict(_config(tmp_path, t5_dir), data={"train": "x", "format": "pairs"}))

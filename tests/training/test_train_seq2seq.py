"""Encoder-decoder (T5, BART) fine-tuning from source/target data: LoRA trains, saves, merges, generates."""

import copy

import pytest
import torch
import torch.nn.functional as F

import adapterkit as ak
from adapterkit.training.data import collate, tokenize
from adapterkit.training.sections import DataConfig
from tests.training.helpers import char_tokenizer, write_jsonl

RECORDS = [{"source": f"n{i}", "target": f"={i * 3 % 10}"} for i in range(8)]


def _tiny_bart(vocab_size):
    from transformers import BartConfig, BartForConditionalGeneration

    torch.manual_seed(0)
    cfg = BartConfig(
        vocab_size=vocab_size,
        d_model=32,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        max_position_embeddings=64,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=1,
        decoder_start_token_id=1,
        forced_eos_token_id=None,
        init_std=0.3,
    )
    return BartForConditionalGeneration(cfg)


@pytest.fixture(scope="module", params=["t5", "bart"])
def s2s_dir(tmp_path_factory, request):
    from tests.models import tiny_t5

    path = tmp_path_factory.mktemp(request.param) / "model"
    tok = char_tokenizer(template=False)
    model = tiny_t5(vocab_size=len(tok)) if request.param == "t5" else _tiny_bart(len(tok))
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


def _config(tmp_path, model, **optim):
    data = write_jsonl(tmp_path / "pairs.jsonl", RECORDS)
    return {
        "model": {"name": model},
        "adapter": {"method": "lora", "rank": 4, "alpha": 8},
        "data": {"train": data, "eval": data, "format": "seq2seq"},
        "optim": dict({"lr": 2e-2, "batch_size": 4, "max_steps": 40, "schedule": "constant"}, **optim),
        "eval": {"generate": True, "max_new_tokens": 4},
        "output": {"dir": str(tmp_path / "out"), "progress": False},
    }


def test_examples_are_source_and_target_with_eos():
    tok = char_tokenizer(template=False)
    ex = tokenize(RECORDS[:2], tok, DataConfig(train="x", format="seq2seq"), "x")
    assert ex[0]["input_ids"] == tok("n0", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert ex[0]["labels"] == tok("=0", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    batch = collate([{"input_ids": [5, 6, 7], "labels": [8]}, {"input_ids": [5], "labels": [9, 9]}], 0)
    assert batch["labels"].tolist() == [[8, -100], [9, 9]] and batch["input_ids"].shape == (2, 3)


def test_lora_on_an_encoder_decoder_trains_saves_merges_and_generates(tmp_path, s2s_dir):
    from transformers import AutoModelForSeq2SeqLM

    result = ak.train(_config(tmp_path, s2s_dir))
    assert type(result.model).__name__ == type(AutoModelForSeq2SeqLM.from_pretrained(s2s_dir)).__name__
    assert result.last_eval["loss"] < 0.5 * result.first_eval["loss"]
    assert {"bleu", "chrf"} <= set(result.last_eval)
    model = result.model.eval()
    batch = collate(tokenize(RECORDS, result.tokenizer, DataConfig(train="x", format="seq2seq"), "x"), 0)
    with torch.no_grad():
        logits = model(**batch).logits  # batch: input_ids, attention_mask, labels
        # the loss the loop reports is plain token cross-entropy of the target
        reference = F.cross_entropy(logits.flatten(0, 1), batch["labels"].flatten(), ignore_index=-100)
        assert reference.item() == pytest.approx(result.last_eval["loss"], rel=1e-4)
        # reload the saved adapter on a fresh base: the same outputs
        fresh = ak.load_adapter(AutoModelForSeq2SeqLM.from_pretrained(s2s_dir), str(tmp_path / "out")).eval()
        again = fresh(**batch).logits
        torch.testing.assert_close(again, logits, atol=1e-5, rtol=1e-5)
        merged = ak.merge(copy.deepcopy(model))
        out = merged(**batch).logits
        torch.testing.assert_close(out, logits, atol=1e-5, rtol=1e-5)
        kwargs = dict(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], max_new_tokens=4, do_sample=False
        )
        generated = merged.generate(**kwargs)
        torch.testing.assert_close(model.generate(**kwargs), generated)
    # greedy: after the start token comes the argmax of the first decoder position
    assert generated[:, 0].tolist() == [model.config.decoder_start_token_id] * len(RECORDS)
    assert generated[:, 1].tolist() == logits[:, 0].argmax(-1).tolist()
    texts = result.tokenizer.batch_decode(generated, skip_special_tokens=True)
    assert all(t.startswith("=") for t in texts), texts  # the targets' shape was learnt


def test_seq2seq_task_follows_the_data_format(tmp_path, s2s_dir):
    from adapterkit.training import TrainConfig
    from adapterkit.training.setup import model_task

    cfg = TrainConfig.from_dict(_config(tmp_path, s2s_dir))
    assert model_task(cfg) == "seq2seq"
    with pytest.raises(ak.ConfigError, match="data.format"):
        TrainConfig.from_dict(dict(_config(tmp_path, s2s_dir), data={"train": "x", "format": "pairs"}))


def test_generate_command_reads_prompts_as_sources_for_an_encoder_decoder(tmp_path, s2s_dir, capsys):
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    from adapterkit.cli import main
    from adapterkit.training.data import source_ids
    from adapterkit.training.evaluate import generate_texts

    config = _config(tmp_path, s2s_dir, max_steps=4)
    ak.train(config)
    out = config["output"]["dir"]
    capsys.readouterr()
    assert main(["generate", out, "n3", "--compare", "--max-new-tokens", "4"]) == 0
    printed = capsys.readouterr().out.splitlines()
    model = ak.load_adapter(AutoModelForSeq2SeqLM.from_pretrained(s2s_dir), out).eval()
    tok = AutoTokenizer.from_pretrained(s2s_dir)
    ids = [source_ids(tok, "n3", DataConfig(train="-", format="seq2seq"))]
    expected = generate_texts(model, tok, ids, 4, torch.device("cpu"))[0]
    with ak.disabled(model):
        base = generate_texts(model, tok, ids, 4, torch.device("cpu"))[0]
    assert printed == ["### n3", f"base:    {base}", f"adapter: {expected}"]

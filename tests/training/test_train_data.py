"""Data: loss only on responses, packing, classification labels, file formats, padding."""

import pytest

from adapterkit.errors import ConfigError
from adapterkit.training.data import IGNORE, collate, read_records, tokenize
from adapterkit.training.sections import DataConfig
from tests.training.helpers import char_tokenizer, write_jsonl


def _targets(example, tok):
    return tok.decode([t for t, l in zip(example["input_ids"], example["labels"]) if l != IGNORE])


@pytest.mark.parametrize("template", [True, False])
def test_instruction_loss_on_response_only(template):
    tok = char_tokenizer(template)
    cfg = DataConfig(train="x", chat_template=template)
    [ex] = tokenize([{"prompt": "2+2?", "response": "four"}], tok, cfg, "x")
    assert len(ex["input_ids"]) == len(ex["labels"])
    assert _targets(ex, tok) == "four<eos>"
    assert ex["labels"][: len(ex["labels"]) - 5] == [IGNORE] * (len(ex["labels"]) - 5)
    rendered = tok.decode(ex["input_ids"])
    assert ("<user>2+2?<eos><assistant>four<eos>" if template else "2+2?\nfour<eos>") == rendered


def test_chat_loss_on_every_assistant_turn():
    tok = char_tokenizer()
    msgs = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "yo"},
        {"role": "user", "content": "bye"},
        {"role": "assistant", "content": "ciao"},
    ]
    [ex] = tokenize([{"messages": msgs}], tok, DataConfig(train="x", format="chat"), "x")
    assert _targets(ex, tok) == "yo<eos>ciao<eos>"


def test_text_packing_cuts_the_token_stream_into_blocks():
    tok = char_tokenizer()
    docs = [{"text": "abcdefg"}, {"text": "hij"}, {"text": "klmnopqrs"}]
    blocks = tokenize(docs, tok, DataConfig(train="x", format="text", packing=True, max_length=6), "x")
    stream = [t for d in docs for t in tok(d["text"])["input_ids"] + [tok.eos_token_id]]
    assert [len(b["input_ids"]) for b in blocks] == [6, 6, 6, 4]
    assert [t for b in blocks for t in b["input_ids"]] == stream
    assert all(b["labels"] == b["input_ids"] for b in blocks)


def test_classification_names_are_numbered_in_sorted_order(tmp_path):
    from adapterkit.training.data import label_names

    path = tmp_path / "c.csv"
    path.write_text("text,label\ngood film,pos\nbad film,neg\nfine,pos\n")
    cfg = DataConfig(train=str(path), format="classification")
    records = read_records(str(path), "classification")
    names = label_names(records, cfg, str(path))
    assert names == ["neg", "pos"]
    examples = tokenize(records, char_tokenizer(), cfg, str(path), names)
    assert [e["labels"] for e in examples] == [1, 0, 1]
    with pytest.raises(ConfigError, match="not among the training labels"):
        tokenize([{"text": "x", "label": "meh"}], char_tokenizer(), cfg, "p", names)


def test_missing_field_names_the_record_and_the_setting(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"question": "q", "response": "r"}])
    with pytest.raises(
        ConfigError, match=r"d.jsonl:1: the record has no field 'prompt'.*'question'.*data.prompt_field"
    ):
        tokenize(read_records(path, "instruction"), char_tokenizer(), DataConfig(train=path), path)
    with pytest.raises(ConfigError, match="does not exist"):
        read_records(str(tmp_path / "none.jsonl"), "instruction")
    (tmp_path / "bad.jsonl").write_text("{not json}\n")
    with pytest.raises(ConfigError, match=r"bad.jsonl:1:2: not valid JSON"):
        read_records(str(tmp_path / "bad.jsonl"), "instruction")


def test_collate_pads_right_with_ignored_labels():
    batch = collate([{"input_ids": [5, 6, 7], "labels": [IGNORE, 6, 7]}, {"input_ids": [8], "labels": [8]}], 0)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[IGNORE, 6, 7], [8, IGNORE, IGNORE]]

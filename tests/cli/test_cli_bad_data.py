"""Bad models, data files and output folders for ``adapterkit train``: one clear line naming the
file (and line, and field), exit 2, and no file of the run folder or the inputs changed."""

import json

import pytest

from tests.cli.cli_world import both, check_case, config, truncate, write

TRAIN = ["train", "cfg.yaml"]
GOOD = '{"prompt": "a", "response": "b"}\n'


def data(name: str, content, **changes):
    """Point data.train at file ``name`` holding ``content``."""
    return both(write(name, content), config(data__train=name, **changes))


def chat(records):
    return data("chat.jsonl", "".join(json.dumps(r) + "\n" for r in records), data__format="chat")


def labels(values, **changes):
    rows = "".join(json.dumps({"text": f"t{i}", "label": v}) + "\n" for i, v in enumerate(values))
    return data("cls.jsonl", rows, data__format="classification", **changes)


def copy_model_without(*names):
    def setup(w):
        import shutil

        shutil.copytree(w / "model", w / "other")
        for name in names:
            (w / "other" / name).unlink()
        config(model__name="./other")(w)

    return setup


MODELS = [
    pytest.param(
        copy_model_without("tokenizer.json", "tokenizer_config.json"),
        ["'./other'", "tokenizer"],
        id="model-no-tokenizer",
    ),
    pytest.param(copy_model_without("config.json"), ["'other'", "no config.json"], id="model-no-config"),
    pytest.param(
        both(copy_model_without(), write("other/config.json", "{not json")),
        ["other/config.json", "not valid JSON"],
        id="model-config-broken",
    ),
    pytest.param(
        both(copy_model_without("model.safetensors"), write("other/pytorch_model.bin", b"PK\x03\x04")),
        ["'other'", "pickle", "pytorch_model.bin"],
        id="model-pickle-only",
    ),
    pytest.param(copy_model_without("model.safetensors"), ["'./other'", "could not load"], id="model-no-weights"),
    pytest.param(
        both(copy_model_without(), truncate("other/model.safetensors")),
        ["'./other'", "could not load"],
        id="model-weights-truncated",
    ),
    pytest.param(config(model__name="./nowhere"), ["'./nowhere'", "not a folder"], id="model-missing-folder"),
]

DATA = [
    pytest.param(config(data__train="none.jsonl"), ["'none.jsonl'", "does not exist"], id="data-missing"),
    pytest.param(config(data__train="model"), ["'model'", "is a folder"], id="data-is-folder"),
    pytest.param(data("d.parquet", "x"), ["'d.parquet'", "unknown extension"], id="data-extension"),
    pytest.param(
        data("d.jsonl", GOOD * 2 + '{"prompt": "caf\xe9"}\n'.encode("latin-1").decode("latin-1")),
        ["d.jsonl:3", "response"],
        id="data-missing-field-line3",
    ),
    pytest.param(
        data("d.jsonl", GOOD.encode() + b'{"prompt": "caf\xe9", "response": "x"}\n'),
        ["d.jsonl:2", "not UTF-8", "0xe9"],
        id="data-latin1",
    ),
    pytest.param(data("d.jsonl", GOOD + '{"prompt": \n'), ["d.jsonl:2:12", "not valid JSON"], id="jsonl-broken"),
    pytest.param(
        data("d.jsonl", GOOD + GOOD + "[1, 2]\n"), ["d.jsonl:3", "JSON object", "a list"], id="jsonl-line-is-list"
    ),
    pytest.param(
        data("d.jsonl", GOOD + '"text"\n'), ["d.jsonl:2", "JSON object", "a string"], id="jsonl-line-is-string"
    ),
    pytest.param(
        data("d.jsonl", GOOD + '{"prompt": "a", "response": null}\n'),
        ["d.jsonl:2", "'response'"],
        id="jsonl-field-null",
    ),
    pytest.param(
        data("d.jsonl", GOOD + '{"prompt": {"a": 1}, "response": "b"}\n'),
        ["d.jsonl:2", "'prompt'", "string"],
        id="jsonl-field-object",
    ),
    pytest.param(
        data("d.jsonl", '{"question": "a", "answer": "b"}\n'),
        ["d.jsonl:1", "'prompt'", "'question'", "data.prompt_field"],
        id="jsonl-other-fields",
    ),
    pytest.param(
        data("d.json", '[{"prompt": "a", "response": "b"},\n {"prompt": "a"'),
        ["d.json:2:", "not valid JSON"],
        id="json-broken",
    ),
    pytest.param(
        data("d.json", '[{"prompt": "a", "response": "b"},\n\n 7]'), ["d.json:3", "a number"], id="json-item-number"
    ),
    pytest.param(
        data("d.json", '[\n{"prompt": "a", "response": "b"},\n{"response": "b"}\n]'),
        ["d.json:3", "'prompt'"],
        id="json-item-no-field",
    ),
    pytest.param(data("d.csv", "prompt,response\na,b\nc\n"), ["d.csv:3", "'response'"], id="csv-short-row"),
    pytest.param(data("d.csv", "question,answer\na,b\n"), ["d.csv:2", "'prompt'"], id="csv-other-columns"),
    pytest.param(data("d.txt", "some text\n"), ["d.txt", "data.format 'text'"], id="txt-not-text-format"),
    pytest.param(data("d.jsonl", ""), ["'d.jsonl'", "holds no records"], id="data-empty"),
    pytest.param(data("d.jsonl", "\n\n"), ["'d.jsonl'", "holds no records"], id="data-blank-lines"),
    pytest.param(config(data__eval="none.jsonl"), ["'none.jsonl'", "does not exist"], id="eval-missing"),
    pytest.param(
        both(write("e.jsonl", GOOD + "{}\n"), config(data__eval="e.jsonl")),
        ["e.jsonl:2", "'prompt'"],
        id="eval-record-no-field",
    ),
    pytest.param(config(eval__every=1), ["no held-out data", "data.eval"], id="eval-without-data"),
    pytest.param(chat([{"messages": "hello"}]), ["chat.jsonl:1", "'messages'", "list"], id="chat-not-list"),
    pytest.param(
        chat([{"messages": [{"role": "user", "content": "a"}]}, {"messages": [{"content": "a"}]}]),
        ["chat.jsonl:2", "messages[0]", "'role'"],
        id="chat-no-role",
    ),
    pytest.param(chat([{"msgs": []}]), ["chat.jsonl:1", "'messages'", "data.messages_field"], id="chat-no-field"),
    pytest.param(
        labels([0, 1, 5], model__num_labels=3), ["cls.jsonl:3", "label 5", "3 classes"], id="label-out-of-range"
    ),
    pytest.param(labels([0, 1, -1]), ["cls.jsonl:3", "label -1"], id="label-negative"),
    pytest.param(labels([0, [1]]), ["cls.jsonl:2", "label [1]"], id="label-list"),
    pytest.param(
        both(labels([0, 1]), write("e.jsonl", '{"text": "x", "label": "pos"}\n'), config(data__eval="e.jsonl")),
        ["e.jsonl:1", "label 'pos'", "class number"],
        id="label-name-in-eval",
    ),
]

OUTPUT = [
    pytest.param(config(output__dir="train.jsonl"), ["output.dir 'train.jsonl'", "is a file"], id="output-is-file"),
    pytest.param(
        config(output__dir="train.jsonl/run"), ["'train.jsonl/run'", "'train.jsonl' is a file"], id="output-under-file"
    ),
]


@pytest.mark.parametrize("setup, expected", MODELS + DATA + OUTPUT)
def test_bad_training_input_gives_one_clear_line(world, tmp_path, monkeypatch, capsys, setup, expected):
    check_case(world, tmp_path, monkeypatch, capsys, TRAIN, setup, expected)


def test_a_failed_run_into_a_finished_run_keeps_its_files(world, tmp_path, monkeypatch, capsys):
    """The data breaks after the run folder holds an adapter and checkpoints: all of them stay."""
    check_case(
        world, tmp_path, monkeypatch, capsys, TRAIN, data("d.jsonl", GOOD + "oops\n"), ["d.jsonl:2", "not valid JSON"]
    )


def test_output_in_a_read_only_folder(world, tmp_path, monkeypatch, capsys):
    import os

    if os.geteuid() == 0:
        pytest.skip("root writes into read-only folders")

    def setup(w):
        (w / "locked").mkdir()
        config(output__dir="locked/run")(w)
        (w / "locked").chmod(0o500)

    try:
        check_case(world, tmp_path, monkeypatch, capsys, TRAIN, setup, ["'locked'", "not writable"])
    finally:
        (tmp_path / "w" / "locked").chmod(0o700)

"""Broken adapter folders and models for ``generate``, ``merge`` and ``inspect``; a full disk during
``merge``: one clear line naming the file, exit 2, and the files on disk as they were."""

import errno
import io
import json
import shutil
import sys

import pytest

from tests.cli.cli_world import (
    both,
    check_case,
    evil_pickle,
    remove,
    run_cli,
    tree,
    truncate,
    write,
    assert_one_line_error,
    assert_same_tree,
)

GENERATE = ["generate", "run", "hi", "--max-new-tokens", "2"]
MERGE = ["merge", "run", "--base", "model", "--out", "merged"]
INSPECT = ["inspect", "run"]


def edit_json(name, **changes):
    def setup(w):
        data = json.loads((w / name).read_text())
        for key, value in changes.items():
            if value is None:
                data.pop(key, None)
            else:
                data[key] = value
        (w / name).write_text(json.dumps(data))

    return setup


def other_base(w):
    """A model folder of another size (hidden 48): the adapter does not fit it."""
    from tests.models import tiny_llama
    from tests.training.helpers import char_tokenizer

    tok = char_tokenizer()
    tiny_llama(hidden_size=48, vocab_size=len(tok), pad_token_id=0, eos_token_id=1).save_pretrained(w / "big")
    tok.save_pretrained(w / "big")


def two_adapters(w):
    shutil.copytree(w / "run", w / "multi", ignore=shutil.ignore_patterns("checkpoints"))
    (w / "multi" / "other").mkdir()
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        shutil.copy(w / "run" / name, w / "multi" / "other" / name)


def only_pickle_base(w):
    shutil.copytree(w / "model", w / "pbase")
    (w / "pbase" / "model.safetensors").unlink()
    evil_pickle("pbase/pytorch_model.bin")(w)


def garbage_pickle_base(w):
    only_pickle_base(w)
    (w / "pbase" / "pytorch_model.bin").write_bytes(b"garbage" * 10)


BROKEN_ADAPTER = [  # (setup, expected) for every command that reads the adapter folder
    (write("run/adapter_config.json", '{"peft_type": '), ["run/adapter_config.json", "not valid JSON"]),
    (write("run/adapter_config.json", "[1, 2]"), ["run/adapter_config.json", "list"]),
    (write("run/adapter_config.json", b"\xff\xfe{}"), ["run/adapter_config.json", "not valid JSON"]),
    (edit_json("run/adapter_config.json", peft_type="LORRA"), ["run/adapter_config.json", "LORRA"]),
    (remove("run/adapter_config.json"), ["'run'", "adapter_config.json"]),
    (truncate("run/adapter_model.safetensors"), ["run/adapter_model.safetensors", "truncated or corrupt"]),
]
BROKEN_IDS = [
    "config-broken-json",
    "config-list",
    "config-not-utf8",
    "config-peft-type",
    "config-missing",
    "weights-truncated",
]

GENERATE_CASES = [pytest.param(GENERATE, s, e, id=f"generate-{i}") for (s, e), i in zip(BROKEN_ADAPTER, BROKEN_IDS)] + [
    pytest.param(["generate", "nowhere", "hi"], None, ["'nowhere'", "does not exist"], id="generate-no-folder"),
    pytest.param(["generate", "train.jsonl", "hi"], None, ["'train.jsonl'", "is a file"], id="generate-file"),
    pytest.param(
        GENERATE,
        write("run/train_config.yaml", "model: [\n"),
        ["run/train_config.yaml:2:1", "YAML"],
        id="generate-train-config-syntax",
    ),
    pytest.param(
        GENERATE,
        write("run/train_config.yaml", "- 1\n"),
        ["run/train_config.yaml", "a list"],
        id="generate-train-config-list",
    ),
    pytest.param(
        GENERATE,
        write("run/train_config.yaml", "model: {name: m}\nadapter: null\ndata: {train: x}\noptim: {lr: fast}\n"),
        ["run/train_config.yaml", "optim.lr"],
        id="generate-train-config-value",
    ),
    pytest.param(
        GENERATE,
        both(remove("run/train_config.yaml"), edit_json("run/adapter_config.json", base_model_name_or_path=None)),
        ["'run'", "--base"],
        id="generate-no-base-recorded",
    ),
    pytest.param([*GENERATE, "--base", "./nowhere"], None, ["'./nowhere'", "not a folder"], id="generate-base-missing"),
    pytest.param(
        [*GENERATE, "--base", "./big"],
        other_base,
        ["adapter_model.safetensors", "does not fit"],
        id="generate-other-base",
    ),
    pytest.param(
        GENERATE,
        both(remove("run/adapter_model.safetensors"), evil_pickle("run/adapter_model.bin")),
        ["adapter_model.bin", "pickle"],
        id="generate-pickle-adapter",
    ),
]

MERGE_CASES = [pytest.param(MERGE, s, e, id=f"merge-{i}") for (s, e), i in zip(BROKEN_ADAPTER, BROKEN_IDS)] + [
    pytest.param([*MERGE, "--name", "X"], None, ["no adapter named 'X'", "it holds: default"], id="merge-name"),
    pytest.param(
        ["merge", "multi", "--base", "model", "--out", "m", "--name", "othr"],
        two_adapters,
        ["'othr'", "did you mean 'other'", "default, other"],
        id="merge-name-typo",
    ),
    pytest.param(
        ["merge", "run", "--base", "pbase", "--out", "m"],
        only_pickle_base,
        ["'pbase'", "pickle", "--allow-pickle"],
        id="merge-pickle-base",
    ),
    pytest.param(
        ["merge", "run", "--base", "pbase", "--out", "m", "--allow-pickle"],
        only_pickle_base,
        ["'pbase'", "could not load the base model", "never unpickled"],
        id="merge-pickle-base-allowed-but-evil",
    ),
    pytest.param(
        ["merge", "run", "--base", "pbase", "--out", "m", "--allow-pickle"],
        garbage_pickle_base,
        ["'pbase'", "truncated or corrupt"],
        id="merge-pickle-base-allowed-garbage",
    ),
    pytest.param(
        [*MERGE[:-1], "train.jsonl", "--overwrite"], None, ["'train.jsonl'", "is a file"], id="merge-out-is-file"
    ),
    pytest.param([*MERGE[:-1], "train.jsonl/m"], None, ["'train.jsonl' is a file"], id="merge-out-under-file"),
    pytest.param([*MERGE[:-1], "model"], None, ["'model' already exists", "--overwrite"], id="merge-out-exists"),
    pytest.param(
        ["merge", "run", "--base", "./nowhere", "--out", "m"],
        None,
        ["'./nowhere'", "is not a folder"],
        id="merge-base-missing",
    ),
    pytest.param(
        ["merge", "run", "--base", "nowhere", "--out", "m"],
        None,
        ["'nowhere'", "could not load"],
        id="merge-base-unknown-hub-name",
    ),
    pytest.param(
        ["merge", "run", "--base", "run", "--out", "m"], None, ["'run'", "no config.json"], id="merge-base-not-a-model"
    ),
    pytest.param(
        MERGE,
        truncate("model/model.safetensors"),
        ["could not load the base model", "'model'"],
        id="merge-base-truncated",
    ),
    pytest.param(
        ["merge", "run", "--base", "big", "--out", "m"],
        other_base,
        ["adapter_model.safetensors", "does not fit"],
        id="merge-other-base",
    ),
]

INSPECT_CASES = [pytest.param(INSPECT, s, e, id=f"inspect-{i}") for (s, e), i in zip(BROKEN_ADAPTER, BROKEN_IDS)] + [
    pytest.param(
        [*INSPECT, "--json"],
        truncate("run/adapter_model.safetensors"),
        ["adapter_model.safetensors"],
        id="inspect-json-truncated",
    ),
    pytest.param(
        INSPECT,
        both(remove("run/adapter_model.safetensors"), evil_pickle("run/adapter_model.bin")),
        ["adapter_model.bin", "pickle"],
        id="inspect-pickle",
    ),
    pytest.param(["inspect", "train.jsonl"], None, ["'train.jsonl' is a file"], id="inspect-file"),
    pytest.param(["inspect", "model"], None, ["no adapter_config.json in 'model'"], id="inspect-not-adapter"),
]


@pytest.mark.parametrize("argv, setup, expected", GENERATE_CASES + MERGE_CASES + INSPECT_CASES)
def test_bad_files_give_one_clear_line(world, tmp_path, monkeypatch, capsys, argv, setup, expected):
    check_case(world, tmp_path, monkeypatch, capsys, argv, setup, expected)
    assert not (tmp_path / "w" / "pwned").exists()  # no pickle was run


def test_generate_stdin_that_is_not_utf8(world, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"hello\n\xff\xfe\n"), encoding="utf-8"))
    check_case(
        world, tmp_path, monkeypatch, capsys, ["generate", "run", "--max-new-tokens", "1"], None, ["stdin is not UTF-8"]
    )


def _full_disk_in_save(monkeypatch):
    from transformers import PreTrainedModel

    def save_pretrained(self, folder, *args, **kwargs):
        from pathlib import Path

        Path(folder).mkdir(parents=True, exist_ok=True)
        (Path(folder) / "model.safetensors").write_bytes(b"half a file")
        raise OSError(errno.ENOSPC, "No space left on device", str(Path(folder) / "model.safetensors"))

    monkeypatch.setattr(PreTrainedModel, "save_pretrained", save_pretrained)


def _full_disk_in_copy(monkeypatch):
    real = shutil.copy2

    def copy2(src, dst, *args, **kwargs):
        if str(src).endswith("tokenizer.json"):
            raise OSError(errno.ENOSPC, "No space left on device", str(dst))
        return real(src, dst, *args, **kwargs)

    monkeypatch.setattr(shutil, "copy2", copy2)


@pytest.mark.parametrize("full_disk", [_full_disk_in_save, _full_disk_in_copy], ids=["weights", "tokenizer"])
def test_merge_on_a_full_disk_keeps_the_old_output(world, tmp_path, monkeypatch, capsys, full_disk):
    """--overwrite onto a merged folder, and the disk fills up: the old folder stays whole, no temporary left."""
    w = tmp_path / "w"
    shutil.copytree(world, w)
    monkeypatch.chdir(w)
    code, _, err = run_cli(MERGE, capsys)
    assert code == 0, err
    before = tree(w)
    full_disk(monkeypatch)
    code, _, err = run_cli([*MERGE, "--overwrite"], capsys)
    assert_one_line_error(code, err, ["No space left on device", "disk is full", "left as they were"])
    assert_same_tree(before, tree(w))

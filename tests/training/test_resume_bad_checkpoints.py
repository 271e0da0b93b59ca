"""``adapterkit train --resume`` from broken or unfitting checkpoints: one clear line naming the file
and what to do, exit 2, nothing on disk changed; ``--resume auto``; a full disk while saving one."""

import errno
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.cli.cli_world import (
    assert_one_line_error,
    assert_same_tree,
    both,
    build,
    check_case,
    config,
    evil_pickle,
    remove,
    run_cli,
    tree,
    truncate,
    write,
)

RESUME = ["train", "cfg.yaml", "--resume"]
LAST = "run/checkpoints/step-0000004"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return build(tmp_path_factory.mktemp("resume") / "world")


def edit_state(**changes):
    def setup(w):
        path = w / LAST / "state.json"
        state = json.loads(path.read_text())
        for key, value in changes.items():
            if value is None:
                state.pop(key, None)
            else:
                state[key] = value
        path.write_text(json.dumps(state))

    return setup


def edit_optimizer(change):
    def setup(w):
        path = w / LAST / "optimizer.pt"
        data = torch.load(path, weights_only=True)
        change(data)
        torch.save(data, path)

    return setup


def _wrong_shape(data):
    data["state"][0]["exp_avg"] = torch.zeros(3, 3)


def _two_groups(data):
    data["param_groups"] = data["param_groups"] * 2


def edit_weights(change):
    def setup(w):
        path = w / LAST / "trainable.safetensors"
        weights = load_file(path)
        change(weights)
        save_file(weights, path)

    return setup


def _extra_key(weights):
    weights["model.layers.9.mlp.up_proj.adapters.default.a"] = torch.zeros(4, 32)


CASES = [
    pytest.param(
        RESUME,
        remove("run/checkpoints"),
        ["--resume", "no checkpoint in 'run/checkpoints'", "--resume auto"],
        id="no-checkpoint",
    ),
    pytest.param(
        RESUME,
        both(remove("run/checkpoints"), config(output__save_every=0)),
        ["save_every is 0"],
        id="no-checkpoint-save-every-0",
    ),
    pytest.param(
        RESUME,
        truncate(f"{LAST}/trainable.safetensors"),
        [f"{LAST}/trainable.safetensors", "truncated or corrupt", "Delete", "step-0000002"],
        id="weights-truncated",
    ),
    pytest.param(
        RESUME, remove(f"{LAST}/trainable.safetensors"), ["trainable.safetensors", "is missing"], id="weights-missing"
    ),
    pytest.param(
        RESUME,
        write(f"{LAST}/state.json", '{"step": '),
        [f"{LAST}/state.json", "not valid JSON"],
        id="state-broken-json",
    ),
    pytest.param(RESUME, write(f"{LAST}/state.json", b"\xff{}"), ["state.json", "not valid JSON"], id="state-not-utf8"),
    pytest.param(RESUME, write(f"{LAST}/state.json", "[4]"), ["state.json", "holds a list"], id="state-list"),
    pytest.param(RESUME, edit_state(step="four"), ["state.json", "step 'four'"], id="state-step-text"),
    pytest.param(RESUME, edit_state(step=-2), ["state.json", "step -2"], id="state-step-negative"),
    pytest.param(RESUME, edit_state(history={"a": 1}), ["state.json", "'history'"], id="state-history-object"),
    pytest.param(RESUME, edit_state(best="good"), ["state.json", "best 'good'"], id="state-best-text"),
    pytest.param(RESUME, edit_state(best=True), ["state.json", "best True"], id="state-best-bool"),
    pytest.param(RESUME, edit_state(optimizer="rows"), ["state.json", "optimizer 'rows'"], id="state-optimizer-kind"),
    pytest.param(
        RESUME,
        write(f"{LAST}/scheduler.json", "{"),
        [f"{LAST}/scheduler.json", "not valid JSON"],
        id="scheduler-broken-json",
    ),
    pytest.param(RESUME, write(f"{LAST}/scheduler.json", "{}"), ["scheduler.json", "last_epoch"], id="scheduler-empty"),
    pytest.param(
        RESUME,
        write(f"{LAST}/scheduler.json", '{"last_epoch": 4, "base_lrs": [1, 2]}'),
        ["scheduler.json", "2 learning rates for 1"],
        id="scheduler-groups",
    ),
    pytest.param(RESUME, remove(f"{LAST}/scheduler.json"), ["scheduler.json", "is missing"], id="scheduler-missing"),
    pytest.param(
        RESUME,
        write(f"{LAST}/optimizer.pt", b"garbage" * 10),
        [f"{LAST}/optimizer.pt", "truncated or corrupt"],
        id="optimizer-garbage",
    ),
    pytest.param(
        RESUME, truncate(f"{LAST}/optimizer.pt"), ["optimizer.pt", "truncated or corrupt"], id="optimizer-truncated"
    ),
    pytest.param(
        RESUME, evil_pickle(f"{LAST}/optimizer.pt"), ["optimizer.pt", "never unpickles"], id="optimizer-pickled-code"
    ),
    pytest.param(
        RESUME,
        lambda w: torch.save(torch.zeros(3), w / LAST / "optimizer.pt"),
        ["optimizer.pt", "not an optimizer state"],
        id="optimizer-a-tensor",
    ),
    pytest.param(RESUME, remove(f"{LAST}/optimizer.pt"), ["optimizer.pt", "is missing"], id="optimizer-missing"),
    pytest.param(
        RESUME, edit_optimizer(_wrong_shape), ["optimizer.pt", "exp_avg of shape (3, 3)"], id="optimizer-wrong-shape"
    ),
    pytest.param(RESUME, edit_optimizer(_two_groups), ["optimizer.pt", "parameter groups"], id="optimizer-groups"),
    pytest.param(
        RESUME, write(f"{LAST}/rng-0.json", "[1, 2]"), [f"{LAST}/rng-0.json", "random state"], id="rng-json-wrong"
    ),
    pytest.param(
        RESUME, write(f"{LAST}/rng-0.json", "nonsense"), ["rng-0.json", "not valid JSON"], id="rng-json-broken"
    ),
    pytest.param(RESUME, truncate(f"{LAST}/rng-0.safetensors"), ["rng-0.safetensors", "truncated"], id="rng-truncated"),
    pytest.param(
        [*RESUME, "--set", "adapter.rank=8"],
        None,
        ["'run/checkpoints/step-0000004'", "adapter.rank 4 -> 8", "without --resume"],
        id="rank-changed",
    ),
    pytest.param([*RESUME, "--set", "adapter.targets=[q_proj]"], None, ["adapter.targets"], id="targets-changed"),
    pytest.param(
        [*RESUME, "--set", "optim.optimizer=sgd"], None, ["optim.optimizer 'adamw' -> 'sgd'"], id="optimizer-changed"
    ),
    pytest.param(
        [*RESUME, "--set", "optim.loraplus_ratio=4"], None, ["optim.loraplus_ratio None -> 4"], id="loraplus-changed"
    ),
    pytest.param(
        [*RESUME, "--set", "adapter.rank=8"],
        edit_state(config=None),
        ["trainable.safetensors", "with shape (4, ", "this model's is (8, "],
        id="rank-changed-unrecorded",
    ),
    pytest.param(
        RESUME,
        both(edit_state(config=None), edit_weights(_extra_key)),
        ["trainable.safetensors", "does not fit", "layers.9"],
        id="weights-extra-key",
    ),
    pytest.param(
        RESUME,
        both(remove("run/checkpoints/step-0000002"), truncate(f"{LAST}/optimizer.pt")),
        ["optimizer.pt", "truncated", "Train without --resume"],
        id="only-checkpoint-broken",
    ),
    pytest.param(
        [*RESUME, "auto"],
        truncate(f"{LAST}/trainable.safetensors"),
        ["trainable.safetensors"],
        id="auto-does-not-skip-a-broken-checkpoint",
    ),
]


@pytest.mark.parametrize("argv, setup, expected", CASES)
def test_bad_checkpoint_gives_one_clear_line_and_changes_nothing(
    world, tmp_path, monkeypatch, capsys, argv, setup, expected
):
    check_case(world, tmp_path, monkeypatch, capsys, argv, setup, expected)
    assert not (tmp_path / "w" / "pwned").exists()  # the pickled optimizer file was never unpickled


def _copy(world, tmp_path, monkeypatch):
    w = tmp_path / "w"
    shutil.copytree(world, w)
    monkeypatch.chdir(w)
    return w


def test_resume_auto_without_a_checkpoint_says_so_and_starts_fresh(world, tmp_path, monkeypatch, capsys):
    w = _copy(world, tmp_path, monkeypatch)
    shutil.rmtree(w / "run")
    code, out, err = run_cli(["train", "cfg.yaml", "--resume", "auto"], capsys)
    assert code == 0, err
    assert [line for line in err.splitlines() if line.strip()] == [
        "adapterkit: no checkpoint in 'run/checkpoints'; --resume auto starts a fresh run."
    ]
    assert "4 steps" in out and (w / "run" / "adapter_model.safetensors").is_file()


def test_resume_auto_with_a_checkpoint_continues_it(world, tmp_path, monkeypatch, capsys):
    w = _copy(world, tmp_path, monkeypatch)
    code, out, err = run_cli(["train", "cfg.yaml", "--resume=auto", "--set", "optim.max_steps=6"], capsys)
    assert code == 0, err
    assert err.strip() == "" and "6 steps" in out
    steps = [json.loads(line)["step"] for line in (w / "run" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [4, 6]  # the earlier run's log kept, this one's appended
    state = json.loads((w / "run/checkpoints/step-0000006/state.json").read_text())
    assert state["step"] == 6 and state["config"]["adapter"]["rank"] == 4  # the config is recorded


def test_resume_mode_is_checked_in_code(tmp_path):
    import adapterkit as ak
    from adapterkit.errors import ConfigError

    with pytest.raises(ConfigError, match="resume must be False, True or 'auto'"):
        ak.train({}, resume="yes")


def test_full_disk_while_saving_a_checkpoint_leaves_the_older_ones(world, tmp_path, monkeypatch, capsys):
    from adapterkit.training import checkpoint

    w = _copy(world, tmp_path, monkeypatch)
    before = tree(w / "run" / "checkpoints")
    real = checkpoint._write

    def write_half(accelerator, tmp, *args):
        (tmp / "trainable.safetensors").write_bytes(b"half")
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp / "optimizer.pt"))

    monkeypatch.setattr(checkpoint, "_write", write_half)
    code, _, err = run_cli([*RESUME, "--set", "optim.max_steps=6"], capsys)
    monkeypatch.setattr(checkpoint, "_write", real)
    assert_one_line_error(code, err, ["No space left on device", "optimizer.pt", "disk is full"])
    assert_same_tree(before, tree(w / "run" / "checkpoints"))  # no .partial folder, steps 2 and 4 whole

"""The real command line (``python -m adapterkit`` in a fresh process): one line on stderr and exit 2
for bad inputs, no traceback, no library noise; a closed pipe on stdout ends quietly (exit 141)."""

import os
import shutil
import subprocess
import sys

import pytest

from tests.cli.cli_world import assert_same_tree, tree

CASES = {  # name: (argv, setup, expected status, texts the stderr line holds)
    "yaml-list": (
        ["train", "list.yaml"],
        lambda w: (w / "list.yaml").write_text("- a\n- b\n"),
        2,
        ["list.yaml", "a list"],
    ),
    "max-new-tokens": (["generate", "run", "--max-new-tokens", "-1", "hi"], None, 2, ["--max-new-tokens"]),
    "merge-name": (
        ["merge", "run", "--base", "model", "--out", "m", "--name", "X"],
        None,
        2,
        ["no adapter named 'X'", "default"],
    ),
    "resume-none": (
        ["train", "cfg.yaml", "--resume", "--set", "output.dir=fresh"],
        None,
        2,
        ["no checkpoint in 'fresh/checkpoints'"],
    ),
    "generate-broken-config": (
        ["generate", "run", "hi"],
        lambda w: (w / "run" / "adapter_config.json").write_text("{"),
        2,
        ["run/adapter_config.json", "not valid JSON"],
    ),
}


def _start(argv, cwd, stdout=subprocess.PIPE):
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    return subprocess.Popen(
        [sys.executable, "-m", "adapterkit", *argv], cwd=cwd, env=env, stdout=stdout, stderr=subprocess.PIPE, text=True
    )


@pytest.fixture(scope="module")
def results(world, tmp_path_factory):
    """Every case run at once, each in its own copy of the world: {name: (status, stderr, before, after)}."""
    root = tmp_path_factory.mktemp("subprocess")
    started = {}
    for name, (argv, setup, _, _) in CASES.items():
        w = root / name
        shutil.copytree(world, w)
        if setup is not None:
            setup(w)
        started[name] = (w, tree(w), _start(argv, w))
    out = {}
    for name, (w, before, proc) in started.items():
        _, err = proc.communicate(timeout=300)
        out[name] = (proc.returncode, err, before, tree(w))
    return out


@pytest.mark.parametrize("name", list(CASES))
def test_real_command_line_gives_one_line(results, name):
    status, err, before, after = results[name]
    expected_status, texts = CASES[name][2], CASES[name][3]
    lines = [line for line in err.splitlines() if line.strip()]
    assert status == expected_status and "Traceback" not in err, err[-3000:]
    assert len(lines) == 1 and lines[0].startswith("adapterkit"), err[-3000:]
    assert all(t in lines[0] for t in texts), lines[0]
    assert_same_tree(before, after)


def test_closed_stdout_pipe_ends_quietly(world, tmp_path):
    """``adapterkit inspect --json | head -c 0``: the reader is gone before anything is written."""
    w = tmp_path / "w"
    shutil.copytree(world, w)
    proc = _start(["inspect", "run", "--json"], w)
    proc.stdout.close()  # as `head` does when it has read enough
    err = proc.stderr.read()
    proc.wait(timeout=300)
    assert proc.returncode == 141 and err.strip() == "", err[-3000:]

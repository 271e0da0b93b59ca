"""A small world for command-line tests: a tiny model folder, data, a train config and a finished
run with checkpoints; each test works in its own copy (as the current folder) and checks that a
failed call left every file of that copy byte for byte as it was."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path
from typing import Callable, Iterable, Optional

import yaml

from tests.training.helpers import memorise_records, tiny_folder, write_jsonl

CONFIG = {
    "model": {"name": "./model"},
    "adapter": {"method": "lora", "rank": 4, "alpha": 8},
    "data": {"train": "train.jsonl"},
    "optim": {"lr": 1e-2, "batch_size": 4, "max_steps": 4, "schedule": "constant"},
    "eval": {"every": 0},
    "output": {"dir": "run", "save_every": 2, "progress": False, "plot": False, "trackers": "none"},
}


def build(root: Path) -> Path:
    """The pristine world in ``root``: model/, train.jsonl, cfg.yaml and run/ (trained 4 steps,
    checkpoints at steps 2 and 4, the adapter and its train_config.yaml)."""
    import os

    import adapterkit as ak

    root.mkdir(parents=True, exist_ok=True)
    tiny_folder(root / "model")
    write_jsonl(root / "train.jsonl", memorise_records(8))
    (root / "cfg.yaml").write_text(yaml.safe_dump(CONFIG, sort_keys=False))
    here = os.getcwd()
    os.chdir(root)
    try:
        ak.train(CONFIG)
    finally:
        os.chdir(here)
    return root


def tree(root: Path) -> dict[str, str]:
    """{relative path: sha256 of the bytes, or 'dir'} of everything under ``root``."""
    out = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        out[rel] = "dir" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def assert_same_tree(before: dict[str, str], after: dict[str, str]) -> None:
    added = sorted(set(after) - set(before))
    removed = sorted(set(before) - set(after))
    changed = sorted(k for k in set(before) & set(after) if before[k] != after[k])
    assert not (added or removed or changed), f"files changed: added {added}, removed {removed}, changed {changed}"


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    """``adapterkit ARGV`` in this process: (exit status, stdout, stderr)."""
    from adapterkit.cli import main

    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as stop:  # argparse exits by itself
        code = stop.code
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code: int, err: str, expected: Iterable[str], status: int = 2) -> str:
    """Exit ``status``; stderr is one non-empty line, no traceback, holding every ``expected`` text."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == status, f"exit {code}, stderr: {err[-2000:]}"
    assert "Traceback" not in err, err[-2000:]
    assert len(lines) == 1, f"{len(lines)} lines on stderr: {err[-2000:]}"
    assert lines[0].startswith("adapterkit"), lines[0]
    for text in expected:
        assert text in lines[0], f"{text!r} not in: {lines[0]}"
    return lines[0]


# -- setups: each changes the copy of the world before the command runs ------------------------------

Setup = Optional[Callable[[Path], None]]


def write(name: str, content) -> Callable[[Path], None]:
    """Write ``content`` (str or bytes) to ``name`` in the world (creating folders)."""

    def setup(w: Path) -> None:
        path = w / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)

    return setup


def config(**changes) -> Callable[[Path], None]:
    """cfg.yaml with ``section__key=value`` changed (value None: the key removed; a section
    name alone: the whole section replaced)."""

    def setup(w: Path) -> None:
        data = yaml.safe_load((w / "cfg.yaml").read_text())
        for key, value in changes.items():
            section, _, field = key.partition("__")
            if not field:
                data[section] = value
            elif value is None:
                data[section].pop(field, None)
            else:
                data.setdefault(section, {})[field] = value
        (w / "cfg.yaml").write_text(yaml.safe_dump(data, sort_keys=False))

    return setup


def remove(name: str) -> Callable[[Path], None]:
    def setup(w: Path) -> None:
        path = w / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()

    return setup


def truncate(name: str, keep: float = 0.5) -> Callable[[Path], None]:
    def setup(w: Path) -> None:
        data = (w / name).read_bytes()
        (w / name).write_bytes(data[: int(len(data) * keep)])

    return setup


def both(*setups: Callable[[Path], None]) -> Callable[[Path], None]:
    def setup(w: Path) -> None:
        for s in setups:
            s(w)

    return setup


def check_case(
    world: Path,
    tmp_path: Path,
    monkeypatch,
    capsys,
    argv: list[str],
    setup: Setup,
    expected: Iterable[str],
    status: int = 2,
) -> str:
    """Copy the world, apply ``setup``, run ``adapterkit ARGV`` in the copy; the call must fail with
    one clear line and leave every file of the copy as it was. Returns the line."""
    w = tmp_path / "w"
    shutil.copytree(world, w)
    if setup is not None:
        setup(w)
    monkeypatch.chdir(w)
    before = tree(w)
    code, _, err = run_cli(argv, capsys)
    line = assert_one_line_error(code, err, expected, status)
    assert_same_tree(before, tree(w))
    if os.environ.get("ADAPTERKIT_SHOW_ERRORS"):  # to read the messages: pytest -s with this set
        print(f"\n    {' '.join(argv)}\n    -> {line}")
    return line


class _Payload:
    """Unpickling this runs a shell command that creates the file ``pwned``: adapterkit must never."""

    def __reduce__(self):
        return (os.system, ("touch pwned",))


def evil_pickle(name: str) -> Callable[[Path], None]:
    """A pickle file at ``name`` that would create ``pwned`` in the current folder if unpickled."""
    import pickle

    def setup(w: Path) -> None:
        (w / name).parent.mkdir(parents=True, exist_ok=True)
        (w / name).write_bytes(pickle.dumps({"state": {}, "param_groups": [], "x": _Payload()}, protocol=2))

    return setup

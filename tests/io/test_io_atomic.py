"""Atomic saves: a save that fails part way leaves the previous files byte for byte."""

import pytest
import safetensors.torch
import torch

import adapterkit as ak
from adapterkit.io.atomic import staged
from tests.models import tiny_llama


def _snapshot(root):
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _model(rank=4, seed=0):
    torch.manual_seed(seed)
    model = ak.attach(tiny_llama(), ak.LoRAConfig(rank=rank, init="random"))
    ak.attach(model, ak.LoRAConfig(rank=2, targets=["q_proj"], init="random"), name="other")
    return model


def _failing_save_file(fail_on_call):
    """A save_file that writes half a file and then fails, on its ``fail_on_call``-th call."""
    real = safetensors.torch.save_file
    calls = []

    def save_file(tensors, filename, metadata=None):
        calls.append(filename)
        if len(calls) == fail_on_call:
            real(tensors, filename, metadata=metadata)
            with open(filename, "r+b") as f:
                f.truncate(f.seek(0, 2) // 2)
            raise OSError("No space left on device")
        return real(tensors, filename, metadata=metadata)

    return save_file


@pytest.mark.parametrize("fail_on_call", [1, 2])  # the default adapter's file, or the second adapter's
def test_failed_save_leaves_old_files_intact(tmp_path, monkeypatch, fail_on_call):
    ak.save_adapter(_model(), tmp_path)
    before = _snapshot(tmp_path)
    changed = _model(rank=8, seed=1)
    monkeypatch.setattr(safetensors.torch, "save_file", _failing_save_file(fail_on_call))
    with pytest.raises(OSError, match="No space left"):
        ak.save_adapter(changed, tmp_path, overwrite=True)
    assert _snapshot(tmp_path) == before  # same names (no temporary left) and same bytes
    monkeypatch.undo()
    ak.save_adapter(changed, tmp_path, overwrite=True)
    assert _snapshot(tmp_path) != before


def test_failed_first_save_leaves_no_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(safetensors.torch, "save_file", _failing_save_file(1))
    with pytest.raises(OSError):
        ak.save_adapter(_model(), tmp_path / "new" / "adapter")
    assert list(tmp_path.iterdir()) == []


def test_staged_writes_land_together(tmp_path):
    (tmp_path / "a").write_text("old a")
    with pytest.raises(RuntimeError):
        with staged() as stage:
            stage(tmp_path / "a", lambda p: p.write_text("new a"))
            stage(tmp_path / "sub" / "b", lambda p: p.write_text("new b"))
            raise RuntimeError("interrupted")
    assert _snapshot(tmp_path) == {"a": b"old a"}
    with staged() as stage:
        stage(tmp_path / "a", lambda p: p.write_text("new a"))
        stage(tmp_path / "sub" / "b", lambda p: p.write_text("new b"))
    assert _snapshot(tmp_path) == {"a": b"new a", "sub/b": b"new b"}

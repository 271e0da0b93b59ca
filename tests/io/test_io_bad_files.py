"""Broken adapter folders: each gives one AdapterKitError naming the file and the problem, leaves
the model exactly as it was and the folder byte-identical, and never unpickles. Hypothesis fuzzes
config fields, truncations and bit flips of real adapter files: only adapterkit errors come out."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import adapterkit as ak
from adapterkit.transaction import Snapshot
from tests.models import tiny_llama

CONFIG, WEIGHTS = "adapter_config.json", "adapter_model.safetensors"
METHODS = {
    "lora": lambda: ak.LoRAConfig(rank=4, targets=("q_proj", "v_proj")),
    "prefix": lambda: ak.PrefixTuningConfig(num_virtual_tokens=3),
    "prompt": lambda: ak.PromptTuningConfig(num_virtual_tokens=3),
    "ia3": lambda: ak.IA3Config(),
    "bottleneck": lambda: ak.BottleneckConfig(),
    "compacter": lambda: ak.CompacterConfig(bottleneck_dim=8),
    "loreft": lambda: ak.LoReFTConfig(rank=2),
}


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("adapters")
    out = {}
    for kind, make in METHODS.items():
        ak.save_adapter(ak.attach(tiny_llama(), make()), root / kind)
        out[kind] = root / kind
    return out


def _edit_config(**changes):
    def edit(folder: Path):
        data = json.loads((folder / CONFIG).read_text())
        for key, value in changes.items():
            if value is _DROP:
                data.pop(key, None)
            else:
                data[key] = value
        (folder / CONFIG).write_text(json.dumps(data))

    return edit


def _edit_tensors(fn):
    def edit(folder: Path):
        save_file(fn(load_file(str(folder / WEIGHTS))), str(folder / WEIGHTS))

    return edit


def _write(name: str, content: bytes):
    def edit(folder: Path):
        (folder / name).write_bytes(content)

    return edit


def _remove(name: str):
    return lambda folder: (folder / name).unlink()


def _truncate(folder: Path):
    data = (folder / WEIGHTS).read_bytes()
    (folder / WEIGHTS).write_bytes(data[: len(data) // 2])


def _pickle_only(folder: Path):
    torch.save(load_file(str(folder / WEIGHTS)), folder / "adapter_model.bin")
    (folder / WEIGHTS).unlink()


_DROP = object()
A_KEY = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
# (id, method, how the folder is broken, error class, fragment of the message)
CASES = [
    ("r-huge", "lora", _edit_config(r=10**15), ak.AdapterFileError, "r=1000000000000000"),
    ("r-other", "lora", _edit_config(r=8), ak.AdapterFileError, "r=8"),
    ("r-str", "lora", _edit_config(r="4"), ak.ConfigError, "'r'"),
    ("r-zero", "lora", _edit_config(r=0), ak.ConfigError, "'r'"),
    ("alpha-str", "lora", _edit_config(lora_alpha="x"), ak.ConfigError, "lora_alpha"),
    ("alpha-neg", "lora", _edit_config(lora_alpha=-2), ak.ConfigError, "lora_alpha"),
    ("dropout-2", "lora", _edit_config(lora_dropout=2), ak.ConfigError, "lora_dropout"),
    ("targets-int", "lora", _edit_config(target_modules=5), ak.ConfigError, "target_modules"),
    ("targets-regex", "lora", _edit_config(target_modules="(["), ak.ConfigError, "target_modules"),
    ("targets-typo", "lora", _edit_config(target_modules=["q_prj"]), ak.AdapterFileError, "q_prj"),
    ("exclude-regex", "lora", _edit_config(exclude_modules="(["), ak.ConfigError, "exclude_modules"),
    ("layers-str", "lora", _edit_config(layers_to_transform="x"), ak.ConfigError, "layers_to_transform"),
    ("layers-out", "lora", _edit_config(layers_to_transform=[9]), ak.AdapterFileError, "9"),
    ("dora-str", "lora", _edit_config(use_dora="yes"), ak.ConfigError, "use_dora"),
    ("dora-true", "lora", _edit_config(use_dora=True), ak.AdapterFileError, "missing"),
    ("rank-pattern", "lora", _edit_config(rank_pattern={"q_proj": 0}), ak.ConfigError, "rank_pattern"),
    ("bias-some", "lora", _edit_config(bias="some"), ak.ConfigError, "bias"),
    ("mts-int", "lora", _edit_config(modules_to_save=5), ak.ConfigError, "modules_to_save"),
    ("mts-str", "lora", _edit_config(modules_to_save="lm_head"), ak.ConfigError, "modules_to_save"),
    ("mts-list-int", "lora", _edit_config(modules_to_save=[5]), ak.ConfigError, "train_modules"),
    ("peft-type-unknown", "lora", _edit_config(peft_type="NOPE"), ak.AdapterFileError, "NOPE"),
    ("peft-type-int", "lora", _edit_config(peft_type=5), ak.AdapterFileError, "5"),
    ("peft-type-missing", "lora", _edit_config(peft_type=_DROP), ak.AdapterFileError, "peft_type"),
    ("config-list", "lora", _write(CONFIG, b"[1, 2]"), ak.AdapterFileError, "list"),
    ("config-broken-json", "lora", _write(CONFIG, b'{"peft_type": "LORA",'), ak.AdapterFileError, "JSON"),
    ("config-not-utf8", "lora", _write(CONFIG, b"\xff\xfe\x00"), ak.AdapterFileError, "JSON"),
    ("config-missing", "lora", _remove(CONFIG), ak.AdapterFileError, CONFIG),
    ("weights-missing", "lora", _remove(WEIGHTS), ak.AdapterFileError, WEIGHTS),
    ("weights-empty", "lora", _write(WEIGHTS, b""), ak.AdapterFileError, "corrupt"),
    ("weights-garbage", "lora", _write(WEIGHTS, b"\x00" * 64), ak.AdapterFileError, "corrupt"),
    ("weights-truncated", "lora", _truncate, ak.AdapterFileError, "corrupt"),
    ("weights-pickled", "lora", _pickle_only, ak.AdapterFileError, "pickle"),
    (
        "tensors-int",
        "lora",
        _edit_tensors(lambda w: {k: v.to(torch.int32) for k, v in w.items()}),
        ak.AdapterFileError,
        "int32",
    ),
    ("tensors-bool", "lora", _edit_tensors(lambda w: {k: v > 0 for k, v in w.items()}), ak.AdapterFileError, "bool"),
    (
        "tensor-shape",
        "lora",
        _edit_tensors(lambda w: {**w, A_KEY: w[A_KEY][:, :5].contiguous()}),
        ak.AdapterFileError,
        "shape",
    ),
    (
        "tensor-missing",
        "lora",
        _edit_tensors(lambda w: {k: v for k, v in w.items() if k != A_KEY}),
        ak.AdapterFileError,
        "missing",
    ),
    (
        "tensor-extra",
        "lora",
        _edit_tensors(lambda w: {**w, "base_model.model.x.lora_A.weight": torch.zeros(4, 2)}),
        ak.AdapterFileError,
        "unexpected",
    ),
    ("prefix-n", "prefix", _edit_config(num_virtual_tokens=10**12), ak.AdapterFileError, "num_virtual_tokens"),
    ("prefix-n-str", "prefix", _edit_config(num_virtual_tokens="3"), ak.ConfigError, "num_virtual_tokens"),
    ("prompt-n", "prompt", _edit_config(num_virtual_tokens=7), ak.AdapterFileError, "num_virtual_tokens"),
    (
        "prompt-shape",
        "prompt",
        _edit_tensors(lambda w: {k: v[:, :5].contiguous() for k, v in w.items()}),
        ak.AdapterFileError,
        "shape",
    ),
    (
        "ia3-ff-typo",
        "ia3",
        _edit_config(feedforward_modules=["down_projj"], target_modules=["k_proj", "down_proj"]),
        ak.AdapterFileError,
        "down_projj",
    ),
    (
        "ia3-int",
        "ia3",
        _edit_tensors(lambda w: {k: v.to(torch.int64) for k, v in w.items()}),
        ak.AdapterFileError,
        "int64",
    ),
    ("bottleneck-reduction", "bottleneck", _edit_config(reduction_factor=1), ak.AdapterFileError, "bottleneck"),
    ("bottleneck-dim-huge", "bottleneck", _edit_config(bottleneck_dim=10**14), ak.AdapterFileError, "bottleneck"),
    ("bottleneck-unknown-field", "bottleneck", _edit_config(preset="nope"), ak.ConfigError, "preset"),
]


def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.mark.parametrize("kind,edit,error,fragment", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_broken_folders_raise_clearly_and_change_nothing(saved, tmp_path, kind, edit, error, fragment):
    folder = tmp_path / "adapter"
    shutil.copytree(saved[kind], folder)
    edit(folder)
    files = _digest(folder)
    model = ak.attach(tiny_llama(), ak.LoRAConfig(rank=2, targets=("k_proj",)), name="mine")
    model.eval()
    before, values = Snapshot(model).state(), {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(error) as info:
        ak.load_adapter(model, folder, name="new")
    assert fragment in str(info.value), str(info.value)
    assert Snapshot(model).state() == before
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in values.items())
    assert ak.adapter_names(model) == ["mine"] and ak.active_names(model) == ["mine"]
    assert _digest(folder) == files


# -- Hypothesis: random damage to real adapter files -----------------------------------------
hypothesis = pytest.importorskip("hypothesis")
st = hypothesis.strategies
_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**16), 10**16),
    st.floats(),
    st.text(max_size=8),
    st.lists(st.one_of(st.text(max_size=8), st.integers()), max_size=3),
    st.sampled_from(["LORA", "IA3", "PREFIX_TUNING", "PROMPT_TUNING", "CAUSAL_LM", "q_proj", "(["]),
)
_KEYS = [
    "r",
    "lora_alpha",
    "target_modules",
    "modules_to_save",
    "num_virtual_tokens",
    "peft_type",
    "use_dora",
    "feedforward_modules",
    "reduction_factor",
    "bottleneck_dim",
    "layers_to_transform",
    "task_type",
    "token_dim",
    "num_layers",
    "encoder_hidden_size",
    "prefix_projection",
]


def _load_only_adapterkit_errors(folder: Path) -> None:
    model = tiny_llama()
    before = Snapshot(model).state()
    try:
        ak.load_adapter(model, folder)
    except ak.AdapterKitError:
        assert Snapshot(model).state() == before


@hypothesis.settings(max_examples=150, deadline=None, derandomize=True)
@hypothesis.given(
    kind=st.sampled_from(sorted(METHODS)),
    changes=st.dictionaries(st.sampled_from(_KEYS), _VALUES, min_size=1, max_size=3),
)
def test_random_config_fields(saved, tmp_path_factory, kind, changes):
    folder = tmp_path_factory.mktemp("fuzz")
    shutil.copytree(saved[kind], folder, dirs_exist_ok=True)
    _edit_config(**changes)(folder)
    _load_only_adapterkit_errors(folder)


@hypothesis.settings(max_examples=150, deadline=None, derandomize=True)
@hypothesis.given(
    kind=st.sampled_from(sorted(METHODS)),
    cut=st.floats(0, 1),
    flips=st.lists(st.tuples(st.floats(0, 1), st.integers(0, 7)), max_size=6),
)
def test_truncated_and_bit_flipped_weights(saved, tmp_path_factory, kind, cut, flips):
    folder = tmp_path_factory.mktemp("fuzz")
    shutil.copytree(saved[kind], folder, dirs_exist_ok=True)
    data = bytearray((folder / WEIGHTS).read_bytes())
    for where, bit in flips:
        data[min(int(where * len(data)), len(data) - 1)] ^= 1 << bit
    (folder / WEIGHTS).write_bytes(bytes(data[: max(1, int(cut * len(data)))] if cut < 1 else data))
    _load_only_adapterkit_errors(folder)

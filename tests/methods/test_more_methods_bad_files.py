"""VeRA, LN tuning, OFT and BOFT files damaged at random: loading raises an adapterkit error and
leaves the model as it was, or loads; never another exception, a hang or a huge allocation."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import adapterkit as ak
from adapterkit.transaction import Snapshot
from tests.models import tiny_llama

hypothesis = pytest.importorskip("hypothesis")
st = hypothesis.strategies

CONFIG, WEIGHTS = "adapter_config.json", "adapter_model.safetensors"
METHODS = {
    "vera": lambda: ak.VeRAConfig(rank=4, targets=("q_proj", "down_proj")),
    "vera_unsaved": lambda: ak.VeRAConfig(rank=4, save_projection=False),
    "ln_tuning": lambda: ak.LNTuningConfig(),
    "oft": lambda: ak.OFTConfig(block_size=8, targets=("q_proj", "v_proj")),
    "boft": lambda: ak.BOFTConfig(block_size=4, butterfly_factor=2, targets=("q_proj", "down_proj")),
}
_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**16), 10**16),
    st.floats(),
    st.text(max_size=8),
    st.lists(st.one_of(st.text(max_size=8), st.integers()), max_size=3),
    st.sampled_from(["VERA", "OFT", "BOFT", "LN_TUNING", "LORA", "q_proj", "(["]),
)
_KEYS = [
    "r",
    "target_modules",
    "exclude_modules",
    "layers_to_transform",
    "peft_type",
    "projection_prng_key",
    "save_projection",
    "d_initial",
    "vera_dropout",
    "init_weights",
    "oft_block_size",
    "coft",
    "eps",
    "block_share",
    "module_dropout",
    "use_cayley_neumann",
    "num_cayley_neumann_terms",
    "boft_block_size",
    "boft_block_num",
    "boft_n_butterfly_factor",
    "boft_dropout",
    "bias",
]


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("adapters")
    for kind, make in METHODS.items():
        ak.save_adapter(ak.attach(tiny_llama(), make()), root / kind)
    return {kind: root / kind for kind in METHODS}


def _load_only_adapterkit_errors(folder: Path) -> None:
    model = tiny_llama()
    before = Snapshot(model).state()
    try:
        ak.load_adapter(model, folder)
    except ak.AdapterKitError:
        assert Snapshot(model).state() == before


@hypothesis.settings(max_examples=60, deadline=None, derandomize=True)
@hypothesis.given(
    kind=st.sampled_from(sorted(METHODS)),
    changes=st.dictionaries(st.sampled_from(_KEYS), _VALUES, min_size=1, max_size=3),
)
def test_random_config_fields(saved, tmp_path_factory, kind, changes):
    folder = tmp_path_factory.mktemp("fuzz")
    shutil.copytree(saved[kind], folder, dirs_exist_ok=True)
    data = json.loads((folder / CONFIG).read_text())
    data.update(changes)
    (folder / CONFIG).write_text(json.dumps(data))
    _load_only_adapterkit_errors(folder)


@hypothesis.settings(max_examples=40, deadline=None, derandomize=True)
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


def test_big_sizes_in_a_file_are_refused_before_allocating(saved, tmp_path):
    shutil.copytree(saved["vera"], tmp_path, dirs_exist_ok=True)
    data = json.loads((tmp_path / CONFIG).read_text())
    (tmp_path / CONFIG).write_text(json.dumps({**data, "r": 10**15}))
    with pytest.raises(ak.AdapterFileError, match="rank 4, but the config says r=1000000000000000"):
        ak.load_adapter(tiny_llama(), tmp_path)


@pytest.mark.parametrize("kind", ["ln_tuning", "oft", "boft"])
def test_a_target_dropped_from_the_config_is_named(saved, tmp_path, kind):
    shutil.copytree(saved[kind], tmp_path, dirs_exist_ok=True)
    data = json.loads((tmp_path / CONFIG).read_text())
    targets = data["target_modules"]
    data["target_modules"] = targets[1:] if isinstance(targets, list) and len(targets) > 2 else ["q_proj"]
    (tmp_path / CONFIG).write_text(json.dumps(data))
    with pytest.raises(ak.AdapterFileError, match="which the config's target_modules=.* does not select"):
        ak.load_adapter(tiny_llama(), tmp_path)

"""Property tests: random YAML train configs, raw config text and --set overrides through
``adapterkit train`` only ever end cleanly: exit 0, or exit 2 with one line on stderr.

Budget (CI): three properties of at most 100, 60 and 60 examples, no deadline, no example
database on disk; about 10-20 s in all on the project's 2-core machine. The training itself is
replaced by a stand-in that reads the data (the checks that need no model) and returns: a valid
config ends with exit 0 in milliseconds instead of training.
"""

import contextlib
import dataclasses
import io
import string

import pytest
import yaml

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

from adapterkit.training.config import SECTIONS  # noqa: E402
from tests.cli.cli_world import CONFIG, assert_same_tree, tree  # noqa: E402

BUDGET = dict(deadline=None, database=None, suppress_health_check=list(HealthCheck))


def _fields(cls) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def _adapter_fields() -> list[str]:
    from adapterkit import LoRAConfig

    return ["method", *_fields(LoRAConfig)]


KEYS = {name: _fields(cls) for name, cls in SECTIONS.items()}
KEYS["adapter"] = _adapter_fields()
KEYS["stages"] = ["train", "top_blocks", "modules", "lr", "steps", "layer_decay"]

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 40),
    st.integers(-(10**12), 10**12),
    st.floats(0, 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(
        [
            "lora",
            "ia3",
            "bottleneck",
            "none",
            "adamw",
            "sgd",
            "cosine",
            "chat",
            "text",
            "instruction",
            "classification",
            "seq2seq",
            "all-linear",
            "q_proj",
            "1e-4",
            "no",
            "bf16",
            "./model",
            "train.jsonl",
            "run",
            "out/x",
            "-1",
            "auto",
            "loss",
            "bleu",
            "a\x00b",
            "x" * 300,
            "cfg.yaml",
            "model/config.json",
            "line\nbreak",
        ]
    ),
)
values = st.one_of(scalars, st.lists(scalars, max_size=3), st.dictionaries(st.text(max_size=6), scalars, max_size=2))
SECTION_NAMES = [*KEYS, "stages"]


@st.composite
def mutation(draw, data: dict) -> None:
    """One change to a config: a key set (mostly a real field) or dropped, or a section replaced or dropped."""
    rare = st.integers(0, 9).map(lambda n: n == 7)  # about one time in ten (not 0: Hypothesis favours it)
    name = draw(st.text(max_size=6)) if draw(rare) else draw(st.sampled_from(SECTION_NAMES))
    op = draw(st.sampled_from(["set", "set", "set", "set", "set", "drop-key", "replace", "drop"]))
    if op == "drop":
        data.pop(name, None)
    elif op == "replace":
        data[name] = draw(values)
    elif name == "stages":
        data["stages"] = [{"train": ["adapters"]}] if not isinstance(data.get("stages"), list) else data["stages"]
        stage = draw(st.integers(0, len(data["stages"])))
        if stage == len(data["stages"]):
            data["stages"].append({})
        if isinstance(data["stages"][stage], dict):
            data["stages"][stage][draw(st.sampled_from(KEYS["stages"]))] = draw(values)
    else:
        section = data.get(name)
        section = dict(section) if isinstance(section, dict) else {}
        key = draw(st.text(max_size=8)) if draw(rare) else draw(st.sampled_from(KEYS.get(name, ["x"])))
        if op == "drop-key":
            section.pop(key, None)
        else:
            section[key] = draw(values)
        data[name] = section


@st.composite
def configs(draw):
    """The world's valid config with one to three mutations."""
    import copy

    data = copy.deepcopy(CONFIG)
    for _ in range(draw(st.integers(1, 3))):
        draw(mutation(data))
    return data


@pytest.fixture(scope="module")
def fuzz_world(world, tmp_path_factory):
    import shutil

    w = tmp_path_factory.mktemp("fuzz") / "w"
    shutil.copytree(world, w)
    return w


@contextlib.contextmanager
def _stand_in_training(w):
    """Current folder ``w``; ``train`` reads the data and returns; nothing is reported."""
    import os

    import adapterkit.training as training
    from adapterkit.commands import train as command
    from adapterkit.training import resume, setup

    def train(config, resume=False, callbacks=()):
        resume_mod_check(resume)
        setup.read_data(config)
        setup.model_task(config)

    resume_mod_check = resume.check_mode
    mp = pytest.MonkeyPatch()
    mp.setattr(training, "train", train)
    mp.setattr(command, "_report", lambda result: None)
    here = os.getcwd()
    os.chdir(w)
    try:
        yield
    finally:
        os.chdir(here)
        mp.undo()


SEEN: list = []  # (exit status, stderr line) of every run, for a look at what the fuzzing reached


def _run_clean(argv) -> int:
    """``adapterkit ARGV``; asserts a clean end (exit 0 quietly, or exit 2 and one line)."""
    from adapterkit.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as stop:
            code = stop.code
    text = err.getvalue()
    lines = [line for line in text.splitlines() if line.strip()]
    assert "Traceback" not in text, text
    assert code in (0, 2), (code, text)
    if code == 2:
        assert len(lines) == 1 and lines[0].startswith("adapterkit"), text
    else:
        assert lines == [], text
    SEEN.append((code, lines[0] if lines else ""))
    return code


@settings(max_examples=100, **BUDGET)
@given(data=configs())
def test_random_configs_end_cleanly(fuzz_world, data):
    with _stand_in_training(fuzz_world):
        before = tree(fuzz_world / "run")
        (fuzz_world / "fuzz.yaml").write_text(yaml.safe_dump(data, allow_unicode=True))
        _run_clean(["train", "fuzz.yaml"])
        assert_same_tree(before, tree(fuzz_world / "run"))


yaml_text = st.one_of(
    st.text(alphabet=string.printable, max_size=80),
    st.lists(
        st.sampled_from(
            [
                "model:",
                "  name: ./model",
                "adapter: {method: lora",
                "- x",
                "\t",
                "data:",
                ": :",
                "  train: [",
                "'",
                "!!python/object:x",
                "&a",
                "*a",
                "{",
                "}",
                "optim: {lr: 1e-4}",
            ]
        ),
        max_size=8,
    ).map("\n".join),
    st.binary(max_size=40).map(lambda b: b.decode("latin-1")),
)


@settings(max_examples=60, **BUDGET)
@given(text=yaml_text)
def test_random_config_text_ends_cleanly(fuzz_world, text):
    with _stand_in_training(fuzz_world):
        (fuzz_world / "raw.yaml").write_bytes(text.encode("utf-8", "surrogateescape"))
        assert _run_clean(["train", "raw.yaml"]) == 2


@st.composite
def override(draw) -> str:
    """A --set item: mostly a real section and key with an odd value; now and then a malformed one."""
    rare = st.integers(0, 9).map(lambda n: n == 7)
    section = draw(st.text(max_size=5)) if draw(rare) else draw(st.sampled_from(SECTION_NAMES))
    keys = KEYS.get(section, ["x"])
    key = draw(st.text(max_size=5)) if draw(rare) else draw(st.sampled_from(keys))
    sep = draw(st.sampled_from(["", ".."])) if draw(rare) else "."
    value = draw(
        st.one_of(
            st.text(max_size=10),
            scalars.map(lambda v: yaml.safe_dump(v).split("\n...")[0].strip()),
            st.sampled_from(["[1", "{a: ", "null", "1e-4", "true", "'x", "- a", "[]", ""]),
        )
    )
    return f"{section}{sep}{key}={value}"


@settings(max_examples=60, **BUDGET)
@given(items=st.lists(override(), min_size=1, max_size=3))
def test_random_overrides_end_cleanly(fuzz_world, items):
    with _stand_in_training(fuzz_world):
        argv = ["train", "cfg.yaml"]
        for item in items:
            argv += ["--set", item]
        _run_clean(argv)

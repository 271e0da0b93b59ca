"""Bad train configs, --set overrides and arguments: one clear line on stderr, exit 2, nothing changed.

Each case runs ``adapterkit ...`` in a copy of a small world (tests/cli/cli_world.py) after its
setup broke one thing; the line must name the file (and line) or the key at fault.
"""

import pytest

from tests.cli.cli_world import both, check_case, config, write

TRAIN = ["train", "cfg.yaml"]

CONFIG_FILES = [
    pytest.param(TRAIN, write("cfg.yaml", "- model\n- data\n"), ["cfg.yaml", "a list", "mapping"], id="yaml-list"),
    pytest.param(TRAIN, write("cfg.yaml", "hello\n"), ["cfg.yaml", "the string 'hello'"], id="yaml-scalar"),
    pytest.param(TRAIN, write("cfg.yaml", "42\n"), ["cfg.yaml", "int 42"], id="yaml-number"),
    pytest.param(TRAIN, write("cfg.yaml", ""), ["cfg.yaml", "'adapter' is missing"], id="yaml-empty"),
    pytest.param(
        TRAIN,
        write("cfg.yaml", "model:\n  name: [x\n"),
        ["cfg.yaml:3:1", "not valid YAML", "from line 2"],
        id="yaml-unclosed-list",
    ),
    pytest.param(TRAIN, write("cfg.yaml", "model:\n\tname: x\n"), ["cfg.yaml:2:1", "'\\t'"], id="yaml-tab"),
    pytest.param(
        TRAIN,
        write("cfg.yaml", "model: {name: x\nadapter: 1\n"),
        ["cfg.yaml:2:", "not valid YAML"],
        id="yaml-unclosed-mapping",
    ),
    pytest.param(TRAIN, write("cfg.yaml", "a: b: c\n"), ["cfg.yaml:1:5", "mapping values"], id="yaml-colon"),
    pytest.param(
        TRAIN,
        write("cfg.yaml", "model: !!python/object:os.system x\n"),
        ["cfg.yaml:1:8", "constructor"],
        id="yaml-python-tag",
    ),
    pytest.param(
        TRAIN, write("cfg.yaml", b"model:\n  name: caf\xe9\n"), ["cfg.yaml:2", "not UTF-8", "0xe9"], id="yaml-latin1"
    ),
    pytest.param(["train", "missing.yaml"], None, ["missing.yaml", "does not exist"], id="config-missing"),
    pytest.param(["train", "model"], None, ["'model'", "is a folder"], id="config-is-folder"),
    pytest.param(
        TRAIN, config(extra={"a": 1}), ["cfg.yaml", "unknown field 'extra'", "Valid fields"], id="unknown-section"
    ),
    pytest.param(TRAIN, config(optim=3), ["cfg.yaml", "section 'optim'", "mapping"], id="section-not-mapping"),
    pytest.param(TRAIN, config(optim__lrr=0.1), ["cfg.yaml", "'lrr'", "did you mean 'lr'"], id="unknown-key"),
    pytest.param(TRAIN, config(optim__lr="fast"), ["cfg.yaml", "optim.lr", "'fast'"], id="lr-not-number"),
    pytest.param(TRAIN, config(optim__lr=-1.0), ["cfg.yaml", "optim.lr", "positive"], id="lr-negative"),
    pytest.param(TRAIN, config(optim__batch_size=0), ["cfg.yaml", "optim.batch_size"], id="batch-size-zero"),
    pytest.param(
        TRAIN, config(optim__batch_size=2.5), ["cfg.yaml", "optim.batch_size", "integer"], id="batch-size-float"
    ),
    pytest.param(TRAIN, config(optim__betas=0.9), ["cfg.yaml", "optim.betas", "list"], id="betas-scalar"),
    pytest.param(
        TRAIN, config(optim__optimizer="adam"), ["cfg.yaml", "optim.optimizer", "'adamw'"], id="optimizer-unknown"
    ),
    pytest.param(
        TRAIN, config(optim__mixed_precision="fp16"), ["optim.mixed_precision", "fp16", "GPU"], id="fp16-on-cpu"
    ),
    pytest.param(
        TRAIN, config(data__format="chatt"), ["cfg.yaml", "data.format", "did you mean 'chat'"], id="data-format-typo"
    ),
    pytest.param(TRAIN, config(data__train=None), ["cfg.yaml", "data.train is missing"], id="data-train-missing"),
    pytest.param(TRAIN, config(data__eval_split=1.5), ["cfg.yaml", "data.eval_split"], id="eval-split-range"),
    pytest.param(TRAIN, config(model=None), ["cfg.yaml", "section 'model' is missing"], id="model-missing"),
    pytest.param(TRAIN, config(model__name=7), ["cfg.yaml", "model.name", "string"], id="model-name-number"),
    pytest.param(TRAIN, config(adapter={"rank": 4}), ["cfg.yaml", "'method' key"], id="adapter-no-method"),
    pytest.param(
        TRAIN, config(adapter__method="lorra"), ["cfg.yaml", "'lorra'", "did you mean 'lora'"], id="adapter-method-typo"
    ),
    pytest.param(
        TRAIN, config(adapter__method=["lora"]), ["cfg.yaml", "adapter.method ['lora']"], id="adapter-method-list"
    ),
    pytest.param(TRAIN, config(adapter__rank=-1), ["cfg.yaml", "rank"], id="adapter-rank-negative"),
    pytest.param(TRAIN, config(adapter__rnk=8), ["cfg.yaml", "'rnk'"], id="adapter-key-typo"),
    pytest.param(
        TRAIN,
        write("cfg.yaml", "model: {name: ./model}\nadapter: {method: lora}\ndata: {train: t}\noptim: {1: 2}\n"),
        ["cfg.yaml", "key 1 is not a name"],
        id="key-not-a-name",
    ),
    pytest.param(TRAIN, config(eval__metric="bleu"), ["cfg.yaml", "eval.generate"], id="bleu-needs-generate"),
    pytest.param(TRAIN, config(quantization={"bits": 3}), ["cfg.yaml", "quantization.bits"], id="quant-bits"),
    pytest.param(TRAIN, config(stages="all"), ["cfg.yaml", "stages", "list"], id="stages-not-list"),
    pytest.param(
        TRAIN, config(stages=[{"train": ["everything"]}]), ["cfg.yaml", "stages[0].train"], id="stage-train-unknown"
    ),
]

OVERRIDES = [
    pytest.param(
        [*TRAIN, "--set", "optim.lr=[1"], None, ["--set 'optim.lr=[1'", "not valid YAML"], id="set-broken-value"
    ),
    pytest.param([*TRAIN, "--set", "optim.lr={a: "], None, ["--set", "not valid YAML"], id="set-broken-mapping"),
    pytest.param([*TRAIN, "--set", "optim.lrr=1"], None, ["'lrr'", "did you mean 'lr'"], id="set-unknown-key"),
    pytest.param([*TRAIN, "--set", "optimizer.lr=1"], None, ["unknown field 'optimizer'"], id="set-unknown-section"),
    pytest.param([*TRAIN, "--set", "optim.lr"], None, ["--set 'optim.lr'", "section.key=value"], id="set-no-equals"),
    pytest.param([*TRAIN, "--set", "lr=1"], None, ["--set 'lr=1'", "section.key=value"], id="set-no-section"),
    pytest.param([*TRAIN, "--set", ".lr=1"], None, ["--set '.lr=1'"], id="set-empty-section"),
    pytest.param([*TRAIN, "--set", "optim.a.b=1"], None, ["--set 'optim.a.b=1'"], id="set-too-deep"),
    pytest.param(
        [*TRAIN, "--set", "stages.lr=1"],
        config(stages=[{"train": ["adapters"]}]),
        ["--set 'stages.lr=1'", "not a mapping"],
        id="set-into-list-section",
    ),
    pytest.param([*TRAIN, "--set", "optim.batch_size=many"], None, ["optim.batch_size", "'many'"], id="set-wrong-type"),
    pytest.param([*TRAIN, "--set", "optim.lr="], None, ["optim.lr", "None"], id="set-empty-value"),
    pytest.param(
        [*TRAIN, "--set", "output.dir=train.jsonl"], None, ["output.dir", "is a file"], id="set-output-dir-file"
    ),
]

ARGUMENTS = [
    pytest.param(["train"], None, ["give the YAML train config"], id="train-no-config"),
    pytest.param([*TRAIN, "--num-processes", "0"], None, ["--num-processes", "at least 1"], id="num-processes-0"),
    pytest.param([*TRAIN, "--num-processes", "two"], None, ["--num-processes", "'two'"], id="num-processes-text"),
    pytest.param([*TRAIN, "--resume", "always"], None, ["--resume", "'always'"], id="resume-bad-value"),
    pytest.param([*TRAIN, "--bogus"], None, ["unrecognized arguments: --bogus"], id="unknown-option"),
    pytest.param(["frobnicate"], None, ["invalid choice: 'frobnicate'"], id="unknown-command"),
    pytest.param(
        ["generate", "run", "--max-new-tokens", "-1", "hi"],
        None,
        ["--max-new-tokens", "at least 1"],
        id="max-new-tokens-negative",
    ),
    pytest.param(
        ["generate", "run", "--max-new-tokens", "lots", "hi"],
        None,
        ["--max-new-tokens", "'lots'"],
        id="max-new-tokens-text",
    ),
    pytest.param(
        ["merge", "run", "--base", "model", "--out", "m", "--dtype", "fp8"],
        None,
        ["invalid choice"],
        id="merge-bad-dtype",
    ),
    pytest.param(["inspect"], None, ["required: DIR"], id="inspect-no-folder"),
]


@pytest.mark.parametrize("argv, setup, expected", CONFIG_FILES + OVERRIDES + ARGUMENTS)
def test_bad_input_gives_one_clear_line_and_changes_nothing(
    world, tmp_path, monkeypatch, capsys, argv, setup, expected
):
    check_case(world, tmp_path, monkeypatch, capsys, argv, setup, expected)


def test_errors_name_the_config_file_and_keep_the_run(world, tmp_path, monkeypatch, capsys):
    """A bad value in a config that points at a finished run: the run's adapter and checkpoints stay."""
    setup = both(config(optim__lr="x"), write("run/metrics.jsonl", "{}\n"))
    line = check_case(world, tmp_path, monkeypatch, capsys, TRAIN, setup, ["cfg.yaml", "optim.lr"])
    assert line.startswith("adapterkit train: error: cfg.yaml: ")

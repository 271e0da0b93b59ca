"""TrainConfig: everything ``adapterkit train`` needs, from one YAML file.

Sections: ``model``, ``quantization`` (optional), ``adapter`` (``method`` plus that method's
config fields, e.g. LoRAConfig's; ``null`` or ``method: none`` for no adapter), ``data``, ``optim``,
``eval``, ``output``, and ``stages`` (optional: staged / partial fine-tuning, see stages.py). Each section is a
frozen dataclass; values are checked against the field types, and an unknown key is an error
that names it, the section, and the valid keys. ``--set optim.lr=1e-4`` overrides one value.
"""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any, Mapping, Optional, Union

from ..config import AdapterConfig, check_known, check_names, check_type
from ..errors import ConfigError, close_matches
from .stages import StageConfig, build_stages
from .sections import DataConfig, EvalConfig, ModelConfig, OptimConfig, OutputConfig, QuantConfig


def build_section(cls: type, data: Any, name: str):
    """A section dataclass from a mapping, with typed checks and clear errors."""
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"config section {name!r} must be a mapping of keys to values; got {_kind(data)}.")
    check_names(data, f"config section {name!r}")
    check_known(cls, data, f"config section {name!r}")
    hints = typing.get_type_hints(cls)
    values = {key: check_type(f"{name}.{key}", value, hints[key]) for key, value in data.items()}
    return cls(**values)


def build_adapter(data: Any) -> Optional[AdapterConfig]:
    """The adapter config named by ``method`` (any registered method: lora, ...); None for
    ``null`` or ``method: none`` (no adapter: the stages say which weights train)."""
    from .. import methods  # noqa: F401  (registers the built-in methods)
    from ..registry import METHODS

    if data is None or isinstance(data, AdapterConfig):
        return data
    if not isinstance(data, Mapping) or "method" not in data:
        raise ConfigError(
            f"config section 'adapter' must be a mapping with a 'method' key (one of: "
            f"{', '.join(METHODS)}, or none) and that method's fields; got {data!r}."
        )
    check_names(data, "config section 'adapter'")
    method = data["method"]
    if method in ("none", None):
        if len(data) > 1:
            raise ConfigError(f"adapter.method none takes no other fields; got {sorted(set(data) - {'method'})}.")
        return None
    if not isinstance(method, str) or method not in METHODS:
        raise ConfigError(
            f"adapter.method {method!r} is not a known method{close_matches(str(method), METHODS)}; "
            f"valid methods: {', '.join(METHODS)}."
        )
    try:
        return METHODS[method].config.from_dict(dict(data))
    except ConfigError as err:
        raise ConfigError(f"config section 'adapter': {err}") from None
    except (TypeError, ValueError) as err:  # a method config that did not check a value's type itself
        raise ConfigError(f"config section 'adapter': a value does not fit {method}'s fields ({err}).") from None


SECTIONS = {
    "model": ModelConfig,
    "quantization": QuantConfig,
    "data": DataConfig,
    "optim": OptimConfig,
    "eval": EvalConfig,
    "output": OutputConfig,
}


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """A whole training run. Build with ``from_dict`` / ``from_yaml`` or directly in code."""

    model: ModelConfig
    adapter: Optional[AdapterConfig]
    data: DataConfig
    optim: OptimConfig = OptimConfig()
    eval: EvalConfig = EvalConfig()
    output: OutputConfig = OutputConfig()
    quantization: Optional[QuantConfig] = None
    stages: tuple[StageConfig, ...] = ()

    def __post_init__(self):
        if self.adapter is None and not self.stages:
            raise ConfigError(
                "train config: with no adapter (adapter: null or method: none), give stages: "
                "naming what trains, e.g. stages: [{train: [all]}] for full fine-tuning."
            )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "TrainConfig":
        if not isinstance(data, Mapping):
            raise ConfigError(f"a train config is a mapping of sections; got {type(data).__name__}.")
        valid = [f.name for f in dataclasses.fields(cls)]
        check_names(data, "train config")
        check_known(cls, data, "train config")
        if "adapter" not in data:
            raise ConfigError(
                f"train config: section 'adapter' is missing (null for no adapter). Sections: {', '.join(valid)}."
            )
        for required in ("model", "data"):
            if data.get(required) is None:
                raise ConfigError(f"train config: section {required!r} is missing. Sections: {', '.join(valid)}.")
        parts: dict[str, Any] = {"adapter": build_adapter(data["adapter"])}
        for name, section in SECTIONS.items():
            if name in data and not (name == "quantization" and data[name] is None):
                parts[name] = build_section(section, data[name], name)
        parts["stages"] = build_stages(data.get("stages"), build_section)
        return cls(**parts)

    @classmethod
    def from_yaml(cls, path: Union[str, Path], overrides: tuple[str, ...] = ()) -> "TrainConfig":
        """The config in YAML file ``path``, with ``--set`` style ``overrides``; an error names the file
        (and the line and column of a YAML syntax error)."""
        path = Path(path)
        data = read_yaml(path, "config file")
        if data is None:
            data = {}
        if not isinstance(data, Mapping):
            raise ConfigError(
                f"config file {str(path)!r} holds {_kind(data)}; a train config is a mapping of "
                f"sections ({', '.join(f.name for f in dataclasses.fields(cls))})."
            )
        data = apply_overrides(data, overrides)
        try:
            return cls.from_dict(data)
        except ConfigError as err:
            raise ConfigError(f"{path}: {err}") from None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"adapter": None if self.adapter is None else self.adapter.to_dict()}
        for name in SECTIONS:
            section = getattr(self, name)
            if section is not None:
                out[name] = _plain(section)
        if self.stages:
            out["stages"] = [_plain(s) for s in self.stages]
        return out

    def replace(self, changes: Mapping[str, Any]) -> "TrainConfig":
        """A copy with values changed: ``{"optim.lr": 1e-4}``, or whole sections ``{"eval": {...}}``."""
        data = self.to_dict()
        for key, value in changes.items():
            section, _, field = key.partition(".")
            if field:
                data.setdefault(section, {})[field] = value
            else:
                data[section] = value
        return TrainConfig.from_dict(data)


def _kind(value: Any) -> str:
    """'a list', 'the string 'x'', ... : what a YAML value is, for messages."""
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, str):
        return f"the string {value[:40]!r}"
    return f"{type(value).__name__} {value!r}"


def _mark(err) -> str:
    mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
    return f":{mark.line + 1}:{mark.column + 1}" if mark is not None else ""


def yaml_problem(err) -> str:
    """A YAML error's own words on one line, without PyYAML's quoted excerpt."""
    context, problem = getattr(err, "context", None), getattr(err, "problem", None)
    start, mark = getattr(err, "context_mark", None), getattr(err, "problem_mark", None)
    if context and start is not None and mark is not None and start.line != mark.line:
        context = f"{context} (from line {start.line + 1}, column {start.column + 1})"
    text = "; ".join(p for p in (context, problem) if p) or str(err)
    return " ".join(text.split())


def read_yaml(path: Path, what: str) -> Any:
    """The parsed YAML file ``path``; a ConfigError names it (``path:line:column`` for a syntax error)."""
    import yaml

    if path.is_dir():
        raise ConfigError(f"{what} {str(path)!r} is a folder; give the path of a YAML file.")
    if not path.is_file():
        raise ConfigError(f"{what} {str(path)!r} does not exist; give the path of a YAML file.")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise ConfigError(
            f"{path}:{line}: {what} is not UTF-8 text (byte {raw[err.start]:#04x}); save it as UTF-8."
        ) from None
    try:
        return yaml.safe_load(text)
    except yaml.reader.ReaderError as err:  # a character YAML does not accept: no mark, a position
        line = text[: err.position].count("\n") + 1
        raise ConfigError(
            f"{path}:{line}: {what} is not valid YAML: {err.reason} character "
            f"{chr(err.character)!r} ({err.character:#x}); remove it."
        ) from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}{_mark(err)}: {what} is not valid YAML: {yaml_problem(err)}.") from None
    except RecursionError:
        raise ConfigError(f"{path}: {what} is nested too deeply to read.") from None


def _plain(section) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(section).items()}


def _override_value(item: str, raw: str) -> Any:
    import yaml

    if not raw.strip():
        return None
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError as err:
        raise ConfigError(
            f"--set {item!r}: the value {raw!r} is not valid YAML ({yaml_problem(err)}); "
            f"quote a string that starts with [, {{, ', \" or has ': ' in it."
        ) from None


def apply_overrides(data: Mapping[str, Any], overrides: tuple[str, ...]) -> dict[str, Any]:
    """``data`` with ``section.key=value`` overrides applied (values read as YAML)."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"a train config is a mapping of sections; got {_kind(data)}.")
    out = {k: dict(v) if isinstance(v, Mapping) else v for k, v in dict(data).items()}
    for item in overrides:
        key, eq, raw = item.partition("=")
        section, dot, field = key.strip().partition(".")
        if not eq or not dot or not section or not field or "." in field:
            raise ConfigError(f"--set {item!r} is not of the form section.key=value (e.g. optim.lr=1e-4).")
        if section not in out or out[section] is None:
            out[section] = {}
        if not isinstance(out[section], dict):
            raise ConfigError(f"--set {item!r}: section {section!r} is not a mapping, so it has no key {field!r}.")
        out[section][field] = _override_value(item, raw)
    return out

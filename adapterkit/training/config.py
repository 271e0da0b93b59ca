"""TrainConfig: everything ``adapterkit train`` needs, from one YAML file.

Sections: ``model``, ``quantization`` (optional), ``adapter`` (``method`` plus that method's
config fields, e.g. LoRAConfig's; ``null`` or ``method: none`` for no adapter), ``data``, ``optim``,
``eval``, ``output``, and ``stages`` (optional: staged / partial fine-tuning, see stages.py). Each section is a
frozen dataclass; values are checked against the field types, and an unknown key is an error
that names it, the section, and the valid keys. ``--set optim.lr=1e-4`` overrides one value.
"""
from __future__ import annotations

import dataclasses
import math
import types
import typing
from pathlib import Path
from typing import Any, Mapping, Optional, Union

from ..config import AdapterConfig, check_known
from ..errors import ConfigError, close_matches
from .stages import StageConfig, build_stages
from .sections import (DataConfig, EvalConfig, ModelConfig, OptimConfig, OutputConfig,
                       QuantConfig)


def _fail(where: str, value: Any, expected: str) -> ConfigError:
    return ConfigError(f"{where} must be {expected}; got {value!r}.")


def _coerce(where: str, value: Any, hint: Any) -> Any:
    """``value`` checked (and converted where lossless) against the type hint ``hint``."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(where, value, arg)
            except ConfigError as err:
                errors.append(err)
        raise errors[-1]
    if hint is bool:
        if not isinstance(value, bool):
            raise _fail(where, value, "true or false")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _fail(where, value, "an integer")
        return value
    if hint is float:
        if isinstance(value, str):  # YAML reads 1e-4 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                raise _fail(where, value, "a number") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise _fail(where, value, "a number")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise _fail(where, value, "a string")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise _fail(where, value, "a list")
        inner = args[0] if args else Any
        return tuple(_coerce(f"{where}[{i}]", v, inner) for i, v in enumerate(value))
    return value


def build_section(cls: type, data: Any, name: str):
    """A section dataclass from a mapping, with typed checks and clear errors."""
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"config section {name!r} must be a mapping of keys to values; got {data!r}.")
    check_known(cls, data, f"config section {name!r}")
    hints = typing.get_type_hints(cls)
    values = {key: _coerce(f"{name}.{key}", value, hints[key]) for key, value in data.items()}
    return cls(**values)


def build_adapter(data: Any) -> Optional[AdapterConfig]:
    """The adapter config named by ``method`` (any registered method: lora, ...); None for
    ``null`` or ``method: none`` (no adapter: the stages say which weights train)."""
    from .. import methods  # noqa: F401  (registers the built-in methods)
    from ..registry import METHODS

    if data is None or isinstance(data, AdapterConfig):
        return data
    if isinstance(data, Mapping) and data.get("method") in ("none", None) and "method" in data:
        if len(data) > 1:
            raise ConfigError(f"adapter.method none takes no other fields; got {sorted(set(data) - {'method'})}.")
        return None
    if not isinstance(data, Mapping) or "method" not in data:
        raise ConfigError(
            f"config section 'adapter' must be a mapping with a 'method' key (one of: "
            f"{', '.join(METHODS)}) and that method's fields; got {data!r}."
        )
    method = data["method"]
    if method not in METHODS:
        raise ConfigError(
            f"adapter.method {method!r} is not a known method{close_matches(str(method), METHODS)}; "
            f"valid methods: {', '.join(METHODS)}."
        )
    try:
        return METHODS[method].config.from_dict(dict(data))
    except ConfigError as err:
        raise ConfigError(f"config section 'adapter': {err}") from None


SECTIONS = {"model": ModelConfig, "quantization": QuantConfig, "data": DataConfig,
            "optim": OptimConfig, "eval": EvalConfig, "output": OutputConfig}


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
            raise ConfigError("train config: with no adapter (adapter: null or method: none), give stages: "
                              "naming what trains, e.g. stages: [{train: [all]}] for full fine-tuning.")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "TrainConfig":
        if not isinstance(data, Mapping):
            raise ConfigError(f"a train config is a mapping of sections; got {type(data).__name__}.")
        valid = [f.name for f in dataclasses.fields(cls)]
        check_known(cls, data, "train config")
        if "adapter" not in data:
            raise ConfigError("train config: section 'adapter' is missing (null for no adapter). "
                              f"Sections: {', '.join(valid)}.")
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
        import yaml

        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {str(path)!r} does not exist; give the path of a YAML file.")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"config file {str(path)!r} is not valid YAML: {err}") from None
        return cls.from_dict(apply_overrides(data, overrides))

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


def _plain(section) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(section).items()}


def apply_overrides(data: Mapping[str, Any], overrides: tuple[str, ...]) -> dict[str, Any]:
    """``data`` with ``section.key=value`` overrides applied (values read as YAML)."""
    import yaml

    out = {k: dict(v) if isinstance(v, Mapping) else v for k, v in dict(data).items()}
    for item in overrides:
        key, eq, raw = item.partition("=")
        section, dot, field = key.strip().partition(".")
        if not eq or not dot or not field or "." in field:
            raise ConfigError(
                f"--set {item!r} is not of the form section.key=value (e.g. optim.lr=1e-4)."
            )
        if section not in out or out[section] is None:
            out[section] = {}
        if not isinstance(out[section], dict):
            raise ConfigError(f"--set {item!r}: section {section!r} is not a mapping.")
        out[section][field] = yaml.safe_load(raw) if raw.strip() else None
    return out

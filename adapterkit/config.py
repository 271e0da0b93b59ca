"""Config validation, one home for it: the base of every method config (frozen, typed, validated,
exact JSON round trip) and the checks the training config's sections use too.

- ``check_known`` / ``check_names``: keys must be names, and fields of the config (close matches
  suggested);
- ``check_type``: a value against its field's type hint (bool, int, float, str, tuples, optionals),
  converted where lossless (YAML's ``1e-4`` string to a float); what the training sections use;
- ``AdapterConfig._positive`` / ``_choice`` / ``_tuple`` and ``check_layers``: the value checks
  each method's ``__post_init__`` makes.

A config is a frozen dataclass. Unknown field names are refused (at construction and in
``from_dict``) with an error that lists the valid ones. Sequences are stored as tuples so that
configs hash and compare; ``to_dict`` writes lists, ``from_dict`` reads them back, so
``Config.from_dict(json.loads(json.dumps(c.to_dict()))) == c``.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from typing import Any, ClassVar, Mapping, Union

from .errors import ConfigError, close_matches

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def field_names(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls))


def check_known(cls: type, keys, where: str) -> None:
    """Raise ConfigError for any key that is not a field of ``cls``."""
    valid = field_names(cls)
    for key in keys:
        if key not in valid:
            raise ConfigError(
                f"{where}: unknown field {key!r}{close_matches(key, valid)}. Valid fields: {', '.join(valid)}."
            )


def _fail(where: str, value: Any, expected: str) -> ConfigError:
    return ConfigError(f"{where} must be {expected}; got {value!r}.")


def check_type(where: str, value: Any, hint: Any) -> Any:
    """``value`` checked (and converted where lossless) against the type hint ``hint``."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return check_type(where, value, arg)
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
        return tuple(check_type(f"{where}[{i}]", v, inner) for i, v in enumerate(value))
    return value


def check_names(data: Mapping, where: str) -> None:
    """Keys are names: YAML also allows numbers, lists, ... as keys."""
    for key in data:
        if not isinstance(key, str):
            raise ConfigError(f"{where}: key {key!r} is not a name; keys are field names (strings).")


def check_layers(owner: str, layers) -> tuple[int, ...] | None:
    """Block indices as a tuple of non-negative ints (None stays None); for a config's ``layers``."""
    if layers is None:
        return None
    found = (layers,) if isinstance(layers, int) else layers
    if not isinstance(found, (list, tuple, range)) or not all(
        isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in found
    ):
        raise ConfigError(f"{owner}.layers must be block indices (non-negative ints); got {layers!r}.")
    return tuple(found)


@dataclasses.dataclass(frozen=True)
class AdapterConfig:
    """Fields and behaviour shared by every method's config."""

    method: ClassVar[str] = ""

    def __new__(cls, *args, **kwargs):
        check_known(cls, kwargs, cls.__name__)
        return super().__new__(cls)

    # -- validation helpers for subclasses' __post_init__ ---------------------------------
    def _set(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)

    def _tuple(self, name: str) -> None:
        """Store a list / tuple field as a tuple of str (a plain string stays a string)."""
        value = getattr(self, name)
        if isinstance(value, (list, tuple)):
            if not all(isinstance(v, str) for v in value):
                raise ConfigError(f"{type(self).__name__}.{name} must hold strings; got {value!r}.")
            self._set(name, tuple(value))
        elif not isinstance(value, str):
            raise ConfigError(f"{type(self).__name__}.{name} must be a string or a list of strings; got {value!r}.")
        else:  # a plain string is a regular expression (or a keyword such as "all-linear")
            try:
                re.compile(value)
            except re.error as err:
                raise ConfigError(
                    f"{type(self).__name__}.{name} = {value!r} is not a valid regular expression ({err}); "
                    "give a list of module-name suffixes, or fix the pattern."
                ) from None

    def _positive(self, name: str, integer: bool = False) -> None:
        value = getattr(self, name)
        kind = (int,) if integer else (int, float)
        if (
            isinstance(value, bool)
            or not isinstance(value, kind)
            or not value > 0
            or (not integer and not math.isfinite(value))
        ):
            what = "a positive integer" if integer else "a positive number"
            raise ConfigError(f"{type(self).__name__}.{name} must be {what}; got {value!r}.")

    def _choice(self, name: str, choices: tuple) -> None:
        value = getattr(self, name)
        if value not in choices:
            raise ConfigError(
                f"{type(self).__name__}.{name} must be one of {', '.join(map(repr, choices))}; "
                f"got {value!r}{close_matches(str(value), map(str, choices))}."
            )

    # -- serialisation --------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"method": self.method}
        for name in field_names(type(self)):
            value = getattr(self, name)
            out[name] = list(value) if isinstance(value, tuple) else value
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]):
        data = dict(data)
        method = data.pop("method", cls.method)
        if method != cls.method:
            raise ConfigError(f"{cls.__name__} reads method {cls.method!r}; the data says {method!r}.")
        check_names(data, cls.__name__)
        check_known(cls, data, cls.__name__)
        return cls(**data)


def check_adapter_name(name: Any) -> str:
    """Adapter names are simple identifiers: they become module and folder names."""
    from .errors import AdapterNameError

    if not isinstance(name, str) or not _IDENTIFIER.match(name):
        raise AdapterNameError(
            f"adapter name {name!r} is not a simple identifier; use letters, digits and '_', "
            "not starting with a digit (e.g. 'default', 'task_a')."
        )
    import torch.nn

    if hasattr(torch.nn.ModuleDict(), name):  # class and instance attributes (training, _modules, ...)
        raise AdapterNameError(
            f"adapter name {name!r} is taken by a torch module attribute; pick another (e.g. {name + '_adapter'!r})."
        )
    return name

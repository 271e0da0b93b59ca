"""The methods adapterkit knows: config class -> how to place and build the adapter.

A method registers once (in its package's ``__init__``); ``attach``, ``summary``, the contract
test suite and the file code look methods up here instead of special-casing them.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

from torch import nn

from .config import AdapterConfig
from .errors import ConfigError
from .layer import AdapterLayer


@dataclasses.dataclass(frozen=True)
class Method:
    """How one method enters a model.

    config: its config class.  layer: the AdapterLayer subclass that wraps a base.
    where(model, config) -> names of the modules to wrap.
    build(base, config) -> the adapter's module for one base (held in ``layer.adapters[name]``).
    """

    config: type[AdapterConfig]
    layer: type[AdapterLayer]
    where: Callable[[nn.Module, AdapterConfig], list[str]]
    build: Callable[[nn.Module, AdapterConfig], nn.Module]


METHODS: dict[str, Method] = {}


def register(method: Method) -> Method:
    METHODS[method.config.method] = method
    return method


def method_for(config: AdapterConfig) -> Method:
    found = METHODS.get(getattr(config, "method", None))
    if found is None or not isinstance(config, found.config):
        known = ", ".join(m.config.__name__ for m in METHODS.values())
        raise ConfigError(f"{type(config).__name__} is not a method config; use one of: {known}.")
    return found

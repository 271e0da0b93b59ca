"""Training: ``ak.train(config)`` in code, ``adapterkit train CONFIG.yaml`` on the command line.

``adapterkit.train`` is both this package and the function ``train``: once the package is
imported, Python sets the attribute ``adapterkit.train`` to the package, so the package itself
is made callable (``ak.train(cfg)`` calls ``adapterkit.train.loop.train``).
"""
import sys
import types

from .config import TrainConfig
from .loop import TrainResult, train
from .sections import DataConfig, EvalConfig, ModelConfig, OptimConfig, OutputConfig, QuantConfig


class _CallablePackage(types.ModuleType):
    def __call__(self, *args, **kwargs) -> TrainResult:
        return train(*args, **kwargs)


sys.modules[__name__].__class__ = _CallablePackage

__all__ = ["TrainConfig", "TrainResult", "train", "DataConfig", "EvalConfig", "ModelConfig",
           "OptimConfig", "OutputConfig", "QuantConfig"]

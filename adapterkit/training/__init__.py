"""Training: ``ak.train(config)`` in code, ``adapterkit train CONFIG.yaml`` on the command line.

The package is ``adapterkit.training`` so that ``adapterkit.train`` stays the function.
"""

from .config import TrainConfig
from .loop import TrainResult, train
from .sections import DataConfig, EvalConfig, ModelConfig, OptimConfig, OutputConfig, QuantConfig
from .stages import StageConfig

__all__ = [
    "TrainConfig",
    "TrainResult",
    "train",
    "DataConfig",
    "EvalConfig",
    "ModelConfig",
    "OptimConfig",
    "OutputConfig",
    "QuantConfig",
    "StageConfig",
]

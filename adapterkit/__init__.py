"""adapterkit: parameter-efficient fine-tuning for PyTorch and Hugging Face models.

import adapterkit as ak
model = ak.attach(model, ak.LoRAConfig(rank=16, alpha=32, targets="all-linear"))
ak.summary(model)
"""

from .base_weights import base_state_dict
from .config import AdapterConfig
from .errors import (
    AdapterFileError,
    AdapterFileMissing,
    AdapterKitError,
    AdapterNameError,
    ConfigError,
    InputError,
    MergeError,
    TargetError,
    UnsupportedModuleError,
)
from .inject import (
    active_names,
    adapter_config,
    adapter_names,
    attach,
    delete_adapter,
    detach,
    disabled,
    merge,
    merged_adapters,
    set_active,
)
from .inplace import merge_adapter, unmerge_adapter
from .heads import replace_head, unfreeze
from .layer import AdapterLayer
from .methods.adalora import AdaLoRAConfig, RankAllocator, orthogonality
from .methods.boft import BOFTConfig
from .methods.bottleneck import BottleneckConfig
from .methods.compacter import CompacterConfig
from .methods.loreft import LoReFTConfig
from .methods.ia3 import IA3Config
from .methods.ln_tuning import LNTuningConfig
from .methods.lora import LoRAConfig
from .methods.loha import LoHaConfig
from .methods.lokr import LoKrConfig
from .methods.oft import OFTConfig
from .methods.prompt import PrefixTuningConfig, PromptEncoderConfig, PromptTuningConfig
from .methods.vera import VeRAConfig
from .methods.lora.combine import combine
from .methods.lora.eva import init_eva
from .methods.lora.convert import save_as_lora
from .methods.lora.hotswap import hotswap_adapter, prepare_hotswap
from .methods.lora.resize import resize_rank
from .methods.lora.scaling import rescaled, scale_active, set_scale, unscale_active
from .freeze import freeze_adapter, unfreeze_adapter
from .rows import mixed_batch
from .summary import summary

__version__ = "0.1.0"

# Heavier parts load on first use, so `import adapterkit` stays light (no triton, no bitsandbytes).
_LAZY = {
    "save_adapter": "adapterkit.io",
    "load_adapter": "adapterkit.io",
    "quantize": "adapterkit.quant",
    "QuantLinear": "adapterkit.quant",
    "prepare_for_kbit_training": "adapterkit.quant",
    "train": "adapterkit.training",
    "TrainConfig": "adapterkit.training",
    "load_model": "adapterkit.models",
    "checkpoint_callback": "adapterkit.io.trainer",
    "AdapterCheckpoints": "adapterkit.io.trainer",
    "plan": "adapterkit.planning",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'adapterkit' has no attribute {name!r}")


__all__ = [
    "AdaLoRAConfig",
    "RankAllocator",
    "orthogonality",
    "init_eva",
    "save_as_lora",
    "BottleneckConfig",
    "IA3Config",
    "PrefixTuningConfig",
    "PromptEncoderConfig",
    "PromptTuningConfig",
    "VeRAConfig",
    "LNTuningConfig",
    "OFTConfig",
    "BOFTConfig",
    "replace_head",
    "unfreeze",
    "LoHaConfig",
    "LoKrConfig",
    "CompacterConfig",
    "LoReFTConfig",
    "mixed_batch",
    "AdapterConfig",
    "AdapterFileError",
    "AdapterFileMissing",
    "AdapterKitError",
    "AdapterLayer",
    "AdapterNameError",
    "ConfigError",
    "InputError",
    "LoRAConfig",
    "MergeError",
    "TargetError",
    "UnsupportedModuleError",
    "active_names",
    "adapter_config",
    "adapter_names",
    "attach",
    "base_state_dict",
    "combine",
    "delete_adapter",
    "detach",
    "disabled",
    "merge",
    "merge_adapter",
    "merged_adapters",
    "set_active",
    "summary",
    "unmerge_adapter",
    "freeze_adapter",
    "hotswap_adapter",
    "prepare_hotswap",
    "unfreeze_adapter",
    "rescaled",
    "resize_rank",
    "scale_active",
    "set_scale",
    "unscale_active",
] + list(_LAZY)

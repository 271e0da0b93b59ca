"""Quantized base layers: QuantLinear, quantize, requantize, prepare_for_kbit_training.

import adapterkit as ak
ak.quantize(model, bits=4, quant_type="nf4")        # nn.Linear -> QuantLinear, in place
ak.prepare_for_kbit_training(model)                 # frozen base, checkpointing, fp32 norms
model = ak.attach(model, ak.LoRAConfig(rank=16, targets="all-linear"))   # QLoRA
"""

from .convert import from_bnb_linear4bit, quantize, requantize
from .kbit import prepare_for_kbit_training
from .linear import QuantLinear

__all__ = ["QuantLinear", "from_bnb_linear4bit", "prepare_for_kbit_training", "quantize", "requantize"]

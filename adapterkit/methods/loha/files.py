"""LoHa on disk: ``peft_type: "LOHA"``, config keys as ``methods/lycoris/files.py`` lists them.

Tensors, per adapted module ``M``: ``base_model.model.M.hada_w1_a`` (out, r), ``.hada_w1_b``
(r, in), ``.hada_w2_a``, ``.hada_w2_b`` (the same shapes; on a Conv2d in is in * kh * kw); with
``use_effective_conv2d`` ``.hada_t1`` / ``.hada_t2`` (r, r, kh, kw) and w*_a (r, out), w*_b (r, in).
PEFT loads LoHa on Linear and Conv2d only (not on GPT-2's Conv1D, which adapterkit adapts too).
"""

from __future__ import annotations

from typing import Any, Mapping

from torch import Tensor, nn

from ...registry import PEFT_PREFIX, FileFormat
from ..lycoris import files
from .config import LoHaConfig

# adapterkit parameter -> PEFT's leaf name
NAMES = {
    "w1_a": "hada_w1_a",
    "w1_b": "hada_w1_b",
    "w2_a": "hada_w2_a",
    "w2_b": "hada_w2_b",
    "t1": "hada_t1",
    "t2": "hada_t2",
}


def state_to_file(module_name: str, adapter: nn.Module) -> dict[str, Tensor]:
    return {f"{PEFT_PREFIX}{module_name}.{NAMES[n]}": p for n, p in adapter.named_parameters() if n in NAMES}


def config_from_file(data: Mapping[str, Any]) -> LoHaConfig:
    return files.config_from_file(LoHaConfig, data)


def sizes_from_file(config: LoHaConfig, shapes: Mapping[str, tuple]) -> list[str]:
    return files.rank_problems(config.rank, shapes, ("hada_w1_b", "hada_w2_b"))


FILES = FileFormat(
    peft_type="LOHA",
    config_to_file=files.config_to_file,
    config_from_file=config_from_file,
    state_to_file=state_to_file,
    sizes_from_file=sizes_from_file,
)

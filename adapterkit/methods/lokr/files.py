"""LoKr on disk: ``peft_type: "LOKR"``, config keys as ``methods/lycoris/files.py`` lists them.

Tensors, per adapted module ``M`` (out = a b, in = c d, ``layers.factorization``):
``base_model.model.M.lokr_w1`` (a, c) or ``.lokr_w1_a`` (a, r) and ``.lokr_w1_b`` (r, c);
``.lokr_w2`` (b, d[, kh, kw]) or ``.lokr_w2_a`` (b, r) and ``.lokr_w2_b`` (r, d[ * kh * kw]), or
with ``use_effective_conv2d`` ``.lokr_t2`` (r, r, kh, kw), ``.lokr_w2_a`` (r, b), ``.lokr_w2_b`` (r, d).
PEFT loads LoKr on Linear and Conv2d only (not on GPT-2's Conv1D, which adapterkit adapts too).
"""

from __future__ import annotations

from typing import Any, Mapping

from torch import Tensor, nn

from ...registry import PEFT_PREFIX, FileFormat
from ..lycoris import files
from .config import LoKrConfig

# adapterkit parameter -> PEFT's leaf name
NAMES = {n: "lokr_" + n for n in ("w1", "w1_a", "w1_b", "w2", "w2_a", "w2_b", "t2")}


def state_to_file(module_name: str, adapter: nn.Module) -> dict[str, Tensor]:
    return {f"{PEFT_PREFIX}{module_name}.{NAMES[n]}": p for n, p in adapter.named_parameters() if n in NAMES}


def config_from_file(data: Mapping[str, Any]) -> LoKrConfig:
    return files.config_from_file(LoKrConfig, data)


def sizes_from_file(config: LoKrConfig, shapes: Mapping[str, tuple]) -> list[str]:
    return files.rank_problems(config.rank, shapes, ("lokr_w1_b", "lokr_w2_b"))


FILES = FileFormat(
    peft_type="LOKR",
    config_to_file=files.config_to_file,
    config_from_file=config_from_file,
    state_to_file=state_to_file,
    sizes_from_file=sizes_from_file,
)

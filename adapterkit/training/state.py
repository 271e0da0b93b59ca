"""What a run carries besides tensors, and what a checkpoint's ``state.json`` holds.

step        optimizer steps done
stage       the stage those steps ended in (-1 without stages)
best        the best ``eval.metric`` seen so far (None before the first evaluation)
bad_evals   evaluations in a row without improvement (early stopping)
first_eval  the evaluation before training, if one ran
history     every logged entry ({"step": ..., "loss": ..., ...}), as metrics.jsonl
config      the run's TrainConfig.to_dict(): resume compares it with the new run's
optimizer   "indices" (torch's state dict) or "names" (keyed by parameter names: FSDP)
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

OPTIMIZER_KEYS = ("indices", "names")


@dataclasses.dataclass
class RunState:
    step: int = 0
    stage: int = -1
    best: Optional[float] = None
    bad_evals: int = 0
    first_eval: Optional[dict] = None
    history: list = dataclasses.field(default_factory=list)
    config: dict = dataclasses.field(default_factory=dict)
    optimizer: str = "indices"

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: Any) -> "RunState":
        """A state read from JSON; raises ValueError naming the first field that does not fit."""
        problem = _problem(data)
        if problem:
            raise ValueError(problem)
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def whole_number(value: Any, low: int = 0) -> bool:
    """An int (not a bool) >= ``low``."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def _problem(data: Any) -> Optional[str]:
    """What is wrong with a state.json's object, or None."""
    if not isinstance(data, dict):
        return f"holds a {type(data).__name__}, not an object"
    if not whole_number(data.get("step")):
        return f"has step {data.get('step')!r}, not a whole number >= 0"
    if not isinstance(data.get("history", []), list) or not isinstance(data.get("config", {}), dict):
        return "has a 'history' that is not a list or a 'config' that is not an object"
    if not whole_number(data.get("bad_evals", 0)) or not whole_number(data.get("stage", -1), -1):
        return "has a 'bad_evals' or 'stage' that is not a whole number"
    best = data.get("best")
    if not (best is None or (isinstance(best, (int, float)) and not isinstance(best, bool))):
        return f"has best {best!r}, not a number"
    if not isinstance(data.get("first_eval") or {}, dict):
        return "has a 'first_eval' that is not an object"
    if data.get("optimizer", "indices") not in OPTIMIZER_KEYS:
        return f"has optimizer {data.get('optimizer')!r}, not one of {', '.join(map(repr, OPTIMIZER_KEYS))}"
    return None

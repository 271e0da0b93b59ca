"""Per-module rank and alpha: ``rank_pattern`` / ``alpha_pattern`` (PEFT's names and matching).

A module named N (its full name in the model, e.g. ``model.layers.0.self_attn.q_proj``) takes the
rank of the first pattern key K, in the order given, for which ``re.match(rf"(.*\\.)?({K})$", N)``
holds: K is a regular expression that matches a dotted suffix of N ("q_proj", "layers.0.self_attn.q_proj",
"layers\\.[0-3]\\..*proj"). No match: the config's ``rank`` / ``alpha``. The scale is then
alpha_N / rank_N (alpha_N / sqrt(rank_N) with rsLoRA), as in PEFT's ``LoraModel._create_and_replace``.
"""

from __future__ import annotations

import math
import re
import warnings
from typing import Any, Iterable, Optional

from ...errors import ConfigError


def pattern_key(keys: Iterable[str], name: str) -> Optional[str]:
    """The first of ``keys`` that matches module ``name`` (PEFT's ``get_pattern_key``), or None."""
    for key in keys:
        if re.match(rf"(.*\.)?({key})$", name):
            return key
    return None


def rank_alpha(config, name: str) -> tuple[int, float]:
    """(rank, alpha) of the module called ``name`` under ``config``."""
    ranks, alphas = dict(config.rank_pattern), dict(config.alpha_pattern)
    r_key, a_key = pattern_key(ranks, name), pattern_key(alphas, name)
    rank = ranks[r_key] if r_key is not None else config.rank
    alpha = alphas[a_key] if a_key is not None else config.alpha
    return rank, alpha


def scale_of(rank: int, alpha: float, rslora: bool) -> float:
    """alpha / rank, or alpha / sqrt(rank) with rsLoRA."""
    return alpha / (math.sqrt(rank) if rslora else rank)


def check_pattern(owner: str, field: str, value: Any, integer: bool) -> tuple[tuple[str, Any], ...]:
    """A pattern given as a dict (or pairs) -> a tuple of (regex, value) pairs, in order; validated."""
    if value is None:
        return ()
    if isinstance(value, dict):
        pairs = list(value.items())
    elif isinstance(value, (list, tuple)) and all(isinstance(p, (list, tuple)) and len(p) == 2 for p in value):
        pairs = [tuple(p) for p in value]
    else:
        raise ConfigError(
            f"{owner}.{field} must map module-name patterns to values, e.g. {{'q_proj': 16}}; got {value!r}."
        )
    out = []
    for key, val in pairs:
        if not isinstance(key, str) or not key:
            raise ConfigError(f"{owner}.{field} keys are module-name patterns (strings); got {key!r}.")
        try:
            re.compile(key)
        except re.error as err:
            raise ConfigError(f"{owner}.{field} key {key!r} is not a valid regular expression ({err}).") from None
        kinds = (int,) if integer else (int, float)
        if isinstance(val, bool) or not isinstance(val, kinds) or not val > 0 or not math.isfinite(val):
            what = "positive integers" if integer else "positive numbers"
            raise ConfigError(f"{owner}.{field}[{key!r}] = {val!r}; the values are {what}.")
        out.append((key, int(val) if integer else float(val)))
    if len({k for k, _ in out}) != len(out):
        raise ConfigError(f"{owner}.{field} names a pattern twice: {[k for k, _ in out]}.")
    return tuple(out)


def warn_unmatched(config, names: list[str]) -> None:
    """Warn about pattern keys that match none of the adapted modules (PEFT warns too)."""
    for field in ("rank_pattern", "alpha_pattern"):
        keys = [k for k, _ in getattr(config, field)]
        unmatched = [k for k in keys if not any(re.match(rf"(.*\.)?({k})$", n) for n in names)]
        if unmatched:
            warnings.warn(
                f"LoRAConfig.{field} keys {unmatched} match none of the adapted modules and are ignored.",
                RuntimeWarning,
                stacklevel=4,
            )


def refuse_patterns(config, doing: str) -> None:
    """ConfigError for calls that treat an adapter's rank as one number (resize_rank, hotswap)."""
    if config.rank_pattern or config.alpha_pattern:
        raise ConfigError(
            f"{doing} takes adapters with one rank and alpha; this one has rank_pattern / "
            f"alpha_pattern {dict(config.rank_pattern) or dict(config.alpha_pattern)}."
        )

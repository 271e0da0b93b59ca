"""Memory sizes: read what a user types ("24GB", "24 GiB", "24000MB") and print bytes readably.

Decimal units are decimal and binary units binary: 1 GB = 10^9 bytes, 1 GiB = 2^30 bytes (a GPU
sold as "24 GB" usually holds 24 GiB; write GiB to say so). A bare number in a string is GiB. ``G``, ``M``,
``T`` alone are read as GiB, MiB, TiB (as ``nvidia-smi`` and torch print them).
"""

from __future__ import annotations

import math
import re

from ..errors import ConfigError

UNITS = {
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
    "k": 2**10,
    "m": 2**20,
    "g": 2**30,
    "t": 2**40,
    "": 2**30,
}
_PATTERN = re.compile(r"^\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*([a-zA-Z]*)\s*$")
GIB = 2**30
MIB = 2**20


def parse_memory(text) -> int:
    """Bytes in ``text``: "24GB" -> 24e9, "24 GiB" -> 24 * 2^30, "24000MB" -> 24e9, "80" -> 80 GiB;
    an int or float (not a string) is already bytes."""
    if isinstance(text, bool):
        raise ConfigError(f"memory size {text!r} is not a size; write e.g. 24GB.")
    if isinstance(text, (int, float)):
        value, unit = float(text), "b"  # a number (not a string) is bytes
    else:
        match = _PATTERN.match(str(text))
        if not match or match.group(2).lower() not in UNITS:
            raise ConfigError(
                f"memory size {text!r} is not understood; write a number and a unit, e.g. 24GB, "
                f"24GiB, 24000MB or 80 (GiB). Units: {', '.join(u for u in UNITS if len(u) > 1)}."
            )
        value, unit = float(match.group(1)), match.group(2).lower()
    size = value * UNITS[unit]
    if not math.isfinite(size) or size <= 0:
        raise ConfigError(f"memory size {text!r} must be a positive amount, e.g. 24GB.")
    return int(size)


def fmt(num_bytes: float) -> str:
    """Bytes as GiB (or MiB under 1 GiB), e.g. "7.41 GiB", "312.5 MiB"."""
    if abs(num_bytes) >= GIB:
        return f"{num_bytes / GIB:.2f} GiB"
    if abs(num_bytes) >= MIB / 10:
        return f"{num_bytes / MIB:.1f} MiB"
    return f"{num_bytes / 2**10:.1f} KiB"

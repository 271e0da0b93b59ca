"""Import an example script (a file under examples/) as a module, for the smoke tests."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def load_example(relative: str, name: str):
    """The module in ``examples/<relative>``, imported under ``name``."""
    path = ROOT / "examples" / relative
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module

"""Checks on paths a command will write to, made before any slow work starts."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Union

from .errors import ConfigError


def check_output_folder(path: Union[str, Path], what: str) -> None:
    """``path`` is a folder, or can be made one: no part of it is a file, and the nearest existing
    folder on the way is writable. ``what`` names the setting in the error (e.g. "output.dir")."""
    if "\x00" in str(path):
        raise ConfigError(f"{what} {str(path)!r} holds a NUL character, which no path may hold.")
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{what} {str(path)!r} is a file, not a folder; give a folder (it is created if missing).")
    existing = path
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        raise ConfigError(f"{what} {str(path)!r} cannot be created: {str(existing)!r} is a file, not a folder.")
    if existing.exists() and not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(
            f"{what} {str(path)!r}: the folder {str(existing)!r} is not writable; "
            f"check its permissions or choose another folder."
        )

"""Errors for users: each says what was given, what was expected, and what to do.

The hierarchy is small on purpose. Each class also subclasses the builtin a caller would
naturally catch (``ValueError``, ``TypeError``, ``KeyError``, ``FileNotFoundError``).
"""

from __future__ import annotations

import difflib
from typing import Iterable


class AdapterKitError(Exception):
    """Base class of every error adapterkit raises on purpose."""


class ConfigError(AdapterKitError, ValueError):
    """A config field has a bad value, or a field is unknown."""


class TargetError(AdapterKitError, ValueError):
    """Targets match nothing, or match a module adapterkit cannot adapt."""


class UnsupportedModuleError(AdapterKitError, TypeError):
    """A module of a type the method cannot wrap."""


class AdapterNameError(AdapterKitError, KeyError):
    """An adapter name is invalid, unknown, or already in use."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else ""


class MergeError(AdapterKitError, ValueError):
    """The active adapters cannot be folded into this base."""


class AdapterFileError(AdapterKitError, ValueError):
    """An adapter folder or file is missing, corrupt, or does not fit the model."""


class AdapterFileMissing(AdapterFileError, FileNotFoundError):
    """An adapter folder, or a file an adapter folder needs, does not exist."""


class InputError(AdapterKitError, ValueError):
    """The arguments of a call to an adapted model do not fit it or its adapters."""


def close_matches(word: str, candidates: Iterable[str], n: int = 3) -> str:
    """A ' (did you mean ...?)' suffix naming up to n close candidates, or ''."""
    found = difflib.get_close_matches(word, sorted(set(candidates)), n=n, cutoff=0.6)
    return f" (did you mean {', '.join(repr(f) for f in found)}?)" if found else ""

"""Sub-commands of the ``adapterkit`` command line: one module each, registered with
``adapterkit.cli.command``. Every module in this package is imported when the CLI starts."""

import importlib
import pkgutil


def load_all() -> None:
    for info in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{info.name}")

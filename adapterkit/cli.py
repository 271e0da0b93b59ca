"""The ``adapterkit`` command line: one entry point, one sub-command per job.

Errors a user can cause (bad arguments, missing paths, bad files) print one clear line on
stderr and exit with status 2; they never show a traceback.
"""
from __future__ import annotations

import argparse
import sys
from typing import Callable, Optional, Sequence

from .errors import AdapterKitError

COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable]] = {}


def command(name: str, help: str, arguments: Callable[[argparse.ArgumentParser], None]):
    """Register ``run(args) -> int`` as sub-command ``name``."""

    def register(run: Callable) -> Callable:
        COMMANDS[name] = (help, arguments, run)
        return run

    return register


def _parser() -> argparse.ArgumentParser:
    from . import __version__
    from .commands import load_all

    load_all()

    parser = argparse.ArgumentParser(prog="adapterkit", description="Parameter-efficient fine-tuning.")
    parser.add_argument("--version", action="version", version=f"adapterkit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (help_text, arguments, _) in COMMANDS.items():
        arguments(sub.add_parser(name, help=help_text, description=help_text))
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    # A command may let its list positional also follow options (`generate DIR --base M "prompt"`):
    # it names that positional with `set_defaults(_trailing=DEST)`.
    trailing = getattr(args, "_trailing", None)
    if extra and (trailing is None or any(e.startswith("-") for e in extra)):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if extra:
        getattr(args, trailing).extend(extra)
    if not args.command:
        parser.print_help()
        return 2
    try:
        return int(COMMANDS[args.command][2](args) or 0)
    except (AdapterKitError, FileNotFoundError, NotADirectoryError, PermissionError) as err:
        print(f"adapterkit {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    # `python -m adapterkit.cli`: run the imported module's main, where the commands register
    from adapterkit.cli import main as _main

    sys.exit(_main())

"""The ``adapterkit`` command line: one entry point, one sub-command per job.

Errors a user can cause (bad arguments, missing paths, bad files, a full disk) print ONE line on
stderr, ``adapterkit COMMAND: error: ...``, and exit with status 2; they never show a traceback.
This module is the one place that turns them into that line: ``AdapterKitError`` (adapterkit's own,
raised where a bad input is found, naming the file, line or key) and the ``OSError`` family (the
file system). Anything else is a bug and keeps its traceback.

Other exits: 130 after Ctrl-C (one line), 141 when the reader of stdout went away
(``adapterkit inspect --json | head``: nothing more is printed, as with other Unix tools).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import sys
from typing import Callable, Optional, Sequence

from .errors import AdapterKitError

COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable]] = {}
USAGE_ERROR, INTERRUPTED, BROKEN_PIPE = 2, 130, 141


def command(name: str, help: str, arguments: Callable[[argparse.ArgumentParser], None]):
    """Register ``run(args) -> int`` as sub-command ``name``."""

    def register(run: Callable) -> Callable:
        COMMANDS[name] = (help, arguments, run)
        return run

    return register


def positive_int(text: str) -> int:
    """An argparse type: a whole number >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1; got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1; got {value}")
    return value


class _Parser(argparse.ArgumentParser):
    """An argument error is one line (and a pointer to --help), not the usage block."""

    def error(self, message: str):
        self.exit(USAGE_ERROR, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _parser() -> argparse.ArgumentParser:
    from . import __version__
    from .commands import load_all

    load_all()

    parser = _Parser(prog="adapterkit", description="Parameter-efficient fine-tuning.")
    parser.add_argument("--version", action="version", version=f"adapterkit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (help_text, arguments, _) in COMMANDS.items():
        arguments(sub.add_parser(name, help=help_text, description=help_text))
    return parser


_OS_HINTS = {
    errno.ENOSPC: "the disk is full; free some space and run again (files already there were left as they were)",
    errno.EDQUOT: "the disk quota is used up; free some space and run again",
    errno.EACCES: "check the permissions of that path",
    errno.EPERM: "check the permissions of that path",
    errno.EROFS: "that file system is read-only; choose another path",
    errno.ENOTDIR: "a part of that path is a file, not a folder",
    errno.EISDIR: "that is a folder; give a file",
    errno.EEXIST: "it already exists; remove it or choose another path",
    errno.ENOENT: "check the path",
}


def os_message(err: OSError) -> str:
    """One readable sentence for a failed file-system call: what failed, on which path, what to do."""
    if err.strerror is None:  # raised with a message of its own (transformers does): keep it
        return str(err) or type(err).__name__
    paths = " -> ".join(repr(str(p)) for p in (err.filename, err.filename2) if p is not None)
    hint = _OS_HINTS.get(err.errno)
    return f"{err.strerror}{': ' + paths if paths else ''}" + (f"; {hint}." if hint else ".")


def one_line(text: str) -> str:
    """``text`` on one line: the lines of a multi-line message joined by spaces."""
    return " ".join(part.strip() for part in str(text).splitlines() if part.strip())


def _say(name: str, text: str) -> None:
    print(f"adapterkit {name}: error: {one_line(text)}", file=sys.stderr, flush=True)


def _quiet_stdout() -> None:
    """After a broken pipe: point stdout at /dev/null so the flush at exit does not fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # no real file descriptor (captured in tests): nothing to do
        pass


@contextlib.contextmanager
def _library_bars_on_terminal_only():
    """transformers' progress bars (loading, writing weights) only when stderr is a terminal: in a
    log or a pipe they are noise around the one line an error leaves."""
    if sys.stderr.isatty():
        yield
        return
    previous = os.environ.get("HF_HUB_DISABLE_PROGRESS_BARS")
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"  # read when huggingface_hub is first imported
    hf = sys.modules.get("transformers.utils.logging")
    was_on = hf is not None and hf.is_progress_bar_enabled()
    if was_on:
        hf.disable_progress_bar()
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("HF_HUB_DISABLE_PROGRESS_BARS", None)
        else:
            os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = previous
        if was_on:
            hf.enable_progress_bar()


def _run(name: str, args: argparse.Namespace) -> int:
    try:
        with _library_bars_on_terminal_only():
            code = int(COMMANDS[name][2](args) or 0)
        sys.stdout.flush()  # a broken pipe shows here, not at exit
        return code
    except BrokenPipeError:
        _quiet_stdout()
        return BROKEN_PIPE
    except KeyboardInterrupt:
        print(f"adapterkit {name}: interrupted", file=sys.stderr, flush=True)
        return INTERRUPTED
    except AdapterKitError as err:
        _say(name, str(err))
    except OSError as err:
        _say(name, os_message(err))
    return USAGE_ERROR


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
        return USAGE_ERROR
    return _run(args.command, args)


if __name__ == "__main__":  # pragma: no cover
    # `python -m adapterkit.cli`: run the imported module's main, where the commands register
    from adapterkit.cli import main as _main

    sys.exit(_main())

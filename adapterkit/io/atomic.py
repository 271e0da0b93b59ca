"""Atomic writes: every file goes to a temporary name in its own folder, then is renamed into place.

``with staged() as stage: stage(path, writer)`` runs ``writer(tmp_path)`` for each file; only when
the block ends without an exception are the temporary files renamed over the real names (a
rename within one folder is atomic on POSIX and Windows). On any exception the temporary files
and the folders the block created are removed, so the previous files are left byte for byte.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from pathlib import Path
from typing import Callable, Iterator

Writer = Callable[[Path], None]


def _fsync(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # some platforms cannot open folders; durability is best effort there
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def temp_name(path: Path) -> Path:
    """A hidden sibling of ``path`` that no other writer picks: ``.NAME.tmp-<random>``."""
    return path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:12]}")


def _make_dirs(folder: Path, created: list[Path]) -> None:
    missing = []
    while not folder.exists():
        missing.append(folder)
        folder = folder.parent
    for path in reversed(missing):
        path.mkdir()
        created.append(path)


@contextlib.contextmanager
def staged() -> Iterator[Callable[[Path, Writer], None]]:
    """Yields ``stage(path, writer)``; all staged files land together when the block succeeds."""
    pending: list[tuple[Path, Path]] = []  # (temporary, final)
    created: list[Path] = []

    def stage(path: Path, writer: Writer) -> None:
        path = Path(path)
        _make_dirs(path.parent, created)
        tmp = temp_name(path)
        pending.append((tmp, path))
        writer(tmp)
        _fsync(tmp)

    try:
        yield stage
    except BaseException:
        for tmp, _ in pending:
            with contextlib.suppress(OSError):
                tmp.unlink()
        for folder in reversed(created):
            with contextlib.suppress(OSError):
                folder.rmdir()  # only if still empty
        raise
    for tmp, final in pending:
        os.replace(tmp, final)
    for folder in {final.parent for _, final in pending}:
        _fsync(folder)


def replace_folder(tmp: Path, final: Path) -> None:
    """Move the finished folder ``tmp`` to ``final``, replacing an existing ``final`` last."""
    if not final.exists():
        os.replace(tmp, final)
        return
    old = temp_name(final)
    os.replace(final, old)
    try:
        os.replace(tmp, final)
    except BaseException:
        os.replace(old, final)
        raise
    shutil.rmtree(old, ignore_errors=True)

"""Shared by the examples: the machine line of their tables, and writing figures into a README.

An example's README holds its measured table between ``<!-- results:start -->`` and
``<!-- results:end -->``; ``write_results`` replaces only that part. A README with more than one
table names the others' markers: ``<!-- results-more:start -->`` for ``section="more"``.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch

START, END = "<!-- results:start -->", "<!-- results:end -->"


def markers(section: str = "") -> tuple[str, str]:
    """The start and end markers of a README's results section ("": the first one)."""
    tag = f"results-{section}" if section else "results"
    return f"<!-- {tag}:start -->", f"<!-- {tag}:end -->"


def one_thread() -> None:
    """Run on one CPU thread, here and in any child process: a float sum's order depends on the
    thread count, and few-shot training turns those last-bit differences into points of accuracy,
    so one thread makes an example's table the same on every machine."""
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)


def machine() -> str:
    """The machine and the versions a table was measured with."""
    import importlib.metadata as md

    versions = ", ".join(f"{n} {md.version(n)}" for n in ("transformers", "peft", "accelerate"))
    return (
        f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPU cores, "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads), {versions}"
    )


def write_results(readme: Path, text: str, section: str = "") -> None:
    start, end = markers(section)
    head, rest = readme.read_text().split(start, 1)
    readme.write_text(head + start + "\n" + text + "\n" + end + rest.split(end, 1)[1])

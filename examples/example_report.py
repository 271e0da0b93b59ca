"""Shared by the examples: the machine line of their tables, and writing figures into a README.

An example's README holds its measured table between ``<!-- results:start -->`` and
``<!-- results:end -->``; ``write_results`` replaces only that part.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch

START, END = "<!-- results:start -->", "<!-- results:end -->"


def machine() -> str:
    return (
        f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPU cores, "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads)"
    )


def write_results(readme: Path, text: str) -> None:
    head, rest = readme.read_text().split(START, 1)
    readme.write_text(head + START + "\n" + text + "\n" + END + rest.split(END, 1)[1])

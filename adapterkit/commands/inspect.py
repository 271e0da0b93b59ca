"""``adapterkit inspect DIR [--json]``: what an adapter folder holds, read from its files only."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ..cli import command


def describe(folder: Path, name: str) -> dict[str, Any]:
    """The facts about one adapter folder: config, tensors, size; no model is loaded."""
    from ..errors import AdapterFileError
    from ..io.read import PICKLE_NAME, WEIGHTS_NAME, method_and_config, read_config, tensor_header

    data = read_config(folder)
    method, config = method_and_config(data, folder)
    file = folder / WEIGHTS_NAME
    if not file.is_file():
        extra = (
            f" (it holds {PICKLE_NAME}, a pickle file, which inspect does not open)"
            if (folder / PICKLE_NAME).is_file()
            else ""
        )
        raise AdapterFileError(f"{str(file)!r} is missing{extra}.")
    header = tensor_header(file)
    params = 0
    for shape, _ in header.values():
        count = 1
        for size in shape:
            count *= size
        params += count
    fields = {k: v for k, v in config.to_dict().items() if k != "method"}
    return {
        "name": name,
        "folder": str(folder),
        "method": config.method,
        "peft_type": method.files.peft_type,
        "base_model": data.get("base_model_name_or_path"),
        "task_type": data.get("task_type"),
        "config": fields,
        "tensors": len(header),
        "parameters": params,
        "dtypes": sorted({d for _, d in header.values()}),
        "file_bytes": file.stat().st_size,
        "vllm": _vllm(data, {k: s for k, (s, _) in header.items()}),
    }


def _vllm(data: dict[str, Any], shapes: dict[str, tuple]) -> dict[str, Any]:
    """Whether vLLM's LoRA loader takes the adapter, why not, and what the server needs."""
    from ..io.serving import vllm_notes, vllm_reasons, vllm_summary

    reasons = vllm_reasons(data, shapes)
    return {
        "loads": not reasons,
        "reasons": reasons,
        "notes": [] if reasons else vllm_notes(data),
        "summary": vllm_summary(data, shapes),
    }


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
        n /= 1024
    return ""  # pragma: no cover


def _masks(value: Any) -> str:
    """A {module: [bool, ...]} mask per module (AdaLoRA's rank_pattern) in short: kept counts; else ''."""
    if (
        not isinstance(value, dict)
        or not value
        or not all(isinstance(v, list) and all(isinstance(b, bool) for b in v) for v in value.values())
    ):
        return ""
    kept = [sum(v) for v in value.values()]
    each = (
        " ".join(map(str, kept))
        if len(kept) <= 24
        else f"{min(kept)} to {max(kept)}, none in {kept.count(0)}; --json for each"
    )
    return f"{sum(kept)} of {sum(len(v) for v in value.values())} kept over {len(kept)} modules (per module: {each})"


def _text(info: dict[str, Any]) -> str:
    rows = [
        ("method", f"{info['method']} (peft_type {info['peft_type']})"),
        ("base model", info["base_model"] or "-"),
        ("task type", info["task_type"] or "-"),
    ]
    for key, value in info["config"].items():
        pairs = isinstance(value, list) and value and all(isinstance(v, (list, tuple)) and len(v) == 2 for v in value)
        shown = (
            ", ".join(f"{k}: {v}" for k, v in value)
            if pairs
            else (", ".join(map(str, value)) if isinstance(value, list) else _masks(value) or value)
        )  # pairs: rank_pattern and kin
        rows.append((key, "-" if shown in (None, "") else shown))
    rows += [
        ("tensors", info["tensors"]),
        ("parameters", f"{info['parameters']:,}"),
        ("dtype", ", ".join(info["dtypes"]) or "-"),
        ("file size", f"{_size(info['file_bytes'])} ({info['file_bytes']:,} bytes)"),
        ("vLLM", info["vllm"]["summary"]),
    ]
    width = max(len(k) for k, _ in rows)
    lines = [f"adapter {info['name']!r} in {info['folder']}"]
    lines += [f"  {k.ljust(width)}  {v}" for k, v in rows]
    return "\n".join(lines)


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("folder", metavar="DIR", help="adapter folder (adapterkit's or PEFT's)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


@command(
    "inspect",
    "Show what an adapter folder holds: method, rank, targets, tensors, size, whether vLLM loads it.",
    _arguments,
)
def run(args: argparse.Namespace) -> int:
    from ..io.read import adapter_folders, find_folder

    folders = adapter_folders(args.folder)
    if not folders:
        find_folder(args.folder)  # raises the error that says what is missing
    infos = [describe(folder, name) for name, folder in folders.items()]
    if args.json:
        print(json.dumps(infos, indent=2))  # a list: one entry per adapter in the folder
    else:
        print("\n\n".join(_text(info) for info in infos))
    return 0

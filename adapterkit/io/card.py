"""The model card (``README.md``) written beside saved adapters.

Hugging Face metadata up front (``library_name: peft``, ``base_model``, tags), then one section per
adapter: method, file type, every config field (rank, alpha, targets, ...), the adapted modules,
trainable parameters and tensors, whether vLLM's LoRA loader takes it (``serving.py``), and the
lines that load it with adapterkit or PEFT.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

import torch

from ..config import AdapterConfig


@dataclasses.dataclass
class Saved:
    """What was saved for one adapter (the card's input)."""

    name: str
    folder: str  # relative to the saved root: "." or the adapter's sub-folder
    peft_type: str
    config: AdapterConfig
    tensors: dict[str, torch.Tensor]
    modules: int  # adapted layers
    vllm: str = ""  # whether vLLM's LoRA loader takes it, and why not (serving.vllm_summary)


def _value(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ", ".join(f"`{v}`" for v in value) or "-"
    return "-" if value is None else f"`{value}`"


def _section(item: Saved) -> list[str]:
    params = sum(t.numel() for t in item.tensors.values())
    dtypes = sorted({str(t.dtype).replace("torch.", "") for t in item.tensors.values()})
    lines = [
        f"## Adapter `{item.name}`",
        "",
        "| field | value |",
        "|---|---|",
        f"| folder | `{item.folder}` |",
        f"| method | {item.config.method} |",
        f"| peft_type | `{item.peft_type}` |",
    ]
    for key, value in item.config.to_dict().items():
        if key != "method":
            lines.append(f"| {key} | {_value(value)} |")
    lines += [
        f"| adapted modules | {item.modules} |",
        f"| trainable parameters | {params:,} |",
        f"| tensors | {len(item.tensors)} ({', '.join(dtypes) or '-'}) |",
    ]
    if item.vllm:
        lines.append(f"| loads in vLLM | {item.vllm} |")
    lines.append("")
    return lines


def model_card(saved: list[Saved], base_model: Optional[str], version: str) -> str:
    """The README.md text for the adapters in ``saved``."""
    methods = sorted({s.config.method for s in saved})
    peft_reads = all(not s.peft_type.startswith("ADAPTERKIT_") for s in saved)
    head = ["---", f"library_name: {'peft' if peft_reads else 'adapterkit'}"]
    if base_model:
        head.append(f"base_model: {base_model}")
    head.append("tags:")
    head += [f"- {t}" for t in ["adapterkit", *methods]]
    if base_model:
        head.append(f"- base_model:adapter:{base_model}")
    head.append("---")
    title = f"# Adapters for {base_model}" if base_model else "# Adapters"
    body = [
        title,
        "",
        f"Saved by adapterkit {version} in PEFT's file layout: `adapter_config.json` "
        "and `adapter_model.safetensors` in each adapter's folder.",
        "",
        f"Base model: {base_model or 'not recorded (the model had no name_or_path)'}.",
        "",
    ]
    for item in saved:
        body += _section(item)
    first = saved[0]
    sub = "" if first.folder == "." else f", subfolder={first.folder!r}"
    body += [
        "## Load",
        "",
        "```python",
        "import adapterkit as ak",
        f"model = ak.load_adapter(model, {'PATH' if first.folder == '.' else 'PATH/' + first.folder!r}"
        f", name={first.name!r})",
    ]
    if peft_reads:
        body += [
            "# or, with PEFT:",
            "from peft import PeftModel",
            f"model = PeftModel.from_pretrained(model, 'PATH'{sub})",
        ]
    body += ["```", ""]
    return "\n".join(head + [""] + body)

"""summary(model): trainable and total parameters, per adapter and per method, as a table."""

from __future__ import annotations

import dataclasses

from torch import nn

from . import bases
from .inject import active_names, adapter_layers


@dataclasses.dataclass(frozen=True)
class Summary:
    """rows: (adapter, method, parameters, trainable); totals over the whole model."""

    rows: tuple[tuple[str, str, int, int], ...]
    total: int
    trainable: int
    active: tuple[str, ...]

    def per_method(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for _, method, params, _ in self.rows:
            out[method] = out.get(method, 0) + params
        return out

    def __str__(self) -> str:
        def pct(n: int) -> str:
            return f"{100 * n / self.total:.4f}%" if self.total else "-"

        lines = ["| adapter | method | parameters | trainable | % of model |", "|---|---|---:|---:|---:|"]
        for adapter, method, params, train in self.rows:
            star = " *" if adapter in self.active else ""
            lines.append(f"| {adapter}{star} | {method} | {params:,} | {train:,} | {pct(params)} |")
        for method, params in self.per_method().items():
            lines.append(f"| (all) | {method} | {params:,} | | {pct(params)} |")
        lines.append(f"| model | total | {self.total:,} | {self.trainable:,} | {pct(self.trainable)} trainable |")
        return "\n".join(lines) + "\n(* active)"

    __repr__ = __str__


def summary(model: nn.Module) -> Summary:
    counts: dict[tuple[str, str], list[int]] = {}
    seen: set[int] = set()  # a tensor shared by an adapter's layers (Compacter's rules) counts once
    for _, layer in adapter_layers(model):
        for name, adapter in layer.adapters.items():
            row = counts.setdefault((name, layer.method), [0, 0])
            for p in adapter.parameters():
                if id(p) in seen:
                    continue
                seen.add(id(p))
                row[0] += p.numel()
                row[1] += p.numel() if p.requires_grad else 0
    params = list(model.parameters())
    # a quantized base keeps its weight in buffers: count it as the (out, in) weight it stands for
    quantized = sum(m.in_features * m.out_features for m in model.modules() if bases.base_kind(m) == "quant")
    return Summary(
        rows=tuple((a, m, n, t) for (a, m), (n, t) in counts.items()),
        total=sum(p.numel() for p in params) + quantized,
        trainable=sum(p.numel() for p in params if p.requires_grad),
        active=tuple(active_names(model)),
    )

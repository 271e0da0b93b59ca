"""Which token positions a LoReFT intervention edits, from the model call's attention mask.

A forward pre-hook on the model (registered by ``attach``, removed with the last LoReFT layer)
records the call's 2-D ``attention_mask`` (B, T); each block's layer turns it into the index of
the first and last real token of every row: left and right padding are skipped, as pyreft and
AdapterHub do. Without a mask every token is real. A call whose mask is longer than its hidden
states continues from a cache (``generate``'s later steps): its tokens are past the prompt, and
LoReFT, like pyreft, edits the prompt only.
"""

from __future__ import annotations

import inspect
import threading
import weakref
from typing import Optional

import torch
from torch import Tensor, nn

_CALL = threading.local()
_HANDLES: "weakref.WeakKeyDictionary[nn.Module, object]" = weakref.WeakKeyDictionary()


def install(model: nn.Module) -> None:
    """Register the mask-recording hook once per model."""
    if model not in _HANDLES:
        _HANDLES[model] = model.register_forward_pre_hook(_record, with_kwargs=True)


def release(model: nn.Module, still_needed: bool) -> None:
    """Remove the hook when the model holds no LoReFT layer any more."""
    handle = None if still_needed else _HANDLES.pop(model, None)
    if handle is not None:
        handle.remove()


def _record(model: nn.Module, args: tuple, kwargs: dict) -> None:
    mask = kwargs.get("attention_mask")
    if mask is None and len(args) > 1:  # forward(input_ids, attention_mask, ...) called positionally
        names = list(inspect.signature(model.forward).parameters)
        if "attention_mask" in names and names.index("attention_mask") < len(args):
            mask = args[names.index("attention_mask")]
    _CALL.mask = mask if isinstance(mask, Tensor) and mask.dim() == 2 else None


def ends(h: Tensor) -> Optional[tuple[Tensor, Tensor]]:
    """(first, last): index of the first and last real token per row, each (B,) long; None when
    this call continues from a cache (nothing to edit)."""
    batch, length = h.shape[:2]
    mask = getattr(_CALL, "mask", None)
    if mask is None or mask.shape[0] != batch:
        first = torch.zeros(batch, dtype=torch.long, device=h.device)
        return first, first + length - 1
    if mask.shape[1] != length:
        return None
    real = mask.to(h.device) != 0
    steps = torch.arange(length, device=h.device).expand(batch, length)
    first = torch.where(real, steps, length).amin(dim=1).clamp(max=length - 1)
    last = torch.where(real, steps, -1).amax(dim=1).clamp(min=0)
    return first, last


def take(first: Tensor, last: Tensor, p: int, s: int, length: int) -> tuple[Tensor, Tensor]:
    """Indices (B, p) of the first p and (B, s) of the last s real tokens, clamped into the row."""
    head = first[:, None] + torch.arange(p, device=first.device)
    tail = last[:, None] - torch.arange(s - 1, -1, -1, device=last.device)
    return head.clamp(0, length - 1), tail.clamp(0, length - 1)

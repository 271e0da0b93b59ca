"""The predicted peak: what stays all run, plus the highest point of a training step.

    static   = weights + adapter parameters + optimizer states
    kept     = activations kept for backward (activations.py); with checkpointing each block's
               input only (b d per token); + the loss's kept tensors
    peak     = static + max over the step's phases, each with the gradients alive in it:
      loss backward        kept + loss + 8 V per predicted token: the gradients of the fp32
                           log_softmax and of its input, alive with the kept log_softmax
                           (gradients: none yet, or all of them with grad_accum > 1)
      last block backward  kept - final norm + b d (the residual's gradient) + the MLP's backward
                           buffers: 3 b I (a gated MLP's product: its input's, act's and up's
                           gradients) or 2 b I (GELU), minus b I when the down adapter's kept
                           input is freed first; with checkpointing instead: b d + the last
                           block recomputed (its kept activations, less the fp32 input it shares
                           with the checkpoint). Gradients: that block's share.
      optimizer step       all gradients (the activations are gone)
    on a CPU the reference 4-bit path also holds a dense fp32 copy of the largest weight (DoRA
    on a 4-bit base does on CUDA too, in the compute dtype, for its row norms), and the
    Python / autograd objects share the heap (fitted: 100 KiB of graph per block, 50 with
    checkpointing, 2 KiB per optimizer state).

The loss: adapterkit's loss upcasts all logits to fp32 at once (4 V bytes per predicted token
kept, 12 V at the peak). ``loss_chunks = c`` models a compiled, chunked loss instead, as torchtune
computes it (logits kept in the model dtype and an fp32 logsumexp per token; at the backward of
one chunk its gradient in the model dtype and an fp32 softmax, (2 + 4) V / c per token).

On CUDA the device also holds what torch's allocator does not count (``CONTEXT``: the CUDA
context, kernels, cuBLAS workspaces) and the caching allocator's rounding and fragmentation
(``FRAGMENTATION`` of the peak): both are assumptions, not measured here (no GPU in this
project's CI). On a CPU they are 0: the calibration counts glibc's bytes in use.
"""

from __future__ import annotations

import dataclasses

from . import activations as act
from .settings import Settings
from .shape import ModelShape, encoder_config_check
from .weights import Inventory, inventory, optimizer_bytes, trainable_tensors

CONTEXT = 600 * 2**20  # CUDA context + kernels + cuBLAS workspace, typical for torch 2.x on H100
FRAGMENTATION = 0.05  # caching allocator: reserved beyond allocated at the peak


@dataclasses.dataclass(frozen=True)
class Estimate:
    """A prediction, in bytes. ``components`` add up to ``total``; ``phases`` are the candidate
    dynamic peaks (beyond ``static``), the largest of which is ``peak_phase``."""

    shape: ModelShape
    settings: Settings
    inventory: Inventory
    components: dict
    layers: tuple
    phases: dict
    held: int
    static: int

    @property
    def peak_phase(self) -> str:
        return max(self.phases, key=self.phases.get)

    @property
    def peak(self) -> int:
        """Bytes the framework allocates at the step's peak (what the calibration measures)."""
        return self.static + self.phases[self.peak_phase]

    @property
    def total(self) -> int:
        """The device memory needed: the peak plus the allocator's and the runtime's overhead."""
        return self.peak + self.components["allocator overhead"] + self.components["CUDA context"]

    @property
    def trainable(self) -> int:
        return sum(n for n, _ in trainable_tensors(self.inventory, self.settings))


def _host_objects(shape: ModelShape, s: Settings, tensors: int) -> tuple[int, int]:
    """CPU only, (autograd graph, optimizer objects): Python and autograd objects share the heap
    there (fitted on the calibration grid: about 100 KiB of graph per block, 50 KiB with
    checkpointing, and 2 KiB per optimizer state). On a GPU they live in host memory: 0."""
    if s.device != "cpu":
        return 0, 0
    return shape.layers * (50 if s.checkpointing else 100) * 1024, 2048 * tensors


def loss_terms(shape: ModelShape, s: Settings) -> tuple[int, int]:
    """(bytes kept after the loss's forward, extra bytes at its backward)."""
    if s.task == "classification":
        return 0, 0
    preds = s.batch_size * (s.seq_len - 1)
    ids = 8 * preds + 8 * (s.seq_len - 1) + 4  # target ids, kept positions, the fp32 loss sum
    if s.loss_chunks == 1:
        return 4 * shape.vocab * preds + ids, 8 * shape.vocab * preds
    return s.b * shape.vocab * preds + 4 * preds + ids, 6 * shape.vocab * preds // s.loss_chunks


def _backward_buffers(shape: ModelShape, s: Settings, last: act.Layer) -> int:
    """The last block's own backward buffers on top of what it keeps (see the module docstring)."""
    n, b = s.tokens, s.b
    kept_product = last.items.get("MLP product (down adapter input)", 0) or last.items.get(
        "GELU output (down adapter input)", 0
    )
    buffers = 3 if shape.family == "decoder" else 2  # gated MLP: d(input), d(act), d(up); GELU: two
    return n * shape.hidden * b + buffers * n * shape.intermediate * b - kept_product


def phases(shape: ModelShape, s: Settings, inv: Inventory, blocks: list, model: dict, grads: int) -> tuple[dict, int]:
    """({phase: {part: bytes}}, bytes held after the forward). Parts: activations, logits and loss,
    backward buffers, gradients (from the blocks' backward on; all of them from the start with
    grad_accum > 1, as they add up across micro-batches; at the last block, that block's share)."""
    loss_held, loss_extra = loss_terms(shape, s)
    n, b = s.tokens, s.b
    outside, final = sum(model.values()), model.get("final RMSNorm", 0)
    dequant = 0  # a dense copy of the largest quantized weight: the CPU path's matmuls, DoRA's norm
    if s.quant is not None and (s.device == "cpu" or s.adapter.dora):
        dequant = (4 if s.device == "cpu" else s.b) * inv.largest_linear
    early = grads if s.grad_accum > 1 else 0
    last = grads if s.grad_accum > 1 else grads // max(1, len({t.layer for t in inv.targets}))
    if not s.checkpointing:
        kept = sum(x.total for x in blocks) + outside
        name, buffers = "last block backward", _backward_buffers(shape, s, blocks[-1])
    else:
        kept = shape.layers * n * shape.hidden * b + outside
        recomputed = blocks[-1].total - (n * shape.hidden * b if b == 4 or shape.family == "encoder" else 0)
        name, buffers = "last block backward (recomputed)", n * shape.hidden * b + recomputed
    parts = {
        "loss backward": {"activations": kept, "logits and loss": loss_held + loss_extra, "gradients": early},
        name: {"activations": kept - final, "backward buffers": buffers + dequant, "gradients": last},
        "optimizer step": {"gradients": grads},
    }
    return parts, kept + loss_held


def estimate(shape: ModelShape, settings: Settings, inv: Inventory = None) -> Estimate:
    """The predicted memory of one training step of ``shape`` under ``settings``."""
    encoder_config_check(shape, settings.task)
    inv = inv or inventory(shape, settings)
    tensors = trainable_tensors(inv, settings)
    adapter = sum(n * nbytes for n, nbytes in tensors)
    blocks = act.layers(shape, settings, inv)
    model = act.model_items(shape, settings, inv, any_grad=bool(inv.targets))
    graph, host = _host_objects(shape, settings, len(tensors))
    model["autograd graph objects (CPU only)"] = graph
    parts, held = phases(shape, settings, inv, blocks, model, adapter)
    dyn = {name: sum(p.values()) for name, p in parts.items()}
    at_peak = parts[max(dyn, key=dyn.get)]
    static = inv.weights + adapter + optimizer_bytes(tensors, settings.optimizer) + host
    gpu = settings.device == "cuda"
    components = {
        "weights": inv.weights,
        "quantization constants": inv.quant_constants,
        "adapter parameters": adapter,
        "optimizer states": optimizer_bytes(tensors, settings.optimizer),
        "optimizer objects (CPU only)": host,
        "gradients": at_peak.get("gradients", 0),
        "activations kept for backward": at_peak.get("activations", 0),
        "logits and loss": at_peak.get("logits and loss", 0),
        "backward buffers": at_peak.get("backward buffers", 0),
        "allocator overhead": int(FRAGMENTATION * (static + max(dyn.values()))) if gpu else 0,
        "CUDA context": CONTEXT if gpu else 0,
    }
    return Estimate(shape, settings, inv, components, tuple(blocks), dyn, held, static)

"""LoRA initialisations that read (and rewrite) the base weight: PiSSA, OLoRA, LoftQ.

W (out, in) is the base weight in fp32, r the module's rank, s its scale. Each sets A, B and
replaces W by a residual, so that at start W_res + s B A = W (PiSSA, OLoRA) or ~ W (LoftQ):

- PiSSA (Meng et al. 2024, arXiv:2404.02948): W = U S V^T; A = sqrt(S_r / s) V_r^T, B = U_r sqrt(S_r / s);
  W_res = W - s B A. ``pissa_niter_K``: U_r, S_r, V_r from ``torch.svd_lowrank(W, r, niter=K)``
  (Halko et al.: randomized, seeded by torch's generator).
- OLoRA (Büyükakyüz 2024, arXiv:2406.01775): W = Q R; B = Q[:, :r], A = R[:r]; W_res = W - s B A.
- LoftQ (Li et al. 2023, arXiv:2310.08659), T = ``loftq_iter`` steps: Q_t = NF4(W - B A) (blocks
  of 64, no double quantization: adapterkit_kernels.reference, the bytes bitsandbytes writes), then
  B A = the rank-r SVD of W - deq(Q_t) (B = U_r sqrt(S_r), A = sqrt(S_r) V_r^T). W becomes deq(Q_T):
  ``ak.quantize(model, bits=4, double_quant=False)`` afterwards stores exactly those codes. As in
  PEFT, A and B are not divided by s (with alpha = rank, s = 1, B A approximates W - deq(Q)).

These are PEFT's ``pissa_init`` / ``olora_init`` / ``loftq_init`` (``peft/tuners/lora/layer.py``,
``peft/utils/loftq_utils.py``), with the same numbers for the same weights and seed. Loading a
file saved with one of these inits runs it again on the given base, as PEFT does: load it onto
the original base model (not the residual one).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ... import bases
from ...errors import UnsupportedModuleError

BASE_CHANGING = ("pissa", "olora", "loftq")


def changes_base(init: str) -> bool:
    return init.startswith(BASE_CHANGING)


def check_base(name: str, base: nn.Module, init: str) -> None:
    """Refuse bases these inits cannot rewrite: only dense Linear / Conv1D weights."""
    kind = bases.base_kind(base)
    if kind in ("linear", "conv1d") and bases.foldable(base):
        return
    hint = (
        (
            " Initialise on the full-precision model first, then quantize it (ak.quantize): the residual "
            "is what gets quantized, as in QPiSSA / LoftQ."
        )
        if kind == "quant"
        else ""
    )
    raise UnsupportedModuleError(
        f"init={init!r} rewrites the base weight, which needs a dense Linear or "
        f"Conv1D base; {name!r} is a {type(base).__name__}.{hint}"
    )


@torch.no_grad()
def initialise(lora: nn.Module, base: nn.Module, init: str, loftq_iter: int) -> None:
    """Set ``lora.a`` / ``lora.b`` and rewrite ``base``'s weight, for a base-changing ``init``."""
    weight = bases.dense_weight(base)  # (out, in), a view of the base's own tensor
    w = weight.to(torch.float32)
    r, s = lora.rank, lora.scale
    if init.startswith("pissa"):
        a, b = _pissa(w, r, s, init)
        residual = w - s * b @ a
    elif init == "olora":
        q, rr = torch.linalg.qr(w)
        b, a = q[:, :r], rr[:r]
        residual = w - s * b @ a
    else:
        residual, a, b = loftq(w, r, loftq_iter)
    lora.a.copy_(a.contiguous())
    lora.b.copy_(b.contiguous())
    weight.copy_(residual.to(weight.dtype))
    if not init.startswith("loftq"):  # the starting factors, for save_as_lora (convert.py)
        lora.register_buffer("a_start", lora.a.detach().clone(), persistent=False)
        lora.register_buffer("b_start", lora.b.detach().clone(), persistent=False)


def _pissa(w: Tensor, r: int, s: float, init: str) -> tuple[Tensor, Tensor]:
    if init == "pissa":
        u, sv, vh = torch.linalg.svd(w, full_matrices=False)
        u, sv, vh = u[:, :r], sv[:r], vh[:r]
    else:
        u, sv, v = torch.svd_lowrank(w, r, niter=int(init.rsplit("_", 1)[-1]))
        vh = v.t()
    root = torch.sqrt(sv / s)
    return root.unsqueeze(1) * vh, u * root  # A (r, in), B (out, r)


def nf4_round_trip(w: Tensor, block: int = 64) -> Tensor:
    """deq(NF4(w)) with blocks of 64 and no double quantization: adapterkit's own quantizer's
    steps (``adapterkit_kernels.reference.quantize_4bit`` then ``dequantize``) without packing
    the codes into bytes and back; the same values bit for bit."""
    from adapterkit_kernels import formats, reference

    if w.numel() % block:
        return reference.dequantize(reference.quantize_4bit(w, "nf4", block, double_quant=False))
    code = formats.code_table("nf4", w.device)
    absmax, scaled = reference._blockwise_absmax(w.detach().reshape(-1).float(), block)
    levels = code[reference._nearest(scaled, code)]  # (n,)
    return levels.view(-1, block).mul_(absmax.view(-1, 1)).view(w.shape)


def loftq(w: Tensor, r: int, steps: int) -> tuple[Tensor, Tensor, Tensor]:
    """(deq(Q), A (r, in), B (out, r)) of LoftQ on fp32 ``w`` (out, in)."""
    res = w
    for step in range(steps):
        deq = nf4_round_trip(res)
        u, sv, vh = torch.linalg.svd(w - deq, full_matrices=False)
        root = torch.sqrt(sv[:r])
        b, a = u[:, :r] * root, root.unsqueeze(1) * vh[:r]
        if step + 1 < steps:
            res = w - b @ a
    return deq, a, b

"""Will vLLM's LoRA loader take this adapter, and if not, why: vLLM's rules as one function.

``vllm_reasons(config, shapes)`` reads only what an adapter folder holds (the parsed
``adapter_config.json`` and ``{tensor key: shape}``), so ``save_adapter`` (the model card) and
``adapterkit inspect`` give the same answer.
"""

from __future__ import annotations

from typing import Any, Mapping

_PREFIX = "base_model.model."
_BASE_EMBEDDINGS = (".embed_tokens.base_layer.weight", ".lm_head.base_layer.weight")
MAX_LORA_RANK_DEFAULT = 16


def vllm_reasons(config: Mapping[str, Any], shapes: Mapping[str, tuple]) -> list[str]:
    """Why vLLM's LoRA loader would refuse this adapter; an empty list when it loads it.

    The rules, from vLLM's source:

    - ``vllm/lora/peft_helper.py`` (``PEFTHelper.from_dict``, ``_validate_features``,
      ``validate_legal``): ``r``, ``lora_alpha`` and ``target_modules`` are required;
      ``use_dora`` is refused ("vLLM does not yet support DoRA"); any ``modules_to_save`` is
      refused ("vLLM only supports modules_to_save being None"); ``bias`` other than "none" is
      refused ("Adapter bias is not supported").
    - ``vllm/lora/lora_model.py`` (``LoRAModel.from_local_checkpoint``, ``from_lora_tensors``)
      with ``vllm/lora/utils.py`` (``parse_fine_tuned_lora_name``, ``is_base_embedding_weights``):
      each tensor is ``base_model.model.<module>.lora_A.weight`` / ``.lora_B.weight`` or, on an
      embedding, ``.lora_embedding_A`` / ``.lora_embedding_B``; PEFT's saved
      ``embed_tokens`` / ``lm_head`` ``.base_layer.weight`` are skipped; anything else is refused
      (``lora_magnitude_vector``: DoRA; ``lora_B.bias``: a LoRA bias). So only LoRA adapters
      load: not prompt / prefix / P-tuning, IA3 or bottleneck adapters.
    - ``get_supported_lora_modules`` (``vllm/lora/utils.py``): vLLM gives LoRA to the model's
      linear layers and to its ``embedding_modules`` (``embed_tokens``, ``lm_head``); a LoRA on
      a Conv2d (4-D ``lora_A``) or on another embedding has no vLLM layer to go into.

    Not checked here (they depend on the server): ``r`` must be at most ``--max-lora-rank``
    (default 16; ``vllm_notes`` says so), and the base architecture must support LoRA in vLLM.
    """
    if config.get("peft_type") != "LORA":
        instead = (
            "merge it into the model (adapterkit merge) and serve the merged model"
            if _mergeable(config.get("peft_type"))
            else "it cannot be merged into the weights either: serve it with transformers and adapterkit or PEFT"
        )
        return [f"vLLM's loader reads LoRA adapters only; this one is peft_type {config.get('peft_type')!r}; {instead}"]
    reasons = []
    missing = [k for k in ("r", "lora_alpha", "target_modules") if config.get(k) in (None, "", [])]
    if missing:
        reasons.append(f"adapter_config.json lacks {', '.join(missing)}, which vLLM requires")
    if config.get("use_dora"):
        reasons.append("it is a DoRA adapter (use_dora); vLLM does not support DoRA: merge it instead")
    if config.get("modules_to_save"):
        reasons.append(
            f"it trains whole modules (modules_to_save={list(config['modules_to_save'])}); vLLM "
            "only supports modules_to_save being None: merge it, or train without train_modules"
        )
    if config.get("bias", "none") not in ("none", None):
        reasons.append(f"bias={config['bias']!r}: vLLM supports adapter bias 'none' only")
    return reasons + _tensor_reasons(shapes, config.get("modules_to_save") or [])


def _tensor_reasons(shapes: Mapping[str, tuple], saved: list) -> list[str]:
    reasons: list[str] = []
    for key, shape in shapes.items():
        body = "." + key.removeprefix(_PREFIX)
        if key.endswith(_BASE_EMBEDDINGS) or any(f".{m}." in body for m in saved if isinstance(m, str)):
            continue  # vLLM skips the first; the second is said once, as modules_to_save
        problem = _tensor_problem(key, tuple(shape))
        if problem and problem not in reasons:
            reasons.append(problem)
    return reasons


def _tensor_problem(key: str, shape: tuple) -> str | None:
    if not key.startswith(_PREFIX):
        return f"tensor {key!r} is not under base_model.model., where vLLM looks for LoRA weights"
    parts = key.split(".")
    if parts[-1] in ("lora_embedding_A", "lora_embedding_B"):
        module = parts[-2] if len(parts) > 1 else ""
        if module not in ("embed_tokens", "lm_head"):
            return (
                f"LoRA on the embedding {'.'.join(parts[2:-1])!r}: vLLM adapts only the token "
                "embedding (embed_tokens) and lm_head"
            )
        return None
    if len(parts) >= 2 and parts[-2] in ("lora_A", "lora_B") and parts[-1] == "weight":
        if len(shape) == 4:
            return f"LoRA on the convolution {'.'.join(parts[2:-2])!r}: vLLM has LoRA for linear layers only"
        return None
    if parts[-1] == "lora_magnitude_vector":
        return None  # DoRA, said once from use_dora
    if parts[-1] == "bias" and len(parts) >= 2 and parts[-2] == "lora_B":
        return "it has LoRA bias tensors (lora_B.bias); vLLM supports adapter bias 'none' only"
    return f"tensor {key!r} is not a LoRA weight vLLM reads (lora_A / lora_B / lora_embedding_A / _B)"


def vllm_notes(config: Mapping[str, Any]) -> list[str]:
    """Server settings the adapter needs (not refusals)."""
    rank, notes = config.get("r"), []
    if isinstance(rank, int) and rank > MAX_LORA_RANK_DEFAULT:
        notes.append(
            f"rank {rank} is above vLLM's default --max-lora-rank {MAX_LORA_RANK_DEFAULT}: start vLLM with "
            f"--max-lora-rank {rank} or more"
        )
    if config.get("target_parameters"):  # PEFT's ParamWrapper layout (methods/lora/params.py)
        notes.append(
            "it puts LoRA on fused expert parameters (target_parameters), which only vLLM versions that "
            "read PEFT's ParamWrapper layout for fused MoE layers load: check the vLLM version you serve with"
        )
    return notes


def vllm_summary(config: Mapping[str, Any], shapes: Mapping[str, tuple]) -> str:
    """One line: whether vLLM's LoRA loader takes the adapter, and why not."""
    reasons = vllm_reasons(config, shapes)
    if reasons:
        return "no: " + "; ".join(reasons)
    notes = vllm_notes(config)
    return "yes" + (f" ({'; '.join(notes)})" if notes else "")


def _mergeable(peft_type) -> bool:
    """Whether the registered method that reads ``peft_type`` folds into the base weights."""
    from ..registry import METHODS

    from .. import methods  # noqa: F401  (registers the built-in methods)

    return any(
        m.files is not None and m.files.peft_type == peft_type and hasattr(m.layer, "merged") for m in METHODS.values()
    )

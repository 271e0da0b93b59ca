"""Adapter files: save_adapter / load_adapter in PEFT's layout.

An adapter folder holds ``adapter_config.json`` and ``adapter_model.safetensors`` (and a
``README.md`` model card at the top of what ``save_adapter`` wrote). Several adapters saved at
once: ``default`` at the root, every other one in a sub-folder named after it, as PEFT does.

adapter_config.json
    ``peft_type`` picks the method (``registry.method_for_peft_type``); the rest are that method's
    keys (its ``FileFormat``), plus ``base_model_name_or_path`` (portable: an offline alias's hub
    id, ``models.portable_name``), ``task_type`` (CAUSAL_LM, SEQ_CLS, ..., FEATURE_EXTRACTION
    for a bare model: ``tasks.py``, so PEFT builds the right wrapper), ``inference_mode`` and
    ``modules_to_save`` (a config's ``train_modules``, plus the task heads PEFT's wrapper requires).
    Unknown keys are ignored on load.
adapter_model.safetensors
    Only the adapter's tensors, never base weights, metadata ``{"format": "pt"}``, keys as PEFT
    names them with the adapter name left out: ``base_model.model.<module>.<tensor>``. A
    ``train_modules`` copy of module ``M`` is saved as its state dict under
    ``base_model.model.M.<key>`` (PEFT's ``modules_to_save``; the prefix is the method's
    ``FileFormat.trained_prefix``, ``base_model.`` for prompt learning). Pickle files
    (``adapter_model.bin``) are read only with ``allow_pickle=True``, with ``weights_only=True``.

Per method (each method's ``FileFormat`` is in its package, ``methods/<method>/files.py``):

- LoRA, rsLoRA, DoRA: ``peft_type: "LORA"``; keys ``r``, ``lora_alpha``, ``lora_dropout``,
  ``target_modules``, ``exclude_modules``, ``layers_to_transform``, ``use_rslora``, ``use_dora``,
  ``init_lora_weights``, ``fan_in_fan_out``, ``target_parameters``; tensors ``<module>.lora_A.weight`` (rank, in),
  ``<module>.lora_B.weight`` (out, rank), DoRA ``<module>.lora_magnitude_vector`` (out,),
  embeddings ``<module>.lora_embedding_A`` / ``_B``. Full table: ``methods/lora/files.py``.
- IA3: ``peft_type: "IA3"``; keys ``target_modules``, ``feedforward_modules``,
  ``exclude_modules``, ``init_ia3_weights``, ``fan_in_fan_out``; tensors ``<module>.ia3_l``,
  (out, 1), or (1, in) on feed-forward layers. Table: ``methods/ia3/files.py``.
- LoHa, LoKr: ``peft_type`` ``LOHA`` / ``LOKR``; keys ``r``, ``alpha``, ``rank_dropout``,
  ``module_dropout``, ``target_modules``, ``exclude_modules``, ``layers_to_transform``,
  ``use_effective_conv2d``, ``init_weights`` (LoKr: ``decompose_both``, ``decompose_factor``,
  ``rank_dropout_scale``); tensors ``<module>.hada_w1_a`` ... / ``<module>.lokr_w1`` ....
  Tables: ``methods/lycoris/files.py``, ``methods/loha/files.py``, ``methods/lokr/files.py``.
- Prompt tuning, P-tuning, prefix tuning: ``peft_type`` ``PROMPT_TUNING`` / ``P_TUNING`` /
  ``PREFIX_TUNING``; one tensor, ``prompt_embeddings`` (n, D), or (n, layers * 2 * kv_dim) for
  prefix tuning, as PEFT saves it. Keys: ``methods/prompt/files.py``.
- Bottleneck adapters: PEFT has no such method; ``peft_type: "ADAPTERKIT_BOTTLENECK"``, the
  config's own field names, tensors ``<module>.adapter_down.weight`` / ``.bias`` and
  ``<module>.adapter_up.weight`` / ``.bias``. PEFT cannot load these. ``methods/bottleneck/files.py``.
- VeRA, LN tuning, OFT, BOFT: ``peft_type`` ``VERA`` / ``LN_TUNING`` / ``OFT`` / ``BOFT``, PEFT's keys
  and tensors (``<module>.vera_lambda_b`` / ``_d`` and the shared ``base_model.vera_A`` / ``_B``;
  ``<module>.ln_tuning_layers.weight``; ``<module>.oft_R.weight``; ``<module>.boft_R`` / ``boft_s``).
  Tables: ``methods/vera/files.py``, ``methods/ln_tuning/files.py``, ``methods/oft/files.py``,
  ``methods/boft/files.py``.
- A new method registers its format with ``Method(..., files=FileFormat(...))``
  (``registry.FileFormat``); ``io`` never special-cases a method.

Trainer checkpoints (``trainer.py``, ``ak.checkpoint_callback()``): a ``transformers`` Trainer
callback that makes each ``checkpoint-N`` hold these files plus the Trainer's own state instead of
the whole model; without it the Trainer saves the whole model, base weights under their own names
(``adapterkit/state_dict.py``).
Loading PEFT's files: its saved base-layer weights (LoRA on embed_tokens / lm_head, a resized
vocabulary) are checked and, where they differ, loaded into the base (``base_layers.py``); a file
that does not fit gets one specific reason (``diagnose.py``). ``serving.py`` says whether vLLM's
LoRA loader takes a file; ``export.py`` merges an adapter into its base as a transformers folder.

Writes are atomic (``atomic.py``): every file is written under a temporary name in its own
folder and all are renamed into place only once all are written, so a failed save leaves the
previous files byte for byte.
"""

from .load import load_adapter
from .read import adapter_folders
from .save import save_adapter

__all__ = ["save_adapter", "load_adapter", "adapter_folders"]

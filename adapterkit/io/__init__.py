"""Adapter files: save_adapter / load_adapter in PEFT's layout.

An adapter folder holds ``adapter_config.json`` and ``adapter_model.safetensors`` (and a
``README.md`` model card at the top of what ``save_adapter`` wrote). Several adapters saved at
once: ``default`` at the root, every other one in a sub-folder named after it, as PEFT does.

adapter_config.json
    ``peft_type`` picks the method (``registry.method_for_peft_type``); the rest are that method's
    keys (its ``FileFormat``), plus ``base_model_name_or_path``, ``task_type`` (CAUSAL_LM,
    SEQ_CLS, ... from the model's class, so PEFT builds the right wrapper), ``inference_mode`` and
    ``modules_to_save`` (a config's ``train_modules``). Unknown keys are ignored on load.
adapter_model.safetensors
    Only the adapter's tensors, never base weights, metadata ``{"format": "pt"}``, keys as PEFT
    names them with the adapter name left out: ``base_model.model.<module>.<tensor>``. A
    ``train_modules`` copy of module ``M`` is saved as its state dict under
    ``base_model.model.M.<key>`` (PEFT's ``modules_to_save``). Pickle files
    (``adapter_model.bin``) are read only with ``allow_pickle=True``, with ``weights_only=True``.

Per method (each method's ``FileFormat`` is in its package, ``methods/<method>/files.py``):

- LoRA, rsLoRA, DoRA: ``peft_type: "LORA"``; keys ``r``, ``lora_alpha``, ``lora_dropout``,
  ``target_modules``, ``exclude_modules``, ``layers_to_transform``, ``use_rslora``, ``use_dora``,
  ``init_lora_weights``, ``fan_in_fan_out``; tensors ``<module>.lora_A.weight`` (rank, in),
  ``<module>.lora_B.weight`` (out, rank), DoRA ``<module>.lora_magnitude_vector`` (out,),
  embeddings ``<module>.lora_embedding_A`` / ``_B``. Full table: ``methods/lora/files.py``.
- A method registers its own format with ``Method(..., files=FileFormat(...))``; a method PEFT
  does not have writes a ``peft_type`` of adapterkit's own, documented in its ``files.py``.

Writes are atomic (``atomic.py``): every file is written under a temporary name in its own
folder and all are renamed into place only once all are written, so a failed save leaves the
previous files byte for byte.
"""
from .load import load_adapter
from .read import adapter_folders
from .save import save_adapter

__all__ = ["save_adapter", "load_adapter", "adapter_folders"]

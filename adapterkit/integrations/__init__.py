"""Integrations with other training libraries, each imported on its own (they import those libraries):

- ``adapterkit.integrations.trl``: TRL's DPO and GRPO trainers whose reference model is the adapted
  model itself with its adapters disabled (one copy of the base weights);
- ``adapterkit.integrations.vllm_sync``: the weight sync TRL's GRPO uses to feed vLLM, sending the base
  model's own parameter names with the adapters folded in.
"""

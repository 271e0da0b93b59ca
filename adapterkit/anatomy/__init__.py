"""What adapterkit reads of a model's structure, in one place, by module names, types and identity.

- ``modules``: the model as the user built it (``logical_modules``), and the base module an
  adapter layer wraps (``unwrapped``, ``base_module``);
- ``blocks``: transformer blocks and the roles of their layers (``blocks``, ``Block``, ``pick``,
  ``stacks``), and which block holds a module (``block_of``, ``block_index``);
- ``heads``: the output head (``get_output_embeddings``), the input embedding and classification heads;
- ``tied``: modules that share a parameter (tied weights), and untying them.

Every method, ``targets`` and training read structure through these functions; nothing here
imports a method.
"""

from .blocks import KEY_VALUE, Block, block_index, block_of, blocks, pick, stacks
from .heads import (
    CLASSIFIER_NAMES,
    classifier_heads,
    head_names,
    input_embedding,
    label_head,
    output_head,
    output_head_name,
)
from .modules import base_module, logical_modules, unwrapped
from .tied import tied_parameters, tied_with, untie

__all__ = [
    "KEY_VALUE",
    "Block",
    "block_index",
    "block_of",
    "blocks",
    "pick",
    "stacks",
    "CLASSIFIER_NAMES",
    "classifier_heads",
    "head_names",
    "label_head",
    "input_embedding",
    "output_head",
    "output_head_name",
    "base_module",
    "logical_modules",
    "unwrapped",
    "tied_parameters",
    "tied_with",
    "untie",
]

"""An adapted model's ``state_dict`` keeps the base model's own key names.

An adapter layer wraps ``q_proj``, so torch would name the wrapped weight ``...q_proj.base.weight``:
a key transformers' ``from_pretrained`` does not know, so it would fill that weight at random. Each
adapter layer therefore registers three of torch's public state-dict hooks when it is made (the
handles are kept in ``StateDictNames.handles``; the hooks leave the model with the layer, when
``detach``, ``delete_adapter`` or ``merge`` takes it out):

- ``state_dict``: ``<layer>.base.<key>`` -> ``<layer>.<key>``, the name it had before ``attach``;
  adapter tensors stay ``<layer>.adapters.<adapter>.<tensor>`` (``from_pretrained`` reports those
  as unexpected and leaves them out);
- ``load_state_dict`` (before torch matches keys): the inverse. Keys already in the inner form
  (``<layer>.base.<key>``, as saved before these hooks) load as they are;
- after ``load_state_dict``: missing / unexpected keys are reported in the outer form too.

So ``save_pretrained`` writes a model that ``from_pretrained`` loads with its real base weights,
and ``load_state_dict(state_dict())`` (what the Trainer's resume does) restores base and adapters
exactly. Nested layers (two methods on one module) each strip their own ``base.``, innermost first.
"""

from __future__ import annotations

from torch import nn

BASE = "base."


def _own_names(module: nn.Module) -> set[str]:
    """Names of a module's direct children, parameters and buffers."""
    return (
        {n for n, _ in module.named_children()}
        | {n for n, _ in module.named_parameters(recurse=False)}
        | {n for n, _ in module.named_buffers(recurse=False)}
    )


class StateDictNames:
    """The state-dict hooks of one adapter layer."""

    def __init__(self, layer: nn.Module):
        self.loading: list[str] = []  # prefixes of loads in progress (torch's load recursion nests)
        self.handles = (
            layer.register_state_dict_post_hook(self.saved),
            layer.register_load_state_dict_pre_hook(self.before_load),
            layer.register_load_state_dict_post_hook(self.after_load),
        )

    @staticmethod
    def saved(layer: nn.Module, state: dict, prefix: str, local_metadata: dict) -> None:
        """``<prefix>base.<key>`` -> ``<prefix><key>``, in place, keeping the order of the keys."""
        inner = prefix + BASE
        mine = []
        for key in reversed(state):  # this layer's keys were written last
            if not key.startswith(prefix):
                break
            mine.append(key)
        if not any(key.startswith(inner) for key in mine):
            return
        moved = [(key, state.pop(key)) for key in reversed(mine)]
        for key, value in moved:
            new = prefix + key[len(inner) :] if key.startswith(inner) else key
            assert new not in state, f"state-dict key {new!r} would name two tensors"
            state[new] = value

    def before_load(
        self,
        layer: nn.Module,
        state: dict,
        prefix: str,
        local_metadata,
        strict,
        missing_keys,
        unexpected_keys,
        error_msgs,
    ) -> None:
        """``<prefix><key>`` -> ``<prefix>base.<key>`` for every key that is not this layer's adapter."""
        self.loading.append(prefix)
        base_has_base = "base" in _own_names(layer.innermost())  # then "base." may be the outer form
        for key in [k for k in state if k.startswith(prefix)]:
            rest = key[len(prefix) :]
            head, _, tail = rest.partition(".")
            if head == "adapters" and tail.partition(".")[0] in layer.adapters:
                continue  # one of this layer's adapters
            if head == "base" and not base_has_base:
                continue  # the inner form already
            # the base's own tensor, or an adapter of a layer nested inside this one
            state[prefix + BASE + rest] = state.pop(key)

    def after_load(self, layer: nn.Module, incompatible) -> None:
        prefix = self.loading.pop() if self.loading else None
        if prefix is None:
            return
        inner = prefix + BASE
        for keys in (incompatible.missing_keys, incompatible.unexpected_keys):
            keys[:] = [prefix + k[len(inner) :] if k.startswith(inner) else k for k in keys]

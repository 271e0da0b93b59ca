"""VeRA: frozen random projections shared by all adapted layers, trained scaling vectors; mergeable."""

from ... import bases
from ...registry import Method, register
from ..linear_targets import picked
from ...anatomy import base_module
from .config import VeRAConfig
from .files import FILES
from .layers import Projections, VeRA, VeRALayer, place


def _where(model, config: VeRAConfig) -> dict[str, Projections]:
    """{module name: the adapter's shared projections}, sized by the largest in / out of the targets
    (PEFT's ``_find_dim``), so that every layer takes its top-left slice."""
    names = picked(model, config, "VeRA")
    sizes = [bases.features(base_module(model, n)) for n in names]
    shared = Projections(
        config.rank,
        max(i for i, _ in sizes),
        max(o for _, o in sizes),
        config.projection_prng_key,
        config.save_projection,
        **place(base_module(model, names[0])),
    )
    return dict.fromkeys(names, shared)


def _build(base, config: VeRAConfig, projections: Projections) -> VeRA:
    return VeRA(base, config, projections)


METHOD = register(Method(config=VeRAConfig, layer=VeRALayer, where=_where, build=_build, files=FILES))

__all__ = ["VeRAConfig", "VeRA", "VeRALayer", "Projections", "METHOD"]

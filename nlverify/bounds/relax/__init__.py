"""Sound linear relaxations, one module per family of ops; this registry maps a graph op to its family.

Modules are imported lazily, so loading a ReLU network never imports the sine machinery.
"""
from __future__ import annotations

from functools import lru_cache
from importlib import import_module

from nlverify.bounds.relax._memo import release_live
from nlverify.bounds.relax.base import (
    BinaryRelaxation, LinearRelaxation, PlaneRelaxation, UnaryRelaxation,
)

# activation name -> (module under nlverify.bounds.relax, class name, constructor parameter names)
UNARY_FAMILIES: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "relu": ("relu", "Relu", ()),
    "leaky_relu": ("relu", "LeakyRelu", ("negative_slope",)),
    "sigmoid": ("s_shaped", "Sigmoid", ()),
    "tanh": ("s_shaped", "Tanh", ()),
    "gelu": ("gelu", "Gelu", ()),
    "sin": ("sine", "Sin", ()),
    "cos": ("sine", "Cos", ()),
    "pow": ("power", "Pow", ("exponent",)),
    "reciprocal": ("power", "Reciprocal", ()),
    "exp": ("power", "Exp", ()),
    "floor": ("floor", "Floor", ()),
}
BINARY_FAMILIES: dict[str, tuple[str, str]] = {
    "max": ("minmax", "Max"),
    "min": ("minmax", "Min"),
    "mul": ("mul", "Mul"),
}


@lru_cache(maxsize=None)
def _unary(activation: str, params: tuple[tuple[str, float], ...]) -> UnaryRelaxation:
    module, cls, names = UNARY_FAMILIES[activation]
    kwargs = dict(params)
    return getattr(import_module(f"nlverify.bounds.relax.{module}"), cls)(*(kwargs[n] for n in names))


def unary_relaxation(activation: str, **params: float) -> UnaryRelaxation:
    """The relaxation object for an elementwise activation (e.g. ``unary_relaxation("leaky_relu",
    negative_slope=0.01)``)."""
    if activation not in UNARY_FAMILIES:
        raise KeyError(f"no relaxation for activation '{activation}'")
    return _unary(activation, tuple(sorted(params.items())))


@lru_cache(maxsize=None)
def binary_relaxation(activation: str) -> BinaryRelaxation:
    module, cls = BINARY_FAMILIES[activation]
    return getattr(import_module(f"nlverify.bounds.relax.{module}"), cls)()


__all__ = [
    "LinearRelaxation", "PlaneRelaxation", "UnaryRelaxation", "BinaryRelaxation",
    "unary_relaxation", "binary_relaxation", "UNARY_FAMILIES", "BINARY_FAMILIES", "release_live",
]

"""The contract every relaxation satisfies.

A *unary* relaxation of an elementwise function ``f`` on the box ``[lower, upper]`` is a pair of
lines, one per neuron,

    lower_slope * x + lower_intercept  <=  f(x)  <=  upper_slope * x + upper_intercept
    for every x with lower <= x <= upper,

returned as a :class:`LinearRelaxation`. A *binary* relaxation of ``f(x, y)`` on
``[lx, ux] x [ly, uy]`` is a pair of planes (:class:`PlaneRelaxation`)

    lower_x * x + lower_y * y + lower_intercept <= f(x, y) <= upper_x * x + upper_y * y + upper_intercept.

Free parameters ("alpha") select among sound relaxations: a tangent point, a lower slope, a convex
combination. They are passed as one tensor ``alpha`` of shape ``(n_alpha, *batch)`` with entries in
[0, 1]; ``batch`` broadcasts against ``lower.shape``; the relaxation maps every value in [0, 1] to a
*sound* choice, so an optimiser may move alpha freely and clamp it to [0, 1]. ``alpha=None`` means the
family's default (the CROWN choice). Results broadcast to the common shape of bounds and alpha.

Degenerate boxes (lower == upper) must work: the lines then pass through (lower, f(lower)).
Bounds must hold in the dtype of the inputs up to the family's documented rounding tolerance, which is
folded into the intercepts (never left for callers to remember).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from torch import Tensor


@dataclass
class LinearRelaxation:
    """Per-neuron lines ``lower_slope*x + lower_intercept <= f(x) <= upper_slope*x + upper_intercept``."""

    lower_slope: Tensor
    lower_intercept: Tensor
    upper_slope: Tensor
    upper_intercept: Tensor

    def lower_at(self, x: Tensor) -> Tensor:
        return self.lower_slope * x + self.lower_intercept

    def upper_at(self, x: Tensor) -> Tensor:
        return self.upper_slope * x + self.upper_intercept


@dataclass
class PlaneRelaxation:
    """Per-neuron planes enclosing ``f(x, y)`` on a box."""

    lower_x: Tensor
    lower_y: Tensor
    lower_intercept: Tensor
    upper_x: Tensor
    upper_y: Tensor
    upper_intercept: Tensor

    def lower_at(self, x: Tensor, y: Tensor) -> Tensor:
        return self.lower_x * x + self.lower_y * y + self.lower_intercept

    def upper_at(self, x: Tensor, y: Tensor) -> Tensor:
        return self.upper_x * x + self.upper_y * y + self.upper_intercept


def checked_alpha(name: str, n_alpha: int, alpha: Tensor, dtype) -> Tensor:
    """``alpha`` in ``dtype`` after checking it has one leading row per free parameter."""
    if alpha.shape[0] != n_alpha:
        raise ValueError(f"{name}: alpha must have leading dimension {n_alpha}, got {tuple(alpha.shape)}")
    return alpha.to(dtype=dtype)


class UnaryRelaxation(Protocol):
    """An elementwise nonlinearity and its sound relaxation (one class per family member)."""

    name: str       # e.g. "sigmoid"
    n_alpha: int    # number of free parameters per neuron (0 if none)

    def function(self, x: Tensor) -> Tensor:
        """The exact function, elementwise, in the dtype of x."""

    def interval(self, lower: Tensor, upper: Tensor) -> tuple[Tensor, Tensor]:
        """Sound (ideally exact) image ``[min f, max f]`` of ``[lower, upper]``."""

    def relax(self, lower: Tensor, upper: Tensor, alpha: Tensor | None = None) -> LinearRelaxation:
        """Sound lines on ``[lower, upper]``; alpha as described in the module docstring."""

    def init_alpha(self, lower: Tensor, upper: Tensor) -> Tensor:
        """Alpha of shape ``(n_alpha, *lower.shape)`` that reproduces the default relaxation."""

    # Optional: ``is_exact(lower, upper) -> bool Tensor``, True where the relaxation equals the function
    # on the box whatever its width (e.g. a stable ReLU); the engine then skips refining those neurons.


class BinaryRelaxation(Protocol):
    """An elementwise nonlinearity of two tensors (max, min, product) and its relaxation."""

    name: str
    n_alpha: int

    def function(self, x: Tensor, y: Tensor) -> Tensor: ...

    def interval(self, lx: Tensor, ux: Tensor, ly: Tensor, uy: Tensor) -> tuple[Tensor, Tensor]: ...

    def relax(self, lx: Tensor, ux: Tensor, ly: Tensor, uy: Tensor,
              alpha: Tensor | None = None) -> PlaneRelaxation: ...

    def init_alpha(self, lx: Tensor, ux: Tensor, ly: Tensor, uy: Tensor) -> Tensor: ...

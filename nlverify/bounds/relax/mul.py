"""Sound planes for the elementwise product ``x * y`` on a box (McCormick).

Box: ``x in [lx, ux]``, ``y in [ly, uy]``. The four McCormick inequalities are products of two
non-negative factors, expanded:

    (x - lx)(y - ly) >= 0   =>   x*y >= ly*x + lx*y - lx*ly          (lower plane L1)
    (ux - x)(uy - y) >= 0   =>   x*y >= uy*x + ux*y - ux*uy          (lower plane L2)
    (x - lx)(uy - y) >= 0   =>   x*y <= uy*x + lx*y - lx*uy          (upper plane U1)
    (ux - x)(y - ly) >= 0   =>   x*y <= ly*x + ux*y - ux*ly          (upper plane U2)

A single plane per bound is needed, and a convex combination of two valid lower (upper) planes is a
valid lower (upper) plane, so with ``alpha`` of shape ``(2, *batch)`` (``n_alpha = 2``)

    lower = alpha[0] * L1 + (1 - alpha[0]) * L2,      upper = alpha[1] * U1 + (1 - alpha[1]) * U2.

Default ``alpha = 0.5``: the two planes of each pair have the same gap at the box centre
(``(ux-lx)(uy-ly)/4``) and the same mean gap over the box, so neither is better in general; the
average is the symmetric choice and an interior starting point for an optimiser. Each McCormick
plane is exact on two edges of the box, so degenerate boxes (``lx == ux`` or ``ly == uy``) give
the exact linear function (up to the margin).

Rounding: intercepts move outward by ``MUL_MARGIN_ULPS * eps(dtype) * (|lx|+|ux|) * (|ly|+|uy|)``;
every coefficient times the variable it multiplies, and every intercept, is bounded by that scale,
and each is computed with at most a few roundings. Non-finite planes (overflow, infinite bounds)
become "no bound": zero coefficients and infinite intercepts.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .base import PlaneRelaxation

#: Outward shift of the intercepts, in units of ``eps(dtype) * (|lx|+|ux|) * (|ly|+|uy|)``.
MUL_MARGIN_ULPS = 8.0

#: Default interpolation weight between the two McCormick planes of each bound.
DEFAULT_MCCORMICK_WEIGHT = 0.5


def _rounding_margin(lx: Tensor, ux: Tensor, ly: Tensor, uy: Tensor) -> Tensor:
    return MUL_MARGIN_ULPS * torch.finfo(lx.dtype).eps * (lx.abs() + ux.abs()) * (ly.abs() + uy.abs())


def _finite_or_no_bound(coef_x: Tensor, coef_y: Tensor, intercept: Tensor,
                        no_bound: float) -> tuple[Tensor, Tensor, Tensor]:
    ok = torch.isfinite(coef_x) & torch.isfinite(coef_y) & torch.isfinite(intercept)
    zero = torch.zeros_like(coef_x)
    return (torch.where(ok, coef_x, zero), torch.where(ok, coef_y, zero),
            torch.where(ok, intercept, torch.full_like(intercept, no_bound)))


def _mix(weight: Tensor, first: tuple[Tensor, Tensor, Tensor],
         second: tuple[Tensor, Tensor, Tensor]) -> tuple[Tensor, ...]:
    """Convex combination ``weight*first + (1-weight)*second`` of two planes (coef_x, coef_y, c)."""
    return tuple(weight * a + (1.0 - weight) * b for a, b in zip(first, second))


class Mul:
    """Elementwise ``x * y`` with interpolated McCormick planes; see the module docstring."""

    name = "mul"
    n_alpha = 2

    def function(self, x: Tensor, y: Tensor) -> Tensor:
        return x * y

    def interval(self, lx: Tensor, ux: Tensor, ly: Tensor, uy: Tensor) -> tuple[Tensor, Tensor]:
        """Extremes of the four corner products (a bilinear function's extremes are at corners)."""
        corners = torch.stack(torch.broadcast_tensors(lx * ly, lx * uy, ux * ly, ux * uy))
        margin = _rounding_margin(lx, ux, ly, uy)
        return corners.min(dim=0).values - margin, corners.max(dim=0).values + margin

    def init_alpha(self, lx: Tensor, ux: Tensor, ly: Tensor, uy: Tensor) -> Tensor:
        shape = torch.broadcast_shapes(lx.shape, ux.shape, ly.shape, uy.shape)
        return torch.full((2, *shape), DEFAULT_MCCORMICK_WEIGHT, dtype=lx.dtype, device=lx.device)

    def relax(self, lx: Tensor, ux: Tensor, ly: Tensor, uy: Tensor,
              alpha: Tensor | None = None) -> PlaneRelaxation:
        if alpha is None:
            alpha = self.init_alpha(lx, ux, ly, uy)
        alpha = alpha.to(lx.dtype).clamp(0.0, 1.0)
        margin = _rounding_margin(lx, ux, ly, uy)
        lower_1 = (ly, lx, -lx * ly)
        lower_2 = (uy, ux, -ux * uy)
        upper_1 = (uy, lx, -lx * uy)
        upper_2 = (ly, ux, -ux * ly)
        lower_x, lower_y, lower_c = _mix(alpha[0], lower_1, lower_2)
        upper_x, upper_y, upper_c = _mix(alpha[1], upper_1, upper_2)
        lower = _finite_or_no_bound(lower_x, lower_y, lower_c - margin, float("-inf"))
        upper = _finite_or_no_bound(upper_x, upper_y, upper_c + margin, float("inf"))
        parts = torch.broadcast_tensors(*lower, *upper)
        return PlaneRelaxation(*parts)

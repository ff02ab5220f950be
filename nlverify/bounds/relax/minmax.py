"""Sound planes for the elementwise binary ``max(x, y)`` and ``min(x, y)`` on a box.

Box: ``x in [lx, ux]``, ``y in [ly, uy]``.

Dominance (exact)
    If ``lx >= uy`` then ``x >= y`` on the whole box and ``max = x``: both planes are ``x`` (no margin,
    the planes are exactly the function). Symmetrically ``ly >= ux`` gives ``max = y``.

Overlapping box (``lx < uy`` and ``ly < ux``)
    Lower plane, for any ``alpha in [0, 1]``::

        alpha*x + (1 - alpha)*y  <=  max(x, y)

    (a convex combination of two numbers never exceeds the larger). ``n_alpha = 1``. Default: the
    variable with the larger box centre (``alpha = 1`` if ``cx > cy``, ``0`` if ``cx < cy``, ``0.5``
    on ties) -- the choice maximising the plane at the box centre (and its mean over the box).

    Upper plane. If ``ux >= uy``: since ``y <= uy``, ``max(x, y) <= max(x, uy)``, a convex function
    of ``x`` alone, which lies below its chord on ``[lx, ux]``. The chord joins
    ``(lx, max(lx, uy)) = (lx, uy)`` (as ``lx < uy``) and ``(ux, max(ux, uy)) = (ux, ux)``::

        max(x, y)  <=  uy + (ux - uy)/(ux - lx) * (x - lx)

    with ``ux - lx > 0`` because ``ux >= uy > lx``. If ``uy > ux`` the roles swap (a chord in ``y``).
    Both chords are sound on every overlapping box; the one in the variable with the larger upper
    end is the smaller of the two at the box centre (``(uy + ux)/2`` against ``max(ux, uy)``), so we
    take it. At the four corners it is exact at three of them and ``uy >= max(lx, ly)`` at ``(lx, ly)``.

``min(x, y) = -max(-x, -y)``: the relaxation of ``Max`` on ``[-ux,-lx] x [-uy,-ly]``, negated (its
upper plane becomes our lower plane and vice versa; ``alpha`` then weights the *upper* plane
``alpha*x + (1-alpha)*y >= min(x, y)``).

Rounding: in the overlapping case the intercepts move outward by
``MINMAX_MARGIN_ULPS * eps(dtype) * (max(|lx|,|ux|) + max(|ly|,|uy|))``, covering the rounding of
``1 - alpha`` (coefficients summing to ``1 +- eps/2``), of the chord slope (three roundings) and of
its intercept. Non-finite bounds give "no bound" (zero coefficients, infinite intercepts).
"""
from __future__ import annotations

import torch
from torch import Tensor

from .base import PlaneRelaxation

#: Outward shift of the intercepts in the overlapping case, in units of
#: ``eps(dtype) * (max|x| + max|y|)``.
MINMAX_MARGIN_ULPS = 4.0


def _rounding_margin(lx: Tensor, ux: Tensor, ly: Tensor, uy: Tensor) -> Tensor:
    scale = torch.maximum(lx.abs(), ux.abs()) + torch.maximum(ly.abs(), uy.abs())
    return MINMAX_MARGIN_ULPS * torch.finfo(lx.dtype).eps * scale


def _safe_divide(numerator: Tensor, denominator: Tensor) -> Tensor:
    """``numerator / denominator`` where the denominator is positive, else 0 (branch not taken)."""
    positive = denominator > 0
    return torch.where(positive, numerator / torch.where(positive, denominator, torch.ones_like(denominator)),
                       torch.zeros_like(numerator))


def _default_weight(lx: Tensor, ux: Tensor, ly: Tensor, uy: Tensor) -> Tensor:
    """Weight of ``x`` in the default lower plane: 1 if x's box centre is larger, 0 if smaller."""
    centre_gap = (lx + ux) - (ly + uy)
    return torch.where(centre_gap > 0, torch.ones_like(centre_gap),
                       torch.where(centre_gap < 0, torch.zeros_like(centre_gap),
                                   torch.full_like(centre_gap, 0.5)))


def _no_bound_where_not_finite(planes: PlaneRelaxation) -> PlaneRelaxation:
    """Replace planes with non-finite parts (infinite input bounds) by "no bound"."""
    lower_ok = (torch.isfinite(planes.lower_x) & torch.isfinite(planes.lower_y)
                & torch.isfinite(planes.lower_intercept))
    upper_ok = (torch.isfinite(planes.upper_x) & torch.isfinite(planes.upper_y)
                & torch.isfinite(planes.upper_intercept))
    zero = torch.zeros_like(planes.lower_x)
    inf = torch.full_like(planes.lower_x, float("inf"))
    return PlaneRelaxation(
        torch.where(lower_ok, planes.lower_x, zero), torch.where(lower_ok, planes.lower_y, zero),
        torch.where(lower_ok, planes.lower_intercept, -inf),
        torch.where(upper_ok, planes.upper_x, zero), torch.where(upper_ok, planes.upper_y, zero),
        torch.where(upper_ok, planes.upper_intercept, inf))


class Max:
    """Elementwise ``max(x, y)``; see the module docstring for the planes."""

    name = "max"
    n_alpha = 1

    def function(self, x: Tensor, y: Tensor) -> Tensor:
        return torch.maximum(x, y)

    def interval(self, lx: Tensor, ux: Tensor, ly: Tensor, uy: Tensor) -> tuple[Tensor, Tensor]:
        return torch.maximum(lx, ly), torch.maximum(ux, uy)

    def init_alpha(self, lx: Tensor, ux: Tensor, ly: Tensor, uy: Tensor) -> Tensor:
        lx, ux, ly, uy = torch.broadcast_tensors(lx, ux, ly, uy)
        return _default_weight(lx, ux, ly, uy).unsqueeze(0)

    def relax(self, lx: Tensor, ux: Tensor, ly: Tensor, uy: Tensor,
              alpha: Tensor | None = None) -> PlaneRelaxation:
        if alpha is None:
            alpha = self.init_alpha(lx, ux, ly, uy)
        weight = alpha[0].to(lx.dtype).clamp(0.0, 1.0)
        one, zero = torch.ones_like(lx), torch.zeros_like(lx)
        margin = _rounding_margin(lx, ux, ly, uy)

        # overlapping box: convex-combination lower plane, chord upper plane
        chord_in_x = ux >= uy
        slope_x = _safe_divide(ux - uy, ux - lx)
        slope_y = _safe_divide(uy - ux, uy - ly)
        upper_x = torch.where(chord_in_x, slope_x, zero)
        upper_y = torch.where(chord_in_x, zero, slope_y)
        upper_c = torch.where(chord_in_x, uy - slope_x * lx, ux - slope_y * ly) + margin
        lower_x, lower_y, lower_c = weight, 1.0 - weight, -margin

        # dominance: the planes are exactly x (or y)
        x_wins = lx >= uy
        y_wins = (ly >= ux) & ~x_wins
        exact = x_wins | y_wins
        exact_x = torch.where(x_wins, one, zero)
        exact_y = torch.where(y_wins, one, zero)

        def pick(exact_value: Tensor, overlap_value: Tensor) -> Tensor:
            return torch.where(exact, exact_value, overlap_value)

        shape = torch.broadcast_shapes(lx.shape, ux.shape, ly.shape, uy.shape, weight.shape)
        parts = [pick(exact_x, lower_x), pick(exact_y, lower_y), pick(zero, lower_c),
                 pick(exact_x, upper_x), pick(exact_y, upper_y), pick(zero, upper_c)]
        return _no_bound_where_not_finite(PlaneRelaxation(*(p.expand(shape) for p in parts)))


class Min:
    """Elementwise ``min(x, y) = -max(-x, -y)``; see the module docstring."""

    name = "min"
    n_alpha = 1

    def __init__(self) -> None:
        self._max = Max()

    def function(self, x: Tensor, y: Tensor) -> Tensor:
        return torch.minimum(x, y)

    def interval(self, lx: Tensor, ux: Tensor, ly: Tensor, uy: Tensor) -> tuple[Tensor, Tensor]:
        return torch.minimum(lx, ly), torch.minimum(ux, uy)

    def init_alpha(self, lx: Tensor, ux: Tensor, ly: Tensor, uy: Tensor) -> Tensor:
        return self._max.init_alpha(-ux, -lx, -uy, -ly)

    def relax(self, lx: Tensor, ux: Tensor, ly: Tensor, uy: Tensor,
              alpha: Tensor | None = None) -> PlaneRelaxation:
        # P(x', y') bounds max(x', y') with x' = -x, y' = -y; min(x, y) = -max(-x, -y), so
        # min >= -(U_x*(-x) + U_y*(-y) + U_c) = U_x*x + U_y*y - U_c, and likewise for the upper plane.
        p = self._max.relax(-ux, -lx, -uy, -ly, alpha)
        return PlaneRelaxation(p.upper_x, p.upper_y, -p.upper_intercept,
                               p.lower_x, p.lower_y, -p.lower_intercept)

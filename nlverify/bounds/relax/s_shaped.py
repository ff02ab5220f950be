"""Sound linear relaxations of S-shaped functions: sigmoid and tanh.

An *S-shaped* function ``f`` is increasing, convex on ``x <= 0`` and concave on ``x >= 0``.
On ``[l, u]`` the relaxation guarantees, for every real ``x`` with ``l <= x <= u``,

    lower_slope * x + lower_intercept  <=  f(x)  <=  upper_slope * x + upper_intercept.

Construction (the slope is chosen for tightness; the intercept makes the line sound)
-----------------------------------------------------------------------------------
Lower line (``alpha[0]``), a tangent at ``d = d_lo + alpha[0] * (d_hi - d_lo)`` or the chord:

* ``u <= 0`` (convex part): tangent at ``d`` in ``[l, u]``; default the midpoint (alpha 0.5).
* ``l >= 0`` (concave part): the chord through ``(l, f(l))`` and ``(u, f(u))`` (alpha unused).
* ``l < 0 < u``: let ``d*`` in ``[l, 0]`` be the tangent point whose tangent passes through
  ``(u, f(u))`` (bisection on ``r(d) = f(d) + f'(d)(u - d) - f(u)``, non-decreasing on ``[l, 0]``).
  If ``r(l) >= 0`` then ``d* <= l`` and the chord does not cross ``f``: the chord. Otherwise tangents
  at ``d`` in ``[l, d*]`` (they pass below ``(u, f(u))``); default ``d*`` (alpha 1, CROWN's choice).

Upper line (``alpha[1]``), the mirror image: ``l >= 0``: tangent at ``d`` in ``[l, u]`` (default
midpoint); ``u <= 0``: chord; mixed: tangents at ``d`` in ``[d**, u]`` with ``d**`` in ``[0, u]`` the
tangent point through ``(l, f(l))``, default ``d**`` (alpha 0), or the chord when it does not cross.
In every case alpha is the relative position of the tangent point in its range, left to right.

Soundness does not rest on the case analysis or on the bisections above: whatever slope ``k`` they
produce, the intercept is ``min_[l,u](f(x) - k x)`` (for the upper line ``max``), bounded rigorously
from the convexity structure (on the convex piece through the supporting line of ``f - kx`` at the
tangent point, or at ``l`` for the chord, which is exact there and needs no bisection) and lowered (raised) by the rounding margin of
:mod:`nlverify.bounds.relax._tangent` (``ROUNDING_MARGIN_ULPS`` ulps of the dtype). Where the
chosen line is exact tangent or chord, that intercept makes it touch ``f`` up to the margin.

Numerics: ``f'`` is computed from products of sigmoids (``sigmoid'(x) = s(x) s(-x)``,
``tanh'(x) = 4 s(2x) s(-2x)``), which keep full relative precision in both tails and never produce
``inf`` or ``NaN`` for finite ``|x|`` (tested up to 1e4). Degenerate boxes (``l == u``) give lines
through ``(l, f(l))`` with slope ``f'(l)``, lowered/raised by the margin. Precondition: ``l <= u``,
both finite.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from nlverify.bounds.relax._tangent import (
    chord_slope,
    clamp_into,
    lower_intercept,
    tangent_point_through,
    upper_intercept,
    value_margin,
)
from nlverify.bounds.relax._memo import BoxMemo
from nlverify.bounds.relax.base import LinearRelaxation, checked_alpha


@dataclass
class _TangentRange:
    """Where the tangent point of one line may lie, per neuron, and whether a tangent is used at all."""

    use_tangent: Tensor    # bool; False: the chord
    point_lo: Tensor
    point_hi: Tensor
    default_alpha: Tensor


# alpha-independent tangent ranges of recent boxes (BaB's alpha loop re-relaxes fixed boxes every step)
_RANGES: BoxMemo[_TangentRange] = BoxMemo()


class SShaped:
    """Generic relaxation of an increasing function, convex for ``x <= 0`` and concave for ``x >= 0``.

    Subclasses define :meth:`function` and :meth:`derivative`. See the module docstring for the
    inequality and the construction; ``n_alpha = 2`` (tangent point of the lower line, of the upper line).
    """

    name: str = "s_shaped"
    n_alpha: int = 2

    # -- the function ----------------------------------------------------------------------------
    def function(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def derivative(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def error_factor(self, x: Tensor) -> Tensor:
        """Evaluation error of f and f' in ulps of their magnitude: O(1) for these formulas."""
        return torch.ones_like(x)

    def derivative_error_scale(self, x: Tensor) -> Tensor:
        """f' is a product of sigmoids (no cancellation): its error is relative to |f'| itself."""
        return self.derivative(x).abs()

    def interval(self, lower: Tensor, upper: Tensor) -> tuple[Tensor, Tensor]:
        """``[f(l), f(u)]`` (f is increasing), widened by the rounding margin."""
        f_lower, f_upper = self.function(lower), self.function(upper)
        return (f_lower - value_margin(self, lower, f_lower),
                f_upper + value_margin(self, upper, f_upper))

    # -- the relaxation --------------------------------------------------------------------------
    def _lower_range(self, lower: Tensor, upper: Tensor) -> _TangentRange:
        return _RANGES.get(self.name + ":lower", lower, upper, lambda: self._compute_lower_range(lower, upper))

    def _upper_range(self, lower: Tensor, upper: Tensor) -> _TangentRange:
        return _RANGES.get(self.name + ":upper", lower, upper, lambda: self._compute_upper_range(lower, upper))

    def _compute_lower_range(self, lower: Tensor, upper: Tensor) -> _TangentRange:
        with torch.no_grad():
            convex = upper <= 0
            mixed = (lower < 0) & (upper > 0)
            knee = clamp_into(0.0, lower, upper)
            f_upper = self.function(upper)
            # Does the tangent at l pass above (u, f(u))? Then no tangent in [l, 0] reaches u from
            # below, i.e. d* <= l, and the chord lies below f.
            tangent_at_l_at_u = self.function(lower) + self.derivative(lower) * (upper - lower)
            chord_is_sound = mixed & (tangent_at_l_at_u >= f_upper)
            through_upper = tangent_point_through(self, upper, lower, knee, increasing=True)
            use_tangent = convex | (mixed & ~chord_is_sound)
            point_hi = torch.where(convex, upper, through_upper)
            half, one = torch.full_like(lower, 0.5), torch.ones_like(lower)
            return _TangentRange(use_tangent, lower, point_hi, torch.where(convex, half, one))

    def _compute_upper_range(self, lower: Tensor, upper: Tensor) -> _TangentRange:
        with torch.no_grad():
            concave = lower >= 0
            mixed = (lower < 0) & (upper > 0)
            knee = clamp_into(0.0, lower, upper)
            f_lower = self.function(lower)
            # Does the tangent at u pass below (l, f(l))? Then d** >= u and the chord lies above f.
            tangent_at_u_at_l = self.function(upper) + self.derivative(upper) * (lower - upper)
            chord_is_sound = mixed & (tangent_at_u_at_l <= f_lower)
            through_lower = tangent_point_through(self, lower, knee, upper, increasing=True)
            use_tangent = concave | (mixed & ~chord_is_sound)
            point_lo = torch.where(concave, lower, through_lower)
            half, zero = torch.full_like(lower, 0.5), torch.zeros_like(lower)
            return _TangentRange(use_tangent, point_lo, upper, torch.where(concave, half, zero))

    def init_alpha(self, lower: Tensor, upper: Tensor) -> Tensor:
        """``(2, *shape)``: the tangent-point positions of the default (CROWN) relaxation."""
        lower, upper = torch.broadcast_tensors(lower, upper)
        return torch.stack([self._lower_range(lower, upper).default_alpha,
                            self._upper_range(lower, upper).default_alpha])

    def relax(self, lower: Tensor, upper: Tensor, alpha: Tensor | None = None) -> LinearRelaxation:
        lower, upper = torch.broadcast_tensors(lower, upper)
        lower_range = self._lower_range(lower, upper)
        upper_range = self._upper_range(lower, upper)
        if alpha is None:
            alpha = torch.stack([lower_range.default_alpha, upper_range.default_alpha])
        alpha = checked_alpha(self.name, self.n_alpha, alpha, lower.dtype)
        knee = clamp_into(0.0, lower, upper)
        chord = chord_slope(self, lower, upper)

        lower_point = lower_range.point_lo + alpha[0] * (lower_range.point_hi - lower_range.point_lo)
        lower_slope = torch.where(lower_range.use_tangent, self.derivative(lower_point), chord)
        # Minimiser hint on the convex piece: the tangent point, or l for the chord (then g'(l) >= 0).
        lower_hint = torch.where(lower_range.use_tangent, lower_point, lower)
        lower_icpt = lower_intercept(self, lower_slope, lower, upper, convex_pieces=[(lower, knee)],
                                     hints=[lower_hint])

        upper_point = upper_range.point_lo + alpha[1] * (upper_range.point_hi - upper_range.point_lo)
        upper_slope = torch.where(upper_range.use_tangent, self.derivative(upper_point), chord)
        upper_hint = torch.where(upper_range.use_tangent, upper_point, upper)
        upper_icpt = upper_intercept(self, upper_slope, lower, upper, concave_pieces=[(knee, upper)],
                                     hints=[upper_hint])

        return LinearRelaxation(*torch.broadcast_tensors(lower_slope, lower_icpt, upper_slope, upper_icpt))


class Sigmoid(SShaped):
    """``sigmoid(x) = 1 / (1 + exp(-x))``; relaxation as in :class:`SShaped`."""

    name = "sigmoid"

    def function(self, x: Tensor) -> Tensor:
        return torch.sigmoid(x)

    def derivative(self, x: Tensor) -> Tensor:
        # s(x)(1 - s(x)) loses all relative precision for large x (1 - s rounds to 0); s(x)s(-x) does not.
        return torch.sigmoid(x) * torch.sigmoid(-x)


class Tanh(SShaped):
    """``tanh(x)``; relaxation as in :class:`SShaped`."""

    name = "tanh"

    def function(self, x: Tensor) -> Tensor:
        return torch.tanh(x)

    def derivative(self, x: Tensor) -> Tensor:
        # sech^2(x) = 4 s(2x) s(-2x), accurate in both tails (1 - tanh^2 cancels).
        return 4.0 * torch.sigmoid(2.0 * x) * torch.sigmoid(-2.0 * x)

"""Sound linear relaxation of GELU, exact erf form: ``gelu(x) = x * Phi(x)``.

``Phi`` is the standard normal CDF, ``phi`` its density. The facts the construction rests on:

* ``gelu'(x) = Phi(x) + x phi(x)`` and ``gelu''(x) = phi(x) (2 - x^2)``;
* so gelu is **convex on [-sqrt 2, sqrt 2]** and **concave on (-inf, -sqrt 2] and [sqrt 2, inf)**
  (inflection points at ``+-sqrt 2``);
* ``gelu'`` decreases on ``(-inf, -sqrt 2]`` (from 0 to ``gelu'(-sqrt 2) ~ -0.0683``), increases on
  ``[-sqrt 2, sqrt 2]`` (to ``gelu'(sqrt 2) ~ 1.0683``), and decreases towards 1 after;
* gelu is decreasing then increasing with its minimum ``~ -0.16997`` at ``x_min ~ -0.75179``
  (the root of ``gelu'``).

Inequality: for every real ``x`` in ``[l, u]``,

    lower_slope * x + lower_intercept  <=  gelu(x)  <=  upper_slope * x + upper_intercept.

Construction
------------
Each line is parametrised by its **slope**: ``alpha[0]`` (lower) and ``alpha[1]`` (upper) map
``[0, 1]`` linearly onto ``[min gelu', max gelu']`` over ``[l, u]`` (the slopes of all tangents,
computed exactly from the monotonicity of ``gelu'`` above). The intercept is the exact support
value for that slope: ``min_[l,u](gelu(x) - k x)`` for the lower line, ``max`` for the upper line,
bounded rigorously from the convexity structure (endpoints, plus the supporting line of
``gelu - k x`` at the point where ``gelu' = k`` in each convex piece for the minimum / each concave
piece for the maximum; that point comes from an interpolated inverse of the monotone ``gelu'`` on the
piece, and the bound is rigorous for any point, exact at the true one) and then lowered / raised
by the rounding margin (:mod:`nlverify.bounds.relax._tangent`: ``ROUNDING_MARGIN_ULPS`` ulps with
error factor ``1 + x^2`` for ``x < 0``, because ``Phi(x) = erfc(-x / sqrt 2) / 2`` in floating
point carries the condition number ``x^2`` of ``exp(-x^2/2)``). So **every** alpha in ``[0, 1]``, on every interval
(straddling the minimum, one or both inflection points, far out, tiny or degenerate), is sound; the
slope only decides tightness.

Chord lock: when ``[l, u]`` lies inside the convex piece, the upper line is the chord whatever
``alpha[1]`` says; inside a concave piece, the lower line is the chord whatever ``alpha[0]`` says. The
chord is sound there, and any sound line on that side is at or beyond ``gelu(l)`` and ``gelu(u)``,
hence beyond the chord on all of ``[l, u]``.

Default (alpha=None, CROWN-like): the slope of the convex (lower) / concave (upper) envelope of gelu
on ``[l, u]`` at the midpoint ``m``, i.e. the sound line that is highest (lowest) at ``m``. It is
picked, per neuron, as the best at ``m`` among two (lower) or three (upper) candidate slopes that
contain the envelope's slope: the chord, and the tangent at ``m`` clipped into the stretch where the
envelope follows gelu (between the tangent points of the tangents from ``(l, gelu(l))`` and
``(u, gelu(u))``, found by bisection). Inside ``[-sqrt 2, sqrt 2]`` this is the tangent at the midpoint below and the chord above;
inside a concave piece, the chord below and the tangent at the midpoint above.
"""
from __future__ import annotations

import math

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
from nlverify.bounds.relax.base import LinearRelaxation, checked_alpha

#: GELU's inflection points are at +- sqrt(2) (gelu'' = phi(x) (2 - x^2)).
INFLECTION = math.sqrt(2.0)
#: argmin of gelu, the root of Phi(x) + x phi(x) (Newton in float64 to the last bit).
MINIMUM_X = -0.7517915246935645
_INV_SQRT2 = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


class Gelu:
    """``gelu(x) = x Phi(x)`` (erf form). ``n_alpha = 2``: slope positions of the lower and upper line."""

    name: str = "gelu"
    n_alpha: int = 2

    # -- the function ----------------------------------------------------------------------------
    @staticmethod
    def _tail_cut(dtype: torch.dtype) -> float:
        """``c`` with ``phi(c) = tiny`` (smallest normal of the dtype).

        For ``|x| >= c``, ``phi(x) <= tiny`` and (Mills: ``Phi(-|x|) <= phi(x) / |x|``) ``Phi(-|x|) <=
        tiny``: there both are replaced by 0, an absolute error below ``tiny`` that the rounding margin
        covers; it keeps the math library off its very slow underflow path (and never feeds it the
        arguments of masked-out elements).
        """
        return math.sqrt(-2.0 * math.log(torch.finfo(dtype).tiny) - math.log(2.0 * math.pi))

    def normal_cdf(self, x: Tensor) -> Tensor:
        # erfc form: no cancellation in the left tail (0.5 * (1 + erf(.)) loses everything there).
        inside = x > -self._tail_cut(x.dtype)
        safe_x = torch.where(inside, x, torch.zeros_like(x))
        return torch.where(inside, 0.5 * torch.special.erfc(-safe_x * _INV_SQRT2), torch.zeros_like(x))

    def normal_pdf(self, x: Tensor) -> Tensor:
        inside = x.abs() < self._tail_cut(x.dtype)
        safe_x = torch.where(inside, x, torch.zeros_like(x))
        return torch.where(inside, _INV_SQRT_2PI * torch.exp(-0.5 * safe_x * safe_x), torch.zeros_like(x))

    def function(self, x: Tensor) -> Tensor:
        return x * self.normal_cdf(x)

    def derivative(self, x: Tensor) -> Tensor:
        return self.normal_cdf(x) + x * self.normal_pdf(x)

    def error_factor(self, x: Tensor) -> Tensor:
        """``1 + x^2`` for ``x < 0`` (the relative error of ``erfc(-x/sqrt 2)`` grows like x^2 ulps in
        the left tail, the condition number of ``exp(-x^2/2)``), 1 for ``x >= 0`` (Phi is near 1 there)."""
        negative_part = x.clamp(max=0.0)
        return 1.0 + negative_part * negative_part

    def derivative_error_scale(self, x: Tensor) -> Tensor:
        """``Phi(x) + |x| phi(x)``: gelu' = Phi + x phi cancels near x_min, its error does not."""
        return self.normal_cdf(x) + x.abs() * self.normal_pdf(x)

    def interval(self, lower: Tensor, upper: Tensor) -> tuple[Tensor, Tensor]:
        """Exact image widened by the rounding margin: max at an endpoint, min at an endpoint or x_min."""
        lower, upper = torch.broadcast_tensors(lower, upper)
        f_lower, f_upper = self.function(lower), self.function(upper)
        x_min = clamp_into(MINIMUM_X, lower, upper)
        f_min = self.function(x_min)
        low_lower = f_lower - value_margin(self, lower, f_lower)
        low_upper = f_upper - value_margin(self, upper, f_upper)
        low_min = f_min - value_margin(self, x_min, f_min)
        high_lower = f_lower + value_margin(self, lower, f_lower)
        high_upper = f_upper + value_margin(self, upper, f_upper)
        return (torch.minimum(torch.minimum(low_lower, low_upper), low_min),
                torch.maximum(high_lower, high_upper))

    # -- minimiser hints: gelu'^{-1} on each monotone piece -------------------------------------
    _HINT_REACH = 12.0      # beyond |x| = 12, gelu' equals 0 or 1 to well below float64 precision
    _HINT_POINTS = 2049

    def _derivative_table(self, lo: float, hi: float, like: Tensor) -> tuple[Tensor, Tensor]:
        """Abscissae and gelu' values on ``[lo, hi]`` (float64, cached per device), sorted by gelu'."""
        key = (lo, hi, like.device)
        cache = self.__dict__.setdefault("_tables", {})
        if key not in cache:
            xs = torch.linspace(lo, hi, self._HINT_POINTS, dtype=torch.float64, device=like.device)
            ds = self.derivative(xs)
            order = torch.argsort(ds)
            cache[key] = (xs[order].contiguous(), ds[order].contiguous())
        return cache[key]

    def _stationary_hint(self, slope: Tensor, lo: float, hi: float) -> Tensor:
        """Approximately the ``x`` in ``[lo, hi]`` with ``gelu'(x) = slope`` (gelu' is monotone there),
        clamped to the piece when there is none. Only a *hint* for the support computation, which is
        rigorous for any point (see :func:`nlverify.bounds.relax._tangent._min_signed_gap`); its
        accuracy only decides how tight the intercept is. Interpolation in a 2049-point table of gelu'
        and one Newton step where gelu'' is not small."""
        with torch.no_grad():
            xs, ds = self._derivative_table(lo, hi, slope)
            k = slope.detach().to(torch.float64).clamp(float(ds[0]), float(ds[-1]))
            right = torch.searchsorted(ds, k.reshape(-1)).clamp(1, len(ds) - 1).reshape(k.shape)
            left = right - 1
            d_left, d_right = ds[left], ds[right]
            span = d_right - d_left
            t = torch.where(span > 0, (k - d_left) / torch.where(span > 0, span, torch.ones_like(span)),
                            torch.zeros_like(span))
            x = xs[left] + t * (xs[right] - xs[left])
            curvature = self.normal_pdf(x) * (2.0 - x * x)
            newton = x - (self.derivative(x) - k) / torch.where(curvature.abs() > 1e-3, curvature, torch.ones_like(curvature))
            x = torch.where(curvature.abs() > 1e-3, newton, x).clamp(min(lo, hi), max(lo, hi))
            return x.to(slope.dtype)

    def _lower_hints(self, slope: Tensor) -> list[Tensor]:
        return [self._stationary_hint(slope, -INFLECTION, INFLECTION)]

    def _upper_hints(self, slope: Tensor) -> list[Tensor]:
        return [self._stationary_hint(slope, -self._HINT_REACH, -INFLECTION),
                self._stationary_hint(slope, INFLECTION, self._HINT_REACH)]

    # -- pieces and slope ranges -----------------------------------------------------------------
    @staticmethod
    def _pieces(lower: Tensor, upper: Tensor) -> tuple[tuple[Tensor, Tensor], list[tuple[Tensor, Tensor]]]:
        """The convex piece and the two concave pieces, clipped into ``[lower, upper]``."""
        left_knee = clamp_into(-INFLECTION, lower, upper)
        right_knee = clamp_into(INFLECTION, lower, upper)
        return (left_knee, right_knee), [(lower, left_knee), (right_knee, upper)]

    def _slope_range(self, lower: Tensor, upper: Tensor) -> tuple[Tensor, Tensor]:
        """``[min gelu', max gelu']`` over ``[lower, upper]``: endpoints and the clipped knees."""
        with torch.no_grad():
            (left_knee, right_knee), _ = self._pieces(lower, upper)
            d_lower, d_upper = self.derivative(lower), self.derivative(upper)
            low = torch.minimum(torch.minimum(d_lower, d_upper), self.derivative(left_knee))
            high = torch.maximum(torch.maximum(d_lower, d_upper), self.derivative(right_knee))
            return low, high

    @staticmethod
    def _alpha_of_slope(slope: Tensor, low: Tensor, high: Tensor) -> Tensor:
        span = high - low
        has_span = span > 0
        ratio = (slope - low) / torch.where(has_span, span, torch.ones_like(span))
        return torch.where(has_span, ratio.clamp(0.0, 1.0), torch.full_like(span, 0.5))

    # -- defaults: the envelope slope at the midpoint ---------------------------------------------
    def _best_slope(self, candidates: list[Tensor], lower: Tensor, upper: Tensor, midpoint: Tensor,
                    below: bool) -> Tensor:
        """Among candidate slopes, the one whose sound line is highest (lower line) / lowest at m."""
        convex, concave = self._pieces(lower, upper)
        best_slope, best_value = None, None
        for slope in candidates:
            if below:
                value = lower_intercept(self, slope, lower, upper, [convex], self._lower_hints(slope)) + slope * midpoint
                better = None if best_value is None else value > best_value
            else:
                value = upper_intercept(self, slope, lower, upper, concave, self._upper_hints(slope)) + slope * midpoint
                better = None if best_value is None else value < best_value
            if better is None:
                best_slope, best_value = slope, value
            else:
                best_slope = torch.where(better, slope, best_slope)
                best_value = torch.where(better, value, best_value)
        return best_slope

    def _default_lower_slope(self, lower: Tensor, upper: Tensor) -> Tensor:
        midpoint = 0.5 * (lower + upper)
        (left_knee, right_knee), _ = self._pieces(lower, upper)
        # Tangent points in the convex piece of the tangents through each endpoint. r(t) = gelu(t) +
        # gelu'(t)(anchor - t) - gelu(anchor) has r' = gelu''(t)(anchor - t): non-decreasing for the
        # anchor u >= t, non-increasing for the anchor l <= t.
        from_upper = tangent_point_through(self, upper, left_knee, right_knee, increasing=True)
        from_lower = tangent_point_through(self, lower, left_knee, right_knee, increasing=False)
        # The convex envelope is the line l -> from_lower, then gelu on [from_lower, from_upper], then
        # the line from_upper -> u; or just the chord when the two tangents cross (from_lower > from_upper).
        at_midpoint = torch.minimum(torch.maximum(midpoint, from_lower), from_upper)
        candidates = [chord_slope(self, lower, upper), self.derivative(at_midpoint)]
        return self._best_slope(candidates, lower, upper, midpoint, below=True)

    def _default_upper_slope(self, lower: Tensor, upper: Tensor) -> Tensor:
        midpoint = 0.5 * (lower + upper)
        _, [(left_lo, left_hi), (right_lo, right_hi)] = self._pieces(lower, upper)
        # In a concave piece r' = gelu''(t)(anchor - t) is <= 0 for anchor u >= t, >= 0 for anchor l <= t.
        from_upper = tangent_point_through(self, upper, left_lo, left_hi, increasing=False)
        from_lower = tangent_point_through(self, lower, right_lo, right_hi, increasing=True)
        # The concave envelope is gelu on [l, from_upper] (if l is left of -sqrt 2), a bridging line, and
        # gelu on [from_lower, u] (if u is right of sqrt 2). No line is tangent to both concave pieces
        # (gelu' < 0 on the left one, > 1 on the right one), so the bridge is the chord or a tangent from
        # an endpoint; the envelope's slope at m is one of these three.
        candidates = [chord_slope(self, lower, upper),
                      self.derivative(torch.minimum(midpoint, from_upper)),
                      self.derivative(torch.maximum(midpoint, from_lower))]
        return self._best_slope(candidates, lower, upper, midpoint, below=False)

    def init_alpha(self, lower: Tensor, upper: Tensor) -> Tensor:
        """``(2, *shape)``: positions of the default (envelope-at-midpoint) slopes in the slope range."""
        lower, upper = torch.broadcast_tensors(lower, upper)
        with torch.no_grad():
            low, high = self._slope_range(lower, upper)
            return torch.stack([self._alpha_of_slope(self._default_lower_slope(lower, upper), low, high),
                                self._alpha_of_slope(self._default_upper_slope(lower, upper), low, high)])

    # -- the relaxation --------------------------------------------------------------------------
    def relax(self, lower: Tensor, upper: Tensor, alpha: Tensor | None = None) -> LinearRelaxation:
        lower, upper = torch.broadcast_tensors(lower, upper)
        if alpha is None:
            alpha = self.init_alpha(lower, upper)
        alpha = checked_alpha(self.name, self.n_alpha, alpha, lower.dtype)
        low, high = self._slope_range(lower, upper)
        convex, concave = self._pieces(lower, upper)
        lower_slope = low + alpha[0] * (high - low)
        upper_slope = low + alpha[1] * (high - low)
        # Chord lock: inside one convex (concave) piece the chord is sound above (below), and every
        # sound line on that side passes at or above (below) gelu(l) and gelu(u), so lies beyond the
        # chord on all of [l, u]: it is the best line there for every sign of its coefficient. A free
        # alpha there sits at a kink of the bound and Adam's steps only loosen it (generated 6x200 GELU
        # MLP: alpha-CROWN 0.318 -> 0.279 mean output width with the lock, no gain without).
        chord = chord_slope(self, lower, upper)
        upper_slope = torch.where((lower >= -INFLECTION) & (upper <= INFLECTION), chord, upper_slope)
        lower_slope = torch.where((upper <= -INFLECTION) | (lower >= INFLECTION), chord, lower_slope)
        lower_icpt = lower_intercept(self, lower_slope, lower, upper, [convex], self._lower_hints(lower_slope))
        upper_icpt = upper_intercept(self, upper_slope, lower, upper, concave, self._upper_hints(upper_slope))
        return LinearRelaxation(*torch.broadcast_tensors(lower_slope, lower_icpt, upper_slope, upper_icpt))

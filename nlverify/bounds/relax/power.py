"""Sound linear relaxations of ``x**n`` (integer ``n >= 2``), ``sqrt``, ``1/x`` and ``exp``.

Construction ("choose a slope, then the exact intercept")
---------------------------------------------------------
For any slope ``s`` the tightest sound lines with that slope on ``[l, u]`` are

    s*x + min_{[l,u]} (f(x) - s*x)  <=  f(x)  <=  s*x + max_{[l,u]} (f(x) - s*x),

and for every function here the stationary points of ``g_s(x) = f(x) - s*x`` are known in closed form:

    x**n :  x = +-(|s|/n)**(1/(n-1))        sqrt :  x = 1/(4 s**2)
    1/x  :  x = +-1/sqrt(-s)  (s < 0)       exp  :  x = log(s)  (s > 0)

so the extremum of ``g_s`` over ``[l,u]`` is the extremum over the endpoints and these points
(clamped into ``[l,u]``; a clamped point is a point of the interval, so it never over-states the
minimum nor under-states the maximum beyond a rounding error). Every line returned is therefore
sound *whatever the slope*; the slope only decides tightness, and is chosen as follows.

* convex stretch (``x**n`` with ``n`` even, or odd on ``l >= 0``; ``1/x`` on ``l > 0``; ``exp``):
  upper = chord (the only optimal upper line), lower = tangent at ``t = l + alpha*(u-l)``.
* concave stretch (odd ``n`` on ``u <= 0``; ``sqrt``; ``1/x`` on ``u < 0``): the mirror image, lower =
  chord, upper = tangent at ``t = l + alpha*(u-l)``.
* odd ``n`` across 0 (``l < 0 < u``, an S-shaped function, concave then convex): the upper envelope
  follows ``f`` on ``[l, d]`` and then the tangent from ``d`` that passes through ``(u, u**n)``, where
  ``d = c_n * u`` and ``c_n`` in ``(-1, 0)`` solves ``n c**(n-1) (1 - c) = 1 - c**n`` (``c_3 = -1/2``).
  Upper = tangent at ``t = l + alpha*(d - l)`` if ``d >= l``, else the chord. The lower line mirrors
  it (``d = c_n * l``, tangent points in ``[d, u]``).

Alpha and defaults
    ``Pow``: ``n_alpha = 2`` (row 0 lower, row 1 upper); on a convex (concave) stretch the upper (lower)
    row is unused because the chord is optimal. ``Reciprocal`` and ``Exp``: ``n_alpha = 1`` (the
    tangent side). Default: the line that touches the function's envelope at the midpoint ``m``,
    which minimises the area between line and function -- the midpoint tangent (``alpha = 0.5``) on
    convex/concave stretches; across 0 (odd ``n``) the tangent at ``m`` if ``m`` lies on the curved
    part of the envelope, else the bridging tangent (``alpha = 1`` upper / ``0`` lower).
    ``relax(alpha=None)`` is ``relax(init_alpha(...))``. The intercept is differentiated by the
    envelope theorem (stationary points are located with a detached slope).

Domains, overflow, unbounded cases
    * ``Pow(0.5)`` (sqrt) is relaxed on ``[max(l,0), max(u,0)]``: negative inputs are outside its
      domain (the function returns NaN there), so no real value of the network comes from them.
    * ``Reciprocal`` on an interval with ``l <= 0 <= u`` is unbounded: ``relax`` returns slope 0 and
      intercepts ``-inf`` (lower) / ``+inf`` (upper), which the engine treats as "no bound", and
      ``interval`` returns ``(-inf, inf)``.
    * Overflow (``exp(u)``, ``u**n``, ``1/l``, or ``slope*x`` beyond the dtype's range): a non-finite
      slope is replaced by 0, and if ``f(c)`` or ``slope*c`` overflows at any candidate point the
      true offset there is unknown, so that side gets no bound (``-inf`` / ``+inf``) -- clipping the
      overflow to a finite value or ignoring the candidate would be unsound. ``Exp``'s tangent point
      is capped at ``log(finfo.max) - 1`` (a tangent of ``exp`` at any point is a valid lower line).
    * Unsupported exponents raise ``ValueError``.

Rounding
    Each candidate offset ``f(c) - s*c`` moves outward by ``POWER_MARGIN_ULPS * eps(dtype) *
    (|f(c)| + |s*c|)`` before the extremum is taken (so the margin of the true extremum counts),
    plus ``finfo(dtype).tiny`` (so an underflowed ``exp`` or power is still bounded above by a
    positive line). That covers evaluating ``f(c) - s*c`` (``pow`` by repeated
    multiplication costs up to ``n`` roundings; ``n`` beyond ``POWER_MARGIN_ULPS / 2`` widens the margin
    proportionally). Locating a stationary point to an ulp changes ``g_s`` only to second order.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor

from .base import LinearRelaxation

#: Outward shift of every candidate offset ``f(c) - s*c``, in units of ``eps(dtype) * (|f(c)| + |s*c|)``.
POWER_MARGIN_ULPS = 16.0

#: Default position of the tangent point on convex / concave stretches (the midpoint).
DEFAULT_TANGENT_FRACTION = 0.5

Stationary = Callable[[Tensor], list[Tensor]]


# --------------------------------------------------------------------------------------------------
# shared machinery: exact intercept for a given slope


def _clamp_into(x: Tensor, lower: Tensor, upper: Tensor) -> Tensor:
    return torch.maximum(torch.minimum(x, upper), lower)


def _finite_or_zero(slope: Tensor) -> Tensor:
    return torch.where(torch.isfinite(slope), slope, torch.zeros_like(slope))


def _exact_intercept(f: Callable[[Tensor], Tensor], stationary: Stationary, lower: Tensor, upper: Tensor,
                     slope: Tensor, want_upper: bool, margin_ulps: float) -> Tensor:
    """``max`` (upper) or ``min`` (lower) of ``f(x) - slope*x`` over ``[l,u]``, pushed outward.

    Candidates: both endpoints and the clamped stationary points of ``f(x) - slope*x``. Each candidate
    is pushed outward by its own rounding margin before taking the extremum, so the margin that
    counts is the one of the candidate that is the true extremum, whichever it is.
    Overflow: if any candidate's offset or margin is not finite (``f(c)`` or ``slope*c`` beyond the
    dtype's range) its true value is unknown, so there is no bound (``-inf`` lower, ``+inf`` upper).
    Clipping such values to finite ones, or ignoring the candidate, is unsound.
    """
    dtype = lower.dtype
    candidates = [lower, upper] + [_clamp_into(p, lower, upper) for p in stationary(slope.detach())]
    points = torch.stack(torch.broadcast_tensors(*candidates, slope)[:-1])
    values_f = f(points)
    offsets = values_f - slope * points
    margins = margin_ulps * torch.finfo(dtype).eps * (values_f.abs() + (slope * points).abs()) \
        + torch.finfo(dtype).tiny
    pushed = offsets + margins if want_upper else offsets - margins
    all_finite = torch.isfinite(pushed).all(dim=0)
    best = pushed.max(dim=0).values if want_upper else pushed.min(dim=0).values
    no_bound = torch.full_like(best, math.inf if want_upper else -math.inf)
    return torch.where(all_finite, best, no_bound)


def _image(f: Callable[[Tensor], Tensor], stationary: Stationary, lower: Tensor, upper: Tensor,
           margin_ulps: float) -> tuple[Tensor, Tensor]:
    """Sound image of ``[l,u]``: the exact extrema of ``f`` (slope 0), pushed outward."""
    zero = torch.zeros_like(lower)
    return (_exact_intercept(f, stationary, lower, upper, zero, False, margin_ulps),
            _exact_intercept(f, stationary, lower, upper, zero, True, margin_ulps))


def _lines(f: Callable[[Tensor], Tensor], stationary: Stationary, lower: Tensor, upper: Tensor,
           lower_slope: Tensor, upper_slope: Tensor, margin_ulps: float) -> LinearRelaxation:
    lower_slope, upper_slope = _finite_or_zero(lower_slope), _finite_or_zero(upper_slope)
    parts = torch.broadcast_tensors(
        lower_slope, _exact_intercept(f, stationary, lower, upper, lower_slope, False, margin_ulps),
        upper_slope, _exact_intercept(f, stationary, lower, upper, upper_slope, True, margin_ulps))
    return LinearRelaxation(*parts)


def _safe_fraction(value: Tensor, start: Tensor, stop: Tensor) -> Tensor:
    """``(value - start) / (stop - start)`` clamped to [0,1]; 0.5 for an empty range."""
    width = stop - start
    ok = width > 0
    return torch.where(ok, (value - start) / torch.where(ok, width, torch.ones_like(width)),
                       torch.full_like(width, 0.5)).clamp(0.0, 1.0)


def _prepare_alpha(alpha: Tensor, dtype: torch.dtype) -> Tensor:
    return alpha.to(dtype).clamp(0.0, 1.0)


# --------------------------------------------------------------------------------------------------
# x**n and sqrt


def _odd_bridge_ratio(n: int) -> float:
    """``c_n`` in (-1, 0) with ``n c**(n-1) (1-c) = 1 - c**n``: the tangent to ``x**n`` at ``c*u``
    passes through ``(u, u**n)``. Scalar bisection, once per exponent."""
    def excess(c: float) -> float:
        return n * c ** (n - 1) * (1.0 - c) - (1.0 - c ** n)

    lo, hi = -1.0, 0.0  # excess(-1) = 2n - 2 > 0, excess(0) = -1 < 0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if excess(mid) > 0:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


class Pow:
    """``x ** exponent`` for integer ``exponent >= 2`` or ``exponent == 0.5``; see the module docstring."""

    name = "pow"
    n_alpha = 2

    def __init__(self, exponent: float) -> None:
        value = float(exponent)
        if value == 0.5:
            self.exponent: float | int = 0.5
        elif value.is_integer() and value >= 2:
            self.exponent = int(value)
        else:
            raise ValueError(f"Pow: unsupported exponent {exponent!r}; supported are integers >= 2 and 0.5")
        self._is_sqrt = self.exponent == 0.5
        self._bridge = _odd_bridge_ratio(self.exponent) if not self._is_sqrt and self.exponent % 2 else 0.0
        # pow by repeated multiplication: up to n roundings in f(c)
        self._margin_ulps = POWER_MARGIN_ULPS if self._is_sqrt else max(POWER_MARGIN_ULPS, 2.0 * self.exponent)

    # -- the function, its derivative, the stationary points of f(x) - s*x -------------------------

    def function(self, x: Tensor) -> Tensor:
        return torch.sqrt(x) if self._is_sqrt else torch.pow(x, self.exponent)

    def _derivative(self, x: Tensor) -> Tensor:
        if self._is_sqrt:
            return 0.5 / torch.sqrt(x)
        return self.exponent * torch.pow(x, self.exponent - 1)

    def _tangent_slope(self, point: Tensor) -> Tensor:
        """``f'(point)``; for sqrt the vertical tangent at 0 is replaced by slope 0 (the horizontal
        line through ``sqrt(u)``: sound, and exact on the degenerate box ``[0, 0]``)."""
        if not self._is_sqrt:
            return self._derivative(point)
        positive = point > 0
        return torch.where(positive, self._derivative(torch.where(positive, point, torch.ones_like(point))),
                           torch.zeros_like(point))

    def _stationary(self, slope: Tensor) -> list[Tensor]:
        if self._is_sqrt:
            return [0.25 / (slope * slope)]  # s <= 0 gives +inf (or a point clamped to u): harmless
        n = self.exponent
        root = torch.pow(slope.abs() / n, 1.0 / (n - 1))
        return [root, -root]

    def _chord_slope(self, lower: Tensor, upper: Tensor) -> Tensor:
        if self._is_sqrt:
            denominator = torch.sqrt(lower) + torch.sqrt(upper)
            ok = denominator > 0
            return torch.where(ok, 1.0 / torch.where(ok, denominator, torch.ones_like(denominator)),
                               torch.zeros_like(denominator))
        # (u**n - l**n) / (u - l) = sum_k u**k l**(n-1-k): no division, exact limit n*l**(n-1) at u == l
        n = self.exponent
        return sum(torch.pow(upper, k) * torch.pow(lower, n - 1 - k) for k in range(n))

    def _domain(self, lower: Tensor, upper: Tensor) -> tuple[Tensor, Tensor]:
        if self._is_sqrt:
            return lower.clamp(min=0.0), upper.clamp(min=0.0)
        return lower, upper

    # -- tangent ranges per case ------------------------------------------------------------------

    def _tangent_ranges(self, lower: Tensor, upper: Tensor) -> dict[str, Tensor]:
        """Per neuron: which side is the chord, and the range of tangent points of the other side(s)."""
        if self._is_sqrt:
            concave = torch.ones_like(lower, dtype=torch.bool)
            convex = ~concave
        elif self.exponent % 2 == 0:
            convex = torch.ones_like(lower, dtype=torch.bool)
            concave = ~convex
        else:
            convex, concave = lower >= 0, upper <= 0
        mixed = ~convex & ~concave
        upper_touch = self._bridge * upper      # upper tangent points in [l, upper_touch] (mixed)
        lower_touch = self._bridge * lower      # lower tangent points in [lower_touch, u] (mixed)
        return {
            "convex": convex, "concave": concave, "mixed": mixed,
            "upper_bridge_exists": mixed & (upper_touch >= lower),
            "lower_bridge_exists": mixed & (lower_touch <= upper),
            "upper_touch": torch.where(mixed, upper_touch.clamp(min=lower), upper),
            "lower_touch": torch.where(mixed, lower_touch.clamp(max=upper), lower),
        }

    def _slopes(self, lower: Tensor, upper: Tensor, alpha: Tensor) -> tuple[Tensor, Tensor]:
        r = self._tangent_ranges(lower, upper)
        chord = self._chord_slope(lower, upper)
        # lower line: tangent points in [lower_touch, u] (= [l, u] unless mixed)
        lower_point = r["lower_touch"] + alpha[0] * (upper - r["lower_touch"])
        lower_tangent = self._tangent_slope(lower_point)
        lower_is_tangent = r["convex"] | r["lower_bridge_exists"]
        lower_slope = torch.where(lower_is_tangent, lower_tangent, chord)
        # upper line: tangent points in [l, upper_touch] (= [l, u] unless mixed)
        upper_point = lower + alpha[1] * (r["upper_touch"] - lower)
        upper_tangent = self._tangent_slope(upper_point)
        upper_is_tangent = r["concave"] | r["upper_bridge_exists"]
        upper_slope = torch.where(upper_is_tangent, upper_tangent, chord)
        return lower_slope, upper_slope

    # -- the contract -----------------------------------------------------------------------------

    def interval(self, lower: Tensor, upper: Tensor) -> tuple[Tensor, Tensor]:
        lower, upper = self._domain(lower, upper)
        low, high = _image(self.function, self._stationary, lower, upper, self._margin_ulps)
        if self._is_sqrt or self.exponent % 2 == 0:
            low = low.clamp(min=0.0)
        return low, high

    def init_alpha(self, lower: Tensor, upper: Tensor) -> Tensor:
        with torch.no_grad():
            lower, upper = self._domain(lower.detach(), upper.detach())
            r = self._tangent_ranges(lower, upper)
            mid = 0.5 * (lower + upper)
            half = torch.full_like(lower, DEFAULT_TANGENT_FRACTION)
            # mixed: tangent at m if m is on the curved part of the envelope, else the bridge
            lower_alpha = torch.where(r["mixed"], _safe_fraction(mid, r["lower_touch"], upper), half)
            upper_alpha = torch.where(r["mixed"], _safe_fraction(mid, lower, r["upper_touch"]), half)
            return torch.stack([lower_alpha, upper_alpha])

    def relax(self, lower: Tensor, upper: Tensor, alpha: Tensor | None = None) -> LinearRelaxation:
        if alpha is None:
            alpha = self.init_alpha(lower, upper)
        lower, upper = self._domain(lower, upper)
        lower_slope, upper_slope = self._slopes(lower, upper, _prepare_alpha(alpha, lower.dtype))
        return _lines(self.function, self._stationary, lower, upper, lower_slope, upper_slope,
                      self._margin_ulps)


# --------------------------------------------------------------------------------------------------
# 1/x


class Reciprocal:
    """``1/x``: convex on ``x > 0``, concave on ``x < 0``, unbounded across 0 (see module docstring)."""

    name = "reciprocal"
    n_alpha = 1

    def function(self, x: Tensor) -> Tensor:
        return torch.reciprocal(x)

    @staticmethod
    def _stationary(slope: Tensor) -> list[Tensor]:
        root = torch.rsqrt((-slope).clamp(min=0.0))  # s >= 0: +inf, clamped to an endpoint
        return [root, -root]

    @staticmethod
    def _crosses_zero(lower: Tensor, upper: Tensor) -> Tensor:
        return (lower <= 0) & (upper >= 0)

    def interval(self, lower: Tensor, upper: Tensor) -> tuple[Tensor, Tensor]:
        crosses = self._crosses_zero(lower, upper)
        one = torch.ones_like(lower)
        low, high = _image(self.function, self._stationary, torch.where(crosses, one, lower),
                           torch.where(crosses, one, upper), POWER_MARGIN_ULPS)
        return (torch.where(crosses, torch.full_like(low, -math.inf), low),
                torch.where(crosses, torch.full_like(high, math.inf), high))

    def init_alpha(self, lower: Tensor, upper: Tensor) -> Tensor:
        return torch.full((1, *lower.shape), DEFAULT_TANGENT_FRACTION, dtype=lower.dtype, device=lower.device)

    def relax(self, lower: Tensor, upper: Tensor, alpha: Tensor | None = None) -> LinearRelaxation:
        if alpha is None:
            alpha = self.init_alpha(lower, upper)
        alpha = _prepare_alpha(alpha, lower.dtype)
        crosses = self._crosses_zero(lower, upper)
        # placeholders keep the unused branch finite (and its gradient free of NaN)
        one = torch.ones_like(lower)
        safe_lower, safe_upper = torch.where(crosses, one, lower), torch.where(crosses, one, upper)
        tangent_point = safe_lower + alpha[0] * (safe_upper - safe_lower)
        tangent = -torch.reciprocal(tangent_point * tangent_point)
        chord = -torch.reciprocal(safe_lower * safe_upper)
        positive = safe_lower > 0  # convex: tangent below, chord above; negative: the mirror image
        lines = _lines(self.function, self._stationary, safe_lower, safe_upper,
                       torch.where(positive, tangent, chord), torch.where(positive, chord, tangent),
                       POWER_MARGIN_ULPS)
        zero, inf = torch.zeros_like(lines.lower_slope), torch.full_like(lines.lower_slope, math.inf)
        return LinearRelaxation(torch.where(crosses, zero, lines.lower_slope),
                                torch.where(crosses, -inf, lines.lower_intercept),
                                torch.where(crosses, zero, lines.upper_slope),
                                torch.where(crosses, inf, lines.upper_intercept))


# --------------------------------------------------------------------------------------------------
# exp


class Exp:
    """``exp(x)``: convex and increasing; tangent below, chord above (see module docstring)."""

    name = "exp"
    n_alpha = 1

    def function(self, x: Tensor) -> Tensor:
        return torch.exp(x)

    @staticmethod
    def _stationary(slope: Tensor) -> list[Tensor]:
        return [torch.log(slope.clamp(min=torch.finfo(slope.dtype).tiny))]

    def interval(self, lower: Tensor, upper: Tensor) -> tuple[Tensor, Tensor]:
        low, high = _image(self.function, self._stationary, lower, upper, POWER_MARGIN_ULPS)
        return low.clamp(min=0.0), high

    def init_alpha(self, lower: Tensor, upper: Tensor) -> Tensor:
        return torch.full((1, *lower.shape), DEFAULT_TANGENT_FRACTION, dtype=lower.dtype, device=lower.device)

    def relax(self, lower: Tensor, upper: Tensor, alpha: Tensor | None = None) -> LinearRelaxation:
        if alpha is None:
            alpha = self.init_alpha(lower, upper)
        alpha = _prepare_alpha(alpha, lower.dtype)
        largest_tangent_point = math.log(torch.finfo(lower.dtype).max) - 1.0
        tangent_point = (lower + alpha[0] * (upper - lower)).clamp(max=largest_tangent_point)
        width = upper - lower
        ok = width > 0
        # (e^u - e^l)/(u - l) = e^l * expm1(w)/w, without cancellation; limit e^l at w == 0
        growth = torch.where(ok, torch.expm1(width) / torch.where(ok, width, torch.ones_like(width)),
                             torch.ones_like(width))
        chord = torch.exp(lower) * growth
        return _lines(self.function, self._stationary, lower, upper, torch.exp(tangent_point), chord,
                      POWER_MARGIN_ULPS)

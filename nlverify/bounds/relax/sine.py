"""Sound linear relaxations of ``sin`` and ``cos`` on any interval, of any width.

Construction ("choose a slope, then the exact intercept")
---------------------------------------------------------
For any slope ``s`` the tightest sound lines with that slope are

    s*x + min_{[l,u]} g_s  <=  sin(x)  <=  s*x + max_{[l,u]} g_s,      g_s(x) = sin(x) - s*x,

and the extrema of ``g_s`` over ``[l, u]`` are known in closed form, for *every* width:
``g_s'(x) = cos(x) - s`` vanishes at ``x = +-arccos(s) + 2*k*pi``. The local maxima of ``g_s`` are
``x_k = arccos(s) + 2*k*pi`` (there ``g_s'' = -sin(x_k) <= 0``) and their values
``g_s(x_k) = g_s(x_0) - 2*k*pi*s`` are monotone in ``k``; so the largest interior local maximum is the
*first* one ``>= l`` (if ``s >= 0``) or the *last* one ``<= u`` (if ``s <= 0``). Hence

    max_{[l,u]} g_s = max(g_s(l), g_s(u), g_s(first local max in [l,u]), g_s(last local max in [l,u]))

and symmetrically for the minimum with the local minima ``-arccos(s) + 2*k*pi``. Four candidate points
per bound, whatever the width (several periods included): the bound is the *exact* extremum, so the
line never crosses the function, for every slope. Candidates are clamped into ``[l, u]``; a clamped
point is still a point of the interval, so it can only under-estimate the maximum by the (second
order, see below) error in locating a stationary point. The slope only decides tightness.

``cos`` is handled by the same code with a phase: ``cos(x) = sin(x + pi/2)``; we never form
``x + pi/2`` for the bounds themselves (its rounding would shift the interval), we evaluate
``torch.cos`` at the candidates and only use the phase to *locate* candidates.

Slopes and alpha
----------------
Every supporting line of the concave upper envelope (convex lower envelope) of ``f`` on ``[l,u]`` has a
slope in ``[min f', max f']`` over ``[l,u]`` (mean value theorem), so each bound's slope is
``s = s_min + alpha * (s_max - s_min)`` with ``[s_min, s_max]`` the exact range of ``f'`` on
``[l,u]``. ``alpha`` has ``n_alpha = 2`` rows: ``alpha[0]`` the lower line, ``alpha[1]`` the upper.
Every alpha is sound (the intercept is exact for every slope) and the map is differentiable. The
intercept's dependence on ``s`` is differentiated by the envelope theorem: the candidate points are
located with a detached slope, so ``d(max g_s)/ds = -x*`` without differentiating ``arccos`` (whose
derivative is infinite at +-1). On a stretch without an inflection point the chord side is locked to
the chord (``_chord_locked``): there it is sound and lies inside every other sound line on that side.

Default (``alpha=None``): for each bound the line *tangent to the envelope at the midpoint* ``m``, which
minimises the area between line and function (``d/ds`` of the line's value at ``m`` is ``m - x*(s)``; it
vanishes when the line touches the envelope at ``m``). On a convex or concave stretch it is the midpoint
tangent, on the chord side it is the chord, across an inflection it is the tangent through an endpoint,
and for wide intervals it tends to the horizontal lines ``+-1``. We find it in closed form where
``[l, u]`` holds no inflection point (the tangent at ``m`` and the chord, see ``_stretch_slopes``), and
elsewhere by bisection on the sign of ``m - x*(s)`` (vectorised steps:
``DEFAULT_SLOPE_BISECTION_STEPS``, or one more than half the bits of the dtype's epsilon when fewer: 13
in float32, 27 in float64; each step is a full pass over the neurons). Half the bits suffice on a convex
or concave stretch: a line whose slope is off by ``ds`` still touches the envelope (its intercept is
exact), only at a point ``ds / f''`` away, which loosens it at ``m`` by ``O(ds**2 / f'')``, and after
``k`` steps that is ``~2**(2 - 2k)`` of the gap ``f'' (u - l)**2 / 8``. Across an inflection the
touching point can jump, and the loss is first order: measured on 200,000 random intervals (widths 1e-4
to 8, centres in [-10, 10]), 13 instead of 26 steps changed the mean gap by 1e-4 relative on average and
by at most 1.7 % for widths 0.1-1 (0.08 % for widths 1-8; up to 7 % below width 0.1, where the gap is
~1e-5 and mostly rounding margin). It halves the cost of the default relaxation: lsnc state_0 input
split bounded 126,695 domains in 20 s instead of 102,119. ``init_alpha`` returns it and
``relax(alpha=None)`` uses ``init_alpha``.

Rounding
--------
Each intercept is pushed outward by ``SINE_MARGIN_ULPS * eps(dtype) * (1 + |s|*max(|l|,|u|) + |b|)``:
the error of evaluating ``sin(c) - s*c`` (about 1 ulp of ``sin`` plus half an ulp of each of ``s*c``
and the difference) is a few ulps of that scale; the error in locating a stationary point ``c``
(an ulp of ``c``) changes ``g_s(c)`` only to second order, ``|g''| * dc**2 / 2 <= dc**2``, far below it.
Half precision inputs are computed in float32 and cast back with the margin of the input dtype.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from .base import LinearRelaxation

TWO_PI = 2.0 * math.pi

#: Outward shift of every intercept, in units of ``eps(dtype) * (1 + |slope|*max|x| + |intercept|)``.
SINE_MARGIN_ULPS = 8.0

#: Bisection steps to find the default (area-minimising) slope; the slope range is at most 2 wide,
#: so 40 steps locate it to about 2e-12 (the result is sound whatever the accuracy).
DEFAULT_SLOPE_BISECTION_STEPS = 40


def _work_dtype(dtype: torch.dtype) -> torch.dtype:
    """Compute in at least float32 (half-precision trig is too coarse to locate stationary points)."""
    return dtype if dtype in (torch.float32, torch.float64) else torch.float32


def _eps(dtype: torch.dtype) -> float:
    return torch.finfo(dtype).eps


def _shifted_sin(x: Tensor, quarter_turns: int) -> Tensor:
    """``sin(x + quarter_turns * pi/2)`` evaluated without rounding the shifted argument."""
    q = quarter_turns % 4
    if q == 0:
        return torch.sin(x)
    if q == 1:
        return torch.cos(x)
    if q == 2:
        return -torch.sin(x)
    return -torch.cos(x)


def _clamp_into(x: Tensor, lower: Tensor, upper: Tensor) -> Tensor:
    return torch.maximum(torch.minimum(x, upper), lower)


def _candidates(lower: Tensor, upper: Tensor, slope: Tensor, quarter_turns: int,
                want_max: bool) -> list[Tensor]:
    """Points of ``[l,u]`` among which ``g_s(x) = sin(x + q*pi/2) - s*x`` attains its max (min).

    Local maxima of ``g_s`` sit at ``x + q*pi/2 = arccos(s) + 2k*pi``, local minima at
    ``x + q*pi/2 = -arccos(s) + 2k*pi``; only the first and last of them inside ``[l,u]`` can be the
    extremum (their values are monotone in ``k``). The slope is detached: the points are where the
    extremum is *evaluated*, their location is not differentiated (envelope theorem).
    """
    s = slope.detach().clamp(-1.0, 1.0)
    turn = torch.acos(s)
    base = (turn if want_max else -turn) - quarter_turns * (math.pi / 2.0)
    first = base + TWO_PI * torch.ceil((lower - base) / TWO_PI)
    last = base + TWO_PI * torch.floor((upper - base) / TWO_PI)
    return [lower, upper, _clamp_into(first, lower, upper), _clamp_into(last, lower, upper)]


def _extreme_offset(lower: Tensor, upper: Tensor, slope: Tensor, quarter_turns: int,
                    want_max: bool) -> tuple[Tensor, Tensor]:
    """Exact ``max`` (or ``min``) of ``sin(x + q*pi/2) - s*x`` over ``[l,u]`` and a point attaining it."""
    points = torch.stack(torch.broadcast_tensors(*_candidates(lower, upper, slope, quarter_turns, want_max)))
    values = _shifted_sin(points, quarter_turns) - slope * points
    best, index = values.max(dim=0) if want_max else values.min(dim=0)
    return best, points.gather(0, index.unsqueeze(0)).squeeze(0)


def _rounding_margin(lower: Tensor, upper: Tensor, slope: Tensor, intercept: Tensor,
                     dtype: torch.dtype) -> Tensor:
    magnitude = torch.maximum(lower.abs(), upper.abs())
    return SINE_MARGIN_ULPS * _eps(dtype) * (1.0 + slope.abs() * magnitude + intercept.abs())


def _sound_intercept(lower: Tensor, upper: Tensor, slope: Tensor, quarter_turns: int,
                     want_upper: bool, dtype: torch.dtype) -> Tensor:
    """Intercept making ``slope*x + b`` an upper (lower) bound of the shifted sine on ``[l,u]``."""
    offset, _ = _extreme_offset(lower, upper, slope, quarter_turns, want_max=want_upper)
    margin = _rounding_margin(lower, upper, slope, offset, dtype)
    return offset + margin if want_upper else offset - margin


def _image(lower: Tensor, upper: Tensor, quarter_turns: int, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """Sound image of ``[l,u]`` under ``sin(x + q*pi/2)``: exact extrema (slope 0) plus margin, in [-1,1]."""
    zero = torch.zeros_like(lower)
    top, _ = _extreme_offset(lower, upper, zero, quarter_turns, want_max=True)
    bottom, _ = _extreme_offset(lower, upper, zero, quarter_turns, want_max=False)
    margin = SINE_MARGIN_ULPS * _eps(dtype)
    return (bottom - margin).clamp(min=-1.0), (top + margin).clamp(max=1.0)


def _slope_range(lower: Tensor, upper: Tensor, quarter_turns: int, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """Range of the derivative ``cos(x + q*pi/2) = sin(x + (q+1)*pi/2)`` on ``[l,u]``."""
    return _image(lower, upper, quarter_turns + 1, dtype)


def _midpoint_envelope_slope(lower: Tensor, upper: Tensor, slope_min: Tensor, slope_max: Tensor,
                             quarter_turns: int, want_upper: bool, steps: int = DEFAULT_SLOPE_BISECTION_STEPS) -> Tensor:
    """Slope of the line tangent to the upper (lower) envelope at the midpoint, by bisection.

    For the upper bound ``h(s) = s*m + max g_s`` is convex in ``s`` with subgradient ``m - x*(s)``;
    for the lower bound ``s*m + min g_s`` is concave with supergradient ``m - x*(s)``. Bisection on
    the sign of ``m - x*(s)`` converges to the optimum of either.
    """
    mid_point = 0.5 * (lower + upper)
    lo, hi = slope_min.clone(), slope_max.clone()
    for _ in range(steps):
        trial = 0.5 * (lo + hi)
        _, touch = _extreme_offset(lower, upper, trial, quarter_turns, want_max=want_upper)
        touches_left_of_mid = touch < mid_point
        # upper: touch left of m -> h increasing -> optimum at smaller slopes; lower: the opposite.
        go_down = touches_left_of_mid if want_upper else ~touches_left_of_mid
        hi = torch.where(go_down, trial, hi)
        lo = torch.where(go_down, lo, trial)
    return 0.5 * (lo + hi)


def _stretch(lower: Tensor, upper: Tensor, quarter_turns: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(tangent slope at m, chord slope, concave, on_stretch)`` of ``f(x) = sin(x + q*pi/2)`` on
    ``[l, u]``; the first three mean something only where ``on_stretch`` (no inflection point ``x + q*pi/2
    = k*pi`` inside). The chord's slope is ``(f(u) - f(l)) / (u - l) = f'(m) * sin(w/2) / (w/2)`` (``w = u
    - l``; sum-to-product), with no cancellation for tiny widths."""
    shift = quarter_turns * (math.pi / 2.0)
    on_stretch = torch.floor((lower + shift) / math.pi) == torch.floor((upper + shift) / math.pi)
    mid = 0.5 * (lower + upper)
    tangent = _shifted_sin(mid, quarter_turns + 1)
    chord = tangent * torch.sinc((upper - lower) / TWO_PI)  # torch.sinc(t) = sin(pi t) / (pi t)
    concave = _shifted_sin(mid, quarter_turns) >= 0
    return tangent, chord, concave, on_stretch


def _stretch_slopes(lower: Tensor, upper: Tensor, quarter_turns: int) -> tuple[tuple[Tensor, Tensor], Tensor]:
    """The default slopes in closed form where ``[l, u]`` holds no inflection point:
    ``((lower slope, upper slope), on_stretch)``.

    There ``f`` is concave (``f >= 0``) or convex, and the midpoint tangent of the envelope is the
    tangent of ``f`` at ``m`` on the curved side and the chord on the other (:func:`_stretch`).
    Elsewhere the values are meaningless (``on_stretch`` False). Any slope is sound (the intercept is
    exact), so a misjudged stretch next to an inflection point only costs tightness."""
    tangent, chord, concave, on_stretch = _stretch(lower, upper, quarter_turns)
    return (torch.where(concave, chord, tangent), torch.where(concave, tangent, chord)), on_stretch


def _chord_locked(lower: Tensor, upper: Tensor, lower_slope: Tensor, upper_slope: Tensor,
                  quarter_turns: int) -> tuple[Tensor, Tensor]:
    """On a stretch without an inflection point, the chord side takes the chord whatever alpha says.

    There the chord is a sound line on that side (below a concave ``f``, above a convex one), and every
    sound line on that side passes at or beyond ``f(l)`` and ``f(u)``, so lies at or beyond the chord on
    all of ``[l, u]``: the chord is the best line for every sign of the coefficient it meets. Left
    free, that alpha sits at a kink of the bound (its intercept switches endpoints at the chord slope)
    and Adam's steps there only loosen it."""
    with torch.no_grad():
        _, chord, concave, on_stretch = _stretch(lower, upper, quarter_turns)
    lower_slope = torch.where(on_stretch & concave, chord, lower_slope)
    upper_slope = torch.where(on_stretch & ~concave, chord, upper_slope)
    return lower_slope, upper_slope


def _safe_fraction(value: Tensor, start: Tensor, stop: Tensor) -> Tensor:
    """``(value - start) / (stop - start)`` clamped to [0,1]; 0.5 for an empty range."""
    width = stop - start
    safe_width = torch.where(width > 0, width, torch.ones_like(width))
    return torch.where(width > 0, (value - start) / safe_width, torch.full_like(width, 0.5)).clamp(0.0, 1.0)


class _ShiftedSine:
    """``x -> sin(x + quarter_turns*pi/2)``: shared machinery of :class:`Sin` and :class:`Cos`."""

    name = "shifted_sine"
    n_alpha = 2
    quarter_turns = 0

    def function(self, x: Tensor) -> Tensor:
        return _shifted_sin(x, self.quarter_turns)

    def interval(self, lower: Tensor, upper: Tensor) -> tuple[Tensor, Tensor]:
        dtype = lower.dtype
        work = _work_dtype(dtype)
        low, high = _image(lower.to(work), upper.to(work), self.quarter_turns, dtype)
        return low.to(dtype), high.to(dtype)

    def init_alpha(self, lower: Tensor, upper: Tensor) -> Tensor:
        dtype = lower.dtype
        work = _work_dtype(dtype)
        with torch.no_grad():
            l, u = lower.detach().to(work), upper.detach().to(work)
            l, u = torch.broadcast_tensors(l, u)
            s_min, s_max = _slope_range(l, u, self.quarter_turns, dtype)
            steps = min(DEFAULT_SLOPE_BISECTION_STEPS, math.ceil(-math.log2(_eps(dtype)) / 2) + 1)
            slopes, on_stretch = _stretch_slopes(l, u, self.quarter_turns)
            across = ~on_stretch
            rows = []
            for want_upper, slope in zip((False, True), slopes):
                if across.any():  # bisection only where the interval crosses an inflection
                    slope = slope.clone()
                    slope[across] = _midpoint_envelope_slope(l[across], u[across], s_min[across], s_max[across],
                                                             self.quarter_turns, want_upper, steps)
                rows.append(_safe_fraction(slope, s_min, s_max))
        return torch.stack(rows).to(dtype)

    def relax(self, lower: Tensor, upper: Tensor, alpha: Tensor | None = None) -> LinearRelaxation:
        dtype = lower.dtype
        work = _work_dtype(dtype)
        if alpha is None:
            alpha = self.init_alpha(lower, upper)
        l, u = lower.to(work), upper.to(work)
        a = alpha.to(work).clamp(0.0, 1.0)
        with torch.no_grad():
            s_min, s_max = _slope_range(l, u, self.quarter_turns, dtype)
        lower_slope = s_min + a[0] * (s_max - s_min)
        upper_slope = s_min + a[1] * (s_max - s_min)
        lower_slope, upper_slope = _chord_locked(l, u, lower_slope, upper_slope, self.quarter_turns)
        lower_intercept = _sound_intercept(l, u, lower_slope, self.quarter_turns, False, dtype)
        upper_intercept = _sound_intercept(l, u, upper_slope, self.quarter_turns, True, dtype)
        return _cast_outward(lower_slope, lower_intercept, upper_slope, upper_intercept, dtype)


def _cast_outward(lower_slope: Tensor, lower_intercept: Tensor, upper_slope: Tensor,
                  upper_intercept: Tensor, dtype: torch.dtype) -> LinearRelaxation:
    """Broadcast to a common shape and cast to the input dtype.

    The margin was computed with ``eps(dtype)`` (the input dtype, never the finer working dtype), which
    also covers the rounding of this cast for half-precision inputs.
    """
    parts = torch.broadcast_tensors(lower_slope, lower_intercept, upper_slope, upper_intercept)
    return LinearRelaxation(*(p.to(dtype) for p in parts))


class Sin(_ShiftedSine):
    """``sin(x)``; see the module docstring for the relaxation."""

    name = "sin"
    quarter_turns = 0


class Cos(_ShiftedSine):
    """``cos(x) = sin(x + pi/2)``; see the module docstring for the relaxation."""

    name = "cos"
    quarter_turns = 1

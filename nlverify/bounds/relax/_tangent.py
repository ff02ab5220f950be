"""Shared numerics for the smooth relaxations (s_shaped, gelu): bisection, exact support lines, margins.

The soundness argument every smooth family uses
-----------------------------------------------
A line ``k*x + b`` is below ``f`` on ``[l, u]`` iff ``b <= min_{x in [l, u]} g(x)`` with
``g(x) = f(x) - k*x``. So the *slope* may be chosen freely (for tightness: a tangent, a chord, an
optimised alpha) and the *intercept* is then set to a rigorous lower bound of ``min g`` (the upper
line is the mirror image, with ``max g``). Nothing about the slope needs to be "exactly right" for
the line to be sound; a bad slope only costs tightness.

The minimum of ``g`` is bounded from the known convexity structure of ``f``. ``g'' = f''``, so
``min g`` over ``[l, u]`` is attained at ``l``, at ``u``, or at an interior local minimum, and an
interior local minimum lies in a piece where ``f`` is convex (concave pieces of ``g`` only
contribute their endpoints, which are ``l``, ``u`` or endpoints of a convex piece). On a convex
piece ``[p, q]`` (clipped to ``[l, u]``), ``g' = f' - k`` is non-decreasing. A bisection keeps a
bracket ``[a, b]`` with ``g'(a) <= 0`` (or ``a = p``) and ``g'(b) > 0`` (or ``b = q``). Then

* on ``[p, a]``: ``g`` is non-increasing, so ``g(x) >= g(a)``;
* on ``[a, b]``: ``g(x) >= g(a) + g'(a)(x - a) >= g(a) + min(0, g'(a)) * (b - a)``
  (a convex function lies above its tangent);
* on ``[b, q]``: ``g`` is non-decreasing, so ``g(x) >= g(b) >=`` the same bound.

Hence ``min_[p,q] g >= g(a) + min(0, g'(a)) * (b - a)`` *for any number of bisection steps*; more
steps only make the bound tighter (the loss is at most ``max f'' * (b - a)^2``).

Floating point: the rounding margin
-----------------------------------
Everything is computed in the dtype of the inputs. The exact-arithmetic argument above is then off
by (i) the evaluation error of ``f`` at the candidate points, (ii) the rounding of ``f(x) - k*x``,
(iii) a wrongly-signed ``g'`` at a bracket end, which can make ``g`` dip by at most
``|error of g'| * (piece width)`` on the wrong side of the bracket. All three are bounded by

    margin = ROUNDING_MARGIN_ULPS * eps * ( max_i |f(x_i)| c(x_i) + |k| max(|l|, |u|) + |b|
                                            + sum_pieces (|f'(a)| c(a) + |f'(b)| c(b) + |k|) * width )
             + ROUNDING_MARGIN_ULPS * tiny * (1 + sum_pieces width)

where ``eps`` and ``tiny`` are ``torch.finfo(dtype).eps`` / ``.tiny`` (the tiny term absorbs
underflow to subnormals and zero, e.g. float32 sigmoid(-88) == 0), and ``c(x) >= 1`` is the
family's *error factor*: how many ulps (relative to ``|f|``) its own evaluation of ``f`` and ``f'``
may be off at ``x``, and ``|f'|`` stands for the family's ``derivative_error_scale`` (``|f'|`` itself
unless ``f'`` is computed as a sum that can cancel, as GELU's ``Phi + x phi``). ``c = 1`` for
sigmoid/tanh (the formulas used have an error of about 1-3 ulps); ``c = 1 + x^2`` on ``x < 0`` for
GELU (``Phi(x) = erfc(-x/sqrt 2)/2`` inherits the condition number ``x^2`` of ``exp(-x^2/2)`` from
the rounding of its argument: measured up to ``x^2/2`` ulps in float32). The
margin is subtracted from a lower intercept and added to an upper one: it is *in the relaxation*,
never left for callers. ``ROUNDING_MARGIN_ULPS = 16`` leaves a factor >= 4 over the measured
evaluation errors (see tests/bounds/test_relax_s_shaped.py and test_relax_gelu.py, which check
float32 relaxations against float64 ``f`` with a test tolerance of only a few float64 ulps).
"""
from __future__ import annotations

from typing import Callable, Protocol, Sequence

import torch
from torch import Tensor

#: Multiple of the dtype's machine epsilon (relative) and smallest normal (absolute) folded into
#: every smooth relaxation's intercepts and interval bounds. See the module docstring.
ROUNDING_MARGIN_ULPS: float = 16.0


class SmoothFunction(Protocol):
    """What the support computation needs from a smooth elementwise function."""

    def function(self, x: Tensor) -> Tensor: ...

    def derivative(self, x: Tensor) -> Tensor: ...

    def error_factor(self, x: Tensor) -> Tensor:
        """``c(x) >= 1``: the evaluation error of f and f' at x, in ulps relative to their magnitude."""

    def derivative_error_scale(self, x: Tensor) -> Tensor:
        """The magnitude the error of the computed ``f'(x)`` is relative to (``|f'(x)|`` absent cancellation)."""


Piece = tuple[Tensor, Tensor]


def bisection_steps(dtype: torch.dtype) -> int:
    """Fixed number of bisection steps: enough to shrink a width-2e4 bracket to ~sqrt(eps).

    The step count only affects tightness (see the module docstring), never soundness.
    """
    return 44 if torch.finfo(dtype).bits >= 64 else 28


def clamp_into(point: float | Tensor, lower: Tensor, upper: Tensor) -> Tensor:
    """``min(max(point, lower), upper)``, elementwise and broadcast: a point clipped into ``[lower, upper]``."""
    point = torch.as_tensor(point, dtype=lower.dtype, device=lower.device)
    return torch.minimum(torch.maximum(point, lower), upper)


def bisect_increasing(fn: Callable[[Tensor], Tensor], lo: Tensor, hi: Tensor, steps: int) -> tuple[Tensor, Tensor]:
    """Bracket ``[a, b]`` of the sign change of a non-decreasing ``fn`` on ``[lo, hi]``.

    Invariants: ``lo <= a <= b <= hi``; ``fn(a) <= 0`` unless ``a == lo``; ``fn(b) > 0`` unless
    ``b == hi``. A fixed number of steps, all as tensor operations (no per-element Python loop).
    """
    with torch.no_grad():
        a, b = torch.broadcast_tensors(lo.detach(), hi.detach())
        a, b = a.clone(), b.clone()
        for _ in range(steps):
            mid = 0.5 * (a + b)  # in [a, b] under round-to-nearest for finite a, b
            non_positive = fn(mid) <= 0
            a = torch.where(non_positive, mid, a)
            b = torch.where(non_positive, b, mid)
    return a, b


def unit_roundoff(dtype: torch.dtype) -> float:
    return torch.finfo(dtype).eps


def value_margin(fn: SmoothFunction, x: Tensor, value: Tensor) -> Tensor:
    """Rounding margin for a single evaluation ``value = f(x)`` (used by ``interval``)."""
    info = torch.finfo(value.dtype)
    return ROUNDING_MARGIN_ULPS * (info.eps * value.abs() * fn.error_factor(x) + info.tiny)


def _min_signed_gap(fn: SmoothFunction, slope: Tensor, lower: Tensor, upper: Tensor,
                    pieces: Sequence[Piece], sign: float,
                    hints: Sequence[Tensor | None] | None = None) -> tuple[Tensor, Tensor]:
    """``min over [lower, upper] of sign*(f(x) - slope*x)`` bounded from below, and its margin.

    ``pieces`` are the sub-intervals (already clipped into ``[lower, upper]``; degenerate ones are
    harmless) on which ``sign*f`` is convex. Returns ``(bound, margin)``; the bound is
    differentiable in ``slope`` with the gradient of the envelope theorem: the derivative of a
    minimum w.r.t. the slope is ``-x*`` (times ``sign``), so only ``g(a)`` carries a gradient and the
    correction terms below are detached. They are ~0 at a good bracket or hint, but their own slope
    derivative is a whole piece width (``d/dk [g'(a)(p - a)] = a - p``): left attached, they would move
    the gradient to the piece's end (a bug that slowed alpha-CROWN on sigmoid nets by a large factor).
    Detaching changes no value, so it cannot affect soundness.

    ``hints`` (one per piece, or None) replace the bisection on that piece by a point ``a`` the
    caller expects to be the minimiser (the tangent point of a tangent slope). For ANY ``a`` in a
    convex piece ``[p, q]``, ``g(x) >= g(a) + g'(a)(x - a) >= g(a) + min(g'(a)(p - a), g'(a)(q - a))``,
    so the bound stays rigorous whatever the hint; it is exact when ``g'(a) = 0``. This turns the
    per-alpha cost of alpha-CROWN from a bisection into one evaluation.
    """
    dtype = slope.dtype
    info = torch.finfo(dtype)
    steps = bisection_steps(dtype)

    def gap(x: Tensor, fx: Tensor) -> Tensor:
        return sign * (fx - slope * x)

    f_lower, f_upper = fn.function(lower), fn.function(upper)
    best = torch.minimum(gap(lower, f_lower), gap(upper, f_upper))
    slope_detached = slope.detach()
    with torch.no_grad():  # the margin's ingredients (see the end)
        radius = torch.maximum(lower.abs(), upper.abs())
        value_scale = torch.maximum(f_lower.abs() * fn.error_factor(lower), f_upper.abs() * fn.error_factor(upper))
        slope_slack = torch.zeros_like(best)
        total_width = torch.zeros_like(radius)
    for index, (piece_lo, piece_hi) in enumerate(pieces):
        hint = hints[index] if hints is not None else None
        if hint is None:
            a, b = bisect_increasing(lambda x: sign * (fn.derivative(x) - slope_detached), piece_lo, piece_hi, steps)
            f_a = fn.function(a)
            gap_slope_a = sign * (fn.derivative(a) - slope)
            candidate = gap(a, f_a) + (torch.clamp(gap_slope_a, max=0.0) * (b - a)).detach()
        else:
            a = clamp_into(hint.detach(), piece_lo, piece_hi)
            b = a
            f_a = fn.function(a)
            gap_slope_a = sign * (fn.derivative(a) - slope)
            candidate = gap(a, f_a) + torch.minimum(gap_slope_a * (piece_lo - a), gap_slope_a * (piece_hi - a)).detach()
        best = torch.minimum(best, candidate)
        with torch.no_grad():
            width = (piece_hi - piece_lo).abs()
            value_scale = torch.maximum(value_scale, f_a.abs() * fn.error_factor(a))
            derivative_slack_a = fn.derivative_error_scale(a) * fn.error_factor(a)
            # with a hint, b is a: the same term twice (x + x == 2x exactly, so no value changes)
            derivative_slack_b = derivative_slack_a if b is a else fn.derivative_error_scale(b) * fn.error_factor(b)
            slope_slack = slope_slack + (derivative_slack_a + derivative_slack_b + slope_detached.abs()) * width
            total_width = total_width + width
    # The margin is a few ulps of the magnitudes involved: it carries no useful gradient, so it stays out
    # of autograd's graph (values unchanged; with the identity memo of the tangent ranges this made an
    # alpha-CROWN iteration on eran's 6x200 sigmoid net 20 % faster).
    with torch.no_grad():
        magnitude = value_scale + slope_detached.abs() * radius + best.abs() + slope_slack
        margin = ROUNDING_MARGIN_ULPS * (info.eps * magnitude + info.tiny * (1.0 + total_width))
    return best, margin


def lower_intercept(fn: SmoothFunction, slope: Tensor, lower: Tensor, upper: Tensor,
                    convex_pieces: Sequence[Piece], hints: Sequence[Tensor | None] | None = None) -> Tensor:
    """An intercept ``b`` with ``slope*x + b <= f(x)`` for every real ``x`` in ``[lower, upper]``.

    ``b = min_[l,u] (f(x) - slope*x) - margin``: the highest sound line of that slope, lowered by
    the rounding margin. ``convex_pieces``: where f is convex, clipped into ``[lower, upper]``.
    """
    bound, margin = _min_signed_gap(fn, slope, lower, upper, convex_pieces, sign=1.0, hints=hints)
    return bound - margin


def upper_intercept(fn: SmoothFunction, slope: Tensor, lower: Tensor, upper: Tensor,
                    concave_pieces: Sequence[Piece], hints: Sequence[Tensor | None] | None = None) -> Tensor:
    """An intercept ``b`` with ``slope*x + b >= f(x)`` on ``[lower, upper]``: ``max(f - slope*x) + margin``."""
    bound, margin = _min_signed_gap(fn, slope, lower, upper, concave_pieces, sign=-1.0, hints=hints)
    return -bound + margin


def chord_slope(fn: SmoothFunction, lower: Tensor, upper: Tensor) -> Tensor:
    """``(f(u) - f(l)) / (u - l)``, or ``f'(l)`` where ``u == l``. Any slope is sound here (the
    intercept makes it so); the fallback only keeps degenerate boxes tight and NaN-free."""
    width = upper - lower
    has_width = width > 0
    safe_width = torch.where(has_width, width, torch.ones_like(width))
    quotient = (fn.function(upper) - fn.function(lower)) / safe_width
    return torch.where(has_width, quotient, fn.derivative(lower))


def tangent_point_through(fn: SmoothFunction, anchor: Tensor, lo: Tensor, hi: Tensor,
                          increasing: bool) -> Tensor:
    """A point ``d`` in ``[lo, hi]`` whose tangent passes (approximately) through ``(anchor, f(anchor))``.

    Solves ``r(d) = f(d) + f'(d) (anchor - d) - f(anchor) = 0`` by bisection; the caller states
    whether ``r`` is non-decreasing (``increasing=True``) or non-increasing on ``[lo, hi]`` (it is,
    where ``f''`` has one sign: ``r'(d) = f''(d) (anchor - d)``). If ``r`` has no sign change the
    result is the end of ``[lo, hi]`` nearest to one. Used to choose slopes only (tightness), never
    for soundness.

    Speed: half the bisection steps, then one false-position step on the final bracket
    ``[a, b]``: ``d = a - r(a) (b - a) / (r(b) - r(a))``, kept inside ``[a, b]``. ``r`` is smooth, so on a
    bracket of width ``w`` the interpolation error is ``O(w^2)``: as accurate as the full bisection
    for about 60% of its evaluations (this search was a third of sigmoid BaB's time).
    """
    f_anchor = fn.function(anchor)
    direction = 1.0 if increasing else -1.0

    def residual(d: Tensor) -> Tensor:
        return direction * (fn.function(d) + fn.derivative(d) * (anchor - d) - f_anchor)

    steps = bisection_steps(lo.dtype) // 2
    a, b = bisect_increasing(residual, lo, hi, steps)
    with torch.no_grad():
        r_a, r_b = residual(a), residual(b)
        brackets = (r_a <= 0) & (r_b > 0)  # else no sign change: an end of [lo, hi] (midpoint of [a, b])
        spread = torch.where(brackets, r_b - r_a, torch.ones_like(r_a))
        secant = a - r_a * (b - a) / spread
        inside = torch.minimum(torch.maximum(secant, a), b)
        return torch.where(brackets & torch.isfinite(inside), inside, 0.5 * (a + b))

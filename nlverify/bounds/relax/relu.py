"""Sound linear relaxations of ReLU and LeakyReLU.

``leaky_relu(x) = x`` for ``x >= 0`` and ``a x`` for ``x < 0`` (``a = negative_slope``; ReLU is
``a = 0``). For every real ``x`` in ``[l, u]`` the relaxation guarantees

    lower_slope * x + lower_intercept  <=  f(x)  <=  upper_slope * x + upper_intercept.

Construction
------------
* ``l >= 0``: both lines are ``x``. ``u <= 0``: both lines are ``a x``.
* ``l < 0 < u`` and ``a <= 1`` (f convex; ``a`` may be negative): the upper line is the chord
  through ``(l, a l)`` and ``(u, u)``; the lower line is ``s x`` through the origin with
  ``s = a + alpha (1 - a)`` in ``[a, 1]`` (``s x <= f(x)`` exactly for those ``s``: on ``x < 0``
  because ``s >= a``, on ``x >= 0`` because ``s <= 1``). Default (CROWN's adaptive choice):
  ``s = 1`` if ``u >= -l`` else ``s = a``, i.e. alpha 1 or 0.
* ``l < 0 < u`` and ``a > 1`` (f concave): the mirror image: the lower line is the chord and the
  upper line is ``s x`` with ``s = a + alpha (1 - a)`` in ``[1, a]``, same default rule.

So ``n_alpha = 1`` and alpha always means "slope of the line through the origin, from the
negative-side slope ``a`` (alpha 0) to the positive-side slope 1 (alpha 1)".

Floating point (explicit margins, folded into the intercepts):

* the chord's intercept is moved outwards by ``RELU_MARGIN_ULPS * (eps * (|f(l)| + |f(u)| +
  |k| max(|l|, |u|)) + tiny)``, which covers the rounding of its slope and intercept (each a few
  ulps) and underflow;
* if ``a`` is not representable in the dtype (e.g. 0.01 in float32), every line that uses the
  rounded ``a`` is moved outwards by ``RELU_MARGIN_ULPS * |a - a_dtype| * max(-l, 0) + tiny`` (the
  dtype's smallest normal, which also covers an ``a`` that underflows, e.g. 1e-175); lines through
  the origin with slope in the closed range are otherwise exact, as are the stable cases, so ReLU
  (and any representable ``a``) has zero margin except on the chord.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from nlverify.bounds.relax.base import LinearRelaxation, checked_alpha

#: Multiple of eps folded into the chord intercept (the chord's own rounding is ~3 ulps).
RELU_MARGIN_ULPS: float = 16.0


class LeakyRelu:
    """``x if x >= 0 else negative_slope * x``; any finite ``negative_slope`` (convex if <= 1, concave if > 1)."""

    name: str = "leaky_relu"
    n_alpha: int = 1

    def __init__(self, negative_slope: float = 0.01) -> None:
        negative_slope = float(negative_slope)
        if not math.isfinite(negative_slope):
            raise ValueError(f"LeakyRelu: negative_slope must be finite, got {negative_slope}")
        self.negative_slope = negative_slope

    # -- helpers ---------------------------------------------------------------------------------
    def _slope_in(self, like: Tensor) -> tuple[Tensor, Tensor, float]:
        """``a`` rounded to the dtype of ``like``; the margin per unit ``|x|`` its rounding costs; and an
        absolute floor (the dtype's smallest normal, 0 when ``a`` is exact) for when that underflows."""
        a_dtype = torch.tensor(self.negative_slope, dtype=like.dtype, device=like.device)
        representation_error = abs(self.negative_slope - float(a_dtype))
        if representation_error == 0.0:
            return a_dtype, torch.zeros((), dtype=like.dtype, device=like.device), 0.0
        tiny = torch.finfo(like.dtype).tiny
        # RELU_MARGIN_ULPS over-covers the rounding of the product per_unit * |x|; the floors cover
        # an error below the dtype's range (e.g. a = 1e-175 rounds to 0 in float32).
        per_unit = max(RELU_MARGIN_ULPS * representation_error, tiny)
        return a_dtype, torch.tensor(per_unit, dtype=like.dtype, device=like.device), tiny

    def function(self, x: Tensor) -> Tensor:
        return torch.where(x >= 0, x, x * self.negative_slope)

    def is_exact(self, lower: Tensor, upper: Tensor) -> Tensor:
        """Where the relaxation is the function itself on the box (a stable neuron: ``l >= 0`` or
        ``u <= 0``), so a tighter box cannot tighten it; the engine skips refining such neurons."""
        return (lower >= 0) | (upper <= 0)

    def interval(self, lower: Tensor, upper: Tensor) -> tuple[Tensor, Tensor]:
        """Image of ``[l, u]``: extremes at ``l``, ``u`` and (when ``l <= 0 <= u``) at 0."""
        lower, upper = torch.broadcast_tensors(lower, upper)
        f_lower, f_upper = self.function(lower), self.function(upper)
        zero = torch.zeros_like(lower)
        contains_zero = (lower <= 0) & (upper >= 0)
        low = torch.minimum(f_lower, f_upper)
        high = torch.maximum(f_lower, f_upper)
        low = torch.where(contains_zero, torch.minimum(low, zero), low)
        high = torch.where(contains_zero, torch.maximum(high, zero), high)
        _, per_unit, floor = self._slope_in(lower)
        # f(l) = fl(a * l) differs from the real a * l by the rounding of a (per_unit, floor) and of
        # the product (a few ulps of |f(l)|, or an underflow); all zero for ReLU and for identity.
        info = torch.finfo(lower.dtype)
        exact_product = self.negative_slope in (0.0, 1.0)
        product_rounding = zero if exact_product else RELU_MARGIN_ULPS * (info.eps * f_lower.abs() + info.tiny) * (lower < 0)
        slack = per_unit * (-lower).clamp(min=0) + floor + product_rounding
        return low - slack, high + slack

    def init_alpha(self, lower: Tensor, upper: Tensor) -> Tensor:
        """``(1, *shape)``: 1 (slope 1) where ``u >= -l``, else 0 (slope a)."""
        lower, upper = torch.broadcast_tensors(lower, upper)
        return (upper >= -lower).to(lower.dtype).unsqueeze(0)

    def relax(self, lower: Tensor, upper: Tensor, alpha: Tensor | None = None) -> LinearRelaxation:
        lower, upper = torch.broadcast_tensors(lower, upper)
        if alpha is None:
            alpha = self.init_alpha(lower, upper)
        alpha = checked_alpha(self.name, self.n_alpha, alpha, lower.dtype)[0]
        a, per_unit, floor = self._slope_in(lower)
        info = torch.finfo(lower.dtype)
        zero, one = torch.zeros_like(lower), torch.ones_like(lower)

        active = lower >= 0
        inactive = upper <= 0          # (l == u == 0 is both; either answer is exact there)
        mixed = ~active & ~inactive
        negative_extent = (-lower).clamp(min=0)
        representation_slack = per_unit * negative_extent + floor   # 0 when a is exact in the dtype

        # Chord through (l, a l) and (u, u); only used on mixed boxes (l < 0 < u, so width > 0).
        width = torch.where(mixed, upper - lower, one)
        f_lower = a * lower
        chord = (upper - f_lower) / width
        chord_intercept = upper - chord * upper
        chord_slack = RELU_MARGIN_ULPS * (info.eps * (f_lower.abs() + upper.abs()
                                                      + chord.abs() * torch.maximum(lower.abs(), upper.abs()))
                                          + info.tiny)
        chord_slack = chord_slack + representation_slack

        # The family through the origin, slope in the closed range between a and 1 (clamped, so
        # rounding of a + alpha (1 - a) can never leave it).
        a_value = float(a)
        through_origin = (a + alpha * (1 - a)).clamp(min=min(a_value, 1.0), max=max(a_value, 1.0))

        convex = self.negative_slope <= 1.0
        # mixed-box lines
        if convex:
            mixed_lower_slope, mixed_lower_icpt = through_origin, -representation_slack
            mixed_upper_slope, mixed_upper_icpt = chord, chord_intercept + chord_slack
        else:
            mixed_lower_slope, mixed_lower_icpt = chord, chord_intercept - chord_slack
            mixed_upper_slope, mixed_upper_icpt = through_origin, representation_slack

        # stable boxes: x on the active side, a x on the inactive side (exact up to a's rounding)
        stable_slope = torch.where(active, one, a.expand_as(lower))
        stable_slack = torch.where(active, zero, representation_slack)

        lower_slope = torch.where(mixed, mixed_lower_slope, stable_slope)
        lower_icpt = torch.where(mixed, mixed_lower_icpt, -stable_slack)
        upper_slope = torch.where(mixed, mixed_upper_slope, stable_slope)
        upper_icpt = torch.where(mixed, mixed_upper_icpt, stable_slack)
        return LinearRelaxation(*torch.broadcast_tensors(lower_slope, lower_icpt, upper_slope, upper_icpt))


class Relu(LeakyRelu):
    """``max(x, 0)``: :class:`LeakyRelu` with ``negative_slope = 0`` (alpha = the lower slope in [0, 1])."""

    name = "relu"

    def __init__(self) -> None:
        super().__init__(0.0)

    def function(self, x: Tensor) -> Tensor:
        return torch.relu(x)

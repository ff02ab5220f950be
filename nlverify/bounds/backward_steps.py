"""The arithmetic of one CROWN backward step, written for few passes over the coefficient tensor.

Coefficients ``A`` have shape ``(B, S, *shape)`` (boxes, rows, the node's neurons) and are by far the
largest tensors of a pass (64 boxes x 400 rows x 784 inputs = 80 MB in float32), so every full-size
elementwise pass costs about as much as a small matrix product. The identities used, with
``A+ = max(A, 0)``, ``A- = min(A, 0)`` and ``A = A+ + A-``:

* through a relaxation ``ls x + li <= f(x) <= us x + ui``:
  ``A+ ls + A- us = A ls + A- (us - ls)`` and ``A+ . li + A- . ui = A . li + A- . (ui - li)``:
  one clamp, one product, one fused multiply-add, two matrix-vector products (instead of two clamps,
  two products, a sum and two matrix-vector products);
* at a box ``[l, u]``: ``min_x A . x = A+ . l + A- . u = A . l + A- . (u - l)``: one clamp and two
  matrix-vector products.

Both are equalities in exact arithmetic; in floating point they differ from the two-sided forms by
rounding only, like any change of summation order. Values with infinite entries (unbounded boxes) take
the two-sided form, where ``0 * inf`` is read as 0.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor


PRODUCT_BYTES = 16 << 20  # largest coefficient tensor for which :func:`dot` forms the elementwise product


def dot(coeffs: Tensor, values: Tensor) -> Tensor:
    """``sum(coeffs * values)`` over the node axes, with ``0 * inf`` read as 0 (no contribution).

    ``values`` shared by all rows (shape ``(B, 1, *shape)``, the common case) go through one batched
    matrix-vector product when the coefficients are large, which never materialises the ``(B, S,
    *shape)`` product; coefficients shared by all boxes (batch 1) against per-box values through one
    matrix product."""
    finite = bool(torch.isfinite(values).all())
    if finite and values.dim() == coeffs.dim() and values.shape[1] == 1 and coeffs.dim() > 2:
        if coeffs.shape[0] == 1 and values.shape[0] > 1:  # coefficients shared by every box: one product
            return values.reshape(values.shape[0], -1) @ coeffs.reshape(coeffs.shape[1], -1).transpose(0, 1)
        if coeffs.numel() * coeffs.element_size() <= PRODUCT_BYTES:
            # small enough for a cached temporary: on CPU a batched product with one column runs several
            # times slower than this product and sum (measured 2-6x with MKL, torch 2.13)
            return (coeffs * values).flatten(2).sum(-1)
        batch = coeffs.shape[0]
        flat_values = values.expand(batch, *values.shape[1:]).reshape(batch, -1, 1)
        flat = coeffs.reshape(batch, coeffs.shape[1], -1)
        return torch.bmm(flat, flat_values).squeeze(-1)
    product = coeffs * values
    if not finite:
        product = torch.where(coeffs == 0, torch.zeros_like(product), product)
    return product.flatten(2).sum(-1)


def positive_negative(coeffs: Tensor) -> tuple[Tensor, Tensor]:
    return coeffs.clamp(min=0), coeffs.clamp(max=0)


def _all_finite(*tensors: Tensor) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in tensors)


def box_minimum(coeffs: Tensor, low: Tensor, up: Tensor) -> Tensor:
    """``(B, S)``: ``min over x in [low, up] of coeffs . x`` with ``low``/``up`` of shape ``(B, *shape)``.

    ``coeffs`` of batch 1 with several boxes are shared by every box: then one matrix product per term,
    ``(B, n) @ (n, S)``, without expanding the coefficients to ``(B, S, n)``."""
    if coeffs.shape[0] == 1 and low.shape[0] > 1 and _all_finite(low, up):
        rows = coeffs.reshape(coeffs.shape[1], -1)
        flat_low = low.reshape(low.shape[0], -1)
        return flat_low @ rows.transpose(0, 1) + (up.reshape(up.shape[0], -1) - flat_low) @ rows.clamp(max=0).transpose(0, 1)
    if coeffs.shape[0] != low.shape[0]:
        coeffs = coeffs.expand(low.shape[0], *coeffs.shape[1:])
    low, up = low.unsqueeze(1), up.unsqueeze(1)
    if _all_finite(low, up):
        return dot(coeffs, low) + dot(coeffs.clamp(max=0), up - low)
    a_pos, a_neg = positive_negative(coeffs)
    return dot(a_pos, low) + dot(a_neg, up)


CHUNK_BYTES = 4 << 20  # coefficients per chunk of boxes in :func:`box_minimum_through`: about a cache's worth


def box_minimum_through(forward: Callable[[Tensor], Tensor], backward: Callable[[Tensor], Tensor],
                        coeffs: Tensor, low: Tensor, up: Tensor) -> Tensor:
    """``min over x in [low, up] of coeffs . (L x + o)`` for an affine map ``forward(x) = L x + o`` with
    transpose ``backward(A) = A L``, as ``coeffs . forward(c) - |coeffs L| . r`` (centre ``c``, radius
    ``r``): the large ``coeffs L`` (e.g. ``(B, S, 784)`` behind a ``(B, S, 200)`` layer) is read once, a
    few boxes at a time, while it is still in cache. Every box is computed as alone."""
    if not _all_finite(low, up):
        return dot(coeffs, forward(torch.zeros_like(low[:1])).unsqueeze(1)) + box_minimum(backward(coeffs), low, up)
    centre, radius = (low + up) / 2, (up - low) / 2
    value = dot(coeffs, forward(centre).unsqueeze(1))
    batch = max(coeffs.shape[0], low.shape[0])
    if coeffs.shape[0] == 1 and batch > 1:  # shared coefficients: one product for every box
        rows = backward(coeffs).abs().reshape(coeffs.shape[1], -1)
        return value - radius.reshape(batch, -1) @ rows.transpose(0, 1)
    per_box = coeffs.shape[1] * low[0].numel() * coeffs.element_size()
    step = max(1, CHUNK_BYTES // max(per_box, 1))
    spread = torch.cat([dot(backward(coeffs[i:i + step]).abs(), radius[i:i + step].unsqueeze(1))
                        for i in range(0, batch, step)])
    return value - spread


def through_relaxation(coeffs: Tensor, lower_slope: Tensor, lower_intercept: Tensor, upper_slope: Tensor,
                       upper_intercept: Tensor) -> tuple[Tensor, Tensor]:
    """``(A+ ls + A- us, A+ . li + A- . ui)``: the coefficients on the relaxed op's input and the constant
    ``(B, S)`` such that ``A . f(x) >= (A+ ls + A- us) . x + A+ . li + A- . ui`` on the box."""
    if not _all_finite(lower_intercept, upper_intercept):
        a_pos, a_neg = positive_negative(coeffs)
        constant = dot(a_pos, lower_intercept) + dot(a_neg, upper_intercept)
        return a_pos * lower_slope + a_neg * upper_slope, constant
    a_neg = coeffs.clamp(max=0)
    constant = dot(coeffs, lower_intercept) + dot(a_neg, upper_intercept - lower_intercept)
    a_in = coeffs * lower_slope
    slope_gap = upper_slope - lower_slope
    if torch.broadcast_shapes(a_in.shape, slope_gap.shape) == a_in.shape:
        # in place on a fresh product (autograd keeps the product's inputs, not the product)
        return a_in.addcmul_(a_neg, slope_gap), constant
    return torch.addcmul(a_in, a_neg, slope_gap), constant

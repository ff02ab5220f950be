"""Lower bounds on a conjunction of rows from their linear bounds: better than the best single row.

A problem is a conjunction: it is proved when no ``x`` in the box has ``C_i f(x) <= d_i`` for *every*
row ``i``. Given linear lower bounds ``C_i f(x) >= A_i . x + c_i`` valid on the box, it suffices that

    min over x in the box of  max_i h_i(x) > 0,        h_i(x) = A_i . x + c_i - d_i.

One row proves it when ``min_x h_i > 0``. Near the boundary of one row's set neither row does (lsnc's
state properties: "V(x) <= rho *and* a state leaves its limits"), yet the maximum can be positive on the
whole box. For any ``lambda`` in the simplex, ``max_i h_i(x) >= sum_i lambda_i h_i(x)``, so

    phi(lambda) = sum_i lambda_i (c_i - d_i) + min_x (sum_i lambda_i A_i) . x

is a lower bound for every ``lambda``, and by LP duality (the box is compact and convex) its maximum
equals ``min_x max_i h_i(x)``.

For two rows, ``lambda = (t, 1 - t)`` and ``phi(t)`` is concave and piecewise linear in ``t``, with a kink
only where a coordinate of ``t A_1 + (1 - t) A_2`` changes sign, ``t_j = A_2j / (A_2j - A_1j)``. Its
maximum is therefore at one of the ``<= n`` kinks inside ``[0, 1]`` or at an end, and evaluating those
``n + 2`` points gives the exact optimum, batched over domains with no iteration. With more rows we take
the best pair: exact whenever an optimal ``lambda`` has at most two nonzero entries, a valid bound always.

Every evaluation is in float64 and rounded down when returned in the boxes' dtype, as for the inherited
bounds of :func:`~nlverify.verifier.input_split.inherited_lower_bound`.
"""
from __future__ import annotations

import math
from itertools import combinations

import torch
from torch import Tensor

from nlverify.bounds.backward_steps import box_minimum
from nlverify.verifier.problem import PROOF_ABS_TOL, PROOF_REL_TOL

__all__ = ["pair_kinks", "pair_lower_bound", "conjunction_lower_bound", "conjunction_gap"]


def pair_kinks(a_first: Tensor, a_second: Tensor) -> Tensor:
    """``(k, n)``: the ``t`` in ``(0, 1)`` where coordinate ``j`` of ``t a_1 + (1 - t) a_2`` is 0,
    ``t_j = a_2j / (a_2j - a_1j)``; 0 where there is none (``t = 0`` is the second row itself)."""
    difference = a_second - a_first
    kinks = torch.where(difference != 0, a_second / torch.where(difference != 0, difference, 1.0), 0.0)
    return torch.where((kinks > 0) & (kinks < 1), kinks, torch.zeros_like(kinks))


def pair_lower_bound(a_first: Tensor, h_first: Tensor, a_second: Tensor, h_second: Tensor,
                     lower: Tensor, upper: Tensor) -> Tensor:
    """``(k,)``: ``max over t in [0, 1]`` of ``min over the box`` of ``t h_1(x) + (1 - t) h_2(x)``, with
    ``h_i(x) = a_i . x + h_i`` (``a_*`` ``(k, n)``, ``h_*`` ``(k,)``, boxes ``(k, n)``; all float64).
    Exact: the maximum of the concave piecewise-linear function over its kinks and the two ends."""
    kinks = pair_kinks(a_first, a_second)
    t = torch.cat([kinks, torch.zeros_like(kinks[:, :1]), torch.ones_like(kinks[:, :1])], dim=1)  # (k, n+2)
    a = t.unsqueeze(-1) * a_first.unsqueeze(1) + (1 - t.unsqueeze(-1)) * a_second.unsqueeze(1)  # (k, n+2, n)
    value = t * h_first.unsqueeze(1) + (1 - t) * h_second.unsqueeze(1) + box_minimum(a, lower, upper)
    return torch.nan_to_num(value, nan=-math.inf).max(1).values


def conjunction_lower_bound(a: Tensor, constant: Tensor, d: Tensor, lower: Tensor, upper: Tensor) -> Tensor:
    """``(k,)`` lower bound of ``min over the box of max_i (A_i . x + c_i - d_i)``, float64.

    ``a``: ``(k, m, n)`` row coefficients, ``constant``: ``(k, m)`` (``-inf`` where a row's bound is not
    finite), ``d``: ``(k, m)``, boxes ``(k, n)``. The best single row or pair of rows (see the module
    docstring); ``-inf`` when no row is finite."""
    a, lower, upper = a.double(), lower.double(), upper.double()
    h = constant.double() - d.double()
    finite = torch.isfinite(h)
    single = h + box_minimum(a, lower, upper)
    best = torch.where(finite, single, torch.full_like(single, -math.inf)).max(1).values
    for i, j in combinations(range(a.shape[1]), 2):
        both = finite[:, i] & finite[:, j]
        if not both.any():
            continue
        value = pair_lower_bound(a[:, i], torch.where(both, h[:, i], 0), a[:, j], torch.where(both, h[:, j], 0),
                                 lower, upper)
        best = torch.maximum(best, torch.where(both, value, torch.full_like(value, -math.inf)))
    return best


def conjunction_gap(a: Tensor, constant: Tensor, d: Tensor, lower: Tensor, upper: Tensor) -> Tensor:
    """``(k,)`` in the boxes' dtype: :func:`conjunction_lower_bound` less the proof margin, rounded down;
    ``> 0`` proves the domain's conjunction. The margin is the pipeline's, taken at the largest magnitude
    among the bound, the rows' thresholds and their finite constants ``c_i - d_i`` (a combination can
    cancel large terms whose float32 rounding the margin must still cover), so it is never smaller than a
    single row's."""
    value = conjunction_lower_bound(a, constant, d, lower, upper)
    h = (constant.double() - d.double()).abs()
    largest_row = torch.where(torch.isfinite(h), h, torch.zeros_like(h)).max(1).values
    scale = torch.maximum(torch.maximum(value.abs(), d.double().abs().max(1).values), largest_row)
    gap = value - (PROOF_ABS_TOL + PROOF_REL_TOL * scale)
    gap = torch.nan_to_num(gap, nan=-math.inf)
    rounded = gap.to(lower.dtype)
    return torch.where(rounded.double() > gap, torch.nextafter(rounded, torch.full_like(rounded, -math.inf)), rounded)

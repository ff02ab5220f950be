"""Shrinking an input-split box to the part where a violation can still lie.

A problem is violated at ``x`` when ``C_i f(x) <= d_i`` for *every* row ``i``. Input-split BaB knows,
per domain and row, a linear lower bound ``C_i f(x) >= a_i . x + c_i`` valid on the whole box. So
every violation in the box satisfies, for every row,

    a_i . x + c_i - d_i <= 0.

With ``m_i = min over the box of a_i . x`` and ``slack_i = -(c_i - d_i + m_i)``, the other coordinates
contribute at least their own minimum, hence for each coordinate ``j``

    a_ij > 0:  x_j <= l_j + slack_i / a_ij,        a_ij < 0:  x_j >= u_j + slack_i / a_ij,

and the box ``[l, u]`` can be replaced by its intersection with these half-spaces, over every row:
nothing that violates the property is cut away. The clipped box is smaller, so the next bound on it is
tighter and its splits are spent where violations could be. If some coordinate's interval becomes
empty (or some ``slack_i < 0``), no violation is in the box at all and the domain is closed. Clipping
again on the clipped box uses the larger minima ``m_i`` and can cut more; a few rounds reach the
fixed point closely.

*Pairs of rows.* Every combination ``t h_i + (1 - t) h_j`` (``t`` in ``[0, 1]``, ``h_i(x) = a_i . x + c_i
- d_i``) is also ``<= 0`` at a violation, and can cut deeper than either row alone (the two half-spaces
meet inside the box). For one coordinate ``j`` the cut is ``l_j + slack(t) / a_j(t)``, with ``slack``
convex and piecewise linear in ``t`` (kinks where some ``a_k(t)`` changes sign) and ``a_j(t)`` linear:
on each piece the ratio is linear-fractional, hence monotone, so its minimum over ``t`` is at a kink or
an end -- the same ``n + 2`` points as in :mod:`nlverify.verifier.conjunction`. Clipping by the
combinations at those points therefore gives, per coordinate, the deepest cut any pair allows.

Rounding: ``slack`` gets the pipeline's proof margin added (a row whose bound is within the margin of
proving counts as not proved everywhere else, so a point is kept unless its bound clears ``d_i`` by the
margin), everything is computed in float64, and new ends are rounded outward in the boxes' dtype and
never leave the original box.
"""
from __future__ import annotations

import math
from itertools import combinations

import torch
from torch import Tensor

from nlverify.bounds.backward_steps import box_minimum
from nlverify.verifier.conjunction import pair_kinks
from nlverify.verifier.problem import PROOF_ABS_TOL, PROOF_REL_TOL

__all__ = ["CLIP_ROUNDS", "clip_to_violation"]

CLIP_ROUNDS = 2


def _row_slack(a: Tensor, h: Tensor, scale_floor: Tensor, lower: Tensor, upper: Tensor) -> Tensor:
    """``(k, m)`` float64: how far ``a_i . x + h_i`` may rise above its minimum over the box while the
    row stays unproved, with the proof margin taken at ``max(|value|, scale_floor)``; ``+inf`` for rows
    without a finite bound."""
    value = h + box_minimum(a, lower, upper)
    slack = PROOF_ABS_TOL + PROOF_REL_TOL * torch.maximum(value.abs(), scale_floor) - value
    return torch.where(torch.isfinite(h), slack, torch.full_like(slack, math.inf))


def _with_pair_combinations(a: Tensor, h: Tensor, scale_floor: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The rows plus, for every pair ``(i, j)``, the combinations ``t h_i + (1 - t) h_j`` at each kink
    ``t`` of the pair in ``(0, 1)`` (where a coordinate of ``t a_i + (1 - t) a_j`` is 0; the ends are the
    rows themselves; see the module docstring). A combination with a non-finite row is non-finite, so it never cuts."""
    rows, constants, floors = [a], [h], [scale_floor]
    for i, j in combinations(range(a.shape[1]), 2):
        t = pair_kinks(a[:, i], a[:, j])  # (k, n); t = 0 and 1 are the rows themselves
        rows.append(t.unsqueeze(-1) * a[:, i].unsqueeze(1) + (1 - t.unsqueeze(-1)) * a[:, j].unsqueeze(1))
        finite = torch.isfinite(h[:, i]) & torch.isfinite(h[:, j])
        combined = t * h[:, i].nan_to_num(0.0).unsqueeze(1) + (1 - t) * h[:, j].nan_to_num(0.0).unsqueeze(1)
        constants.append(torch.where(finite.unsqueeze(1), combined, -math.inf))
        floors.append(torch.maximum(scale_floor[:, i], scale_floor[:, j]).unsqueeze(1).expand_as(t))
    return torch.cat(rows, 1), torch.cat(constants, 1), torch.cat(floors, 1)


def clip_to_violation(a: Tensor, constant: Tensor, d: Tensor, lower: Tensor, upper: Tensor,
                      rounds: int = CLIP_ROUNDS, pairs: bool = True) -> tuple[Tensor, Tensor, Tensor]:
    """The smallest sub-boxes of ``[lower, upper]`` (``(k, n)``) that these linear bounds allow to contain
    a violation: ``(lower', upper', empty)``, ``empty`` ``(k,)`` True where none can (the domain is
    closed; its returned box is meaningless). ``a`` ``(k, m, n)``, ``constant`` ``(k, m)`` (``-inf``
    where a row's bound is not finite), ``d`` ``(k, m)``; ``pairs``: also clip by combinations of two
    rows. See the module docstring."""
    dtype = lower.dtype
    a64, low, up = a.double(), lower.double(), upper.double()
    h = constant.double() - d.double()
    # the margin's scale covers cancellation of large terms, as in conjunction.conjunction_gap
    scale_floor = torch.maximum(torch.where(torch.isfinite(h), h.abs(), torch.zeros_like(h)), d.double().abs())
    if pairs and a.shape[1] > 1:
        a64, h, scale_floor = _with_pair_combinations(a64, h, scale_floor)
    empty = torch.zeros(lower.shape[0], dtype=torch.bool, device=lower.device)
    positive, negative = a64 > 0, a64 < 0
    for _ in range(max(rounds, 1)):
        slack = _row_slack(a64, h, scale_floor, low, up).unsqueeze(-1)  # (k, m, 1)
        empty |= (slack < 0).any(1).squeeze(-1)
        slack = slack.clamp(min=0)
        reach_up = torch.where(positive, low.unsqueeze(1) + slack / torch.where(positive, a64, 1.0), math.inf)
        reach_low = torch.where(negative, up.unsqueeze(1) + slack / torch.where(negative, a64, -1.0), -math.inf)
        low = torch.maximum(low, torch.nan_to_num(reach_low, nan=-math.inf).max(1).values)
        up = torch.minimum(up, torch.nan_to_num(reach_up, nan=math.inf).min(1).values)
        empty |= (low > up).any(1)
    new_lower, new_upper = low.to(dtype), up.to(dtype)
    new_lower = torch.where(new_lower.double() > low, torch.nextafter(new_lower, torch.full_like(new_lower, -math.inf)),
                            new_lower)
    new_upper = torch.where(new_upper.double() < up, torch.nextafter(new_upper, torch.full_like(new_upper, math.inf)),
                            new_upper)
    new_lower = torch.maximum(new_lower, lower)
    new_upper = torch.minimum(new_upper, upper)
    return new_lower, new_upper, empty

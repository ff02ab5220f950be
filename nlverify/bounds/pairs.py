"""Intermediate CROWN bounds for scattered (box, neuron) pairs.

CROWN re-bounds a node's neurons by one backward pass per neuron row. In a batch of boxes the neurons
that need it differ from box to box: a neuron whose consumer's relaxation is already exact on its
box (a stable ReLU) gains nothing from a tighter box. Refining the *union* of such rows for every box
(``crown._refine_rows``) does work proportional to ``B x |union|``; deep in an input-split search
almost every row is in the union while each box needs only a few of them.

Here every needed pair ``(b, j)`` becomes its own one-box problem: the batch of the backward pass is
the list of pairs, with pair ``p`` reading the bounds and relaxations of its box ``b_p`` (gathered
once per node), and two rows per pair, ``+e_j`` and ``-e_j`` (lower and upper bound). The bound of
every pair is the same number the dense pass computes for row ``j`` of box ``b`` — the pass is a sum of
per-box terms and nothing couples boxes — so this changes cost, never results. Cost is proportional
to the number of pairs; :func:`worth_pairing` picks it when the pairs are a small part of the dense
work.
"""
from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

from nlverify.graph import Node

__all__ = ["PAIR_DENSITY", "worth_pairing", "refine_pairs"]

PAIR_DENSITY = 0.5  # pair mode when needed pairs < PAIR_DENSITY x (boxes x union of needed rows)
PAIR_CHUNK = 1 << 16  # pairs per backward pass (bounds memory: chunk x 2 x largest node)


def worth_pairing(needed: Tensor) -> bool:
    """``needed``: ``(B, n)`` mask of pairs to refine. Pairs pay off when they are a small part of the
    dense work ``B x |rows needed by some box|`` (and there is more than one box)."""
    if needed.shape[0] < 2:
        return False
    rows = int(needed.any(0).sum())
    return rows > 0 and int(needed.sum()) < PAIR_DENSITY * needed.shape[0] * rows


def _gather(value, index: Tensor, batch: int):
    """Row ``index`` of a per-box tensor (leading axis ``batch``); broadcast tensors pass through."""
    if isinstance(value, Tensor) and value.dim() > 0 and value.shape[0] == batch:
        return value.index_select(0, index)
    return value


class _GatheredRelaxations:
    """The relaxation callback of the full batch, seen through the pairs' box indices (cached per node)."""

    def __init__(self, relaxation_for, index: Tensor, batch: int) -> None:
        self.relaxation_for = relaxation_for
        self.index = index
        self.batch = batch
        self._cache: dict[str, object] = {}

    def __call__(self, node: Node, start: str):
        if node.name not in self._cache:
            relaxation = self.relaxation_for(node, start)
            self._cache[node.name] = dataclasses.replace(relaxation, **{
                f.name: _gather(getattr(relaxation, f.name), self.index, self.batch)
                for f in dataclasses.fields(relaxation)})
        return self._cache[node.name]


def refine_pairs(propagator, node: Node, needed: Tensor, low: Tensor, up: Tensor, bounds: dict,
                 relaxation_for) -> tuple[Tensor, Tensor]:
    """CROWN bounds of ``node`` for the pairs in ``needed`` (``(B, n)`` bool), intersected into the box.

    ``relaxation_for`` must not depend on the start node's rows (the CROWN relaxations; alpha-CROWN's
    per-row alphas cannot be gathered this way)."""
    batch, n = needed.shape
    box, neuron = needed.nonzero(as_tuple=True)
    flat_low, flat_up = low.reshape(batch, n).clone(), up.reshape(batch, n).clone()
    names = {a.name for a in propagator.ancestors(node.name)}
    for start in range(0, box.numel(), PAIR_CHUNK):
        b, j = box[start:start + PAIR_CHUNK], neuron[start:start + PAIR_CHUNK]
        pairs = b.numel()
        coeffs = low.new_zeros(pairs, 2, n)
        rows = torch.arange(pairs, device=low.device)
        coeffs[rows, 0, j] = 1.0
        coeffs[rows, 1, j] = -1.0
        gathered = {name: (lu[0].index_select(0, b), lu[1].index_select(0, b))
                    for name, lu in bounds.items() if name in names}
        both = propagator.lower_bound(node.name, coeffs.reshape(pairs, 2, *node.shape), gathered,
                                      _GatheredRelaxations(relaxation_for, b, batch))
        flat_low[b, j] = torch.maximum(flat_low[b, j], both[:, 0])
        flat_up[b, j] = torch.minimum(flat_up[b, j], -both[:, 1])
    return flat_low.reshape(low.shape), flat_up.reshape(up.shape)


def refine_boxes(propagator, node: Node, index: Tensor, low: Tensor, up: Tensor, bounds: dict,
                 relaxation_for) -> tuple[Tensor, Tensor]:
    """CROWN bounds of every neuron of ``node`` for the boxes ``index`` only (the others keep ``low`` /
    ``up``), intersected into the box. Same requirement on ``relaxation_for`` as :func:`refine_pairs`."""
    batch, n, k = low.shape[0], node.size, index.numel()
    names = {a.name for a in propagator.ancestors(node.name)}
    gathered = {name: (lu[0].index_select(0, index), lu[1].index_select(0, index))
                for name, lu in bounds.items() if name in names}
    eye = torch.eye(n, dtype=low.dtype, device=low.device).reshape(n, *node.shape)
    coeffs = torch.cat([eye, -eye]).unsqueeze(0).expand(k, 2 * n, *node.shape)
    both = propagator.lower_bound(node.name, coeffs, gathered, _GatheredRelaxations(relaxation_for, index, batch))
    flat_low, flat_up = low.reshape(batch, n).clone(), up.reshape(batch, n).clone()
    flat_low[index] = torch.maximum(flat_low[index], both[:, :n])
    flat_up[index] = torch.minimum(flat_up[index], -both[:, n:])
    return flat_low.reshape(low.shape), flat_up.reshape(up.shape)

"""Forward linear bounds: every node bounded by affine functions of the input, pushed forward once.

For a model with few inputs (``n`` of them: ACAS Xu, control and power-flow nets) the cheapest way to
get good intermediate boxes is to carry, for every node ``z``, two affine functions of the input ``x``

    L(x) = LA x + Lc  <=  z(x)  <=  UA x + Uc = U(x)          for every x in the input box,

(``LA``, ``UA``: ``(B, n, *shape)``; ``Lc``, ``Uc``: ``(B, *shape)``) and to read the node's box off them
(``min``/``max`` of an affine function over a box), intersected with its IBP box. Only the boxes a
relaxation reads (inputs of nonlinear nodes) and the output's are read off; the other nodes keep their
IBP box (on lsnc 12 of 50 nodes: strong-branching scores 26 % faster, state_10 3,094,845 -> 3,114,715
domains, BaB alone 115.5 -> 103.1 s). The cost per node is a
few applications of the op to ``n + 1`` tensors, against one backward pass per neuron for CROWN's
intermediate bounds; the boxes are usually somewhat looser, which input splitting makes up for with
many more, smaller boxes (:mod:`nlverify.verifier.bab`).

Rules (all as identities between affine functions, so they hold pointwise on the box):

* linear ``y = M z + b``: with ``M+ = (M + |M|)/2`` and ``M- = (M - |M|)/2``,
  ``y >= M+ L + M- U + b = M (L + U)/2 - |M| (U - L)/2 + b`` and
  ``y <= M (L + U)/2 + |M| (U - L)/2 + b``; ``M`` is the op's linear part (``forward(v) - forward(0)``)
  and ``|M|`` its ``forward_abs``, so no op needs a rule of its own;
* unary ``y = f(z)`` with the relaxation ``k_l z + b_l <= f(z) <= k_u z + b_u`` on ``z``'s box:
  ``y >= k_l+ L + k_l- U + b_l`` and ``y <= k_u+ U + k_u- L + b_u`` (``k+ = max(k, 0)``, ``k- = min(k, 0)``);
* binary ``y = g(z1, z2)`` with planes ``a1 z1 + a2 z2 + c``: the same per input.

The relaxations are the CROWN ones (no alpha), built from the boxes of this very pass.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from nlverify.bounds.backward_steps import box_minimum
from nlverify.bounds.crown import nodes_needing_bounds
from nlverify.bounds.interval import Bounds, node_interval
from nlverify.bounds.relax import binary_relaxation, unary_relaxation
from nlverify.graph import Graph, Node

__all__ = ["AffineBounds", "forward_bounds", "forward_row_bounds"]


@dataclass
class AffineBounds:
    """``LA x + Lc <= z <= UA x + Uc`` on the input box; ``LA``/``UA`` ``(B, n, *shape)``."""

    LA: Tensor
    Lc: Tensor
    UA: Tensor
    Uc: Tensor

    def box(self, centre: Tensor, radius: Tensor) -> Bounds:
        """``min L`` and ``max U`` over the box ``centre +- radius`` (``(B, n)`` each)."""
        return _extreme(self.LA, self.Lc, centre, radius, -1.0), _extreme(self.UA, self.Uc, centre, radius, 1.0)


def _extreme(coeffs: Tensor, constant: Tensor, centre: Tensor, radius: Tensor, sign: float) -> Tensor:
    """``c + A . centre + sign |A| . radius`` with ``A`` ``(B, n, *shape)``."""
    view = (*centre.shape, *([1] * (coeffs.dim() - 2)))
    return constant + (coeffs * centre.reshape(view)).sum(1) + sign * (coeffs.abs() * radius.reshape(view)).sum(1)


def _split_sign(k: Tensor) -> tuple[Tensor, Tensor]:
    return k.clamp(min=0), k.clamp(max=0)


def _through_linear(node: Node, inputs: list[AffineBounds], offset: Tensor) -> AffineBounds:
    batch, n = inputs[0].LA.shape[:2]

    def linear_part(tensors: list[Tensor], with_offset: bool) -> Tensor:
        out = node.op.forward(*tensors)
        return out if with_offset else out - offset

    def flat(t: Tensor) -> Tensor:  # (B, n, *shape) -> (B * n, *shape), the op's batch axis
        return t.reshape(batch * n, *t.shape[2:])

    mid_a = [flat((b.LA + b.UA) / 2) for b in inputs]
    half_a = [flat((b.UA - b.LA) / 2) for b in inputs]
    mid_c = [(b.Lc + b.Uc) / 2 for b in inputs]
    half_c = [(b.Uc - b.Lc) / 2 for b in inputs]
    m_a = linear_part(mid_a, False)
    abs_a = node.op.forward_abs(*half_a)
    m_c = linear_part(mid_c, True)
    abs_c = node.op.forward_abs(*half_c)
    shape = m_a.shape[1:]
    m_a, abs_a = m_a.reshape(batch, n, *shape), abs_a.reshape(batch, n, *shape)
    return AffineBounds(m_a - abs_a, m_c - abs_c, m_a + abs_a, m_c + abs_c)


def _combine(slope: Tensor, first: tuple[Tensor, Tensor], second: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
    """``slope+ * first + slope- * second`` for affine functions given as ``(A, c)``."""
    positive, negative = _split_sign(slope)
    return (positive.unsqueeze(1) * first[0] + negative.unsqueeze(1) * second[0],
            positive * first[1] + negative * second[1])


def _through_unary(node: Node, z: AffineBounds, box: Bounds) -> AffineBounds:
    family = unary_relaxation(node.op.activation, **node.op.params)
    r = family.relax(box[0], box[1], None)
    lower_a, lower_c = _combine(r.lower_slope, (z.LA, z.Lc), (z.UA, z.Uc))
    upper_a, upper_c = _combine(r.upper_slope, (z.UA, z.Uc), (z.LA, z.Lc))
    return AffineBounds(lower_a, lower_c + r.lower_intercept, upper_a, upper_c + r.upper_intercept)


def _through_binary(node: Node, zs: list[AffineBounds], boxes: list[Bounds]) -> AffineBounds:
    (lx, ux), (ly, uy) = boxes
    r = binary_relaxation(node.op.activation).relax(lx, ux, ly, uy, None)
    x, y = zs
    la_x, lc_x = _combine(r.lower_x, (x.LA, x.Lc), (x.UA, x.Uc))
    la_y, lc_y = _combine(r.lower_y, (y.LA, y.Lc), (y.UA, y.Uc))
    ua_x, uc_x = _combine(r.upper_x, (x.UA, x.Uc), (x.LA, x.Lc))
    ua_y, uc_y = _combine(r.upper_y, (y.UA, y.Uc), (y.LA, y.Lc))
    return AffineBounds(la_x + la_y, lc_x + lc_y + r.lower_intercept, ua_x + ua_y, uc_x + uc_y + r.upper_intercept)


CHUNK_BYTES = 1 << 30  # affine coefficients held at once by one forward pass (see boxes_per_chunk)


def boxes_per_chunk(graph: Graph, inputs: int, element_size: int) -> int:
    """Boxes one forward pass may take at once: a pass holds ``LA`` and ``UA`` of at most every node,
    ``2 (n + 1)`` numbers per neuron and box, and must stay within :data:`CHUNK_BYTES`. (It drops a node's
    after its last consumer, so it holds fewer: cgan, 256 boxes, peak RSS 2.59 -> 1.89 GB when that came
    in; the chunk size still counts every node, leaving room for the per-node temporaries.) cgan (5 inputs, 165,000
    neurons): 7.9 MB per box, so 135 boxes per pass; a 4,096-child round in one pass would hold 32 GB.
    lsnc 9-27 kB and ACAS Xu 30 kB per box: 39,000-121,000 boxes per pass (only lsnc output's largest
    strong-scoring batches, 8,192 domains x 16 children, are split)."""
    per_box = 2 * (inputs + 1) * graph.num_neurons * element_size
    return max(1, CHUNK_BYTES // max(per_box, 1))


def _in_chunks(graph: Graph, lower: Tensor, compute) -> list:
    """``compute(slice)`` over the boxes in chunks of :func:`boxes_per_chunk`."""
    batch = lower.shape[0]
    step = boxes_per_chunk(graph, lower[0].numel(), lower.element_size())
    return [compute(slice(i, i + step)) for i in range(0, batch, step)]


def forward_bounds(graph: Graph, lower: Tensor, upper: Tensor, propagator) -> dict[str, Bounds]:
    """Boxes for every node of ``graph`` on the input boxes ``(B, n)``: forward affine bounds concretised
    on the box and intersected with IBP (see the module docstring). ``propagator`` supplies the linear
    ops' constant terms (cached)."""
    parts = _in_chunks(graph, lower, lambda part: _forward(graph, lower[part], upper[part], propagator)[0])
    if len(parts) == 1:
        return parts[0]
    return {name: (torch.cat([p[name][0] for p in parts]), torch.cat([p[name][1] for p in parts]))
            for name in parts[0]}


def forward_row_bounds(graph: Graph, lower: Tensor, upper: Tensor, propagator, C: Tensor) -> Tensor:
    """``(B, m)`` lower bounds of the rows ``C y`` (``C`` ``(B, m, outputs)``) from the output's forward
    affine bounds alone: ``C+ L(x) + C- U(x)`` minimised over the box, at least the rows' bound from the
    output box. No backward pass: looser than CROWN on the same boxes, and cheap enough to score many
    candidate splits (:meth:`~nlverify.verifier.input_split.InputSplitSearch.strong_input_scores`)."""
    parts = _in_chunks(graph, lower, lambda part: _row_bounds(graph, lower[part], upper[part], propagator, C[part]))
    return parts[0] if len(parts) == 1 else torch.cat(parts)


def _row_bounds(graph: Graph, lower: Tensor, upper: Tensor, propagator, C: Tensor) -> Tensor:
    boxes, output = _forward(graph, lower, upper, propagator)
    batch, n = lower.shape[0], lower.shape[1]
    positive, negative = C.clamp(min=0), C.clamp(max=0)
    coeffs = (positive @ output.LA.reshape(batch, n, -1).transpose(1, 2)
              + negative @ output.UA.reshape(batch, n, -1).transpose(1, 2))  # (B, m, n)
    constant = ((positive * output.Lc.reshape(batch, 1, -1)).sum(-1)
                + (negative * output.Uc.reshape(batch, 1, -1)).sum(-1))
    affine = constant + box_minimum(coeffs, lower.reshape(batch, n), upper.reshape(batch, n))
    y_low, y_up = (b.reshape(batch, 1, -1) for b in boxes[graph.output_name])
    interval = (positive * y_low + negative * y_up).sum(-1)
    return torch.maximum(affine, interval)


def _forward(graph: Graph, lower: Tensor, upper: Tensor, propagator) -> tuple[dict[str, Bounds], AffineBounds]:
    """Every node's box and the output node's affine bounds (see :func:`forward_bounds`)."""
    batch, n = lower.shape[0], lower.shape[1]
    lower = lower.reshape(batch, n)
    upper = upper.reshape(batch, n)
    centre, radius = (lower + upper) / 2, (upper - lower) / 2
    shape = graph.input_shape
    eye = torch.eye(n, dtype=lower.dtype, device=lower.device).reshape(1, n, *shape).expand(batch, n, *shape)
    zeros = lower.new_zeros(batch, *shape)
    affine = {graph.input_name: AffineBounds(eye, zeros, eye, zeros)}
    # only the boxes that relaxations read (and the output's) are worth concretising; the rest get IBP's
    concretised = nodes_needing_bounds(graph) | {graph.output_name}
    bounds: dict[str, Bounds] = {graph.input_name: (lower.reshape(batch, *shape), upper.reshape(batch, *shape))}
    # a node's affine bounds (batch x n x its size) are dropped after its last consumer, so the pass holds
    # only the live frontier's instead of every node's
    last_consumer = {name: position for position, node in enumerate(graph) for name in node.inputs}
    for position, node in enumerate(graph):
        if node.kind == "input":
            continue
        inputs = [affine[i] for i in node.inputs]
        boxes = [bounds[i] for i in node.inputs]
        if node.kind == "linear":
            result = _through_linear(node, inputs, propagator.offset(node, lower))
        elif node.kind == "unary":
            result = _through_unary(node, inputs[0], boxes[0])
        elif node.kind == "binary":
            result = _through_binary(node, inputs, boxes)
        else:
            raise ValueError(f"forward bounds have no rule for node kind '{node.kind}'")
        low, up = node_interval(node, boxes)
        if node.name in concretised:
            forward_low, forward_up = result.box(centre, radius)
            low, up = torch.maximum(forward_low, low), torch.minimum(forward_up, up)
            # both ends are sound; crossing ends can only be rounding on a (near-)constant node: keep both
            low, up = torch.minimum(low, up), torch.maximum(low, up)
        bounds[node.name] = (low, up)
        affine[node.name] = result
        for name in node.inputs:
            if last_consumer[name] == position and name != graph.output_name:
                affine.pop(name, None)
    return bounds, affine[graph.output_name]

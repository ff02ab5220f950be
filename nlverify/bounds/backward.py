"""Backward linear bound propagation (the graph walk of CROWN), batched over boxes and specifications.

For a start node ``s`` and coefficients ``A`` of shape ``(B, S, *shape_s)`` we compute, per box b and row
j, a lower bound of ``A[b, j] . x_s`` over the box. Walking the graph backwards, each node turns the
coefficients on its output into coefficients on its inputs plus a constant:

* linear op ``y = L(x) + o``:  ``A . y = (A L) . x + A . o``  (exact);
* unary op with relaxation lines ``ls*x + li <= f(x) <= us*x + ui``:
  ``A . f(x) >= (A+ ls + A- us) . x + A+ . li + A- . ui`` with ``A+ = max(A, 0)``, ``A- = min(A, 0)``;
* binary op with relaxation planes: the same per input; or, for a product whose factors are known as
  affine functions of a small input, a second-order bound sent straight to the input
  (:mod:`nlverify.bounds.second_order`).

At the input box ``[l, u]``: ``A . x >= A+ . l + A- . u``. Upper bounds are lower bounds of ``-A``.
Relaxations come from a callback, so alpha-CROWN reuses this traversal with its own parameters.

Cost (the arithmetic of each step is in :mod:`nlverify.bounds.backward_steps`)
------------------------------------------------------------------------------
Three rewrites change the cost of a pass, not its bound (in exact arithmetic):

* *Box images.* A node reached from the input only through box-exact linear ops (:func:`box_exact`:
  elementwise scale-and-shift, reshape, transpose, slice) has as IBP box exactly the image of the input
  box, so ``min over the input box of A . L(x)`` equals ``min over that node's box of A . y``. The walk
  concretises there (on the node, or fused with the linear op in front of it) once every remaining term
  sits on that node, skipping e.g. the input normalisation's full-size pass.
* *Shared coefficients.* Coefficients equal for every box (a start's identity rows, the specification)
  arrive expanded with batch stride 0; a linear op then transforms one copy and expands the result.
* *Chunks of boxes.* Coefficients are by far the largest tensors of a pass (64 boxes x 400 rows x 200
  neurons = 20 MB); the walk runs a few boxes at a time (about :data:`CHUNK_BYTES` of coefficients) so
  that each elementwise step works in cache instead of on freshly allocated memory. Boxes never
  interact in a pass, so every box's bound is the one it gets alone.
"""
from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Callable

import torch
from torch import Tensor

from nlverify.bounds.backward_steps import (
    box_minimum, box_minimum_through, dot, positive_negative, through_relaxation,
)
from nlverify.bounds.interval import Bounds
from nlverify.bounds.second_order import InputQuadraticRelaxation, product_lower_terms
from nlverify.bounds.relax import LinearRelaxation, PlaneRelaxation
from nlverify.graph import Graph, Node
from nlverify import faults  # TEST-ONLY bug injection; inert unless NLVERIFY_INJECT_BUG is set

RelaxationFor = Callable[[Node, str], "LinearRelaxation | PlaneRelaxation | InputQuadraticRelaxation"]

#: Target size of the coefficients of one chunk of boxes (see the module docstring).
CHUNK_BYTES = 4 << 20


@dataclass
class SplitConstraints:
    """Branch-and-bound decisions of a batch of domains: neuron ``j`` of node ``k`` restricted to
    ``[lower[k][b, j], upper[k][b, j]]`` in domain ``b`` (``-inf``/``+inf`` where not split).

    They act twice. (1) The node's box is intersected with them, so every relaxation that reads the box
    is rebuilt on the child interval. (2) At the output, each finite constraint enters the backward pass
    as a Lagrangian term (beta-CROWN, generalised to a split point p != 0): for ``x_j <= p`` and any
    ``beta >= 0``, ``g(x) >= g(x) + beta (x_j - p)`` on the domain, so adding ``beta e_j`` to the
    coefficients of node k and ``-beta p`` to the constant keeps a valid lower bound; for ``x_j >= p``
    the sign flips. A domain whose boxes become empty is infeasible and closed vacuously.
    """

    lower: dict[str, Tensor]
    upper: dict[str, Tensor]

    def nodes(self) -> set[str]:
        return set(self.lower) | set(self.upper)

    def restrict(self, name: str, low: Tensor, up: Tensor) -> tuple[Tensor, Tensor]:
        if name in self.lower:
            low = torch.maximum(low, self.lower[name])
        if name in self.upper:
            up = torch.minimum(up, self.upper[name])
        return low, up


BetaTerms = dict[str, tuple[Tensor, Tensor]]  # node -> (beta for x >= lower, beta for x <= upper), each (B,S,*shape)


def box_exact(graph: Graph, node: Node) -> bool:
    """Whether ``node`` maps every box of its single input exactly onto a box: an entrywise linear op
    (each output entry an affine function of one input entry) whose output has no more entries than its
    input (so no entry is copied). Then IBP through it is exact and loses no correlation."""
    if node.kind != "linear" or len(node.inputs) != 1 or not getattr(node.op, "entrywise", False):
        return False
    return node.size <= graph.nodes[node.inputs[0]].size


def _shared_by_boxes(coeffs: Tensor) -> bool:
    """Coefficients expanded over the boxes (batch stride 0): the same for every box."""
    return coeffs.shape[0] > 1 and coeffs.stride(0) == 0


class BackwardPropagator:
    """The graph walk of CROWN, independent of how relaxations are chosen."""

    def __init__(self, graph: Graph) -> None:
        self.graph = graph
        self._ancestors: dict[str, list[Node]] = {}
        self._offsets: dict[tuple[str, torch.dtype, torch.device], Tensor] = {}
        self._upstream: dict[str, set[str]] = {}
        self._box_images: set[str] | None = None

    def ancestors(self, start: str) -> list[Node]:
        """``start`` and every node it depends on, in reverse topological order."""
        if start not in self._ancestors:
            needed = {start}
            ordered = []
            for node in reversed(list(self.graph)):
                if node.name in needed:
                    ordered.append(node)
                    needed.update(node.inputs)
            self._ancestors[start] = ordered
        return self._ancestors[start]

    def upstream(self, name: str) -> set[str]:
        """Names of the strict ancestors of ``name``."""
        if name not in self._upstream:
            self._upstream[name] = {n.name for n in self.ancestors(name)} - {name}
        return self._upstream[name]

    def box_images(self) -> set[str]:
        """Nodes reached from the input through box-exact linear ops only (:func:`box_exact`), the input
        included: the IBP box of such a node is exactly the image of the input box."""
        if self._box_images is None:
            images = {self.graph.input_name}
            for node in self.graph:
                if box_exact(self.graph, node) and node.inputs[0] in images:
                    images.add(node.name)
            self._box_images = images
        return self._box_images

    def offset(self, node: Node, like: Tensor) -> Tensor:
        key = (node.name, like.dtype, like.device)
        if key not in self._offsets:
            shapes = [self.graph.nodes[i].shape for i in node.inputs]
            with torch.no_grad():
                self._offsets[key] = node.op.offset(shapes, like)
        return self._offsets[key]

    def lower_bound(self, start: str, coeffs: Tensor, bounds: dict[str, Bounds],
                    relaxation_for: RelaxationFor, splits: SplitConstraints | None = None,
                    betas: BetaTerms | None = None, record: dict[str, Tensor | None] | None = None) -> Tensor:
        """Lower bound ``(B, S)`` of ``coeffs . x_start`` with ``coeffs`` of shape ``(B, S, *shape)``;
        ``betas`` (with ``splits``) adds the split constraints' Lagrangian terms.

        ``record`` (optional): for every node named among its keys, the coefficients ``A`` (``(B, S,
        *shape)``) that reach that node's output are stored under its name, i.e. the bound is
        ``A . x_node + (terms of the other nodes)``; a key whose node is not reached is left as is.
        Recording reads the tensors only and never changes the bound."""
        if faults.ACTIVE: relaxation_for = faults.skip_intercept(self.graph, relaxation_for)  # TEST-ONLY fault hook
        batch = coeffs.shape[0]
        step = self._boxes_per_chunk(start, coeffs)
        if betas or step >= batch:
            return self._walk(start, coeffs, bounds, relaxation_for, splits, betas, record)
        names = self.upstream(start) | {start}
        relaxations = _BoxRange(relaxation_for, batch)
        parts, records = [], []
        for first in range(0, batch, step):
            boxes = slice(first, min(first + step, batch))
            # filter before unpacking: ``bounds`` may also hold non-box entries (crown.INFEASIBLE, a mask)
            chunk_bounds = {name: (_box_rows(box[0], boxes, batch), _box_rows(box[1], boxes, batch))
                            for name, box in bounds.items() if name in names}
            chunk_record = dict.fromkeys(record) if record is not None else None
            parts.append(self._walk(start, coeffs[boxes], chunk_bounds, relaxations.restricted(boxes), None, None,
                                    chunk_record))
            records.append(chunk_record)
        if record is not None:
            for name in record:
                pieces = [r[name] for r in records]
                if all(p is not None for p in pieces):
                    record[name] = torch.cat(pieces)
        return torch.cat(parts)

    def _boxes_per_chunk(self, start: str, coeffs: Tensor) -> int:
        """Boxes per chunk: about :data:`CHUNK_BYTES` of coefficients on the largest node of the walk
        (box images excluded: their step is chunked further by ``box_minimum_through``)."""
        images = self.box_images()
        largest = max((n.size for n in self.ancestors(start) if n.name not in images), default=1)
        per_box = coeffs.shape[1] * largest * coeffs.element_size()
        return max(1, CHUNK_BYTES // max(per_box, 1))

    def _may_stop_at(self, name: str, pending: dict, wanted: set[str]) -> bool:
        """Whether the walk may concretise on box image ``name``: every remaining term sits there and no
        recorded or split node lies upstream."""
        return name in self.box_images() and not pending and not (wanted & self.upstream(name))

    def _walk(self, start: str, coeffs: Tensor, bounds: dict[str, Bounds], relaxation_for: RelaxationFor,
              splits: SplitConstraints | None, betas: BetaTerms | None,
              record: dict[str, Tensor | None] | None) -> Tensor:
        """One backward pass over all of ``coeffs``' boxes (see :meth:`lower_bound`)."""
        pending: dict[str, Tensor] = {start: coeffs}
        constant = coeffs.new_zeros(coeffs.shape[:2])
        boxes = coeffs.shape[0]
        wanted = set(record or ()) | set(betas or ())

        def send(source: str, a_in: Tensor) -> None:
            pending[source] = pending[source] + a_in if source in pending else a_in

        for node in self.ancestors(start):
            a = pending.pop(node.name, None)
            if a is None:
                continue
            if record is not None and node.name in record:
                record[node.name] = a.expand(boxes, *a.shape[1:]) if a.shape[0] < boxes else a
            if betas and node.name in betas:
                a, constant = _add_split_terms(a, constant, betas[node.name], splits, node.name)
            if _shared_by_boxes(a):
                a = a[:1]  # one copy; every step below broadcasts it against the boxes
            # never at the start node: while its own box is being computed it has none yet
            if node.name != start and self._may_stop_at(node.name, pending, wanted):
                low, up = bounds[node.name]
                return constant + box_minimum(a, low, up)
            if node.kind == "linear":
                shapes = [self.graph.nodes[i].shape for i in node.inputs]
                if (len(node.inputs) == 1 and node.inputs[0] not in wanted
                        and self._may_stop_at(node.inputs[0], pending, wanted)):
                    # the last step, fused with the concretisation, a few boxes at a time
                    low, up = bounds[node.inputs[0]]
                    return constant + box_minimum_through(
                        node.op.forward, lambda part: node.op.backward(part, shapes)[0], a, low, up)
                constant = constant + dot(a, self.offset(node, a).unsqueeze(1))
                for source, a_in in zip(node.inputs, node.op.backward(a, shapes)):
                    send(source, a_in)
            elif node.kind == "unary":
                r = relaxation_for(node, start)
                a_in, step = through_relaxation(a, r.lower_slope, r.lower_intercept, r.upper_slope, r.upper_intercept)
                constant = constant + step
                send(node.inputs[0], a_in)
            elif node.kind == "binary":
                r = relaxation_for(node, start)
                if isinstance(r, InputQuadraticRelaxation):  # bounded straight onto the input
                    a_in, step = product_lower_terms(a, r)
                    constant = constant + step
                    send(self.graph.input_name, a_in.reshape(*a_in.shape[:2], *self.graph.input_shape))
                    continue
                a_pos, a_neg = positive_negative(a)
                constant = constant + dot(a_pos, r.lower_intercept) + dot(a_neg, r.upper_intercept)
                for source, (low_c, up_c) in zip(node.inputs, ((r.lower_x, r.upper_x), (r.lower_y, r.upper_y))):
                    send(source, a_pos * low_c + a_neg * up_c)
            else:
                raise ValueError(f"no backward rule for node kind '{node.kind}'")
        return constant


class _BoxRange:
    """A relaxation callback seen on a range of the boxes: every tensor with the full batch as its leading
    axis is sliced (a view), broadcast ones pass through. Each node's relaxation is fetched once and
    shared by all ranges (alpha-CROWN's relaxations are rebuilt on every call otherwise)."""

    def __init__(self, relaxation_for: RelaxationFor, batch: int) -> None:
        self.relaxation_for = relaxation_for
        self.batch = batch
        self._cache: dict[tuple[str, str], LinearRelaxation | PlaneRelaxation] = {}

    def restricted(self, boxes: slice) -> RelaxationFor:
        def relaxation_for(node: Node, start: str):
            key = (node.name, start)
            if key not in self._cache:
                self._cache[key] = self.relaxation_for(node, start)
            full = self._cache[key]
            return replace(full, **{f.name: self._slice(getattr(full, f.name), boxes) for f in fields(full)})
        return relaxation_for

    def _slice(self, value: Tensor, boxes: slice) -> Tensor:
        return _box_rows(value, boxes, self.batch)


def _box_rows(value: Tensor, boxes: slice, batch: int) -> Tensor:
    """The boxes' rows of a per-box tensor (leading axis ``batch``); broadcast tensors pass through."""
    return value[boxes] if value.dim() > 0 and value.shape[0] == batch else value


def _add_split_terms(a: Tensor, constant: Tensor, beta: tuple[Tensor, Tensor], splits: SplitConstraints,
                     name: str) -> tuple[Tensor, Tensor]:
    """``a . x + beta_up (x - upper) + beta_low (lower - x)``: both added terms are <= 0 on the domain.
    Constraints that are absent (infinite) contribute nothing whatever their beta."""
    beta_low, beta_up = beta
    split_low = splits.lower.get(name)
    split_up = splits.upper.get(name)
    if split_up is not None:
        finite = torch.isfinite(split_up).unsqueeze(1)
        beta_up = torch.where(finite, beta_up, torch.zeros_like(beta_up))
        a = a + beta_up
        constant = constant - dot(beta_up, torch.where(finite, split_up.unsqueeze(1), torch.zeros_like(beta_up)))
    if split_low is not None:
        finite = torch.isfinite(split_low).unsqueeze(1)
        beta_low = torch.where(finite, beta_low, torch.zeros_like(beta_low))
        a = a - beta_low
        constant = constant + dot(beta_low, torch.where(finite, split_low.unsqueeze(1), torch.zeros_like(beta_low)))
    return a, constant

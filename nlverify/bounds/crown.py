"""Backward linear bound propagation (CROWN) over a Graph, batched over boxes and specifications.

For a start node ``s`` and coefficients ``A`` of shape ``(B, S, *shape_s)`` we compute, per box b and row
j, a lower bound of ``A[b, j] . x_s`` over the box. Walking the graph backwards, each node turns the
coefficients on its output into coefficients on its inputs plus a constant:

* linear op ``y = L(x) + o``:  ``A . y = (A L) . x + A . o``  (exact);
* unary op with relaxation lines ``ls*x + li <= f(x) <= us*x + ui``:
  ``A . f(x) >= (A+ ls + A- us) . x + A+ . li + A- . ui`` with ``A+ = max(A, 0)``, ``A- = min(A, 0)``;
* binary op with relaxation planes: the same per input.

At the input box ``[l, u]``: ``A . x >= A+ . l + A- . u``. Upper bounds are lower bounds of ``-A``.
Relaxations come from a callback, so alpha-CROWN reuses this traversal with its own parameters.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from nlverify.bounds.interval import Bounds, node_interval
from nlverify.bounds.pairs import refine_pairs, worth_pairing
from nlverify.bounds.relax import (
    LinearRelaxation, PlaneRelaxation, binary_relaxation, unary_relaxation,
)
from nlverify.graph import Graph, Node
from nlverify import faults  # TEST-ONLY bug injection; inert unless NLVERIFY_INJECT_BUG is set

RelaxationFor = Callable[[Node, str], "LinearRelaxation | PlaneRelaxation"]


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


def _dot(coeffs: Tensor, values: Tensor) -> Tensor:
    """``sum(coeffs * values)`` over the node axes, with ``0 * inf`` read as 0 (no contribution).

    ``values`` shared by all rows (shape ``(B, 1, *shape)``, the common case) go through one batched
    matrix-vector product, which never materialises the ``(B, S, *shape)`` product."""
    finite = bool(torch.isfinite(values).all())
    if finite and values.dim() == coeffs.dim() and values.shape[1] == 1 and coeffs.dim() > 2:
        batch = coeffs.shape[0]
        flat_values = values.expand(batch, *values.shape[1:]).reshape(batch, -1, 1)
        return torch.bmm(coeffs.reshape(batch, coeffs.shape[1], -1), flat_values).squeeze(-1)
    product = coeffs * values
    if not finite:
        product = torch.where(coeffs == 0, torch.zeros_like(product), product)
    return product.flatten(2).sum(-1)


def _positive_negative(coeffs: Tensor) -> tuple[Tensor, Tensor]:
    return coeffs.clamp(min=0), coeffs.clamp(max=0)


class BackwardPropagator:
    """The graph walk of CROWN, independent of how relaxations are chosen."""

    def __init__(self, graph: Graph) -> None:
        self.graph = graph
        self._ancestors: dict[str, list[Node]] = {}
        self._offsets: dict[tuple[str, torch.dtype, torch.device], Tensor] = {}

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
        pending: dict[str, Tensor] = {start: coeffs}
        constant = coeffs.new_zeros(coeffs.shape[:2])
        for node in self.ancestors(start):
            a = pending.pop(node.name, None)
            if a is None:
                continue
            if record is not None and node.name in record:
                record[node.name] = a
            if betas and node.name in betas:
                a, constant = _add_split_terms(a, constant, betas[node.name], splits, node.name)
            if node.kind == "input":
                low, up = bounds[node.name]
                a_pos, a_neg = _positive_negative(a)
                constant = constant + _dot(a_pos, low.unsqueeze(1)) + _dot(a_neg, up.unsqueeze(1))
            elif node.kind == "linear":
                shapes = [self.graph.nodes[i].shape for i in node.inputs]
                constant = constant + _dot(a, self.offset(node, a).unsqueeze(1))
                for source, a_in in zip(node.inputs, node.op.backward(a, shapes)):
                    pending[source] = pending[source] + a_in if source in pending else a_in
            elif node.kind == "unary":
                r = relaxation_for(node, start)
                a_pos, a_neg = _positive_negative(a)
                constant = constant + _dot(a_pos, r.lower_intercept) + _dot(a_neg, r.upper_intercept)
                a_in = a_pos * r.lower_slope + a_neg * r.upper_slope
                source = node.inputs[0]
                pending[source] = pending[source] + a_in if source in pending else a_in
            elif node.kind == "binary":
                r = relaxation_for(node, start)
                a_pos, a_neg = _positive_negative(a)
                constant = constant + _dot(a_pos, r.lower_intercept) + _dot(a_neg, r.upper_intercept)
                for source, (low_c, up_c) in zip(node.inputs, ((r.lower_x, r.upper_x), (r.lower_y, r.upper_y))):
                    a_in = a_pos * low_c + a_neg * up_c
                    pending[source] = pending[source] + a_in if source in pending else a_in
            else:
                raise ValueError(f"no backward rule for node kind '{node.kind}'")
        return constant


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
        constant = constant - _dot(beta_up, torch.where(finite, split_up.unsqueeze(1), torch.zeros_like(beta_up)))
    if split_low is not None:
        finite = torch.isfinite(split_low).unsqueeze(1)
        beta_low = torch.where(finite, beta_low, torch.zeros_like(beta_low))
        a = a - beta_low
        constant = constant + _dot(beta_low, torch.where(finite, split_low.unsqueeze(1), torch.zeros_like(beta_low)))
    return a, constant


def identity_coefficients(shape: tuple[int, ...], batch: int, like: Tensor) -> Tensor:
    """``[I; -I]`` over a node's neurons, shape ``(B, 2n, *shape)``: lower and upper bounds in one pass."""
    n = 1
    for s in shape:
        n *= s
    eye = torch.eye(n, dtype=like.dtype, device=like.device).reshape(n, *shape)
    return torch.cat([eye, -eye]).unsqueeze(0).expand(batch, 2 * n, *shape)


def spec_coefficients(C: Tensor | None, graph: Graph, batch: int, like: Tensor) -> Tensor:
    """Coefficients ``(B, S, *output_shape)`` for the rows of ``C`` (``(S, m)`` or ``(B, S, m)``);
    ``None`` means every output."""
    if C is None:
        C = torch.eye(graph.num_outputs, dtype=like.dtype, device=like.device)
    C = C.to(dtype=like.dtype, device=like.device)
    if C.dim() == 2:
        C = C.unsqueeze(0).expand(batch, *C.shape)
    return C.reshape(batch, C.shape[1], *graph.output_shape)


@dataclass
class CrownOptions:
    """How intermediate bounds are obtained.

    ``intermediate="crown"`` bounds every node that feeds a nonlinearity by its own backward pass (and
    intersects with IBP); nodes with more than ``max_crown_neurons`` neurons use IBP alone, which keeps
    memory bounded on large convolutional layers.
    """

    intermediate: str = "crown"
    max_crown_neurons: int = 4096
    skip_exact_neurons: bool = True


class DefaultRelaxations:
    """Relaxations without free parameters (the CROWN choice), computed once per node and bound set."""

    def __init__(self, bounds: dict[str, Bounds]) -> None:
        self.bounds = bounds
        self._cache: dict[str, LinearRelaxation | PlaneRelaxation] = {}

    def __call__(self, node: Node, start: str) -> LinearRelaxation | PlaneRelaxation:
        if node.name not in self._cache:
            self._cache[node.name] = relax_node(node, self.bounds, None)
        return self._cache[node.name]


def relax_node(node: Node, bounds: dict[str, Bounds], alpha: Tensor | None) -> LinearRelaxation | PlaneRelaxation:
    """The node's relaxation on its input boxes, shaped to broadcast against ``(B, S, *shape)``."""
    if node.kind == "unary":
        low, up = bounds[node.inputs[0]]
        family = unary_relaxation(node.op.activation, **node.op.params)
        return family.relax(low.unsqueeze(1), up.unsqueeze(1), alpha)
    (lx, ux), (ly, uy) = (bounds[i] for i in node.inputs)
    family = binary_relaxation(node.op.activation)
    return family.relax(lx.unsqueeze(1), ux.unsqueeze(1), ly.unsqueeze(1), uy.unsqueeze(1), alpha)


def nodes_needing_bounds(graph: Graph) -> set[str]:
    return {i for node in graph.nonlinear_nodes() for i in node.inputs}


def propagate_bounds(graph: Graph, lower: Tensor, upper: Tensor, relaxation_for_factory,
                     propagator: BackwardPropagator, options: CrownOptions,
                     splits: SplitConstraints | None = None) -> dict[str, Bounds]:
    """Boxes for every node in topological order: IBP, tightened by CROWN on nodes that feed
    nonlinearities, then restricted by the domains' split constraints.
    ``relaxation_for_factory(bounds)`` returns the relaxation callback to use.

    An empty box (lower > upper after a split) marks an infeasible domain; it is clamped to the point
    ``lower`` so that relaxations stay finite, and :func:`infeasible_domains` reports it."""
    batch = lower.shape[0]
    bounds: dict[str, Bounds] = {
        graph.input_name: (lower.reshape(batch, *graph.input_shape), upper.reshape(batch, *graph.input_shape))
    }
    relaxation_for = relaxation_for_factory(bounds)
    needed = nodes_needing_bounds(graph) if options.intermediate == "crown" else set()
    for node in graph:
        if node.kind == "input":
            continue
        low, up = node_interval(node, [bounds[i] for i in node.inputs])
        if (node.name in needed and node.size <= options.max_crown_neurons and not getattr(node.op, "selects", False)
                and _has_nonlinear_ancestor(propagator, node)):
            pairs = _neurons_to_refine(graph, node, low, up) if options.skip_exact_neurons else None
            rows = None if pairs is None else pairs.any(0).nonzero().squeeze(1)
            if pairs is not None and isinstance(relaxation_for, DefaultRelaxations) and worth_pairing(pairs):
                low, up = refine_pairs(propagator, node, pairs, low, up, bounds, relaxation_for)
            elif rows is None:
                coeffs = identity_coefficients(node.shape, batch, low)
                both = propagator.lower_bound(node.name, coeffs, bounds, relaxation_for)
                n = node.size
                low = torch.maximum(low, both[:, :n].reshape(low.shape))
                up = torch.minimum(up, -both[:, n:].reshape(up.shape))
            elif rows.numel():
                low, up = _refine_rows(propagator, node, rows, low, up, bounds, relaxation_for)
        if faults.ACTIVE: low, up = faults.tighten_intermediate(low, up)  # TEST-ONLY fault hook (faults.py)
        if splits is not None and node.name in splits.nodes():
            low, up = splits.restrict(node.name, low, up)
            empty = (low > up).flatten(1).any(1)
            if empty.any():
                bounds[INFEASIBLE] = bounds.get(INFEASIBLE, torch.zeros_like(empty)) | empty
                up = torch.maximum(up, low)
        bounds[node.name] = (low, up)
    return bounds


def _neurons_to_refine(graph: Graph, node: Node, low: Tensor, up: Tensor) -> Tensor | None:
    """``(B, n)`` mask of the (box, neuron) pairs worth a backward pass, or None for all of them: a neuron
    on which every nonlinear consumer's relaxation is exact in its box is dropped (families opt in via
    ``is_exact``)."""
    exact = None
    for name in graph.consumers[node.name]:
        consumer = graph.nodes[name]
        if consumer.kind == "linear":
            continue
        family = unary_relaxation(consumer.op.activation, **consumer.op.params) if consumer.kind == "unary" else None
        if family is None or not hasattr(family, "is_exact"):
            return None
        mask = family.is_exact(low, up)
        exact = mask if exact is None else exact & mask
    if exact is None:
        return None
    return ~exact.reshape(exact.shape[0], -1)


def _refine_rows(propagator: BackwardPropagator, node: Node, rows: Tensor, low: Tensor, up: Tensor,
                 bounds: dict, relaxation_for) -> tuple[Tensor, Tensor]:
    """CROWN lower and upper bounds for the selected neurons only, intersected into the node's box."""
    batch, n, k = low.shape[0], node.size, rows.numel()
    eye = torch.zeros(k, n, dtype=low.dtype, device=low.device)
    eye[torch.arange(k, device=low.device), rows] = 1.0
    eye = eye.reshape(k, *node.shape)
    coeffs = torch.cat([eye, -eye]).unsqueeze(0).expand(batch, 2 * k, *node.shape)
    both = propagator.lower_bound(node.name, coeffs, bounds, relaxation_for)
    flat_low, flat_up = low.reshape(batch, n).clone(), up.reshape(batch, n).clone()
    flat_low[:, rows] = torch.maximum(flat_low[:, rows], both[:, :k])
    flat_up[:, rows] = torch.minimum(flat_up[:, rows], -both[:, k:])
    return flat_low.reshape(low.shape), flat_up.reshape(up.shape)


INFEASIBLE = "__infeasible__"  # key in a bounds dict: (B,) mask of domains whose split boxes are empty


def infeasible_domains(bounds: dict, batch: int, device) -> Tensor:
    """``(B,)`` mask of domains proved empty by their split constraints."""
    mask = bounds.get(INFEASIBLE)
    return torch.zeros(batch, dtype=torch.bool, device=device) if mask is None else mask


def close_infeasible(lower_bound: Tensor, bounds: dict) -> Tensor:
    """An empty domain contains no counterexample: its lower bound is +inf."""
    mask = infeasible_domains(bounds, lower_bound.shape[0], lower_bound.device)
    if mask.any():
        lower_bound = torch.where(mask.unsqueeze(1), torch.full_like(lower_bound, float("inf")), lower_bound)
    return lower_bound


def _has_nonlinear_ancestor(propagator: BackwardPropagator, node: Node) -> bool:
    """Whether a backward pass can beat IBP on this node. IBP is exact for a single affine map of the
    input box, so a node reached from the input by one linear op gets no pass; a chain of linear ops
    (whose IBP compounds |L1||L2| > |L1 L2|) or any nonlinearity on the way does."""
    ancestors = propagator.ancestors(node.name)
    linear_chain = [n for n in ancestors if n.kind == "linear"]
    return any(n.kind in ("unary", "binary") for n in ancestors) or len(linear_chain) > 1


def crown(graph: Graph, lower: Tensor, upper: Tensor, C: Tensor | None = None,
          options: CrownOptions | None = None, propagator: BackwardPropagator | None = None,
          need_upper: bool = True, splits: SplitConstraints | None = None,
          ) -> tuple[Tensor, Tensor | None, dict[str, Bounds]]:
    """CROWN bounds of ``C y`` on a batch of boxes: ``(lower (B,S), upper (B,S) or None, node boxes)``.

    With ``splits``, boxes are restricted per domain; an infeasible domain gets lower = +inf, upper = -inf.
    """
    options = options or CrownOptions()
    propagator = propagator or BackwardPropagator(graph)
    with torch.no_grad():
        factories: list[DefaultRelaxations] = []

        def factory(boxes):
            factories.append(DefaultRelaxations(boxes))
            return factories[-1]

        bounds = propagate_bounds(graph, lower, upper, factory, propagator, options, splits)
        relax = factories[0]  # reuse the relaxations the intermediate passes already built
        coeffs = spec_coefficients(C, graph, lower.shape[0], lower)
        if need_upper:
            rows = coeffs.shape[1]
            both = propagator.lower_bound(graph.output_name, torch.cat([coeffs, -coeffs], 1), bounds, relax)
            both = close_infeasible(both, bounds)
            return both[:, :rows], -both[:, rows:], bounds
        result = propagator.lower_bound(graph.output_name, coeffs, bounds, relax)
        return close_infeasible(result, bounds), None, bounds

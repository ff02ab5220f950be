"""CROWN bounds over a Graph, batched over boxes and specifications.

:func:`propagate_bounds` gives every node a box in topological order: IBP, tightened on the nodes that
feed nonlinearities by a backward pass of their own (intermediate CROWN); :func:`crown` then bounds the
specification ``C y`` by one more pass. The backward pass itself (the graph walk, its linear algebra,
its batching) is :class:`~nlverify.bounds.backward.BackwardPropagator`; relaxations come from a
callback, so alpha-CROWN reuses both with its own parameters.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from nlverify.bounds.backward import BackwardPropagator, BetaTerms, RelaxationFor, SplitConstraints
from nlverify.bounds.interval import Bounds, node_interval
from nlverify.bounds.pairs import refine_boxes, refine_pairs, worth_pairing
from nlverify.bounds.relax import (
    LinearRelaxation, PlaneRelaxation, binary_relaxation, unary_relaxation,
)
from nlverify.graph import Graph, Node
from nlverify import faults  # TEST-ONLY bug injection; inert unless NLVERIFY_INJECT_BUG is set

__all__ = [  # the walk's names are re-exported: callers import the engine from here
    "BackwardPropagator", "BetaTerms", "RelaxationFor", "SplitConstraints", "CrownOptions", "DefaultRelaxations",
    "INFEASIBLE", "close_infeasible", "crown", "has_own_pass", "identity_coefficients", "infeasible_domains",
    "nodes_needing_bounds", "refinement_candidates", "propagate_bounds", "relax_node", "row_coefficients", "spec_coefficients",
]


def identity_coefficients(shape: tuple[int, ...], batch: int, like: Tensor) -> Tensor:
    """``[I; -I]`` over a node's neurons, shape ``(B, 2n, *shape)``: lower and upper bounds in one pass."""
    n = 1
    for s in shape:
        n *= s
    eye = torch.eye(n, dtype=like.dtype, device=like.device).reshape(n, *shape)
    return torch.cat([eye, -eye]).unsqueeze(0).expand(batch, 2 * n, *shape)


def row_coefficients(shape: tuple[int, ...], rows: Tensor, batch: int, like: Tensor) -> Tensor:
    """``[E; -E]`` with ``E`` the unit rows of the neurons ``rows`` of a node: shape ``(B, 2k, *shape)``."""
    k = rows.numel()
    eye = torch.zeros(k, math.prod(shape), dtype=like.dtype, device=like.device)
    eye[torch.arange(k, device=like.device), rows] = 1.0
    eye = eye.reshape(k, *shape)
    return torch.cat([eye, -eye]).unsqueeze(0).expand(batch, 2 * k, *shape)


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

    ``intermediate="crown"`` bounds every node that feeds a nonlinearity by its own backward pass; nodes
    with more than ``max_crown_neurons`` neurons use IBP alone, which keeps memory bounded on large
    convolutional layers.

    ``intersect_ibp``: whether a neuron bounded by a backward pass also keeps IBP's bound where that is
    tighter. Tighter boxes are not always better: a relaxation's slopes are chosen from its box, and
    on a narrower box they can be steeper and carry more of the earlier layers' looseness into the
    bound. On eran_sigmoid's 6x200 net IBP is tighter than CROWN on most deep neurons (mean width of
    the 5th hidden layer 53 against 153), yet the output bound with the intersected boxes is far worse:
    CROWN's worst row on 9629 is -260 with them and -144 without (an independent dense implementation
    gives the same two figures), and alpha-CROWN proves 9629 in 8 iterations without them while with
    them it converges near -4.3. Either choice is sound (both boxes are).
    """

    intermediate: str = "crown"
    max_crown_neurons: int = 4096
    skip_exact_neurons: bool = True
    intersect_ibp: bool = False


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
    """The nodes whose boxes some relaxation reads: the inputs of the nonlinear nodes."""
    return {i for node in graph.nonlinear_nodes() for i in node.inputs}


def refinement_candidates(graph: Graph) -> set[str]:
    """The nodes intermediate CROWN may bound by a pass of their own: those feeding a nonlinearity and,
    behind every selection op among them, the nodes it selects from.

    A selection op (Slice, Gather, Reshape, Transpose, Expand, Concat, Where on a constant mask) copies
    entries, so the IBP image of its inputs' boxes is exactly its own box; it gets no pass
    (:func:`has_own_pass`). Its box is then as tight as its inputs' boxes, so those must be refined: a
    MaxMin exported as Slice -> Max/Min, or a GroupSort as Reshape -> TopK, otherwise reads the IBP box of
    the affine layer before it. :func:`propagate_bounds` keeps these added nodes' boxes inside their
    interval image, so nothing downstream reads a box wider than before they had a pass."""
    candidates = nodes_needing_bounds(graph)
    frontier = list(candidates)
    while frontier:
        node = graph.nodes[frontier.pop()]
        if not getattr(node.op, "selects", False):
            continue
        for name in node.inputs:
            if name not in candidates:
                candidates.add(name)
                frontier.append(name)
    return candidates


def propagate_bounds(graph: Graph, lower: Tensor, upper: Tensor, relaxation_for_factory,
                     propagator: BackwardPropagator, options: CrownOptions,
                     splits: SplitConstraints | None = None, refine_after: Tensor | None = None) -> dict[str, Bounds]:
    """Boxes for every node in topological order: IBP, replaced by CROWN's bound on the neurons of nodes
    that feed nonlinearities (or intersected with it, with ``options.intersect_ibp``), then restricted
    by the domains' split constraints.
    ``relaxation_for_factory(bounds)`` returns the relaxation callback to use.

    ``refine_after`` (``(B,)`` positions in ``graph``'s node order, with ``splits``): box ``b`` runs CROWN
    only on nodes after position ``refine_after[b]``; the others keep IBP within their split box. For
    branch and bound, where the split boxes are the parent's refined boxes and one node's box was
    narrowed: a CROWN pass of a node at or before that one sees the same ancestor boxes as the
    parent's, so it cannot tighten what the parent stored (skipping it is exact, not just sound).

    An empty box (lower > upper after a split) marks an infeasible domain; it is clamped to the point
    ``lower`` so that relaxations stay finite, and :func:`infeasible_domains` reports it."""
    batch = lower.shape[0]
    bounds: dict[str, Bounds] = {
        graph.input_name: (lower.reshape(batch, *graph.input_shape), upper.reshape(batch, *graph.input_shape))
    }
    relaxation_for = relaxation_for_factory(bounds)
    needed = refinement_candidates(graph) if options.intermediate == "crown" else set()
    # Nodes behind selections keep the intersection with IBP whatever options.intersect_ibp says: their
    # boxes were IBP's before they had a pass, and on a generated MaxMin CNN (soundness suite seed 19,
    # 0b0c46a8ba5e) their pass alone, not intersected, took CROWN's output row from -6.8 to -16666.
    behind_selections = needed - nodes_needing_bounds(graph)
    intersected = replace(options, intersect_ibp=True)
    for position, node in enumerate(graph):
        if node.kind == "input":
            continue
        low, up = node_interval(node, [bounds[i] for i in node.inputs])
        refinable = node.name in needed and has_own_pass(propagator, node, options)
        chosen = None if refine_after is None else refine_after < position  # (B,) boxes worth a pass
        if refinable and chosen is not None and not bool(chosen.all()):
            refinable = bool(chosen.any())
        else:
            chosen = None
        if refinable:
            low, up = _refine_node(propagator, node, low, up, bounds, relaxation_for,
                                   intersected if node.name in behind_selections else options, chosen)
        if faults.ACTIVE: low, up = faults.tighten_intermediate(low, up)  # TEST-ONLY fault hook (faults.py)
        if splits is not None and node.name in splits.nodes():
            low, up = splits.restrict(node.name, low, up)
            empty = (low > up).flatten(1).any(1)
            if empty.any():
                bounds[INFEASIBLE] = bounds.get(INFEASIBLE, torch.zeros_like(empty)) | empty
                up = torch.maximum(up, low)
        bounds[node.name] = (low, up)
    return bounds


def has_own_pass(propagator: BackwardPropagator, node: Node, options: CrownOptions) -> bool:
    """Whether intermediate CROWN bounds ``node`` (one that feeds a nonlinearity) by a backward pass of its
    own: not too large, not a selection op, and with something a pass can beat IBP on."""
    return (node.size <= options.max_crown_neurons and not getattr(node.op, "selects", False)
            and _has_nonlinear_ancestor(propagator, node))


def _refinement_plan(propagator: BackwardPropagator, node: Node, low: Tensor, up: Tensor, relaxation_for,
                     options: CrownOptions, chosen: Tensor | None) -> tuple[str, Tensor]:
    """How a node's backward pass is grouped, and the ``(B, n)`` mask of the (box, neuron) pairs it
    bounds. The pass covers the pairs that are not exact in their box (all pairs of the ``chosen``
    boxes when no family says which are exact), grouped the cheapest way:

    * ``"all"``: one pass over every neuron of every box;
    * ``"boxes"``: every neuron of the chosen boxes only;
    * ``"pairs"``: only the masked pairs, packed (default relaxations, sparse enough to pay off);
    * ``"rows"``: the neurons inexact in any box, on every box."""
    batch, n = low.shape[0], node.size
    pairs = neurons_to_refine(propagator.graph, node, low, up) if options.skip_exact_neurons else None
    if chosen is not None and pairs is not None:
        pairs = pairs & chosen.unsqueeze(1)
    default = isinstance(relaxation_for, DefaultRelaxations)
    if pairs is None:
        if chosen is not None and default:
            return "boxes", chosen.unsqueeze(1).expand(batch, n)
        return "all", torch.ones(batch, n, dtype=torch.bool, device=low.device)
    if default and worth_pairing(pairs):
        return "pairs", pairs
    return "rows", pairs.any(0, keepdim=True).expand(batch, n)


def _refine_node(propagator: BackwardPropagator, node: Node, low: Tensor, up: Tensor, bounds: dict,
                 relaxation_for, options: CrownOptions, chosen: Tensor | None) -> tuple[Tensor, Tensor]:
    """The node's box after its backward pass (grouped by :func:`_refinement_plan`). ``(low, up)`` is its
    IBP box; ``chosen`` (``(B,)`` or None) the boxes worth a pass. Without ``options.intersect_ibp`` the
    pairs the pass covers take its bound alone (IBP's where the pass gives no finite one)."""
    batch, n = low.shape[0], node.size
    grouping, refined = _refinement_plan(propagator, node, low, up, relaxation_for, options, chosen)
    interval = (low, up)
    if not options.intersect_ibp:  # the pairs the pass bounds start from (-inf, inf): its bound alone
        infinite = torch.full_like(low, float("inf"))
        low = torch.where(refined.reshape(low.shape), -infinite, low)
        up = torch.where(refined.reshape(up.shape), infinite, up)
    if grouping == "boxes":
        low, up = refine_boxes(propagator, node, refined[:, 0].nonzero().squeeze(1), low, up, bounds,
                               relaxation_for)
    elif grouping == "pairs":
        low, up = refine_pairs(propagator, node, refined, low, up, bounds, relaxation_for)
    elif grouping == "all":
        coeffs = identity_coefficients(node.shape, batch, low)
        both = propagator.lower_bound(node.name, coeffs, bounds, relaxation_for)
        low = torch.maximum(low, both[:, :n].reshape(low.shape))
        up = torch.minimum(up, -both[:, n:].reshape(up.shape))
    else:
        rows = refined[0].nonzero().squeeze(1)
        if rows.numel():
            low, up = _refine_rows(propagator, node, rows, low, up, bounds, relaxation_for)
    if not options.intersect_ibp:
        low = torch.where(torch.isfinite(low), low, interval[0])
        up = torch.where(torch.isfinite(up), up, interval[1])
    return low, up


def neurons_to_refine(graph: Graph, node: Node, low: Tensor, up: Tensor) -> Tensor | None:
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
    coeffs = row_coefficients(node.shape, rows, batch, low)
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
    (whose IBP compounds |L1||L2| > |L1 L2|) or any nonlinearity on the way does. (A chain whose other
    ops are box-exact is exact too, but its pass is cheap -- shared coefficients, concretised on the
    box image -- and CROWN's rounding there is slightly tighter than IBP's, so it keeps its pass.)"""
    ancestors = propagator.ancestors(node.name)
    linear_chain = [n for n in ancestors if n.kind == "linear"]
    return any(n.kind in ("unary", "binary") for n in ancestors) or len(linear_chain) > 1


def crown(graph: Graph, lower: Tensor, upper: Tensor, C: Tensor | None = None,
          options: CrownOptions | None = None, propagator: BackwardPropagator | None = None,
          need_upper: bool = True, splits: SplitConstraints | None = None, refine_after: Tensor | None = None,
          ) -> tuple[Tensor, Tensor | None, dict[str, Bounds]]:
    """CROWN bounds of ``C y`` on a batch of boxes: ``(lower (B,S), upper (B,S) or None, node boxes)``.

    With ``splits``, boxes are restricted per domain; an infeasible domain gets lower = +inf, upper = -inf.
    ``refine_after``: see :func:`propagate_bounds`.
    """
    options = options or CrownOptions()
    propagator = propagator or BackwardPropagator(graph)
    with torch.no_grad():
        factories: list[DefaultRelaxations] = []

        def factory(boxes):
            factories.append(DefaultRelaxations(boxes))
            return factories[-1]

        bounds = propagate_bounds(graph, lower, upper, factory, propagator, options, splits, refine_after)
        relax = factories[0]  # reuse the relaxations the intermediate passes already built
        coeffs = spec_coefficients(C, graph, lower.shape[0], lower)
        if need_upper:
            rows = coeffs.shape[1]
            both = propagator.lower_bound(graph.output_name, torch.cat([coeffs, -coeffs], 1), bounds, relax)
            both = close_infeasible(both, bounds)
            return both[:, :rows], -both[:, rows:], bounds
        result = propagator.lower_bound(graph.output_name, coeffs, bounds, relax)
        return close_infeasible(result, bounds), None, bounds

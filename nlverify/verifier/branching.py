"""Which neuron (or input dimension) to split, and where: vectorised over domains and candidates.

Activation splitting: BBPS-style scores
---------------------------------------
For a batch of domains with node boxes ``bounds`` and one specification row ``c`` per domain, one
CROWN backward pass (default relaxations) writes the lower bound as

    L = sum over nonlinear nodes N of  A_N . y_N  + (terms of linear nodes and the input),

and records ``A_N`` (``(k, *shape)``) where it reaches the output ``y_N = f(x_T)`` of each nonlinear
node (``x_T`` is the node's input, the *split target*). Node N's relaxation enters the bound through

    A_N+ (ls x + li) + A_N- (us x + ui)  =  g x + h,   g = A_N+ ls + A_N- us,   h = A_N+ li + A_N- ui.

Splitting neuron ``j`` of ``x_T`` at ``p`` rebuilds the relaxation on the child intervals ``[l, p]`` and
``[p, u]`` with lines ``(g', h')``. The *shortcut* (GenBaB's branching-point-aware BBPS) keeps the
coefficients ``A`` fixed, treats the neuron's term as if it were concretised on its own, and compares

    delta_child = (g' x^ + h') - (g x^ + h),      x^ = clamp(x_T(x*), child),

where ``x*`` is the input point at which the CROWN bound is attained (``l`` where ``A_x > 0``, else ``u``)
and ``x_T(x*)`` the split target's value there (one forward pass): the bound is "where the relaxation
is evaluated", and moving to a child's relaxation changes the term by the difference of the lines at
that point (clamped into the child, where the other child cannot reach it). Summed over every nonlinear
node that reads ``x_T``. Without anchors the estimate falls back to concretising each term on its own,
``min over child of (g' x + h') - min over [l, u] of (g x + h)``. (Measured on small nets, the anchored
estimate ranks neurons by their actual one-split improvement with Spearman 0.1-0.96; evaluating the
difference at its worst point of the child instead is ~0 for chords, which share an endpoint.) The score of the neuron is the worse child ``min(delta_left, delta_right)``
and each domain splits its best-scoring neuron. Neurons whose every consumer is already exact on the
box (stable ReLU) are not candidates. For a binary node (``Mul``, ``Max``, ``Min``) both inputs are
candidates: splitting input ``x`` re-relaxes the planes on ``[l, p] x [ly, uy]`` (and ``[p, u] x [ly, uy]``)
and the plane terms ``gx x + gy y + h`` are concretised over the child and the parent box; splitting
``y`` likewise. So for a product the score decides *which* factor to split.

Where all BBPS estimates are zero (e.g. only stable ReLUs, or a loose bound coming from elsewhere) a
domain falls back to the baseline score.

Baseline (``method="width"``): ``(u - l) * |A_N|`` summed over the node's consumers, skipping neurons
whose relaxation is already exact (stable ReLU).

Input splitting
---------------
``input_split_scores``: the "smear" ``|A_x| * (u - l)`` per input dimension, with ``A_x`` the
coefficients that reach the input in the domain's CROWN bound (``L = min over the box of A_x . x + c``,
and ``|A_x|_i (u - l)_i`` is exactly what dimension ``i`` costs in that minimum). The split point is the
midpoint.

Split points come from :func:`split_points`: the pre-optimised table of
``nlverify.verifier.lookup.branching_points`` (or, for the ablation baseline, the midpoint), and 0 for
ReLU/LeakyReLU when 0 lies inside under either rule; any point not strictly inside the interval is
replaced by the midpoint.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from nlverify.bounds.crown import BackwardPropagator, DefaultRelaxations
from nlverify.bounds.interval import Bounds
from nlverify.bounds.relax import binary_relaxation, unary_relaxation
from nlverify.graph import Graph, Node
from nlverify.verifier.lookup import KINK_AT_ZERO, branching_points

__all__ = ["Decision", "anchor_values", "split_targets", "split_points", "coefficients_at", "bbps_scores", "width_scores",
           "choose_splits", "input_split_scores", "MIN_WIDTH"]

MIN_WIDTH = 1e-6  # intervals narrower than MIN_WIDTH * max(1, |l|, |u|) are not split further
BRANCHING_METHODS = ("bbps", "width")
SPLIT_POINT_RULES = ("table", "midpoint")  # "midpoint" is the ablation baseline (ReLU still splits at 0)


@dataclass
class Decision:
    """One split per domain: neuron ``neuron`` (flat index) of ``targets[target]`` at ``point``."""

    target: Tensor  # (k,) long, index into the list of split targets
    neuron: Tensor  # (k,) long
    point: Tensor  # (k,)
    score: Tensor  # (k,) the chosen candidate's score (-inf: nothing left to split)


def split_targets(graph: Graph) -> list[str]:
    """Nodes whose neurons can be split: every input of a nonlinear node, in topological order."""
    wanted = {i for node in graph.nonlinear_nodes() for i in node.inputs}
    return [node.name for node in graph if node.name in wanted]


def refinement_cost(graph: Graph) -> float:
    """Rough multiply-adds per domain of one CROWN pass over all split targets: for each target, its
    ``2 n`` rows times the neurons of every node before it in topological order (the input included)."""
    targets = set(split_targets(graph)) - {graph.input_name}
    total, neurons_before = 0.0, 0
    for node in graph:
        if node.name in targets:
            total += 2 * node.size * neurons_before
        neurons_before += node.size
    return total


def _consumers(graph: Graph, target: str) -> list[Node]:
    return [graph.nodes[c] for c in graph.consumers[target] if graph.nodes[c].kind in ("unary", "binary")]


def split_points(graph: Graph, target: str, lower: Tensor, upper: Tensor, rule: str = "table") -> Tensor:
    """Split point per neuron, strictly inside ``(lower, upper)`` wherever ``upper > lower``. ``rule``:
    ``"table"`` (pre-optimised branching points) or ``"midpoint"`` (the ablation baseline)."""
    if rule not in SPLIT_POINT_RULES:
        raise ValueError(f"unknown split-point rule '{rule}', expected one of {SPLIT_POINT_RULES}")
    mid = (lower + upper) / 2
    consumers = _consumers(graph, target)
    unary = [n for n in consumers if n.kind == "unary"]
    point = mid
    if len(unary) == len(consumers) == 1:  # one activation reads the target: use its table
        node = unary[0]
        activation = node.op.activation
        if rule == "table" or activation in KINK_AT_ZERO:  # the midpoint baseline still splits kinks at 0
            try:
                point = branching_points(activation, lower, upper, **node.op.params).to(mid)
            except (KeyError, ValueError, NotImplementedError):
                point = mid
    inside = (point > lower) & (point < upper) & torch.isfinite(point)
    return torch.where(inside, point, mid)


def coefficients_at(graph: Graph, propagator: BackwardPropagator, bounds: dict[str, Bounds], coeffs: Tensor,
                    names: list[str]) -> tuple[Tensor, dict[str, Tensor]]:
    """CROWN lower bound ``(k, S)`` of ``coeffs . y`` on fixed node boxes and the coefficients reaching
    each node in ``names`` (zeros for a node the pass does not reach)."""
    record: dict[str, Tensor | None] = {n: None for n in names}
    with torch.no_grad():
        bound = propagator.lower_bound(graph.output_name, coeffs, bounds, DefaultRelaxations(bounds),
                                       record=record)
    out = {}
    for name in names:
        a = record[name]
        out[name] = a if a is not None else coeffs.new_zeros((*coeffs.shape[:2], *graph.nodes[name].shape))
    return bound, out


def _children(lower: Tensor, upper: Tensor, point: Tensor) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
    return (lower, torch.minimum(point, upper)), (torch.maximum(point, lower), upper)


def _concretised_min(coef: Tensor, low: Tensor, up: Tensor) -> Tensor:
    """``min over x in [low, up] of coef * x``, with ``0 * inf`` read as 0."""
    value = torch.minimum(coef * low, coef * up)
    return torch.where(coef == 0, torch.zeros_like(value), value)


def _at(coef: Tensor, anchor: Tensor, low: Tensor, up: Tensor) -> Tensor:
    """``coef * clamp(anchor, low, up)``."""
    return coef * torch.minimum(torch.maximum(anchor, low), up)


def _unary_delta(node: Node, a: Tensor, box: Bounds, child: Bounds, anchor: Tensor | None = None) -> Tensor:
    family = unary_relaxation(node.op.activation, **node.op.params)
    a_pos, a_neg = a.clamp(min=0), a.clamp(max=0)
    parent, new = family.relax(*box), family.relax(*child)
    g = a_pos * parent.lower_slope + a_neg * parent.upper_slope
    h = a_pos * parent.lower_intercept + a_neg * parent.upper_intercept
    g_new = a_pos * new.lower_slope + a_neg * new.upper_slope
    h_new = a_pos * new.lower_intercept + a_neg * new.upper_intercept
    if anchor is not None:
        return (h_new - h) + _at(g_new, anchor, *child) - _at(g, anchor, *box)
    return (h_new + _concretised_min(g_new, *child)) - (h + _concretised_min(g, *box))


def _binary_delta(node: Node, a: Tensor, boxes: list[Bounds], children: list[Bounds],
                  anchors: list[Tensor] | None = None) -> Tensor:
    family = binary_relaxation(node.op.activation)
    a_pos, a_neg = a.clamp(min=0), a.clamp(max=0)
    parent = family.relax(*boxes[0], *boxes[1])
    new = family.relax(*children[0], *children[1])
    gx = a_pos * parent.lower_x + a_neg * parent.upper_x
    gy = a_pos * parent.lower_y + a_neg * parent.upper_y
    h = a_pos * parent.lower_intercept + a_neg * parent.upper_intercept
    gx_new = a_pos * new.lower_x + a_neg * new.upper_x
    gy_new = a_pos * new.lower_y + a_neg * new.upper_y
    h_new = a_pos * new.lower_intercept + a_neg * new.upper_intercept
    if anchors is not None:
        return (h_new - h) + _at(gx_new, anchors[0], *children[0]) - _at(gx, anchors[0], *boxes[0]) \
            + _at(gy_new, anchors[1], *children[1]) - _at(gy, anchors[1], *boxes[1])
    new_min = h_new + _concretised_min(gx_new, *children[0]) + _concretised_min(gy_new, *children[1])
    return new_min - (h + _concretised_min(gx, *boxes[0]) + _concretised_min(gy, *boxes[1]))


def _splittable(lower: Tensor, upper: Tensor) -> Tensor:
    scale = torch.maximum(torch.ones_like(lower), torch.maximum(lower.abs(), upper.abs()))
    return torch.isfinite(lower) & torch.isfinite(upper) & (upper - lower > MIN_WIDTH * scale)


def bbps_scores(graph: Graph, bounds: dict[str, Bounds], coefficients: dict[str, Tensor],
                points: dict[str, Tensor], anchors: dict[str, Tensor] | None = None) -> dict[str, Tensor]:
    """Per split target, the estimated worst-child improvement ``(k, *shape)`` of the lower bound
    (``-inf`` where the neuron cannot be split). ``coefficients[N]``: ``(k, *shape_N)`` for every
    nonlinear node N (one specification row per domain)."""
    scores = {}
    for target, point in points.items():
        low, up = bounds[target]
        left, right = _children(low, up, point)
        deltas = []
        for child in (left, right):
            total = torch.zeros_like(low)
            for node in _consumers(graph, target):
                a = coefficients[node.name]
                if node.kind == "unary":
                    delta = _unary_delta(node, a, (low, up), child, None if anchors is None else anchors[target])
                else:
                    if any(bounds[i][0].shape != a.shape for i in node.inputs):
                        continue  # broadcasting product: no per-neuron estimate
                    boxes = [bounds[i] for i in node.inputs]
                    kids = [child if i == target else bounds[i] for i in node.inputs]
                    delta = _binary_delta(node, a, boxes, kids,
                                          None if anchors is None else [anchors[i] for i in node.inputs])
                total = total + torch.nan_to_num(delta, nan=0.0, posinf=0.0, neginf=0.0)
            deltas.append(total)
        score = torch.minimum(*deltas)
        candidate = _splittable(low, up) & ~_all_exact(graph, target, bounds)
        scores[target] = torch.where(candidate, score, torch.full_like(score, -float("inf")))
    return scores


def _exact(node: Node, bounds: dict[str, Bounds]) -> Tensor | None:
    """Neurons of a unary node whose relaxation is exact (lower line == upper line), e.g. stable ReLUs."""
    if node.kind != "unary":
        return None
    r = unary_relaxation(node.op.activation, **node.op.params).relax(*bounds[node.inputs[0]])
    return (r.lower_slope == r.upper_slope) & (r.lower_intercept == r.upper_intercept)


def _all_exact(graph: Graph, target: str, bounds: dict[str, Bounds]) -> Tensor:
    """Neurons of ``target`` whose every consumer has an exact relaxation (nothing to gain by a split)."""
    low = bounds[target][0]
    exact = torch.ones_like(low, dtype=torch.bool)
    for node in _consumers(graph, target):
        flag = _exact(node, bounds)
        exact = exact & (flag if flag is not None and flag.shape == low.shape else torch.zeros_like(exact))
    return exact


def width_scores(graph: Graph, bounds: dict[str, Bounds], coefficients: dict[str, Tensor],
                 targets: list[str]) -> dict[str, Tensor]:
    """Baseline: ``(u - l) * sum over consumers of |A_N|`` (0 where every consumer is exact)."""
    scores = {}
    for target in targets:
        low, up = bounds[target]
        weight = torch.zeros_like(low)
        for node in _consumers(graph, target):
            a = coefficients[node.name].abs()
            if a.shape != low.shape:
                continue
            exact = _exact(node, bounds)
            weight = weight + (a if exact is None else torch.where(exact, torch.zeros_like(a), a))
        score = torch.nan_to_num((up - low) * weight, nan=0.0, posinf=0.0)
        scores[target] = torch.where(_splittable(low, up), score, torch.full_like(score, -float("inf")))
    return scores


def _flat_argmax(scores: dict[str, Tensor], targets: list[str]) -> tuple[Tensor, Tensor, Tensor]:
    """Best (score, target index, flat neuron index) per domain over all targets."""
    flat = torch.cat([scores[t].flatten(1) for t in targets], 1)
    sizes = torch.tensor([scores[t][0].numel() for t in targets], device=flat.device)
    best, index = flat.max(1)
    starts = torch.cumsum(sizes, 0) - sizes
    target = torch.searchsorted(torch.cumsum(sizes, 0), index, right=True)
    return best, target, index - starts[target]


def choose_splits(graph: Graph, bounds: dict[str, Bounds], coefficients: dict[str, Tensor],
                  method: str = "bbps", anchors: dict[str, Tensor] | None = None,
                  point_rule: str = "table") -> Decision:
    """The split of every domain (see the module docstring). ``coefficients``: ``(k, *shape)`` per
    nonlinear node, for the domain's chosen specification row; ``anchors``: ``(k, *shape)`` per split
    target, the point where each term is evaluated (see :func:`anchor_values`)."""
    if method not in BRANCHING_METHODS:
        raise ValueError(f"unknown branching method '{method}', expected one of {BRANCHING_METHODS}")
    targets = split_targets(graph)
    points = {t: split_points(graph, t, *bounds[t], rule=point_rule) for t in targets}
    width = width_scores(graph, bounds, coefficients, targets)
    w_best, w_target, w_neuron = _flat_argmax(width, targets)
    if method == "width":
        best, target, neuron = w_best, w_target, w_neuron
    else:
        bbps = bbps_scores(graph, bounds, coefficients, points, anchors)
        best, target, neuron = _flat_argmax(bbps, targets)
        fallback = ~(best > 0)
        target = torch.where(fallback, w_target, target)
        neuron = torch.where(fallback, w_neuron, neuron)
        best = torch.where(fallback & torch.isfinite(w_best), torch.zeros_like(best), best)
        best = torch.where(torch.isinf(w_best) & fallback, w_best, best)
    point = torch.zeros(target.shape, dtype=bounds[targets[0]][0].dtype, device=target.device)
    for t, name in enumerate(targets):
        mask = target == t
        if mask.any():
            flat = points[name].flatten(1)
            point = torch.where(mask, flat.gather(1, neuron.clamp(max=flat.shape[1] - 1).unsqueeze(1)).squeeze(1),
                                point)
    return Decision(target, neuron, point, best)


def anchor_values(graph: Graph, x: Tensor, bounds: dict[str, Bounds]) -> dict[str, Tensor]:
    """Values of every split target at the inputs ``x`` (``(k, n)``), shaped like the boxes."""
    with torch.no_grad():
        values = graph.run(x)
    return {t: values[t].reshape(bounds[t][0].shape) for t in split_targets(graph)}


def input_split_scores(a_input: Tensor, lower: Tensor, upper: Tensor) -> Tensor:
    """Smear ``|A_x| * (u - l)`` per domain and input dimension: ``(k, n)``; ``-inf`` where the box is
    already too thin to split."""
    score = a_input.abs() * (upper - lower)
    return torch.where(_splittable(lower, upper), score, torch.full_like(score, -float("inf")))

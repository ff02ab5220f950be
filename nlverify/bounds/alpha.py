"""alpha-CROWN: CROWN with the relaxations' free parameters optimised by projected gradient ascent.

Every nonlinear node with a free choice (``n_alpha > 0``) gets, for every start node that is bounded
through it (the output specification, and each intermediate node that feeds a nonlinearity), its own
``alpha`` of shape ``(n_alpha, B, S_start, *shape)`` in [0, 1]. Each relaxation maps any alpha in [0, 1]
to a sound relaxation, so every iterate gives a sound bound; we keep, per box and row, the best bound
seen. Alphas are returned so that a later call (a BaB child, a tighter re-run) can warm-start from them.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Callable

import torch
from torch import Tensor

from nlverify.bounds.crown import (
    INFEASIBLE, BackwardPropagator, BetaTerms, CrownOptions, SplitConstraints, close_infeasible,
    has_own_pass, propagate_bounds, refinement_candidates, relax_node, spec_coefficients,
)
from nlverify.bounds.interval import Bounds
from nlverify.bounds.relax import binary_relaxation, release_live, unary_relaxation
from nlverify.graph import Graph, Node

AlphaKey = tuple[str, str]  # (start node, nonlinear node)


@dataclass
class AlphaOptions:
    """``iterations`` of Adam on the alphas (and betas); the loop also ends early at ``deadline``
    (a ``time.monotonic()`` value) or when ``stop(best_lower_bounds)`` returns True (e.g. every
    property row it needs is already proved). Every iterate is sound, so stopping early only costs
    tightness."""

    iterations: int = 20
    learning_rate: float = 0.1
    lr_decay: float = 0.98
    optimize_intermediate: bool = True
    box_width_weight: float = 1.0  # see _box_width_penalty
    max_intermediate_bytes: int = 2 << 30  # optimise intermediate alphas only while this holds the
    # coefficients their passes keep for the gradient (see intermediate_alpha_bytes)
    crown: CrownOptions = field(default_factory=CrownOptions)
    deadline: float | None = None
    stop: Callable[[Tensor], bool] | None = None


def _family(node: Node):
    if node.kind == "unary":
        return unary_relaxation(node.op.activation, **node.op.params)
    return binary_relaxation(node.op.activation)


def _init_alpha(node: Node, bounds: dict[str, Bounds], rows: int) -> Tensor:
    family = _family(node)
    boxes = [b for i in node.inputs for b in bounds[i]]
    alpha = family.init_alpha(*boxes)  # (n_alpha, B, *shape)
    return alpha.unsqueeze(2).expand(alpha.shape[0], alpha.shape[1], rows, *alpha.shape[2:]).clone()


class AlphaRelaxations:
    """Relaxation callback that looks up (and creates on first use) the alpha of (start, node)."""

    def __init__(self, bounds: dict[str, Bounds], alphas: dict[AlphaKey, Tensor], rows: dict[str, int],
                 optimise: set[str]) -> None:
        self.bounds = bounds
        self.alphas = alphas
        self.rows = rows
        self.optimise = optimise
        self._default: dict[str, object] = {}

    def __call__(self, node: Node, start: str):
        if start in self.optimise and _family(node).n_alpha > 0:
            key = (start, node.name)
            if key not in self.alphas:
                self.alphas[key] = _init_alpha(node, self.bounds, self.rows[start]).requires_grad_(True)
            return relax_node(node, self.bounds, self.alphas[key])
        if node.name not in self._default:
            self._default[node.name] = relax_node(node, self.bounds, None)
        return self._default[node.name]


def _box_width_penalty(bounds: dict[str, Bounds]) -> Tensor | float:
    """Sum over the nodes whose box depends on the alphas of the mean finite width ``u - l`` (summed over
    the batch, averaged over neurons); 0 when no box does.

    Added (times ``box_width_weight``) to the loss, it gives each intermediate start node's alphas a
    direct objective, the tightness of that node's own box, besides the indirect one through the
    output. Each iterate stays sound whatever the loss; the term only steers the search. The landscape
    is far from convex: on eran_sigmoid 9044, optimising row 2 alone reached -2.43 after 140 iterations
    where optimising all nine rows reached -0.53 on that same row. Measured (worst open row, weight
    0 -> 1): 1655 after 60 iterations -2.58 -> -2.45 (eight of nine rows tighter), 9044 after 80
    -0.64 -> -0.58 (every row tighter); 0.1 keeps about half the gain and 5 or 20 give the same as 1.
    """
    total: Tensor | float = 0.0
    for lower, upper in bounds.values():
        if lower.requires_grad or upper.requires_grad:
            width = torch.nan_to_num(upper - lower, nan=0.0, posinf=0.0)
            total = total + width.flatten(1).mean(1).sum()
    return total


@dataclass
class _Parameters:
    """What alpha-CROWN optimises: the alphas per (start node, nonlinear node), created on first use
    for the start nodes in ``optimise`` (``rows`` says how many rows each start node has), and the
    split constraints' betas per node (lower and upper side)."""

    alphas: dict[AlphaKey, Tensor]
    betas: BetaTerms
    rows: dict[str, int]
    optimise: set[str]

    def tensors(self) -> list[Tensor]:
        return list(self.alphas.values()) + [b for pair in self.betas.values() for b in pair]

    def project(self) -> None:
        """Back into the sound ranges: alpha in [0, 1], beta >= 0."""
        with torch.no_grad():
            for value in self.alphas.values():
                value.clamp_(0.0, 1.0)
            for pair in self.betas.values():
                for value in pair:
                    value.clamp_(min=0.0)


def _node_boxes(graph: Graph, lower: Tensor, upper: Tensor, propagator: BackwardPropagator, options: AlphaOptions,
                splits: SplitConstraints | None, parameters: _Parameters) -> tuple[dict, AlphaRelaxations]:
    """Every node's box by a pass with the current parameters (and the ``INFEASIBLE`` mask, if any), with
    the relaxation callback for the output's pass (it shares the pass's cache of parameter-free
    relaxations)."""
    relaxations: list[AlphaRelaxations] = []

    def factory(bounds):
        relaxations.append(AlphaRelaxations(bounds, parameters.alphas, parameters.rows, parameters.optimise))
        return relaxations[-1]

    bounds = propagate_bounds(graph, lower, upper, factory, propagator, options.crown, splits)
    return bounds, (factory(bounds) if not relaxations else relaxations[0])


def _bound_with(graph: Graph, lower: Tensor, upper: Tensor, coeffs: Tensor, propagator: BackwardPropagator,
                options: AlphaOptions, splits: SplitConstraints | None, parameters: _Parameters,
                fixed: tuple[dict, AlphaRelaxations] | None = None) -> tuple[Tensor, dict[str, Bounds], Tensor]:
    """One CROWN pass with the current parameters: the rows' lower bounds (differentiable), the node
    boxes, and the same bounds detached with empty domains closed (``+inf``). ``fixed``: node boxes that
    no parameter moves and their relaxation callback (from :func:`_node_boxes`, once by the caller), so
    only the output's pass runs and parameter-free relaxations are built once."""
    with torch.enable_grad():
        if fixed is None:
            bounds, relax = _node_boxes(graph, lower, upper, propagator, options, splits, parameters)
        else:
            bounds, relax = dict(fixed[0]), fixed[1]
        result = propagator.lower_bound(graph.output_name, coeffs, bounds, relax, splits, parameters.betas)
    infeasible = bounds.pop(INFEASIBLE, None)
    detached = close_infeasible(result.detach(), {INFEASIBLE: infeasible} if infeasible is not None else {})
    return result, bounds, detached


def _optimise(graph: Graph, lower: Tensor, upper: Tensor, coeffs: Tensor, propagator: BackwardPropagator,
              options: AlphaOptions, splits: SplitConstraints | None,
              parameters: _Parameters) -> tuple[Tensor, dict[str, Bounds]]:
    """Adam on the parameters; returns the best row bounds and the tightest node boxes over all iterates
    (each iterate is sound, so the best of them is)."""
    best = None
    best_bounds: dict[str, Bounds] = {}
    optimiser = None
    fixed = None
    if parameters.optimise == {graph.output_name}:
        # only the output's alphas move: the node boxes are the same at every iteration, so bound them once
        with torch.no_grad():
            fixed = _node_boxes(graph, lower, upper, propagator, options, splits, parameters)
    for iteration in range(options.iterations + 1):
        result, bounds, detached = _bound_with(graph, lower, upper, coeffs, propagator, options, splits, parameters,
                                               fixed)
        if best is None:
            best = detached.clone()
            best_bounds = {k: (l.detach(), u.detach()) for k, (l, u) in bounds.items()}
        else:
            best = torch.maximum(best, detached)
        if iteration == options.iterations or not parameters.tensors():
            break
        if options.stop is not None and options.stop(best):
            break
        if options.deadline is not None and time.monotonic() > options.deadline:
            break
        if optimiser is None:
            optimiser = torch.optim.Adam(parameters.tensors(), lr=options.learning_rate)
            scheduler = torch.optim.lr_scheduler.ExponentialLR(optimiser, options.lr_decay)
        loss = -result.sum() + options.box_width_weight * _box_width_penalty(bounds)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        scheduler.step()
        parameters.project()
        # Intermediate boxes only tighten: keep the best seen for callers (all are sound).
        best_bounds = {k: (torch.maximum(best_bounds[k][0], l.detach()),
                           torch.minimum(best_bounds[k][1], u.detach())) for k, (l, u) in bounds.items()}
    return best, best_bounds


def intermediate_alpha_bytes(graph: Graph, propagator: BackwardPropagator, batch: int, options: CrownOptions,
                             element_size: int = 4) -> int:
    """Bytes of the coefficients that the intermediate nodes' backward passes hold for the gradient when
    their alphas are optimised: per node bounded by its own pass (``2 x size`` rows), the rows times the
    neurons of every node its pass walks through, per box. The autograd graph keeps each step's
    coefficients until the backward call, so this is a floor of the stage's memory. cgan's generator +
    discriminator (4,096-neuron starts walking back through 28,800-neuron layers): 12.9 GB per box, and
    the stage went past 23 GB and was killed; eran's 6x200 net 0.034 GB, every other shared benchmark
    at most 0.1 GB."""
    total = 0
    for name in refinement_candidates(graph):
        node = graph.nodes[name]
        if node.kind == "input" or not has_own_pass(propagator, node, options):
            continue  # bounded by IBP, no pass
        total += node_pass_bytes(propagator, node, batch, node.size, element_size)
    return total


def node_pass_bytes(propagator: BackwardPropagator, node: Node, batch: int, neurons: int, element_size: int) -> int:
    """Bytes of the coefficients a backward pass bounding ``neurons`` of ``node`` from both sides keeps for
    the gradient: ``2 x neurons`` rows times the neurons of every node it walks through, per box."""
    walked = sum(n.size for n in propagator.ancestors(node.name))
    return batch * 2 * neurons * walked * element_size


def alpha_crown(graph: Graph, lower: Tensor, upper: Tensor, C: Tensor | None = None,
                options: AlphaOptions | None = None, alphas: dict[AlphaKey, Tensor] | None = None,
                propagator: BackwardPropagator | None = None, need_upper: bool = True,
                splits: SplitConstraints | None = None, betas: BetaTerms | None = None,
                ) -> tuple[Tensor, Tensor | None, dict[str, Bounds], dict[AlphaKey, Tensor]]:
    """Optimised bounds of ``C y``: ``(lower (B,S), upper (B,S) or None, node boxes, alphas)``.

    ``alphas`` warm-starts the parameters (entries must match the batch and row counts). With
    ``splits`` (branch-and-bound domains), the split constraints also get multipliers ``beta >= 0``
    (see :class:`~nlverify.bounds.crown.SplitConstraints`), optimised jointly with alpha; ``betas``
    warm-starts them, and the final betas are returned in the alphas dict under keys ``("beta", node)``.
    """
    options = options or AlphaOptions()
    if options.optimize_intermediate and options.crown.skip_exact_neurons:
        # intermediate alphas are shaped for every row of their start node, so keep all rows
        options = replace(options, crown=replace(options.crown, skip_exact_neurons=False))
    propagator = propagator or BackwardPropagator(graph)
    batch = lower.shape[0]
    coeffs = spec_coefficients(C, graph, batch, lower)
    if need_upper:
        coeffs = torch.cat([coeffs, -coeffs], 1)
    rows_out = coeffs.shape[1]
    rows = {graph.output_name: rows_out}
    for name in refinement_candidates(graph):  # the start nodes of intermediate passes
        rows[name] = 2 * graph.nodes[name].size
    optimise = {graph.output_name}
    if options.optimize_intermediate and intermediate_alpha_bytes(
            graph, propagator, batch, options.crown, lower.element_size()) <= options.max_intermediate_bytes:
        optimise |= set(rows)
    warm_alphas = {k: v.detach().clone().requires_grad_(True) for k, v in (alphas or {}).items() if k[0] != "beta"}
    beta_terms: BetaTerms = {}
    if splits is not None:
        for name in splits.nodes():
            shape = (batch, rows_out, *graph.nodes[name].shape)
            warm = (betas or {}).get(name)
            pair = warm if warm is not None else (lower.new_zeros(shape), lower.new_zeros(shape))
            beta_terms[name] = tuple(b.detach().clone().requires_grad_(True) for b in pair)
    parameters = _Parameters(warm_alphas, beta_terms, rows, optimise)
    try:
        best, best_bounds = _optimise(graph, lower, upper, coeffs, propagator, options, splits, parameters)
    finally:
        # the last iterate is never back-propagated: drop the memo entries holding its graph
        release_live()
    final_alphas = {k: v.detach() for k, v in parameters.alphas.items()}
    final_alphas.update({("beta", name): tuple(b.detach() for b in pair) for name, pair in beta_terms.items()})
    if need_upper:
        half = rows_out // 2
        return best[:, :half], -best[:, half:], best_bounds, final_alphas
    return best, None, best_bounds, final_alphas

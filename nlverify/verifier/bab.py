"""Branch-and-bound over general nonlinearities (GenBaB-style), batched over domains.

A *problem* (one region box and one conjunction ``C y <= d``, see :mod:`nlverify.verifier.pipeline`) is
proved when every domain of a partition of its box is closed: some row ``i`` has

    lower bound of (C y)_i over the domain  -  d_i  >  proof_margin        (the pipeline's margin)

or the domain is empty (its split boxes contradict each other, lower bound ``+inf``). The open domains
live in a :class:`~nlverify.verifier.domains.DomainStore`; each round pops a batch (lowest gap first),
splits every domain in two, bounds *all* children in one batched call, closes what is proved, and
pushes the rest. Two ways to split:

* **activation split** (high-dimensional inputs): a domain is the region box plus a box per node that
  feeds a nonlinearity. One neuron per domain is chosen by BBPS
  (:mod:`nlverify.verifier.branching`) and split at its branching point ``p``
  (:func:`~nlverify.verifier.branching.split_points`), giving ``x_j <= p`` and ``x_j >= p``. Children are
  bounded by alpha-CROWN with *fixed intermediate boxes* (the parent's, narrowed by the split; IBP can
  only tighten them further): every stored box enters as a :class:`SplitConstraints` entry, so the
  relaxations are rebuilt on the child intervals and each constraint gets a beta multiplier
  (beta-CROWN generalised to ``p != 0``; a multiplier on a constraint that already holds is still a
  valid Lagrangian term). Alphas and betas are warm-started from the parent.
* **input split** (at most ``input_split_max_inputs`` inputs: ACAS Xu, control and power-flow nets): a
  domain is a sub-box, halved along one dimension, chosen by one of two rules. *Smear*: the largest
  ``|A_x| (u - l)`` of the row the domain's own bound favours. *Strong branching*: all ``2 n`` candidate
  children of every domain are bounded at once with cheap forward affine bounds
  (:mod:`nlverify.bounds.forward`) and the dimension whose worse child is best wins. With few inputs
  (``STRONG_BRANCHING_MAX_INPUTS``) the rules alternate by depth (strong at even depth, smear at odd).
  Measured on ACAS Xu (domains to a proof, 30-55 s budget): 2_2 prop_1 smear 62,721, strong 203,
  alternate 203; 1_1 prop_3 smear 6,017, strong >47,000 (unproved), alternate 5,519; 1_1 prop_5 problem
  0 smear 1,381, strong >81,000 (unproved), alternate 499; 1_8 prop_2 smear >197,000 and strong >76,000
  (both unproved), alternate 601. Each pure rule is myopic on some instances; on these four the mixed
  tree matched or beat the better one. A child that the parent's own linear bound ``A x + c``
  (valid on any sub-box) already closes is not bounded again; the others are bounded by CROWN with CROWN
  intermediate bounds (thousands of boxes per call).

A child's lower bound is the max of its own bound and its parent's (the parent's bound holds on the
child, a subset), so bounds never get worse down the tree.

Falsification inside BaB: each round evaluates the model at the minimiser of every popped domain's
linear lower bound (``x* = l where A_x > 0 else u``) and at box centres; every ``attack_every`` rounds a
short PGD runs from the worst domains' ``x*``. A point with ``max_i (C f(x) - d)_i <= 0`` is returned
as a candidate; the pipeline reports ``sat`` only after onnxruntime confirms it on the original file.

Verdicts per problem: proved when the store empties; a candidate counterexample; otherwise not proved
(deadline, memory cap of the store, or a domain too thin to split).
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from nlverify.bounds.alpha import AlphaOptions, alpha_crown
from nlverify.bounds.forward import forward_bounds
from nlverify.bounds.crown import (
    CrownOptions, DefaultRelaxations, SplitConstraints, close_infeasible, crown, propagate_bounds,
    spec_coefficients,
)
from nlverify.graph import Graph
from nlverify import faults  # TEST-ONLY bug injection; inert unless NLVERIFY_INJECT_BUG is set
from nlverify.verifier.branching import (
    anchor_values, choose_splits, coefficients_at, input_split_scores, split_targets,
)
from nlverify.verifier.domains import DomainStore, DomainStoreFull
from nlverify.verifier.pipeline import Problem, ProblemOutcome, proof_margin, rows_proved

__all__ = ["BabOptions", "BabReport", "branch_and_bound", "bab_problem", "bab_search", "search_groups", "domain_gap", "closed_domains"]

log = logging.getLogger(__name__)

SPLIT_MODES = ("auto", "input", "activation")
STRONG_BRANCHING_MAX_INPUTS = 8  # "auto" input branching tries every dimension up to this many inputs
INPUT_BRANCHING = ("auto", "smear", "strong", "alternate")


@dataclass
class BabOptions:
    mode: str = "auto"  # "auto": input split when the model has <= input_split_max_inputs inputs
    input_split_max_inputs: int = 32
    batch_domains: int = 256  # activation split: domains popped per round (2x children bounded)
    input_batch_domains: int = 2048  # input split: domains popped per round
    iterations: int = 8  # alpha/beta iterations per activation-split round
    root_iterations: int = 30  # output alpha iterations at the activation-split root
    learning_rate: float = 0.1
    branching: str = "bbps"  # or "width" (baseline, for ablation)
    split_points: str = "table"  # or "midpoint" (baseline, for ablation); ReLU/LeakyReLU split at 0 either way
    input_alpha_iterations: int = 0  # >0: alpha-CROWN (output alphas) on input-split children
    input_bounds: str = "crown"  # input split node boxes: "crown", "hybrid" (forward, CROWN where open), "forward"
    input_branching: str = "auto"  # "smear", "strong" (try every dimension), "alternate" (strong at even
    # depth, smear at odd), "auto": alternate up to STRONG_BRANCHING_MAX_INPUTS inputs, else smear
    refine_intermediate: str = "auto"  # "on"/"off"/"auto": re-bound intermediate boxes of children by CROWN
    refine_max_cost: float = 2e7  # "auto" turns refinement on below this many multiply-adds per domain
    warm_start: bool = True  # keep alphas/betas per domain and start children from them (measured on eran
    # 7903, 60 s: off leaves the worst gap at the root's -3.42 without refinement, since 8 cold iterations
    # rarely beat the parent; on: -1.79 without, -1.87 with refinement and one more problem proved)
    attack_every: int = 4  # rounds between PGD runs on the worst domains (0: never)
    attack_domains: int = 32
    attack_steps: int = 40
    max_memory_bytes: int = 2 << 30  # cap of the domain store
    seed: int = 0


@dataclass
class BabReport:
    """What BaB concluded for one problem, with counters for the log."""

    status: str  # "proved", "counterexample", "timeout", "memory", "stuck"
    counterexample: np.ndarray | None = None
    rounds: int = 0
    domains: int = 0  # domains bounded (children)
    open_domains: int = 0
    max_depth: int = 0
    worst_gap: float = -math.inf
    inherited_closed: int = 0  # input split: children closed by the parent's linear bound alone
    mode: str = ""
    message: str = ""
    seconds: float = 0.0
    problem: int = 0  # with a counterexample: which problem of the search it falsifies


# ---------------------------------------------------------------------------------------- pure helpers
def closed_domains(lower: Tensor, d: Tensor) -> Tensor:
    """``(B,)``: some row proved with the pipeline's margin, or the domain is empty (lower = +inf)."""
    empty = torch.isinf(lower) & (lower > 0)
    return (rows_proved(lower, d) | empty).any(1)


def domain_gap(lower: Tensor, d: Tensor) -> Tensor:
    """``max_i (lower_i - d_i - margin_i)``: > 0 on a closed domain; the priority of an open one (lowest
    first). NaN rows count as unproved (a very negative finite gap, so selection stays well defined)."""
    finite = torch.isfinite(lower)
    gap = torch.where(finite, lower - d - proof_margin(torch.where(finite, lower, d), d), lower)
    gap = torch.nan_to_num(gap, nan=-1e30, posinf=float("inf"), neginf=-1e30)
    return gap.max(1).values


def best_rows(lower: Tensor, d: Tensor) -> Tensor:
    """Per domain the row closest to being proved (largest ``lower - d``)."""
    return torch.nan_to_num(lower - d, nan=-float("inf")).argmax(1)


def violation(model, x: Tensor, C: Tensor, d: Tensor) -> Tensor:
    """``max_i (C f(x) - d)_i`` per point: ``<= 0`` means ``x`` violates the property. ``C`` ``(m, outputs)``
    and ``d`` ``(m,)`` for all points, or ``(k, m, outputs)`` and ``(k, m)`` per point."""
    with torch.no_grad():
        y = model.forward(x)
    values = y @ C.T if C.dim() == 2 else (C @ y.unsqueeze(-1)).squeeze(-1)
    return (values - d).max(1).values


def linear_minimiser(a_input: Tensor, lower: Tensor, upper: Tensor) -> Tensor:
    """``argmin over the box of a . x``: ``l`` where ``a > 0``, ``u`` elsewhere (flattened ``(k, n)``)."""
    a = a_input.reshape(lower.shape)
    return torch.where(a > 0, lower, upper)


def box_minimum(a: Tensor, lower: Tensor, upper: Tensor) -> Tensor:
    """``min over [lower, upper] of a . x`` per row: ``a`` is ``(k, m, n)``, boxes ``(k, n)``; ``(k, m)``."""
    low, up = lower.unsqueeze(1), upper.unsqueeze(1)
    return (a.clamp(min=0) * low + a.clamp(max=0) * up).sum(-1)


def inherited_lower_bound(a: Tensor, constant: Tensor, lower: Tensor, upper: Tensor) -> Tensor:
    """A parent's linear lower bound ``a x + c`` (valid on the parent box, so on any sub-box) minimised over
    the sub-boxes ``[lower, upper]``, in float64 and returned in the boxes' dtype rounded down."""
    value = constant + box_minimum(a.double(), lower.double(), upper.double())
    rounded = value.to(lower.dtype)
    return torch.where(rounded.double() > value, torch.nextafter(rounded, torch.full_like(rounded, -math.inf)),
                       rounded)


def split_box(lower: Tensor, upper: Tensor, dim: Tensor, point: Tensor) -> tuple[Tensor, Tensor]:
    """Two children per domain, ``(2k, n)``: first all left halves (``x_dim <= point``), then all right."""
    rows = torch.arange(lower.shape[0], device=lower.device)
    left_up = upper.clone()
    left_up[rows, dim] = point
    right_low = lower.clone()
    right_low[rows, dim] = point
    return torch.cat([lower, right_low]), torch.cat([left_up, upper])


# ---------------------------------------------------------------------------------------- bounding
INPUT_BOUNDS = ("hybrid", "crown", "forward")


def _output_bound(graph: Graph, propagator, bounds: dict, C: Tensor, lower: Tensor,
                  upper: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Backward (CROWN) bound of the rows ``C`` given node boxes: ``(lb, A, c)`` with ``A x + c`` the linear
    lower bound of each row (``A`` ``(B, m, n)``; ``c`` float64, ``-inf`` where not finite)."""
    batch = lower.shape[0]
    coeffs = spec_coefficients(C, graph, batch, lower)
    record = {graph.input_name: None}
    lb = propagator.lower_bound(graph.output_name, coeffs, bounds, DefaultRelaxations(bounds), record=record)
    lb = close_infeasible(lb, bounds)
    a = record[graph.input_name]
    a = coeffs.new_zeros((batch, C.shape[-2], lower.shape[1])) if a is None else a.reshape(batch, C.shape[-2], -1)
    constant = lb.double() - box_minimum(a.double(), lower.double(), upper.double())
    constant = torch.where(torch.isfinite(constant), constant, torch.full_like(constant, -math.inf))
    return lb, a, constant


def bound_input_boxes(graph: Graph, propagator, lower: Tensor, upper: Tensor, C: Tensor,
                      alpha_iterations: int = 0, deadline: float | None = None, d: Tensor | None = None,
                      intermediate: str = "hybrid") -> tuple[Tensor, Tensor, Tensor]:
    """Bounds of the rows ``C`` on ``(B, n)`` boxes: row lower bounds ``(B, m)``, and a linear lower bound
    ``A x + c`` of every row: ``A`` ``(B, m, n)`` and ``c`` ``(B, m)`` (float64; ``-inf`` where not
    finite), valid on the whole box.

    ``intermediate``: how node boxes are obtained before the backward pass of the rows --
    ``"crown"`` (a backward pass per unstable neuron), ``"forward"`` (forward affine bounds,
    :mod:`nlverify.bounds.forward`, ~10x cheaper, looser on wide boxes), or ``"hybrid"``: forward first,
    then CROWN only on the boxes that ``d`` shows are not yet closed (all of them when ``d`` is None),
    keeping per row the better of the two linear bounds."""
    if intermediate not in INPUT_BOUNDS:
        raise ValueError(f"unknown input-split bound method '{intermediate}', expected one of {INPUT_BOUNDS}")
    with torch.no_grad():
        if intermediate == "crown":
            bounds = propagate_bounds(graph, lower, upper, DefaultRelaxations, propagator, CrownOptions())
            lb, a, constant = _output_bound(graph, propagator, bounds, C, lower, upper)
        else:
            bounds = forward_bounds(graph, lower, upper, propagator)
            lb, a, constant = _output_bound(graph, propagator, bounds, C, lower, upper)
            if intermediate == "hybrid":
                todo = ~closed_domains(lb, d) if d is not None else torch.ones_like(lb[:, 0], dtype=torch.bool)
                if todo.any():
                    low_t, up_t = lower[todo], upper[todo]
                    bounds = propagate_bounds(graph, low_t, up_t, DefaultRelaxations, propagator, CrownOptions())
                    lb_c, a_c, c_c = _output_bound(graph, propagator, bounds, C[todo], low_t, up_t)
                    better = torch.nan_to_num(lb_c, nan=-math.inf) > torch.nan_to_num(lb[todo], nan=-math.inf)
                    lb[todo] = torch.where(better, lb_c, lb[todo])
                    a[todo] = torch.where(better.unsqueeze(-1), a_c, a[todo])
                    constant[todo] = torch.where(better, c_c, constant[todo])
    if alpha_iterations > 0:
        optimised, _, _, _ = alpha_crown(graph, lower, upper, C, AlphaOptions(iterations=alpha_iterations,
                                         optimize_intermediate=False, deadline=deadline), propagator=propagator,
                                         need_upper=False)
        lb = torch.maximum(lb, optimised)
    return lb, a, constant


def bound_activation_domains(graph: Graph, propagator, boxes: dict[str, tuple[Tensor, Tensor]], C: Tensor,
                             iterations: int,
                             learning_rate: float, alphas: dict | None = None, betas: dict | None = None,
                             refine: bool = False, deadline: float | None = None,
                             ) -> tuple[Tensor, dict[str, tuple[Tensor, Tensor]], dict]:
    """alpha/beta-CROWN with the stored node boxes fixed (IBP inside them, no CROWN re-run).

    ``boxes`` holds the input box (under the input node's name) and a box per split target. With
    ``refine``, one CROWN pass first re-bounds every intermediate node inside the stored boxes (so a split
    in an early layer tightens the later layers' boxes; one backward pass per node, done once, not per
    iteration). Returns row lower bounds ``(B, m)``, the (possibly tightened) boxes, and the parameters
    (alphas keyed ``(output, node)``, betas ``("beta", node)``)."""
    name = graph.input_name
    input_box = boxes[name]
    inner = {t: lu for t, lu in boxes.items() if t != name}
    splits = SplitConstraints({t: lu[0] for t, lu in inner.items()}, {t: lu[1] for t, lu in inner.items()})
    crown_lb = None
    if refine:
        crown_lb, _, refined = crown(graph, input_box[0], input_box[1], C, CrownOptions(), propagator,
                                     need_upper=False, splits=splits)
        inner = {t: (torch.maximum(refined[t][0], l), torch.minimum(refined[t][1], u)) for t, (l, u) in inner.items()}
        splits = SplitConstraints({t: lu[0] for t, lu in inner.items()}, {t: lu[1] for t, lu in inner.items()})
    options = AlphaOptions(iterations=iterations, learning_rate=learning_rate, optimize_intermediate=False,
                           crown=CrownOptions(intermediate="ibp"), deadline=deadline)
    lb, _, node_boxes, params = alpha_crown(graph, input_box[0], input_box[1], C, options, alphas=alphas,
                                            propagator=propagator, need_upper=False, splits=splits, betas=betas)
    new_boxes = {t: (torch.maximum(node_boxes[t][0], l), torch.minimum(node_boxes[t][1], u))
                 for t, (l, u) in inner.items()}
    new_boxes[name] = input_box
    lb = lb.detach() if crown_lb is None else torch.maximum(lb.detach(), crown_lb)
    return lb, new_boxes, params


# ---------------------------------------------------------------------------------------- the search
class _Search:
    """State of one BaB search: the store, its field layout, and the falsification hooks.

    A search covers one or more problems of the same region box and row count (activation split runs
    all of a region's problems in one store, so every round bounds domains of all of them in one
    batched call). Every domain carries its problem's index (field ``"problem"``); its rows ``C`` and
    thresholds ``d`` are looked up from it."""

    def __init__(self, model, problems: list[Problem], deadline: float, options: BabOptions) -> None:
        self.model = model
        self.graph: Graph = model.graph
        self.propagator = model.propagator
        self.problems = problems
        self.problem = problems[0]  # the region box is the same for all
        self.deadline = deadline
        self.options = options
        self.Cs = torch.stack([p.C for p in problems])  # (P, m, outputs)
        self.ds = torch.stack([p.d for p in problems])  # (P, m)
        device = self.problem.C.device
        self.store = DomainStore(options.max_memory_bytes, device=device)
        self.report = BabReport("timeout")
        self.in_flight = torch.zeros(0, dtype=torch.long, device=device)  # problems of the popped batch
        self.found_problem: int | None = None
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(options.seed)
        self._round_started: float | None = None

    def expired(self) -> bool:
        """Called once at the top of every round: True when the deadline has passed, or when the
        previous round's duration says the next one would end after it (a round cannot be interrupted,
        so the budget is honoured by not starting one that cannot finish)."""
        now = time.monotonic()
        last_round = 0.0 if self._round_started is None else now - self._round_started
        self._round_started = now
        return now + last_round > self.deadline

    def problems_proved(self) -> list[bool]:
        """Per problem: no domain of it is open in the store or in the batch being worked on."""
        still_open = torch.zeros(len(self.problems), dtype=torch.bool, device=self.Cs.device)
        still_open[self.store.values("problem").long()] = True
        still_open[self.in_flight] = True
        return (~still_open).tolist()

    # -------------------------------------------------------------- falsification
    def check_points(self, x: Tensor, problem: Tensor) -> np.ndarray | None:
        """The first point (flattened) with a non-positive violation of its domain's problem ``(k,)``, as
        float64, else None (records which problem it falsifies)."""
        if x.shape[0] == 0:
            return None
        v = violation(self.model, x.reshape(x.shape[0], -1), self.Cs[problem], self.ds[problem])
        hits = torch.nonzero(v <= 0).flatten()
        if hits.numel() == 0:
            return None
        best = hits[torch.argmin(v[hits])]
        self.found_problem = int(problem[best])
        lower, upper = self.problem.lower.double(), self.problem.upper.double()
        point = torch.minimum(torch.maximum(x.reshape(x.shape[0], -1)[best].double(), lower), upper)
        return point.cpu().numpy()

    def pgd_attack(self, x0: Tensor, lower: Tensor, upper: Tensor, problem: Tensor) -> np.ndarray | None:
        from nlverify.verifier.attack import AttackOptions, ViolationTensors, pgd

        k = x0.shape[0]
        spec = ViolationTensors(self.Cs[problem], self.ds[problem], torch.arange(k, device=x0.device), lower, upper)
        options = AttackOptions(steps=self.options.attack_steps, start_step=0.2, end_step=1e-3,
                                seed=self.options.seed)
        best_x, _ = pgd(self.model, spec, x0, torch.arange(k, device=x0.device), options, self.deadline)
        return self.check_points(best_x, problem)

    # -------------------------------------------------------------- bookkeeping
    def finish(self, status: str, counterexample: np.ndarray | None = None, message: str = "") -> BabReport:
        self.report.status = status
        self.report.counterexample = counterexample
        self.report.open_domains = len(self.store)
        self.report.max_depth = max(self.report.max_depth, self.store.max_depth())
        self.report.worst_gap = self.store.min_gap() if len(self.store) else self.report.worst_gap
        self.report.message = message
        return self.report

    def push_open(self, fields: dict[str, Tensor], lower: Tensor, depth: Tensor) -> None:
        d = self.ds[fields["problem"]]
        keep = ~closed_domains(lower, d)
        if faults.ACTIVE: keep = faults.drop_domains(keep)  # TEST-ONLY fault hook (faults.py)
        self.report.domains += lower.shape[0]
        if keep.any():
            self.store.push({n: v[keep] for n, v in fields.items()}, domain_gap(lower[keep], d[keep]), depth[keep])

    def pop(self, k: int):
        """The next batch; its problems count as open until their children are pushed or closed."""
        batch = self.store.pop(k)
        self.in_flight = batch.fields["problem"]
        return batch

    # -------------------------------------------------------------- input split
    def run_input_split(self) -> BabReport:
        self.report.mode = "input"
        o = self.options
        problem = torch.arange(len(self.problems), device=self.Cs.device)
        low = self.problem.lower.unsqueeze(0).expand(len(self.problems), -1)
        up = self.problem.upper.unsqueeze(0).expand(len(self.problems), -1)
        lb, a, constant = bound_input_boxes(self.graph, self.propagator, low, up, self.Cs,
                                            o.input_alpha_iterations, self.deadline, self.ds, o.input_bounds)
        known = torch.stack([p.best_lower for p in self.problems])
        self.push_open(self._input_fields(low, up, lb, a, constant, known, problem), torch.maximum(lb, known),
                       torch.zeros_like(problem))
        while len(self.store):
            if self.expired():
                return self.finish("timeout")
            self.report.rounds += 1
            batch = self.pop(o.input_batch_domains)
            f = batch.fields
            low, up, problem = f["low"], f["up"], f["problem"]
            centre_or_corner = torch.cat([linear_minimiser(f["a"], low, up), (low + up) / 2])
            found = self.check_points(centre_or_corner, problem.repeat(2))
            if found is None and o.attack_every and self.report.rounds % o.attack_every == 0:
                worst = slice(0, min(o.attack_domains, len(batch)))
                found = self.pgd_attack(linear_minimiser(f["a"][worst], low[worst], up[worst]), low[worst], up[worst],
                                        problem[worst])
            if found is not None:
                return self.finish("counterexample", found)
            scores = input_split_scores(f["a"], low, up)
            strong = self._strong_domains(batch.depth)
            if strong.any():
                scores[strong] = torch.where(torch.isinf(scores[strong]), scores[strong],
                                             self.strong_input_scores(low[strong], up[strong], problem[strong]))
            best, dim = scores.max(1)
            if torch.isinf(best).any():
                return self.finish("stuck", message="an open input box is too thin to split")
            point = (low.gather(1, dim.unsqueeze(1)) + up.gather(1, dim.unsqueeze(1))).squeeze(1) / 2
            child_low, child_up = split_box(low, up, dim, point)
            parent_lb = f["lb"].repeat(2, 1)
            # the parent's linear bound still holds on each child: often it already closes one of them
            inherited = inherited_lower_bound(f["A"].repeat(2, 1, 1), f["c"].repeat(2, 1), child_low, child_up)
            parent_lb = torch.maximum(parent_lb, inherited)
            depth = (batch.depth + 1).repeat(2)
            child_problem = problem.repeat(2)
            self.report.max_depth = max(self.report.max_depth, int(depth.max()))
            open_children = ~closed_domains(parent_lb, self.ds[child_problem])
            self.report.domains += int((~open_children).sum())
            self.report.inherited_closed += int((~open_children).sum())
            if not open_children.any():
                continue
            child_low, child_up = child_low[open_children], child_up[open_children]
            parent_lb, depth = parent_lb[open_children], depth[open_children]
            child_problem = child_problem[open_children]
            lb, a, constant = bound_input_boxes(self.graph, self.propagator, child_low, child_up,
                                                self.Cs[child_problem], o.input_alpha_iterations,
                                                self.deadline, self.ds[child_problem], o.input_bounds)
            try:
                self.push_open(self._input_fields(child_low, child_up, lb, a, constant, parent_lb, child_problem),
                               torch.maximum(lb, parent_lb), depth)
            except DomainStoreFull as error:
                return self.finish("memory", message=str(error))
        return self.finish("proved")

    def _strong_domains(self, depth: Tensor) -> Tensor:
        """``(k,)``: the domains whose split dimension strong branching picks (the others use smear)."""
        rule = self.options.input_branching
        if rule not in INPUT_BRANCHING:
            raise ValueError(f"unknown input branching '{rule}', expected one of {INPUT_BRANCHING}")
        if rule == "auto":
            rule = "alternate" if self.graph.num_inputs <= STRONG_BRANCHING_MAX_INPUTS else "smear"
        if rule == "alternate":
            return depth % 2 == 0
        return torch.full_like(depth, rule == "strong", dtype=torch.bool)

    def strong_input_scores(self, low: Tensor, up: Tensor, problem: Tensor) -> Tensor:
        """``(k, n)``: per domain and input dimension, the gap of the worse child when that dimension is
        halved, from cheap forward bounds of all ``2 n`` children at once (higher is better)."""
        k, n = low.shape
        dims = torch.arange(n, device=low.device).repeat_interleave(k)  # dim-major: (n k,)
        point = ((low + up) / 2).repeat(n, 1).gather(1, dims.unsqueeze(1)).squeeze(1)
        child_low, child_up = split_box(low.repeat(n, 1), up.repeat(n, 1), dims, point)  # (2 n k, n)
        child_problem = problem.repeat(2 * n)
        lb, _, _ = bound_input_boxes(self.graph, self.propagator, child_low, child_up,
                                     self.Cs[child_problem], intermediate="forward")
        gap = domain_gap(lb, self.ds[child_problem]).reshape(2, n, k)
        return gap.min(0).values.transpose(0, 1)

    def _input_fields(self, low: Tensor, up: Tensor, lb: Tensor, a: Tensor, constant: Tensor,
                      known_lb: Tensor, problem: Tensor) -> dict[str, Tensor]:
        """Stored per input-split domain: the box, its best lower bound (``lb``, at least ``known_lb``), its
        own linear lower bound ``A x + c`` per row (``A``, ``c``, from :func:`bound_input_boxes`), and
        ``a``, the best row's coefficients (for choosing the split)."""
        best = torch.maximum(lb, known_lb)
        # the row this box's own bound favours: its coefficients steer the split (a row favoured only by
        # the inherited bound has coefficients that say little about this box; measured: choosing by
        # ``best`` tripled the tree on ACAS Xu 1_1 prop_3)
        rows = best_rows(lb, self.ds[problem])
        a_best = a[torch.arange(a.shape[0], device=a.device), rows]
        return {"low": low, "up": up, "lb": best, "a": a_best, "A": a, "c": constant, "problem": problem}

    # -------------------------------------------------------------- activation split
    def root_boxes(self) -> dict[str, tuple[Tensor, Tensor]]:
        """Node boxes at the root, one row per problem: CROWN's on the shared region box, intersected with
        any boxes the pipeline's bound stages left for that problem."""
        count = len(self.problems)
        low, up = self.problem.lower.unsqueeze(0), self.problem.upper.unsqueeze(0)
        _, _, bounds = crown(self.graph, low, up, self.Cs[:1], CrownOptions(), self.propagator,
                             need_upper=False)
        shape = self.graph.input_shape
        boxes = {self.graph.input_name: (low.reshape(1, *shape).expand(count, *shape),
                                         up.reshape(1, *shape).expand(count, *shape))}
        for t in self.targets:
            if t == self.graph.input_name:
                continue
            l, u = (b.expand(count, *b.shape[1:]) for b in bounds[t])
            known = [(p.boxes or {}).get(t) for p in self.problems]
            if all(k is not None for k in known):
                kl = torch.cat([k[0].reshape(1, *l.shape[1:]) for k in known])
                ku = torch.cat([k[1].reshape(1, *u.shape[1:]) for k in known])
                l, u = torch.maximum(l, kl), torch.minimum(u, ku)
            boxes[t] = (l.contiguous(), torch.maximum(u, l).contiguous())
        return boxes

    def run_activation_split(self) -> BabReport:
        self.report.mode = "activation"
        o = self.options
        g = self.graph
        self.targets = split_targets(g)
        self.refine = _refine_intermediate(g, o)
        names = [n.name for n in g.nonlinear_nodes()] + [g.input_name]
        boxes = self.root_boxes()
        problem = torch.arange(len(self.problems), device=self.Cs.device)
        lb, boxes, params = bound_activation_domains(g, self.propagator, boxes, self.Cs,
                                                     o.root_iterations, o.learning_rate, deadline=self.deadline)
        lb = torch.maximum(lb, torch.stack([p.best_lower for p in self.problems]))
        self.push_open(self._activation_fields(boxes, lb, params, problem), lb, torch.zeros_like(problem))
        while len(self.store):
            if self.expired():
                return self.finish("timeout")
            self.report.rounds += 1
            batch = self.pop(o.batch_domains)
            f, k = batch.fields, len(batch)
            problem = f["problem"]
            boxes = {n[len("low:"):]: (v, f["up:" + n[len("low:"):]]) for n, v in f.items() if n.startswith("low:")}
            input_low, input_up = (b.reshape(k, -1) for b in boxes[g.input_name])
            rows = best_rows(f["lb"], self.ds[problem])
            coeffs = spec_coefficients(self.Cs[problem, rows].unsqueeze(1), g, k, input_low)
            _, coefficients = coefficients_at(g, self.propagator, boxes, coeffs, names)
            coefficients = {n: a[:, 0] for n, a in coefficients.items()}
            # falsification: the minimiser of the linear bound, sometimes refined by PGD
            x_star = linear_minimiser(coefficients[g.input_name].reshape(k, -1), input_low, input_up)
            anchors = anchor_values(g, x_star, boxes)
            found = self.check_points(x_star, problem)
            if found is None and o.attack_every and self.report.rounds % o.attack_every == 0:
                w = slice(0, min(o.attack_domains, k))
                found = self.pgd_attack(x_star[w], input_low[w], input_up[w], problem[w])
            if found is not None:
                return self.finish("counterexample", found)
            decision = choose_splits(g, boxes, coefficients, o.branching, anchors, o.split_points)
            if (torch.isinf(decision.score) & (decision.score < 0)).any():
                return self.finish("stuck", message="an open domain has no neuron left to split")
            child_boxes = self._split_boxes(boxes, decision)
            parent = torch.arange(2 * k, device=input_low.device) % k
            alphas, betas = self._warm_start(f, parent) if o.warm_start else (None, None)
            lb, child_boxes, params = bound_activation_domains(
                g, self.propagator, child_boxes, self.Cs[problem[parent]], o.iterations, o.learning_rate, alphas,
                betas, refine=self.refine, deadline=self.deadline)
            lb = torch.maximum(lb, f["lb"][parent])
            depth = batch.depth[parent] + 1
            self.report.max_depth = max(self.report.max_depth, int(depth.max()))
            try:
                self.push_open(self._activation_fields(child_boxes, lb, params, problem[parent]), lb, depth)
            except DomainStoreFull as error:
                return self.finish("memory", message=str(error))
        return self.finish("proved")

    def _split_boxes(self, boxes: dict[str, tuple[Tensor, Tensor]], decision) -> dict[str, tuple[Tensor, Tensor]]:
        """Children boxes ``(2k, ...)``: the first ``k`` take ``x_j <= p``, the last ``k`` take ``x_j >= p``."""
        out = {}
        targets = split_targets(self.graph)
        for name, (low, up) in boxes.items():
            k = low.shape[0]
            t = targets.index(name) if name in targets else -1
            rows = torch.nonzero(decision.target == t).flatten() if t >= 0 else decision.target[:0]
            left_up, right_low = up.clone().reshape(k, -1), low.clone().reshape(k, -1)
            if rows.numel():
                left_up[rows, decision.neuron[rows]] = decision.point[rows]
                right_low[rows, decision.neuron[rows]] = decision.point[rows]
            out[name] = (torch.cat([low, right_low.reshape(low.shape)]), torch.cat([left_up.reshape(up.shape), up]))
        return out

    def _activation_fields(self, boxes: dict, lb: Tensor, params: dict, problem: Tensor) -> dict[str, Tensor]:
        fields = {"lb": lb, "problem": problem}
        for t, (l, u) in boxes.items():
            fields["low:" + t], fields["up:" + t] = l, u
        if self.options.warm_start:
            for key, value in params.items():
                if key[0] == "beta":
                    fields["beta_low:" + key[1]], fields["beta_up:" + key[1]] = value
                elif key[0] == self.graph.output_name:
                    fields["alpha:" + key[1]] = value.movedim(1, 0)  # domain axis first
        return fields

    def _warm_start(self, f: dict[str, Tensor], parent: Tensor) -> tuple[dict, dict]:
        out = self.graph.output_name
        alphas = {(out, n[len("alpha:"):]): v[parent].movedim(0, 1) for n, v in f.items() if n.startswith("alpha:")}
        betas = {n[len("beta_low:"):]: (v[parent], f["beta_up:" + n[len("beta_low:"):]][parent])
                 for n, v in f.items() if n.startswith("beta_low:")}
        return alphas, betas


def refinement_cost(graph: Graph) -> float:
    """Rough multiply-adds per domain of one CROWN pass over all split targets: for each target, its
    ``2 n`` rows times the neurons of every node between it and the input."""
    total = 0.0
    sizes = {n.name: n.size for n in graph}
    for t in split_targets(graph):
        if t == graph.input_name:
            continue
        # ancestors() is cached on the propagator; recomputing here is cheap (once per problem)
        ancestors = [n for n in graph if n.name != t]
        total += 2 * sizes[t] * sum(sizes[a.name] for a in ancestors[:list(graph.nodes).index(t)])
    return total


def _refine_intermediate(graph: Graph, options: BabOptions) -> bool:
    if options.refine_intermediate == "auto":
        return refinement_cost(graph) <= options.refine_max_cost
    return options.refine_intermediate == "on"


def _mode(model, options: BabOptions) -> str:
    if options.mode not in SPLIT_MODES:
        raise ValueError(f"unknown BaB mode '{options.mode}', expected one of {SPLIT_MODES}")
    if options.mode != "auto":
        return options.mode
    return "input" if model.graph.num_inputs <= options.input_split_max_inputs else "activation"


def bab_search(model, problems: list[Problem], deadline: float,
               options: BabOptions | None = None) -> tuple[BabReport, list[bool]]:
    """One branch-and-bound search over ``problems`` (same region box and row count) until all are
    proved, one is falsified, or ``deadline`` (monotonic). Returns the report and, per problem, whether it
    was proved (no domain of it left open)."""
    options = options or BabOptions()
    start = time.monotonic()
    search = _Search(model, problems, deadline, options)
    mode = _mode(model, options)
    report = search.run_input_split() if mode == "input" else search.run_activation_split()
    report.seconds = time.monotonic() - start
    proved = [True] * len(problems) if report.status == "proved" else search.problems_proved()
    if report.status == "counterexample":
        report.problem = search.found_problem
    return report, proved


def bab_problem(model, problem: Problem, deadline: float, options: BabOptions | None = None) -> BabReport:
    """Branch and bound on one problem until it is proved, falsified, or ``deadline`` (monotonic)."""
    return bab_search(model, [problem], deadline, options)[0]


def _hardness(problem: Problem) -> float:
    """``max_i (best_lower_i - d_i)``: the lowest is the most likely to hide a counterexample."""
    return float(torch.nan_to_num(problem.best_lower - problem.d, nan=-math.inf).max())


def search_groups(model, problems: list[Problem], options: BabOptions) -> list[list[int]]:
    """Indices of the problems each search covers, hardest group first. Activation split puts the
    problems of one region with the same row count into one search (their domains share every round's
    batched bound call: measured on eran_sigmoid, a lone problem's early rounds carry 1, 2, 4, ...
    domains at almost the cost of a full batch). Input split keeps one search per problem (its rounds
    are already full; the ACAS Xu figures in the module docstring are per problem)."""
    order = sorted(range(len(problems)), key=lambda i: _hardness(problems[i]))
    if _mode(model, options) == "input":
        return [[i] for i in order]
    groups: dict[tuple, list[int]] = {}
    for i in order:
        p = problems[i]
        key = (p.region, p.C.shape[0], tuple(p.lower.tolist()), tuple(p.upper.tolist()))
        groups.setdefault(key, []).append(i)
    return list(groups.values())


def branch_and_bound(model, problems: list[Problem], time_left: float, device: str = "cpu", seed: int = 0,
                     options: BabOptions | None = None) -> list[ProblemOutcome]:
    """The pipeline's BaB stage: one :class:`ProblemOutcome` per problem.

    Searches (:func:`search_groups`) run hardest first. BaB stops at the first search that leaves a
    problem falsified or unproved, since the verdict cannot be ``unsat`` after that; the remaining
    problems stay unproved."""
    options = options or BabOptions(seed=seed)
    deadline = time.monotonic() + time_left
    outcomes = [ProblemOutcome() for _ in problems]
    for group in search_groups(model, problems, options):
        report, proved = bab_search(model, [problems[i] for i in group], deadline, options)
        log.info("bab problems %s (region %d): %s after %d rounds, %d domains, depth %d, %.1fs, %d/%d proved%s",
                 [problems[i].conjunction for i in group], problems[group[0]].region, report.status, report.rounds,
                 report.domains, report.max_depth, report.seconds, sum(proved), len(group),
                 f" ({report.message})" if report.message else "")
        for i, done in zip(group, proved):
            outcomes[i].proved = done
        if report.status == "counterexample":
            outcomes[group[report.problem]].counterexample = report.counterexample
        if report.status != "proved":
            break
    return outcomes

"""Input-space branch and bound, for models with few inputs (ACAS Xu, control and power-flow nets).

A domain is a sub-box of the region, halved along one dimension chosen by one of two rules. *Smear*:
the largest ``|A_x| (u - l)`` of the row the domain's own bound favours. *Strong branching*: all ``2 n``
candidate children of every domain are bounded at once with cheap forward affine bounds
(:mod:`nlverify.bounds.forward`) and the dimension whose worse child is best wins. With few inputs
(``STRONG_BRANCHING_MAX_INPUTS``) the rules alternate by depth (strong at even depth, smear at odd, in
these measurements; now strong every ``BabOptions.strong_every`` depths, see there).
Measured on ACAS Xu (domains to a proof, 30-55 s budget): 2_2 prop_1 smear 62,721, strong 203,
alternate 203; 1_1 prop_3 smear 6,017, strong >47,000 (unproved), alternate 5,519; 1_1 prop_5 problem 0
smear 1,381, strong >81,000 (unproved), alternate 499; 1_8 prop_2 smear >197,000 and strong >76,000
(both unproved), alternate 601. Each pure rule is myopic on some instances; on these four the mixed tree
matched or beat the better one.

Smear steers by the row the domain's own bound favours among the rows that splitting can still make
provable: a short descent per row looks for a point that violates it by a sizeable part of its bound's
gap, and such a row is skipped (see :meth:`InputSplitSearch._provable_rows`; lsnc output_8 with the
quadratic-form rewrite: open after 40,577 domains without, proved in 9,257 with).

A child that the parent's own linear bound ``A x + c`` (valid on any sub-box) already closes is not
bounded again; the others are bounded by CROWN with CROWN intermediate bounds (thousands of boxes per
call), and each is then clipped to the part where its own and its parent's linear bounds still allow a
violation (:mod:`nlverify.verifier.box_clipping`; an emptied box is closed). On small inputs the rows
are also bounded with products taken as quadratics of the input (:mod:`nlverify.bounds.second_order`;
lsnc state_0's hardest problem: 8.47M domains without, 53,595 with), the better bound kept per row;
smear still reads McCormick's coefficients (:class:`RowBounds`). Falsification tries the
minimiser of each domain's linear bound (``x* = l where A_x > 0 else u``) and its centre.

On several cores a search still open after ``BabOptions.parallel_after_s`` continues in forked worker
processes that share its open domains (:mod:`nlverify.verifier.parallel`).
"""
from __future__ import annotations

import math
import time
from functools import cached_property
from typing import NamedTuple

import torch
from torch import Tensor

from nlverify.bounds.alpha import AlphaOptions, alpha_crown
from nlverify.bounds.backward_steps import box_minimum
from nlverify.bounds.crown import CrownOptions, DefaultRelaxations, close_infeasible, propagate_bounds, spec_coefficients
from nlverify.bounds.forward import forward_bounds, forward_row_bounds
from nlverify.bounds.second_order import SecondOrderRelaxations, second_order_products
from nlverify.graph import Graph
from nlverify.verifier.box_clipping import CLIP_ROUNDS, clip_to_violation
from nlverify.verifier.branching import input_split_scores
from nlverify.verifier.conjunction import conjunction_gap
from nlverify.verifier.domains import DomainStoreFull, best_rows, closed_domains, domain_gap
from nlverify.verifier.input_rules import (INPUT_BOUNDS, input_alpha_iterations, input_batch_domains, input_bound_method,
                                           input_workers)
from nlverify.verifier.parallel import run_sharded
from nlverify.verifier.problem import free_dims
from nlverify.verifier.search import BabReport, Search

__all__ = ["InputSplitSearch", "RowBounds", "bound_input_boxes", "linear_minimiser", "inherited_lower_bound",
           "split_box", "free_dims", "INPUT_BRANCHING", "STRONG_BRANCHING_MAX_INPUTS"]

STEERING_STEPS = 4  # descent steps per row that test whether a row can still be proved on a box
STEERING_TOLERANCE = 0.25  # a row violated by less than this fraction of its bound's gap still steers
STRONG_BRANCHING_MAX_INPUTS = 8  # "auto" input branching tries every dimension up to this many inputs
STRONG_CHUNK = 512  # domains strong-scored first in a round; then chunks sized to half the time left
INPUT_BRANCHING = ("auto", "smear", "strong", "alternate")


def linear_minimiser(a_input: Tensor, lower: Tensor, upper: Tensor) -> Tensor:
    """``argmin over the box of a . x``: ``l`` where ``a > 0``, ``u`` elsewhere (flattened ``(k, n)``)."""
    a = a_input.reshape(lower.shape)
    return torch.where(a > 0, lower, upper)


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


class RowBounds(NamedTuple):
    """Bounds of the rows ``C`` on ``(B, n)`` boxes: lower bounds ``lb`` ``(B, m)``; a linear lower bound
    ``A x + c`` of every row valid on the whole box (``A`` ``(B, m, n)``, ``c`` ``(B, m)`` float64,
    ``-inf`` where not finite); and ``steer`` ``(B, m, n)``, the coefficients whose size per input says
    where the row's bound is loose (smear branching): ``A`` itself, except where a second-order bound
    won the row, whose tangent-plane slope is near zero at its minimiser whatever the looseness; there
    the McCormick bound's ``A``."""

    lb: Tensor
    A: Tensor
    c: Tensor
    steer: Tensor

    def merged(self, other: "RowBounds", better: Tensor) -> "RowBounds":
        """Per row, ``other`` where ``better`` ``(B, m)`` else this."""
        return RowBounds(torch.where(better, other.lb, self.lb), torch.where(better.unsqueeze(-1), other.A, self.A),
                         torch.where(better, other.c, self.c), torch.where(better.unsqueeze(-1), other.steer, self.steer))


def _better(candidate: Tensor, incumbent: Tensor) -> Tensor:
    return torch.nan_to_num(candidate, nan=-math.inf) > torch.nan_to_num(incumbent, nan=-math.inf)


def _output_bound(graph: Graph, propagator, bounds: dict, C: Tensor, lower: Tensor, upper: Tensor,
                  second_order: bool = False, d: Tensor | None = None) -> RowBounds:
    """Backward (CROWN) bound of the rows ``C`` given node boxes.

    ``second_order``: also bound the rows of the boxes that this bound leaves open (all of them when
    ``d`` is None) with products bounded through their factors' affine bounds
    (:mod:`nlverify.bounds.second_order`) and keep, per row, the better of the two linear bounds."""
    relaxations = DefaultRelaxations(bounds)
    lb, a, constant = _linear_row_bound(graph, propagator, bounds, C, lower, upper, relaxations)
    rows = RowBounds(lb, a, constant, a)
    products = second_order_products(graph) if second_order else []
    todo = ~closed_domains(lb, d) if d is not None else torch.ones_like(lb[:, 0], dtype=torch.bool)
    if products and todo.any():
        every = bool(todo.all())
        if not every:
            bounds = {name: _boxes_of(box, todo) for name, box in bounds.items()}
            lower, upper, C = lower[todo], upper[todo], C[todo]
            relaxations = DefaultRelaxations(bounds)
        quadratic = SecondOrderRelaxations(relaxations, propagator, bounds, lower, upper, products)
        lb_q, a_q, c_q = _linear_row_bound(graph, propagator, bounds, C, lower, upper, quadratic)
        part = RowBounds(*(t[todo] for t in rows)) if not every else rows
        part = part.merged(RowBounds(lb_q, a_q, c_q, part.steer), _better(lb_q, part.lb))
        rows = part if every else RowBounds(*(t.index_put((todo,), p) for t, p in zip(rows, part)))
    return rows


def _boxes_of(entry, chosen: Tensor):
    """A bounds-dict entry (a ``(low, up)`` pair, or a ``(B,)`` mask such as INFEASIBLE's) on the
    ``chosen`` boxes; tensors without the full batch as leading axis broadcast and pass unchanged."""
    pick = lambda t: t[chosen] if t.dim() > 0 and t.shape[0] == chosen.shape[0] else t  # noqa: E731
    return tuple(pick(t) for t in entry) if isinstance(entry, tuple) else pick(entry)


def _linear_row_bound(graph: Graph, propagator, bounds: dict, C: Tensor, lower: Tensor, upper: Tensor,
                      relaxations) -> tuple[Tensor, Tensor, Tensor]:
    """One backward pass of the rows ``C`` with the given relaxations: ``(lb, A, c)`` (see :class:`RowBounds`)."""
    batch = lower.shape[0]
    coeffs = spec_coefficients(C, graph, batch, lower)
    record = {graph.input_name: None}
    lb = propagator.lower_bound(graph.output_name, coeffs, bounds, relaxations, record=record)
    lb = close_infeasible(lb, bounds)
    a = record[graph.input_name]
    a = coeffs.new_zeros((batch, C.shape[-2], lower.shape[1])) if a is None else a.reshape(batch, C.shape[-2], -1)
    constant = lb.double() - box_minimum(a.double(), lower.double(), upper.double())
    constant = torch.where(torch.isfinite(constant), constant, torch.full_like(constant, -math.inf))
    return lb, a, constant


def bound_input_boxes(graph: Graph, propagator, lower: Tensor, upper: Tensor, C: Tensor,
                      alpha_iterations: int = 0, deadline: float | None = None, d: Tensor | None = None,
                      intermediate: str = "hybrid", second_order: bool = True) -> RowBounds:
    """Bounds of the rows ``C`` on ``(B, n)`` boxes (:class:`RowBounds`).

    ``intermediate``: how node boxes are obtained before the backward pass of the rows --
    ``"crown"`` (a backward pass per unstable neuron), ``"forward"`` (forward affine bounds,
    :mod:`nlverify.bounds.forward`, ~10x cheaper, looser on wide boxes), or ``"hybrid"``: forward first,
    then CROWN only on the boxes that ``d`` shows are not yet closed (all of them when ``d`` is None),
    keeping per row the better of the two linear bounds. ``second_order``: see :func:`_output_bound`."""
    if intermediate not in INPUT_BOUNDS:
        raise ValueError(f"unknown input-split bound method '{intermediate}', expected one of {INPUT_BOUNDS}")
    with torch.no_grad():
        if intermediate == "crown":
            bounds = propagate_bounds(graph, lower, upper, DefaultRelaxations, propagator, CrownOptions())
            rows = _output_bound(graph, propagator, bounds, C, lower, upper, second_order, d)
        else:
            bounds = forward_bounds(graph, lower, upper, propagator)
            rows = _output_bound(graph, propagator, bounds, C, lower, upper, second_order, d)
            if intermediate == "hybrid":
                todo = ~closed_domains(rows.lb, d) if d is not None else torch.ones_like(rows.lb[:, 0], dtype=torch.bool)
                if todo.any():
                    low_t, up_t = lower[todo], upper[todo]
                    bounds = propagate_bounds(graph, low_t, up_t, DefaultRelaxations, propagator, CrownOptions())
                    crown_rows = _output_bound(graph, propagator, bounds, C[todo], low_t, up_t, second_order,
                                               None if d is None else d[todo])
                    part = RowBounds(*(t[todo] for t in rows)).merged(crown_rows, _better(crown_rows.lb, rows.lb[todo]))
                    rows = RowBounds(*(t.index_put((todo,), new) for t, new in zip(rows, part)))
    if alpha_iterations > 0:
        optimised, _, _, _ = alpha_crown(graph, lower, upper, C, AlphaOptions(iterations=alpha_iterations,
                                         optimize_intermediate=False, deadline=deadline), propagator=propagator,
                                         need_upper=False)
        rows = rows._replace(lb=torch.maximum(rows.lb, optimised))
    return rows


class InputSplitSearch(Search):
    """Input-split branch and bound over the problems' shared region box."""

    @cached_property
    def bound_method(self) -> str:
        """How this search bounds node boxes (:func:`input_bound_method`)."""
        return input_bound_method(self.graph, self.options)

    def run(self) -> BabReport:
        self.report.mode = "input"
        self._bound_root()
        workers = input_workers(self.options, self.Cs.device)
        if workers > 1:
            paused = self.search_rounds(until=time.monotonic() + self.options.parallel_after_s, min_open=workers)
            return paused if paused is not None else run_sharded(self, workers)
        return self.search_rounds()

    @cached_property
    def alpha_iterations(self) -> int:
        return input_alpha_iterations(self.graph, self.options)

    def _bound_root(self) -> None:
        """Bound the region box of every problem and store what stays open."""
        alpha_iterations = self.alpha_iterations
        problem = torch.arange(len(self.problems), device=self.Cs.device)
        low = self.problem.lower.unsqueeze(0).expand(len(self.problems), -1)
        up = self.problem.upper.unsqueeze(0).expand(len(self.problems), -1)
        lb, a, constant, steer = bound_input_boxes(self.graph, self.propagator, low, up, self.Cs,
                                                   alpha_iterations, self.deadline, self.ds, self.bound_method,
                                                   second_order=self.options.second_order)
        known = torch.stack([p.best_lower for p in self.problems])
        low, up, empty = self._clip([(a, constant)], low, up, problem)
        lb = torch.maximum(lb, inherited_lower_bound(a, constant, low, up))
        self.push_open(self._input_fields(low, up, RowBounds(lb, a, constant, steer), known, problem),
                       torch.maximum(lb, known),
                       torch.zeros_like(problem), self._gap([(a, constant)], low, up, problem, empty))

    def search_rounds(self, until: float | None = None, min_open: int = 1) -> BabReport | None:
        """Split and bound the stored domains until none is open (the finished report), a counterexample
        or the deadline; or, with ``until`` (monotonic), return None at the first round boundary past it
        where at least ``min_open`` domains are open (for :func:`~nlverify.verifier.parallel.run_sharded`)."""
        o = self.options
        alpha_iterations = self.alpha_iterations
        batch_domains = input_batch_domains(self.graph, o)
        while len(self.store):
            if self.expired():
                return self.finish("timeout")
            if until is not None and time.monotonic() >= until and len(self.store) >= min_open:
                return None
            if self.round_hook is not None:
                self.round_hook(self)
            self.report.rounds += 1
            batch = self.pop(batch_domains)
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
            self._strong_scores(scores, self._strong_domains(batch.depth), low, up, problem)
            best, dim = scores.max(1)
            if torch.isinf(best).any():
                return self.finish("stuck", message="an open input box is too thin to split")
            point = (low.gather(1, dim.unsqueeze(1)) + up.gather(1, dim.unsqueeze(1))).squeeze(1) / 2
            child_low, child_up = split_box(low, up, dim, point)
            parent_lb = f["lb"].repeat(2, 1)
            # the parent's linear bound still holds on each child: often it already closes one of them
            parent_a, parent_c = f["A"].repeat(2, 1, 1), f["c"].repeat(2, 1)
            inherited = inherited_lower_bound(parent_a, parent_c, child_low, child_up)
            parent_lb = torch.maximum(parent_lb, inherited)
            depth = (batch.depth + 1).repeat(2)
            child_problem = problem.repeat(2)
            self.report.max_depth = max(self.report.max_depth, int(depth.max()))
            inherited_gap = conjunction_gap(parent_a, parent_c, self.ds[child_problem], child_low, child_up)
            open_children = ~(closed_domains(parent_lb, self.ds[child_problem]) | (inherited_gap > 0))
            self.report.domains += int((~open_children).sum())
            self.report.inherited_closed += int((~open_children).sum())
            if not open_children.any():
                continue
            child_low, child_up = child_low[open_children], child_up[open_children]
            parent_lb, depth = parent_lb[open_children], depth[open_children]
            child_problem = child_problem[open_children]
            parent_bound = (parent_a[open_children], parent_c[open_children])
            rows = bound_input_boxes(self.graph, self.propagator, child_low, child_up, self.Cs[child_problem],
                                     alpha_iterations, self.deadline, self.ds[child_problem], self.bound_method,
                                     second_order=o.second_order)
            width_before = child_up - child_low
            child_low, child_up, empty = self._clip([(rows.A, rows.c), parent_bound],  # the parent's holds too
                                                    child_low, child_up, child_problem)
            child_low, child_up, rows, empty = self._rebound_shrunk(
                width_before, child_low, child_up, child_problem, rows, empty, alpha_iterations)
            linear_bounds = [(rows.A, rows.c), parent_bound]
            rows = rows._replace(lb=torch.maximum(rows.lb, inherited_lower_bound(rows.A, rows.c, child_low, child_up)))
            parent_lb = torch.maximum(parent_lb, inherited_lower_bound(*parent_bound, child_low, child_up))
            try:
                self.push_open(self._input_fields(child_low, child_up, rows, parent_lb, child_problem),
                               torch.maximum(rows.lb, parent_lb), depth,
                               self._gap(linear_bounds, child_low, child_up, child_problem, empty))
            except DomainStoreFull as error:
                return self.finish("memory", message=str(error))
        return self.finish("proved")

    def _clip(self, linear_bounds: list[tuple[Tensor, Tensor]], low: Tensor, up: Tensor,
              problem: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The domains' boxes clipped to where their problem can still be violated, by every linear lower
        bound ``(A, c)`` given (each valid on the box), and which domains hold no violation at all (see
        :mod:`nlverify.verifier.box_clipping`). The first (the box's own bound) also cuts by pairs of rows;
        the others (the parent's, which already clipped the parent box) once by single rows: the same
        domains on lsnc state_8, 10 % less time. Unchanged boxes when ``clip_input_boxes`` is off."""
        empty = torch.zeros_like(problem, dtype=torch.bool)
        if not self.options.clip_input_boxes:
            return low, up, empty
        d = self.ds[problem]
        for index, (a, constant) in enumerate(linear_bounds):
            own = index == 0
            low, up, none_fits = clip_to_violation(a, constant, d, low, up, rounds=CLIP_ROUNDS if own else 1,
                                                   pairs=own)
            empty |= none_fits
        return low, up, empty

    def _rebound_shrunk(self, width_before: Tensor, low: Tensor, up: Tensor, problem: Tensor,
                        rows: RowBounds, empty: Tensor,
                        alpha_iterations: int) -> tuple[Tensor, Tensor, RowBounds, Tensor]:
        """Bound again the boxes that clipping left with less than ``rebound_volume_ratio`` of their volume:
        the bound on the smaller box is tighter at once and often closes it without a split. Per row the
        better of the two linear bounds is kept (both hold on the clipped box and its sub-boxes), and the
        box is clipped once more by it. Returns ``(low, up, rows, empty)``."""
        ratio = self.options.rebound_volume_ratio
        if ratio <= 0:  # (without clipping no box shrinks, so nothing is bounded again)
            return low, up, rows, empty
        kept = torch.where(width_before > 0, (up - low) / torch.where(width_before > 0, width_before, 1.0), 1.0)
        again = torch.nonzero(~empty & (kept.clamp(max=1).prod(1) < ratio)).flatten()
        if again.numel() == 0:
            return low, up, rows, empty
        new = bound_input_boxes(self.graph, self.propagator, low[again], up[again], self.Cs[problem[again]],
                                alpha_iterations, self.deadline, self.ds[problem[again]], self.bound_method,
                                second_order=self.options.second_order)
        old = RowBounds(*(t[again] for t in rows))
        part = old.merged(new, _better(new.lb, old.lb))._replace(lb=torch.maximum(old.lb, new.lb))
        rows = RowBounds(*(t.index_put((again,), p) for t, p in zip(rows, part)))
        low, up, empty = low.clone(), up.clone(), empty.clone()
        low[again], up[again], none_fits = self._clip([(part.A, part.c)], low[again], up[again], problem[again])
        empty[again] |= none_fits
        return low, up, rows, empty

    def _gap(self, linear_bounds: list[tuple[Tensor, Tensor]], low: Tensor, up: Tensor, problem: Tensor,
             empty: Tensor) -> Tensor:
        """``(k,)``: the best conjunction gap of the linear bounds on the boxes, ``+inf`` on empty ones."""
        d = self.ds[problem]
        gap = torch.stack([conjunction_gap(a, c, d, low, up) for a, c in linear_bounds]).max(0).values
        return torch.where(empty, torch.full_like(gap, math.inf), gap)

    def _strong_scores(self, scores: Tensor, strong: Tensor, low: Tensor, up: Tensor, problem: Tensor) -> None:
        """Replace the smear ``scores`` of the ``strong`` domains by strong scores
        (:meth:`strong_input_scores`) in chunks while the rest of the round (:meth:`next_round_seconds`)
        still fits before the deadline; domains left over keep smear. The first chunk is
        :data:`STRONG_CHUNK` domains; each later one as many as half the time left allows at the cost per
        domain measured so far (with time to spare, all the rest: one chunk of 512 domains throughout cost
        lsnc state_0 10 %).
        Strong scoring bounds ``2 n`` children per domain and is most of a strong round's cost, so its
        time is budgeted here, chunk by chunk, and left out of the round durations that
        :meth:`expired` predicts from."""
        index = strong.nonzero().squeeze(1)
        started, done = time.monotonic(), 0
        while done < index.numel():
            now = time.monotonic()
            room = self.deadline - now - self.next_round_seconds()
            if room <= 0:
                break
            size = STRONG_CHUNK
            if done:  # as many as half the room allows at this round's cost per domain so far
                size = max(STRONG_CHUNK, int(room / 2 / ((now - started) / done)))
            chunk = index[done:done + size]
            strong_scores = self.strong_input_scores(low[chunk], up[chunk], problem[chunk])
            scores[chunk] = torch.where(torch.isinf(scores[chunk]), scores[chunk], strong_scores)
            done += chunk.numel()
        self.round_time_excluded += time.monotonic() - started

    def _strong_domains(self, depth: Tensor) -> Tensor:
        """``(k,)``: the domains whose split dimension strong branching picks (the others use smear)."""
        rule = self.options.input_branching
        if rule not in INPUT_BRANCHING:
            raise ValueError(f"unknown input branching '{rule}', expected one of {INPUT_BRANCHING}")
        if rule == "auto":
            # the forward bounds that score strong branching carry one coefficient per input, free or
            # fixed: on dist_shift (8 free of 792) alternating bounded 69 domains in 55 s, smear 1,735 in 42 s.
            # And they bound 2 n children per scored domain: on a network costly enough for forward boxes
            # (cgan), two strong rounds took 106 of BaB's first 134 s.
            few_inputs = self.graph.num_inputs <= STRONG_BRANCHING_MAX_INPUTS
            rule = "alternate" if few_inputs and self.bound_method != "forward" else "smear"
        if rule == "alternate":
            return depth % max(self.options.strong_every, 1) == 0
        return torch.full_like(depth, rule == "strong", dtype=torch.bool)

    def strong_input_scores(self, low: Tensor, up: Tensor, problem: Tensor) -> Tensor:
        """``(k, n)``: per domain and input dimension, the gap of the worse child when that dimension is
        halved, from cheap forward bounds of the ``2 f`` children of every domain at once (``f`` free
        dimensions; a fixed dimension scores ``-inf``; higher is better). The children's rows are bounded by
        the output's forward affine bounds alone (:func:`~nlverify.bounds.forward.forward_row_bounds`); a
        backward pass on top chose the same splits on lsnc (state_6: 574,021 domains against 573,893)
        at 13 % more time, and the same times on ACAS Xu."""
        k, n = low.shape
        free = free_dims(self.problem)
        f = free.numel()
        dims = free.repeat_interleave(k)  # dim-major: (f k,)
        point = ((low + up) / 2).repeat(f, 1).gather(1, dims.unsqueeze(1)).squeeze(1)
        child_low, child_up = split_box(low.repeat(f, 1), up.repeat(f, 1), dims, point)  # (2 f k, n)
        child_problem = problem.repeat(2 * f)
        with torch.no_grad():
            lb = forward_row_bounds(self.graph, child_low, child_up, self.propagator, self.Cs[child_problem])
        gap = domain_gap(lb, self.ds[child_problem]).reshape(2, f, k)
        scores = torch.full((k, n), -math.inf, dtype=gap.dtype, device=gap.device)
        scores[:, free] = gap.min(0).values.transpose(0, 1)
        return scores

    def _input_fields(self, low: Tensor, up: Tensor, rows: RowBounds, known_lb: Tensor,
                      problem: Tensor) -> dict[str, Tensor]:
        """Stored per input-split domain: the box, its best lower bound (``lb``, at least ``known_lb``), its
        own linear lower bound ``A x + c`` per row (``A``, ``c``, from :func:`bound_input_boxes`), and
        ``a``, the steering coefficients of the row that steers the split (see :meth:`_steering_rows`)."""
        best = torch.maximum(rows.lb, known_lb)
        steering = self._steering_rows(low, up, rows.lb, problem)
        a_best = rows.steer[torch.arange(rows.steer.shape[0], device=rows.steer.device), steering]
        return {"low": low, "up": up, "lb": best, "a": a_best, "A": rows.A, "c": rows.c, "problem": problem}

    def _steering_rows(self, low: Tensor, up: Tensor, lb: Tensor, problem: Tensor) -> Tensor:
        """Per domain, the row its own bound favours (largest ``lb - d``; a row favoured only by the
        inherited bound has coefficients that say little about this box -- measured: choosing by the
        best bound tripled the tree on ACAS Xu 1_1 prop_3) among the rows that splitting can still make
        provable (:meth:`_provable_rows`). If none, the bound alone decides."""
        margin = lb - self.ds[problem]
        if self.options.steer_by_provable_rows and margin.shape[1] > 1:
            provable = self._provable_rows(low, up, problem, margin)
            margin = torch.where(provable | ~provable.any(1, keepdim=True), margin, torch.full_like(margin, -math.inf))
        return best_rows(margin, torch.zeros_like(margin))

    def _provable_rows(self, low: Tensor, up: Tensor, problem: Tensor, margin: Tensor | None = None) -> Tensor:
        """``(k, m)``: False where a short descent on row ``i`` alone finds a point of the box with
        ``C_i f(x) - d_i <= STEERING_TOLERANCE * min(margin_i, 0)`` (``margin = lb - d``, the bound's gap;
        without ``margin``: ``<= 0``). Such a row is violated by a sizeable part of its bound's gap: the
        looseness that splitting removes cannot close it, and steering the split by it is wasted. A row
        violated by a sliver stays: most of its gap is looseness, and a child may well be closed by it.

        lsnc ("V(x) <= rho and V decreases"; with the quadratic-form rewrite the V row is often the tighter
        bound): on output_8 the sublevel set covers much of the worst boxes (``V`` down to 0.036 against
        ``rho = 0.045``), and steering by V left problem 0 open after 40,577 domains where skipping it
        proved it in 9,257; on output_6 ``V`` dips below ``rho`` by 1e-4 against a gap of 1.4e-3, and
        skipping V at any violation ran to depth 67 and timed out, where the tolerance proved it in 3,055
        (5,215 without steering). state_2 12,701 -> 9,515 domains; ACAS Xu 1_1 prop_3 4,463 -> 4,213.

        The descent starts at the centre and takes ``STEERING_STEPS`` signed-gradient steps of halving
        size, all rows and domains at once (``V``'s minimum is inside the box, where no corner or centre
        test finds it)."""
        k = low.shape[0]
        C, d = self.Cs[problem], self.ds[problem]
        m = C.shape[1]
        low_r, up_r = low.repeat_interleave(m, 0), up.repeat_interleave(m, 0)
        rows, thresholds = C.reshape(k * m, -1), d.reshape(k * m)
        x = ((low_r + up_r) / 2).detach()
        row_values = lambda points: (rows * self.model(points)).sum(-1) - thresholds  # noqa: E731
        best = torch.full_like(thresholds, math.inf)
        for step in range(STEERING_STEPS):
            with torch.enable_grad():
                x.requires_grad_(True)
                value = row_values(x)
                gradient, = torch.autograd.grad(value.sum(), x)
            best = torch.minimum(best, value.detach())
            size = (up_r - low_r) * (0.5 ** (step + 1))
            x = torch.minimum(torch.maximum(x.detach() - size * gradient.sign(), low_r), up_r)
        with torch.no_grad():
            best = torch.minimum(best, row_values(x)).reshape(k, m)
        gap = (torch.zeros_like(best) if margin is None
               else torch.nan_to_num(margin, nan=-math.inf, neginf=-math.inf).clamp(max=0))
        return best > STEERING_TOLERANCE * gap

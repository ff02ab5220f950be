"""The incomplete bound stages of the pipeline: CROWN, alpha-CROWN and layer-wise box tightening.

Each stage runs over the problems still open, packed into batched calls (one input box per region,
every row of the region's problems as specification rows, :func:`batches`). A call records, for every
problem, the best lower bound of each row and the node boxes the stage produced (``Problem.boxes``),
which activation-split branch-and-bound starts from.

* ``crown``: one CROWN pass with CROWN intermediate bounds.
* ``alpha-crown``: optimised relaxations, run long only on regions bound for activation-split BaB
  (:func:`alpha_plan`), stopped early once the open margins stall (:func:`alpha_stalled`).
* ``layerwise``: on those same deep regions, intermediate boxes tightened node by node
  (:mod:`nlverify.bounds.layerwise`), each sweep followed by alpha-CROWN on the output rows.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import torch
from torch import Tensor

from nlverify.verifier.problem import Problem, free_dims, is_proved, rows_proved

if TYPE_CHECKING:
    from nlverify.verifier.pipeline import PipelineOptions

__all__ = ["batches", "alpha_plan", "AlphaPlan", "alpha_stalled", "bound_stage"]


def batches(problems: list[Problem], max_rows: int) -> list[list[list[Problem]]]:
    """Group problems by region (one box each) and pack whole regions into calls of at most ``max_rows``
    boxes x rows (a region bigger than that is a call on its own)."""
    by_region: dict[int, list[Problem]] = {}
    for problem in problems:
        by_region.setdefault(problem.region, []).append(problem)
    calls: list[list[list[Problem]]] = [[]]
    for group in by_region.values():
        candidate = calls[-1] + [group]
        rows = max(sum(p.C.shape[0] for p in g) for g in candidate) * len(candidate)
        if calls[-1] and rows > max_rows:
            calls.append([group])
        else:
            calls[-1] = candidate
    return [call for call in calls if call]


@dataclass(frozen=True)
class AlphaPlan:
    iterations: int
    stall_window: int
    stall_tolerance: float
    seconds: float | None  # this call's share of the time left; None: up to the deadline


def alpha_plan(call: list[list[Problem]], options: PipelineOptions, time_left: float | None,
               calls_left: int) -> AlphaPlan:
    """How long alpha-CROWN may run on one call.

    Input-split BaB re-bounds every node on every box, so the root's intermediate boxes matter little
    and a short alpha stage hands over early (``alpha_iterations``, ``alpha_stall_window``). Activation-split
    BaB (regions with at least ``deep_alpha_min_inputs`` free inputs) keeps the root's intermediate boxes
    for every domain, and on sigmoid nets alpha-CROWN tightens them slowly but for long: eran_sigmoid
    7481, after 14 iterations (the short rule's stop) BaB left one problem open at 120 s; after 50 it
    proved the rest in 15 s, after 75 in 7 s. The stall rule gets a longer window there (iterations 10-20
    are often flat while Adam settles), and the stage a cap of ``deep_alpha_time_fraction`` of the time
    left, shared among the calls still to run."""
    if not _is_deep(call, options):
        return AlphaPlan(options.alpha_iterations, options.alpha_stall_window, options.alpha_stall_tolerance, None)
    seconds = None if time_left is None else options.deep_alpha_time_fraction * time_left / max(calls_left, 1)
    return AlphaPlan(options.deep_alpha_iterations, options.deep_alpha_stall_window,
                     options.deep_alpha_stall_tolerance, seconds)


def _call_tensors(call: list[list[Problem]]) -> tuple[Tensor, Tensor, Tensor]:
    """The call's boxes ``(B, n)`` (one per region) and rows ``C`` ``(B, S, m)``: S = the most rows any
    region has, shorter ones padded with zero rows (ignored)."""
    rows = max(sum(p.C.shape[0] for p in group) for group in call)
    first = call[0][0]
    C = first.C.new_zeros(len(call), rows, first.C.shape[1])
    for b, group in enumerate(call):
        stacked = torch.cat([p.C for p in group])
        C[b, :stacked.shape[0]] = stacked
    lower = torch.stack([group[0].lower for group in call])
    upper = torch.stack([group[0].upper for group in call])
    return lower, upper, C


def _record(call: list[list[Problem]], low: Tensor, boxes: dict, stage: str) -> None:
    """Each problem keeps its region's node boxes (from ``stage``) and the best of its rows' lower bounds."""
    for b, group in enumerate(call):
        start = 0
        for problem in group:
            problem.boxes = {name: (l[b:b + 1], u[b:b + 1]) for name, (l, u) in boxes.items()}
            problem.boxes_stage = stage
            m = problem.C.shape[0]
            problem.best_lower = torch.maximum(problem.best_lower, low[b, start:start + m].detach())
            start += m


def _open_margins(call: list[list[Problem]], best: Tensor) -> list[float]:
    """Best margin ``max_i (lower_i - d_i)`` of each problem of the call that no row proves yet."""
    margins = []
    for b, group in enumerate(call):
        start = 0
        for problem in group:
            m = problem.C.shape[0]
            rows = best[b, start:start + m]
            if not bool(rows_proved(rows, problem.d).any()):
                margins.append(float(torch.nan_to_num(rows - problem.d, nan=-math.inf).max()))
            start += m
    return margins


def _stall_rule(call: list[list[Problem]], window: int, tolerance: float) -> Callable[[Tensor], bool]:
    """alpha-CROWN's ``stop``: every problem of the call has a row proved (nothing left to do), or the
    iterations stall (:func:`alpha_stalled`)."""
    history: list[float] = []

    def stop(best: Tensor) -> bool:
        margins = _open_margins(call, best)
        if not margins:
            return True
        history.append(sum(margins))
        return alpha_stalled(history, window, tolerance)

    return stop


def _is_deep(call: list[list[Problem]], options: PipelineOptions) -> bool:
    """Every region of the call leaves enough inputs free to go to activation-split BaB."""
    return all(free_dims(p).numel() >= options.deep_alpha_min_inputs for group in call for p in group)


def _bound_call(model, call: list[list[Problem]], method: str, options: PipelineOptions,
                deadline: float | None = None, calls_left: int = 1) -> None:
    """One batched bound computation over the call's regions. Updates each problem's ``best_lower``."""
    if method == "layerwise":
        _layerwise_call(model, call, options, deadline, calls_left)
        return
    lower, upper, C = _call_tensors(call)
    if method == "crown":
        from nlverify.bounds.crown import CrownOptions, crown

        low, _, boxes = crown(model.graph, lower, upper, C, CrownOptions(), model.propagator, need_upper=False)
    else:
        from nlverify.bounds.alpha import AlphaOptions, alpha_crown

        plan = alpha_plan(call, options, None if deadline is None else deadline - time.monotonic(), calls_left)
        if plan.seconds is not None:
            deadline = min(deadline, time.monotonic() + plan.seconds)
        alpha_options = AlphaOptions(iterations=plan.iterations, deadline=deadline,
                                     stop=_stall_rule(call, plan.stall_window, plan.stall_tolerance))
        low, _, boxes, _ = alpha_crown(model.graph, lower, upper, C, alpha_options,
                                       propagator=model.propagator, need_upper=False)
    _record(call, low, boxes, method)


def _region_boxes(call: list[list[Problem]]) -> dict | None:
    """The node boxes of the call's regions ``(B, ...)`` from the last stage (every problem of a region
    holds its region's, see :func:`_record`), or None when a region has none."""
    if any(group[0].boxes is None for group in call):
        return None
    boxes = {}
    for name in call[0][0].boxes:
        low = torch.cat([group[0].boxes[name][0] for group in call])
        up = torch.cat([group[0].boxes[name][1] for group in call])
        boxes[name] = (low, torch.maximum(up, low))  # the alpha stage's best-of-iterates may cross by rounding
    return boxes


def _layerwise_call(model, call: list[list[Problem]], options: PipelineOptions, deadline: float | None,
                    calls_left: int) -> None:
    """Deep regions only (activation-split BaB keeps the root's boxes for every domain): sweeps of
    :func:`~nlverify.bounds.layerwise.tighten_boxes` from the alpha stage's boxes, each followed by
    alpha-CROWN on the output rows within the tightened boxes, until every problem is proved, the sweeps
    run out, or ``layerwise_time_fraction`` of the time left (shared among the calls still to run) is
    spent."""
    from nlverify.bounds.alpha import AlphaOptions, alpha_crown
    from nlverify.bounds.crown import CrownOptions, SplitConstraints
    from nlverify.bounds.layerwise import LayerwiseOptions, layerwise_targets, tighten_boxes

    boxes = _region_boxes(call)
    if not _is_deep(call, options) or boxes is None:
        return
    if deadline is not None:
        deadline = min(deadline, time.monotonic()
                       + options.layerwise_time_fraction * (deadline - time.monotonic()) / max(calls_left, 1))
    graph, propagator = model.graph, model.propagator
    lower, upper, C = _call_tensors(call)
    targets = [node.name for node in layerwise_targets(graph, propagator, CrownOptions())]
    sweep_options = LayerwiseOptions(iterations=options.layerwise_iterations, sweeps=1, deadline=deadline)
    alphas = None
    for _ in range(options.layerwise_sweeps):
        if deadline is not None and time.monotonic() > deadline:
            return
        boxes, alphas = tighten_boxes(graph, boxes, sweep_options, propagator, alphas)
        splits = SplitConstraints({t: boxes[t][0] for t in targets}, {t: boxes[t][1] for t in targets})
        output_options = AlphaOptions(iterations=options.layerwise_output_iterations, optimize_intermediate=False,
                                      crown=CrownOptions(intermediate="ibp"), deadline=deadline,
                                      stop=_stall_rule(call, options.deep_alpha_stall_window,
                                                       options.deep_alpha_stall_tolerance))
        low, _, node_boxes, _ = alpha_crown(graph, lower, upper, C, output_options, propagator=propagator,
                                            need_upper=False, splits=splits)
        _record(call, low, {**node_boxes, **{t: boxes[t] for t in targets}}, "layerwise")
        if all(is_proved(p) for group in call for p in group):
            return


def alpha_stalled(history: list[float], window: int, tolerance: float) -> bool:
    """``history``: the summed best margin ``max_i (lower_i - d_i)`` of the open problems after each
    iteration (it only rises). Stalled when the last ``window`` iterations raised it by less than
    ``tolerance`` times ``max(|now|, |first| / 20)``: the later iterations buy little, and branch and bound
    does better with that time. Measured on eran_sigmoid: on 7903 the sum goes -1047 -> -25.9 in 12
    iterations, then only to -24.5 in the remaining 18, which take longer than the first 12; on 6981 the
    last open problem creeps from -0.08 to -0.01 over the final 18 iterations (12 s), and branch and bound
    closes it in 1 s. The second term is what stops the creep near zero. Infinite margins (a row with no
    finite bound yet) never count as stalled."""
    if tolerance <= 0 or window <= 0 or len(history) <= window:
        return False
    now, before, first = history[-1], history[-1 - window], history[0]
    if not all(math.isfinite(v) for v in (now, before, first)):
        return False
    return now - before < tolerance * max(abs(now), abs(first) / 20)


def bound_stage(model, problems: list[Problem], method: str, options: PipelineOptions,
                deadline: float) -> tuple[list[Problem], bool]:
    """Run ``method`` (``"crown"``, ``"alpha-crown"`` or ``"layerwise"``) on the open problems, batched by
    region (:func:`batches`); returns those still open and whether the deadline (``time.monotonic()``
    seconds) stopped the stage."""
    calls = batches(problems, options.max_rows_per_call)
    for index, call in enumerate(calls):
        if time.monotonic() >= deadline:
            return [p for p in problems if not is_proved(p)], True
        _bound_call(model, call, method, options, deadline, calls_left=len(calls) - index)
    return [p for p in problems if not is_proved(p)], False

"""The verification pipeline: attack, incomplete bounds, then branch-and-bound, under one time budget.

A property is violated when ``OR_r [x in box_r AND OR_k (C_rk y <= d_rk)]`` holds for some ``x``. We call a
pair ``(r, k)`` a *problem*. It is *proved* (cannot be satisfied) when some row ``i`` of ``C_rk`` has

    lower bound of (C_rk y)_i over box_r  -  d_rk,i  >  PROOF_MARGIN(d_rk,i, bound)

i.e. ``(C_rk y)_i > d_rk,i`` everywhere on the box, so the conjunction can never hold. The verdict is

* ``unsat`` only when every problem is proved (by CROWN, alpha-CROWN or :func:`bab`);
* ``sat`` only with a counterexample that onnxruntime confirms on the ORIGINAL ONNX file;
* ``timeout`` when the deadline stopped a stage, ``unknown`` when every stage ran and neither held.

Proof margin
------------
Bounds are computed in the model's dtype (float32). A computed bound ``b`` differs from the exact
bound of the float32 model by rounding error that grows with the magnitude of the terms summed; and the
model onnxruntime evaluates is itself a float32 computation. We therefore demand a small positive
slack before a row counts as proved:

    PROOF_MARGIN = PROOF_ABS_TOL + PROOF_REL_TOL * max(|b|, |d|)     (1e-6 + 1e-5 relative)

``1e-5`` relative is ~100 float32 unit roundoffs, the order of the accumulated error of the dot products
in a bound of the nets we meet; rows that pass zero but not the margin are counted in
``stats["near_miss_rows"]`` (never silently dropped). This is an engineering guard, not a rigorous
floating-point proof.

Bounds computed in float64 use ``1e-9 + 1e-9 relative`` instead (~10^7 float64 unit roundoffs). A float32
model whose open problems have near-miss rows after the incomplete stages is re-verified in float64 (a
float64 copy of the model holds exactly the same parameters; every float32 bound is discarded): some
properties leave a slack of 1e-6 on outputs that are exactly constant (ml4acopf: ``Y_6 >= 0.300001`` on
an output clamped to 0.3), which no float32 margin can accept. What the float64 margin does not cover is
the gap between the real-arithmetic network and onnxruntime's float32 evaluation of it.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from nlverify import faults  # TEST-ONLY bug injection; inert unless NLVERIFY_INJECT_BUG is set
from nlverify.verifier.attack import AttackOptions, AttackRecord, Candidate, attack, model_parameters, violation_tensors
from nlverify.verifier.result import Verdict, validate_counterexample
from nlverify.verifier.spec import Spec, check_against_model, parse_vnnlib

__all__ = ["PROOF_ABS_TOL", "PROOF_REL_TOL", "INPUT_SPLIT_MAX_INPUTS", "proof_margin", "Problem", "ProblemOutcome",
           "PipelineOptions", "VerificationResult", "verify", "verify_loaded", "bab", "rows_proved", "alpha_stalled"]

PROOF_ABS_TOL = 1e-6
PROOF_REL_TOL = 1e-5
PROOF_ABS_TOL_FLOAT64 = 1e-9
PROOF_REL_TOL_FLOAT64 = 1e-9
INPUT_SPLIT_MAX_INPUTS = 32  # regions with at most this many free inputs go to input-split BaB (see bab.py)


def proof_margin(bound: Tensor, d: Tensor) -> Tensor:
    """The slack a lower bound must exceed ``d`` by: ``PROOF_ABS_TOL + PROOF_REL_TOL * max(|b|, |d|)``, or
    the float64 tolerances when both are float64."""
    if bound.dtype == torch.float64 and d.dtype == torch.float64:
        return PROOF_ABS_TOL_FLOAT64 + PROOF_REL_TOL_FLOAT64 * torch.maximum(bound.abs(), d.abs())
    return PROOF_ABS_TOL + PROOF_REL_TOL * torch.maximum(bound.abs(), d.abs())


def rows_proved(lower: Tensor, d: Tensor) -> Tensor:
    """Rows whose lower bound exceeds ``d`` by more than :func:`proof_margin` (NaN never proves)."""
    return (lower - d) > proof_margin(lower, d)


@dataclass
class Problem:
    """One (region, conjunction) pair that must be shown infeasible: no ``x`` in ``[lower, upper]`` with
    ``C f(x) <= d``. ``best_lower`` holds the best lower bound on ``C f(x)`` so far (per row)."""

    region: int
    conjunction: int
    lower: Tensor  # (n,)
    upper: Tensor  # (n,)
    C: Tensor  # (m_rows, num_outputs)
    d: Tensor  # (m_rows,)
    best_lower: Tensor  # (m_rows,)
    boxes: dict | None = None  # node -> (lower, upper) boxes (batch 1) of the last bound stage, for BaB
    boxes_stage: str | None = None  # the bound stage that produced ``boxes`` ("crown", "alpha-crown", "layerwise")


def free_dims(problem: Problem) -> Tensor:
    """Indices of the input dimensions a problem's region box leaves free (width > 0). Properties that fix
    most inputs (dist_shift: 784 pixels fixed, 8 latent inputs free) are low-dimensional problems."""
    return (problem.upper > problem.lower).nonzero().squeeze(1)


@dataclass
class ProblemOutcome:
    """What a complete method concluded for one problem: ``proved``, or a candidate ``counterexample``
    (to be confirmed by the pipeline), or neither (unknown)."""

    proved: bool = False
    counterexample: np.ndarray | None = None


BabFunction = Callable[..., list[ProblemOutcome]]


def bab(model, problems: list[Problem], time_left: float, device: str = "cpu",
        seed: int = 0) -> list[ProblemOutcome]:
    """Extension point for branch-and-bound: receive the problems the incomplete bounds left open and the
    seconds left, return one :class:`ProblemOutcome` per problem (see :mod:`nlverify.verifier.bab`)."""
    from nlverify.verifier.bab import branch_and_bound

    return branch_and_bound(model, problems, time_left, device=device, seed=seed)


@dataclass
class PipelineOptions:
    attack: AttackOptions = field(default_factory=lambda: AttackOptions(restarts=128, steps=150))
    extra_attack_rounds: int = 4  # PGD rounds after the bounds failed to prove everything
    alpha_iterations: int = 30
    alpha_stall_window: int = 3  # alpha stage: stop once the open problems' summed margin improved by less
    alpha_stall_tolerance: float = 0.02  # than this fraction of itself over the last window iterations (0: never)
    # High-dimensional regions (at least deep_alpha_min_inputs free inputs) go to activation-split BaB,
    # which keeps the root's intermediate boxes for good: there alpha-CROWN runs longer, with a longer
    # stall window, but stops at deep_alpha_time_fraction of the time left. See _alpha_plan.
    deep_alpha_min_inputs: int = INPUT_SPLIT_MAX_INPUTS + 1  # where BaB switches to activation split
    deep_alpha_iterations: int = 200
    deep_alpha_stall_window: int = 10
    deep_alpha_stall_tolerance: float = 0.01
    deep_alpha_time_fraction: float = 0.5
    use_alpha: bool = True
    # Deep regions, after alpha-CROWN: intermediate boxes tightened node by node (nlverify.bounds.layerwise),
    # each sweep followed by alpha-CROWN on the output within them; the stage stops at
    # layerwise_time_fraction of the time left. eran_sigmoid 9044: -0.985 after alpha -> -0.454 (1 sweep)
    # -> -0.338 (2), and BaB then proves it (see nlverify.bounds.layerwise)
    layerwise: bool = True
    layerwise_sweeps: int = 2
    layerwise_iterations: int = 60  # Adam steps per node and sweep
    layerwise_output_iterations: int = 60
    layerwise_time_fraction: float = 0.3
    max_rows_per_call: int = 4096  # boxes x rows per bound call (memory guard)
    float64_near_misses: bool = True  # re-verify in float64 when float32 leaves near-miss rows open
    bab: BabFunction | None = None  # defaults to :func:`bab`


@dataclass
class VerificationResult:
    verdict: Verdict
    x: np.ndarray | None = None
    y: np.ndarray | None = None
    timings: dict[str, float] = field(default_factory=dict)
    stats: dict[str, object] = field(default_factory=dict)
    message: str = ""


class _Clock:
    def __init__(self, timeout: float) -> None:
        self.start = time.monotonic()
        self.deadline = self.start + timeout
        self.timings: dict[str, float] = {}
        self._mark = self.start

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def expired(self) -> bool:
        return self.left() <= 0

    def lap(self, stage: str) -> None:
        now = time.monotonic()
        self.timings[stage] = self.timings.get(stage, 0.0) + now - self._mark
        self._mark = now


def _confirm(model_path: str, spec: Spec, candidates: list[Candidate],
             stats: dict) -> tuple[np.ndarray, np.ndarray] | None:
    """The first candidate onnxruntime confirms on the original file, or None."""
    for candidate in candidates:
        ok, y, _ = validate_counterexample(model_path, spec, candidate.x)
        if ok:
            return candidate.x, y
        stats["rejected_candidates"] = stats.get("rejected_candidates", 0) + 1
    return None


def model_dtype(model) -> torch.dtype:
    """The floating dtype the model computes in (float32 unless its parameters say otherwise)."""
    parameter = next(iter(model_parameters(model)), None)
    return parameter.dtype if parameter is not None else torch.float32


def _problems(spec: Spec, dtype: torch.dtype, device) -> list[Problem]:
    as_tensor = lambda a: torch.as_tensor(np.asarray(a), dtype=dtype, device=device)  # noqa: E731
    problems = [Problem(r, k, as_tensor(region.lower), as_tensor(region.upper), as_tensor(conj.C),
                        as_tensor(conj.d), torch.full((conj.C.shape[0],), -math.inf, dtype=dtype, device=device))
                for r, region in enumerate(spec.regions) for k, conj in enumerate(region.disjuncts)]
    for p in problems if faults.ACTIVE else ():  # TEST-ONLY fault hook (faults.py): shrink_box
        p.lower, p.upper = faults.shrink_box(p.lower, p.upper)
    return problems


def _batches(problems: list[Problem], max_rows: int) -> list[list[list[Problem]]]:
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
class _AlphaPlan:
    iterations: int
    stall_window: int
    stall_tolerance: float
    seconds: float | None  # this call's share of the time left; None: up to the deadline


def _alpha_plan(call: list[list[Problem]], options: PipelineOptions, time_left: float | None,
                calls_left: int) -> _AlphaPlan:
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
        return _AlphaPlan(options.alpha_iterations, options.alpha_stall_window, options.alpha_stall_tolerance, None)
    seconds = None if time_left is None else options.deep_alpha_time_fraction * time_left / max(calls_left, 1)
    return _AlphaPlan(options.deep_alpha_iterations, options.deep_alpha_stall_window,
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

        plan = _alpha_plan(call, options, None if deadline is None else deadline - time.monotonic(), calls_left)
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
        if all(_is_proved(p) for group in call for p in group):
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


def in_float64(model, problems: list[Problem]):
    """A float64 copy of ``model`` and of ``problems``, with every float32 bound forgotten (best lower
    bounds reset, stage boxes dropped): their rounding errors are only covered by the float32 margin."""
    import copy

    model64 = copy.deepcopy(model).to(dtype=torch.float64)
    as64 = lambda t: t.to(torch.float64)  # noqa: E731
    fresh = [Problem(p.region, p.conjunction, as64(p.lower), as64(p.upper), as64(p.C), as64(p.d),
                     torch.full_like(as64(p.d), -math.inf)) for p in problems]
    return model64, fresh


def _is_proved(problem: Problem) -> bool:
    return bool(rows_proved(problem.best_lower, problem.d).any())


def _near_misses(problems: list[Problem]) -> int:
    """Rows whose bound is above ``d`` but within the proof margin (reported, not counted as proofs)."""
    return sum(int(((p.best_lower > p.d) & ~rows_proved(p.best_lower, p.d)).sum()) for p in problems)


def _bound_stage(model, problems: list[Problem], method: str, options: PipelineOptions,
                 clock: _Clock) -> tuple[list[Problem], bool]:
    """Run ``method`` on the open problems; returns those still open and whether the deadline hit."""
    calls = _batches(problems, options.max_rows_per_call)
    for index, call in enumerate(calls):
        if clock.expired():
            return [p for p in problems if not _is_proved(p)], True
        _bound_call(model, call, method, options, clock.deadline, calls_left=len(calls) - index)
    return [p for p in problems if not _is_proved(p)], False


def verify(model_path: str | Path, spec_path: str | Path, timeout: float, device: str = "cpu", seed: int = 0,
           options: PipelineOptions | None = None) -> VerificationResult:
    """Load the model (``.onnx``/``.onnx.gz``) and property (``.vnnlib``/``.vnnlib.gz``) and verify.

    Raises ``ModelError`` / ``SpecError`` / ``FileNotFoundError`` for bad input (before any verdict).
    ``timeout`` (seconds, > 0) covers everything, loading included.
    """
    from nlverify.model import load_onnx

    if not timeout > 0:
        raise ValueError(f"timeout must be positive, got {timeout}")
    clock = _Clock(timeout)
    for path in (model_path, spec_path):
        if not Path(path).is_file():
            raise FileNotFoundError(f"no such file: {path}")
    model = load_onnx(model_path)
    spec = parse_vnnlib(spec_path)
    check_against_model(spec, model.num_inputs, model.num_outputs)
    model.to(device=device)
    clock.lap("load")
    return verify_loaded(model, str(model_path), spec, clock, device, seed, options)


def verify_loaded(model, model_path: str, spec: Spec, clock: _Clock | float, device: str = "cpu",
                  seed: int = 0, options: PipelineOptions | None = None) -> VerificationResult:
    """The pipeline on an already loaded model and spec (``clock``: a :class:`_Clock` or seconds)."""
    options = options or PipelineOptions()
    clock = clock if isinstance(clock, _Clock) else _Clock(float(clock))
    stats: dict[str, object] = {"regions": len(spec.regions),
                                "problems": sum(len(r.disjuncts) for r in spec.regions)}
    attack_options = AttackOptions(**{**vars(options.attack), "seed": seed})
    attack_record = AttackRecord()

    def finish(verdict: Verdict, found=None, message: str = "") -> VerificationResult:
        clock.lap("finish")
        if math.isfinite(attack_record.best_margin):  # how close the attack came (<= 0: it found a violation)
            stats["attack_margin"] = float(f"{attack_record.best_margin:.4g}")
        x, y = found if found is not None else (None, None)
        return VerificationResult(verdict, x, y, dict(clock.timings), stats, message)

    dtype = model_dtype(model)
    with torch.no_grad():
        tensors = violation_tensors(spec, dtype, device)
    # 1. attack
    found = _confirm(model_path, spec, attack(model, tensors, attack_options, clock.deadline, record=attack_record),
                     stats)
    clock.lap("attack")
    if found is not None:
        return finish(Verdict.SAT, found, "counterexample found by the attack")
    if clock.expired():
        return finish(Verdict.TIMEOUT)
    # 2. incomplete bounds: CROWN on everything, alpha-CROWN on what is left, then (deep regions only) the
    #    layer-wise box tightening
    problems = _problems(spec, dtype, device)
    open_problems = problems
    stages = ["crown"] + (["alpha-crown"] + (["layerwise"] if options.layerwise else []) if options.use_alpha else [])
    for method in stages:
        if not open_problems:
            break
        open_problems, hit = _bound_stage(model, open_problems, method, options, clock)
        clock.lap(method)
        stats[f"open_after_{method}"] = len(open_problems)
        if hit:
            stats["near_miss_rows"] = _near_misses(problems)
            return finish(Verdict.TIMEOUT)
    stats["near_miss_rows"] = _near_misses(problems)
    bound_model = model  # the attacks keep the model's own precision
    if open_problems and dtype != torch.float64 and options.float64_near_misses and _near_misses(open_problems):
        # rows above d but inside the float32 margin: only float64 bounds can close them
        bound_model, open_problems = in_float64(model, open_problems)
        stats["float64_problems"] = len(open_problems)
        for method in stages:
            if not open_problems:
                break
            open_problems, hit = _bound_stage(bound_model, open_problems, method, options, clock)
            clock.lap(f"{method}-float64")
            if hit:
                return finish(Verdict.TIMEOUT)
        stats["open_after_float64"] = len(open_problems)
    if not open_problems:
        return finish(Verdict.UNSAT, message="every disjunct proved by bound propagation")
    # 3. branch and bound on what is left
    if clock.expired():
        return finish(Verdict.TIMEOUT)
    outcomes = (options.bab or bab)(bound_model, open_problems, clock.left(), device=device, seed=seed)
    clock.lap("bab")
    proposed = [Candidate(np.asarray(o.counterexample, dtype=np.float64), p.region, 0.0)
                for p, o in zip(open_problems, outcomes) if o.counterexample is not None]
    found = _confirm(model_path, spec, proposed, stats)
    if found is not None:
        return finish(Verdict.SAT, found, "counterexample found by branch and bound")
    open_problems = [p for p, o in zip(open_problems, outcomes) if not o.proved]
    stats["open_after_bab"] = len(open_problems)
    if not open_problems:
        return finish(Verdict.UNSAT, message="every disjunct proved (bounds and branch and bound)")
    # 4. more falsification with fresh restarts while the budget lasts
    if options.extra_attack_rounds > 0 and not clock.expired():
        candidates = attack(model, tensors, attack_options, clock.deadline, rounds=options.extra_attack_rounds,
                            round_offset=1, record=attack_record)
        found = _confirm(model_path, spec, candidates, stats)
        clock.lap("attack")
        if found is not None:
            return finish(Verdict.SAT, found, "counterexample found by the extended attack")
    if clock.expired():
        return finish(Verdict.TIMEOUT)
    return finish(Verdict.UNKNOWN, message=f"{len(open_problems)} of {stats['problems']} disjuncts not proved")

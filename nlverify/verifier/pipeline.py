"""The verification pipeline: attack, incomplete bounds, then branch-and-bound, under one time budget.

A property is violated when ``OR_r [x in box_r AND OR_k (C_rk y <= d_rk)]`` holds for some ``x``. We call a
pair ``(r, k)`` a *problem*. It is *proved* (cannot be satisfied) when some row ``i`` of ``C_rk`` has

    lower bound of (C_rk y)_i over box_r  -  d_rk,i  >  PROOF_MARGIN(d_rk,i, bound)

i.e. ``(C_rk y)_i > d_rk,i`` everywhere on the box, so the conjunction can never hold. The verdict is

* ``unsat`` only when every problem is proved (by CROWN, alpha-CROWN or :func:`bab`);
* ``sat`` only with a counterexample that onnxruntime confirms on the ORIGINAL ONNX file;
* ``timeout`` when the deadline stopped a stage, ``unknown`` when every stage ran and neither held.

Problems and their proof margin are defined in :mod:`nlverify.verifier.problem`; the bound stages
(CROWN, alpha-CROWN, layer-wise) in :mod:`nlverify.verifier.bound_stages`.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from nlverify.verifier.attack import AttackOptions, AttackRecord, Candidate, attack, model_parameters, violation_tensors
from nlverify.verifier.bound_stages import alpha_stalled, bound_stage
from nlverify.verifier.problem import (
    INPUT_SPLIT_MAX_INPUTS, PROOF_ABS_TOL, PROOF_REL_TOL, Problem, ProblemOutcome, in_float64, near_miss_rows,
    problems_from_spec, proof_margin, rows_proved,
)
from nlverify.verifier.result import Verdict, validate_counterexample
from nlverify.verifier.spec import Spec, check_against_model, parse_vnnlib

__all__ = ["PROOF_ABS_TOL", "PROOF_REL_TOL", "INPUT_SPLIT_MAX_INPUTS", "proof_margin", "Problem", "ProblemOutcome",
           "PipelineOptions", "VerificationResult", "verify", "verify_loaded", "bab", "rows_proved", "alpha_stalled"]

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
    problems = problems_from_spec(spec, dtype, device)
    open_problems = problems
    stages = ["crown"] + (["alpha-crown"] + (["layerwise"] if options.layerwise else []) if options.use_alpha else [])
    for method in stages:
        if not open_problems:
            break
        open_problems, hit = bound_stage(model, open_problems, method, options, clock.deadline)
        clock.lap(method)
        stats[f"open_after_{method}"] = len(open_problems)
        if hit:
            stats["near_miss_rows"] = near_miss_rows(problems)
            return finish(Verdict.TIMEOUT)
    stats["near_miss_rows"] = near_miss_rows(problems)
    bound_model = model  # the attacks keep the model's own precision
    if open_problems and dtype != torch.float64 and options.float64_near_misses and near_miss_rows(open_problems):
        # rows above d but inside the float32 margin: only float64 bounds can close them
        bound_model, open_problems = in_float64(model, open_problems)
        stats["float64_problems"] = len(open_problems)
        for method in stages:
            if not open_problems:
                break
            open_problems, hit = bound_stage(bound_model, open_problems, method, options, clock.deadline)
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

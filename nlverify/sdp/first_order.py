"""A quasi-Newton (L-BFGS) method on the certified objective ``rho(t)`` of slope-restricted LipSDP.

The interior-point methods (:mod:`barrier`, :mod:`dual_scaling`) need a dense ``F^{-1}`` and a dense
Newton matrix per iteration, and 100-200 iterations; on 8 x 200 that is minutes. Here the only
variables are the multipliers: ``rho`` is eliminated exactly by the Schur complement,

    rho(t) = lambda_max(B H^{-1} B^T - A)     (:mod:`nlverify.sdp.schur_objective`),

a convex function whose value and gradient cost one block Cholesky of the hidden part ``H``
(``O(sum n_k^3)``, milliseconds for 200-wide layers). Every point with ``H(t) > 0`` is feasible
for every ``rho > rho(t)``, so the best point seen is directly certifiable
(:mod:`nlverify.sdp.certify`).

**Method.**

1. *Start*: the closed-form layerwise feasible point of :func:`nlverify.sdp.barrier.feasible_start`
   (one multiplier per layer, chosen backwards through the Schur complements).
2. *Layer phase* (LipSDP-Neuron only): minimise over one multiplier per layer (``t = tau_k 1``,
   L variables: cheap, and it moves the per-layer scales by orders of magnitude, which the
   per-neuron phase does slowly). Measured on 5x100: from a gap of 0.32 % to 0.009 % at the same
   iteration budget.
3. *Neuron phase*: L-BFGS (two-loop recursion, memory 20, Armijo backtracking; trial points with
   ``H`` not positive definite count as failures and are halved away) on the smoothed objective
   ``f_mu`` (:mod:`schur_objective`) with a continuation ``mu = mu_rel * rho``,
   ``mu_rel = 1e-2, 1e-3, ...`` down to the final level ``eps``; a level ends when its value fell by
   less than ``mu / 10`` over the last 10 iterations (``f_mu`` is only within ``mu log n_0`` of
   ``rho``: optimising it further is wasted), after ``max_iters`` iterations in total, or at the
   time limit.

The variables are ``s = log t`` (``t > 0`` without bounds; the multipliers of different layers
differ by orders of magnitude, and the log makes the steps scale-free): the objective is no
longer convex in ``s`` but the method only needs descent. The returned point is the one with the
smallest *exact* ``rho(t)`` among all feasible points evaluated (line-search trials included).

**Measured** (``benchmarks/lipschitz.py --relu-table --solver lbfgs``, one core, load 1.3-4):
2x100 0.2 s solve, 2.6e-5 above the optimum; 5x100 1.6 s, 4.8e-4; 8x200 23 s (1439 iterations);
10x300 converged in 247 s; 12x400 only 267 iterations in its 181 s limit. The barrier needs ~0.8 s
per iteration on 8x200 and the dual-scaling method found no dual bound there in 2000 iterations.

**Raw value.** There is no dual bound: the ``rho`` reported is that of the best iterate (an
upper bound up to rounding); the distance to the optimum is known only from a reference solve
(see ``benchmarks/lipschitz.py --relu-table``).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .barrier import feasible_start
from .barrier import supports as slope_restricted
from .dual_scaling import TridiagonalLmi
from .lipsdp import SlopeLayerQC, SlopeNeuronQC, SolveResult
from .lmi import LayerQC
from .problem import SolverProblem, build_solver_problem
from .schur_objective import schur_value

MEMORY = 20
ARMIJO = 1e-4
MAX_BACKTRACKS = 30
LAYER_PHASE_ITERS = 40
FIRST_MU_REL = 1e-2


def supports(qcs: Sequence[LayerQC]) -> bool:
    """Slope-restricted layers with ``alpha + beta > 0``. With ``alpha + beta = 0`` (sin: [-1, 1])
    the LMI has no coupling blocks, ``rho(t)`` stays finite up to the boundary ``H(t) >= 0`` and the
    optimum lies *on* it, where this method (steps halved away from infeasible points) stalls:
    measured on a 5-8-3 sin net, 33 % above the optimum."""
    return bool(qcs) and slope_restricted(qcs) and all(qc.spec.alpha + qc.spec.beta > 0 for qc in qcs)


def build_first_order(weights: Sequence[np.ndarray], qcs: Sequence[LayerQC]) -> SolverProblem:
    return build_solver_problem(weights, qcs, supports, "the first-order method handles slope-restricted "
                                "activations with alpha + beta > 0 only")


@dataclass
class Progress:
    """The best feasible point seen (smallest exact rho), and the work done."""

    rho: float = math.inf
    v: np.ndarray | None = None
    iterations: int = 0
    evaluations: int = 0

    def record(self, rho: float, point: np.ndarray) -> None:
        """Count one evaluation; keep ``point`` (copied) when its exact ``rho`` is the smallest so far.
        ``rho`` is None for a point outside the barrier's domain, which is counted and never kept."""
        self.evaluations += 1
        if rho is not None and rho < self.rho:
            self.rho, self.v = rho, point.copy()


class LogObjective:
    """``s -> f_mu(exp(s))`` and its gradient; records every feasible point in ``progress``."""

    def __init__(self, lmi: TridiagonalLmi, progress: Progress, to_best=lambda v: v) -> None:
        self.lmi, self.progress, self.to_best = lmi, progress, to_best

    def __call__(self, s: np.ndarray, mu: float) -> tuple[float, np.ndarray] | None:
        v = np.exp(s)
        val = schur_value(self.lmi, v, mu)
        self.progress.record(None if val is None else val.rho, self.to_best(v))
        if val is None:
            return None
        return val.smoothed, val.gradient * v


def two_loop(g: np.ndarray, pairs: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """The L-BFGS direction ``-H g`` from the stored ``(s, y)`` pairs (oldest first)."""
    q = g.copy()
    alphas = []
    for s, y in reversed(pairs):
        a = float(s @ q) / float(y @ s)
        alphas.append(a)
        q -= a * y
    if pairs:
        s, y = pairs[-1]
        q *= float(s @ y) / float(y @ y)
    else:  # first step: at most a unit change of any log-multiplier
        q /= max(float(np.abs(q).max()), 1.0)
    for (s, y), a in zip(pairs, reversed(alphas)):
        q += s * (a - float(y @ q) / float(y @ s))
    return -q


def minimize_level(objective: LogObjective, s: np.ndarray, mu: float, max_iters: int,
                   deadline: float, pairs: list, window: int = 10) -> np.ndarray:
    """L-BFGS on ``f_mu`` from ``s`` until the stopping rule of the module docstring (the value fell
    by less than ``mu / 10`` over the last ``window`` iterations)."""
    cur = objective(s, mu)
    if cur is None:
        return s
    f, g = cur
    history = [f]
    failures = 0
    for _ in range(max_iters):
        if time.perf_counter() > deadline:
            break
        d = two_loop(g, pairs)
        slope = float(g @ d)
        if not slope < 0:
            pairs.clear()
            d, slope = -g / max(float(np.abs(g).max()), 1.0), -float(g @ g) / max(float(np.abs(g).max()), 1.0)
        step, new = 1.0, None
        for _ in range(MAX_BACKTRACKS):
            trial = objective(s + step * d, mu)
            if trial is not None and trial[0] <= f + ARMIJO * step * slope:
                new = trial
                break
            step *= 0.5
        objective.progress.iterations += 1
        if new is None:
            failures += 1
            pairs.clear()
            if failures >= 2:
                break
            continue
        failures = 0
        ds, dg = step * d, new[1] - g
        if float(ds @ dg) > 1e-12 * float(np.linalg.norm(ds) * np.linalg.norm(dg)):
            pairs.append((ds, dg))
            del pairs[:-MEMORY]
        s, f, g = s + ds, new[0], new[1]
        history.append(f)
        if len(history) > window and history[-window - 1] - f < mu / 10:
            break
    return s


def layer_phase(problem: SolverProblem, progress: Progress, deadline: float) -> np.ndarray:
    """Per-neuron multipliers from the closed-form start, improved over one scalar per layer."""
    lmi = TridiagonalLmi(problem.weights, [SlopeLayerQC(qc.spec, qc.size) for qc in problem.qcs])
    _, tau = feasible_start(lmi.reduction)

    def per_neuron(v: np.ndarray) -> np.ndarray:
        return np.concatenate(lmi.reduction.expand(v))

    objective = LogObjective(lmi, progress, per_neuron)
    rho0 = schur_value(lmi, tau, 0.0)
    mu = FIRST_MU_REL * rho0.rho if rho0 is not None else 0.0
    s = minimize_level(objective, np.log(tau), mu, LAYER_PHASE_ITERS, deadline, [])
    return per_neuron(np.exp(s))


def mu_levels(eps: float) -> list[float]:
    """``1e-2, 1e-3, ...`` down to ``eps`` (at least one level)."""
    levels = [FIRST_MU_REL]
    while levels[-1] > eps * 1.0001:
        levels.append(max(levels[-1] / 10, eps))
    return levels


def solve_first_order(problem: SolverProblem, eps: float = 1e-5, max_iters: int | None = None,
                      warm_start: bool = False, time_limit: float | None = None, **_ignored) -> SolveResult:
    """Minimise ``rho(t)`` (module docstring); ``eps`` is the final relative smoothing level."""
    start = time.perf_counter()
    deadline = start + time_limit if time_limit else math.inf
    max_iters = max_iters or 3000
    lmi = TridiagonalLmi(problem.weights, problem.qcs)
    progress = Progress()
    if warm_start and problem.state is not None:
        v = problem.state["v"].copy()
    elif all(type(qc) is SlopeNeuronQC for qc in problem.qcs):
        v = layer_phase(problem, progress, deadline)
    else:
        v = feasible_start(lmi.reduction)[1]
    objective = LogObjective(lmi, progress)
    s, pairs = np.log(v), []
    first = objective(s, 0.0)
    setup = time.perf_counter() - start
    if first is None:
        return SolveResult(math.nan, [], "infeasible_start", 0, setup, 0.0, {"solver": "lbfgs"})
    status = "converged"
    for level in mu_levels(eps):
        budget = max_iters - progress.iterations
        if budget <= 0:
            status = "max_iters"
            break
        if time.perf_counter() > deadline:
            status = "time_limit"
            break
        s = minimize_level(objective, s, level * progress.rho, budget, deadline, pairs)
    problem.state = {"v": progress.v.copy()}
    values = [{"t": t.copy()} for t in lmi.reduction.expand(progress.v)]
    wall = time.perf_counter() - start
    tol = {"solver": "lbfgs", "eps_smoothing": eps, "evaluations": progress.evaluations}
    return SolveResult(float(progress.rho), values, status, progress.iterations, setup, wall - setup, tol)

"""L-BFGS on the eliminated MaxMin objective ``rho(t) = lambda_max(P_0(t))`` (:mod:`maxmin_stages`),
certified stage by stage (:mod:`maxmin_certify`): ``solver="riccati"`` of ``lipschitz_bound``.

Why: the cvxpy + SCS models of :mod:`maxmin` carry ``n^2`` free equality multipliers per layer and a
dense PSD cone of the whole LMI; on the 784-input MNIST MaxMin nets (2fc_64, res_5_64 and larger)
they did not finish in 300 s on two loaded cores. Here the only variables are the ``n/2`` sector
multipliers per layer, an evaluation costs a few ``n x n`` products per layer, and the sum
preservation is substituted exactly (so the optimum is at least as tight as both cvxpy models, see
:mod:`maxmin_stages`).

**Method** (the same as :mod:`first_order`, whose L-BFGS loop is reused):

1. *Start*: one multiplier per layer, ``t_k = 2 lambda_max(D P_k D^T)`` backwards
   (:func:`maxmin_stages.feasible_multipliers`), always in the domain.
2. *Layer phase*: minimise over one scalar per layer (few variables, moves the per-layer scales by
   orders of magnitude quickly).
3. *Pair phase*: L-BFGS on ``f_mu`` over ``s = log t`` with the continuation
   ``mu = 1e-2 rho, 1e-3 rho, ...`` down to ``eps rho``; a level ends when ``f_mu`` fell by less
   than ``mu / 10`` over the last :data:`WINDOW` iterations. Then the final level is restarted
   (L-BFGS memory cleared) from the best point while a round improves rho by more than
   :data:`RESTART_GAIN` relative.

**Barrier.** The optimum can lie on the boundary of the domain, where some ``G_k`` is singular
and ``rho`` stays finite (orthogonal weights: ``t = 2``, ``G = 0``, ``N = 0``). Without a barrier,
the iterates of a heavily smoothed level ran into that boundary on 18fc_64 and then every step left
the domain (a random relative change of 1e-6 in ``t`` did): 18558.7 after 361 iterations, stalled.
So each level minimises ``f_mu - nu phi`` with the convex barrier ``-phi = -sum_k log det G_k``
(``G_k`` is matrix concave in t) and ``nu = mu / n_pairs``, whose effect on the minimiser is of the
order ``nu n_pairs = mu``, the smoothing's own; its gradient costs one adjoint pass
(:func:`maxmin_stages.barrier_gradient`: ``dP_{k-1} = (A + D^T K)^T dP_k (A + D^T K) + sym(C^T dT
K) - K^T dT K`` with ``K = G^{-1} N``). The recorded ``rho`` is always the exact one.

**Why a window of 100** (:mod:`first_order` uses 10). The minimum lies on a ridge where the top
eigenvalues of ``P_0`` coalesce, and the progress along it is slow but steady; the 10-iteration
rule stopped far from the optimum. Measured (one core, load ~3): random 5-8-8-8-3 MaxMin net,
seed 1: window 10 stopped at 3.1498 (2534 iterations), window 100 reached 3.09400 (712 iterations;
cvxpy + SCS maxmin-qc certified 3.09407); 18fc_32: 11533.8 (window 10, 3516 iterations) against
11064.0 (window 100, 7254 iterations, 117 s); 5fc_32: 193.1848 against 193.1800.

The best exact ``rho(t)`` among all evaluated points is kept. There is no dual bound: the raw value
reported is the best iterate's ``rho`` (an upper bound up to rounding).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from .first_order import FIRST_MU_REL, LAYER_PHASE_ITERS, Progress, minimize_level, mu_levels
from .maxmin_stages import Stage, feasible_multipliers, multiplier_sizes, riccati_value

WINDOW = 100
RESTART_GAIN = 1e-6
MAX_RESTARTS = 5


class RiccatiObjective:
    """``s -> (f_mu - (mu / n_pairs) phi)(expand(exp s))`` and its gradient (``phi`` the log-barrier
    of :func:`maxmin_stages.barrier_gradient`); records the best exact rho in ``progress``."""

    def __init__(self, stages: Sequence[Stage], output: np.ndarray, progress: Progress,
                 expand: Callable[[np.ndarray], np.ndarray] = lambda v: v,
                 reduce: Callable[[np.ndarray], np.ndarray] = lambda g: g) -> None:
        self.stages, self.output, self.progress = stages, output, progress
        self.expand, self.reduce = expand, reduce
        self.pairs = max(sum(multiplier_sizes(stages)), 1)

    def __call__(self, s: np.ndarray, mu: float) -> tuple[float, np.ndarray] | None:
        v = np.exp(s)
        t = self.expand(v)
        val = riccati_value(self.stages, self.output, t, mu, mu / self.pairs)
        self.progress.record(None if val is None else val.rho, t)
        if val is None:
            return None
        return val.smoothed, self.reduce(val.gradient) * v


@dataclass
class RiccatiSolve:
    rho: float
    t: np.ndarray
    status: str
    iterations: int
    evaluations: int
    solve_s: float



def descend_levels(objective, point: np.ndarray, progress: Progress, eps: float, max_iters: int, deadline: float,
                   restart_point: Callable[[], np.ndarray]) -> str:
    """The barrier schedule shared by the L-BFGS solvers: minimise at each level of :func:`mu_levels`, then
    restart the last level from ``restart_point()`` (the best point) with fresh memory while a restart still
    gains :data:`RESTART_GAIN`, at most :data:`MAX_RESTARTS` times. ``progress`` keeps the best point;
    returns the status (``converged``, ``max_iters`` or ``time_limit``)."""
    levels = mu_levels(eps)
    levels += [levels[-1]] * MAX_RESTARTS
    status, before, pairs = "converged", math.inf, []
    for i, level in enumerate(levels):
        if progress.iterations >= max_iters:
            status = "max_iters"
            break
        if time.perf_counter() > deadline:
            status = "time_limit"
            break
        if i >= len(levels) - MAX_RESTARTS:  # a restart round: from the best point, fresh memory
            if progress.rho > before * (1 - RESTART_GAIN):
                break
            point, pairs = restart_point(), []
        before = progress.rho
        point = minimize_level(objective, point, level * progress.rho, max_iters - progress.iterations, deadline,
                               pairs, WINDOW)
    return status

def layer_phase(stages: Sequence[Stage], output: np.ndarray, t0: np.ndarray, progress: Progress,
                deadline: float) -> np.ndarray:
    """Improve ``t0`` (constant per layer) over one scalar per layer."""
    sizes = multiplier_sizes(stages)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(int)
    objective = RiccatiObjective(stages, output, progress, lambda v: np.repeat(v, sizes),
                                 lambda g: np.add.reduceat(g, starts))
    first = riccati_value(stages, output, t0, 0.0)
    mu = FIRST_MU_REL * first.rho if first is not None else 0.0
    s = minimize_level(objective, np.log(t0[starts]), mu, LAYER_PHASE_ITERS, deadline, [])
    return np.repeat(np.exp(s), sizes)


def solve_riccati(stages: Sequence[Stage], output: np.ndarray, eps: float = 1e-6,
                  max_iters: int | None = None, time_limit: float | None = None,
                  t_start: np.ndarray | None = None) -> RiccatiSolve:
    """Minimise ``rho(t)`` (module docstring); ``eps`` is the final relative smoothing level."""
    start = time.perf_counter()
    deadline = start + time_limit if time_limit else math.inf
    max_iters = max_iters or 50000
    progress = Progress()
    if t_start is not None:
        t = np.asarray(t_start, dtype=np.float64).copy()
    else:
        t = layer_phase(stages, output, feasible_multipliers(stages, output), progress, deadline)
    objective = RiccatiObjective(stages, output, progress)
    s = np.log(t)
    if objective(s, 0.0) is None:
        return RiccatiSolve(math.nan, t, "infeasible_start", 0, progress.evaluations, time.perf_counter() - start)
    status = descend_levels(objective, s, progress, eps, max_iters, deadline, lambda: np.log(progress.v))
    return RiccatiSolve(float(progress.rho), progress.v.copy(), status, progress.iterations,
                        progress.evaluations, time.perf_counter() - start)

"""``solver="qc-lbfgs"``: L-BFGS on the certified objective ``rho(theta)`` of the maxmin-pauli LMI.

Why not cvxpy at 18 layers. The cvxpy models are the LMI in *all* multipliers at once. With the
layer-wide ``H`` of maxmin-qc, 18fc_32 has 17 680 multipliers and an LMI of size 576 (after the
thin-SVD of ``W_1``); cvxpy's compiled SCS matrix is 166 449 x 17 681 with 5.6 million nonzeros
(10.7 s to compile, 1.16 GB resident), and every SCS iteration factors/solves with it and
eigendecomposes the 576 x 576 cone; 18fc_128 has 557 056 multipliers (two 128 x 128 ``H`` per
layer), whose compiled matrix does not fit on this machine. Pauli et al.'s multipliers are only
``3 n / 2`` per layer, but an SCS solve still needs thousands of iterations at that size. Here, as in
:mod:`first_order` for slope-restricted nets, the LMI is never formed as one matrix.

**Objective.** With ``F = -M`` (:mod:`lmi`; input block ``rho I + A``, coupling ``B`` to the first
hidden layer, hidden part ``H`` block tridiagonal) and multipliers fixed, ``M(rho) < 0`` iff
``H > 0`` and ``rho > lambda_max(S)``, ``S = B H^{-1} B^T - A`` (Schur complement), so

    rho(theta) = lambda_max(B H^{-1} B^T - A)      (+inf where H is not positive definite).

It is convex in the multipliers (:mod:`schur_objective`: a supremum of affine functions), every
point with ``H > 0`` is feasible for every ``rho > rho(theta)``, and its gradient is, for a unit top
eigenvector ``u`` and ``xi = (u, z)``, ``z = -H^{-1} B^T u``: ``d rho = xi^T dM xi = sum_k
[v_k; z_k]^T dQ_k [v_k; z_k]`` with ``v_k = W_k xi_{k-1}`` (same proof as in :mod:`schur_objective`,
which does not use the form of ``Q``); :meth:`PauliSortQC.form_gradient` evaluates it. We minimise
the log-sum-exp smoothing ``f_mu`` (``rho <= f_mu <= rho + mu log n_0``) with the continuation and
L-BFGS of :mod:`first_order`.

**Variables.** Per group ``theta = (log lambda, a, b)`` with ``s = lambda a``, ``p = lambda b``:
``lambda > 0`` without bounds, and the free multipliers measured in units of ``lambda`` (the
multipliers of different layers differ by orders of magnitude on deep nets). Chain rule:
``df/dlog lambda = lambda (g_lambda + a g_s + b g_p)``, ``df/da = lambda g_s``, ``df/db = lambda g_p``.

**Margin and barrier.** With free multipliers the optimum lies on the boundary of ``H > 0`` (a
first version without both stopped at 12879 on 18fc_32 with the largest hidden eigenvalue of the
equilibrated LMI at -8e-11, below what the float64 proof can resolve: certification failed). So

* the solver uses ``lambda (|Dv|^2 - (1 - delta) |Dz|^2)`` in place of the 1-Lipschitz QC
  (``delta =`` :data:`HIDDEN_MARGIN`): still a valid QC (weaker), and at any point it accepts, the
  true Pauli QC with the same multipliers has ``H >= delta diag(lambda) > 0`` and a smaller
  ``rho``: the certificate always has room;
* each level minimises ``f_mu - nu log det H`` with ``nu = mu / (number of multipliers)`` as in
  :mod:`maxmin_lbfgs` (the barrier's effect on the minimiser is of the order of the smoothing's).
  Its gradient is ``tr(H^{-1} dH) = -sum_k tr(dQ_k Phi_k H^{-1} Phi_k^T)``, which needs only the
  blocks of ``H^{-1}`` on the block tridiagonal (:func:`inverse_tridiagonal_blocks`) and
  :meth:`PauliSortQC.gram_gradient`.

**Start.** ``a = b = 0`` and one ``lambda_k`` per layer, backwards: with ``P_L = W_K^T W_K``,
``lambda_k = 1.05 lambda_max(P_k)`` and ``P_{k-1} = lambda_k W_k^T W_k`` (then ``H`` is block
diagonal with blocks ``lambda_k I - P_k > 0``). Then a *layer phase* (one ``(log lambda, a, b)`` per
layer, 40 iterations), the per-group levels ``mu = 1e-2 rho ... eps rho`` (window 100) and restarts
from the best point, as in :mod:`maxmin_lbfgs`.

**Raw value.** No dual bound: the value reported is the exact ``rho`` of the true QC at the best
point (an upper bound on the SDP optimum up to rounding); :mod:`certify` re-proves it in float64 on
the full weights.

**Measured** (one core, another job on the second): 5fc_32 193.1979 (Clarabel on the cvxpy model of
the same LMI: 193.1926, "optimal_inaccurate", 151 s); 18fc_32 certified 11087.57 after 425 s
(37 922 iterations) and 11113.28 with ``time_limit=120``. Known limitation: when the optimum
is degenerate (orthogonal weights, optimum 1) the iterates stop about 0.2 % above it.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import scipy.linalg

from .blocktri import BlockCholesky, BlockTridiagonal, block_cholesky
from .first_order import FIRST_MU_REL, LAYER_PHASE_ITERS, Progress, minimize_level
from .maxmin_lbfgs import descend_levels
from .lipsdp import SolveResult
from .lmi import LayerQC, block_sizes
from .maxmin_pauli import PauliSortQC
from .problem import SolverProblem, build_solver_problem
from .schur_objective import smoothed_top_eigenspace

START_FACTOR = 1.05
# the solver works with lambda scaled by (1 - HIDDEN_MARGIN) in Q22 (module docstring)
HIDDEN_MARGIN = 1e-6


def supports(qcs: Sequence[LayerQC]) -> bool:
    return bool(qcs) and all(isinstance(qc, PauliSortQC) for qc in qcs)


def build_pauli_lbfgs(weights: Sequence[np.ndarray], qcs: Sequence[LayerQC]) -> SolverProblem:
    return build_solver_problem(weights, qcs, supports,
                                "solver 'qc-lbfgs' needs method maxmin-pauli on MaxMin / GroupSort layers only")


def multiplier_values(qcs: Sequence[PauliSortQC], theta: np.ndarray) -> list[dict[str, np.ndarray]]:
    """``theta`` (per layer ``[log lambda, a, b]``, one entry per group each) -> QC multipliers."""
    out, pos = [], 0
    for qc in qcs:
        g = qc.groups
        lam = np.exp(theta[pos:pos + g])
        out.append({"lambda": lam, "s": lam * theta[pos + g:pos + 2 * g], "p": lam * theta[pos + 2 * g:pos + 3 * g]})
        pos += 3 * g
    return out


def negated_blocks(weights: Sequence[np.ndarray], blocks) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Diagonal and upper blocks of ``F = -M`` at ``rho = 0`` (block 0 is the input)."""
    sizes = block_sizes(weights)
    diag = [np.zeros((n, n)) for n in sizes]
    upper = []
    for k, (q11, q12, q22) in enumerate(blocks, start=1):
        w = weights[k - 1]
        diag[k - 1] -= w.T @ q11 @ w
        upper.append(-(w.T @ q12))
        diag[k] -= q22
    diag[-1] -= weights[-1].T @ weights[-1]
    return [(d + d.T) / 2 for d in diag], upper


@dataclass
class PauliValue:
    rho: float
    smoothed: float
    gradient: np.ndarray


def _lower(r: np.ndarray, b: np.ndarray, trans: str = "N") -> np.ndarray:
    return scipy.linalg.solve_triangular(r, b, lower=True, trans=trans, check_finite=False)


def inverse_tridiagonal_blocks(chol: BlockCholesky) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Blocks ``X_kk`` and ``X_{k,k+1}`` of ``X = H^{-1}`` from ``H = R R^T`` (R block lower bidiagonal,
    diagonal ``D_k``, subdiagonal ``L_k = R_{k+1,k}``). From ``R^T X = R^{-1}`` (block lower
    triangular with diagonal ``D_k^{-1}``), block row k: ``D_k^T X_{k,j} + L_k^T X_{k+1,j} = 0`` for
    ``j > k`` and ``= D_k^{-1}`` for ``j = k``; so backwards ``X_LL = D_L^{-T} D_L^{-1}``,
    ``X_{k,k+1} = -D_k^{-T} L_k^T X_{k+1,k+1}`` and ``X_kk = D_k^{-T} (D_k^{-1} - L_k^T X_{k+1,k})``
    with ``X_{k+1,k} = X_{k,k+1}^T``: ``O(sum n_k^3)``, no dense inverse."""
    n = len(chol.diag)
    diag: list[np.ndarray] = [np.empty(0)] * n
    upper: list[np.ndarray] = [np.empty(0)] * (n - 1)
    inv_d = [_lower(d, np.eye(d.shape[0])) for d in chol.diag]
    diag[-1] = inv_d[-1].T @ inv_d[-1]
    for k in range(n - 2, -1, -1):
        upper[k] = -inv_d[k].T @ (chol.sub[k].T @ diag[k + 1])
        x = inv_d[k].T @ (inv_d[k] - chol.sub[k].T @ upper[k].T)
        diag[k] = (x + x.T) / 2
    return diag, upper


def barrier_grams(weights: Sequence[np.ndarray], chol: BlockCholesky):
    """Per layer k the blocks ``(W X_{k-1,k-1} W^T, W X_{k-1,k}, X_kk)`` of ``Phi_k H^{-1} Phi_k^T``
    (hidden blocks only: layer 1 has no hidden block k-1)."""
    xd, xu = inverse_tridiagonal_blocks(chol)
    out = []
    for k in range(len(xd)):
        if k == 0:
            out.append((None, None, xd[0]))
        else:
            w = weights[k]
            out.append((w @ xd[k - 1] @ w.T, w @ xu[k - 1], xd[k]))
    return out


def pauli_value(weights: Sequence[np.ndarray], qcs: Sequence[PauliSortQC], theta: np.ndarray,
                mu: float, nu: float = 0.0, margin: float = HIDDEN_MARGIN) -> PauliValue | None:
    """``rho`` and the value and ``theta``-gradient of ``f_mu - nu log det H`` (module docstring);
    None where ``H`` is not > 0. ``H`` and the objective use ``margin`` (:data:`HIDDEN_MARGIN`)."""
    if not np.all(np.isfinite(theta)):
        return None
    values = multiplier_values(qcs, theta)
    diag, upper = negated_blocks(weights, [qc.numpy_blocks(v) for qc, v in zip(qcs, values)])
    for k, (qc, val) in enumerate(zip(qcs, values), start=1):
        diag[k] -= np.diag(margin * (qc.s_mat.T @ val["lambda"]))
    chol = block_cholesky(BlockTridiagonal(diag[1:], upper[1:]))
    if chol is None:
        return None
    ys = [_lower(chol.diag[0], upper[0].T)]
    for k in range(1, len(chol.diag)):
        ys.append(_lower(chol.diag[k], -(chol.sub[k - 1] @ ys[-1])))
    s = sum(y.T @ y for y in ys) - diag[0]
    top, smoothed, u, w = smoothed_top_eigenspace((s + s.T) / 2, mu)
    if not math.isfinite(top):
        return None
    zs: list[np.ndarray] = [np.empty(0)] * len(ys)
    zs[-1] = -_lower(chol.diag[-1], ys[-1] @ u, "T")
    for k in range(len(ys) - 2, -1, -1):
        zs[k] = -_lower(chol.diag[k], ys[k] @ u + chol.sub[k].T @ zs[k + 1], "T")
    raw, prev = [], u
    for w_k, qc, z in zip(weights, qcs, zs):
        g = qc.form_gradient(w_k @ prev, z, w)
        g["lambda"] = g["lambda"] + margin * ((qc.s_mat @ (z * z)) @ w)
        raw.append(g)
        prev = z
    if nu > 0:  # d log det H = tr(H^{-1} dH) = -tr(dQ_k Phi_k H^{-1} Phi_k^T) per layer
        smoothed -= nu * chol.logdet()
        for g, qc, (gvv, gvz, gzz) in zip(raw, qcs, barrier_grams(weights, chol)):
            b = qc.gram_gradient(gvv, gvz, gzz)
            b["lambda"] = b["lambda"] + margin * (qc.s_mat @ np.diag(gzz))
            for name in g:
                g[name] = g[name] + nu * b[name]
    grads = []
    for g, qc, val in zip(raw, qcs, values):
        lam = val["lambda"]
        a, b = val["s"] / lam, val["p"] / lam
        g_a, g_b = qc.restrict_free_gradient(lam * g["s"], lam * g["p"])
        grads += [lam * (g["lambda"] + a * g["s"] + b * g["p"]), g_a, g_b]
    return PauliValue(top, smoothed, np.concatenate(grads))


class PauliObjective:
    """``x -> (f_mu - (mu / n) log det H, gradient)`` for :func:`first_order.minimize_level`
    (``theta = expansion(x)``, or ``x`` itself; n the number of multipliers); records the best point
    (smallest exact ``rho``) as a full ``theta``."""

    def __init__(self, weights, qcs, progress: Progress, expansion: "LayerExpansion | None" = None) -> None:
        self.weights, self.qcs, self.progress, self.expansion = weights, qcs, progress, expansion
        self.count = max(3 * sum(qc.groups for qc in qcs), 1)

    def __call__(self, x: np.ndarray, mu: float):
        theta = x if self.expansion is None else self.expansion(x)
        val = pauli_value(self.weights, self.qcs, theta, mu, mu / self.count)
        self.progress.record(None if val is None else val.rho, theta)
        if val is None:
            return None
        grad = val.gradient if self.expansion is None else self.expansion.reduce(val.gradient)
        return val.smoothed, grad


class LayerExpansion:
    """One ``(log lambda, a, b)`` per layer, copied to every group (gradient: sum over groups)."""

    def __init__(self, qcs: Sequence[PauliSortQC]) -> None:
        self.groups = [qc.groups for qc in qcs]

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return np.concatenate([np.repeat(x[3 * k:3 * k + 3], g) for k, g in enumerate(self.groups)])

    def reduce(self, grad: np.ndarray) -> np.ndarray:
        out, pos = [], 0
        for g in self.groups:
            out.append(grad[pos:pos + 3 * g].reshape(3, g).sum(axis=1))
            pos += 3 * g
        return np.concatenate(out)


def start_point(weights: Sequence[np.ndarray]) -> np.ndarray:
    """Per layer ``(log lambda_k, 0, 0)`` from the backward recursion of the module docstring."""
    p = weights[-1].T @ weights[-1]
    per_layer = []
    for w in reversed(weights[:-1]):
        lam = START_FACTOR * max(float(np.linalg.eigvalsh((p + p.T) / 2).max()), 1e-300)
        per_layer.append([math.log(lam), 0.0, 0.0])
        p = lam * (w.T @ w)
    return np.array(per_layer[::-1]).ravel()


def solve_pauli_lbfgs(problem: SolverProblem, eps: float = 1e-5, max_iters: int | None = None,
                      warm_start: bool = False, time_limit: float | None = None, **_ignored) -> SolveResult:
    """Minimise ``rho(theta)``; ``eps`` is the final relative smoothing level."""
    start = time.perf_counter()
    deadline = start + time_limit if time_limit else math.inf
    max_iters = max_iters or 50000
    ws, qcs = problem.weights, problem.qcs
    progress = Progress()
    if warm_start and problem.state is not None:
        theta = problem.state["theta"].copy()
    else:
        expansion = LayerExpansion(qcs)
        layer_obj = PauliObjective(ws, qcs, progress, expansion)
        x0 = start_point(ws)
        first = pauli_value(ws, qcs, expansion(x0), 0.0)
        if first is None:
            return SolveResult(math.nan, [], "infeasible_start", 0, time.perf_counter() - start, 0.0,
                               {"solver": "qc-lbfgs"})
        x = minimize_level(layer_obj, x0, FIRST_MU_REL * first.rho, LAYER_PHASE_ITERS, deadline, [])
        theta = progress.v.copy() if progress.v is not None else expansion(x)
    objective = PauliObjective(ws, qcs, progress)
    setup = time.perf_counter() - start
    if objective(theta, 0.0) is None:
        return SolveResult(math.nan, [], "infeasible_start", 0, setup, 0.0, {"solver": "qc-lbfgs"})
    status = descend_levels(objective, theta, progress, eps, max_iters, deadline, lambda: progress.v.copy())
    problem.state = {"theta": progress.v.copy()}
    exact = pauli_value(ws, qcs, progress.v, 0.0, 0.0, margin=0.0)  # rho of the QC itself, <= rho_delta
    raw = exact.rho if exact is not None else float(progress.rho)
    wall = time.perf_counter() - start
    tol = {"solver": "qc-lbfgs", "eps_smoothing": eps, "evaluations": progress.evaluations}
    return SolveResult(raw, multiplier_values(qcs, progress.v), status, progress.iterations,
                       setup, wall - setup, tol)

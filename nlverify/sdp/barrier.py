"""A primal barrier (interior-point) method for LipSDP with slope-restricted activations.

Only ``rho`` and the multipliers are variables (``m + 1`` of them, m = number of neurons for
LipSDP-Neuron, of layers for LipSDP-Layer), and every multiplier enters the LMI with rank 2, so
Newton's method on the log-det barrier is cheap compared with a conic solver that carries the
whole matrix as a variable.

LMI (``F = -M``, see :mod:`nlverify.sdp.lmi`; neuron i of layer k, ``p_i`` = row i of ``W_k`` placed
in block k-1, ``q_i`` = unit vector of the neuron in block k, slopes in ``[a, b]``)::

    F(rho, t) = -E_L^T W_K^T W_K E_L + rho E_0 + sum_i t_i F_i  >  0,    t > 0,
    F_i = ((q_i - a p_i)(q_i - b p_i)^T + (q_i - b p_i)(q_i - a p_i)^T) / 2,

(``-F_i`` is the QC ``-(Dz_i - a Dv_i)(Dz_i - b Dv_i)`` of LipSDP-Neuron). We follow the central
path of ``min rho/mu - log det F - sum log t``: with ``S = F^{-1}``, ``x_i = q_i - a p_i``,
``y_i = q_i - b p_i``,

    d/dt_i  (-log det F) = -x_i^T S y_i,
    d2/dt_i dt_j         = (P_xx o P_yy + P_xy o P_xy^T)_{ij} / 2,   P_xy = X^T S Y  (o: Hadamard),

and the same with ``E_0`` for rho. Every iterate is *strictly* feasible (a Cholesky factorisation
of F succeeds), so the certification in :mod:`nlverify.sdp.certify` loses almost nothing; on the
central path the duality gap is ``nu mu`` with ``nu = dim F + #multipliers``, which is the
stopping criterion (``nu mu <= eps * rho``). The start is a closed-form-ish feasible point: uniform
``t`` per layer chosen backwards so that each Schur complement stays negative definite.
"""
from __future__ import annotations

import math
import time
from typing import Sequence

import numpy as np
import scipy.linalg

from .lipsdp import SlopeNeuronQC, SolveResult
from .lmi import LayerQC, block_sizes
from .problem import SolverProblem, build_solver_problem




def supports(qcs: Sequence[LayerQC]) -> bool:
    return all(isinstance(qc, SlopeNeuronQC) for qc in qcs)  # SlopeLayerQC is a subclass


def build_barrier(weights: Sequence[np.ndarray], qcs: Sequence[LayerQC]) -> SolverProblem:
    return build_solver_problem(weights, qcs, supports,
                                "the barrier method handles slope-restricted activations only")


class _Lmi:
    """Geometry of F: offsets, per-layer factors X_k, Y_k on the rows of blocks (k-1, k)."""

    def __init__(self, weights: list[np.ndarray], qcs: list[LayerQC]) -> None:
        self.weights, self.qcs = weights, qcs
        self.sizes = block_sizes(weights)
        self.off = np.concatenate([[0], np.cumsum(self.sizes)]).astype(int)
        self.n = int(self.off[-1])
        self.xs, self.ys, self.rows = [], [], []
        for k, (w, qc) in enumerate(zip(weights[:-1], qcs), start=1):
            a, b = qc.spec.alpha, qc.spec.beta
            nb = w.shape[0]
            self.xs.append(np.vstack([-a * w.T, np.eye(nb)]))
            self.ys.append(np.vstack([-b * w.T, np.eye(nb)]))
            self.rows.append(slice(int(self.off[k - 1]), int(self.off[k + 1])))
        self.m = sum(self.sizes[1:])
        # variables v: neuron -> one per neuron, layer -> one per layer; t = expand(v)
        self.layer_var = [not type(qc) is SlopeNeuronQC for qc in qcs]
        self.nv = sum(1 if lay else qc.size for qc, lay in zip(qcs, self.layer_var))
        wk = weights[-1]
        self.const = np.zeros((self.n, self.n))
        sl = slice(int(self.off[-2]), int(self.off[-1]))
        self.const[sl, sl] = -(wk.T @ wk)

    def expand(self, v: np.ndarray) -> list[np.ndarray]:
        out, pos = [], 0
        for qc, lay in zip(self.qcs, self.layer_var):
            if lay:
                out.append(np.full(qc.size, v[pos]))
                pos += 1
            else:
                out.append(v[pos:pos + qc.size])
                pos += qc.size
        return out

    def reduce(self, g: np.ndarray) -> np.ndarray:
        """E^T g for per-neuron g (sums over a layer for LipSDP-Layer)."""
        out, pos = [], 0
        for qc, lay in zip(self.qcs, self.layer_var):
            seg = g[pos:pos + qc.size]
            out.append(np.array([seg.sum()]) if lay else seg)
            pos += qc.size
        return np.concatenate(out) if out else np.zeros(0)

    def reduce2(self, h: np.ndarray) -> np.ndarray:
        """E^T H E."""
        if not any(self.layer_var):
            return h
        e = np.zeros((self.m, self.nv))
        pos, col = 0, 0
        for qc, lay in zip(self.qcs, self.layer_var):
            if lay:
                e[pos:pos + qc.size, col] = 1.0
                col += 1
            else:
                e[pos + np.arange(qc.size), col + np.arange(qc.size)] = 1.0
                col += qc.size
            pos += qc.size
        return e.T @ h @ e

    def matrix(self, rho: float, v: np.ndarray) -> np.ndarray:
        f = self.const.copy()
        n0 = self.sizes[0]
        f[np.arange(n0), np.arange(n0)] += rho
        for k, (w, qc, t) in enumerate(zip(self.weights[:-1], self.qcs, self.expand(v)), start=1):
            a, b = qc.spec.alpha, qc.spec.beta
            pa, pb = slice(int(self.off[k - 1]), int(self.off[k])), slice(int(self.off[k]), int(self.off[k + 1]))
            if a * b != 0:
                f[pa, pa] += (a * b) * (w.T * t) @ w
            if a + b != 0:
                c = -(a + b) / 2 * (w.T * t)
                f[pa, pb] += c
                f[pb, pa] += c.T
            idx = np.arange(pb.start, pb.stop)
            f[idx, idx] += t
        return f

    def barrier_parts(self, s: np.ndarray):
        """Gradient and Hessian of -log det F w.r.t. (rho, t) given S = F^{-1}."""
        n0 = self.sizes[0]
        sx = [s[:, r] @ x for x, r in zip(self.xs, self.rows)]  # n x n_k
        sy = [s[:, r] @ y for y, r in zip(self.ys, self.rows)]
        g_t = np.concatenate([-np.einsum("ij,ij->j", x, syk[r]) for x, syk, r in zip(self.xs, sy, self.rows)]) \
            if self.xs else np.zeros(0)
        # cross blocks P_xx[k,l] = X_k^T (S X_l)[rows_k]
        L = len(self.xs)
        pxx = np.block([[self.xs[k].T @ sx[l][self.rows[k]] for l in range(L)] for k in range(L)]) if L else np.zeros((0, 0))
        pyy = np.block([[self.ys[k].T @ sy[l][self.rows[k]] for l in range(L)] for k in range(L)]) if L else np.zeros((0, 0))
        pxy = np.block([[self.xs[k].T @ sy[l][self.rows[k]] for l in range(L)] for k in range(L)]) if L else np.zeros((0, 0))
        h_tt = 0.5 * (pxx * pyy + pxy * pxy.T)
        z_x = np.concatenate([m[:n0] for m in sx], axis=1) if L else np.zeros((n0, 0))
        z_y = np.concatenate([m[:n0] for m in sy], axis=1) if L else np.zeros((n0, 0))
        h_rt = np.einsum("ij,ij->j", z_x, z_y)
        s00 = s[:n0, :n0]
        g_rho = -float(np.trace(s00))
        h_rr = float(np.sum(s00 * s00))
        return g_rho, g_t, h_rr, h_rt, h_tt


def _chol(f: np.ndarray):
    try:
        return scipy.linalg.cholesky(f, lower=True, check_finite=False)
    except np.linalg.LinAlgError:
        return None


def feasible_start(lmi: _Lmi) -> tuple[float, np.ndarray]:
    """Uniform multipliers per layer, chosen from the last layer backwards (Schur complements)."""
    k_next = -lmi.const[int(lmi.off[-2]):, int(lmi.off[-2]):]  # known part of M's last diagonal block
    taus = [0.0] * len(lmi.qcs)
    for j in range(len(lmi.qcs), 0, -1):
        qc, w = lmi.qcs[j - 1], lmi.weights[j - 1]
        a, b = qc.spec.alpha, qc.spec.beta
        lam = float(np.linalg.eigvalsh((k_next + k_next.T) / 2).max())
        tau = 2 * max(lam, 0.0) + 1.0
        taus[j - 1] = tau
        d = k_next - tau * np.eye(k_next.shape[0])          # M's block j (negative definite)
        bmat = (a + b) / 2 * tau * w.T                      # M's block (j-1, j)
        chol = np.linalg.cholesky(-d)
        z = scipy.linalg.solve_triangular(chol, bmat.T, lower=True)
        k_next = -a * b * tau * (w.T @ w) + z.T @ z          # known part of block j-1 (+ Schur)
    rho = 2 * max(float(np.linalg.eigvalsh((k_next + k_next.T) / 2).max()), 0.0) + 1.0
    v = []
    for qc, lay, tau in zip(lmi.qcs, lmi.layer_var, taus):
        v.extend([tau] if lay else [tau] * qc.size)
    return rho, np.asarray(v, dtype=np.float64)


def _unit(n: int) -> np.ndarray:
    e = np.zeros(n)
    e[0] = 1.0
    return e


def _newton_solver(h: np.ndarray):
    """Solve with the (Jacobi-scaled, Cholesky-factored) Hessian; least squares if it is singular."""
    d = 1.0 / np.sqrt(np.maximum(np.diag(h), 1e-300))
    hs = h * d[:, None] * d[None, :]
    try:
        fac = scipy.linalg.cho_factor(hs, lower=True, check_finite=False)
        return lambda r: d * scipy.linalg.cho_solve(fac, d * r, check_finite=False)
    except (np.linalg.LinAlgError, ValueError):
        return lambda r: d * np.linalg.lstsq(hs, d * r, rcond=None)[0]


def solve_barrier(problem: SolverProblem, eps: float = 1e-6, max_iters: int | None = None,
                  warm_start: bool = False, time_limit: float | None = None, center_steps: int = 50,
                  center_tol: float = 1e-3, mu_factor: float = 8.0, **_ignored) -> SolveResult:
    """Path-following until ``nu mu <= eps * rho`` (relative duality gap ``eps`` on the centre path)."""
    start = time.perf_counter()
    lmi = _Lmi(problem.weights, problem.qcs)
    nu = lmi.n + lmi.nv
    if warm_start and problem.state is not None:
        rho, v, mu = problem.state["rho"], problem.state["v"].copy(), problem.state["mu"]
    else:
        rho, v = feasible_start(lmi)
        mu = rho / nu
    setup = time.perf_counter() - start

    def objective(r: float, vv: np.ndarray, mu_: float):
        if np.any(vv <= 0):
            return math.inf, None
        chol = _chol(lmi.matrix(r, vv))
        if chol is None:
            return math.inf, None
        return r / mu_ - 2 * float(np.sum(np.log(np.diag(chol)))) - float(np.sum(np.log(vv))), chol

    f_val, chol = objective(rho, v, mu)
    if chol is None:
        return SolveResult(math.nan, [], "infeasible_start", 0, setup, 0.0, {"solver": "barrier"})
    iters, status, max_iters = 0, "optimal", max_iters or 500
    gap_est = math.inf
    while True:
        centred = False
        for _ in range(center_steps):
            iters += 1
            s = scipy.linalg.cho_solve((chol, True), np.eye(lmi.n), check_finite=False)
            g_rho, g_t, h_rr, h_rt, h_tt = lmi.barrier_parts(s)
            g_phi = np.concatenate([[g_rho], lmi.reduce(g_t) - 1.0 / v])
            h = np.empty((lmi.nv + 1, lmi.nv + 1))
            h[0, 0] = h_rr
            h[0, 1:] = h[1:, 0] = lmi.reduce(h_rt)
            h[1:, 1:] = lmi.reduce2(h_tt) + np.diag(1.0 / v ** 2)
            solve = _newton_solver(h)
            g = g_phi.copy()
            g[0] += 1.0 / mu
            step = -solve(g)
            dec = float(-g @ step)
            if not math.isfinite(dec) or dec < 0:
                break
            if dec / 2 < center_tol:
                centred = True
                break
            alpha = 1.0
            neg = step[1:] < 0
            if np.any(neg):
                alpha = min(1.0, 0.99 * float(np.min(-v[neg] / step[1:][neg])))
            while alpha > 1e-12:
                f_new, chol_new = objective(rho + alpha * step[0], v + alpha * step[1:], mu)
                if f_new <= f_val - 0.25 * alpha * dec:
                    break
                alpha *= 0.5
            else:
                break
            rho, v, f_val, chol = rho + alpha * step[0], v + alpha * step[1:], f_new, chol_new
            if iters >= max_iters or (time_limit and time.perf_counter() - start > time_limit):
                break
        gap_est = nu * mu
        if gap_est <= eps * max(rho, 1e-300) and centred:
            break
        if iters >= max_iters:
            status = "max_iters"
            break
        if time_limit and time.perf_counter() - start > time_limit:
            status = "time_limit"
            break
        if centred and gap_est > eps * max(rho, 1e-300):
            mu /= mu_factor
        f_val, chol = objective(rho, v, mu)
    problem.state = {"rho": rho, "v": v, "mu": mu}
    values = [{"t": t.copy()} for t in lmi.expand(v)]
    wall = time.perf_counter() - start
    tol = {"solver": "barrier", "eps_gap": eps, "duality_gap_estimate": gap_est, "nu": nu}
    return SolveResult(float(rho), values, status, iters, setup, wall - setup, tol)

"""Float64 proof of the eliminated MaxMin LMI (*) of :mod:`maxmin_stages`, stage by stage.

Fix multipliers ``t > 0`` and symmetric float matrices ``P_0, ..., P_L = I`` (``P_L`` the identity
on the output). If every *stage inequality*

    M_k := J_k^T Z_k(P_k, T_k) J_k - diag(P_{k-1}, 0) < 0    (in the variables (p_{k-1}, r_k))

holds, where ``J_k (p, r) = (q, u, r)`` and ``(q, u, r)^T Z_k (q, u, r) = q^T P_k q + u^T T r -
r^T T r``, and ``P_0 < rho I``, then summing the stage inequalities along any trajectory telescopes
(the same float matrix ``P_k`` enters stage k+1 with a plus sign and stage k with a minus sign) to

    |Dy|^2 + sum_k sum_i t_i r_i (u_i - r_i) - rho |Dx|^2 < 0,

which is (*): ``sqrt(rho)`` is a Lipschitz bound. The ``P_k`` need not be exact Riccati solutions:
any matrices for which the proofs pass will do. We take the recursion of :mod:`maxmin_stages`
evaluated at ``t`` and add ``delta_k I`` to each ``P_{k-1}`` (grown until stage k's proof passes),
so every stage matrix is negative definite by a margin above rounding. Where ``G_k`` is (nearly)
singular at ``t`` the stage's multipliers are inflated by a factor ``1 + kappa`` first (any
``t >= 0`` is valid); the multipliers actually used are returned with the certificate.

**Exact factors.** ``J_k = E_k F_k`` with ``E_k`` an exact 0/+-1 matrix (the pair swap ``Pi``,
the pair differences ``D``, identities) and ``F_k`` containing the weight ``W_k`` as stored:

* plain MaxMin: ``F = diag(W, I)``, ``E = [[Pi, D^T], [D, 0], [0, I]]``;
* residual MaxMin: ``F = [[I, 0], [W, 0], [0, I]]``, ``E = [[I, Pi, D^T], [0, D, 0], [0, 0, I]]``;
* linear (embedding / output): ``F = W``, ``E = I``.

So no rounded ``A`` or ``C`` enters: ``M_k = F^T (E^T Z E) F - diag(P_{k-1}, 0)`` is computed by four
matrix products and one subtraction, and its error is at most ``gamma_k |F|^T |E|^T |Z| |E| |F|
+ u |P_{k-1}|`` entrywise with ``k = 2 dim Z + 2 rows F + 2`` (Higham's bound for chained
products; ``T / 2`` and ``-T`` are exact). That is the ``|M|`` handed to
:func:`certify.prove_negative_definite` (with its equilibration), which proves ``M_k* < 0``.
The final step proves ``P_0 - rho I < 0`` the same way. The first weight is the *full* one (the
thin-SVD reduction only speeds up the solve).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .certify import equilibrate, prove_negative_definite
from .maxmin_stages import Stage, split_multipliers, stage_value

MAX_ATTEMPTS = 40
FIRST_MARGIN = 1e-12
INFLATIONS = (0.0, 1e-10, 1e-8, 1e-6, 1e-4)


def stage_factors(stage: Stage) -> tuple[np.ndarray, np.ndarray]:
    """``(E, F)`` with ``J = E F`` (module docstring); E exact, F made of the stored weight."""
    w = stage.weight
    n_out, n_in = w.shape
    if stage.kind == "linear":
        return np.eye(n_out), w
    m = stage.pairs
    d = stage.d
    swap = np.eye(n_out)[stage.perm]
    if stage.kind == "plain":
        f = np.block([[w, np.zeros((n_out, m))], [np.zeros((m, n_in)), np.eye(m)]])
        e = np.block([[swap, d.T], [d, np.zeros((m, m))], [np.zeros((m, n_out)), np.eye(m)]])
        return e, f
    f = np.block([[np.eye(n_in), np.zeros((n_in, m))], [w, np.zeros((n_out, m))],
                  [np.zeros((m, n_in)), np.eye(m)]])
    e = np.block([[np.eye(n_out), swap, d.T], [np.zeros((m, n_out)), d, np.zeros((m, m))],
                  [np.zeros((m, n_out)), np.zeros((m, n_out)), np.eye(m)]])
    return e, f


def stage_matrix(stage: Stage, p_next: np.ndarray, t: np.ndarray | None,
                 p_prev: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """``M_k``, its rounding bound ``|M|`` and the inner dimension for the proof's gamma."""
    e, f = stage_factors(stage)
    n_q, m = p_next.shape[0], stage.pairs
    z = np.zeros((n_q + 2 * m, n_q + 2 * m))
    z[:n_q, :n_q] = p_next
    if m:
        half = np.diag(t / 2)
        z[n_q:n_q + m, n_q + m:] = half
        z[n_q + m:, n_q:n_q + m] = half
        z[n_q + m:, n_q + m:] = -np.diag(t)
    k_mat = e.T @ z @ e
    k_abs = np.abs(e).T @ np.abs(z) @ np.abs(e)
    n_p = p_prev.shape[0]
    mat = f.T @ k_mat @ f
    mat = (mat + mat.T) / 2  # halving is exact; the sum is one more rounding, inside the allowance
    abs_m = np.abs(f).T @ k_abs @ np.abs(f)
    mat[:n_p, :n_p] -= p_prev
    abs_m[:n_p, :n_p] += np.abs(p_prev)
    return mat, abs_m, z.shape[0] + f.shape[0] + 2


@dataclass
class StagewiseCertificate:
    """``t`` is the multiplier vector the proof used (the input, possibly inflated per stage)."""

    ok: bool
    rho: float
    rho_estimate: float
    margins: list[float]
    reason: str = ""
    t: np.ndarray | None = None


def _prove(mat: np.ndarray, abs_m: np.ndarray, inner: int) -> bool:
    return prove_negative_definite(*equilibrate(mat, abs_m), inner).ok


def _prove_stage(stage: Stage, p_next: np.ndarray, tk: np.ndarray | None):
    """``(P_{k-1}, delta_k, t_k used)`` with stage k proven, or None. When ``G_k`` is singular or
    nearly so (the optimum can lie on that boundary: orthogonal weights give ``G = 0, N = 0``), the
    stage's multipliers are inflated by ``1 + kappa`` (still valid multipliers, ``G_k`` grows by
    ``kappa T_k``) for growing kappa."""
    for kappa in INFLATIONS:
        t_try = None if tk is None else tk * (1 + kappa)
        res = stage_value(stage, p_next, t_try)
        if res is None:
            continue
        base = res[0]
        delta = FIRST_MARGIN * max(float(np.abs(np.diag(base)).max(initial=0.0)), 1e-300)
        for _ in range(MAX_ATTEMPTS // 2):
            p_prev = base + delta * np.eye(base.shape[0])
            if _prove(*stage_matrix(stage, p_next, t_try, p_prev)):
                return p_prev, delta, t_try
            delta *= 4
        if tk is None:
            return None
    return None


def certify_stages(stages: Sequence[Stage], output: np.ndarray, t: np.ndarray,
                   rho: float | None = None) -> StagewiseCertificate:
    """Prove (*) for the multipliers ``t`` (clipped at 0 first: any ``t >= 0`` is valid), at the
    smallest rho that passes, or only at the given ``rho`` (re-verification of a stored bound)."""
    t = np.maximum(np.asarray(t, dtype=np.float64), 0.0)
    out_stage = Stage("linear", output, output)
    all_stages = list(stages) + [out_stage]
    ts = split_multipliers(stages, t) + [None]
    p_next = np.eye(output.shape[0])
    margins, used = [], []
    for stage, tk in zip(reversed(all_stages), reversed(ts)):
        proven = _prove_stage(stage, p_next, tk)
        if proven is None:
            return StagewiseCertificate(False, math.inf, math.nan, margins, "a stage inequality failed its proof")
        p_next, delta, tk_used = proven
        margins.append(delta)
        used.append(tk_used)
    t_used = np.concatenate([u for u in used[::-1] if u is not None] or [np.zeros(0)])
    estimate = float(np.linalg.eigvalsh(p_next).max())
    fixed = rho is not None
    rho = rho if fixed else max(estimate, 0.0) * (1 + FIRST_MARGIN) + 1e-300
    n0 = p_next.shape[0]
    for _ in range(1 if fixed else MAX_ATTEMPTS):
        mat = p_next - rho * np.eye(n0)
        if _prove(mat, np.abs(p_next) + rho * np.eye(n0), 1):
            return StagewiseCertificate(True, rho, estimate, margins[::-1], "", t_used)
        rho += max(rho - estimate, rho * FIRST_MARGIN) * 3
    return StagewiseCertificate(False, math.inf, estimate, margins[::-1], "P_0 < rho I failed its proof")

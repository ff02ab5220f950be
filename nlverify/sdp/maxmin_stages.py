"""MaxMin networks as a linear system driven by ReLUs, and the exact LipSDP objective by a backward
Riccati recursion (value and gradient in ``O(sum n_k^3)``, no LMI of the network's size is formed).

**Elimination.** A MaxMin pair ``(a, b) -> (max, min)`` is ``max = b + r``, ``min = a - r`` with
``r = relu(a - b)``. With ``D`` (m x n) the pair-difference matrix (``(D v)_p = a_p - b_p``) and
``Pi`` the permutation swapping the two entries of every pair, a MaxMin layer on ``v = W p`` is

    q = Pi W p + D^T r,        r = relu(u),   u = D W p,

*exactly* (the sum preservation ``max + min = a + b`` is built in, no multiplier for it). A residual
block ``h + MaxMin(W h)`` is the same with ``A = I + Pi W``. So a network is a chain of *stages*
``q = A p + B r`` (``B = D^T``; ``B`` absent for a plain linear map), ``u = C p``, followed by an
output map ``y = W_out q``. For two inputs, the increments satisfy ReLU's sector constraint
``r_i (u_i - r_i) >= 0`` (slope in [0, 1]); with multipliers ``t_i >= 0`` (diagonal ``T``)

    |Dy|^2 - rho |Dx|^2 + sum_k sum_i t_i r_i (u_i - r_i) <= 0   for all (Dx, r_1, ..., r_L)   (*)

proves ``|Dy| <= sqrt(rho) |Dx|``. This is LipSDP-Neuron on the eliminated network, with the
equality substituted exactly.

*Relation to the QC formulations of* :mod:`maxmin`. On the subspace ``e = 0`` (sum preserved),
``|Dv|^2 - |Dz|^2 = 2 (Dmax - Db)(Da - Dmax) = 2 r (u - r)`` (see the proof in :mod:`maxmin`), so
Pauli et al.'s 1-Lipschitz QC with multiplier ``mu`` *is* the sector QC with ``t = 2 mu`` once the
equality is substituted: maxmin-qc and maxmin-elim give the *same* LMI (*) here. A free multiplier
``e^T H x`` for the equality (what the cvxpy models use, with H coupling one layer's variables) can
only do as well as substituting it (Finsler's lemma: substitution is the limit of all multipliers),
so the optimum of (*) is <= both cvxpy optima, and equal to them on one hidden layer (there the
layer-wide H is every multiplier).

**Riccati recursion.** (*) is a quadratic form in the free inputs ``r_1..r_L`` of a linear system
with state ``p_k``; it is <= 0 for all inputs iff, backwards from ``P_L = W_out^T W_out``,

    G_k = T_k - B_k^T P_k B_k > 0,   N_k = B_k^T P_k A_k + T_k C_k / 2,
    P_{k-1} = A_k^T P_k A_k + N_k^T G_k^{-1} N_k,                    (max over r_k, attained at
                                                                       r_k = G_k^{-1} N_k p_{k-1})

and ``rho >= lambda_max(P_0)``. So ``rho(t) = lambda_max(P_0(t))`` (+inf where some ``G_k`` is not
> 0). ``u^T P_0 u = max_r [ |W_out p_L|^2 + sum t_i r_i (u_i - r_i) ]`` (p_0 = u) is a maximum of
functions affine in t, hence ``P_0(t)`` is matrix convex and ``rho(t)`` convex (as in
:mod:`schur_objective`), and by Danskin's theorem, with the maximising trajectory of a unit top
eigenvector (``p_0 = u``, ``r_k = G_k^{-1} N_k p_{k-1}``, ``p_k = A_k p_{k-1} + B_k r_k``),

    d rho / d t_i = r_i (u_i - r_i)        (a subgradient where the top eigenvalue is multiple).

The smoothed ``f_mu = mu log tr exp(P_0 / mu)`` (``rho <= f_mu <= rho + mu log n_0``) has gradient
``sum_j w_j r_ij (u_ij - r_ij)`` with softmax weights over all eigenvectors: one trajectory per
eigenvector, run as the columns of one matrix.

Nothing here is trusted for the bound: :mod:`maxmin_certify` proves (*) stage by stage in float64.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import scipy.linalg

from .activations import ActivationSpec, group_indices
from .schur_objective import smoothed_top_eigenspace


@dataclass
class Stage:
    """``q = A p + D^T r``, ``u = C p``; ``D is None`` for a plain linear map (no multipliers).

    ``kind`` (``"plain"``, ``"residual"``, ``"linear"``) and ``weight`` let the certification
    rebuild ``A`` and ``C`` from exactly representable factors (:mod:`maxmin_certify`)."""

    kind: str
    weight: np.ndarray
    a: np.ndarray
    d: np.ndarray | None = None
    c: np.ndarray | None = None
    perm: np.ndarray | None = None

    @property
    def pairs(self) -> int:
        return 0 if self.d is None else self.d.shape[0]


def is_maxmin(spec: ActivationSpec) -> bool:
    return spec.kind == "groupsort" and spec.group_size == 2


def pair_matrices(size: int, grouping: str) -> tuple[np.ndarray, np.ndarray]:
    """``(D, perm)``: pair differences ``(Dv)_p = v_first - v_second`` and the pair-swap permutation
    (``(Pi v)_i = v[perm[i]]``)."""
    idx = group_indices(size, 2, grouping)
    d = np.zeros((idx.shape[0], size))
    rows = np.arange(idx.shape[0])
    d[rows, idx[:, 0]] = 1.0
    d[rows, idx[:, 1]] = -1.0
    perm = np.arange(size)
    perm[idx[:, 0]], perm[idx[:, 1]] = idx[:, 1], idx[:, 0]
    return d, perm


def maxmin_stage(weight: np.ndarray, spec: ActivationSpec, residual: bool = False) -> Stage:
    """The stage of ``p -> MaxMin(W p)`` (or ``p + MaxMin(W p)`` when ``residual``)."""
    if not is_maxmin(spec):
        raise ValueError(f"{spec.name} is not a MaxMin (group size 2) activation")
    d, perm = pair_matrices(weight.shape[0], spec.grouping)
    a = weight[perm]
    if residual:
        a = a + np.eye(weight.shape[0])
    return Stage("residual" if residual else "plain", weight, a, d, d @ weight, perm)


def linear_stage(weight: np.ndarray) -> Stage:
    return Stage("linear", weight, weight)


def plain_stages(weights: Sequence[np.ndarray], specs: Sequence[ActivationSpec]) -> tuple[list[Stage], np.ndarray]:
    """Stages of ``W_K MaxMin(... MaxMin(W_1 x))`` and the output map ``W_K``."""
    return [maxmin_stage(w, s) for w, s in zip(weights[:-1], specs)], weights[-1]


def residual_stages(embed: np.ndarray, blocks: Sequence[np.ndarray], specs: Sequence[ActivationSpec],
                    head: np.ndarray) -> tuple[list[Stage], np.ndarray]:
    """Stages of ``W_out (h_m)``, ``h_j = h_{j-1} + MaxMin(W_j h_{j-1})``, ``h_0 = W_0 x``."""
    return [linear_stage(embed)] + [maxmin_stage(w, s, residual=True) for w, s in zip(blocks, specs)], head


def multiplier_sizes(stages: Sequence[Stage]) -> list[int]:
    return [s.pairs for s in stages if s.d is not None]


def split_multipliers(stages: Sequence[Stage], t: np.ndarray) -> list[np.ndarray | None]:
    """The flat multiplier vector cut into one vector per stage (None for linear stages)."""
    out, pos = [], 0
    for s in stages:
        if s.d is None:
            out.append(None)
        else:
            out.append(t[pos:pos + s.pairs])
            pos += s.pairs
    return out


@dataclass
class StageFactor:
    """What the forward (gradient) pass needs from stage k: ``chol(G_k)`` (lower) and ``N_k``."""

    chol: np.ndarray | None
    n: np.ndarray | None


def stage_value(stage: Stage, p_next: np.ndarray, t: np.ndarray | None) -> tuple[np.ndarray, StageFactor] | None:
    """``P_{k-1}`` from ``P_k`` (module docstring); None when ``G_k`` is not positive definite."""
    a = stage.a
    apa = a.T @ (p_next @ a)
    if stage.d is None:
        return (apa + apa.T) / 2, StageFactor(None, None)
    dp = stage.d @ p_next
    g = np.diag(t) - dp @ stage.d.T
    try:
        chol = scipy.linalg.cholesky((g + g.T) / 2, lower=True, check_finite=False)
    except np.linalg.LinAlgError:
        return None
    n = dp @ a + t[:, None] * stage.c / 2
    y = scipy.linalg.solve_triangular(chol, n, lower=True, check_finite=False)
    p_prev = apa + y.T @ y
    return (p_prev + p_prev.T) / 2, StageFactor(chol, n)


def backward_pass(stages: Sequence[Stage], output: np.ndarray, t: np.ndarray):
    """``P_0`` and the stage factors, or None when ``t`` is outside the domain."""
    p = output.T @ output
    factors = []
    for stage, tk in zip(reversed(stages), reversed(split_multipliers(stages, t))):
        res = stage_value(stage, p, tk)
        if res is None or not np.all(np.isfinite(res[0])):
            return None
        p, factor = res
        factors.append(factor)
    return p, factors[::-1]


@dataclass
class RiccatiValue:
    """``rho = lambda_max(P_0)``, the smoothed value ``f_mu`` and its gradient w.r.t. ``t``."""

    rho: float
    smoothed: float
    gradient: np.ndarray


def barrier_gradient(stages: Sequence[Stage], factors: Sequence[StageFactor]) -> tuple[float, np.ndarray]:
    """``phi = sum_k log det G_k`` and its gradient w.r.t. ``t`` (adjoint pass, module docstring of
    :mod:`maxmin_lbfgs`): with ``K = G^{-1} N`` and ``Lambda_0 = 0``, forwards,
    ``d phi / d t_k = diag(G_k^{-1}) + diag(K Lambda_{k-1} (C - K)^T)``,
    ``Lambda_k = (A + D^T K) Lambda_{k-1} (A + D^T K)^T - D^T G_k^{-1} D``."""
    lam = np.zeros((stages[0].a.shape[1],) * 2)
    value, grads = 0.0, []
    for stage, factor in zip(stages, factors):
        if stage.d is None:
            lam = stage.a @ lam @ stage.a.T
            continue
        value += 2.0 * float(np.sum(np.log(np.diag(factor.chol))))
        g_inv = scipy.linalg.cho_solve((factor.chol, True), np.eye(stage.pairs), check_finite=False)
        k = scipy.linalg.cho_solve((factor.chol, True), factor.n, check_finite=False)
        grads.append(np.diag(g_inv) + np.sum((k @ lam) * (stage.c - k), axis=1))
        closed = stage.a + stage.d.T @ k
        lam = closed @ lam @ closed.T - stage.d.T @ g_inv @ stage.d
    return value, np.concatenate(grads)


def riccati_value(stages: Sequence[Stage], output: np.ndarray, t: np.ndarray, mu: float,
                  nu: float = 0.0) -> RiccatiValue | None:
    """Value and gradient of ``f_mu - nu phi`` (``phi`` of :func:`barrier_gradient`; ``mu = nu = 0``:
    ``rho`` and a subgradient); ``rho`` is always the exact ``lambda_max``. None off the domain."""
    if not np.all(t > 0):
        return None
    back = backward_pass(stages, output, t)
    if back is None:
        return None
    p0, factors = back
    top, smoothed, p, w = smoothed_top_eigenspace(p0, mu)
    if not math.isfinite(top):
        return None
    grads = []
    for stage, factor in zip(stages, factors):
        if stage.d is None:
            p = stage.a @ p
            continue
        r = scipy.linalg.cho_solve((factor.chol, True), factor.n @ p, check_finite=False)
        grads.append((r * (stage.c @ p - r)) @ w)
        p = stage.a @ p + stage.d.T @ r
    gradient = np.concatenate(grads)
    if nu > 0:
        phi, dphi = barrier_gradient(stages, factors)
        smoothed, gradient = smoothed - nu * phi, gradient - nu * dphi
    return RiccatiValue(top, smoothed, gradient)


def feasible_multipliers(stages: Sequence[Stage], output: np.ndarray, factor: float = 2.0) -> np.ndarray:
    """A point of the domain, one multiplier per layer: backwards, ``t_k = factor *
    lambda_max(D P_k D^T)`` (so ``G_k >= (1 - 1/factor) T_k > 0``) and ``P_{k-1}`` from it."""
    p = output.T @ output
    per_stage = []
    for stage in reversed(stages):
        tk = None
        if stage.d is not None:
            top = float(np.linalg.eigvalsh(stage.d @ p @ stage.d.T).max())
            tk = np.full(stage.pairs, factor * max(top, 1e-12))
        res = stage_value(stage, p, tk)
        p = res[0]
        per_stage.append(tk)
    return np.concatenate([tk for tk in per_stage[::-1] if tk is not None])

"""The certified objective ``rho(T)`` of slope-restricted LipSDP, its smoothing, and their gradients.

Notation as in :mod:`nlverify.sdp.barrier` (``F = -M``, neuron i of layer k with slopes
``[a, b]``, ``p_i`` = row i of ``W_k`` placed in block k-1, ``q_i`` = unit vector of neuron i)::

    F(rho, t) = rho E_0 + F_c + sum_i t_i F_i,    F_i = sym((q_i - a p_i)(q_i - b p_i)^T),

``F_c = -E_L^T W_K^T W_K E_L``. Split ``F`` into the input block ``rho I + A(t)``
(``A = a_1 b_1 W_1^T T_1 W_1``, zero for ReLU), the coupling ``B(t)`` (input x first hidden layer)
and the hidden part ``H(t)`` (block tridiagonal over the hidden layers). By the Schur complement,
``F(rho, t) > 0`` iff ``H(t) > 0`` and ``rho > lambda_max(S(t))`` with

    S(t) = B H^{-1} B^T - A,         rho(t) := lambda_max(S(t))   (+inf where H(t) is not > 0).

**Convexity.** ``rho(t) = inf {rho : F(rho, t) >= 0}`` (closure aside) is the projection onto ``t``
of the epigraph ``{(rho, t): F(rho, t) >= 0}``, a convex set (an LMI), so ``rho`` is convex.
Equivalently: for ``H > 0``, ``u^T S u = max_z [-xi^T (F(0, t)) xi]`` over ``xi = (u, z)`` (the
maximiser is ``z = -H^{-1} B^T u``), so ``rho(t) = max_{|u|=1, z} -xi^T F(0, t) xi``, a supremum of
functions affine in ``t``. Every ``t`` with ``H(t) > 0`` and ``t >= 0`` is feasible for every
``rho > rho(t)``: the iterates of a method on this function need no projection, and the certificate
of :mod:`nlverify.sdp.certify` loses only its rounding margin.

**Gradient.** For a unit eigenvector ``u`` of S and ``z = -H^{-1} B^T u``, ``xi = (u, z)``:
``u^T (dS/dt_i) u = -xi^T F_i xi = -(z_i - a v_i)(z_i - b v_i)``, ``v = W_k xi_{k-1}`` (the
pre-activation of layer k driven by xi's block k-1). Proof: differentiate
``S = B H^{-1} B^T - A``: ``u^T dS u = 2 u^T dB H^{-1} B^T u - u^T B H^{-1} dH H^{-1} B^T u - u^T dA u
= -(2 u^T dB z + z^T dH z + u^T dA u) = -xi^T dF xi``. For a simple top eigenvalue this is the
gradient of ``rho``; in general a subgradient.

**Smoothing.** ``lambda_max`` is not differentiable where the top eigenvalue is multiple (which is
typical at the optimum). We minimise ``f_mu(t) = mu log tr exp(S(t)/mu)``, with
``rho(t) <= f_mu(t) <= rho(t) + mu log n_0``: ``f_mu`` is a convex, nondecreasing (in the Loewner
order) spectral function composed with the matrix-convex map ``t -> S(t)`` (``(B, H) -> B H^{-1}
B^T`` is jointly matrix convex for ``H > 0``), hence convex, and smooth. With ``S = U diag(lambda)
U^T`` and softmax weights ``w_j = exp(lambda_j/mu) / sum exp(lambda/mu)``,

    d f_mu / d t_i = sum_j w_j u_j^T (dS/dt_i) u_j = -sum_j w_j (z_ij - a v_ij)(z_ij - b v_ij),

one vector ``z_j`` per eigenvector (``Z = -H^{-1} B^T U``: n_0 right-hand sides).

**Cost.** A block Cholesky ``H = R R^T`` (:mod:`nlverify.sdp.blocktri`, ``O(sum n_k^3)``),
``Y = R^{-1} B^T`` by forward substitution (``S = Y^T Y - A``), an n_0 x n_0 eigenproblem, and
``Z = -R^{-T} (Y U)`` by back substitution: no dense matrix of the LMI's size is ever formed.
Nothing here is trusted for the bound; :mod:`nlverify.sdp.certify` re-proves it in float64.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import scipy.linalg

from .blocktri import BlockTridiagonal, block_cholesky
from .dual_scaling import TridiagonalLmi

# softmax weights below this are dropped from the gradient (their contribution is < 1e-14 of it)
NEGLIGIBLE_WEIGHT = 1e-14


@dataclass
class SchurValue:
    """``rho = lambda_max(S)``, the smoothed value ``f_mu`` and its gradient in the variables."""

    rho: float
    smoothed: float
    gradient: np.ndarray


def smoothed_top_eigenspace(symmetric: np.ndarray, mu: float) -> tuple[float, float, np.ndarray, np.ndarray]:
    """``(lambda_max, f_mu, U, w)`` of a symmetric matrix: ``f_mu = lambda_max + mu log sum_i
    exp((lambda_i - lambda_max) / mu)`` (the log-sum-exp smoothing, ``>= lambda_max``; ``mu = 0``: the
    maximum itself), and its gradient ``sum_i w_i u_i u_i^T`` as the eigenvectors ``U`` (columns) with
    weights ``w`` above :data:`NEGLIGIBLE_WEIGHT`. ``lambda_max`` is NaN/inf when the matrix is."""
    lam, u = np.linalg.eigh(symmetric)
    top = float(lam[-1])
    if not math.isfinite(top):
        return top, top, u[:, :0], lam[:0]
    if mu > 0:
        e = np.exp((lam - top) / mu)
        w = e / e.sum()
        smoothed = top + mu * math.log(float(e.sum()))
    else:
        w = np.zeros_like(lam)
        w[-1] = 1.0
        smoothed = top
    keep = w > NEGLIGIBLE_WEIGHT
    return top, smoothed, u[:, keep], w[keep]


def _solve_lower(r: np.ndarray, b: np.ndarray, trans: str = "N") -> np.ndarray:
    return scipy.linalg.solve_triangular(r, b, lower=True, trans=trans, check_finite=False)


def schur_value(lmi: TridiagonalLmi, v: np.ndarray, mu: float) -> SchurValue | None:
    """Value and gradient (w.r.t. the variables ``v``, ``t = E v``) of ``f_mu``; ``mu = 0`` gives
    ``rho`` and a subgradient. None when ``H(t)`` is not (numerically) positive definite."""
    if not np.all(v > 0):
        return None
    ts = lmi.reduction.expand(v)
    blocks = lmi.blocks(0.0, ts)
    chol = block_cholesky(BlockTridiagonal(blocks.diag[1:], blocks.upper[1:]))
    if chol is None:
        return None
    layers = len(chol.diag)
    ys = [_solve_lower(chol.diag[0], blocks.upper[0].T)]           # Y = R^{-1} B^T, block by block
    for k in range(1, layers):
        ys.append(_solve_lower(chol.diag[k], -(chol.sub[k - 1] @ ys[-1])))
    s = sum(y.T @ y for y in ys) - blocks.diag[0]
    top, smoothed, u, w = smoothed_top_eigenspace((s + s.T) / 2, mu)
    if not math.isfinite(top):
        return None
    # Z = -R^{-T} (Y U): back substitution through the block-upper-bidiagonal R^T
    yu = [y @ u for y in ys]
    zs: list[np.ndarray] = [np.empty(0)] * layers
    zs[-1] = -_solve_lower(chol.diag[-1], yu[-1], "T")
    for k in range(layers - 2, -1, -1):
        zs[k] = -_solve_lower(chol.diag[k], yu[k] + chol.sub[k].T @ zs[k + 1], "T")
    grads, prev = [], u
    for k, z in enumerate(zs):
        pre = lmi.weights[k] @ prev                                 # v = W_k xi_{k-1}, one column per eigvec
        a, b = lmi.alpha[k], lmi.beta[k]
        grads.append(-(((z - a * pre) * (z - b * pre)) @ w))
        prev = z
    return SchurValue(top, smoothed, lmi.reduction.reduce(np.concatenate(grads)))

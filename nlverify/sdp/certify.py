"""From solver multipliers to a *certified* bound, in float64, with rounding accounted for.

A solver's "optimal" is not a proof: first-order solvers (SCS) return multipliers that satisfy
the LMI only up to their tolerance. Certification fixes the multipliers, projects them onto
their cone (the QC is then valid exactly), and finds a rho for which ``M(rho) = M0 - rho E_0 < 0``
(strictly) is *proven* in floating point:

1. **Estimate** (not trusted). With ``M0 = [[A, B], [B^T, C]]`` (A the input block), ``M(rho) < 0``
   iff ``C < 0`` and ``rho > lambda_max(A - B C^{-1} B^T)`` (Schur complement). Cholesky of -C and
   one symmetric eigenvalue problem give the candidate ``rho_hat``.
2. **Proof** at ``rho = rho_hat + delta`` (delta grown geometrically until it succeeds). Let M* be
   the exact matrix and M~ the computed one; :func:`nlverify.sdp.lmi.assemble_numpy` also returns
   |M| with ``|M~ - M*| <= gamma_k |M|`` entrywise (``gamma_k = k u / (1 - k u)``, u = 2^-53), so
   ``||M~ - M*||_2 <= c_form := gamma_k ||(|M|)||_F``. Form ``H = fl(-M~ - c I)`` (only the diagonal
   rounds: ``|H - (-M~ - cI)| <= u |diag|``) and run a float Cholesky on H. If it completes,
   ``R^T R = H + dH`` with ``|dH| <= gamma_{N+1} |R^T||R|`` (Demmel; Higham, *Accuracy and Stability*,
   Thm 10.3, which also covers blocked LAPACK implementations with conventional matrix products),
   hence ``||dH||_2 <= ||dH||_F <= gamma_{N+1} tr(R^T R) <= gamma_{N+1}/(1-gamma_{N+1}) tr(H) =: c_chol``
   and ``H >= -c_chol I``. Therefore

       -M* >= -M~ - c_form I >= (c - c_form - c_chol - u max|diag|) I,

   and the check requires that last factor to be positive (verified *after* the factorisation
   with the actual trace), which proves ``M* < 0`` for the exact weights and projected multipliers.
   Overflow/underflow cannot occur for the O(1)-scaled matrices used here (weights are normalised
   by powers of two first, see :func:`nlverify.sdp.network.normalized`).
   *Equilibration* (in :func:`certify_rho` / :func:`check_rho`): the proof runs on ``D M~ D`` and
   ``D |M| D`` with ``D`` diagonal, ``D_ii`` the power of two nearest ``|M|_ii^{-1/2}``. Scaling by
   powers of two is exact in floating point (no under/overflow at these magnitudes), ``D M* D < 0``
   iff ``M* < 0``, and ``|D M~ D - D M* D| <= gamma_k D|M|D``, so the argument above applies
   verbatim; but the shift is now relative to each row's scale. Without it, multipliers that span
   orders of magnitude across layers (deep nets: 6e-4 .. 4 on 10 x 300) leave hidden-block
   eigenvalues (~3e-10) below the absolute shift (~6e-10), and rho had to be inflated by 0.2 %.
3. ``bound = sqrt(rho)`` rounded up (sqrt is correctly rounded; one ulp up), times the exact
   power-of-two scale.

The whole check needs only the weights, the activation classes and the multipliers:
:func:`nlverify.sdp.result.verify_certificate` re-runs step 2 without any solver.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import scipy.linalg

from .lmi import Blocks, LayerQC, assemble_numpy

UNIT_ROUNDOFF = 2.0 ** -53


def gamma(k: int) -> float:
    """``gamma_k = k u / (1 - k u)``, Higham's constant for k rounded operations."""
    ku = k * UNIT_ROUNDOFF
    return ku / (1 - ku)


@dataclass
class DefinitenessProof:
    """Outcome of :func:`prove_negative_definite`: ``slack > 0`` proves ``M* < 0``."""

    ok: bool
    shift: float
    c_form: float
    c_chol: float
    slack: float


def prove_negative_definite(m: np.ndarray, abs_m: np.ndarray, inner_dim: int) -> DefinitenessProof:
    """Prove ``M* < 0`` for the exact matrix M* within ``gamma_{2 inner + 16} |M|`` of ``m``."""
    n = m.shape[0]
    c_form = gamma(2 * inner_dim + 16) * float(np.linalg.norm(abs_m, "fro")) * (1 + 1e-6)
    g = gamma(n + 1)
    diag_abs = np.abs(np.diag(m))
    # A priori shift: twice what the a posteriori test will need (trace estimated from |diag|).
    shift = 2 * (c_form + g / (1 - g) * float(diag_abs.sum()) * (1 + 1e-6)
                 + UNIT_ROUNDOFF * float(diag_abs.max(initial=0.0))) + 1e-300
    h = -m - shift * np.eye(n)
    try:
        np.linalg.cholesky(h)
    except np.linalg.LinAlgError:
        return DefinitenessProof(False, shift, c_form, float("nan"), -math.inf)
    trace_h = math.fsum(np.diag(h)) * (1 + 2 * n * UNIT_ROUNDOFF)
    c_chol = g / (1 - g) * max(trace_h, 0.0)
    diag_round = UNIT_ROUNDOFF * float(np.abs(np.diag(h)).max(initial=0.0) + shift)
    slack = shift - c_form - c_chol - diag_round
    return DefinitenessProof(slack > 0, shift, c_form, c_chol, slack)


def equilibrate(m: np.ndarray, abs_m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(D m D, D |M| D)`` with ``D_ii = 2^-e_i`` nearest ``|M|_ii^{-1/2}`` (exact: powers of two)."""
    diag = np.diag(abs_m).copy()
    diag[~(diag > 0)] = 1.0
    d = np.ldexp(1.0, -np.round(np.log2(diag) / 2).astype(int))
    return m * d[:, None] * d[None, :], abs_m * d[:, None] * d[None, :]


def schur_estimate(m0: np.ndarray, n_in: int, input_scale: np.ndarray | None = None) -> float | None:
    """``lambda_max(D^-1/2 (A - B C^{-1} B^T) D^-1/2)`` (D = diag(input_scale), default I), or None
    when C is not (numerically) negative definite."""
    a, b, c = m0[:n_in, :n_in], m0[:n_in, n_in:], m0[n_in:, n_in:]
    r = np.ones(n_in) if input_scale is None else 1.0 / np.sqrt(np.asarray(input_scale, dtype=np.float64))
    if c.size == 0:
        return float(np.linalg.eigvalsh(a * r[:, None] * r[None, :]).max())
    try:
        lower = np.linalg.cholesky(-c)
    except np.linalg.LinAlgError:
        return None
    z = scipy.linalg.solve_triangular(lower, b.T, lower=True)
    s = a + z.T @ z
    s = s * r[:, None] * r[None, :]
    return float(np.linalg.eigvalsh((s + s.T) / 2).max())


@dataclass
class RhoCertificate:
    """A proven ``rho`` (LMI holds strictly at it) or a rejection with a reason."""

    ok: bool
    rho: float
    rho_estimate: float
    attempts: int
    reason: str = ""
    proof: DefinitenessProof | None = None


def qc_blocks(qcs: Sequence[LayerQC], values: Sequence[dict]) -> list[Blocks]:
    """Projected multipliers -> numpy QC blocks."""
    return [qc.numpy_blocks(qc.project(v)) for qc, v in zip(qcs, values)]


def certify_rho(weights: Sequence[np.ndarray], blocks: Sequence[Blocks], max_attempts: int = 40,
                input_scale: np.ndarray | None = None) -> RhoCertificate:
    """Smallest rho (up to a tiny margin) for which ``M(rho) < 0`` is proven (input block
    ``-rho diag(input_scale)`` when given, see :func:`nlverify.sdp.lmi.assemble_numpy`)."""
    n_in = weights[0].shape[1]
    inner = max(max(w.shape) for w in weights)
    m0, _ = assemble_numpy(weights, blocks, 0.0)
    estimate = schur_estimate(m0, n_in, input_scale)
    if estimate is None or not math.isfinite(estimate):
        return RhoCertificate(False, math.inf, math.nan, 0, "hidden block of the LMI not negative definite")
    base = max(estimate, 0.0)
    delta = max(base, 1e-300) * 1e-12
    for attempt in range(1, max_attempts + 1):
        rho = base + delta
        m, abs_m = equilibrate(*assemble_numpy(weights, blocks, rho, input_scale))
        proof = prove_negative_definite(m, abs_m, inner)
        if proof.ok:
            return RhoCertificate(True, rho, estimate, attempt, "", proof)
        delta = max(delta * 4, proof.shift * 2)
    return RhoCertificate(False, math.inf, estimate, max_attempts, "no rho passed the definiteness proof")


def check_rho(weights: Sequence[np.ndarray], blocks: Sequence[Blocks], rho: float,
              input_scale: np.ndarray | None = None) -> DefinitenessProof:
    """Re-prove ``M(rho) < 0`` at a given rho (used by certificate verification)."""
    inner = max(max(w.shape) for w in weights)
    m, abs_m = equilibrate(*assemble_numpy(weights, blocks, rho, input_scale))
    return prove_negative_definite(m, abs_m, inner)


def sqrt_up(x: float) -> float:
    """An upper bound on the real square root of the float x >= 0."""
    return float(np.nextafter(math.sqrt(x), math.inf))

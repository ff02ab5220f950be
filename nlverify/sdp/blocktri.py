"""Symmetric block-tridiagonal matrices: Cholesky, log-determinant and the dense inverse.

The LipSDP matrix couples only consecutive layers, so ``F`` is block tridiagonal with diagonal
blocks ``D_0..D_L`` and super-diagonal blocks ``O_1..O_L`` (``O_k`` = block (k-1, k)). Its
Cholesky factor has no fill outside the band: ``F = R R^T`` with ``R`` block lower bidiagonal,

    R_00 R_00^T = D_0,
    R_{k,k-1}   = O_k^T R_{k-1,k-1}^{-T},
    R_kk R_kk^T = D_k - R_{k,k-1} R_{k,k-1}^T,

which costs ``O(sum_k n_k^3)`` instead of ``O((sum_k n_k)^3)``: a positive-definiteness test and
``log det F = 2 sum log diag R_kk`` are then almost free even for thousands of neurons. The dense
inverse (needed by Newton's method, whose Hessian involves every pair of neurons) is LAPACK's
``potri`` on the assembled factor.

These factorisations are *not* used for certification (that is :mod:`nlverify.sdp.certify`,
with its rounding analysis); they only steer the solver.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.linalg


@dataclass
class BlockTridiagonal:
    """``diag[k]`` is block (k, k); ``upper[k - 1]`` is block (k - 1, k), k = 1..L."""

    diag: list[np.ndarray]
    upper: list[np.ndarray]

    @property
    def sizes(self) -> list[int]:
        return [d.shape[0] for d in self.diag]

    def dense(self) -> np.ndarray:
        off = np.concatenate([[0], np.cumsum(self.sizes)]).astype(int)
        out = np.zeros((off[-1], off[-1]))
        for k, d in enumerate(self.diag):
            out[off[k]:off[k + 1], off[k]:off[k + 1]] = d
        for k, o in enumerate(self.upper, start=1):
            out[off[k - 1]:off[k], off[k]:off[k + 1]] = o
            out[off[k]:off[k + 1], off[k - 1]:off[k]] = o.T
        return out


@dataclass
class BlockCholesky:
    """``F = R R^T``: ``diag[k] = R_kk`` (lower triangular), ``sub[k - 1] = R_{k,k-1}``."""

    diag: list[np.ndarray]
    sub: list[np.ndarray]

    def logdet(self) -> float:
        return 2.0 * float(sum(np.sum(np.log(np.diag(r))) for r in self.diag))

    def dense_factor(self) -> np.ndarray:
        sizes = [r.shape[0] for r in self.diag]
        off = np.concatenate([[0], np.cumsum(sizes)]).astype(int)
        out = np.zeros((off[-1], off[-1]), order="F")
        for k, r in enumerate(self.diag):
            out[off[k]:off[k + 1], off[k]:off[k + 1]] = r
        for k, s in enumerate(self.sub, start=1):
            out[off[k]:off[k + 1], off[k - 1]:off[k]] = s
        return out

    def inverse(self) -> np.ndarray:
        """Dense ``F^{-1}`` (symmetric), via LAPACK ``potri`` on the assembled factor."""
        inv, info = scipy.linalg.lapack.dpotri(self.dense_factor(), lower=1, overwrite_c=1)
        if info != 0:
            raise np.linalg.LinAlgError(f"potri failed (info={info})")
        lower = np.tril(inv)
        return lower + np.tril(inv, -1).T


def block_cholesky(f: BlockTridiagonal) -> BlockCholesky | None:
    """The block Cholesky factor, or None when ``F`` is not (numerically) positive definite."""
    diag, sub = [], []
    prev = None
    for k, d in enumerate(f.diag):
        if k == 0:
            schur = d
        else:
            # R_{k,k-1} = O_k^T R_{k-1,k-1}^{-T}  <=>  R_{k-1,k-1} R_{k,k-1}^T = O_k
            s = scipy.linalg.solve_triangular(prev, f.upper[k - 1], lower=True, check_finite=False).T
            sub.append(s)
            schur = d - s @ s.T
        try:
            prev = scipy.linalg.cholesky(schur, lower=True, check_finite=False)
        except np.linalg.LinAlgError:
            return None
        if not np.all(np.isfinite(prev)):
            return None
        diag.append(prev)
    return BlockCholesky(diag, sub)

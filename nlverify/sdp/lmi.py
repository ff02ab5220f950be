"""The LipSDP matrix inequality, assembled from per-layer quadratic constraints.

Variables: ``xi = (x_0, z_1, ..., z_{K-1})`` (input and activation outputs); the pre-activation
of layer k is ``v_k = W_k z_{k-1}`` (``z_0 = x_0``) and the output is ``y = W_K z_{K-1}``.
Every activation layer k comes with a family of *quadratic constraints* (QCs): symmetric
matrices ``Q_k = [[Q11, Q12], [Q12^T, Q22]]``, affine in multipliers ``lambda_k`` from a cone,
such that for any two inputs (differences marked Delta)

    [Dv_k; Dz_k]^T Q_k [Dv_k; Dz_k] >= 0.

If for some rho and multipliers

    M(rho, lambda) = W_K'^T W_K' + sum_k Phi_k^T Q_k Phi_k - rho E_0  <=  0          (LMI)

(``Phi_k`` picks ``(W_k z_{k-1}, z_k)`` out of xi, ``W_K'`` the output, ``E_0`` the input block)
then ``|Dy|^2 <= rho |Dx|^2 - sum_k (QC_k >= 0) <= rho |Dx|^2``: ``sqrt(rho)`` is an l2 Lipschitz
bound. Biases cancel in every difference, so the bound holds for every choice of biases.

Block (k-1, k-1) receives ``W_k^T Q11 W_k``, block (k-1, k) receives ``W_k^T Q12``, block (k, k)
receives ``Q22`` and, for the last hidden layer, ``W_K^T W_K``.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Sequence

import cvxpy as cp
import numpy as np
import scipy.sparse as sp

from .activations import ActivationSpec

Blocks = tuple[np.ndarray | None, np.ndarray | None, np.ndarray]


class LayerQC(ABC):
    """A family of quadratic constraints for one activation layer of ``size`` neurons."""

    name: str = "abstract"

    def __init__(self, spec: ActivationSpec, size: int) -> None:
        self.spec = spec
        self.size = size

    @abstractmethod
    def cvx_contribution(self, weight: np.ndarray) -> tuple[cp.Expression | None, cp.Expression | None, cp.Expression]:
        """``(W^T Q11 W, W^T Q12, Q22)`` as cvxpy expressions (None for an identically zero block)."""

    def constraints(self) -> list[cp.Constraint]:
        """Cone constraints on the multipliers (e.g. nonnegativity)."""
        return []

    @abstractmethod
    def variable_values(self) -> dict[str, np.ndarray]:
        """Multiplier values after a solve."""

    @abstractmethod
    def project(self, values: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Nearest valid multipliers (e.g. clip to >= 0); exact, no rounding."""

    @abstractmethod
    def numpy_blocks(self, values: dict[str, np.ndarray]) -> Blocks:
        """``(Q11, Q12, Q22)`` for *valid* (projected) multipliers, None for zero blocks.

        Must be *linear* in ``values`` (no projection inside): :meth:`linear_blocks` relies on it."""

    # ---- solver-independent description of the multipliers (used by the direct SCS backend)

    @abstractmethod
    def variable_shapes(self) -> dict[str, tuple[int, ...]]:
        """Name -> shape of every multiplier, in the order of the flattened variable vector."""

    def nonneg_names(self) -> tuple[str, ...]:
        """Multipliers constrained to be elementwise >= 0 (all others are free)."""
        return ()

    @property
    def num_variables(self) -> int:
        return int(sum(int(np.prod(s)) for s in self.variable_shapes().values()))

    def values_from_flat(self, flat: np.ndarray) -> dict[str, np.ndarray]:
        """Split a flat variable vector into the dict :meth:`variable_values` would return."""
        out, pos = {}, 0
        for name, shape in self.variable_shapes().items():
            n = int(np.prod(shape))
            out[name] = np.asarray(flat[pos:pos + n], dtype=np.float64).reshape(shape)
            pos += n
        return out

    def nonneg_mask(self) -> np.ndarray:
        """Boolean mask over the flat variable vector: True where the entry must be >= 0."""
        keep = set(self.nonneg_names())
        return np.concatenate([np.full(int(np.prod(s)), name in keep)
                               for name, s in self.variable_shapes().items()] or [np.zeros(0, bool)])

    def linear_blocks(self, weight: np.ndarray) -> tuple[sp.csc_matrix, sp.csc_matrix, sp.csc_matrix]:
        """The layer's contribution to M as sparse linear maps of the flat multiplier vector l:

        ``vec(W^T Q11 W) = C11 l``, ``vec(W^T Q12) = C12 l``, ``vec(Q22) = C22 l`` (row-major vec).
        Default: evaluate :meth:`numpy_blocks` on unit vectors (exact for a linear map; subclasses
        with many multipliers override it with a closed form)."""
        n_a, n_b = weight.shape[1], weight.shape[0]
        cols11, cols12, cols22 = [], [], []
        nv = self.num_variables
        for j in range(nv):
            unit = np.zeros(nv)
            unit[j] = 1.0
            q11, q12, q22 = self.numpy_blocks(self.values_from_flat(unit))
            cols11.append(sp.csc_matrix((weight.T @ q11 @ weight).reshape(-1, 1)) if q11 is not None
                          else sp.csc_matrix((n_a * n_a, 1)))
            cols12.append(sp.csc_matrix((weight.T @ q12).reshape(-1, 1)) if q12 is not None
                          else sp.csc_matrix((n_a * n_b, 1)))
            cols22.append(sp.csc_matrix(np.asarray(q22).reshape(-1, 1)))
        return (sp.hstack(cols11, format="csc"), sp.hstack(cols12, format="csc"),
                sp.hstack(cols22, format="csc"))


def block_sizes(weights: Sequence[np.ndarray]) -> list[int]:
    """Sizes of ``(x_0, z_1, ..., z_{K-1})``."""
    return [weights[0].shape[1]] + [w.shape[0] for w in weights[:-1]]


def assemble_numpy(weights: Sequence[np.ndarray], blocks: Sequence[Blocks], rho: float,
                   input_scale: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``M(rho)`` and ``|M|``: the same assembly with absolute values of every factor.

    ``input_scale`` (positive vector d, l_inf bounds): the input block gets ``-rho diag(d)``
    instead of ``-rho I`` (one more rounding per diagonal entry, inside the allowance below).

    ``|M|`` bounds the rounding of the float assembly: every entry of the computed M differs
    from the exact one by at most ``gamma_{2 n_max + 16} |M|`` entrywise, ``n_max`` the widest
    layer (two inner products of length <= n_max, the rounding of the Q entries from the
    multipliers, and at most four additions per entry).
    """
    sizes = block_sizes(weights)
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    n = int(offsets[-1])
    m = np.zeros((n, n))
    a = np.zeros((n, n))

    def sl(k: int) -> slice:
        return slice(int(offsets[k]), int(offsets[k + 1]))

    for k, (q11, q12, q22) in enumerate(blocks, start=1):
        w = weights[k - 1]
        aw = np.abs(w)
        if q11 is not None:
            m[sl(k - 1), sl(k - 1)] += w.T @ q11 @ w
            a[sl(k - 1), sl(k - 1)] += aw.T @ np.abs(q11) @ aw
        if q12 is not None:
            c = w.T @ q12
            ca = aw.T @ np.abs(q12)
            m[sl(k - 1), sl(k)] += c
            m[sl(k), sl(k - 1)] += c.T
            a[sl(k - 1), sl(k)] += ca
            a[sl(k), sl(k - 1)] += ca.T
        m[sl(k), sl(k)] += q22
        a[sl(k), sl(k)] += np.abs(q22)
    last = len(weights) - 1
    wk = weights[-1]
    m[sl(last), sl(last)] += wk.T @ wk
    a[sl(last), sl(last)] += np.abs(wk).T @ np.abs(wk)
    idx = np.arange(sizes[0])
    d = np.ones(sizes[0]) if input_scale is None else np.asarray(input_scale, dtype=np.float64)
    m[idx, idx] -= rho * d
    a[idx, idx] += np.abs(rho * d)
    return m, a


def assemble_cvx(weights: Sequence[np.ndarray], qcs: Sequence[LayerQC], rho: cp.Expression) -> cp.Expression:
    """The symmetric cvxpy expression ``M(rho, lambda)`` for the LMI ``M << 0``."""
    sizes = block_sizes(weights)
    nb = len(sizes)
    grid: list[list[list]] = [[[] for _ in range(nb)] for _ in range(nb)]
    for k, qc in enumerate(qcs, start=1):
        a11, a12, a22 = qc.cvx_contribution(weights[k - 1])
        if a11 is not None:
            grid[k - 1][k - 1].append(a11)
        if a12 is not None:
            grid[k - 1][k].append(a12)
            grid[k][k - 1].append(a12.T)
        grid[k][k].append(a22)
    wk = weights[-1]
    grid[nb - 1][nb - 1].append(wk.T @ wk)
    grid[0][0].append(-rho * np.eye(sizes[0]))
    rows = []
    for i in range(nb):
        row = []
        for j in range(nb):
            terms = grid[i][j]
            row.append(sum(terms[1:], terms[0]) if terms else np.zeros((sizes[i], sizes[j])))
        rows.append(row)
    mat = cp.bmat(rows)
    return (mat + mat.T) / 2

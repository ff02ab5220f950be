"""Quadratic constraints for MaxMin and GroupSort (after Pauli et al., ICLR 2024).

GroupSort sorts consecutive groups of g neurons (descending); MaxMin is g = 2 with
``(a, b) = (v_{2p}, v_{2p+1}) -> (max(a, b), min(a, b)) = (z_{2p}, z_{2p+1})``. Sorting is not
elementwise, so it is not slope-restricted neuron by neuron; two facts replace that:

1. *1-Lipschitz per group*: sorting is non-expansive, ``|Dz_G|^2 <= |Dv_G|^2``.
2. *Sum preservation*: ``1^T z_G = 1^T v_G``, so ``e_G := 1^T (Dz_G - Dv_G) = 0``.

**maxmin-qc** (:class:`SortQC`, any g): multipliers ``mu_G >= 0`` for (1) and *free*
multipliers ``H`` for (2):

    x^T Q x = sum_G mu_G (|Dv_G|^2 - |Dz_G|^2) + 2 e^T H x,    x = (Dv, Dz),

i.e. ``Q = diag(mu, -mu) + G^T H + H^T G`` with ``e = G x``, ``G = [-S, S]``, S the group-sum matrix.
The second term vanishes because e = 0, for every H (any sign): equality constraints get free
multipliers. H is layer-wide: ``e_G`` times any linear form of the layer's ``(Dv, Dz)`` (n^2 free
scalars per layer); this contains Pauli et al.'s multipliers (their ``lambda_2 11^T`` in T and
their P and S blocks are ``e_G`` times sums over group G). A group-local H (2n scalars) was tried
and measured worse on 5fc_32: SCS hit 100000 iterations (706 s, loaded 2-core machine) and
certified 193.311 against 193.208-193.221 with the layer-wide H.
Groups follow ``spec.grouping`` (:func:`activations.group_indices`).

**maxmin-elim** (:class:`MaxMinElimQC`, g = 2): eliminate the pair through one ReLU,

    max(a, b) = b + relu(a - b),     min(a, b) = a - relu(a - b),

so ``r := Dmax - Db`` is the increment of a ReLU at ``u := Da - Db`` and the slope restriction of
ReLU gives ``r (u - r) = (Dmax - Db)(Da - Dmax) >= 0``; ``Dmin`` is tied to the rest by (2). The QC is

    x^T Q x = sum_p t_p (Dz_{2p} - Dv_{2p+1}) (Dv_{2p} - Dz_{2p}) + 2 e^T H x,     t >= 0, H free.

*Proof that maxmin-elim is at least as tight as maxmin-qc.* Write ``Dmin = Da + Db - Dmax + e``.
Then for one pair

    |Dv|^2 - |Dz|^2 = Da^2 + Db^2 - Dmax^2 - (Da + Db - Dmax)^2 - e (2(Da + Db - Dmax) + e)
                    = 2 (Dmax - Db)(Da - Dmax) - e * l(x),

where ``l(x) = 2(Da + Db - Dmax) + e`` is linear in the pair's own variables ``(a, b, max, min)``.
Both sides are quadratic forms in x, so as symmetric matrices
``Q_qc(mu, H) = Q_elim(t = 2 mu, H')`` with ``H' = H - mu * (coefficients of l / 2)``, which lies in
the same (free, layer-local) space of H. Hence every feasible point (rho, mu, H, ...) of the
maxmin-qc LMI gives a feasible point of the maxmin-elim LMI with the same rho, and the optimum of
maxmin-elim is <= that of maxmin-qc. (The elimination can be strictly tighter: the sector
constraint also encodes ``Dmax - Db`` and ``Da - Dmax`` having the same sign, which (1) does not.)
Substituting ``min`` exactly (instead of a free multiplier) would be at least as tight again, but
creates a linear skip path ``a + b`` through all later layers and destroys the block-tridiagonal
sparsity of the LMI; with the layer-local H used here the sparsity is kept.
"""
from __future__ import annotations

import cvxpy as cp
import numpy as np
import scipy.sparse as sp

from .activations import ActivationSpec, group_indices
from .lmi import Blocks, LayerQC


def group_sum_matrix(size: int, group_size: int, grouping: str = "consecutive") -> np.ndarray:
    """S with ``(S x)_G = sum of the entries of group G``, shape (size/g, size)."""
    idx = group_indices(size, group_size, grouping)
    s = np.zeros((idx.shape[0], size))
    s[np.arange(idx.shape[0])[:, None], idx] = 1.0
    return s


def pair_selectors(size: int, grouping: str = "consecutive") -> tuple[np.ndarray, np.ndarray]:
    """``(P0, P1)``: select the first (max) / second (min) entry of every pair."""
    idx = group_indices(size, 2, grouping)
    eye = np.eye(size)
    return eye[idx[:, 0]], eye[idx[:, 1]]


class FreeEqualityQC(LayerQC):
    """Shared part: free multipliers for linear equalities ``E (Dz - Dv) = 0``.

    Row k of E is multiplied by a linear form ``2 e_k (H_v,k . Dv + H_z,k . Dz)``: ``H_v`` and ``H_z``
    are (rows x n) matrices with free entries where :meth:`equality_mask` is True (default:
    everywhere, the layer-wide H). The contribution to Q is
    ``Q11 = -E^T H_v - H_v^T E``, ``Q12 = -E^T H_z + H_v^T E``, ``Q22 = E^T H_z + H_z^T E``.
    Subclasses give E, the mask and ``kinds`` (the accepted activation kinds); ``self.s`` is the
    group-sum matrix (used for per-group multipliers).
    """

    kinds: tuple[str, ...] = ("groupsort",)

    def __init__(self, spec: ActivationSpec, size: int) -> None:
        super().__init__(spec, size)
        if spec.kind not in self.kinds:
            raise ValueError(f"{spec.name} is not a {'/'.join(self.kinds)} activation")
        self.groups = size // spec.group_size
        self.s = group_sum_matrix(size, spec.group_size, spec.grouping)
        self.e = self.equality_matrix()
        self.mask_rows, self.mask_cols = np.nonzero(self.equality_mask())
        nnz = self.mask_rows.size
        self.h_v = cp.Variable(nnz, name="H_v")
        self.h_z = cp.Variable(nnz, name="H_z")
        rows = self.mask_rows * size + self.mask_cols  # row-major position in the (rows x n) matrix
        self._scatter = sp.csc_matrix((np.ones(nnz), (rows, np.arange(nnz))), shape=(self.e.shape[0] * size, nnz))

    def equality_matrix(self) -> np.ndarray:
        """``E`` with ``E (Dz - Dv) = 0`` for every pair of inputs; here the group sums."""
        return self.s

    def equality_mask(self) -> np.ndarray:
        """Where ``H`` has free entries (all of them: layer-wide H, see the module docstring)."""
        return np.ones(self.e.shape, dtype=bool)

    def _h_cvx(self, h: cp.Variable) -> cp.Expression:
        return cp.reshape(self._scatter @ h, (self.e.shape[0], self.size), order="C")

    def _h_numpy(self, h: np.ndarray) -> np.ndarray:
        out = np.zeros(self.e.shape)
        out[self.mask_rows, self.mask_cols] = np.asarray(h, dtype=np.float64)
        return out

    def _free_cvx(self, w: np.ndarray):
        """``W^T (-E^T H_v - H_v^T E) W``, ``W^T (-E^T H_z + H_v^T E)``, ``E^T H_z + H_z^T E``."""
        ew = self.e @ w
        hvw = self._h_cvx(self.h_v) @ w
        ehz = self.e.T @ self._h_cvx(self.h_z)
        a11 = -(ew.T @ hvw) - (ew.T @ hvw).T
        a12 = -(w.T @ ehz) + hvw.T @ self.e
        a22 = ehz + ehz.T
        return a11, a12, a22

    def _free_numpy(self, values) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        e, hv, hz = self.e, self._h_numpy(values["H_v"]), self._h_numpy(values["H_z"])
        q11 = -e.T @ hv - hv.T @ e
        q12 = -e.T @ hz + hv.T @ e
        q22 = e.T @ hz + hz.T @ e
        return q11, q12, q22

    def _free_shapes(self) -> dict[str, tuple[int, ...]]:
        return {"H_v": (self.mask_rows.size,), "H_z": (self.mask_rows.size,)}

    def _free_values(self) -> dict[str, np.ndarray]:
        return {"H_v": np.asarray(self.h_v.value, dtype=np.float64),
                "H_z": np.asarray(self.h_z.value, dtype=np.float64)}


class SortQC(FreeEqualityQC):
    """1-Lipschitz per group (``mu >= 0``) + sum preservation (free H): **maxmin-qc**."""

    name = "maxmin-qc"

    def __init__(self, spec: ActivationSpec, size: int) -> None:
        super().__init__(spec, size)
        self.mu = cp.Variable(self.groups, nonneg=True, name="mu")

    def cvx_contribution(self, weight):
        f11, f12, f22 = self._free_cvx(weight)
        mu_full = self.s.T @ self.mu  # mu repeated over each group's entries
        a11 = weight.T @ cp.diag(mu_full) @ weight + f11
        a22 = -cp.diag(mu_full) + f22
        return a11, f12, a22

    def variable_values(self):
        return {"mu": np.asarray(self.mu.value, dtype=np.float64), **self._free_values()}

    def variable_shapes(self):
        return {"mu": (self.groups,), **self._free_shapes()}

    def nonneg_names(self):
        return ("mu",)

    def project(self, values):
        return {**values, "mu": np.maximum(np.asarray(values["mu"], dtype=np.float64), 0.0)}

    def numpy_blocks(self, values) -> Blocks:
        f11, f12, f22 = self._free_numpy(values)
        mu_full = self.s.T @ values["mu"]
        return np.diag(mu_full) + f11, f12, -np.diag(mu_full) + f22


class MaxMinElimQC(FreeEqualityQC):
    """ReLU sector on ``(a - b, max - b)`` per pair (``t >= 0``) + sum preservation: **maxmin-elim**.

    With ``R = [-P1, P0]`` (r = Dmax - Db) and ``D = [P0, -P0]`` (u - r = Da - Dmax) the sector part
    is ``(R^T T D + D^T T R)/2``:  ``Q11 = -(P1^T T P0 + P0^T T P1)/2``,
    ``Q12 = (P1^T T P0 + P0^T T P0)/2``,  ``Q22 = -P0^T T P0``.
    """

    name = "maxmin-elim"

    def __init__(self, spec: ActivationSpec, size: int) -> None:
        super().__init__(spec, size)
        if spec.group_size != 2:
            raise ValueError("the elimination formulation needs MaxMin (group size 2)")
        self.p0, self.p1 = pair_selectors(size, spec.grouping)
        self.t = cp.Variable(self.groups, nonneg=True, name="t")

    def cvx_contribution(self, weight):
        f11, f12, f22 = self._free_cvx(weight)
        p0w, p1w = self.p0 @ weight, self.p1 @ weight
        cross = p1w.T @ cp.diag(self.t) @ p0w
        a11 = -(cross + cross.T) / 2 + f11
        a12 = (p1w.T @ cp.diag(self.t) @ self.p0 + p0w.T @ cp.diag(self.t) @ self.p0) / 2 + f12
        a22 = -(self.p0.T @ cp.diag(self.t) @ self.p0) + f22
        return a11, a12, a22

    def variable_values(self):
        return {"t": np.asarray(self.t.value, dtype=np.float64), **self._free_values()}

    def variable_shapes(self):
        return {"t": (self.groups,), **self._free_shapes()}

    def nonneg_names(self):
        return ("t",)

    def project(self, values):
        return {**values, "t": np.maximum(np.asarray(values["t"], dtype=np.float64), 0.0)}

    def numpy_blocks(self, values) -> Blocks:
        f11, f12, f22 = self._free_numpy(values)
        t = np.diag(values["t"])
        p0, p1 = self.p0, self.p1
        q11 = -(p1.T @ t @ p0 + p0.T @ t @ p1) / 2
        q12 = (p1.T @ t @ p0 + p0.T @ t @ p0) / 2
        q22 = -(p0.T @ t @ p0)
        return q11 + f11, q12 + f12, q22 + f22

"""Quadratic constraints for MaxMin and GroupSort (after Pauli et al., ICLR 2024).

GroupSort sorts consecutive groups of g neurons (descending); MaxMin is g = 2 with
``(a, b) = (v_{2p}, v_{2p+1}) -> (max(a, b), min(a, b)) = (z_{2p}, z_{2p+1})``. Sorting is not
elementwise, so it is not slope-restricted neuron by neuron; two facts replace that:

1. *1-Lipschitz per group*: sorting is non-expansive, ``|Dz_G|^2 <= |Dv_G|^2``.
2. *Sum preservation*: ``1^T z_G = 1^T v_G``, so ``e_G := 1^T (Dz_G - Dv_G) = 0``.

**maxmin-qc** (:class:`SortQC`, any g): multipliers ``mu_G >= 0`` for (1) and a *free* matrix
``H`` (one row per group, one column per entry of ``(v, z)`` of the layer) for (2):

    x^T Q x = sum_G mu_G (|Dv_G|^2 - |Dz_G|^2) + 2 e^T H x,    x = (Dv, Dz),

i.e. ``Q = diag(mu, -mu) + G^T H + H^T G`` with ``e = G x``, ``G = [-S, S]``, S the group-sum matrix.
The second term vanishes because e = 0, for every H (any sign): equality constraints get free
multipliers.

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

from .activations import ActivationSpec
from .lmi import Blocks, LayerQC


def group_sum_matrix(size: int, group_size: int) -> np.ndarray:
    """S with ``(S x)_G = sum of the entries of group G``, shape (size/g, size)."""
    return np.kron(np.eye(size // group_size), np.ones((1, group_size)))


def pair_selectors(size: int) -> tuple[np.ndarray, np.ndarray]:
    """``(P0, P1)``: select the first / second entry of every consecutive pair."""
    eye = np.eye(size)
    return eye[0::2], eye[1::2]


class _SumPreservingQC(LayerQC):
    """Shared part: the free multiplier ``H = [H_v, H_z]`` for ``e = S(Dz - Dv) = 0``."""

    def __init__(self, spec: ActivationSpec, size: int) -> None:
        super().__init__(spec, size)
        if spec.kind != "groupsort":
            raise ValueError(f"{spec.name} is not a GroupSort/MaxMin activation")
        self.groups = size // spec.group_size
        self.s = group_sum_matrix(size, spec.group_size)
        self.h_v = cp.Variable((self.groups, size), name="H_v")
        self.h_z = cp.Variable((self.groups, size), name="H_z")

    def _free_cvx(self, w: np.ndarray):
        """``W^T (-S^T H_v - H_v^T S) W``, ``W^T (-S^T H_z + H_v^T S)``, ``S^T H_z + H_z^T S``."""
        sw = self.s @ w
        hvw = self.h_v @ w
        a11 = -(sw.T @ hvw) - (sw.T @ hvw).T
        a12 = -(sw.T @ self.h_z) + hvw.T @ self.s
        a22 = self.s.T @ self.h_z + (self.s.T @ self.h_z).T
        return a11, a12, a22

    def _free_numpy(self, values) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        s, hv, hz = self.s, values["H_v"], values["H_z"]
        q11 = -s.T @ hv - hv.T @ s
        q12 = -s.T @ hz + hv.T @ s
        q22 = s.T @ hz + hz.T @ s
        return q11, q12, q22

    def _free_shapes(self) -> dict[str, tuple[int, ...]]:
        return {"H_v": (self.groups, self.size), "H_z": (self.groups, self.size)}

    def _free_values(self) -> dict[str, np.ndarray]:
        return {"H_v": np.asarray(self.h_v.value, dtype=np.float64),
                "H_z": np.asarray(self.h_z.value, dtype=np.float64)}


class SortQC(_SumPreservingQC):
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


class MaxMinElimQC(_SumPreservingQC):
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
        self.p0, self.p1 = pair_selectors(size)
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

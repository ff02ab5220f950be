"""Pauli et al.'s (ICLR 2024) multipliers for MaxMin / GroupSort: **maxmin-pauli**.

Notation of :mod:`maxmin`: a layer sorts groups G of g neurons, ``Dv`` / ``Dz`` are the differences
of its pre-activations / outputs for two inputs, ``S`` the group-sum matrix and for one group
``sigma_v = 1^T Dv_G``, ``sigma_z = 1^T Dz_G`` (equal, by sum preservation), ``J = 1 1^T`` (g x g).

**Their QC** (LipSDP-NSR, one block per group; read from the paper's GroupSort lemma and the
authors' residual-network code, re-derived here). For every group, with ``lambda >= 0`` and
``gamma, s, p`` free,

    T = lambda I + gamma J,     Q_G = [[T - 2 s J,   (p + s) J],
                                       [(p + s) J,   -T - 2 p J]].

*Validity.* Expanding the quadratic form of ``Q_G`` on ``(Dv_G, Dz_G)``:

    lambda (|Dv_G|^2 - |Dz_G|^2)                      >= 0   (sorting is 1-Lipschitz)
    + gamma (sigma_v^2 - sigma_z^2)                   =  0   (sigma_v = sigma_z)
    + 2 s sigma_v (sigma_z - sigma_v)                 =  0
    + 2 p sigma_z (sigma_v - sigma_z)                 =  0,

so ``[Dv; Dz]^T Q_G [Dv; Dz] >= 0`` for all pairs of inputs and every sign of ``gamma, s, p``.

*gamma is redundant.* ``gamma (sigma_v^2 - sigma_z^2) = -gamma/2 * [2 sigma_v (sigma_z - sigma_v)]
+ (-gamma/2) * [2 sigma_z (sigma_v - sigma_z)]`` identically in ``(Dv, Dz)`` (both sides equal
``-gamma (sigma_z - sigma_v)(sigma_v + sigma_z)``), i.e. ``(gamma, s, p) -> (0, s - gamma/2,
p - gamma/2)`` gives the same matrix ``Q_G``. We therefore keep ``lambda >= 0`` and the free ``s, p``:
three scalars per group, as matrices

    Q11 = diag(S^T lambda) - 2 K(s),    Q12 = K(s + p),    Q22 = -diag(S^T lambda) - 2 K(p),

with ``K(c) = S^T diag(c) S`` (the block-diagonal ``c_G J``).

*Relation to maxmin-qc.* In the form ``2 e^T H x`` of :mod:`maxmin` (``e = S (Dz - Dv)``), the two
free terms are ``2 s sigma_v (sigma_z - sigma_v) = 2 e_G (s_G sigma_v)`` and ``2 p sigma_z (sigma_v
- sigma_z) = 2 e_G (-p_G sigma_z)``: row G of ``H_v`` is ``s_G`` times the indicator of G and row G
of ``H_z`` is ``-p_G`` times it. So the set
is the restriction of the layer-wide ``H`` (n^2 free scalars per layer) to 2 scalars per group
(n for g = 2), and the 1-Lipschitz part is the same ``mu = lambda``. Hence

    optimum(maxmin-elim) <= optimum(maxmin-qc) <= optimum(maxmin-pauli)

(the first inequality is proved in :mod:`maxmin`, the second is the inclusion just shown).

*Why it is looser on deep nets.* By Finsler's lemma the equality is used fully only with a free
``H`` coupling ``e`` to *every* direction of the LMI's variables; here ``e_G`` is coupled to the
two group sums of its own layer only.

**Reproduction of their Table 1 (18fc nets; measured, one core, qc-lbfgs unless noted).** With this
multiplier set the LMI on ``maxmin_weights_l2_18fc_32`` (consecutive pairs) is *certified* at
11087.57 (425 s; 11113.28 with ``time_limit=120``), product 73402.96, maxmin-elim 11063.7. The
certificate is a float64 proof that their LMI (with ``gamma = 0``) holds at that value, so the
optimum of their SDP on these weights is <= 11087.6, well below the published 17432; the published
value is not this LMI's optimum. What we ruled out as the cause (upper bounds unless noted):
1-Lipschitz only (``variant="none"``; exact, the LMI is block diagonal, Clarabel) 30295.4; their
``P = 0`` (``"s"``) <= 16089.85 (converged, 60 s) and ``S = 0`` (``"p"``) <= 21970.8 (a converged run
stops at 21980.2, 145 s), neither 17432;
``gamma`` only (``"tied"``) <= 11817.4; one ``(lambda, s, p)`` per layer <= 44307.0; the product of
two 9-layer halves of the net <= 11880.8; MaxMin on halves instead of consecutive pairs (a
different network) <= 1094.0. Which setting of theirs gives 17432 is not determined here.
18fc_128: 44737.6 after 280 s (895 iterations, far from converged; maxmin-elim 18335.1, published
24271).

**Gradient of the form** (used by :mod:`qc_lbfgs`): for columns ``v_j, z_j`` with weights ``w_j``,
``sum_j w_j [v_j; z_j]^T Q [v_j; z_j]`` has derivatives ``S (v*v - z*z) w`` (lambda),
``2 sigma_v (sigma_z - sigma_v) w`` (s) and ``2 sigma_z (sigma_v - sigma_z) w`` (p), with
``sigma_v = S v``, ``sigma_z = S z`` taken column-wise.
"""
from __future__ import annotations

import cvxpy as cp
import numpy as np

from .activations import ActivationSpec
from .lmi import Blocks, LayerQC
from .maxmin import group_sum_matrix

NAMES = ("lambda", "s", "p")
# which free multipliers a variant keeps: "sp" (their full set), "s" (their P = 0), "p" (their S = 0),
# "tied" (s = p, i.e. only their ``gamma J`` in T), "none" (1-Lipschitz only)
VARIANTS = ("sp", "s", "p", "tied", "none")


class PauliSortQC(LayerQC):
    """1-Lipschitz per group (``lambda >= 0``) + group-sum multipliers ``s, p`` (free)."""

    name = "maxmin-pauli"

    def __init__(self, spec: ActivationSpec, size: int, variant: str = "sp") -> None:
        super().__init__(spec, size)
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
        self.variant = variant
        if spec.kind != "groupsort":
            raise ValueError(f"{spec.name} is not a MaxMin / GroupSort activation")
        self.s_mat = group_sum_matrix(size, spec.group_size, spec.grouping)
        self.groups = self.s_mat.shape[0]
        self.lam = cp.Variable(self.groups, nonneg=True, name="lambda")
        self.s = cp.Variable(self.groups, name="s")
        self.p = cp.Variable(self.groups, name="p")

    # ---- the matrices

    def _k_cvx(self, c: cp.Expression) -> cp.Expression:
        return self.s_mat.T @ cp.diag(c) @ self.s_mat

    def _k(self, c: np.ndarray) -> np.ndarray:
        return self.s_mat.T @ (np.asarray(c, dtype=np.float64)[:, None] * self.s_mat)

    def cvx_contribution(self, weight):
        lam_full = self.s_mat.T @ self.lam
        a11 = weight.T @ (cp.diag(lam_full) - 2 * self._k_cvx(self.s)) @ weight
        a12 = weight.T @ self._k_cvx(self.s + self.p)
        a22 = -cp.diag(lam_full) - 2 * self._k_cvx(self.p)
        return a11, a12, a22

    def numpy_blocks(self, values) -> Blocks:
        lam_full = np.diag(self.s_mat.T @ np.asarray(values["lambda"], dtype=np.float64))
        s, p = values["s"], values["p"]
        return lam_full - 2 * self._k(s), self._k(np.asarray(s) + np.asarray(p)), -lam_full - 2 * self._k(p)

    def constraints(self):
        if self.variant == "tied":
            return [self.s == self.p]
        return {"none": [self.s == 0, self.p == 0], "s": [self.p == 0], "p": [self.s == 0]}.get(self.variant, [])

    # ---- multipliers

    def variable_values(self):
        return {"lambda": np.asarray(self.lam.value, dtype=np.float64),
                "s": np.asarray(self.s.value, dtype=np.float64),
                "p": np.asarray(self.p.value, dtype=np.float64)}

    def variable_shapes(self):
        return {name: (self.groups,) for name in NAMES}

    def nonneg_names(self):
        return ("lambda",)

    def project(self, values):
        """Clip ``lambda`` at 0; the variants' ties hold exactly for the values the solvers return
        (the first-order solver moves tied multipliers together; cvxpy equality constraints are
        not exact, but validity does not depend on them: any ``s, p`` give a valid QC)."""
        return {**values, "lambda": np.maximum(np.asarray(values["lambda"], dtype=np.float64), 0.0)}

    def restrict_free_gradient(self, g_a: np.ndarray, g_b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Gradient in the free directions the variant allows (tied: both move together)."""
        if self.variant == "none":
            return np.zeros_like(g_a), np.zeros_like(g_b)
        if self.variant == "tied":
            return g_a + g_b, g_a + g_b
        zero_a, zero_b = self.variant == "p", self.variant == "s"
        return (np.zeros_like(g_a) if zero_a else g_a), (np.zeros_like(g_b) if zero_b else g_b)

    # ---- first-order solver support

    def form_gradient(self, v: np.ndarray, z: np.ndarray, w: np.ndarray) -> dict[str, np.ndarray]:
        """Derivatives of ``sum_j w_j [v_j; z_j]^T Q [v_j; z_j]`` (module docstring)."""
        sv, sz = self.s_mat @ v, self.s_mat @ z
        return {"lambda": (self.s_mat @ (v * v - z * z)) @ w,
                "s": (2 * sv * (sz - sv)) @ w,
                "p": (2 * sz * (sv - sz)) @ w}

    def gram_gradient(self, gvv: np.ndarray | None, gvz: np.ndarray | None, gzz: np.ndarray) -> dict[str, np.ndarray]:
        """Derivatives of ``tr(Q G)``, ``G = [[gvv, gvz], [gvz^T, gzz]]`` (None: zero block):
        ``tr(Q G) = tr(Q11 gvv) + 2 tr(Q12^T gvz) + tr(Q22 gzz)`` and ``tr(J_G X) = 1_G^T X 1_G``.
        :meth:`form_gradient` is the case ``G = [v; z] diag(w) [v; z]^T``."""
        sm = self.s_mat

        def group_sums(x):
            return np.zeros(self.groups) if x is None else np.einsum("gi,ij,gj->g", sm, x, sm)

        diag_vv = np.zeros(self.size) if gvv is None else np.diag(gvv)
        svv, svz, szz = group_sums(gvv), group_sums(gvz), group_sums(gzz)
        return {"lambda": sm @ (diag_vv - np.diag(gzz)), "s": 2 * (svz - svv), "p": 2 * (svz - szz)}

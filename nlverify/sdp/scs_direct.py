"""The LipSDP LMI handed to SCS directly (no cvxpy), with a chordal decomposition of the PSD cone.

Problem (the same as :func:`nlverify.sdp.lipsdp.build_lmi_problem`)::

    min rho   s.t.   M(rho, lambda) + delta E_hidden  <<  0,     lambda_nonneg >= 0,

with ``M`` block-tridiagonal over the blocks ``(x_0, z_1, ..., z_L)`` (L hidden layers): layer k
touches only the blocks ``(k-1, k-1)``, ``(k-1, k)`` and ``(k, k)``.

**Chordal decomposition (exact).** The sparsity graph of a block-tridiagonal matrix is chordal with
maximal cliques ``C_k = {block k-1, block k}``, k = 1..L. By Agler's theorem (Agler et al. 1988;
Vandenberghe & Andersen 2015, Thm. 9.2), a matrix with this sparsity pattern is negative
semidefinite iff it is a sum ``sum_k E_k^T N_k E_k`` of negative semidefinite matrices supported on
the cliques. Writing ``D_j`` for the diagonal block j, we give clique k the off-diagonal block of
layer k, the diagonal parts that layer k contributes, and split each shared diagonal block with a
*free* symmetric matrix ``Y_j`` (j = 1..L-1)::

    N_k = [[ W_k^T Q11_k W_k  - Y_{k-1} (- rho I if k = 1),  W_k^T Q12_k                      ],
           [ (W_k^T Q12_k)^T,                                Q22_k + Y_k (+ W_K^T W_K if k = L) ]]  << 0

(with ``Y_0 = Y_L = 0`` and ``delta I`` added to every hidden ``Q22_k``). Summing the ``N_k`` gives back
``M`` exactly, so the feasible set in ``(rho, lambda)`` -- and the optimum -- is *unchanged*; no
coupling between neurons is added (the multipliers are exactly those of the QC families). The
``Y_j`` exist only in the solver; certification (:mod:`nlverify.sdp.certify`) assembles the full M
from ``(rho, lambda)`` alone. One cone of size ``n_0 + ... + n_L`` becomes L cones of size
``n_{k-1} + n_k``: the per-iteration eigendecompositions cost ``sum (n_{k-1}+n_k)^3`` instead of
``(sum n_k)^3``.

**SCS standard form.** ``min c^T x  s.t.  A x + s = b,  s in K`` with K = (nonnegative orthant for
``lambda_nonneg``) x (PSD cones in SCS's packed format: lower triangle, column-major, off-diagonal
entries scaled by sqrt 2). For the PSD cones ``s = svec(-N_k)``: ``b`` holds the constant part
(``-W_K^T W_K``, ``-delta I``) and column v of A is ``svec`` of the coefficient of ``x_v`` in ``N_k``.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import scipy.sparse as sp

from .lmi import LayerQC, block_sizes

SQRT2 = math.sqrt(2.0)


def svec_index(i: np.ndarray, j: np.ndarray, n: int) -> np.ndarray:
    """Position of entry (i, j), i >= j, of an n x n matrix in SCS's packed lower triangle."""
    return j * n - (j * (j - 1)) // 2 + (i - j)


def svec_len(n: int) -> int:
    return n * (n + 1) // 2


def svec(mat: np.ndarray) -> np.ndarray:
    """SCS packing of a symmetric matrix (lower triangle, column-major, off-diagonals * sqrt 2)."""
    n = mat.shape[0]
    j, i = np.triu_indices(n)  # column-major lower triangle == row-major upper triangle of M^T
    return np.where(i == j, 1.0, SQRT2) * mat[i, j]


def _diag_placement(n: int, offset: int, cone: int) -> sp.csr_matrix:
    """Sparse map: row-major vec of a symmetric n x n block at (offset, offset) -> svec of the cone."""
    r, c = np.tril_indices(n)
    rows = svec_index(offset + r, offset + c, cone)
    vals = np.where(r == c, 1.0, SQRT2)
    return sp.csr_matrix((vals, (rows, r * n + c)), shape=(svec_len(cone), n * n))


def _offdiag_placement(n_a: int, n_b: int, off_a: int, off_b: int, cone: int) -> sp.csr_matrix:
    """Row-major vec of an n_a x n_b block at (off_a, off_b), off_a + n_a <= off_b, -> svec (its
    mirror image lies in the lower triangle)."""
    r, c = np.divmod(np.arange(n_a * n_b), n_b)
    rows = svec_index(off_b + c, off_a + r, cone)
    return sp.csr_matrix((np.full(r.size, SQRT2), (rows, r * n_b + c)), shape=(svec_len(cone), n_a * n_b))


def _identity_svec(n: int, offset: int, cone: int) -> np.ndarray:
    out = np.zeros(svec_len(cone))
    idx = np.arange(n) + offset
    out[svec_index(idx, idx, cone)] = 1.0
    return out


@dataclass
class DirectSCSProblem:
    """SCS data for ``min rho s.t. M << 0``; :meth:`solve` can be called repeatedly (warm starts)."""

    weights: list[np.ndarray]
    qcs: list[LayerQC]
    chordal: bool
    a: sp.csc_matrix
    b_const: np.ndarray        # b without the hidden margin
    b_margin: np.ndarray       # d b / d delta
    c: np.ndarray
    cone: dict
    layer_slices: list[slice]
    build_s: float
    lmi_size: int
    cone_sizes: list[int]
    last: dict | None = field(default=None, repr=False)

    @property
    def num_variables(self) -> int:
        return self.a.shape[1]


def build_direct(weights: Sequence[np.ndarray], qcs: Sequence[LayerQC], chordal: bool = True,
                 input_diag: bool = False) -> DirectSCSProblem:
    """Assemble ``A, b, c`` and the cone (see the module docstring).

    ``input_diag`` (l_inf bounds, :mod:`nlverify.sdp.linf`): the input block is ``-diag(lambda)``,
    ``lambda >= 0``, and the objective ``sum lambda`` (the first ``n_0`` variables) replaces rho."""
    start = time.perf_counter()
    weights = [np.asarray(w, dtype=np.float64) for w in weights]
    sizes = block_sizes(weights)
    n_hidden = len(qcs)
    if n_hidden == 0 or not chordal:
        cones = [list(range(n_hidden + 1))]
    else:
        cones = [[k - 1, k] for k in range(1, n_hidden + 1)]
    cone_sizes = [sum(sizes[j] for j in blocks) for blocks in cones]
    offsets = [{j: sum(sizes[i] for i in blocks[:blocks.index(j)]) for j in blocks} for blocks in cones]
    layer_cone = [next(q for q, blocks in enumerate(cones) if k - 1 in blocks and k in blocks)
                  for k in range(1, n_hidden + 1)]

    # variable layout: [rho | layer 1 | ... | layer L | Y_1 ... Y_{L-1}]
    counts = [qc.num_variables for qc in qcs]
    n_obj = sizes[0] if input_diag else 1
    starts = np.concatenate([[n_obj], n_obj + np.cumsum(counts)]).astype(int)
    layer_slices = [slice(int(starts[k]), int(starts[k + 1])) for k in range(n_hidden)]
    shared = [j for j in range(len(sizes)) if sum(j in blocks for blocks in cones) == 2]
    y_start, y_slices = int(starts[-1]), {}
    for j in shared:
        y_slices[j] = slice(y_start, y_start + svec_len(sizes[j]))
        y_start += svec_len(sizes[j])
    n_var = y_start

    cone_blocks: list[sp.csc_matrix] = []
    b_const, b_margin = [], []
    for q, (blocks, size) in enumerate(zip(cones, cone_sizes)):
        pieces = []
        off = offsets[q]
        # rho: -rho I on block 0
        if 0 in blocks and input_diag:
            idx = np.arange(sizes[0])
            rows = svec_index(off[0] + idx, off[0] + idx, size)
            pieces.append((0, sp.csc_matrix((-np.ones(idx.size), (rows, idx)), shape=(svec_len(size), idx.size))))
        elif 0 in blocks:
            pieces.append((0, sp.csc_matrix(-_identity_svec(sizes[0], off[0], size).reshape(-1, 1))))
        for k, qc in enumerate(qcs, start=1):
            if layer_cone[k - 1] != q:
                continue
            c11, c12, c22 = qc.linear_blocks(weights[k - 1])
            na, nb = sizes[k - 1], sizes[k]
            part = (_diag_placement(na, off[k - 1], size) @ c11
                    + _offdiag_placement(na, nb, off[k - 1], off[k], size) @ c12
                    + _diag_placement(nb, off[k], size) @ c22)
            pieces.append((int(starts[k - 1]), sp.csc_matrix(part)))
        for j, sl in y_slices.items():
            if j not in blocks:
                continue
            sign = 1.0 if blocks.index(j) == len(blocks) - 1 else -1.0  # + in clique j, - in clique j+1
            r, c = np.triu_indices(sizes[j])  # (row, col) with col >= row: svec order of Y (lower, col-major)
            rows = svec_index(off[j] + c, off[j] + r, size)
            pieces.append((sl.start, sp.csc_matrix((np.full(rows.size, sign), (rows, np.arange(rows.size))),
                                                   shape=(svec_len(size), rows.size))))
        cols = []
        for col0, block in pieces:
            coo = block.tocoo()
            cols.append(sp.csc_matrix((coo.data, (coo.row, coo.col + col0)), shape=(svec_len(size), n_var)))
        cone_blocks.append(sum(cols[1:], cols[0]) if cols else sp.csc_matrix((svec_len(size), n_var)))
        # constants: b = svec(-N0)
        const = np.zeros(svec_len(size))
        if n_hidden in blocks:
            wk = weights[-1]
            g = np.zeros((size, size))
            o = off[n_hidden]
            g[o:o + sizes[n_hidden], o:o + sizes[n_hidden]] = wk.T @ wk
            const -= svec(g)
        margin = np.zeros(svec_len(size))
        for k in range(1, n_hidden + 1):
            if layer_cone[k - 1] == q:
                margin -= _identity_svec(sizes[k], off[k], size)
        b_const.append(const)
        b_margin.append(margin)

    nonneg = np.zeros(n_var, dtype=bool)
    nonneg[:n_obj] = input_diag
    for qc, sl in zip(qcs, layer_slices):
        nonneg[sl] = qc.nonneg_mask()
    idx = np.flatnonzero(nonneg)
    a_l = sp.csc_matrix((-np.ones(idx.size), (np.arange(idx.size), idx)), shape=(idx.size, n_var))
    a = sp.vstack([a_l] + cone_blocks, format="csc")
    b_const_all = np.concatenate([np.zeros(idx.size)] + b_const)
    b_margin_all = np.concatenate([np.zeros(idx.size)] + b_margin)
    c = np.zeros(n_var)
    c[:n_obj] = 1.0
    cone = {"l": int(idx.size), "s": cone_sizes}
    return DirectSCSProblem(list(weights), list(qcs), chordal, a, b_const_all, b_margin_all, c, cone,
                            layer_slices, time.perf_counter() - start, int(sum(sizes)), cone_sizes)


def solve_direct(problem: DirectSCSProblem, eps: float = 1e-6, max_iters: int | None = None,
                 warm_start: bool = False, hidden_margin: float | None = None,
                 time_limit: float | None = None, **settings):
    """Run SCS (warm-started from the previous solve when asked); raw values, nothing certified.

    ``hidden_margin`` defaults to ``eps`` (see :func:`nlverify.sdp.lipsdp.build_lmi_problem`)."""
    import scs

    from .lipsdp import SolveResult

    delta = eps if hidden_margin is None else hidden_margin
    b = problem.b_const + delta * problem.b_margin
    opts = dict(eps_abs=eps, eps_rel=eps, eps_infeas=1e-9, verbose=False,
                acceleration_lookback=10, normalize=True)
    if max_iters:
        opts["max_iters"] = int(max_iters)
    if time_limit:
        opts["time_limit_secs"] = float(time_limit)
    opts.update(settings)
    start = time.perf_counter()
    solver = scs.SCS({"A": problem.a, "b": b, "c": problem.c}, problem.cone, **opts)
    setup = time.perf_counter() - start
    if warm_start and problem.last is not None:
        sol = solver.solve(warm_start=True, x=problem.last["x"], y=problem.last["y"], s=problem.last["s"])
    else:
        sol = solver.solve(warm_start=False)
    wall = time.perf_counter() - start
    info = sol["info"]
    status = str(info.get("status", "unknown"))
    tolerances = dict(eps_abs=eps, eps_rel=eps, solver="SCS-direct", chordal=problem.chordal,
                      cones=problem.cone_sizes)
    x = np.asarray(sol["x"], dtype=np.float64)
    if not np.all(np.isfinite(x)):
        return SolveResult(float("nan"), [], status, int(info.get("iter", 0)), setup, wall - setup, tolerances)
    problem.last = {"x": x, "y": np.asarray(sol["y"]), "s": np.asarray(sol["s"])}
    values = [qc.values_from_flat(x[sl]) for qc, sl in zip(problem.qcs, problem.layer_slices)]
    n_obj = problem.layer_slices[0].start if problem.layer_slices else int(np.sum(problem.c))
    if problem.c[:n_obj].size > 1:
        tolerances["input_multipliers"] = x[:n_obj].copy()
    return SolveResult(float(problem.c @ x), values, status, int(info.get("iter", 0)), setup, wall - setup, tolerances)

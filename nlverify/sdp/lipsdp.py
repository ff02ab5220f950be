"""LipSDP (Fazlyab et al., NeurIPS 2019) for slope-restricted activations, and the SDP driver.

Slope restriction ``alpha <= (phi(a) - phi(b))/(a - b) <= beta`` gives, per neuron i,

    (Dz_i - alpha Dv_i) (beta Dv_i - Dz_i) >= 0,

and a nonnegative combination with weights ``t_i`` is the QC (see :mod:`nlverify.sdp.lmi`)

    Q11 = -alpha beta T,   Q12 = (alpha + beta)/2 T,   Q22 = -T,      T = diag(t), t >= 0.

* **LipSDP-Neuron**: one multiplier per neuron (``T`` diagonal).
* **LipSDP-Layer**: one multiplier per layer (``T = lambda I``).

The "LipSDP-Network" variant (multipliers coupling pairs of neurons i != j) is deliberately absent:
the coupled constraint ``(Dz_i - Dz_j - alpha(Dv_i - Dv_j))(beta(Dv_i - Dv_j) - (Dz_i - Dz_j)) >= 0``
does not hold for elementwise activations with different pre-activations (see the 2-4-1
counterexample in the tests).

The SDP ``min rho  s.t.  M(rho, lambda) << 0, lambda in cone`` is solved with cvxpy;
:func:`solve_lmi` is shared by every QC family.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Sequence

import cvxpy as cp
import numpy as np
import scipy.sparse as sp

from .activations import ActivationSpec
from .lmi import Blocks, LayerQC, assemble_cvx


class SlopeNeuronQC(LayerQC):
    """Diagonal multipliers ``T = diag(t)``, ``t >= 0`` (LipSDP-Neuron)."""

    name = "neuron"

    def __init__(self, spec: ActivationSpec, size: int) -> None:
        super().__init__(spec, size)
        if spec.kind != "slope":
            raise ValueError(f"{spec.name} is not slope-restricted")
        self.t = cp.Variable(size, nonneg=True, name="t")

    def _t_expr(self) -> cp.Expression:
        return self.t

    def cvx_contribution(self, weight):
        a, b = self.spec.alpha, self.spec.beta
        t = self._t_expr()
        a11 = weight.T @ cp.diag((-a * b) * t) @ weight if a * b != 0 else None
        a12 = weight.T @ cp.diag(((a + b) / 2) * t) if a + b != 0 else None
        return a11, a12, cp.diag(-t)

    def variable_values(self) -> dict[str, np.ndarray]:
        return {"t": np.asarray(self.t.value, dtype=np.float64)}

    def variable_shapes(self):
        return {"t": (self.size,)}

    def nonneg_names(self):
        return ("t",)

    def linear_blocks(self, weight):
        """Closed form: ``t_i`` enters ``-alpha beta w_i w_i^T``, ``(alpha+beta)/2 W^T e_i e_i^T``
        and ``-e_i e_i^T`` (``w_i`` the i-th row of W)."""
        a, b = self.spec.alpha, self.spec.beta
        n_b, n_a = weight.shape
        if a * b != 0:
            c11 = sp.csc_matrix((-a * b) * np.einsum("ia,ib->abi", weight, weight).reshape(n_a * n_a, n_b))
        else:
            c11 = sp.csc_matrix((n_a * n_a, n_b))
        rows = (np.arange(n_a)[None, :] * n_b + np.arange(n_b)[:, None]).ravel()  # (a, i) -> a*n_b + i
        cols = np.repeat(np.arange(n_b), n_a)
        c12 = sp.csc_matrix((((a + b) / 2) * weight.ravel(), (rows, cols)), shape=(n_a * n_b, n_b))
        c22 = sp.csc_matrix((-np.ones(n_b), (np.arange(n_b) * (n_b + 1), np.arange(n_b))),
                            shape=(n_b * n_b, n_b))
        return c11, c12, c22

    def project(self, values):
        return {"t": np.maximum(np.asarray(values["t"], dtype=np.float64), 0.0)}

    def numpy_blocks(self, values) -> Blocks:
        a, b = self.spec.alpha, self.spec.beta
        t = np.broadcast_to(np.asarray(values["t"], dtype=np.float64), (self.size,))
        q11 = np.diag(-a * b * t) if a * b != 0 else None
        q12 = np.diag((a + b) / 2 * t) if a + b != 0 else None
        return q11, q12, np.diag(-t)


class SlopeLayerQC(SlopeNeuronQC):
    """One multiplier per layer, ``T = lambda I`` (LipSDP-Layer)."""

    name = "layer"

    def __init__(self, spec: ActivationSpec, size: int) -> None:
        LayerQC.__init__(self, spec, size)
        if spec.kind != "slope":
            raise ValueError(f"{spec.name} is not slope-restricted")
        self.t = cp.Variable(nonneg=True, name="lambda")

    def _t_expr(self) -> cp.Expression:
        return self.t * np.ones(self.size)

    def variable_values(self):
        return {"t": np.full(self.size, float(self.t.value))}

    def variable_shapes(self):
        return {"t": ()}

    def values_from_flat(self, flat):
        return {"t": np.full(self.size, float(np.asarray(flat).ravel()[0]))}

    def linear_blocks(self, weight):
        c11, c12, c22 = SlopeNeuronQC.linear_blocks(self, weight)
        one = np.ones((self.size, 1))
        return (sp.csc_matrix(c11 @ one), sp.csc_matrix(c12 @ one), sp.csc_matrix(c22 @ one))


@dataclass
class SolveResult:
    """Raw solver output (nothing here is certified)."""

    rho: float
    values: list[dict[str, np.ndarray]]
    status: str
    iterations: int | None
    build_s: float
    solve_s: float
    tolerances: dict = field(default_factory=dict)


@dataclass
class LipSDPProblem:
    """A built cvxpy problem ``min rho s.t. M(rho, lambda) << 0`` ready to (re-)solve."""

    problem: cp.Problem
    rho: cp.Variable
    qcs: list[LayerQC]
    build_s: float
    lmi_size: int
    hidden_margin: cp.Parameter


def build_lmi_problem(weights: Sequence[np.ndarray], qcs: Sequence[LayerQC]) -> LipSDPProblem:
    """``min rho  s.t.  M(rho, lambda) + delta E_hidden << 0``.

    ``delta`` (a parameter, set per solve to the solver tolerance) keeps the hidden block of the
    LMI *strictly* negative definite, so that the certification (which needs ``C < 0`` for the
    Schur complement, and a strict inequality for the Cholesky proof) does not fail on solutions
    that sit exactly on the boundary -- e.g. LipSDP-Layer, whose optimum makes the hidden blocks
    singular. It costs O(delta) in the bound; it does not affect soundness (certification never
    uses it).
    """
    start = time.perf_counter()
    rho = cp.Variable(nonneg=True, name="rho")
    delta = cp.Parameter(nonneg=True, name="hidden_margin", value=0.0)
    mat = assemble_cvx(weights, qcs, rho)
    n_in = weights[0].shape[1]
    hidden = np.diag(np.r_[np.zeros(n_in), np.ones(mat.shape[0] - n_in)])
    constraints = [mat + delta * hidden << 0] + [c for qc in qcs for c in qc.constraints()]
    problem = cp.Problem(cp.Minimize(rho), constraints)
    return LipSDPProblem(problem, rho, list(qcs), time.perf_counter() - start, mat.shape[0], delta)


def solver_options(solver: str, eps: float, max_iters: int | None) -> dict:
    """Tolerance options per solver (the same ``eps`` for absolute and relative criteria)."""
    solver = solver.upper()
    if solver == "SCS":
        opts = {"eps_abs": eps, "eps_rel": eps}
        if max_iters:
            opts["max_iters"] = max_iters
        return opts
    if solver == "CLARABEL":
        return {"tol_gap_abs": eps, "tol_gap_rel": eps, "tol_feas": eps}
    return {}


def solve_lmi(built: LipSDPProblem, solver: str = "SCS", eps: float = 1e-6,
              max_iters: int | None = None, warm_start: bool = False,
              hidden_margin: float | None = None) -> SolveResult:
    """Solve (or re-solve, warm-started when cvxpy allows) and collect raw multipliers.

    ``hidden_margin`` defaults to ``eps`` (see :func:`build_lmi_problem`)."""
    built.hidden_margin.value = eps if hidden_margin is None else hidden_margin
    opts = solver_options(solver, eps, max_iters)
    start = time.perf_counter()
    try:
        built.problem.solve(solver=solver.upper(), warm_start=warm_start, **opts)
        status = built.problem.status
    except cp.error.SolverError as exc:  # reported, never raised past the certification
        status = f"solver_error: {exc}"
    wall = time.perf_counter() - start
    stats = built.problem.solver_stats
    compile_s = float(getattr(built.problem, "compilation_time", None) or 0.0)
    iterations = getattr(stats, "num_iters", None) if stats is not None else None
    failed = SolveResult(float("nan"), [], status, iterations, built.build_s + compile_s,
                         wall - compile_s, dict(opts, solver=solver))
    if built.rho.value is None:
        return failed
    try:
        values = [qc.variable_values() for qc in built.qcs]
    except (TypeError, ValueError):  # a variable without a value
        return failed
    return SolveResult(float(built.rho.value), values, status, iterations,
                       built.build_s + compile_s, wall - compile_s, dict(opts, solver=solver))

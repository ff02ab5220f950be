"""Residual networks: the LMI for ``h_j = h_{j-1} + phi_j(W_j h_{j-1} + b_j)``, derived and certified.

The model (the structure of Pauli et al.'s ``resweights`` files, cell ``W = {W_0, W_1..W_m, W_out}``):

    h_0 = W_0 x + b_0,    h_j = h_{j-1} + phi_j(W_j h_{j-1} + b_j)  (j = 1..m),    y = W_out h_m + b_out,

every ``W_j`` square (n x n), ``phi_j`` any activation with a QC family (MaxMin, GroupSort,
slope-restricted; :mod:`nlverify.sdp.methods`).

**Derivation.** Take the states ``xi = (x, h_1, ..., h_m)`` (differences of two trajectories; biases
cancel) and write the previous state as ``h_{j-1} = S_j p_{j-1}`` with ``p_0 = x, S_1 = W_0`` and
``p_{j-1} = h_{j-1}, S_j = I`` for j > 1. The activation of block j sees

    v_j = W_j S_j p_{j-1} =: A_j p_{j-1},        z_j = phi_j(.) increment = h_j - S_j p_{j-1},

i.e. ``(v_j, z_j) = [[A_j, 0], [-S_j, I]] (p_{j-1}, h_j)``, a *linear* function of two consecutive
states. For any valid QC ``(v, z)^T Q_j (v, z) >= 0`` of phi_j, the sum

    |y|^2 - rho |x|^2 + sum_j (v_j, z_j)^T Q_j (v_j, z_j) <= 0   for all xi         (LMI)

implies ``|Dy|^2 <= rho |Dx|^2``. Expanding the congruence, block j adds

    (p, p):  A^T Q11 A - A^T Q12 S - S^T Q12^T A + S^T Q22 S,
    (p, h):  A^T Q12 - S^T Q22,          (h, h):  Q22,

and the output adds ``W_out^T W_out`` to ``(h_m, h_m)``: the LMI stays block-tridiagonal with blocks
of the network's width (no augmented state, no skip couplings). Unlike Pauli et al.'s formulation
(inner map only, multiplied by ``||W_0|| ||W_out||``), the first and last layers are inside the LMI,
so the bound is never worse than theirs for the same QCs.

*Exact reductions.* ``W_0`` and ``W_out`` are divided by powers of two (exact; the QC classes are
invariant under scaling all states by one positive factor, so ``rho`` scales by the square) and
``W_0`` is replaced by its thin-SVD factor for the solve (as in :func:`network.reduce_input`); the
certificate is always checked with the full ``W_0``.

*Certification* mirrors :mod:`nlverify.sdp.certify`: the numpy assembly also returns ``|M|`` built
from products of absolute values of every factor (``|S|^T |W|^T |Q11| |W| |S|`` etc.), so the float
assembly error is at most ``gamma_k |M|`` with k the total inner dimension of the longest product
(four factors of width n) plus a few additions; :func:`certify.prove_negative_definite` receives
that inner dimension.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import cvxpy as cp
import numpy as np
import torch
from torch import nn

from . import activations as act
from .activations import ActivationSpec
from .certify import RhoCertificate, prove_negative_definite, schur_estimate, sqrt_up
from .lipsdp import LipSDPProblem, solve_lmi
from .lmi import Blocks, LayerQC
from .methods import canonical_method, make_qcs
from .network import power_of_two_exponents, reduce_input
from .result import spectral_norm_up


class ResidualBlock(nn.Module):
    """``x -> x + activation(linear(x))`` (a residual block as this module reads it)."""

    def __init__(self, linear: nn.Linear, activation: nn.Module) -> None:
        super().__init__()
        if linear.in_features != linear.out_features:
            raise ValueError("a residual block needs a square linear layer")
        self.linear, self.activation = linear, activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.activation(self.linear(x))


@dataclass
class ResidualNetwork:
    """``embed`` W_0 (n, n_in), ``blocks`` W_1..W_m (n, n) with ``activations``, ``head`` W_out."""

    embed: np.ndarray
    blocks: list[np.ndarray]
    activations: list[ActivationSpec]
    head: np.ndarray

    def __post_init__(self) -> None:
        self.embed = np.asarray(self.embed, dtype=np.float64)
        self.head = np.asarray(self.head, dtype=np.float64)
        self.blocks = [np.asarray(w, dtype=np.float64) for w in self.blocks]
        n = self.embed.shape[0]
        if not self.blocks or len(self.blocks) != len(self.activations):
            raise ValueError("a residual network needs at least one block and one activation per block")
        for j, w in enumerate(self.blocks, start=1):
            if w.shape != (n, n):
                raise ValueError(f"block {j}: weight of shape {w.shape}, expected {(n, n)}")
        if self.head.shape[1] != n:
            raise ValueError(f"head has {self.head.shape[1]} columns, the blocks have width {n}")

    @property
    def width(self) -> int:
        return self.embed.shape[0]

    @property
    def input_dim(self) -> int:
        return self.embed.shape[1]

    def to_torch(self) -> nn.Sequential:
        """The function ``x -> y`` in float64 with zero biases."""
        def linear(w: np.ndarray) -> nn.Linear:
            lin = nn.Linear(w.shape[1], w.shape[0], bias=False).double()
            with torch.no_grad():
                lin.weight.copy_(torch.from_numpy(w))
            return lin
        blocks = [ResidualBlock(linear(w), act.module_for_spec(s)) for w, s in zip(self.blocks, self.activations)]
        return nn.Sequential(linear(self.embed), *blocks, linear(self.head)).eval()


def residual_from_mat(path: str | Path, activation: str = "maxmin") -> ResidualNetwork:
    """A ``resweights`` file: cell ``W = {W_0, W_1..W_m, W_out}``."""
    from scipy.io import loadmat

    from .network import activation_by_name

    weights = [np.asarray(w, dtype=np.float64) for w in np.asarray(loadmat(str(path))["W"]).ravel()]
    if len(weights) < 3:
        raise ValueError(f"{path}: a residual network needs embed, >= 1 block and head")
    spec = activation_by_name(activation)
    return ResidualNetwork(weights[0], weights[1:-1], [spec] * (len(weights) - 2), weights[-1])


def residual_product_bound(net: ResidualNetwork) -> float:
    """``||W_0|| prod_j (1 + Lip(phi_j) ||W_j||) ||W_out||`` with every norm rounded up
    (:func:`nlverify.sdp.result.spectral_norm_up`)."""
    value = spectral_norm_up(net.embed) * spectral_norm_up(net.head)
    for w, spec in zip(net.blocks, net.activations):
        value *= 1 + spectral_norm_up(w) * spec.max_abs_slope
    return value * (1 + 1e-12)


def normalized_residual(net: ResidualNetwork) -> tuple[ResidualNetwork, int]:
    """Embed and head divided by powers of two (exact); the bound scales by ``2**E``."""
    e0, e1 = power_of_two_exponents([net.embed, net.head])
    return (ResidualNetwork(np.ldexp(net.embed, -e0), net.blocks, net.activations, np.ldexp(net.head, -e1)),
            e0 + e1)


# --------------------------------------------------------------------------- the LMI


def _skip_maps(embed: np.ndarray, blocks: Sequence[np.ndarray]) -> list[np.ndarray | None]:
    """``S_j``: W_0 for the first block, None (the identity) after it."""
    return [embed] + [None] * (len(blocks) - 1)


def build_residual_problem(embed: np.ndarray, blocks: Sequence[np.ndarray], head: np.ndarray,
                           qcs: Sequence[LayerQC]) -> LipSDPProblem:
    """``min rho s.t. M(rho, lambda) + delta E_hidden << 0`` (cvxpy), delta as in
    :func:`lipsdp.build_lmi_problem`."""
    start = time.perf_counter()
    sizes = [embed.shape[1]] + [w.shape[0] for w in blocks]
    nb = len(sizes)
    grid: list[list[list]] = [[[] for _ in range(nb)] for _ in range(nb)]
    for j, (w, s, qc) in enumerate(zip(blocks, _skip_maps(embed, blocks), qcs), start=1):
        a = w @ s if s is not None else w
        a11, a12, a22 = qc.cvx_contribution(a)  # A^T Q11 A, A^T Q12, Q22 (None: a zero block)
        a12 = a12 if a12 is not None else np.zeros((a.shape[1], w.shape[0]))
        a12s = a12 @ s if s is not None else a12
        s22 = s.T @ a22 @ s if s is not None else a22
        s22_col = s.T @ a22 if s is not None else a22
        grid[j - 1][j - 1] += [t for t in (a11, -a12s, -a12s.T, s22) if t is not None]
        grid[j - 1][j] += [a12 - s22_col]
        grid[j][j - 1] += [(a12 - s22_col).T]
        grid[j][j] += [a22]
    rho = cp.Variable(nonneg=True, name="rho")
    grid[nb - 1][nb - 1].append(head.T @ head)
    grid[0][0].append(-rho * np.eye(sizes[0]))
    rows = [[sum(grid[i][k][1:], grid[i][k][0]) if grid[i][k] else np.zeros((sizes[i], sizes[k]))
             for k in range(nb)] for i in range(nb)]
    mat = cp.bmat(rows)
    mat = (mat + mat.T) / 2
    delta = cp.Parameter(nonneg=True, name="hidden_margin", value=0.0)
    hidden = np.diag(np.r_[np.zeros(sizes[0]), np.ones(mat.shape[0] - sizes[0])])
    constraints = [mat + delta * hidden << 0] + [c for qc in qcs for c in qc.constraints()]
    problem = cp.Problem(cp.Minimize(rho), constraints)
    return LipSDPProblem(problem, rho, list(qcs), time.perf_counter() - start, mat.shape[0], delta)


def _abs_or_zero(q: np.ndarray | None, n: int) -> tuple[np.ndarray, np.ndarray]:
    return (np.zeros((n, n)), np.zeros((n, n))) if q is None else (q, np.abs(q))


def assemble_residual_numpy(embed: np.ndarray, blocks: Sequence[np.ndarray], head: np.ndarray,
                            qc_values: Sequence[Blocks], rho: float) -> tuple[np.ndarray, np.ndarray]:
    """``M(rho)`` and ``|M|`` (products of absolute factors), see the module docstring."""
    n_in, n = embed.shape[1], embed.shape[0]
    sizes = [n_in] + [n] * len(blocks)
    off = np.concatenate([[0], np.cumsum(sizes)]).astype(int)
    total = int(off[-1])
    m, a = np.zeros((total, total)), np.zeros((total, total))
    for j, (w, s, (q11, q12, q22)) in enumerate(zip(blocks, _skip_maps(embed, blocks), qc_values), start=1):
        s = np.eye(n) if s is None else s
        q11, q11a = _abs_or_zero(q11, n)
        q12, q12a = _abs_or_zero(q12, n)
        q22a = np.abs(q22)
        aw, as_ = np.abs(w), np.abs(s)
        amat, amat_a = w @ s, aw @ as_
        r12 = amat.T @ q12 @ s
        pp = amat.T @ q11 @ amat - r12 - r12.T + s.T @ q22 @ s
        pp_a = amat_a.T @ q11a @ amat_a + 2 * (amat_a.T @ q12a @ as_) + as_.T @ q22a @ as_
        ph = amat.T @ q12 - s.T @ q22
        ph_a = amat_a.T @ q12a + as_.T @ q22a
        p, h = slice(off[j - 1], off[j]), slice(off[j], off[j + 1])
        m[p, p] += (pp + pp.T) / 2  # symmetrise: halving is exact, one more addition
        a[p, p] += pp_a
        m[p, h] += ph
        m[h, p] += ph.T
        a[p, h] += ph_a
        a[h, p] += ph_a.T
        m[h, h] += q22
        a[h, h] += q22a
    last = slice(off[-2], off[-1])
    m[last, last] += head.T @ head
    a[last, last] += np.abs(head).T @ np.abs(head)
    idx = np.arange(n_in)
    m[idx, idx] -= rho
    a[idx, idx] += abs(rho)
    return m, a


def _inner_dim(embed: np.ndarray, head: np.ndarray) -> int:
    """Allowance for :func:`prove_negative_definite` (which uses gamma_{2 k + 16}): products of up
    to four factors with inner dimension <= max(n, n_out) each, plus the symmetrisation."""
    return 2 * max(embed.shape[0], head.shape[0]) + 8


def certify_residual_rho(embed, blocks, head, qc_values: Sequence[Blocks], max_attempts: int = 40) -> RhoCertificate:
    """Smallest proven rho for fixed (projected) multipliers; as :func:`certify.certify_rho`."""
    m0, _ = assemble_residual_numpy(embed, blocks, head, qc_values, 0.0)
    estimate = schur_estimate(m0, embed.shape[1])
    if estimate is None or not math.isfinite(estimate):
        return RhoCertificate(False, math.inf, math.nan, 0, "hidden block of the LMI not negative definite")
    base = max(estimate, 0.0)
    delta = max(base, 1e-300) * 1e-12
    for attempt in range(1, max_attempts + 1):
        rho = base + delta
        m, abs_m = assemble_residual_numpy(embed, blocks, head, qc_values, rho)
        proof = prove_negative_definite(m, abs_m, _inner_dim(embed, head))
        if proof.ok:
            return RhoCertificate(True, rho, estimate, attempt, "", proof)
        delta = max(delta * 4, proof.shift * 2)
    return RhoCertificate(False, math.inf, estimate, max_attempts, "no rho passed the definiteness proof")


def residual_qcs(net: ResidualNetwork, method: str) -> list[LayerQC]:
    return make_qcs(net.activations, [net.width] * len(net.blocks), canonical_method(method))


# --------------------------------------------------------------------------- driver


def residual_lipschitz_bound(net: ResidualNetwork, method: str = "neuron", eps: float = 1e-6,
                             gap_target: float = 1e-3, max_resolves: int = 3, max_iters: int | None = None,
                             lower_samples: int = 256, seed: int = 0, solver: str = "auto",
                             time_limit: float | None = None):
    """Certified l2 Lipschitz bound of a :class:`ResidualNetwork` (valid for all biases).

    ``solver``: ``riccati`` (or ``auto`` on MaxMin nets from LMI size
    :data:`maxmin_bound.RICCATI_MIN_SIZE`) -- :func:`maxmin_bound.residual_riccati_bound`; otherwise
    solved with SCS through cvxpy; the multipliers are projected and certified in float64 with
    the full ``W_0`` (re-solved at 10x tighter tolerance, warm-started, while the certified bound
    is more than ``gap_target`` above the raw SDP value). Returns a
    :class:`nlverify.sdp.result.LipschitzCertificate` (``product_bound`` is
    :func:`residual_product_bound`); :func:`verify_residual_certificate` re-checks it without a solver.
    """
    from .lower import sampled_lower_bound
    from .result import LipschitzCertificate, pack_multipliers
    from . import maxmin_bound

    method = canonical_method(method)
    size = min(net.embed.shape) + net.width * len(net.blocks)
    if solver.upper() == "RICCATI" or (solver.upper() == "AUTO"
                                       and maxmin_bound.auto_uses_riccati(net.activations, method, size)):
        return maxmin_bound.residual_riccati_bound(net, method, min(10 * eps, 1e-5), max_iters, time_limit,
                                                   lower_samples, seed)
    net_n, exponent = normalized_residual(net)
    qcs = residual_qcs(net_n, method)
    built = build_residual_problem(reduce_input(net_n.embed), net_n.blocks, net_n.head, qcs)
    best_rho, best_values, raw = math.inf, None, math.nan
    build_s, solve_s, certify_s = built.build_s, 0.0, 0.0
    status, iterations, tolerances, resolves, cur_eps = "unsolved", None, {}, 0, eps
    for attempt in range(max_resolves + 1):
        res = solve_lmi(built, "SCS", cur_eps, max_iters, warm_start=attempt > 0)
        build_s, solve_s = build_s + (res.build_s - built.build_s if attempt == 0 else 0.0), solve_s + res.solve_s
        status, iterations, tolerances, resolves = res.status, res.iterations, res.tolerances, attempt
        if res.values and math.isfinite(res.rho):
            raw = res.rho
            start = time.perf_counter()
            blocks = [qc.numpy_blocks(qc.project(v)) for qc, v in zip(qcs, res.values)]
            cert = certify_residual_rho(net_n.embed, net_n.blocks, net_n.head, blocks)
            certify_s += time.perf_counter() - start
            if cert.ok and cert.rho < best_rho:
                best_rho, best_values = cert.rho, res.values
            if cert.ok and best_rho <= res.rho * (1 + gap_target) ** 2:
                break
        cur_eps = max(cur_eps / 10, 1e-10)
    product = residual_product_bound(net)
    sdp_certified = math.ldexp(sqrt_up(best_rho), exponent) if best_values is not None else math.inf
    bound, by = (sdp_certified, "sdp") if sdp_certified <= product else (product, "product")
    start = time.perf_counter()
    lower = sampled_lower_bound(net.to_torch(), (net.input_dim,), lower_samples, seed=seed) if lower_samples else 0.0
    return LipschitzCertificate(
        bound=bound, sdp_certified=sdp_certified,
        sdp_value=math.ldexp(math.sqrt(raw), exponent) if math.isfinite(raw) and raw >= 0 else math.nan,
        product_bound=product, lower_bound=lower, method=method, solver="SCS-CVXPY", status=status,
        certified_by=by, norm="2", tolerances=tolerances, iterations=iterations, lmi_size=built.lmi_size,
        build_s=build_s, solve_s=solve_s, certify_s=certify_s, resolves=resolves, rho=best_rho,
        scale_exponent=exponent, activations=[a.to_dict() for a in net.activations],
        multipliers=(pack_multipliers([qc.project(v) for qc, v in zip(qcs, best_values)])
                     if best_values is not None else {}),
        lower_s=time.perf_counter() - start)


def verify_residual_certificate(cert, net: ResidualNetwork) -> bool:
    """Re-prove a residual certificate from its stored multipliers (no solver)."""
    from .result import unpack_multipliers

    if cert.certified_by == "product":
        return cert.bound >= residual_product_bound(net)
    if cert.norm != "2" or not cert.multipliers:
        return False
    net_n, exponent = normalized_residual(net)
    if exponent != cert.scale_exponent:
        return False
    qcs = residual_qcs(net_n, cert.method)
    values = unpack_multipliers(cert.multipliers, len(qcs))
    blocks = [qc.numpy_blocks(qc.project(v)) for qc, v in zip(qcs, values)]
    m, abs_m = assemble_residual_numpy(net_n.embed, net_n.blocks, net_n.head, blocks, cert.rho)
    proof = prove_negative_definite(m, abs_m, _inner_dim(net_n.embed, net_n.head))
    sdp_bound = math.ldexp(sqrt_up(cert.rho), exponent)
    return bool(proof.ok and cert.bound >= sdp_bound and cert.sdp_certified >= sdp_bound)

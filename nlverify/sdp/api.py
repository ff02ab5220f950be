"""``lipschitz_bound``: build the SDP, solve it, certify the multipliers, report.

Pipeline (each step in its own module):

1. :mod:`network` -- extract ``W_1..W_K`` and activation classes; normalise every weight by a
   power of two (exact, see :func:`network.normalized`); thin-SVD of ``W_1`` for the solve.
2. :mod:`methods` / :mod:`lipsdp` / :mod:`maxmin` -- one QC family per layer; solve
   ``min rho s.t. M(rho, lambda) << 0``. Backends (``solver=``): ``auto`` (default) -- when every
   activation is slope-restricted, the dual-scaling interior-point method of :mod:`dual_scaling`
   for LMIs below ``FIRST_ORDER_MIN_SIZE`` and the L-BFGS method on the certified objective of
   :mod:`first_order` from there on (measurements at :data:`FIRST_ORDER_MIN_SIZE`); else
   ``SCS-CVXPY``; ``barrier`` / ``dual-scaling`` / ``lbfgs`` force one of them;
   ``SCS`` -- SCS called directly with the chordal decomposition of :mod:`scs_direct`;
   ``SCS-CVXPY``, ``CLARABEL`` or any other cvxpy solver name -- the cvxpy model of :mod:`lipsdp`;
   ``riccati`` -- MaxMin nets only: the LMI with the sum preservation substituted exactly, L-BFGS on
   its Riccati objective and a stage-wise float64 proof (:mod:`maxmin_bound`); ``auto`` picks it for
   MaxMin nets from LMI size :data:`maxmin_bound.RICCATI_MIN_SIZE`; ``qc-lbfgs`` -- method
   ``maxmin-pauli`` only: L-BFGS with a log-barrier on the Schur-complement objective of that LMI
   (:mod:`maxmin_pauli_lbfgs`); ``auto`` picks it for that method.
3. :mod:`certify` -- project multipliers, prove ``M(rho) < 0`` in float64 for the *full* weights
   and return ``sqrt(rho)`` rounded up. If the certified value exceeds the raw SDP value by more
   than ``gap_target`` (or certification fails), re-solve with 10x tighter tolerance, warm-started,
   up to ``max_resolves`` times; keep the best certified bound.
4. :mod:`lower` -- a sampled lower bound from Jacobian norms on the original function.
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Sequence

from torch import nn

from .certify import certify_rho, qc_blocks, sqrt_up
from . import barrier, dual_scaling, first_order, maxmin_pauli_lbfgs, scs_direct
from .lipsdp import build_lmi_problem, solve_lmi
from .lower import sampled_lower_bound
from .methods import canonical_method, make_qcs
from .network import LipNetwork, from_mat, from_torch, normalized, reduce_input
from .result import LipschitzCertificate, _certified_product, pack_multipliers

MIN_EPS = 1e-10


def as_network(model: nn.Module | LipNetwork | str | Path, input_shape: Sequence[int] | None = None,
               activation: str | None = None) -> tuple[LipNetwork, nn.Module]:
    """The LipSDP view of ``model`` and a torch function for sampling."""
    if isinstance(model, LipNetwork):
        return model, model.to_torch()
    if isinstance(model, (str, Path)):
        path = Path(model)
        if path.suffix == ".mat":
            net = from_mat(path, activation)
            return net, net.to_torch()
        if path.suffix == ".onnx" or path.name.endswith(".onnx.gz"):
            from .graph_adapter import load_onnx_network
            return load_onnx_network(path)
        raise ValueError(f"{path}: expected a .mat weights file or an .onnx model")
    if isinstance(model, nn.Module):
        return from_torch(model, input_shape), model
    raise TypeError(f"cannot compute a Lipschitz bound for {type(model).__name__}")


# LMI size from which solver="auto" uses the first-order method (L-BFGS on rho(t), no dual bound)
# instead of the dual-scaling interior-point method (proven relative gap). Measured on the random
# ReLU nets of benchmarks/lipschitz.py (solve seconds, one core, load ~2): 2x100 (LMI 210) barrier
# 0.5, dual-scaling 0.4, lbfgs 0.2; 5x100 (510) barrier 7.8, dual-scaling 5.1 (proven gap 4e-5),
# lbfgs 1.6 (0.05 % above the optimum); 8x200 (1610): dual-scaling found no dual bound in 2000
# iterations (31 min, stopped at 3.2x the optimum), barrier ~0.8 s per iteration, lbfgs 23 s. The interior-point methods cost O(n^3) per iteration and ~100-200 iterations, so below this
# size the proven gap is cheap and auto keeps it; the barrier is slower than dual-scaling at every
# size measured and is no longer picked.
FIRST_ORDER_MIN_SIZE = 600


def auto_slope_solver(weights, qcs=None) -> str:
    """``DUAL-SCALING`` below :data:`FIRST_ORDER_MIN_SIZE` (or where the first-order method does
    not apply: some layer with ``alpha + beta = 0``), ``LBFGS`` from there on; ``BARRIER`` for a
    single linear layer (the block-tridiagonal solvers need a hidden layer)."""
    if len(weights) == 1:
        return "BARRIER"
    size = weights[0].shape[1] + sum(w.shape[0] for w in weights[:-1])
    if size < FIRST_ORDER_MIN_SIZE or (qcs is not None and not first_order.supports(qcs)):
        return "DUAL-SCALING"
    return "LBFGS"


def _riccati_selected(solver: str, net: LipNetwork, method: str) -> bool:
    """``riccati`` forced, or ``auto`` on a MaxMin net with an LMI of at least
    :data:`maxmin_bound.RICCATI_MIN_SIZE` (see :mod:`nlverify.sdp.maxmin_bound`)."""
    from . import maxmin_bound
    name = solver.upper()
    if name == "RICCATI":
        return True
    size = min(net.weights[0].shape) + sum(net.hidden_dims)
    return name == "AUTO" and maxmin_bound.auto_uses_riccati(net.activations, method, size)


class _Backend:
    """One solver backend behind a common ``solve(eps, max_iters, warm_start)``."""

    def __init__(self, solver: str, weights, qcs, time_limit: float | None = None) -> None:
        name = solver.upper()
        if name == "AUTO" and maxmin_pauli_lbfgs.supports(qcs):
            # 5fc_32 (LMI 160): Clarabel 151 s ("optimal_inaccurate", certified 193.2021), qc-lbfgs
            # certified 193.1979; 18fc_32: cvxpy cannot run it (see maxmin_pauli_lbfgs)
            name = "QC-LBFGS"
        if name == "AUTO":
            # measured (5fc_32 MaxMin, 2 loaded cores): cvxpy+SCS 26 s, direct chordal SCS 47 s
            name = auto_slope_solver(weights, qcs) if barrier.supports(qcs) else "SCS-CVXPY"
        self.name, self.time_limit = name, time_limit
        if name == "BARRIER":
            self.problem = barrier.build_barrier(weights, qcs)
        elif name == "DUAL-SCALING":
            self.problem = dual_scaling.build_dual_scaling(weights, qcs)
        elif name in ("LBFGS", "FIRST-ORDER"):
            self.name = "LBFGS"
            self.problem = first_order.build_first_order(weights, qcs)
        elif name == "QC-LBFGS":
            self.problem = maxmin_pauli_lbfgs.build_pauli_lbfgs(weights, qcs)
        elif name in ("SCS", "SCS-DIRECT", "SCS-FULL"):
            self.problem = scs_direct.build_direct(weights, qcs, chordal=name != "SCS-FULL")
        else:
            self.problem = build_lmi_problem(weights, qcs)
        self.build_s, self.lmi_size = self.problem.build_s, self.problem.lmi_size

    def initial_eps(self, eps: float) -> float:
        # the interior-point eps is a relative duality gap on rho (iterates strictly feasible);
        # the first-order eps is the final relative smoothing level of rho(t)
        if self.name in ("LBFGS", "QC-LBFGS"):
            return min(10 * eps, 1e-4)
        return min(100 * eps, 1e-3) if self.name in ("BARRIER", "DUAL-SCALING") else eps

    def solve(self, eps: float, max_iters: int | None, warm_start: bool):
        if self.name == "BARRIER":
            res = barrier.solve_barrier(self.problem, eps, max_iters, warm_start, self.time_limit)
            if res.values and math.isfinite(res.rho):  # report the optimum's estimate from below
                res.rho = max(res.rho - res.tolerances.get("duality_gap_estimate", 0.0), 0.0)
            return res
        if self.name == "DUAL-SCALING":
            res = dual_scaling.solve_dual_scaling(self.problem, eps, max_iters, warm_start, self.time_limit)
            if res.values and math.isfinite(res.rho):  # report the dual (lower) bound as raw value
                res.rho = max(res.tolerances.get("lower_bound", 0.0), 0.0)
            return res
        if self.name == "LBFGS":  # raw value: rho of the best iterate (no dual bound)
            return first_order.solve_first_order(self.problem, eps, max_iters, warm_start, self.time_limit)
        if self.name == "QC-LBFGS":  # raw value: rho of the best iterate (no dual bound)
            return maxmin_pauli_lbfgs.solve_pauli_lbfgs(self.problem, eps, max_iters, warm_start, self.time_limit)
        if self.name in ("SCS", "SCS-DIRECT", "SCS-FULL"):
            return scs_direct.solve_direct(self.problem, eps, max_iters, warm_start, time_limit=self.time_limit)
        solver = "SCS" if self.name == "SCS-CVXPY" else self.name
        return solve_lmi(self.problem, solver, eps, max_iters, warm_start=warm_start)


def lipschitz_bound(model: nn.Module | LipNetwork | str | Path, norm: int | str = 2,
                    method: str = "neuron", solver: str = "auto", eps: float = 1e-6,
                    input_shape: Sequence[int] | None = None, activation: str | None = None,
                    gap_target: float = 1e-3, max_resolves: int = 3, max_iters: int | None = None,
                    lower_samples: int = 256, seed: int = 0, time_limit: float | None = None,
                    output: int | Sequence[int] | None = None) -> LipschitzCertificate:
    """Certified l2 Lipschitz bound of ``model`` (valid for all biases). See the module docstring.

    ``model``: an ``nn.Sequential`` (Linear/Conv/BatchNorm(eval)/Flatten + activations), a
    :class:`LipNetwork`, or a ``.mat`` file (``activation`` picks the activation for weight files).
    ``method``: ``neuron`` | ``layer`` | ``maxmin-qc`` | ``maxmin-elim`` | ``maxmin-pauli`` | ``auto``.
    ``solver``: ``auto`` | ``barrier`` | ``dual-scaling`` | ``lbfgs`` | ``riccati`` (MaxMin) |
    ``qc-lbfgs`` (maxmin-pauli) | ``SCS`` (direct,
    chordal) | ``SCS-FULL`` (direct, one cone) | ``SCS-CVXPY`` | ``CLARABEL`` (see the module docstring). ``time_limit``: seconds per solve
    (the best iterate so far is certified). ``eps``: solver tolerance (the barrier starts at a
    relative gap of ``min(100 eps, 1e-3)``); tightened 10x per re-solve.
    ``norm="inf"``: l_inf -> |.| bound of one output ``output=k`` or a logit difference
    ``output=(i, j)`` (:mod:`nlverify.sdp.linf`; SCS only).
    """
    if str(norm) in ("inf", "linf"):
        from .linf import linf_bound
        return linf_bound(model, output, method, eps, max_resolves, max_iters, lower_samples, seed,
                          input_shape, activation, time_limit)
    if str(norm) not in ("2", "l2"):
        raise NotImplementedError("norm must be 2 or inf")
    if output is not None:
        raise ValueError("output= is only used with norm='inf' (l2 bounds cover all outputs)")
    method = canonical_method(method)
    net, torch_model = as_network(model, input_shape, activation)
    if _riccati_selected(solver, net, method):
        from .maxmin_bound import riccati_lipschitz_bound
        return riccati_lipschitz_bound(net, torch_model, method, min(10 * eps, 1e-5), max_iters, time_limit,
                                       lower_samples, seed)
    net_n, exponent = normalized(net)
    solve_weights = [reduce_input(net_n.weights[0])] + net_n.weights[1:]
    qcs = make_qcs(net_n.activations, net_n.hidden_dims, method)
    backend = _Backend(solver, solve_weights, qcs, time_limit)

    best_rho, best_values, best_raw = math.inf, None, math.nan
    status, iterations, tolerances = "unsolved", None, {}
    build_s, solve_s, certify_s = backend.build_s, 0.0, 0.0
    cur_eps, resolves = backend.initial_eps(eps), 0
    for attempt in range(max_resolves + 1):
        res = backend.solve(cur_eps, max_iters, warm_start=attempt > 0)
        build_s += res.build_s if attempt == 0 else 0.0
        solve_s += res.solve_s + (res.build_s if attempt > 0 else 0.0)
        status, iterations, tolerances, resolves = res.status, res.iterations, res.tolerances, attempt
        if res.values and math.isfinite(res.rho):
            best_raw = res.rho
            start = time.perf_counter()
            cert = certify_rho(net_n.weights, qc_blocks(qcs, res.values))
            certify_s += time.perf_counter() - start
            if cert.ok and cert.rho < best_rho:
                best_rho, best_values = cert.rho, res.values
            if cert.ok and best_rho <= res.rho * (1 + gap_target) ** 2:
                break
        if cur_eps <= MIN_EPS:
            break
        cur_eps = max(cur_eps / 10, MIN_EPS)

    scale = math.ldexp(1.0, exponent)
    product = _certified_product(net)
    sdp_value = math.sqrt(best_raw) * scale if math.isfinite(best_raw) and best_raw >= 0 else math.nan
    sdp_certified = math.ldexp(sqrt_up(best_rho), exponent) if best_values is not None else math.inf
    multipliers = (pack_multipliers([qc.project(v) for qc, v in zip(qcs, best_values)])
                   if best_values is not None else {})
    if sdp_certified <= product:
        bound, certified_by = sdp_certified, "sdp"
    else:  # no proven multipliers, or (LipSDP-Layer with symmetric slopes) not better than the product
        bound, certified_by = product, "product"

    start = time.perf_counter()
    lower = sampled_lower_bound(torch_model, net.input_shape, lower_samples, seed=seed) if lower_samples else 0.0
    lower_s = time.perf_counter() - start
    return LipschitzCertificate(
        bound=bound, sdp_certified=sdp_certified, sdp_value=sdp_value, product_bound=product, lower_bound=lower, method=method,
        solver=backend.name, status=status, certified_by=certified_by, norm="2",
        tolerances=tolerances, iterations=iterations, lmi_size=backend.lmi_size, build_s=build_s,
        solve_s=solve_s, certify_s=certify_s, resolves=resolves, rho=best_rho,
        scale_exponent=exponent, activations=[a.to_dict() for a in net.activations],
        multipliers=multipliers, lower_s=lower_s)

"""``solver="riccati"``: certified Lipschitz bounds of plain and residual MaxMin networks through the
eliminated LMI of :mod:`maxmin_stages`, solved by :mod:`maxmin_lbfgs`, proven by :mod:`maxmin_certify`.

Same reductions as the cvxpy path: every weight divided by a power of two (plain nets; for residual
nets only the embedding and the head, see :func:`residual.normalized_residual`), the first weight
replaced by its thin-SVD factor for the *solve* only; the proof always uses the full first weight.
Methods ``neuron``, ``maxmin-elim`` and ``maxmin-qc`` all give the LMI (*) of :mod:`maxmin_stages`
(with the equality substituted, the 1-Lipschitz QC is the sector QC with ``t = 2 mu``); the
returned multipliers are the sector multipliers ``t`` (``mu = t / 2`` for maxmin-qc).
"""
from __future__ import annotations

import math
import time
from typing import Sequence

import numpy as np
from torch import nn

from .activations import ActivationSpec
from .certify import sqrt_up
from .lower import sampled_lower_bound
from .maxmin_certify import certify_stages
from .maxmin_lbfgs import solve_riccati
from .maxmin_stages import is_maxmin, plain_stages, residual_stages, split_multipliers
from .network import LipNetwork, normalized, reduce_input
from .result import LipschitzCertificate, _certified_product

RICCATI_METHODS = ("neuron", "maxmin-elim", "maxmin-qc")


def supports(activations: Sequence[ActivationSpec], method: str = "neuron") -> bool:
    """Every activation MaxMin (group size 2), and a method whose LMI is (*)."""
    return bool(activations) and method in RICCATI_METHODS and all(is_maxmin(s) for s in activations)


def _check(activations: Sequence[ActivationSpec], method: str) -> None:
    if not supports(activations, method):
        raise ValueError("solver 'riccati' needs MaxMin (group size 2) activations only and method "
                         f"{' | '.join(RICCATI_METHODS)}; got method {method!r} and "
                         f"{sorted({s.name for s in activations})}")


def _solve_and_certify(solve_stages, proof_stages, output, eps, max_iters, time_limit):
    """Solve on the reduced stages, prove on the full ones: (solve, proof, build/solve/certify s)."""
    res = solve_riccati(solve_stages, output, eps, max_iters, time_limit)
    start = time.perf_counter()
    proof = (certify_stages(proof_stages, output, res.t) if math.isfinite(res.rho) else None)
    return res, proof, time.perf_counter() - start


def _certificate(res, proof, certify_s, exponent, product, lower, lower_s, method, lmi_size, stages,
                 activations, build_s) -> LipschitzCertificate:
    ok = proof is not None and proof.ok
    sdp_certified = math.ldexp(sqrt_up(proof.rho), exponent) if ok else math.inf
    raw = math.ldexp(math.sqrt(res.rho), exponent) if math.isfinite(res.rho) and res.rho >= 0 else math.nan
    bound, by = (sdp_certified, "sdp") if sdp_certified <= product else (product, "product")
    ts = [t for t in split_multipliers(stages, proof.t if ok else res.t) if t is not None]
    return LipschitzCertificate(
        bound=bound, sdp_certified=sdp_certified, sdp_value=raw, product_bound=product, lower_bound=lower,
        method=method, solver="RICCATI", status=res.status if ok else f"{res.status}; {proof and proof.reason}",
        certified_by=by, norm="2",
        tolerances={"solver": "riccati", "evaluations": res.evaluations,
                    "stage_margins": proof.margins if ok else []},
        iterations=res.iterations, lmi_size=lmi_size, build_s=build_s, solve_s=res.solve_s, certify_s=certify_s,
        resolves=0, rho=proof.rho if ok else math.inf, scale_exponent=exponent,
        activations=[a.to_dict() for a in activations],
        multipliers={f"layer{k}.t": t for k, t in enumerate(ts, start=1)}, lower_s=lower_s)


def riccati_lipschitz_bound(net: LipNetwork, torch_model: nn.Module | None = None, method: str = "neuron",
                            eps: float = 1e-6, max_iters: int | None = None, time_limit: float | None = None,
                            lower_samples: int = 256, seed: int = 0) -> LipschitzCertificate:
    """Certified l2 bound of a plain MaxMin :class:`LipNetwork` (``eps``: final smoothing level)."""
    _check(net.activations, method)
    start = time.perf_counter()
    net_n, exponent = normalized(net)
    reduced = [reduce_input(net_n.weights[0])] + net_n.weights[1:]
    solve_stages, output = plain_stages(reduced, net_n.activations)
    proof_stages, _ = plain_stages(net_n.weights, net_n.activations)
    build_s = time.perf_counter() - start
    res, proof, certify_s = _solve_and_certify(solve_stages, proof_stages, output, eps, max_iters, time_limit)
    torch_model = torch_model if torch_model is not None else net.to_torch()
    start = time.perf_counter()
    lower = sampled_lower_bound(torch_model, net.input_shape, lower_samples, seed=seed) if lower_samples else 0.0
    lower_s = time.perf_counter() - start
    lmi_size = reduced[0].shape[1] + sum(net.hidden_dims)
    return _certificate(res, proof, certify_s, exponent, _certified_product(net), lower, lower_s, method,
                        lmi_size, solve_stages, net.activations, build_s)


def residual_riccati_bound(net, method: str = "neuron", eps: float = 1e-6, max_iters: int | None = None,
                           time_limit: float | None = None, lower_samples: int = 256,
                           seed: int = 0) -> LipschitzCertificate:
    """Certified l2 bound of a residual MaxMin :class:`residual.ResidualNetwork`."""
    from .residual import normalized_residual, residual_product_bound

    _check(net.activations, method)
    start = time.perf_counter()
    net_n, exponent = normalized_residual(net)
    solve_stages, output = residual_stages(reduce_input(net_n.embed), net_n.blocks, net_n.activations, net_n.head)
    proof_stages, _ = residual_stages(net_n.embed, net_n.blocks, net_n.activations, net_n.head)
    build_s = time.perf_counter() - start
    res, proof, certify_s = _solve_and_certify(solve_stages, proof_stages, output, eps, max_iters, time_limit)
    start = time.perf_counter()
    lower = (sampled_lower_bound(net.to_torch(), (net.input_dim,), lower_samples, seed=seed)
             if lower_samples else 0.0)
    lower_s = time.perf_counter() - start
    lmi_size = min(net.embed.shape) + net.width * len(net.blocks)
    return _certificate(res, proof, certify_s, exponent, residual_product_bound(net), lower, lower_s, method,
                        lmi_size, solve_stages, net.activations, build_s)


# LMI size (reduced input + hidden neurons) from which solver="auto" takes the Riccati path for MaxMin
# nets. Measured (results/h2 and results/s10/maxmin, 2 loaded cores): cvxpy + SCS 2fc_16 (32) 7-8 s,
# 2fc_32 (64) 17-23 s, 5fc_32 (160) 38-56 s, 2fc_64 (128) > 300 s; Riccati L-BFGS + proof 1-2 s on
# each. Below this size auto keeps the cvxpy model (an interior solve with a dual certificate of
# optimality, cheap there).
RICCATI_MIN_SIZE = 64


def auto_uses_riccati(activations: Sequence[ActivationSpec], method: str, lmi_size: int) -> bool:
    return supports(activations, method) and lmi_size >= RICCATI_MIN_SIZE


def verify_riccati_certificate(cert: LipschitzCertificate, net) -> bool:
    """Re-prove a ``solver="riccati"`` certificate from its stored multipliers ``layer{k}.t`` and
    ``rho``, without any solver: the stage-wise proof of :mod:`maxmin_certify` at ``cert.rho``, for
    a :class:`LipNetwork` or a :class:`residual.ResidualNetwork`."""
    from .residual import ResidualNetwork, normalized_residual

    if cert.certified_by != "sdp":
        return cert.bound >= cert.product_bound
    if isinstance(net, ResidualNetwork):
        net_n, exponent = normalized_residual(net)
        stages, output = residual_stages(net_n.embed, net_n.blocks, net_n.activations, net_n.head)
    else:
        net_n, exponent = normalized(net)
        stages, output = plain_stages(net_n.weights, net_n.activations)
    keys = [f"layer{k}.t" for k in range(1, len(net_n.activations) + 1)]
    if exponent != cert.scale_exponent or any(k not in cert.multipliers for k in keys):
        return False
    t = np.concatenate([np.asarray(cert.multipliers[k], dtype=np.float64) for k in keys])
    if t.size != sum(s.pairs for s in stages) or not math.isfinite(cert.rho):
        return False
    proof = certify_stages(stages, output, t, rho=cert.rho)
    return bool(proof.ok and cert.bound >= math.ldexp(sqrt_up(cert.rho), exponent))

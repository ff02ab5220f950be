"""Certified l_inf -> |.| Lipschitz bounds of one output (or a logit difference) ``y = c^T f(x)``.

**The LMI.** Replace the output term by the scalar output (``W_K -> c^T W_K``) and the input term
``-rho I`` by ``-diag(lambda)``, ``lambda >= 0``; the hidden blocks (QCs of every activation layer:
slope-restricted, MaxMin, GroupSort) are unchanged::

    M(lambda, QC multipliers) = W_K^T c c^T W_K (last block) + sum_k Phi_k^T Q_k Phi_k - E_0^T diag(lambda) E_0  <<  0,
    minimise  sum_i lambda_i.

*Why it bounds the l_inf constant.* Exactly as for l2 (:mod:`nlverify.sdp.lmi`), multiplying M by the
vector of differences and using that every QC is >= 0 gives, for all pairs of inputs,
``|Dy|^2 <= Dx^T diag(lambda) Dx = sum_i lambda_i Dx_i^2 <= (sum_i lambda_i) ||Dx||_inf^2``
(a nonnegative combination of the ``Dx_i^2`` is at most its total weight times the largest one).
So ``L_inf = sqrt(sum_i lambda_i)``. With ``lambda = rho 1`` one gets back ``sqrt(n_0) L_2``-type
bounds; the diagonal multiplier lets the SDP weight the inputs individually (this is the l_inf
variant of LipSDP used by Pauli et al.; we derive it independently here).

*Certification.* The SDP returns ``lambda``; after clipping to ``lambda_i >= tau > 0`` (tiny
``tau``, only to make ``diag(lambda)`` invertible) the input block is fixed *up to a scalar*:
:func:`nlverify.sdp.certify.certify_rho` proves ``M < 0`` in float64 with input block
``-rho diag(lambda)`` for the smallest provable rho, and the bound is
``sqrt(rho * sum(lambda))`` rounded up (products and the sum rounded upwards), times the exact
power-of-two scale of :func:`nlverify.sdp.network.normalized` (the l_inf argument there is the
same: the normalisation is an exact change of variables in the hidden layers).

The thin-SVD input reduction used for l2 is *not* applied (it is valid only for rotation-invariant
norms).
"""
from __future__ import annotations

import math
import time
from typing import Sequence

import numpy as np
import torch

from . import scs_direct
from .certify import certify_rho, qc_blocks, sqrt_up
from .methods import canonical_method, make_qcs
from .network import LipNetwork, normalized

U = 2.0 ** -53


def output_vector(n_out: int, output: int | Sequence[int] | None) -> np.ndarray:
    """``c`` for one output k (``e_k``) or a logit difference ``(i, j)`` (``e_i - e_j``)."""
    c = np.zeros(n_out)
    if output is None:
        if n_out != 1:
            raise ValueError(f"the network has {n_out} outputs: pass output=k or output=(i, j) for an l_inf bound")
        c[0] = 1.0
    elif isinstance(output, (int, np.integer)):
        c[int(output)] = 1.0
    else:
        i, j = (int(v) for v in output)
        if i == j:
            raise ValueError("a logit difference needs two different outputs")
        c[i], c[j] = 1.0, -1.0
    return c


def scalar_network(net: LipNetwork, c: np.ndarray) -> LipNetwork:
    return LipNetwork(net.weights[:-1] + [c[None, :] @ net.weights[-1]], list(net.activations),
                      None, net.input_shape)


def up(x: float) -> float:
    return float(np.nextafter(x, math.inf))


def certified_linf_product(net: LipNetwork, c: np.ndarray) -> float:
    """min of two naive bounds, both rounded up:
    ``||c^T W_K||_1 prod_k ||W_k||_{inf->inf} prod slope`` (elementwise activations with |phi'| <= s
    and sorting are non-expansive in l_inf up to s) and ``sqrt(n_0) ||c^T W_K||_2 prod ||W_k||_2 prod slope``."""
    last = c @ net.weights[-1]
    v_inf = math.fsum(np.abs(last)) * (1 + 4 * len(last) * U)
    for w in net.weights[:-1]:
        v_inf *= float(np.abs(w).sum(axis=1).max()) * (1 + 4 * w.shape[1] * U)
    v_two = float(np.linalg.norm(last)) * (1 + 1e-10) * math.sqrt(net.input_dim) * (1 + 1e-15)
    for w in net.weights[:-1]:
        v_two *= float(np.linalg.norm(w, 2)) * (1 + 1e-10)
    slopes = math.prod(s.max_abs_slope for s in net.activations)
    return min(v_inf, v_two) * slopes * (1 + 1e-12)


def sampled_linf_lower_bound(model: torch.nn.Module, input_shape, c: np.ndarray, samples: int = 256,
                             seed: int = 0) -> float:
    """``max_x ||grad (c^T f)(x)||_1`` over Gaussian points at three scales (a lower bound)."""
    if samples <= 0:
        return 0.0
    model = model.double().eval()
    n = int(np.prod(input_shape))
    gen = torch.Generator().manual_seed(seed)
    pts = torch.cat([s * torch.randn(max(1, samples // 3), n, generator=gen, dtype=torch.float64)
                     for s in (0.1, 1.0, 10.0)]).requires_grad_(True)
    cvec = torch.from_numpy(c)
    y = (model(pts.reshape(-1, *input_shape)).reshape(len(pts), -1) * cvec).sum()
    (g,) = torch.autograd.grad(y, pts)
    return float(g.abs().sum(dim=1).max())


def linf_bound(model, output: int | Sequence[int] | None = None, method: str = "neuron", eps: float = 1e-6,
               max_resolves: int = 3, max_iters: int | None = None, lower_samples: int = 256, seed: int = 0,
               input_shape=None, activation: str | None = None, time_limit: float | None = None):
    """Certified bound on ``|c^T f(x) - c^T f(x')| / ||x - x'||_inf`` (see the module docstring)."""
    from .api import as_network
    from .result import LipschitzCertificate, pack_multipliers

    method = canonical_method(method)
    net, torch_model = as_network(model, input_shape, activation)
    c = output_vector(net.output_dim, output)
    scal = scalar_network(net, c)
    net_n, exponent = normalized(scal)
    qcs = make_qcs(net_n.activations, net_n.hidden_dims, method)
    problem = scs_direct.build_direct(net_n.weights, qcs, chordal=True, input_diag=True)
    best, best_pack, raw, status, iterations, resolves = math.inf, None, math.nan, "unsolved", None, 0
    solve_s = certify_s = 0.0
    cur = eps
    for attempt in range(max_resolves + 1):
        res = scs_direct.solve_direct(problem, cur, max_iters, warm_start=attempt > 0, time_limit=time_limit)
        solve_s += res.build_s + res.solve_s
        status, iterations, resolves = res.status, res.iterations, attempt
        lam = res.tolerances.get("input_multipliers")
        if res.values and lam is not None and np.all(np.isfinite(lam)):
            raw = res.rho
            lam = np.maximum(lam, 1e-9 * max(float(lam.max()), 1e-300) + 1e-300)
            start = time.perf_counter()
            cert = certify_rho(net_n.weights, qc_blocks(qcs, res.values), input_scale=lam)
            certify_s += time.perf_counter() - start
            if cert.ok:
                total = up(up(math.fsum(lam) * (1 + 2 * len(lam) * U)) * cert.rho)
                if total < best:
                    best, best_pack = total, (cert.rho, lam, res.values)
                if best <= max(raw, 0.0) * (1 + 1e-3) ** 2:
                    break
        cur = max(cur / 10, 1e-10)
    product = certified_linf_product(net, c)
    sdp_cert = math.ldexp(sqrt_up(best), exponent) if best_pack else math.inf
    bound, by = (sdp_cert, "sdp") if sdp_cert <= product else (product, "product")
    start = time.perf_counter()
    lower = sampled_linf_lower_bound(torch_model, net.input_shape, c, lower_samples, seed) if lower_samples else 0.0
    multipliers = {}
    if best_pack:
        multipliers = pack_multipliers([qc.project(v) for qc, v in zip(qcs, best_pack[2])])
        multipliers["input.lambda"] = best_pack[1]
    return LipschitzCertificate(
        bound=bound, sdp_certified=sdp_cert,
        sdp_value=math.ldexp(math.sqrt(raw), exponent) if math.isfinite(raw) and raw >= 0 else math.nan,
        product_bound=product, lower_bound=lower, method=method, solver="SCS", status=status, certified_by=by,
        norm="inf", tolerances={"eps": cur}, iterations=iterations, lmi_size=problem.lmi_size,
        build_s=problem.build_s, solve_s=solve_s, certify_s=certify_s, resolves=resolves,
        rho=best_pack[0] if best_pack else math.inf, scale_exponent=exponent,
        activations=[a.to_dict() for a in net.activations], multipliers=multipliers,
        lower_s=time.perf_counter() - start, output=c.tolist())

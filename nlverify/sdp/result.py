"""The certificate returned by :func:`nlverify.sdp.lipschitz_bound`, and its solver-free check.

``bound`` is an l2 -> l2 Lipschitz bound of the map ``x -> y`` that holds for *every* choice of
biases (biases cancel in the LMI). It is either proven from the SDP multipliers
(``certified_by == "sdp"``, see :mod:`nlverify.sdp.certify`) or, when no multiplier set could be
proven, the product of spectral norms (``certified_by == "product"``). A value that the solver
reported but that could not be proven is only ever stored in ``sdp_value``.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Sequence

import numpy as np

from .activations import ActivationSpec
from .certify import check_rho, qc_blocks, sqrt_up
from .methods import make_qcs
from .network import LipNetwork, normalized


@dataclass
class LipschitzCertificate:
    """Certified upper bound and its provenance.

    ``bound = min(sdp_certified, product_bound)`` (both proven); ``sdp_certified`` is inf when no
    multiplier set could be proven. ``multipliers``: ``"layer{k}.{name}"`` -> array, for the normalised network (weights divided by
    ``2**e_k``, total exponent ``scale_exponent``), *before* projection; ``rho`` is the proven
    value for the normalised network, so ``bound = sqrt(rho) * 2**scale_exponent`` (rounded up).
    """

    bound: float
    sdp_certified: float
    sdp_value: float
    product_bound: float
    lower_bound: float
    method: str
    solver: str
    status: str
    certified_by: str
    norm: str
    tolerances: dict
    iterations: int | None
    lmi_size: int
    build_s: float
    solve_s: float
    certify_s: float
    resolves: int
    rho: float
    scale_exponent: int
    activations: list[dict]
    multipliers: dict[str, np.ndarray] = field(repr=False, default_factory=dict)
    lower_s: float = 0.0
    output: list | None = None  # l_inf bounds: the output vector c of y = c^T f(x)

    @property
    def gap(self) -> float:
        """Relative excess of the certified bound over the raw SDP value (can be < 0)."""
        if not (math.isfinite(self.sdp_value) and self.sdp_value > 0):
            return math.nan
        return self.bound / self.sdp_value - 1.0

    def summary(self) -> str:
        return (f"{self.lower_bound:.6g} <= {self.bound:.6g} <= {self.product_bound:.6g}   "
                f"[{self.method}/{self.solver}, sdp {self.sdp_value:.6g}, gap {self.gap:.2e}, "
                f"build {self.build_s:.2f}s solve {self.solve_s:.2f}s certify {self.certify_s:.2f}s, "
                f"{self.certified_by}, {self.status}]")

    def to_dict(self, with_multipliers: bool = False) -> dict:
        d = asdict(self)
        d["gap"] = self.gap
        d["sdp_certified"] = self.sdp_certified if math.isfinite(self.sdp_certified) else None
        if with_multipliers:
            d["multipliers"] = {k: v.tolist() for k, v in self.multipliers.items()}
        else:
            d.pop("multipliers")
        return d


def pack_multipliers(values: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {f"layer{k}.{name}": np.asarray(v, dtype=np.float64)
            for k, layer in enumerate(values, start=1) for name, v in layer.items()}


def unpack_multipliers(packed: dict[str, np.ndarray], n_layers: int) -> list[dict[str, np.ndarray]]:
    layers: list[dict[str, np.ndarray]] = [{} for _ in range(n_layers)]
    for key, value in packed.items():
        head, name = key.split(".", 1)
        layers[int(head[len("layer"):]) - 1][name] = np.asarray(value, dtype=np.float64)
    return layers


def verify_certificate(cert: LipschitzCertificate, weights: Sequence[np.ndarray] | LipNetwork) -> bool:
    """Re-check a stored certificate against ``weights`` without any solver.

    SDP certificates: rebuild the QC blocks from the stored (projected) multipliers, re-prove
    ``M(rho) < 0`` for the normalised weights (:func:`nlverify.sdp.certify.check_rho`) and check
    ``bound >= sqrt(rho) * 2**scale_exponent``. Product certificates: recompute the product.
    """
    if isinstance(weights, LipNetwork):
        net = weights
    else:
        specs = [ActivationSpec.from_dict(a) for a in cert.activations]
        net = LipNetwork(list(weights), specs)
    if cert.certified_by == "product":
        return cert.bound >= _certified_product(net)
    if cert.norm == "inf" and cert.multipliers and cert.output is not None:
        from .linf import scalar_network
        net = scalar_network(net, np.asarray(cert.output, dtype=np.float64))
        lam = np.asarray(cert.multipliers.get("input.lambda"), dtype=np.float64)
        net_n, exponent = normalized(net)
        if exponent != cert.scale_exponent or lam.shape != (net.input_dim,) or not np.all(lam > 0):
            return False
        qcs = make_qcs(net_n.activations, net_n.hidden_dims, cert.method)
        layers = {k: v for k, v in cert.multipliers.items() if not k.startswith("input.")}
        proof = check_rho(net_n.weights, qc_blocks(qcs, unpack_multipliers(layers, len(qcs))), cert.rho, lam)
        u = 2.0 ** -53
        total = float(np.nextafter(float(np.nextafter(math.fsum(lam) * (1 + 2 * lam.size * u), math.inf)) * cert.rho,
                                   math.inf))
        sdp_bound = math.ldexp(sqrt_up(total), exponent)
        return bool(proof.ok and cert.bound >= sdp_bound and cert.sdp_certified >= sdp_bound)
    if cert.norm != "2" or not cert.multipliers:
        return False
    net_n, exponent = normalized(net)
    if exponent != cert.scale_exponent:
        return False
    qcs = make_qcs(net_n.activations, net_n.hidden_dims, cert.method)
    values = unpack_multipliers(cert.multipliers, len(qcs))
    proof = check_rho(net_n.weights, qc_blocks(qcs, values), cert.rho)
    sdp_bound = math.ldexp(sqrt_up(cert.rho), exponent)
    return bool(proof.ok and cert.bound >= sdp_bound and cert.sdp_certified >= sdp_bound)


def spectral_norm_up(w: np.ndarray) -> float:
    """An upper bound of ``||w||_2``: the SVD's largest singular value inflated by 1e-10 relative. A
    backward-stable SVD returns the singular values of W + E with ||E|| <= p(n) u ||W|| (p(n) << 1e6
    here), so by Weyl's inequality ||W||_2 <= sigma~_max (1 + 1e-10)."""
    return float(np.linalg.norm(w, 2)) * (1 + 1e-10)


def _certified_product(net: LipNetwork) -> float:
    """Product of spectral norms (:func:`spectral_norm_up`) and activation slopes, rounded up."""
    value = 1.0
    for w in net.weights:
        value *= spectral_norm_up(w)
    for spec in net.activations:
        value *= spec.max_abs_slope
    return value * (1 + 1e-12)

"""Certified Lipschitz bounds: LipSDP (Neuron, Layer) and MaxMin/GroupSort quadratic constraints.

Entry point: :func:`lipschitz_bound`; the result is a :class:`LipschitzCertificate` that
:func:`verify_certificate` re-checks without a solver.
"""
from .api import lipschitz_bound
from .methods import METHODS
from .network import LipNetwork, from_mat, from_torch, from_weights
from .result import LipschitzCertificate, verify_certificate

__all__ = ["lipschitz_bound", "LipschitzCertificate", "verify_certificate", "LipNetwork",
           "from_torch", "from_weights", "from_mat", "METHODS"]

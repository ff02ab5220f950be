"""Which quadratic-constraint family each method uses for each activation class.

| method        | slope-restricted layer        | MaxMin layer (g = 2)     | GroupSort, g > 2 |
|---------------|-------------------------------|--------------------------|------------------|
| ``neuron``    | diagonal T (LipSDP-Neuron)    | elimination (MaxMinElim) | SortQC           |
| ``layer``     | scalar lambda (LipSDP-Layer)  | SortQC                   | SortQC           |
| ``maxmin-qc`` | diagonal T                    | SortQC (1-Lip + sum)     | SortQC           |
| ``maxmin-elim`` | diagonal T                  | elimination              | rejected         |
| ``maxmin-pauli`` | diagonal T                 | Pauli et al. (PauliSortQC) | PauliSortQC    |

``maxmin-pauli`` is Pauli et al.'s (ICLR 2024) own multiplier set, a restriction of maxmin-qc
(:mod:`maxmin_pauli`), offered to reproduce their numbers.

Every family is a valid QC; "LipSDP-Network" (neuron-pair coupling) is not offered: it is unsound.
"""
from __future__ import annotations

from typing import Sequence

from .activations import ActivationSpec
from .lipsdp import SlopeLayerQC, SlopeNeuronQC
from .lmi import LayerQC
from .maxmin import MaxMinElimQC, SortQC
from .maxmin_pauli import PauliSortQC

METHODS = ("neuron", "layer", "maxmin-qc", "maxmin-elim", "maxmin-pauli")


def canonical_method(method: str) -> str:
    method = method.lower()
    if method == "auto":
        return "neuron"
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)} or auto")
    return method


def qc_for_layer(spec: ActivationSpec, size: int, method: str) -> LayerQC:
    method = canonical_method(method)
    if spec.kind == "slope":
        return SlopeLayerQC(spec, size) if method == "layer" else SlopeNeuronQC(spec, size)
    if spec.kind == "householder":  # one QC family for every method (see nlverify.sdp.householder)
        from .householder import HouseholderQC
        return HouseholderQC(spec, size)
    if method == "maxmin-pauli":
        return PauliSortQC(spec, size)
    if spec.group_size == 2 and method in ("neuron", "maxmin-elim"):
        return MaxMinElimQC(spec, size)
    if method == "maxmin-elim":
        raise ValueError(f"maxmin-elim needs MaxMin (group size 2), got {spec.name}")
    return SortQC(spec, size)


def make_qcs(activations: Sequence[ActivationSpec], hidden_dims: Sequence[int], method: str) -> list[LayerQC]:
    return [qc_for_layer(s, n, method) for s, n in zip(activations, hidden_dims)]

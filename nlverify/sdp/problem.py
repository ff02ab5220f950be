"""The problem that the matrix-free LipSDP solvers start from: the weights, the QCs, and a warm start.

The barrier, dual-scaling, L-BFGS and qc-lbfgs solvers never build the LMI as one matrix (each
forms what it needs from the weights and the QCs at every iterate), so "building" their problem is
only checking that the solver handles these QCs and converting the weights to float64 once. That
part is the same for all of them and lives here; what differs -- which QCs a solver accepts, and
what its warm-start ``state`` holds -- stays with the solver.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from .lmi import LayerQC, block_sizes


@dataclass
class SolverProblem:
    """Inputs of a matrix-free solve, with the fields that the backend of :mod:`nlverify.sdp.api` reads of any
    built problem (``build_s``, ``lmi_size``). ``state`` is the solver's own warm start (its last
    iterate), written by its ``solve_*`` and read back when it is asked to warm-start."""

    weights: list[np.ndarray]
    qcs: list[LayerQC]
    build_s: float
    lmi_size: int
    state: dict | None = field(default=None, repr=False)


def build_solver_problem(weights: Sequence[np.ndarray], qcs: Sequence[LayerQC],
                         supports: Callable[[Sequence[LayerQC]], bool], unsupported: str) -> SolverProblem:
    """A :class:`SolverProblem` for a solver that accepts the QCs for which ``supports`` holds;
    ``ValueError(unsupported)`` otherwise. The build takes no measurable time (``build_s = 0``)."""
    if not supports(qcs):
        raise ValueError(unsupported)
    ws = [np.asarray(w, dtype=np.float64) for w in weights]
    return SolverProblem(ws, list(qcs), 0.0, int(sum(block_sizes(ws))))

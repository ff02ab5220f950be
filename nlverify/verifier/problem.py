"""Problems: one (input region, output conjunction) pair of a property, and when one counts as proved.

A property is violated when ``OR_r [x in box_r AND OR_k (C_rk y <= d_rk)]`` holds for some ``x``. A pair
``(r, k)`` is a :class:`Problem`; it is *proved* once some row ``i`` has ``lower bound of (C_rk y)_i over
box_r - d_rk,i > proof_margin``.

Proof margin
------------
Bounds are computed in the model's dtype (float32). A computed bound ``b`` differs from the exact
bound of the float32 model by rounding error that grows with the magnitude of the terms summed; and the
model onnxruntime evaluates is itself a float32 computation. We therefore demand a small positive
slack before a row counts as proved:

    PROOF_MARGIN = PROOF_ABS_TOL + PROOF_REL_TOL * max(|b|, |d|)     (1e-6 + 1e-5 relative)

``1e-5`` relative is ~100 float32 unit roundoffs, the order of the accumulated error of the dot products
in a bound of the nets we meet; rows that pass zero but not the margin are counted in
``stats["near_miss_rows"]`` (never silently dropped). This is an engineering guard, not a rigorous
floating-point proof.

Bounds computed in float64 use ``1e-9 + 1e-9 relative`` instead (~10^7 float64 unit roundoffs). A float32
model whose open problems have near-miss rows after the incomplete stages is re-verified in float64 (a
float64 copy of the model holds exactly the same parameters; every float32 bound is discarded): some
properties leave a slack of 1e-6 on outputs that are exactly constant (ml4acopf: ``Y_6 >= 0.300001`` on
an output clamped to 0.3), which no float32 margin can accept. What the float64 margin does not cover is
the gap between the real-arithmetic network and onnxruntime's float32 evaluation of it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from nlverify import faults  # TEST-ONLY bug injection; inert unless NLVERIFY_INJECT_BUG is set
from nlverify.verifier.spec import Spec

__all__ = ["PROOF_ABS_TOL", "PROOF_REL_TOL", "PROOF_ABS_TOL_FLOAT64", "PROOF_REL_TOL_FLOAT64", "INPUT_SPLIT_MAX_INPUTS",
           "proof_margin", "rows_proved", "Problem", "ProblemOutcome", "free_dims", "is_proved", "near_miss_rows",
           "problems_from_spec", "in_float64"]

PROOF_ABS_TOL = 1e-6
PROOF_REL_TOL = 1e-5
PROOF_ABS_TOL_FLOAT64 = 1e-9
PROOF_REL_TOL_FLOAT64 = 1e-9
INPUT_SPLIT_MAX_INPUTS = 32  # regions with at most this many free inputs go to input-split BaB (see bab.py)


def proof_margin(bound: Tensor, d: Tensor) -> Tensor:
    """The slack a lower bound must exceed ``d`` by: ``PROOF_ABS_TOL + PROOF_REL_TOL * max(|b|, |d|)``, or
    the float64 tolerances when both are float64."""
    if bound.dtype == torch.float64 and d.dtype == torch.float64:
        return PROOF_ABS_TOL_FLOAT64 + PROOF_REL_TOL_FLOAT64 * torch.maximum(bound.abs(), d.abs())
    return PROOF_ABS_TOL + PROOF_REL_TOL * torch.maximum(bound.abs(), d.abs())


def rows_proved(lower: Tensor, d: Tensor) -> Tensor:
    """Rows whose lower bound exceeds ``d`` by more than :func:`proof_margin` (NaN never proves)."""
    return (lower - d) > proof_margin(lower, d)


@dataclass
class Problem:
    """One (region, conjunction) pair that must be shown infeasible: no ``x`` in ``[lower, upper]`` with
    ``C f(x) <= d``. ``best_lower`` holds the best lower bound on ``C f(x)`` so far (per row)."""

    region: int
    conjunction: int
    lower: Tensor  # (n,)
    upper: Tensor  # (n,)
    C: Tensor  # (m_rows, num_outputs)
    d: Tensor  # (m_rows,)
    best_lower: Tensor  # (m_rows,)
    boxes: dict | None = None  # node -> (lower, upper) boxes (batch 1) of the last bound stage, for BaB
    boxes_stage: str | None = None  # the bound stage that produced ``boxes`` ("crown", "alpha-crown", "layerwise")


def free_dims(problem: Problem) -> Tensor:
    """Indices of the input dimensions a problem's region box leaves free (width > 0). Properties that fix
    most inputs (dist_shift: 784 pixels fixed, 8 latent inputs free) are low-dimensional problems."""
    return (problem.upper > problem.lower).nonzero().squeeze(1)


@dataclass
class ProblemOutcome:
    """What a complete method concluded for one problem: ``proved``, or a candidate ``counterexample``
    (to be confirmed by the pipeline), or neither (unknown)."""

    proved: bool = False
    counterexample: np.ndarray | None = None


def problems_from_spec(spec: Spec, dtype: torch.dtype, device) -> list[Problem]:
    """One :class:`Problem` per (region, conjunction) of ``spec``, nothing bounded yet."""
    as_tensor = lambda a: torch.as_tensor(np.asarray(a), dtype=dtype, device=device)  # noqa: E731
    problems = [Problem(r, k, as_tensor(region.lower), as_tensor(region.upper), as_tensor(conj.C),
                        as_tensor(conj.d), torch.full((conj.C.shape[0],), -math.inf, dtype=dtype, device=device))
                for r, region in enumerate(spec.regions) for k, conj in enumerate(region.disjuncts)]
    for p in problems if faults.ACTIVE else ():  # TEST-ONLY fault hook (faults.py): shrink_box
        p.lower, p.upper = faults.shrink_box(p.lower, p.upper)
    return problems


def in_float64(model, problems: list[Problem]):
    """A float64 copy of ``model`` and of ``problems``, with every float32 bound forgotten (best lower
    bounds reset, stage boxes dropped): their rounding errors are only covered by the float32 margin."""
    import copy

    model64 = copy.deepcopy(model).to(dtype=torch.float64)
    as64 = lambda t: t.to(torch.float64)  # noqa: E731
    fresh = [Problem(p.region, p.conjunction, as64(p.lower), as64(p.upper), as64(p.C), as64(p.d),
                     torch.full_like(as64(p.d), -math.inf)) for p in problems]
    return model64, fresh


def is_proved(problem: Problem) -> bool:
    """Some row of the problem is proved by its best lower bound so far."""
    return bool(rows_proved(problem.best_lower, problem.d).any())


def near_miss_rows(problems: list[Problem]) -> int:
    """Rows whose bound is above ``d`` but within the proof margin (reported, not counted as proofs)."""
    return sum(int(((p.best_lower > p.d) & ~rows_proved(p.best_lower, p.d)).sum()) for p in problems)

"""Building the pre-optimised branching-point tables (GenBaB-style) for unary nonlinearities.

Branch-and-bound splits a neuron's pre-activation interval ``[l, u]`` at a point ``p`` into the two
children ``[l, p]`` and ``[p, u]``; each child gets its own, tighter, default relaxation. For a
ReLU the best point is 0; for smooth nonlinearities it depends on ``(l, u)``, so we optimise it once,
offline, on a grid, and look it up at run time (:mod:`nlverify.verifier.lookup`).

Looseness
---------
For a relaxation ``L(x) <= f(x) <= U(x)`` on ``[a, b]`` (``L``, ``U`` the default, ``alpha=None``,
lines of :func:`nlverify.bounds.relax.unary_relaxation`), its *looseness* is the area between the lines

    A(a, b) = integral_a^b (U(x) - L(x)) dx
            = (b - a) * [ (s_U - s_L) (a + b) / 2 + (c_U - c_L) ]

(``s`` slopes, ``c`` intercepts): the integrand is affine, so the one-point midpoint rule is exact and
there is no quadrature error. Equivalently ``A = int (U - f) + int (f - L)``, the total gap of both lines
to the function. The looseness of splitting ``[l, u]`` at ``p`` is

    J(l, u; p) = A(l, p) + A(p, u),

and the table stores, per grid cell ``(l_i, u_j)`` with ``l_i < u_j``, the *relative* position
``t* = (p* - l) / (u - l)`` of ``p* = argmin_p J`` over ``t`` in ``[T_MIN, 1 - T_MIN]``.

Optimisation (all cells at once, no Python loop over cells): evaluate ``J`` at ``K - 1`` relative
candidates ``t = k / K`` (both children of every candidate of every cell in one batched ``relax``
call), keep the best, then refine by golden-section search on ``[t_best - 1/K, t_best + 1/K]``
(``GOLDEN_STEPS`` steps, each one batched ``relax`` call over all cells). ``J`` is not unimodal in
general (sin over several periods), hence the global coarse scan first.

Anchors
-------
The default S-shaped relaxation is discontinuous in ``(l, u)`` at the inflection point 0: a child with
``l = 0`` is concave and gets the midpoint tangent above, a child with ``l = -eps`` is "mixed" and
gets the tangent through ``(l, f(l))``, which is much looser. So ``J(l, u; p)`` has an isolated dip
at ``p = 0`` that no continuous search finds. For sigmoid and tanh the builder also evaluates
``J(l, u; 0)`` and the cell records "split exactly at 0" where that is better (about 11 % of the
cells with ``l < 0 < u``; elsewhere splitting at 0 is *worse* than the midpoint, on average twice as
loose as ``t*``, so 0 is no default). GELU's and sine's default relaxations follow the envelope at the
midpoint, which is continuous: no anchors.

Grids (:func:`default_spec`; ``--step`` overrides the step)
-----------------------------------------------------------
* sigmoid: ``[-8, 8]^2``, step 0.1 (sigmoid is flat to 3e-4 beyond 8);
* tanh: ``[-4, 4]^2``, step 0.05 (``tanh(x) = 2 sigmoid(2x) - 1``: the same resolution as sigmoid's);
* gelu: ``[-6, 6]^2``, step 0.1 (gelu is 0 / the identity to 1e-9 beyond 6);
* sin, cos: periodic (``J(l + 2 pi, u + 2 pi; p + 2 pi) = J(l, u; p)``): ``l`` in ``[-pi, pi]``,
  ``u`` in ``(l, l + 4 pi]`` (widths up to two periods), step ``2 pi / 63`` (about 0.1);
* exp: translation-invariant (``exp(x + c) = e^c exp(x)`` scales both lines and the area by ``e^c``,
  so ``t*`` depends on the width only): treated as periodic with period one step, widths up to 20,
  step 0.1.

Outside the grid the lookup falls back to a fixed sound rule (see :mod:`nlverify.verifier.lookup`).
Soundness never rests on a table: any ``p`` in ``(l, u)`` gives two valid children.

Files: one compressed ``.npz`` per activation with ``t`` quantised to ``uint16`` (``t = q / 65534``,
resolution 1.5e-5; cells with ``u_j <= l_i`` hold 0.5, the limit of ``t*`` for vanishing widths where
``f`` is locally quadratic) and the axes / build parameters as scalars.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from nlverify.bounds.relax import unary_relaxation

#: Relative margin: split points are kept in ``[l + T_MIN (u - l), u - T_MIN (u - l)]``.
T_MIN = 0.01
#: Coarse scan: candidates ``k / COARSE_CANDIDATES``, ``k = 1 .. COARSE_CANDIDATES - 1``.
COARSE_CANDIDATES = 16
#: Golden-section refinement steps (bracket ``2 / K`` shrinks by ``0.618^steps``: 1.2e-3 relative).
GOLDEN_STEPS = 10
#: Cells optimised per batch (bounds peak memory of the relaxations' temporaries).
CELLS_PER_CHUNK = 4096
#: Format version written to (and checked in) every table file.
TABLE_VERSION = 1
_QUANT = 65534.0    # even: 0.5 is exactly representable
_GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0


@dataclass(frozen=True)
class TableSpec:
    """A table's grid: ``l_i = lower_start + i * step`` (``i < n_lower``), likewise ``u_j``.

    ``period > 0`` declares ``J(l + period, u + period; p + period) = J(l, u; p)``: the lookup then
    shifts ``l`` into ``[lower_start, lower_start + period)`` before reading the table. ``anchors`` are
    points where the default relaxation jumps (module docstring, "Anchors"); a cell whose best split
    is anchor ``k`` records ``k + 1`` in the table's ``anchor`` array (0: the continuous ``t*``).
    """

    activation: str
    lower_start: float
    n_lower: int
    upper_start: float
    n_upper: int
    step: float
    period: float = 0.0
    anchors: tuple[float, ...] = ()

    def lower_axis(self) -> np.ndarray:
        return self.lower_start + self.step * np.arange(self.n_lower, dtype=np.float64)

    def upper_axis(self) -> np.ndarray:
        return self.upper_start + self.step * np.arange(self.n_upper, dtype=np.float64)


def square_spec(activation: str, radius: float, step: float, anchors: tuple[float, ...] = ()) -> TableSpec:
    """The grid ``{-R, -R + step, ..., R}^2`` (``step`` adjusted down to divide ``2R`` evenly)."""
    n = int(math.ceil(2.0 * radius / step - 1e-9))
    return TableSpec(activation, -radius, n + 1, -radius, n + 1, 2.0 * radius / n, anchors=anchors)


def periodic_spec(activation: str, period: float, max_width: float, step: float) -> TableSpec:
    """``l`` in ``[-period/2, period/2]``, ``u`` up to ``period/2 + max_width``; step divides ``period``."""
    n = max(1, int(math.ceil(period / step - 1e-9)))
    h = period / n
    m = int(math.ceil(max_width / h - 1e-9))
    return TableSpec(activation, -period / 2.0, n + 1, -period / 2.0, n + m + 1, h, period)


def translation_spec(activation: str, max_width: float, step: float) -> TableSpec:
    """For translation-invariant ``t*`` (exp): two rows ``l in {0, step}``, ``u - l`` up to ``max_width``."""
    m = int(math.ceil(max_width / step - 1e-9))
    return TableSpec(activation, 0.0, 2, 0.0, m + 2, step, step)


def default_spec(activation: str, step: float | None = None) -> TableSpec:
    """The shipped grid of ``activation`` (module docstring), optionally with another step."""
    if activation == "sigmoid":
        return square_spec("sigmoid", 8.0, step or 0.1, anchors=(0.0,))
    if activation == "tanh":
        return square_spec("tanh", 4.0, step or 0.05, anchors=(0.0,))
    if activation == "gelu":
        return square_spec("gelu", 6.0, step or 0.1)
    if activation in ("sin", "cos"):
        return periodic_spec(activation, 2.0 * math.pi, 4.0 * math.pi, step or 2.0 * math.pi / 63)
    if activation == "exp":
        return translation_spec("exp", 20.0, step or 0.1)
    raise KeyError(f"no branching-point table for activation '{activation}'")


#: Activations with a shipped table.
TABLE_ACTIVATIONS: tuple[str, ...] = ("sigmoid", "tanh", "gelu", "sin", "cos", "exp")


# -- the objective ---------------------------------------------------------------------------------

def relaxation_area(activation: str, lower: Tensor, upper: Tensor, **params: float) -> Tensor:
    """``A(a, b) = int_a^b (U - L) dx`` of the default relaxation, exactly (affine integrand)."""
    rel = unary_relaxation(activation, **params).relax(lower, upper)
    mid = 0.5 * (lower + upper)
    gap = (rel.upper_slope - rel.lower_slope) * mid + (rel.upper_intercept - rel.lower_intercept)
    return (upper - lower) * gap


def split_looseness(activation: str, lower: Tensor, upper: Tensor, point: Tensor, **params: float) -> Tensor:
    """``J(l, u; p) = A(l, p) + A(p, u)``; both children relaxed in one batched call."""
    lower, upper, point = torch.broadcast_tensors(lower, upper, point)
    area = relaxation_area(activation, torch.cat([lower.reshape(-1), point.reshape(-1)]),
                           torch.cat([point.reshape(-1), upper.reshape(-1)]), **params)
    n = lower.numel()
    return (area[:n] + area[n:]).reshape(lower.shape)


def _relative_looseness(activation: str, lower: Tensor, upper: Tensor, **params: float
                        ) -> Callable[[Tensor], Tensor]:
    """``t -> J(l, u; l + t (u - l))`` with ``t`` of shape ``(cells, k)``."""
    def objective(t: Tensor) -> Tensor:
        l, u = lower.unsqueeze(-1), upper.unsqueeze(-1)
        return split_looseness(activation, l, u, l + t * (u - l), **params)
    return objective


def optimal_relative_split(activation: str, lower: Tensor, upper: Tensor,
                           candidates: int = COARSE_CANDIDATES, golden_steps: int = GOLDEN_STEPS,
                           **params: float) -> tuple[Tensor, Tensor]:
    """``(t*, J*)`` per cell of 1-D ``lower < upper``: coarse scan then golden section (module docstring)."""
    objective = _relative_looseness(activation, lower, upper, **params)
    grid = torch.arange(1, candidates, dtype=lower.dtype, device=lower.device) / candidates
    values = objective(grid.expand(lower.numel(), -1))
    best_j, index = values.min(dim=1)
    best = grid[index]
    a = (best - 1.0 / candidates).clamp(min=T_MIN)
    b = (best + 1.0 / candidates).clamp(max=1.0 - T_MIN)
    x1, x2 = b - _GOLDEN * (b - a), a + _GOLDEN * (b - a)
    f = objective(torch.stack([x1, x2], dim=1))
    f1, f2 = f[:, 0], f[:, 1]
    for x, fx in ((x1, f1), (x2, f2)):
        improved = fx < best_j
        best, best_j = torch.where(improved, x, best), torch.where(improved, fx, best_j)
    for _ in range(golden_steps):
        left = f1 <= f2                      # the minimum is in [a, x2]: drop (x2, b]; else drop [a, x1)
        a, b = torch.where(left, a, x1), torch.where(left, x2, b)
        new_x = torch.where(left, b - _GOLDEN * (b - a), a + _GOLDEN * (b - a))
        new_f = objective(new_x.unsqueeze(1))[:, 0]
        x1, x2 = torch.where(left, new_x, x2), torch.where(left, x1, new_x)
        f1, f2 = torch.where(left, new_f, f2), torch.where(left, f1, new_f)
        improved = new_f < best_j
        best, best_j = torch.where(improved, new_x, best), torch.where(improved, new_f, best_j)
    return best, best_j


def best_anchor(spec: TableSpec, lower: Tensor, upper: Tensor, best_j: Tensor) -> tuple[Tensor, Tensor]:
    """``(code, J)``: code ``k + 1`` where splitting at anchor ``k`` (strictly inside the kept range
    ``[l + T_MIN w, u - T_MIN w]``) is at least as good as ``best_j`` (and every earlier anchor), else 0.

    Ties go to the anchor: a cell whose continuous optimum *is* the anchor (``[-a, a]`` for sigmoid)
    must say so, since a point merely near the anchor is far worse (module docstring, "Anchors")."""
    code = torch.zeros(lower.shape, dtype=torch.uint8)
    width = upper - lower
    for k, a in enumerate(spec.anchors):
        point = torch.full_like(lower, a)
        inside = (lower + T_MIN * width < point) & (point < upper - T_MIN * width)
        j = split_looseness(spec.activation, lower, upper, torch.where(inside, point, 0.5 * (lower + upper)))
        better = inside & (j <= best_j)
        code = torch.where(better, torch.full_like(code, k + 1), code)
        best_j = torch.where(better, j, best_j)
    return code, best_j


# -- building --------------------------------------------------------------------------------------

@dataclass
class BuiltTable:
    """A built table: ``t[i, j]`` relative split of cell ``(l_i, u_j)`` (0.5 where ``u_j <= l_i``)."""

    spec: TableSpec
    t: np.ndarray                 # float64, (n_lower, n_upper)
    anchor: np.ndarray            # uint8, (n_lower, n_upper): 0 or 1 + index of the anchor to split at
    valid: np.ndarray             # bool, u_j > l_i
    mean_reduction: float         # mean over valid cells of 1 - J(t*) / J(1/2)
    seconds: float


def build_table(spec: TableSpec, candidates: int = COARSE_CANDIDATES, golden_steps: int = GOLDEN_STEPS,
                chunk: int = CELLS_PER_CHUNK, progress: Callable[[int, int], None] | None = None) -> BuiltTable:
    """Optimise ``t*`` on every valid cell of ``spec`` (float64, CPU; chunks of ``chunk`` cells)."""
    start = time.perf_counter()
    lows, ups = np.meshgrid(spec.lower_axis(), spec.upper_axis(), indexing="ij")
    valid = ups > lows + 1e-9 * spec.step
    lower = torch.from_numpy(lows[valid])
    upper = torch.from_numpy(ups[valid])
    t_best = torch.empty_like(lower)
    anchor_code = torch.zeros(lower.shape, dtype=torch.uint8)
    reduction = torch.empty_like(lower)
    with torch.no_grad():
        for s in range(0, lower.numel(), chunk):
            l, u = lower[s:s + chunk], upper[s:s + chunk]
            t, j = optimal_relative_split(spec.activation, l, u, candidates, golden_steps)
            code, j = best_anchor(spec, l, u, j)
            mid = split_looseness(spec.activation, l, u, 0.5 * (l + u))
            t_best[s:s + chunk] = t
            anchor_code[s:s + chunk] = code
            reduction[s:s + chunk] = torch.where(mid > 0, 1.0 - j / mid, torch.zeros_like(mid))
            if progress is not None:
                progress(min(s + chunk, lower.numel()), lower.numel())
    table = np.full(lows.shape, 0.5)
    table[valid] = t_best.numpy()
    anchors = np.zeros(lows.shape, dtype=np.uint8)
    anchors[valid] = anchor_code.numpy()
    return BuiltTable(spec, table, anchors, valid, float(reduction.mean()), time.perf_counter() - start)


def save_table(built: BuiltTable, directory: Path) -> Path:
    """Write ``<directory>/<activation>.npz`` (compressed, ``t`` as uint16); returns the path."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{built.spec.activation}.npz"
    quantised = np.round(np.clip(built.t, 0.0, 1.0) * _QUANT).astype(np.uint16)
    meta = {k: np.asarray(v, dtype=np.float64 if k == "anchors" else None)
            for k, v in asdict(built.spec).items()}
    np.savez_compressed(path, t=quantised, anchor=built.anchor, version=np.asarray(TABLE_VERSION),
                        mean_reduction=np.asarray(built.mean_reduction), **meta)
    return path


def read_table_file(path: Path) -> tuple[TableSpec, np.ndarray, np.ndarray]:
    """``(spec, t, anchor)`` from a file written by :func:`save_table` (``t`` float32 in [0, 1])."""
    with np.load(path, allow_pickle=False) as data:
        if int(data["version"]) != TABLE_VERSION:
            raise ValueError(f"{path}: table version {int(data['version'])}, expected {TABLE_VERSION}")
        spec = TableSpec(activation=str(data["activation"]), lower_start=float(data["lower_start"]),
                         n_lower=int(data["n_lower"]), upper_start=float(data["upper_start"]),
                         n_upper=int(data["n_upper"]), step=float(data["step"]), period=float(data["period"]),
                         anchors=tuple(float(a) for a in data["anchors"]))
        t = data["t"].astype(np.float32) / np.float32(_QUANT)
        anchor = data["anchor"].astype(np.uint8)
    if t.shape != (spec.n_lower, spec.n_upper) or anchor.shape != t.shape:
        raise ValueError(f"{path}: table shape {t.shape} does not match its axes")
    if anchor.max(initial=0) > len(spec.anchors):
        raise ValueError(f"{path}: anchor index out of range")
    return spec, t, anchor


def coarsened(spec: TableSpec, factor: int) -> TableSpec:
    """Every ``factor``-th grid line of ``spec`` (same origin, same period): its cells are shipped cells."""
    return replace(spec, n_lower=(spec.n_lower - 1) // factor + 1, n_upper=(spec.n_upper - 1) // factor + 1,
                   step=spec.step * factor)

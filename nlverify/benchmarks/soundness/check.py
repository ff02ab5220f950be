"""Checking a planted counterexample three independent ways.

1. **onnxruntime, float32**: the exported file, fed ``float32(x*)``, violates the
   property with margin ``>= MIN_MARGIN``.
2. **torch, float64**: the same weights in float64 violate it with margin ``>= MIN_MARGIN``.
3. **interval arithmetic, float64**: on the L-inf ball ``||x - x*|| <= rho``
   (inside the box), interval bound propagation through the float64 torch
   modules proves ``y_j - y_c >= CERT_TOL`` everywhere, for the target class
   ``j``; the largest such ``rho`` on a halving grid is the *certified radius*.

The interval proof is plain float64 arithmetic without outward rounding: its
rounding error (~1e-13 relative here) is covered by requiring the lower bound
to exceed ``CERT_TOL`` rather than 0.
"""

from __future__ import annotations

from pathlib import Path
from typing import Union

import numpy as np
import torch
from torch import nn

from .models import GroupSort, MaxMin, Sin

__all__ = [
    "MIN_MARGIN",
    "CERT_TOL",
    "interval_bounds",
    "margin_lower_bounds",
    "certified_radius",
    "ort_outputs",
    "violation_margin",
]

MIN_MARGIN = 1e-3
CERT_TOL = 1e-9
_GELU_ARGMIN = -0.7517915241
_GELU_MIN = -0.16997120  # min over z of z * Phi(z), rounded down


def _gelu(z: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.gelu(z)


def _act_interval(module: nn.Module, lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Bounds of an activation's output over the box ``[lo, hi]`` (per unit, float64)."""
    if isinstance(module, (nn.ReLU, nn.LeakyReLU, nn.Sigmoid, nn.Tanh)):  # monotone
        return module(lo), module(hi)
    if isinstance(module, nn.GELU):
        # quasi-convex: decreasing up to the argmin, increasing after
        f_lo, f_hi = _gelu(lo), _gelu(hi)
        upper = torch.maximum(f_lo, f_hi)
        contains_min = (lo <= _GELU_ARGMIN) & (hi >= _GELU_ARGMIN)
        lower = torch.where(contains_min, torch.full_like(lo, _GELU_MIN), torch.minimum(f_lo, f_hi))
        return lower, upper
    if isinstance(module, Sin):
        f_lo, f_hi = torch.sin(lo), torch.sin(hi)
        lower, upper = torch.minimum(f_lo, f_hi), torch.maximum(f_lo, f_hi)
        two_pi = 2 * np.pi
        # a crest pi/2 + 2 pi k (trough -pi/2 + 2 pi k) inside [lo, hi] lifts the upper (lower) bound
        crest = torch.ceil((lo - np.pi / 2) / two_pi) * two_pi + np.pi / 2 <= hi
        trough = torch.ceil((lo + np.pi / 2) / two_pi) * two_pi - np.pi / 2 <= hi
        upper = torch.where(crest, torch.ones_like(upper), upper)
        lower = torch.where(trough, -torch.ones_like(lower), lower)
        return lower, upper
    if isinstance(module, (MaxMin, GroupSort)):
        # every output is an order statistic of its group: nondecreasing in each input
        return module(lo), module(hi)
    raise TypeError(f"no interval rule for {type(module).__name__}")


def interval_bounds(model: nn.Sequential, input_shape: tuple[int, ...], lower: np.ndarray, upper: np.ndarray,
                    final_rows: np.ndarray | None = None,
                    final_offsets: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Interval bounds of ``model`` (float64 modules) over the input box, flat arrays.

    With ``final_rows`` (R, classes), the bounds are of ``final_rows @ y +
    final_offsets``, folded into the last linear layer (tighter than bounding ``y``).
    """
    layers = list(model)
    lo = torch.as_tensor(np.asarray(lower, dtype=np.float64)).reshape(1, *input_shape)
    hi = torch.as_tensor(np.asarray(upper, dtype=np.float64)).reshape(1, *input_shape)
    with torch.no_grad():
        for index, layer in enumerate(layers):
            if isinstance(layer, (nn.Linear, nn.Conv2d)):
                weight, bias = layer.weight.double(), layer.bias.double()
                if index == len(layers) - 1 and final_rows is not None:
                    rows = torch.as_tensor(np.asarray(final_rows, dtype=np.float64))
                    weight = rows @ weight
                    offsets = np.zeros(rows.shape[0]) if final_offsets is None else final_offsets
                    bias = rows @ bias + torch.as_tensor(np.asarray(offsets, dtype=np.float64))
                mid, rad = (lo + hi) / 2, (hi - lo) / 2
                if isinstance(layer, nn.Linear):
                    mid, rad = mid @ weight.T + bias, rad @ weight.abs().T
                else:
                    conv = lambda t, w, b: torch.nn.functional.conv2d(t, w, b, layer.stride, layer.padding)  # noqa: E731
                    mid, rad = conv(mid, weight, bias), conv(rad, weight.abs(), None)
                lo, hi = mid - rad, mid + rad
            elif isinstance(layer, nn.Flatten):
                lo, hi = layer(lo), layer(hi)
            else:
                lo, hi = _act_interval(layer, lo, hi)
    return lo.reshape(-1).numpy(), hi.reshape(-1).numpy()


def margin_lower_bounds(model64: nn.Sequential, input_shape: tuple[int, ...], lower: np.ndarray, upper: np.ndarray,
                        label: int, classes: int) -> np.ndarray:
    """Lower bounds of ``y_label - y_j`` over the box for every class ``j`` (``inf`` at ``label``)."""
    rows = np.zeros((classes, classes))
    rows[:, label] += 1.0
    rows[np.arange(classes), np.arange(classes)] -= 1.0
    lo, _ = interval_bounds(model64, input_shape, lower, upper, rows)
    lo[label] = np.inf
    return lo


def certified_radius(model64: nn.Sequential, input_shape: tuple[int, ...], x_star: np.ndarray, lower: np.ndarray, upper: np.ndarray,
                     label: int, target: int, classes: int, start: float, halvings: int = 40) -> float:
    """Largest ``rho = start / 2^k`` such that interval arithmetic proves
    ``y_target - y_label >= CERT_TOL`` on the ball ``||x - x*||_inf <= rho``
    intersected with the box; 0.0 when none does."""
    rows = np.zeros((1, classes))
    rows[0, target], rows[0, label] = 1.0, -1.0
    rho = start
    for _ in range(halvings):
        lo_ball = np.maximum(x_star - rho, lower)
        hi_ball = np.minimum(x_star + rho, upper)
        lo, _ = interval_bounds(model64, input_shape, lo_ball, hi_ball, rows)
        if lo[0] >= CERT_TOL:
            return float(rho)
        rho /= 2
    return 0.0


def certify_plant(model64: nn.Sequential, input_shape: tuple[int, ...], x_star: np.ndarray, lower: np.ndarray,
                  upper: np.ndarray, label: int, target: int, classes: int, planted: bool,
                  start_radius: float) -> tuple[float, float]:
    """The float64 checks every generator applies at ``x*`` before writing an instance: ``(margin,
    certified radius)``. For a planted counterexample the margin must be ``>= MIN_MARGIN`` and some
    ball around ``x*`` (at most ``start_radius``, clipped to the box) must be proved violated by
    interval arithmetic, else ``RuntimeError``; a clean (decoy) instance gets radius 0."""
    with torch.no_grad():
        y64 = model64(torch.as_tensor(x_star, dtype=torch.float64).reshape(1, *input_shape))[0].numpy()
    margin = violation_margin(y64, label)
    if not planted:
        return margin, 0.0
    if margin < MIN_MARGIN:
        raise RuntimeError(f"float64 margin at x* is {margin:.3g} < {MIN_MARGIN}")
    start = min(start_radius, float(np.min(np.minimum(x_star - lower, upper - x_star))))
    radius = certified_radius(model64, input_shape, x_star, lower, upper, label, target, classes, start)
    if radius <= 0.0:
        raise RuntimeError("interval arithmetic could not certify any ball around x*")
    return margin, radius


def ort_outputs(onnx_model: Union[str, Path, bytes], x: np.ndarray) -> np.ndarray:
    """Outputs (flat float64) of an ONNX model on the flat input ``x`` (fed as float32, batch 1)."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = 1
    model = onnx_model if isinstance(onnx_model, bytes) else str(onnx_model)
    session = onnxruntime.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    spec = session.get_inputs()[0]
    shape = [d if isinstance(d, int) and d > 0 else 1 for d in spec.shape]
    feed = np.asarray(x, dtype=np.float64).astype(np.float32).reshape(shape)
    return np.asarray(session.run(None, {spec.name: feed})[0], dtype=np.float64).reshape(-1)


def violation_margin(y: np.ndarray, label: int) -> float:
    """``max_{j != label} y_j - y_label``: >= 0 iff ``label`` is not the (unique) argmax."""
    y = np.asarray(y, dtype=np.float64).reshape(-1)
    others = np.delete(y, label)
    return float(others.max() - y[label])

"""Activation descriptors for Lipschitz SDPs, and their sound slope ranges.

LipSDP never sees an activation function, only a *class* of functions it belongs to:

* ``slope`` activations act elementwise and are slope-restricted on ``[alpha, beta]``::

      alpha <= (phi(a) - phi(b)) / (a - b) <= beta      for all a != b,

  which holds iff ``alpha <= phi' <= beta`` wherever ``phi`` is differentiable (mean-value
  theorem; for piecewise-smooth ``phi`` the one-sided derivatives). So a slope range is the
  range of the derivative, and it must be an *enclosure*: a wider interval is sound, a
  narrower one is not.
* ``groupsort`` activations sort groups of ``group_size`` neurons in descending order; MaxMin is
  ``group_size == 2``. ``grouping`` says which neurons form a group (:func:`group_indices`):
  ``"consecutive"`` (``(2p, 2p+1) -> (max, min)``, the default) or ``"halves"`` (group p is
  ``p, p + n/g, ..., p + (g-1) n/g``; for MaxMin, max of the two halves in the first half). They
  are not elementwise, see :mod:`nlverify.sdp.maxmin`.
* ``householder`` activations (Singla et al.): per group of ``group_size`` entries with a unit
  vector ``v``, ``z -> z`` if ``v^T z > 0`` else ``(I - 2 v v^T) z``; ``reflection`` holds one v per
  group (or one shared v), see :mod:`nlverify.sdp.householder`.

Derivative ranges of smooth activations whose extrema are not available in closed form
(GELU, SiLU) are computed by :func:`sound_derivative_range`: dense evaluation on a grid of
spacing ``h`` over ``[-R, R]`` widened by ``sup|phi''| * h / 2`` (between two grid points the
derivative differs from the nearer grid value by at most that much), plus an analytic
enclosure of the derivative on the tails ``|x| > R`` and an absolute allowance for rounding
in the evaluation of ``phi'``.

Note: GELU' has its extrema at ``x = +-sqrt(2)`` (GELU''(x) = pdf(x) (2 - x^2)), giving the
exact range ``[Phi(-sqrt2) - sqrt2 pdf(sqrt2), Phi(sqrt2) + sqrt2 pdf(sqrt2)]
= [-0.128904, 1.128904]``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable

import numpy as np
import torch
from scipy.special import expit, ndtr
from torch import nn

# Absolute allowance for the rounding error of evaluating phi' in float64 (values are O(1)).
DERIVATIVE_EVAL_TOLERANCE = 1e-12


@dataclass(frozen=True)
class ActivationSpec:
    """What an SDP needs to know about one activation layer.

    ``kind`` is ``"slope"`` (elementwise, derivative in ``[alpha, beta]``) or ``"groupsort"``
    (sort consecutive groups of ``group_size`` entries descending; MaxMin is group size 2).
    ``name`` is informational (``"relu"``, ``"gelu"``, ``"maxmin"`` ...).
    """

    kind: str
    name: str
    alpha: float = 0.0
    beta: float = 1.0
    group_size: int = 2
    grouping: str = "consecutive"
    reflection: tuple[tuple[float, ...], ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in ("slope", "groupsort", "householder"):
            raise ValueError(f"unknown activation kind {self.kind!r}")
        if self.kind == "slope" and not self.alpha <= self.beta:
            raise ValueError(f"slope range [{self.alpha}, {self.beta}] is empty")
        if self.kind != "slope" and self.group_size < 2:
            raise ValueError("group_size must be >= 2")
        if self.grouping not in GROUPINGS:
            raise ValueError(f"grouping must be one of {GROUPINGS}, got {self.grouping!r}")
        if self.kind == "householder" and (not self.reflection
                                           or any(len(v) != self.group_size for v in self.reflection)):
            raise ValueError("householder needs reflection vectors of length group_size")

    @property
    def is_maxmin(self) -> bool:
        return self.kind == "groupsort" and self.group_size == 2

    @property
    def max_abs_slope(self) -> float:
        """Lipschitz constant of the activation itself (1 for sorting and Householder)."""
        return max(abs(self.alpha), abs(self.beta)) if self.kind == "slope" else 1.0

    def to_dict(self) -> dict:
        return {"kind": self.kind, "name": self.name, "alpha": self.alpha, "beta": self.beta,
                "group_size": self.group_size, "grouping": self.grouping,
                "reflection": [list(v) for v in self.reflection]}

    @staticmethod
    def from_dict(d: dict) -> "ActivationSpec":
        return ActivationSpec(d["kind"], d["name"], float(d["alpha"]), float(d["beta"]),
                              int(d["group_size"]), d.get("grouping", "consecutive"),
                              tuple(tuple(float(x) for x in v) for v in d.get("reflection", ())))


GROUPINGS = ("consecutive", "halves")


def group_indices(size: int, group_size: int, grouping: str = "consecutive") -> np.ndarray:
    """``(size / g, g)`` integer array: row p lists the neurons of group p in sorting order."""
    if size % group_size:
        raise ValueError(f"{size} neurons are not a multiple of group size {group_size}")
    idx = np.arange(size)
    if grouping == "consecutive":
        return idx.reshape(size // group_size, group_size)
    if grouping == "halves":
        return idx.reshape(group_size, size // group_size).T.copy()
    raise ValueError(f"grouping must be one of {GROUPINGS}, got {grouping!r}")


def slope(name: str, alpha: float, beta: float) -> ActivationSpec:
    return ActivationSpec("slope", name, float(alpha), float(beta))


def maxmin(grouping: str = "consecutive") -> ActivationSpec:
    return ActivationSpec("groupsort", "maxmin", group_size=2, grouping=grouping)


def groupsort(group_size: int, grouping: str = "consecutive") -> ActivationSpec:
    return ActivationSpec("groupsort", f"groupsort{group_size}", group_size=group_size, grouping=grouping)


RELU = slope("relu", 0.0, 1.0)
TANH = slope("tanh", 0.0, 1.0)       # tanh' = 1 - tanh^2 in (0, 1]
SIGMOID = slope("sigmoid", 0.0, 0.25)  # s' = s (1 - s) in (0, 1/4]
SIN = slope("sin", -1.0, 1.0)        # sin' = cos
SOFTPLUS = slope("softplus", 0.0, 1.0)  # softplus' = sigmoid in (0, 1)


def leaky_relu(negative_slope: float) -> ActivationSpec:
    a = float(negative_slope)
    return slope("leaky_relu", min(a, 1.0), max(a, 1.0))


# --------------------------------------------------------------------------- sound ranges


def sound_derivative_range(
    derivative: Callable[[np.ndarray], np.ndarray],
    second_derivative_bound: float,
    tail_range: tuple[float, float],
    radius: float = 20.0,
    spacing: float = 1e-4,
) -> tuple[float, float]:
    """An interval provably containing ``phi'(x)`` for every real ``x``.

    On ``[-radius, radius]``: every x lies within ``spacing/2`` of a grid point g, and
    ``|phi'(x) - phi'(g)| <= sup|phi''| * spacing / 2``; so the grid extrema widened by that
    margin (and by :data:`DERIVATIVE_EVAL_TOLERANCE` for evaluation rounding) enclose phi' there.
    ``tail_range`` must enclose ``phi'(x)`` for ``|x| >= radius`` (an analytic argument per
    function). ``second_derivative_bound`` must be a proven bound on ``sup |phi''|``.
    """
    n = int(math.ceil(2 * radius / spacing)) + 1
    grid = np.linspace(-radius, radius, n)
    h = grid[1] - grid[0]
    values = derivative(grid)
    margin = second_derivative_bound * h / 2 + DERIVATIVE_EVAL_TOLERANCE
    low = min(float(values.min()) - margin, float(tail_range[0]))
    high = max(float(values.max()) + margin, float(tail_range[1]))
    return low, high


def gelu_derivative(x: np.ndarray) -> np.ndarray:
    """GELU(x) = x Phi(x);  GELU'(x) = Phi(x) + x pdf(x)."""
    return ndtr(x) + x * np.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)


def silu_derivative(x: np.ndarray) -> np.ndarray:
    """SiLU(x) = x s(x);  SiLU'(x) = s(x) (1 + x (1 - s(x)))."""
    s = expit(x)
    return s * (1 + x * (1 - s))


@lru_cache(maxsize=None)
def gelu_slope_range() -> tuple[float, float]:
    """Sound enclosure of GELU' (exact range ``[-0.128904, 1.128904]``).

    ``GELU''(x) = pdf(x) (2 - x^2)``; its derivative ``pdf(x) x (x^2 - 4)`` vanishes at 0, +-2, so
    ``sup|GELU''| = max(2 pdf(0), 2 pdf(2)) = 2/sqrt(2 pi) < 0.7979``. Tails, R = 20: for x >= R,
    GELU' decreases (GELU'' < 0 for x > sqrt2) towards 1, so it lies in [1, GELU'(R)] with
    GELU'(R) - 1 < 1e-80; for x <= -R it lies in [GELU'(-R), 0] with |GELU'(-R)| < 1e-80.
    """
    return sound_derivative_range(gelu_derivative, 0.7979, (0.0, 1.0))


@lru_cache(maxsize=None)
def silu_slope_range() -> tuple[float, float]:
    """Sound enclosure of SiLU' (exact range about ``[-0.0998, 1.0998]``).

    ``SiLU''(x) = s'(x) (2 - x tanh(x/2))``. For |x| <= 2: s' <= 1/4 and |2 - x tanh(x/2)| <= 2, so
    |SiLU''| <= 1/2; for |x| > 2: s'(x) <= exp(-|x|) and |2 - x tanh(x/2)| <= 2 + |x|, so
    |SiLU''| <= (2 + |x|) exp(-|x|) <= 4 exp(-2) < 0.55. Hence sup|SiLU''| < 0.6. Tails, R = 20:
    |SiLU'(x) - [x > 0]| <= (1 + |x|) exp(-|x|) < 1e-7, enclosed by (-1e-7, 1 + 1e-7).
    """
    return sound_derivative_range(silu_derivative, 0.6, (-1e-7, 1.0 + 1e-7))


def gelu() -> ActivationSpec:
    a, b = gelu_slope_range()
    return slope("gelu", a, b)


def silu() -> ActivationSpec:
    a, b = silu_slope_range()
    return slope("silu", a, b)


# --------------------------------------------------------------------------- torch modules


class GroupSort(nn.Module):
    """Sort groups of ``group_size`` entries of the last axis in descending order; ``grouping``
    ``"consecutive"`` (entries ``gp .. gp+g-1``) or ``"halves"`` (entries ``p + k n/g``)."""

    def __init__(self, group_size: int = 2, grouping: str = "consecutive") -> None:
        super().__init__()
        if grouping not in GROUPINGS:
            raise ValueError(f"grouping must be one of {GROUPINGS}, got {grouping!r}")
        self.group_size, self.grouping = group_size, grouping

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g, n = self.group_size, x.shape[-1]
        if self.grouping == "consecutive":
            groups = x.reshape(*x.shape[:-1], n // g, g)
            return torch.sort(groups, dim=-1, descending=True).values.reshape(x.shape)
        groups = x.reshape(*x.shape[:-1], g, n // g)
        return torch.sort(groups, dim=-2, descending=True).values.reshape(x.shape)


class MaxMin(GroupSort):
    """MaxMin: GroupSort with group size 2 (consecutive pairs ``(x_{2p}, x_{2p+1}) -> (max, min)``
    by default)."""

    def __init__(self, grouping: str = "consecutive") -> None:
        super().__init__(2, grouping)


class Sin(nn.Module):
    """Elementwise sine (slope range [-1, 1])."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sin(x)


def spec_for_module(module: nn.Module) -> ActivationSpec | None:
    """The descriptor of an activation module, or None when the module is not an activation."""
    if isinstance(module, nn.ReLU):
        return RELU
    if isinstance(module, nn.LeakyReLU):
        return leaky_relu(module.negative_slope)
    if isinstance(module, nn.Tanh):
        return TANH
    if isinstance(module, nn.Sigmoid):
        return SIGMOID
    if isinstance(module, nn.Softplus):
        return SOFTPLUS  # softplus_beta' = sigmoid(beta x) in (0, 1) for every beta > 0
    if isinstance(module, nn.GELU):
        if module.approximate != "none":
            raise ValueError("GELU(approximate='tanh') is not supported; use the exact GELU")
        return gelu()
    if isinstance(module, nn.SiLU):
        return silu()
    if isinstance(module, Sin):
        return SIN
    if isinstance(module, GroupSort):  # MaxMin included
        g, grouping = module.group_size, module.grouping
        return maxmin(grouping) if g == 2 else groupsort(g, grouping)
    if hasattr(module, "activation_spec"):  # e.g. nlverify.sdp.householder.Householder
        return module.activation_spec()
    return None


def module_for_spec(spec: ActivationSpec) -> nn.Module:
    """A torch module realising ``spec`` (used to rebuild networks read from weight files)."""
    table: dict[str, Callable[[], nn.Module]] = {
        "relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "gelu": nn.GELU,
        "silu": nn.SiLU, "sin": Sin, "softplus": nn.Softplus,
    }
    if spec.name in table:
        return table[spec.name]()
    if spec.name == "leaky_relu":
        return nn.LeakyReLU(spec.alpha if spec.beta == 1.0 else spec.beta)
    if spec.kind == "groupsort":
        return MaxMin(spec.grouping) if spec.group_size == 2 else GroupSort(spec.group_size, spec.grouping)
    if spec.kind == "householder":
        from .householder import Householder
        return Householder.from_spec(spec)
    raise ValueError(f"no torch module for activation {spec.name!r}")

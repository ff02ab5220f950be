r"""The planted counterexample: a steep "needle" branch built from the model's own activation.

A planted model is a base network ``f`` that is robust on the input box ``B``
(its class-``c`` logit margin is certified positive on ``B`` by interval
arithmetic), widened by a parallel branch ``g`` -- the needle -- whose units sit
in the same hidden layers with the same activation (block-diagonal weights,
units shuffled), and whose scalar output is added to one wrong logit ``j``::

    y(x) = f(x) + e_j * H * (g(x) - g_ref)

``g`` is a bump: ``g(x*) = max g`` at a random interior point ``x*`` of ``B``,
``g = g_ref`` (up to ~1e-9) outside a tiny neighbourhood ``N`` of ``x*``, with
zero (or negligible, oscillating) gradient outside ``N``. The height ``H`` is
set from the base margin ``m* = f_c(x*) - f_j(x*)``:

* planted: ``H (g(x*) - g_ref) = m* + tau``, so ``y_j(x*) - y_c(x*) = tau > 0``;
* decoy ("clean"): ``H (g(x*) - g_ref) = (1 - gamma) m*``: the same
  architecture, a needle that does not reach.

All needle coordinates are measured in *needle units*
``u_i = K_i (v_i - v_i*)`` where ``v`` is the needle's view of the input (``x``
itself for an MLP; for a CNN the pass-through channels of the conv layer, a
monotone per-pixel map of ``x``) and ``K_i = 1 / (w * eps * v_i'(x_i*))``, so
``|u_i| = 1`` is a fraction ``w`` (:data:`WIDTH`) of the box half-width.

Bumps per activation family (``s`` = sigmoid, ``r`` = ReLU):

* **ReLU family** (relu, leaky_relu, gelu, maxmin, groupsort) -- an L1
  pyramid, exact in ReLU arithmetic::

      layer A:  h = [r(u), r(-u)]                  (|u_i| = r(u_i) + r(-u_i))
      layer B:  p = r(1 - sum_i |u_i|)             (support: ||u||_1 < 1)
      layer C+: p -> r(p) = p                      (pass-through, p >= 0)

  Each ``r`` is emulated with the model's activation ``a``:
  relu: ``a``; leaky (slope al): ``r(z) = (a(z) + al a(-z)) / (1 - al^2)``;
  gelu: ``r(z) ~= a(S z) / S`` (error <= 0.17/S, exponentially small away
  from 0; S = :data:`GELU_SHARPNESS`); maxmin: the max of the pair ``(z, 0)``;
  groupsort: the largest of the group ``(z, 0, 0, 0)``.

* **S-shaped** (sigmoid, tanh; ``tanh(z/2) = 2 s(z) - 1`` so both give ``s``)::

      layer A:  w_i = s(k (u_i + 1)) - s(k (u_i - 1))    (a window, ~1 on |u_i| < 1/2)
      layer B:  q = s(k2 (sum_i w_i - n + 1/2))          (AND over all n coordinates)
      layer C+: q -> s(k3 (q - 1/2))                    (re-sharpened step)

* **sin** -- random Fourier features (a random approximation of a Gaussian
  kernel centred at ``u = 0``, non-separable across coordinates)::

      layer A:  c_m = sin(omega_m . u + pi/2) = cos(omega_m . u),  m = 1..M
      layer B:  y = sin(beta (sum_m c_m - (1 - gamma_s) M))     (monotone: |arg| <= pi/2)
      layer C+: y -> sin(pi/2 y)                                (monotone sharpening)

  ``sum_m c_m = M`` only at ``u = 0`` (near-returns of M >> n random
  frequencies are astronomically rare, and the attack would find them).

Everything is expressed as :class:`UnitLayer` s -- an affine map from the
needle's logical values to the actual pre-activation units, and an affine
read-out from the activated units back to logical values -- so a needle layer
is ``act(pre(v))`` and the next layer's weights are ``pre_next @ read``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Union

import numpy as np
import torch

from .models import GROUP_SIZE, LEAKY_SLOPE, CNNWeights, MLPWeights, make_activation

__all__ = [
    "WIDTH",
    "GELU_SHARPNESS",
    "UnitLayer",
    "relu_units",
    "step_units",
    "sin_units",
    "passthrough_units",
    "needle_network",
    "merge",
    "shuffle_units",
]

WIDTH = 0.01  # |u_i| = 1 is this fraction of the box half-width
GELU_SHARPNESS = 100.0
STEP_SHARPNESS = (6.0, 12.0, 12.0)  # k, k2, k3 of the S-shaped needle
SIN_GAMMA = 0.15  # the sin needle's threshold: sum_m c_m >= (1 - gamma) M
SIN_OMEGA_STD = 1.5

RELU_FAMILY = ("relu", "leaky_relu", "gelu", "maxmin", "groupsort")
STEP_FAMILY = ("sigmoid", "tanh")

Weights = Union[MLPWeights, CNNWeights]


@dataclass
class UnitLayer:
    """One hidden layer of the needle: ``out = read_A @ act(pre_A @ v + pre_a) + read_a``."""

    pre_A: np.ndarray  # (units, n_in)
    pre_a: np.ndarray  # (units,)
    read_A: np.ndarray  # (n_out, units)
    read_a: np.ndarray  # (n_out,)

    @property
    def units(self) -> int:
        return self.pre_A.shape[0]

    def evaluate(self, activation: str, v: np.ndarray) -> np.ndarray:
        """Logical outputs for logical inputs ``v`` of shape (N, n_in), in float64."""
        z = torch.as_tensor(np.atleast_2d(v) @ self.pre_A.T + self.pre_a, dtype=torch.float64)
        h = make_activation(activation, (self.units,))(z).numpy()
        return h @ self.read_A.T + self.read_a


def relu_units(activation: str, A: np.ndarray, a: np.ndarray) -> UnitLayer:
    """Units computing ``relu(A v + a)`` (m values) with ``activation`` (see module doc)."""
    m = A.shape[0]
    eye = np.eye(m)
    if activation == "relu":
        return UnitLayer(A, a, eye, np.zeros(m))
    if activation == "leaky_relu":
        al = LEAKY_SLOPE
        read = np.hstack([eye, al * eye]) / (1.0 - al * al)
        return UnitLayer(np.vstack([A, -A]), np.concatenate([a, -a]), read, np.zeros(m))
    if activation == "gelu":
        s = GELU_SHARPNESS
        return UnitLayer(s * A, s * a, eye / s, np.zeros(m))
    if activation in ("maxmin", "groupsort"):
        g = GROUP_SIZE[activation]
        pre_A = np.zeros((g * m, A.shape[1]))
        pre_a = np.zeros(g * m)
        pre_A[0::g], pre_a[0::g] = A, a  # (z, 0[, 0, 0]) per group
        read = np.zeros((m, g * m))
        top = 0 if activation == "maxmin" else g - 1  # where the group's max lands
        read[np.arange(m), g * np.arange(m) + top] = 1.0
        return UnitLayer(pre_A, pre_a, read, np.zeros(m))
    raise ValueError(f"no ReLU emulation for activation {activation!r}")


def step_units(activation: str, A: np.ndarray, a: np.ndarray) -> UnitLayer:
    """Units computing the logistic ``s(A v + a)`` with sigmoid, or tanh via ``s(z) = (tanh(z/2) + 1)/2``."""
    m = A.shape[0]
    if activation == "sigmoid":
        return UnitLayer(A, a, np.eye(m), np.zeros(m))
    if activation == "tanh":
        return UnitLayer(A / 2.0, a / 2.0, np.eye(m) / 2.0, np.full(m, 0.5))
    raise ValueError(f"no logistic step for activation {activation!r}")


def sin_units(A: np.ndarray, a: np.ndarray) -> UnitLayer:
    """Units computing ``sin(A v + a)``."""
    return UnitLayer(A, a, np.eye(A.shape[0]), np.zeros(A.shape[0]))


def passthrough_units(activation: str, lower: float) -> UnitLayer:
    """Per-pixel pass-through of one input channel (used by the CNN's conv layer).

    ReLU family: ``v = r(x + s) - s`` with ``x + s >= 1`` on the box: exactly ``x``.
    Logistic: ``v = s(4 x - 2)``. sin: ``v = sin(x - 1/2)``. The latter two are
    monotone on the input range (inputs are near [0, 1]); the needle units then
    measure distances in ``v`` with the local slope ``v'(x*)`` divided out.
    """
    one = np.ones((1, 1))
    if activation in RELU_FAMILY:
        shift = 1.0 - lower
        layer = relu_units(activation, one, np.array([shift]))
        layer.read_a = layer.read_a - shift
        return layer
    if activation in STEP_FAMILY:
        return step_units(activation, 4.0 * one, np.array([-2.0]))
    if activation == "sin":
        return sin_units(one, np.array([-0.5]))
    raise ValueError(f"unknown activation {activation!r}")


def _core_layers(activation: str, v_star: np.ndarray, scale: np.ndarray, depth: int,
                 rng: np.random.Generator) -> list[UnitLayer]:
    """The bump's ``depth`` (>= 2) layers over logical inputs ``v`` with ``u = scale * (v - v_star)``."""
    n = v_star.size
    U = np.diag(scale)  # u = U v + u0
    u0 = -scale * v_star
    layers: list[UnitLayer] = []
    if activation in RELU_FAMILY:
        layers.append(relu_units(activation, np.vstack([U, -U]), np.concatenate([u0, -u0])))
        layers.append(relu_units(activation, -np.ones((1, 2 * n)), np.ones(1)))
        post = lambda: relu_units(activation, np.ones((1, 1)), np.zeros(1))  # noqa: E731
    elif activation in STEP_FAMILY:
        k, k2, k3 = STEP_SHARPNESS
        layers.append(step_units(activation, np.vstack([k * U, k * U]), np.concatenate([k * (u0 + 1), k * (u0 - 1)])))
        and_row = k2 * np.concatenate([np.ones(n), -np.ones(n)])[None, :]
        layers.append(step_units(activation, and_row, np.array([-k2 * (n - 0.5)])))
        post = lambda: step_units(activation, np.array([[k3]]), np.array([-k3 / 2]))  # noqa: E731
    elif activation == "sin":
        M = max(64, 8 * n)
        omega = rng.normal(0.0, SIN_OMEGA_STD, size=(M, n))
        layers.append(sin_units(omega @ U, omega @ u0 + math.pi / 2))
        threshold = (1.0 - SIN_GAMMA) * M
        beta = math.pi / (2.0 * (threshold + M))  # |beta (S - threshold)| <= pi/2 for S in [-M, M]
        layers.append(sin_units(beta * np.ones((1, M)), np.array([-beta * threshold])))
        post = lambda: sin_units(np.array([[math.pi / 2]]), np.zeros(1))  # noqa: E731
    else:
        raise ValueError(f"unknown activation {activation!r}")
    while len(layers) < depth:
        layers.append(post())
    return layers


def _compose(prev: UnitLayer | None, layer: UnitLayer) -> tuple[np.ndarray, np.ndarray]:
    """Actual weights of ``layer`` reading the activated units of ``prev`` (or the raw input)."""
    if prev is None:
        return layer.pre_A, layer.pre_a
    return layer.pre_A @ prev.read_A, layer.pre_a + layer.pre_A @ prev.read_a


def needle_network(activation: str, x_star: np.ndarray, half_width: np.ndarray, lower: np.ndarray,
                   structure: Weights, rng: np.random.Generator, width: float = WIDTH) -> Weights:
    """The needle branch as a stand-alone network with one output ``g`` (see module doc).

    ``structure`` is the base network whose depth (and, for a CNN, image shape)
    the needle matches; ``x_star`` the flat planted point, ``half_width`` the
    flat box half-widths (the needle's size is ``width * half_width``),
    ``lower`` the flat box lower bounds.
    """
    x_star = np.asarray(x_star, dtype=np.float64).reshape(-1)
    scale_x = 1.0 / (width * np.asarray(half_width, dtype=np.float64).reshape(-1))
    if isinstance(structure, MLPWeights):
        core = _core_layers(activation, x_star, scale_x, len(structure.hidden), rng)
        hidden, prev = [], None
        for layer in core:
            hidden.append(_compose(prev, layer))
            prev = layer
        return MLPWeights(activation, hidden, (prev.read_A, prev.read_a))
    channels, height, width_px = structure.image_shape
    pixels = height * width_px
    passthrough = passthrough_units(activation, float(np.min(lower)))
    per = passthrough.units  # needle conv channels per input channel
    kernel = np.zeros((channels * per, channels, 3, 3))
    bias = np.zeros(channels * per)
    for ci in range(channels):
        kernel[ci * per:(ci + 1) * per, ci, 1, 1] = passthrough.pre_A[:, 0]
        bias[ci * per:(ci + 1) * per] = passthrough.pre_a
    # Logical v (flat, (C, H, W) order) from the flattened conv outputs ((C*per, H, W) order).
    read_A = np.zeros((channels * pixels, channels * per * pixels))
    for ci in range(channels):
        for k in range(per):
            read_A[ci * pixels:(ci + 1) * pixels, (ci * per + k) * pixels:(ci * per + k + 1) * pixels] = \
                passthrough.read_A[0, k] * np.eye(pixels)
    read = UnitLayer(np.zeros((0, 0)), np.zeros(0), read_A, np.full(channels * pixels, passthrough.read_a[0]))
    v_of = lambda x: passthrough.evaluate(activation, np.asarray(x).reshape(-1, 1)).reshape(-1)  # noqa: E731
    v_star = v_of(x_star)
    step = 1e-6
    slope = (v_of(x_star + step) - v_of(x_star - step)) / (2 * step)
    core = _core_layers(activation, v_star, scale_x / slope, len(structure.hidden), rng)
    hidden, prev = [], read
    for layer in core:
        hidden.append(_compose(prev, layer))
        prev = layer
    return CNNWeights(activation, structure.image_shape, (kernel, bias), hidden, (prev.read_A, prev.read_a))


def merge(base: Weights, needle: Weights, target: int, height: float, offset: float) -> Weights:
    """``y = f(x) + e_target * height * (g(x) - offset)``: the needle's units appended to
    every hidden layer of ``base`` (block-diagonal weights), its output into row ``target``."""
    def block(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        out = np.zeros((a.shape[0] + b.shape[0], a.shape[1] + b.shape[1]))
        out[:a.shape[0], :a.shape[1]] = a
        out[a.shape[0]:, a.shape[1]:] = b
        return out

    hidden = []
    for index, ((wb, bb), (wn, bn)) in enumerate(zip(base.hidden, needle.hidden)):
        if index == 0 and isinstance(base, MLPWeights):
            weight = np.vstack([wb, wn])  # both read the input
        else:
            weight = block(wb, wn)
        hidden.append((weight, np.concatenate([bb, bn])))
    (wo, bo), (wg, bg) = base.out, needle.out
    out_w = np.hstack([wo, np.zeros((wo.shape[0], wg.shape[1]))])
    out_w[target, wo.shape[1]:] = height * wg[0]
    out_b = bo.copy()
    out_b[target] += height * (bg[0] - offset)
    if isinstance(base, MLPWeights):
        return MLPWeights(base.activation, hidden, (out_w, out_b))
    conv = (np.concatenate([base.conv[0], needle.conv[0]]), np.concatenate([base.conv[1], needle.conv[1]]))
    return CNNWeights(base.activation, base.image_shape, conv, hidden, (out_w, out_b))


def _group_permutation(units: int, group: int, rng: np.random.Generator) -> np.ndarray:
    order = rng.permutation(units // group)
    return (order[:, None] * group + np.arange(group)[None, :]).reshape(-1)


def shuffle_units(weights: Weights, rng: np.random.Generator) -> Weights:
    """The same function with the units of every hidden layer permuted (whole
    activation groups at a time), so the needle's units are not at the end."""
    group = GROUP_SIZE[weights.activation]
    hidden = [(w.copy(), b.copy()) for w, b in weights.hidden]
    out_w, out_b = weights.out[0].copy(), weights.out[1].copy()
    conv = None
    if isinstance(weights, CNNWeights):
        kernel, bias = weights.conv
        perm = _group_permutation(kernel.shape[0], group, rng)
        conv = (kernel[perm], bias[perm])
        pixels = weights.image_shape[1] * weights.image_shape[2]
        columns = (perm[:, None] * pixels + np.arange(pixels)[None, :]).reshape(-1)
        hidden[0] = (hidden[0][0][:, columns], hidden[0][1])
    for index in range(len(hidden)):
        w, b = hidden[index]
        perm = _group_permutation(w.shape[0], group, rng)
        hidden[index] = (w[perm], b[perm])
        if index + 1 < len(hidden):
            hidden[index + 1] = (hidden[index + 1][0][:, perm], hidden[index + 1][1])
        else:
            out_w = out_w[:, perm]
    if isinstance(weights, MLPWeights):
        return MLPWeights(weights.activation, hidden, (out_w, out_b))
    return CNNWeights(weights.activation, weights.image_shape, conv, hidden, (out_w, out_b))

"""The network as LipSDP sees it: a chain of weight matrices with activations in between.

    x_0 = input (flattened),   x_k = phi_k(W_k x_{k-1} + b_k)  (k = 1..K-1),   y = W_K x_{K-1} + b_K

Biases never enter a Lipschitz SDP (differences cancel them), so every bound computed from a
:class:`LipNetwork` holds for *all* biases; they are kept only to rebuild the original function
for sampled lower bounds.

Sources: :func:`from_torch` (an ``nn.Sequential`` of affine modules and activations; each maximal
run of affine modules -- Linear, Conv1d/2d, eval-mode BatchNorm, Flatten, AvgPool, Dropout,
Identity -- is collapsed into one dense matrix by evaluating it on the unit basis in float64),
:func:`from_weights` and :func:`from_mat`. A later adapter from ``nlverify.graph`` only needs to
produce the same ``weights`` / ``activations`` lists.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from . import activations as act
from .activations import ActivationSpec

AFFINE_MODULES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.BatchNorm1d, nn.BatchNorm2d, nn.Flatten,
                  nn.Identity, nn.Dropout, nn.AvgPool1d, nn.AvgPool2d, nn.Unflatten)

# Largest input size for which an affine run (e.g. a convolution) is unrolled to a dense matrix.
MAX_UNROLL_INPUTS = 20_000


@dataclass
class LipNetwork:
    """Weights ``W_1..W_K`` (float64, ``W_k`` of shape ``(n_k, n_{k-1})``) and the ``K-1``
    activations between them. ``biases`` (optional, same length as ``weights``) and
    ``input_shape`` only serve to rebuild the function (:meth:`to_torch`)."""

    weights: list[np.ndarray]
    activations: list[ActivationSpec]
    biases: list[np.ndarray] | None = None
    input_shape: tuple[int, ...] = field(default=())

    def __post_init__(self) -> None:
        self.weights = [np.asarray(w, dtype=np.float64) for w in self.weights]
        if not self.input_shape:
            self.input_shape = (self.weights[0].shape[1],)
        validate(self)

    @property
    def input_dim(self) -> int:
        return self.weights[0].shape[1]

    @property
    def output_dim(self) -> int:
        return self.weights[-1].shape[0]

    @property
    def hidden_dims(self) -> list[int]:
        return [w.shape[0] for w in self.weights[:-1]]

    def to_torch(self) -> nn.Sequential:
        """The function ``x -> y`` (float64), with zero biases where none were given."""
        layers: list[nn.Module] = []
        if len(self.input_shape) > 1:
            layers.append(nn.Flatten())
        for k, w in enumerate(self.weights):
            lin = nn.Linear(w.shape[1], w.shape[0]).double()
            with torch.no_grad():
                lin.weight.copy_(torch.from_numpy(w))
                bias = self.biases[k] if self.biases is not None else np.zeros(w.shape[0])
                lin.bias.copy_(torch.from_numpy(np.asarray(bias, dtype=np.float64)))
            layers.append(lin)
            if k < len(self.activations):
                layers.append(act.module_for_spec(self.activations[k]))
        return nn.Sequential(*layers).eval()


def validate(net: LipNetwork) -> None:
    """Shape chain and activation compatibility; raises ValueError with a precise message."""
    if len(net.weights) == 0:
        raise ValueError("a network needs at least one weight matrix")
    if len(net.activations) != len(net.weights) - 1:
        raise ValueError(f"{len(net.weights)} weights need {len(net.weights) - 1} activations, "
                         f"got {len(net.activations)}")
    for k in range(1, len(net.weights)):
        if net.weights[k].shape[1] != net.weights[k - 1].shape[0]:
            raise ValueError(f"weight {k} has {net.weights[k].shape[1]} columns but weight {k - 1} "
                             f"has {net.weights[k - 1].shape[0]} rows")
    for k, spec in enumerate(net.activations):
        n = net.weights[k].shape[0]
        if spec.kind != "slope" and n % spec.group_size:
            raise ValueError(f"layer {k}: {n} neurons are not a multiple of group size "
                             f"{spec.group_size}")


# --------------------------------------------------------------------------- constructors


def from_weights(weights: Sequence[np.ndarray], activation: ActivationSpec | Sequence[ActivationSpec],
                 biases: Sequence[np.ndarray] | None = None) -> LipNetwork:
    """A chain with the same activation everywhere (or one per layer)."""
    n_act = len(weights) - 1
    acts = [activation] * n_act if isinstance(activation, ActivationSpec) else list(activation)
    return LipNetwork(list(weights), acts, list(biases) if biases is not None else None)


ACTIVATIONS_BY_NAME = {
    "relu": lambda: act.RELU, "tanh": lambda: act.TANH, "sigmoid": lambda: act.SIGMOID,
    "sin": lambda: act.SIN, "softplus": lambda: act.SOFTPLUS, "gelu": act.gelu, "silu": act.silu,
    "maxmin": act.maxmin,
}


def activation_by_name(name: str) -> ActivationSpec:
    """``relu``, ``tanh``, ``sigmoid``, ``gelu``, ``silu``, ``sin``, ``softplus``, ``maxmin``,
    ``groupsortG`` or ``leaky_relu:A``."""
    if name in ACTIVATIONS_BY_NAME:
        return ACTIVATIONS_BY_NAME[name]()
    if name.startswith("groupsort") and name[9:].isdigit():
        return act.groupsort(int(name[9:]))
    if name.startswith("leaky_relu:"):
        return act.leaky_relu(float(name.split(":", 1)[1]))
    raise ValueError(f"unknown activation {name!r}; known: {sorted(ACTIVATIONS_BY_NAME)}, "
                     "groupsortG, leaky_relu:A")


def from_mat(path: str | Path, activation: str | None = None) -> LipNetwork:
    """Weights from a MATLAB file with a cell array under key ``weights`` or ``W``.

    ``activation`` defaults to ``maxmin`` when the file name contains "maxmin", else ``relu``.
    Residual MaxMin files (``maxmin_resweights_*``) are not plain chains and are rejected.
    """
    from scipy.io import loadmat

    path = Path(path)
    if "resweights" in path.name:
        raise ValueError(f"{path.name}: residual networks are not supported yet")
    data = loadmat(str(path))
    key = next((k for k in ("weights", "W") if k in data), None)
    if key is None:
        raise ValueError(f"{path}: no 'weights' or 'W' key (found {sorted(k for k in data if not k.startswith('__'))})")
    weights = [np.asarray(w, dtype=np.float64) for w in np.asarray(data[key]).ravel()]
    if activation is None:
        activation = "maxmin" if "maxmin" in path.name.lower() else "relu"
    return from_weights(weights, activation_by_name(activation))


def _flatten_modules(module: nn.Module) -> list[nn.Module]:
    if isinstance(module, nn.Sequential):
        return [m for child in module for m in _flatten_modules(child)]
    return [module]


def _affine_run_matrix(run: list[nn.Module], in_shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray, tuple[int, ...]]:
    """Matrix, offset and output shape of a composition of affine modules: ``W = [f(e_i) - f(0)]``.

    Exact up to float64 rounding of the forward evaluation (relative 1e-16 per entry); the result
    *defines* the weights that are certified.
    """
    n = math.prod(in_shape)
    if n > MAX_UNROLL_INPUTS:
        raise ValueError(f"affine block with {n} inputs is too large to unroll (> {MAX_UNROLL_INPUTS})")
    seq = nn.Sequential(*[copy.deepcopy(m) for m in run]).double().eval()
    basis = torch.cat([torch.zeros(1, n, dtype=torch.float64), torch.eye(n, dtype=torch.float64)])
    with torch.no_grad():
        out = seq(basis.reshape(n + 1, *in_shape))
    out_shape = tuple(out.shape[1:])
    out = out.reshape(n + 1, -1)
    offset = out[0]
    matrix = (out[1:] - offset).T
    return matrix.numpy().copy(), offset.numpy().copy(), out_shape


def _infer_input_shape(modules: list[nn.Module]) -> tuple[int, ...]:
    for m in modules:
        if isinstance(m, nn.Linear):
            return (m.in_features,)
        if isinstance(m, (nn.Conv1d, nn.Conv2d)):
            raise ValueError("input_shape is required for convolutional models")
    raise ValueError("cannot infer the input shape; pass input_shape")


def from_torch(model: nn.Module, input_shape: Sequence[int] | None = None) -> LipNetwork:
    """Extract the chain from a (nested) ``nn.Sequential``; ``input_shape`` excludes the batch axis.

    BatchNorm is folded with its running statistics (eval mode). Consecutive activations get an
    identity matrix between them; a trailing activation gets an identity output layer.
    """
    modules = _flatten_modules(model)
    shape = tuple(input_shape) if input_shape is not None else _infer_input_shape(modules)
    weights: list[np.ndarray] = []
    biases: list[np.ndarray] = []
    specs: list[ActivationSpec] = []
    run: list[nn.Module] = []
    cur_shape = shape
    for m in modules + [None]:
        spec = act.spec_for_module(m) if m is not None else None
        if m is not None and spec is None:
            if not isinstance(m, AFFINE_MODULES):
                raise ValueError(f"unsupported module {type(m).__name__} in Lipschitz extraction")
            run.append(m)
            continue
        if run:
            w, b, cur_shape = _affine_run_matrix(run, cur_shape)
        else:
            n = math.prod(cur_shape)
            w, b, cur_shape = np.eye(n), np.zeros(n), (n,)
        weights.append(w)
        biases.append(b)
        run = []
        if m is not None:
            if spec.kind != "slope" and cur_shape[-1] % spec.group_size:
                raise ValueError(f"{type(m).__name__}: last axis {cur_shape[-1]} is not a multiple "
                                 f"of the group size {spec.group_size}")
            specs.append(spec)
    return LipNetwork(weights, specs, biases, shape)


# --------------------------------------------------------------------------- exact reductions


def power_of_two_exponents(weights: Sequence[np.ndarray]) -> list[int]:
    """``e_k = round(log2 ||W_k||_2)``, so that ``W_k * 2**-e_k`` has norm in [0.7, 1.42].

    Scaling by a power of two is exact in floating point (barring under/overflow), which is what
    makes the normalised network's certificate a certificate for the original weights.
    """
    exps = []
    for w in weights:
        norm = float(np.linalg.norm(w, 2)) if w.size else 0.0
        exps.append(int(round(math.log2(norm))) if norm > 0 else 0)
    return exps


def normalized(net: LipNetwork) -> tuple[LipNetwork, int]:
    """The network with ``W_k -> W_k / 2**e_k`` and the total exponent ``E = sum e_k``.

    Exactness: let ``P_k = 2**(e_1+..+e_k)``. For any activation class closed under
    ``phi -> phi(c .)/c`` (c > 0) -- slope-restricted classes [alpha, beta] are, since the
    derivative of ``phi(c u)/c`` is ``phi'(c u)``; sorting is positively homogeneous -- the
    original net equals ``P_K`` times a net with weights ``W_k / 2**e_k`` and activations
    ``psi_k(u) = phi_k(P_k u) / P_k`` of the *same* class (biases rescale, and the bound holds for
    all biases). The LMI only sees the class, so the coordinate change ``x_k = P_k x'_k`` maps
    feasible multipliers one-to-one (``T_k = T'_k P_K^2 / P_k^2``, ``rho = P_K^2 rho'``): the
    SDP bound of the original net is exactly ``2**E`` times that of the normalised one. (The
    *function* with the same fixed tanh is different; sampled lower bounds use the original.)
    """
    exps = power_of_two_exponents(net.weights)
    scaled = [np.ldexp(w, -e) for w, e in zip(net.weights, exps)]
    return LipNetwork(scaled, list(net.activations), None, net.input_shape), int(sum(exps))


def reduce_input(first_weight: np.ndarray, rel_tol: float = 1e-12) -> np.ndarray:
    """Thin-SVD reduction ``W_1 -> W_1 V_r = U_r S_r`` when rank r < input size.

    ``f(x) = g(W_1 x)`` and ``W_1 = U_r S_r V_r^T``; since ``V_r^T`` maps the unit ball onto the unit
    ball of R^r, ``Lip(f) = Lip(z -> g(U_r S_r z))``. Used for *solving* only: the certificate is
    re-checked against the full ``W_1`` (in the full LMI the complement of ``range(V_r)`` gives the
    decoupled block ``-rho I``).
    """
    n_out, n_in = first_weight.shape
    if n_out >= n_in:
        return first_weight
    u, s, _ = np.linalg.svd(first_weight, full_matrices=False)
    r = int(np.sum(s > rel_tol * s[0])) if s.size and s[0] > 0 else 0
    r = max(r, 1)
    return u[:, :r] * s[:r]


def product_of_norms(net: LipNetwork) -> float:
    """Naive bound ``prod ||W_k||_2 * prod Lip(phi_k)`` (spectral norms via SVD)."""
    value = 1.0
    for w in net.weights:
        value *= float(np.linalg.norm(w, 2))
    for spec in net.activations:
        value *= spec.max_abs_slope
    return value

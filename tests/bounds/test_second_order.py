"""Second-order product bounds (``nlverify.bounds.second_order``).

* Pointwise, float64: the linear lower bound of ``sum_i A_i x_i y_i`` lies below the true sum at dense
  samples, every corner and the centre of random boxes (degenerate, tiny, huge, around the quadratic's
  minimum, offset from it), for factors that are affine plus a bounded nonlinear part, and for random
  signs of ``A`` (convex, concave and indefinite quadratics).
* Exact where the derivation says so: a convex sum whose minimiser is inside the box, and a concave
  one centred on the box, are bounded by their true minimum.
* Through the engine: a Lyapunov-style decrease term exported from torch, bounded by the backward pass
  with the rule, contains sampled outputs and is tighter than McCormick on small boxes; input-split
  BaB proves it with fewer domains than without the rule.
"""
from __future__ import annotations

import math
import time

import pytest
import torch
from torch import nn

from netgen import export
from nlverify.bounds.crown import CrownOptions, DefaultRelaxations, propagate_bounds
from nlverify.bounds.second_order import (
    AffineFactor, InputQuadraticRelaxation, SecondOrderRelaxations, product_lower_terms,
    second_order_products,
)
from nlverify.model import load_onnx
from nlverify.verifier.bab import BabOptions, bab_problem
from nlverify.verifier.problem import Problem

F64 = torch.float64


class _Factor:
    """``z_i(x) = W_i . x + b_i + s_i sin(G_i . x)``, bounded by ``W x + b -+ |s|``."""

    def __init__(self, k: int, n: int, wiggle: float, g: torch.Generator) -> None:
        self.W = torch.randn(k, n, generator=g, dtype=F64)
        self.b = torch.randn(k, generator=g, dtype=F64)
        self.G = torch.randn(k, n, generator=g, dtype=F64) * 3
        self.s = wiggle * torch.rand(k, generator=g, dtype=F64)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.W.T + self.b + self.s * torch.sin(x @ self.G.T)

    def affine(self, batch: int) -> AffineFactor:
        W = self.W.expand(batch, *self.W.shape)
        return AffineFactor(W, (self.b - self.s).expand(batch, -1), W, (self.b + self.s).expand(batch, -1))


def _boxes(n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    centre = torch.randn(8, n, generator=g, dtype=F64)
    radius = torch.rand(8, n, generator=g, dtype=F64)
    radius = radius * torch.tensor([1e-9, 1e-4, 0.01, 0.1, 1.0, 10.0, 1e3, 1.0], dtype=F64)[:, None]
    radius[7, : n // 2] = 0.0  # degenerate in half the inputs
    return centre - radius, centre + radius


def _points(lower: torch.Tensor, upper: torch.Tensor, g: torch.Generator, samples: int = 4000) -> torch.Tensor:
    """``(B, P, n)``: random points, every corner and the centre of each box."""
    b, n = lower.shape
    t = torch.rand(b, samples, n, generator=g, dtype=F64)
    corners = torch.cartesian_prod(*[torch.tensor([0.0, 1.0], dtype=F64)] * n).reshape(1, -1, n).expand(b, -1, n)
    t = torch.cat([t, corners, torch.full((b, 1, n), 0.5, dtype=F64)], 1)
    return lower.unsqueeze(1) + t * (upper - lower).unsqueeze(1)


def _sum_of_products(A: torch.Tensor, X: torch.Tensor, Y: torch.Tensor) -> torch.Tensor:
    """``(B, S, P)``: ``sum_i A[b, s, i] X[b, p, i] Y[b, p, i]``."""
    return torch.einsum("bsi,bpi->bsp", A, X * Y)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("wiggle", [0.0, 0.05, 1.0])
def test_product_bound_holds_pointwise(seed, wiggle):
    g = torch.Generator().manual_seed(seed)
    n, k, rows = 1 + seed % 5, 2 + seed, 4
    x_factor, y_factor = _Factor(k, n, wiggle, g), _Factor(k, n, wiggle, g)
    lower, upper = _boxes(n, g)
    batch = lower.shape[0]
    A = torch.randn(batch, rows, k, generator=g, dtype=F64)
    A[:, 0] = A[:, 0].abs()  # rows of one sign too (convex or concave for y = x; here just one-signed)
    A[:, 1] = -A[:, 1].abs()
    r = InputQuadraticRelaxation.of(x_factor.affine(batch), y_factor.affine(batch), lower, upper)
    slope, constant = product_lower_terms(A, r)
    assert slope.dtype == F64 and torch.isfinite(constant).all()
    points = _points(lower, upper, g)
    bound = torch.einsum("bsn,bpn->bsp", slope, points) + constant.unsqueeze(-1)
    truth = _sum_of_products(A, x_factor(points), y_factor(points))
    scale = torch.einsum("bsi,bpi->bsp", A.abs(), (x_factor(points) * y_factor(points)).abs())
    assert (bound <= truth + 1e-12 * (1 + scale)).all(), float((bound - truth).max())


def test_product_bound_in_float32_holds():
    g = torch.Generator().manual_seed(3)
    n, k = 4, 5
    x_factor, y_factor = _Factor(k, n, 0.1, g), _Factor(k, n, 0.1, g)
    lower, upper = _boxes(n, g)
    A = torch.randn(lower.shape[0], 3, k, generator=g, dtype=F64)
    r = InputQuadraticRelaxation.of(x_factor.affine(8), y_factor.affine(8), lower, upper)
    slope, constant = product_lower_terms(A.float(), r)
    assert slope.dtype == torch.float32 and constant.dtype == torch.float32
    points = _points(lower, upper, g)
    bound = torch.einsum("bsn,bpn->bsp", slope.double(), points) + constant.double().unsqueeze(-1)
    truth = _sum_of_products(A.float().double(), x_factor(points), y_factor(points))
    assert (bound <= truth).all()


def _square_sum(sign: float, n: int, lower: torch.Tensor, upper: torch.Tensor, minimiser: torch.Tensor):
    """``sign * |x - m|^2`` as ``sum_i x_i y_i`` with both factors ``x - m`` (exactly affine)."""
    batch = lower.shape[0]
    eye = torch.eye(n, dtype=F64).expand(batch, n, n)
    factor = AffineFactor(eye, -minimiser.expand(batch, n), eye, -minimiser.expand(batch, n))
    A = torch.full((batch, 1, n), sign, dtype=F64)
    return product_lower_terms(A, InputQuadraticRelaxation.of(factor, factor, lower, upper))


def test_convex_sum_is_bounded_by_its_minimum():
    """``|x - m|^2`` with ``m`` inside the box: the tangent plane at the box minimiser is exact (min 0)."""
    n = 4
    lower, upper = -torch.ones(1, n, dtype=F64), torch.tensor([[1.0, 2.0, 0.5, 3.0]], dtype=F64)
    m = torch.tensor([0.2, -0.3, 0.1, 1.5], dtype=F64)
    slope, constant = _square_sum(1.0, n, lower, upper, m)
    lowest = constant + torch.where(slope > 0, lower.unsqueeze(1), upper.unsqueeze(1)).mul(slope).sum(-1)
    assert -1e-9 <= float(lowest) <= 0.0


def test_concave_sum_centred_on_the_box_is_exact():
    """``-|x - c|^2`` with ``c`` the box centre: its minimum ``-|r|^2`` (at the corners) is the bound."""
    n = 3
    lower, upper = torch.tensor([[-1.0, 0.0, 2.0]], dtype=F64), torch.tensor([[1.0, 4.0, 2.5]], dtype=F64)
    centre, radius = (lower + upper) / 2, (upper - lower) / 2
    slope, constant = _square_sum(-1.0, n, lower, upper, centre[0])
    lowest = constant + torch.where(slope > 0, lower.unsqueeze(1), upper.unsqueeze(1)).mul(slope).sum(-1)
    assert float(lowest) == pytest.approx(-float((radius ** 2).sum()), rel=1e-12)


def test_factors_without_finite_bounds_give_no_bound():
    n, k = 2, 3
    lower, upper = -torch.ones(2, n, dtype=F64), torch.ones(2, n, dtype=F64)
    W = torch.ones(2, k, n, dtype=F64)
    low_c = torch.zeros(2, k, dtype=F64)
    low_c[1, 0] = -math.inf
    factor = AffineFactor(W, low_c, W, torch.zeros(2, k, dtype=F64))
    slope, constant = product_lower_terms(torch.ones(2, 1, k, dtype=F64),
                                          InputQuadraticRelaxation.of(factor, factor, lower, upper))
    assert torch.isfinite(constant[0]).all() and constant[1, 0] == -math.inf and (slope[1] == 0).all()


class _Decrease(nn.Module):
    """``(f(x) - x)^T P (f(x) + x)`` with ``f(x) = x + 0.1 g(x)`` for a small tanh net ``g`` and ``P``
    positive definite: the shape of lsnc's Lyapunov decrease term ``V(f(x)) - V(x)``."""

    def __init__(self, n: int = 3) -> None:
        super().__init__()
        torch.manual_seed(5)
        self.g = nn.Sequential(nn.Linear(n, 8), nn.Tanh(), nn.Linear(8, n))
        root = torch.randn(n, n)
        self.register_buffer("P", root @ root.T + torch.eye(n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = x + 0.1 * self.g(x)
        return ((f - x) * ((f + x) @ self.P)).sum(-1, keepdim=True)


@pytest.fixture(scope="module")
def decrease_model(tmp_path_factory):
    path = export(_Decrease().eval(), (3,), tmp_path_factory.mktemp("decrease") / "decrease.onnx")
    return load_onnx(path)


def _engine_bounds(model, lower, upper, second_order: bool) -> torch.Tensor:
    graph, propagator = model.graph, model.propagator
    bounds = propagate_bounds(graph, lower, upper, DefaultRelaxations, propagator, CrownOptions())
    relaxations = DefaultRelaxations(bounds)
    if second_order:
        relaxations = SecondOrderRelaxations(relaxations, propagator, bounds, lower, upper,
                                             second_order_products(graph))
    C = torch.tensor([[1.0], [-1.0]], dtype=lower.dtype).expand(lower.shape[0], 2, 1).reshape(lower.shape[0], 2, 1, 1)
    return propagator.lower_bound(graph.output_name, C, bounds, relaxations)


def test_engine_bound_contains_samples_and_beats_mccormick_on_small_boxes(decrease_model):
    model = decrease_model
    assert second_order_products(model.graph)  # the product of the decrease term is found
    g = torch.Generator().manual_seed(0)
    centre = torch.rand(5, 3, generator=g) * 2 - 1
    radius = torch.tensor([0.0, 1e-3, 0.01, 0.1, 1.0])[:, None].expand(5, 3)
    lower, upper = centre - radius, centre + radius
    second = _engine_bounds(model, lower, upper, True)
    plain = _engine_bounds(model, lower, upper, False)
    points = _points(lower.double(), upper.double(), g).float()
    with torch.no_grad():
        y = model.forward(points.reshape(-1, 3)).reshape(5, -1)
    lowest, highest = y.min(1).values, y.max(1).values
    tolerance = 1e-5 * (1 + y.abs().max(1).values)
    assert (second[:, 0] <= lowest + tolerance).all() and (-second[:, 1] >= highest - tolerance).all()
    # boxes 1-3 (radius 1e-3 to 0.1): both rows strictly tighter than McCormick
    assert (second[1:4] > plain[1:4]).all(), (second, plain)


def test_input_split_needs_fewer_domains_with_the_rule_and_still_falsifies(decrease_model):
    """On ``[-0.5, 0.5]^3`` prove ``y >= min y - 1e-4`` with and without the rule; ``y >= min y + 1e-3``
    is falsified."""
    model = decrease_model
    grid = torch.linspace(-0.5, 0.5, 41)
    with torch.no_grad():
        lowest = float(model.forward(torch.cartesian_prod(grid, grid, grid))[:, 0].min())
    threshold = lowest - 1e-4
    problem = Problem(0, 0, -0.5 * torch.ones(3), 0.5 * torch.ones(3), torch.tensor([[1.0]]),
                      torch.tensor([threshold]), torch.tensor([-math.inf]))
    results = {}
    for rule in (True, False):
        options = BabOptions(mode="input", second_order=rule, input_workers=1)
        results[rule] = bab_problem(model, problem, time.monotonic() + 60, options)
    assert results[True].status == "proved", results[True]
    assert results[False].status in ("proved", "timeout")
    assert results[True].domains < results[False].domains, (results[True].domains, results[False].domains)
    # and it never proves what is false: just above the minimum a counterexample exists
    violated = Problem(0, 0, -0.5 * torch.ones(3), 0.5 * torch.ones(3), torch.tensor([[1.0]]),
                       torch.tensor([lowest + 1e-3]), torch.tensor([-math.inf]))
    found = bab_problem(model, violated, time.monotonic() + 60, BabOptions(mode="input", input_workers=1))
    assert found.status == "counterexample", found

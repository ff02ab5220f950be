"""Quadratic forms ``ReduceSum(z * (z @ P))`` are rewritten as weighted sums of squares
(:mod:`nlverify.frontend.quadratic`): same function (onnxruntime, and the unrewritten graph in float64),
sound bounds, and lower bounds that reach the form's true minimum where McCormick products cannot."""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch
from scipy.optimize import minimize
from torch import nn

from netgen import export
from nlverify.frontend import load_graph
from nlverify.frontend.quadratic import find_quadratic_forms, rewrite_quadratic_forms, sum_of_squares
from nlverify.model import Model

WIDTH = 5


class QuadraticForm(nn.Module):
    """``V(x) = (x - centre)^T P (x - centre)`` (+ a bias term), exported as torch writes Lyapunov functions."""

    def __init__(self, seed: int, keepdim: bool = True, bias: bool = False, mean: bool = False,
                 definite: bool = True) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        root = torch.randn(WIDTH, WIDTH, generator=g)
        skew = torch.randn(WIDTH, WIDTH, generator=g)
        base = root @ root.T + 0.1 * torch.eye(WIDTH) if definite else root + root.T
        self.P = nn.Parameter(base + (skew - skew.T))  # not symmetric: only its symmetric part counts
        self.centre = nn.Parameter(torch.randn(WIDTH, generator=g))
        self.b = nn.Parameter(torch.randn(WIDTH, generator=g)) if bias else None
        self.keepdim, self.mean = keepdim, mean

    def forward(self, x):
        z = x - self.centre
        image = z @ self.P if self.b is None else z @ self.P + self.b
        product = z * image
        v = product.mean(-1, keepdim=self.keepdim) if self.mean else product.sum(-1, keepdim=self.keepdim)
        return torch.cat([v.reshape(x.shape[0], 1), x[:, :1]], -1)


class Bilinear(nn.Module):
    """``(u - v)^T P (u + v)`` with ``u, v`` two different functions of ``x`` (a decrease condition)."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(3)
        self.P = nn.Parameter(torch.randn(WIDTH, WIDTH, generator=g))
        self.W = nn.Parameter(torch.randn(WIDTH, WIDTH, generator=g))

    def forward(self, x):
        u, v = torch.tanh(x @ self.W), x
        return ((u - v) * ((u + v) @ self.P)).sum(-1, keepdim=True)


def _export(module, tmp_path, name="q.onnx"):
    return export(module, (WIDTH,), tmp_path / name, 17)


def _rewritten(graph) -> bool:
    return any(n.kind == "unary" and n.op.activation == "pow" for n in graph)


@pytest.mark.parametrize("variant", [dict(), dict(keepdim=False), dict(bias=True), dict(mean=True),
                                     dict(definite=False)])
def test_rewrite_computes_the_same_function(tmp_path, variant):
    path = _export(QuadraticForm(0, **variant), tmp_path)
    graph, plain = load_graph(path), load_graph(path, quadratic_forms=False)
    assert _rewritten(graph) and not _rewritten(plain)
    x = np.random.default_rng(0).uniform(-3, 3, size=(200, WIDTH)).astype(np.float32)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    expected = np.concatenate([session.run(None, {name: xi[None]})[0] for xi in x])
    ours = graph.forward(torch.as_tensor(x)).detach().numpy()
    assert np.abs(ours - expected).max() <= 1e-5 * max(1.0, np.abs(expected).max())
    # real-arithmetic identity: in float64 the two graphs agree to ~1e-14 relative (the residual term
    # absorbs the float32 rounding of the eigenvectors), far inside the float64 proof margin (1e-9)
    x64 = torch.as_tensor(x, dtype=torch.float64)
    ours64 = graph.to(dtype=torch.float64).forward(x64)
    plain64 = plain.to(dtype=torch.float64).forward(x64)
    assert (ours64 - plain64).abs().max() <= 1e-12 * max(1.0, plain64.abs().max().item())


def test_sum_of_squares_is_exact_and_float32_representable():
    rng = np.random.default_rng(1)
    for n in (1, 2, 6, 12):
        for scale in (1e-3, 1.0, 1e4):
            a = rng.normal(size=(n, n)) * scale
            matrix = (a + a.T) / 2
            squares = sum_of_squares(matrix)
            for part in (squares.vectors, squares.values, squares.residual):
                assert np.array_equal(part, part.astype(np.float32).astype(np.float64))
            rebuilt = (squares.vectors * squares.values) @ squares.vectors.T + squares.residual
            assert np.abs(rebuilt - matrix).max() <= 1e-13 * np.abs(matrix).max()
    assert sum_of_squares(np.zeros((3, 3))).values.size == 0


def test_bilinear_forms_stay_products_unless_asked(tmp_path):
    path = export(Bilinear(), (WIDTH,), tmp_path / "b.onnx", 17)
    graph = load_graph(path)
    assert not _rewritten(graph)
    plain = load_graph(path, quadratic_forms=False)
    assert len(find_quadratic_forms(plain, bilinear=True)) == 1
    # asked for, the bilinear form becomes a sum of squares of the stacked (u - v, u + v): same function
    stacked = rewrite_quadratic_forms(load_graph(path, quadratic_forms=False), bilinear=True)
    assert _rewritten(stacked)
    x = torch.randn(300, WIDTH, dtype=torch.float64) * 2
    expected = plain.to(dtype=torch.float64).forward(x)
    assert (stacked.to(dtype=torch.float64).forward(x) - expected).abs().max() <= 1e-12 * expected.abs().max()


def _random_boxes(generator, count):
    centre = torch.randn(count, WIDTH, generator=generator, dtype=torch.float64) * 2
    kinds = torch.randint(0, 4, (count, 1), generator=generator)
    radius = torch.rand(count, WIDTH, generator=generator, dtype=torch.float64)
    radius = torch.where(kinds == 0, radius * 0, radius)           # degenerate
    radius = torch.where(kinds == 1, radius * 1e-4, radius)        # tiny
    radius = torch.where(kinds == 2, radius * 5, radius)           # wide
    return centre - radius, centre + radius


@pytest.mark.parametrize("definite", [True, False])
def test_bounds_enclose_the_form(tmp_path, definite):
    path = _export(QuadraticForm(2, definite=definite), tmp_path)
    model = Model(load_graph(path).to(dtype=torch.float64))
    generator = torch.Generator().manual_seed(0)
    lower, upper = _random_boxes(generator, 40)
    samples = lower[:, None] + (upper - lower)[:, None] * torch.rand(40, 3000, WIDTH, generator=generator,
                                                                         dtype=torch.float64)
    corners = torch.stack([torch.where(torch.rand(40, WIDTH, generator=generator) < 0.5, lower, upper)
                           for _ in range(64)], 1)
    points = torch.cat([samples, corners], 1)
    values = model(points.reshape(-1, WIDTH)).reshape(40, -1, 2)
    for method, options in (("ibp", {}), ("crown", {}), ("alpha-crown", dict(iterations=15))):
        low, up = model.bounds(lower, upper, method, **options)
        slack = 1e-9 * (1 + values.abs().amax(1))
        assert (values.amin(1) >= low - slack).all(), method
        assert (values.amax(1) <= up + slack).all(), method


def test_lower_bound_reaches_the_minimum_of_a_definite_form(tmp_path):
    """``V`` is convex in ``x``, so the tangents at its minimiser give its exact minimum over a box, and
    alpha-CROWN on the sum of squares gets close (within 0.08 here; Adam on the tangent points is what
    limits it). With the products relaxed by McCormick instead (``quadratic_forms=False``), the same
    alpha-CROWN run bounds the boxes whose minimum is 0.20, 1.68 and 4.37 by -90, -296 and -99."""
    module = QuadraticForm(4)
    path = _export(module, tmp_path)
    P = module.P.detach().double().numpy()
    centre = module.centre.detach().double().numpy()
    generator = torch.Generator().manual_seed(5)
    lower, upper = _random_boxes(generator, 8)
    lower, upper = lower.clamp(max=upper), upper
    model = Model(load_graph(path).to(dtype=torch.float64))
    rewritten_low = model.bounds(lower, upper, "alpha-crown", iterations=200, learning_rate=0.05)[0][:, 0]
    for b in range(8):
        lo, up = lower[b].numpy(), upper[b].numpy()
        value = lambda x: float((x - centre) @ P @ (x - centre))  # noqa: E731
        gradient = lambda x: (P + P.T) @ (x - centre)  # noqa: E731
        best = minimize(value, (lo + up) / 2, jac=gradient, bounds=list(zip(lo, up)), method="L-BFGS-B",
                        options=dict(ftol=1e-14, gtol=1e-12)).fun
        scale = 1.0 + abs(best)
        assert rewritten_low[b] <= best + 1e-6 * scale
        assert best - rewritten_low[b] <= 0.1 * scale, (b, best, rewritten_low[b].item())

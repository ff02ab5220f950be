"""Branching-point lookup: strictly inside, sound children, better than the midpoint, lazy, fallbacks."""
from __future__ import annotations

import math

import pytest
import torch

from nlverify.bounds.relax import unary_relaxation
from nlverify.verifier import lookup
from nlverify.verifier.lookup import binary_branching_points, branching_points, plane_looseness
from nlverify.verifier.tables import TABLE_ACTIVATIONS, default_spec, optimal_relative_split, split_looseness

RANGE = {"sigmoid": 8.0, "tanh": 4.0, "gelu": 6.0, "sin": 2 * math.pi, "cos": 2 * math.pi, "exp": 8.0}
ALL_UNARY = TABLE_ACTIVATIONS + ("relu", "leaky_relu", "pow", "floor", "reciprocal")


def _intervals(n: int, radius: float, seed: int, dtype=torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    """Sorted pairs of uniform draws on [-radius, radius], plus tiny and wide ones."""
    g = torch.Generator().manual_seed(seed)
    draws = (torch.rand(2, n, generator=g, dtype=torch.float64) * 2 - 1) * radius
    lower, upper = draws.min(0).values, draws.max(0).values
    centre = (torch.rand(n // 4, generator=g, dtype=torch.float64) * 2 - 1) * radius
    tiny = 10.0 ** -torch.randint(1, 7, (n // 4,), generator=g).double()
    lower = torch.cat([lower, centre, -5 * radius + centre])
    upper = torch.cat([upper, centre + tiny, 5 * radius + centre])
    return lower.to(dtype), upper.to(dtype)


@pytest.mark.parametrize("activation", ALL_UNARY)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16])
def test_strictly_inside(activation: str, dtype: torch.dtype) -> None:
    lower, upper = _intervals(400, RANGE.get(activation, 5.0), seed=1, dtype=dtype)
    keep = torch.nextafter(lower, upper) < upper     # a number strictly between (float16 rounds tiny ones)
    point = branching_points(activation, lower, upper, **_params(activation))
    assert point.dtype == dtype and point.shape == lower.shape
    assert bool(((point > lower) & (point < upper))[keep].all())
    assert bool((point[~keep] == lower[~keep]).all())


def _params(activation: str) -> dict:
    return {"leaky_relu": {"negative_slope": 0.1}, "pow": {"exponent": 3.0}}.get(activation, {})


def test_shapes_broadcast_and_degenerate() -> None:
    lower = torch.full((2, 3, 4), -1.0)
    point = branching_points("sigmoid", lower, torch.tensor(2.0))
    assert point.shape == (2, 3, 4) and bool(((point > -1) & (point < 2)).all())
    same = torch.tensor([0.5, -3.0, 7.0])
    assert torch.equal(branching_points("gelu", same, same), same)
    # adjacent floats: no number strictly between, so the lower bound is returned
    low = torch.tensor([1.0], dtype=torch.float32)
    assert torch.equal(branching_points("tanh", low, torch.nextafter(low, torch.tensor(2.0))), low)


def test_infinite_bounds_give_finite_points() -> None:
    lower = torch.tensor([-math.inf, -2.0, -math.inf], dtype=torch.float64)
    upper = torch.tensor([3.0, math.inf, math.inf], dtype=torch.float64)
    for activation in ("sigmoid", "sin", "exp", "relu"):
        point = branching_points(activation, lower, upper)
        assert bool(torch.isfinite(point).all()) and bool(((point > lower) & (point < upper)).all())
        nan = branching_points(activation, torch.tensor([math.nan, 0.0]), torch.tensor([1.0, math.nan]))
        assert bool(torch.isnan(nan).all())


@pytest.mark.parametrize("activation", TABLE_ACTIVATIONS)
def test_children_relaxations_are_sound(activation: str) -> None:
    """Whatever the table says, both children get enclosing relaxations (dense float64 check)."""
    lower, upper = _intervals(80, RANGE[activation], seed=2)
    keep = (upper - lower) > 1e-9
    lower, upper = lower[keep], upper[keep]
    point = branching_points(activation, lower, upper)
    relaxation = unary_relaxation(activation)
    for a, b in ((lower, point), (point, upper)):
        rel = relaxation.relax(a, b)
        s = torch.linspace(0.0, 1.0, 1001, dtype=torch.float64)
        x = a[:, None] + s * (b - a)[:, None]
        x = torch.minimum(torch.maximum(x, a[:, None]), b[:, None])
        f = relaxation.function(x)
        assert bool((rel.lower_slope[:, None] * x + rel.lower_intercept[:, None] <= f).all())
        assert bool((f <= rel.upper_slope[:, None] * x + rel.upper_intercept[:, None]).all())


@pytest.mark.parametrize("activation", TABLE_ACTIVATIONS)
def test_tables_beat_the_midpoint(activation: str) -> None:
    """Mean looseness ``1 - J(p)/J(mid)`` on random intervals in the table's range: a clear gain."""
    g = torch.Generator().manual_seed(3)
    draws = (torch.rand(2, 300, generator=g, dtype=torch.float64) * 2 - 1) * RANGE[activation]
    lower, upper = draws.min(0).values, draws.max(0).values
    mid = split_looseness(activation, lower, upper, 0.5 * (lower + upper))
    looked_up = split_looseness(activation, lower, upper, branching_points(activation, lower, upper))
    reduction = 1 - looked_up / mid
    assert float(reduction.mean()) > 0.05
    assert float(looked_up.sum()) < float(mid.sum())


def test_loading_is_lazy_and_cached(monkeypatch: pytest.MonkeyPatch) -> None:
    reads: list[str] = []
    real = lookup.read_table_file

    def counting(path):
        reads.append(path.stem)
        return real(path)

    monkeypatch.setattr(lookup, "read_table_file", counting)
    lookup.clear_cache()
    try:
        assert lookup.loaded_tables() == frozenset()
        branching_points("relu", torch.tensor([-1.0]), torch.tensor([1.0]))
        assert reads == []
        for _ in range(3):
            branching_points("gelu", torch.tensor([-1.0]), torch.tensor([1.0]))
        assert reads == ["gelu"] and lookup.loaded_tables() == {"gelu"}
    finally:
        lookup.clear_cache()


def test_every_shipped_table_is_present() -> None:
    for activation in TABLE_ACTIVATIONS:
        table = lookup.load_table(activation)
        assert table is not None, activation
        assert table.spec == default_spec(activation)
    total = sum((lookup.table_directory() / f"{a}.npz").stat().st_size for a in TABLE_ACTIVATIONS)
    assert total < 1_500_000


def test_fallbacks_outside_the_grid() -> None:
    f64 = dict(dtype=torch.float64)
    # one sigmoid tail: the clamped box is degenerate -> midpoint
    assert torch.equal(branching_points("sigmoid", torch.tensor([-40.0], **f64), torch.tensor([-20.0], **f64)),
                       torch.tensor([-30.0], **f64))
    # a box reaching past the grid: the clamped box's split, an absolute point inside it
    point = branching_points("gelu", torch.tensor([-50.0], **f64), torch.tensor([3.0], **f64))
    assert -6.0 < float(point) < 3.0
    # sine wider than two periods: midpoint
    assert torch.equal(branching_points("sin", torch.tensor([0.0], **f64), torch.tensor([20.0], **f64)),
                       torch.tensor([10.0], **f64))
    # exp wider than the table: a fixed distance below u, the same for every width
    wide = branching_points("exp", torch.tensor([0.0, -70.0], **f64), torch.tensor([50.0, 30.0], **f64))
    assert torch.allclose(torch.tensor([50.0, 30.0], **f64) - wide, (50.0 - wide[0]).expand(2))
    assert 0.0 < 50.0 - float(wide[0]) < 10.0
    # piecewise-linear: the kink when inside, else the midpoint
    relu = branching_points("relu", torch.tensor([-1.0, 1.0]), torch.tensor([2.0, 3.0]))
    assert torch.equal(relu, torch.tensor([0.0, 2.0]))
    # the kink however close to an end (both children exact), never "the midpoint for a near-end kink"
    for activation in ("relu", "leaky_relu"):
        near = branching_points(activation, torch.tensor([-1.56, -1e-4, -3.0]), torch.tensor([0.01, 2.0, 1e-6]))
        assert torch.equal(near, torch.zeros(3)), activation


def test_periodic_lookup_is_shift_invariant() -> None:
    lower = torch.tensor([0.3, 2.0, -1.0], dtype=torch.float64)
    width = torch.tensor([1.0, 4.0, 9.0], dtype=torch.float64)
    base = branching_points("sin", lower, lower + width)
    for turns in (-7, 3, 40):
        shift = 2 * math.pi * turns
        moved = branching_points("sin", lower + shift, lower + shift + width)
        assert torch.allclose(moved - shift, base, atol=1e-9)


def test_sigmoid_symmetric_boxes_match_the_direct_optimum() -> None:
    """[-a, a]: for wide boxes the optimum is exactly the inflection point 0 (a point merely near 0 is
    much worse for the default relaxation); narrow ones split off-centre. The lookup gets both."""
    a = torch.tensor([1.0, 3.0, 7.5, 20.0], dtype=torch.float64)
    point = branching_points("sigmoid", -a, a)
    assert torch.equal(point[2:], torch.zeros(2, dtype=torch.float64))
    _, best = optimal_relative_split("sigmoid", -a, a)
    assert bool((split_looseness("sigmoid", -a, a, point) <= 1.01 * best).all())


def test_unknown_activation_is_a_key_error() -> None:
    with pytest.raises(KeyError):
        branching_points("softplus", torch.zeros(1), torch.ones(1))
    with pytest.raises(KeyError):
        binary_branching_points("add", torch.zeros(1), torch.ones(1), torch.zeros(1), torch.ones(1))


@pytest.mark.parametrize("op", ["max", "min"])
def test_binary_points_beat_the_midpoint(op: str) -> None:
    g = torch.Generator().manual_seed(5)
    d = torch.rand(4, 500, generator=g, dtype=torch.float64) * 4 - 2
    lx, ux = d[0].minimum(d[1]), d[0].maximum(d[1])
    ly, uy = d[2].minimum(d[3]), d[2].maximum(d[3])
    point = binary_branching_points(op, lx, ux, ly, uy)
    assert bool(((point > lx) & (point < ux)).all())
    mid = 0.5 * (lx + ux)
    split = plane_looseness(op, lx, point, ly, uy) + plane_looseness(op, point, ux, ly, uy)
    halves = plane_looseness(op, lx, mid, ly, uy) + plane_looseness(op, mid, ux, ly, uy)
    assert bool((split <= halves * (1 + 1e-12) + 1e-15).all())
    loose = halves > 1e-12
    assert float((1 - split[loose] / halves[loose]).mean()) > 0.1
    assert float(split.sum()) < float(halves.sum())


def test_binary_mul_splits_at_the_midpoint() -> None:
    lx, ux = torch.tensor([0.0, -3.0]), torch.tensor([4.0, 1.0])
    ly, uy = torch.tensor([1.0, -1.0]), torch.tensor([6.0, 2.0])
    assert torch.equal(binary_branching_points("mul", lx, ux, ly, uy), torch.tensor([2.0, -1.0]))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu() -> None:
    lower, upper = _intervals(200, 6.0, seed=4)
    for activation in TABLE_ACTIVATIONS:
        cpu = branching_points(activation, lower, upper)
        gpu = branching_points(activation, lower.cuda(), upper.cuda())
        assert gpu.device.type == "cuda"
        assert torch.allclose(gpu.cpu(), cpu, atol=1e-9)

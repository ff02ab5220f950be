"""BoxMemo: a hit only on exactly equal boxes, bounded memory; S-shaped relaxations unchanged by it."""
from __future__ import annotations

import torch

from nlverify.bounds.relax import unary_relaxation
from nlverify.bounds.relax._memo import BoxMemo


def test_hit_only_on_equal_boxes():
    memo = BoxMemo()
    calls = []

    def compute(tag):
        calls.append(tag)
        return torch.tensor([len(calls)])

    low, up = torch.zeros(3), torch.ones(3)
    first = memo.get("f", low, up, lambda: compute("a"))
    assert memo.get("f", low.clone(), up.clone(), lambda: compute("b")) is first  # equal values: a hit
    nudged = up.clone()
    nudged[0] = torch.nextafter(nudged[0], torch.tensor(2.0))
    assert memo.get("f", low, nudged, lambda: compute("c")) is not first  # one ulp apart: recomputed
    memo.get("f", torch.tensor([0.0, 1.0, 0.0]), torch.tensor([1.0, 2.0, 1.0]), lambda: compute("d"))
    permuted = torch.tensor([1.0, 0.0, 0.0]), torch.tensor([2.0, 1.0, 1.0])  # same key (sums), other values
    memo.get("f", *permuted, lambda: compute("d2"))
    assert memo.get("g", low, up, lambda: compute("e")) is not first  # another tag
    nan = torch.tensor([float("nan")])
    memo.get("f", nan, nan, lambda: compute("f"))
    memo.get("f", nan, nan, lambda: compute("g"))
    assert calls == ["a", "c", "d", "d2", "e", "f", "g"]


def test_memory_stays_under_the_cap():
    memo = BoxMemo(max_bytes=64 * 1024)
    for i in range(100):
        low = torch.full((256,), float(i))
        memo.get("f", low, low + 1, lambda: low * 2)
    assert memo.bytes <= 64 * 1024 and 0 < len(memo.entries) < 100
    huge = torch.zeros(64 * 1024)  # larger than an eighth of the cap: never kept
    memo.get("f", huge, huge, lambda: huge)
    assert all(entry[0].numel() < huge.numel() for entry in memo.entries.values())


def test_memoised_relaxation_equals_a_fresh_one():
    from nlverify.bounds.relax import s_shaped

    g = torch.Generator().manual_seed(0)
    for name in ("sigmoid", "tanh"):
        family = unary_relaxation(name)
        centre = torch.randn(500, generator=g, dtype=torch.float64) * 3
        width = torch.rand(500, generator=g, dtype=torch.float64) * 4
        low, up = centre - width, centre + width
        alpha = torch.rand(2, 500, generator=g, dtype=torch.float64)
        s_shaped._RANGES.entries.clear()
        s_shaped._RANGES.bytes = 0
        fresh = family.relax(low, up, alpha)
        hits = s_shaped._RANGES.hits
        again = family.relax(low.clone(), up.clone(), alpha)
        assert s_shaped._RANGES.hits == hits + 2  # both tangent ranges reused
        for field in ("lower_slope", "lower_intercept", "upper_slope", "upper_intercept"):
            assert torch.equal(getattr(fresh, field), getattr(again, field))


def test_boxes_with_grad_are_not_memoised():
    memo = BoxMemo()
    low = torch.zeros(3, requires_grad=True)
    calls = []
    for _ in range(2):
        memo.get("f", low, low + 1, lambda: calls.append(1) or low * 2)
    assert len(calls) == 2 and not memo.entries

"""BoxMemo: a hit only on exactly equal boxes (or, with grad, the very same ones), bounded memory;
S-shaped relaxations and their gradients unchanged by it."""
from __future__ import annotations

import pytest
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


def test_boxes_with_grad_are_memoised_by_identity_only():
    memo = BoxMemo()
    low = torch.zeros(3, requires_grad=True)
    calls = []
    compute = lambda: calls.append(1) or low * 2  # noqa: E731
    up = low + 1
    first = memo.get("f", low, up, compute)
    assert memo.get("f", low, up, compute) is first  # the same tensors
    assert memo.get("f", low.unsqueeze(0).squeeze(0), up[:], compute) is first  # fresh views of them
    assert len(calls) == 1 and not memo.entries  # never in the value-keyed store
    memo.get("f", low, low + 1, compute)  # an equal box, but another tensor: recomputed
    memo.get("f", low.clone(), up, compute)
    assert len(calls) == 3
    with torch.no_grad():
        low.add_(0.5)  # changed in place: its version moved on
    memo.get("f", low, up, compute)
    assert len(calls) == 4
    memo.get("f", low[:2], up[:2], compute)  # another view of the same tensors
    assert len(calls) == 5


def test_identity_memo_keeps_relaxations_and_gradients():
    """Relaxing one grad-carrying box twice (as alpha-CROWN does once per start node) through the memo
    gives the values and the gradients of two independent computations."""
    from nlverify.bounds.relax import s_shaped

    g = torch.Generator().manual_seed(1)
    family = unary_relaxation("sigmoid")
    centre = torch.randn(200, generator=g, dtype=torch.float64) * 3
    width = torch.rand(200, generator=g, dtype=torch.float64) * 4
    alphas = torch.rand(2, 2, 200, generator=g, dtype=torch.float64)

    def run(share: bool):
        low = (centre - width).requires_grad_(True)
        up = (centre + width).requires_grad_(True)
        total = 0
        for k in range(2):
            if not share:
                s_shaped._RANGES.live.clear()
            r = family.relax(low.unsqueeze(0), up.unsqueeze(0), alphas[k].unsqueeze(1))
            total = total + (r.lower_slope * 3 + r.lower_intercept - r.upper_slope + 2 * r.upper_intercept).sum()
        total.backward()
        return total.detach(), low.grad, up.grad

    hits = s_shaped._RANGES.hits
    shared = run(True)
    assert s_shaped._RANGES.hits >= hits + 2  # the second relaxation reused both tangent ranges
    fresh = run(False)
    assert torch.equal(shared[0], fresh[0])
    for a, b in zip(shared[1:], fresh[1:]):  # gradients: equal up to the order of accumulation
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


def test_alpha_crown_leaves_no_graph_in_the_memo(tmp_path):
    """The last alpha iterate is never back-propagated; its identity-memo entries (which hold its
    autograd graph) must be dropped when alpha_crown returns, on success and on error alike."""
    from netgen import export, make_net
    from nlverify.bounds.alpha import AlphaOptions, alpha_crown
    from nlverify.bounds.relax import s_shaped
    from nlverify.model import load_onnx

    net, shape = make_net("sigmoid", "mlp", seed=3, width=12)
    model = load_onnx(export(net, shape, tmp_path / "net.onnx"))
    lower, upper = -torch.ones(1, *shape), torch.ones(1, *shape)
    before = s_shaped._RANGES.misses
    alpha_crown(model.graph, lower, upper, options=AlphaOptions(iterations=3), propagator=model.propagator)
    assert s_shaped._RANGES.misses > before  # the grad-carrying boxes did go through the memo
    assert len(s_shaped._RANGES.live) == 0

    def stop(best):
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        alpha_crown(model.graph, lower, upper, options=AlphaOptions(iterations=3, stop=stop),
                    propagator=model.propagator)
    assert len(s_shaped._RANGES.live) == 0

"""The domain store: lowest-gap-first selection, O(k) removal that keeps rows intact, memory cap."""
from __future__ import annotations

import pytest
import torch

from nlverify.verifier.domains import DomainStore, DomainStoreFull


def _push(store: DomainStore, gaps: list[float], depth: int = 0) -> None:
    gap = torch.tensor(gaps)
    # the row content encodes the gap, so we can check rows and gaps stay together
    fields = {"box": gap.unsqueeze(1).repeat(1, 3), "tag": (gap * 10).long()}
    store.push(fields, gap, torch.full((len(gaps),), depth, dtype=torch.long))


def test_pop_returns_lowest_gaps_and_keeps_rows_together():
    store = DomainStore()
    _push(store, [0.5, -3.0, -1.0, 2.0, -2.0, 0.0])
    batch = store.pop(3)
    assert sorted(batch.gap.tolist()) == [-3.0, -2.0, -1.0]
    assert torch.equal(batch.fields["box"][:, 0], batch.gap)
    assert len(store) == 3
    rest = store.drain()
    assert sorted(rest.gap.tolist()) == [0.0, 0.5, 2.0]
    assert torch.equal(rest.fields["box"][:, 1], rest.gap)
    assert torch.equal(rest.fields["tag"], (rest.gap * 10).long())
    assert len(store) == 0 and store.min_gap() == float("inf")


def test_many_rounds_match_a_reference_multiset():
    generator = torch.Generator().manual_seed(0)
    store, reference = DomainStore(), []
    for _ in range(50):
        gaps = (torch.rand(7, generator=generator) * 10 - 5).tolist()
        _push(store, gaps)
        reference += gaps
        batch = store.pop(5)
        reference.sort()
        expected, reference = reference[:5], reference[5:]
        assert sorted(batch.gap.tolist()) == pytest.approx(expected)
        assert torch.equal(batch.fields["box"][:, 2], batch.gap)
        assert len(store) == len(reference)
        assert store.min_gap() == pytest.approx(min(reference))


def test_memory_cap_raises_clear_error_and_depth_first_under_pressure():
    store = DomainStore(max_bytes=10 * (3 * 4 + 8 + 4 + 8))  # room for exactly 10 domains
    _push(store, [float(i) for i in range(6)], depth=1)
    _push(store, [-5.0, 9.0], depth=4)  # 8 of 10 -> over the depth-first threshold (0.8 * 10)
    _push(store, [-6.0], depth=0)
    assert store.room() == 1
    batch = store.pop(2)  # deepest first under memory pressure, lowest gap among them first
    assert batch.depth.tolist() == [4, 4] and sorted(batch.gap.tolist()) == [-5.0, 9.0]
    with pytest.raises(DomainStoreFull, match="domain store full"):
        _push(store, [1.0, 2.0, 3.0, 4.0])

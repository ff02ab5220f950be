"""A tiny soundness suite shared by the soundness tests (built once per test process)."""

from __future__ import annotations

import pytest

from nlverify.benchmarks.soundness.attack import AttackBudget
from nlverify.benchmarks.soundness.models import ACTIVATIONS

# A light attack: the tests check plumbing, the real budget is the default AttackBudget.
TEST_BUDGET = AttackBudget(restarts=64, steps=60, random_samples=2000, corner_samples=256)


@pytest.fixture(scope="session")
def tiny_suite(tmp_path_factory):
    import torch

    from nlverify.benchmarks.soundness.generate import generate_suite

    root = tmp_path_factory.mktemp("soundness")
    suite, key = root / "suite", root / "key"
    threads = torch.get_num_threads()
    summary = generate_suite(suite, key, activations=ACTIVATIONS, size="tiny", seed=3, budget=TEST_BUDGET,
                             timeout=20)
    assert torch.get_num_threads() == threads
    return suite, key, summary

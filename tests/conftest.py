"""Shared fixtures: where the shared VNN-COMP benchmarks live (tests using them skip when absent)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def benchmarks_root() -> Path:
    return Path(os.environ.get("NLVERIFY_BENCHMARKS", REPO.parent / "shared" / "benchmarks"))


@pytest.fixture(scope="session")
def benchmarks() -> Path:
    root = benchmarks_root()
    if not (root / "ground_truth.csv").is_file():
        pytest.skip(f"shared benchmarks not found at {root}")
    return root


@pytest.fixture(autouse=True)
def _single_thread_torch():
    """Tests run two workers on two cores: one torch thread each avoids oversubscription."""
    torch.set_num_threads(1)
    yield

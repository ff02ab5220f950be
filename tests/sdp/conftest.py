"""Shared fixtures for the Lipschitz tests: the reference weights in ``<repo>/../shared``."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


def shared_lipschitz_dir() -> Path:
    base = Path(os.environ["NLVERIFY_SHARED"]) if "NLVERIFY_SHARED" in os.environ else REPO_ROOT / ".." / "shared"
    return (base / "lipschitz").resolve()


@pytest.fixture
def lipschitz_file():
    """Path to a reference weights file; skips the test when the shared folder is absent."""
    def get(name: str) -> Path:
        path = shared_lipschitz_dir() / name
        if not path.is_file():
            pytest.skip(f"reference weights {name} not available (set NLVERIFY_SHARED)")
        return path
    return get

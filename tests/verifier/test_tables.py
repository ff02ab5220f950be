"""Building branching-point tables: the looseness objective, the optimiser, files, reproducibility, CLI."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from nlverify.bounds.relax import unary_relaxation
from nlverify.cli import main
from nlverify.verifier.lookup import table_directory
from nlverify.verifier.tables import (
    T_MIN, TABLE_ACTIVATIONS, TABLE_VERSION, build_table, coarsened, default_spec, optimal_relative_split,
    read_table_file, relaxation_area, save_table, split_looseness,
)


@pytest.mark.parametrize("activation", TABLE_ACTIVATIONS)
def test_area_is_the_integral_of_the_gap(activation: str) -> None:
    """``A(a, b)`` equals a dense trapezoid quadrature of ``U - L`` (exact here: the gap is affine)."""
    lower = torch.tensor([-3.0, -0.5, 1.0, 2.0], dtype=torch.float64)
    upper = torch.tensor([2.0, 0.25, 4.0, 2.0], dtype=torch.float64)
    rel = unary_relaxation(activation).relax(lower, upper)
    x = lower[:, None] + torch.linspace(0, 1, 2001, dtype=torch.float64) * (upper - lower)[:, None]
    gap = rel.upper_at(x.T).T - rel.lower_at(x.T).T
    quadrature = torch.trapezoid(gap, x, dim=1)
    area = relaxation_area(activation, lower, upper)
    assert torch.allclose(area, quadrature, rtol=1e-9, atol=1e-12)
    assert float(area[3]) == 0.0


@pytest.mark.parametrize("activation", ["sigmoid", "gelu", "sin", "exp"])
def test_optimiser_matches_brute_force(activation: str) -> None:
    lower = torch.tensor([-3.0, -1.0, 0.5, -2.0, -5.0], dtype=torch.float64)
    upper = torch.tensor([1.0, 4.0, 3.0, -1.9, 2.0], dtype=torch.float64)
    t, best = optimal_relative_split(activation, lower, upper)
    assert bool(((t >= T_MIN) & (t <= 1 - T_MIN)).all())
    assert torch.allclose(split_looseness(activation, lower, upper, lower + t * (upper - lower)), best)
    grid = torch.linspace(T_MIN, 1 - T_MIN, 981, dtype=torch.float64)
    brute = split_looseness(activation, lower[:, None], upper[:, None],
                            lower[:, None] + grid * (upper - lower)[:, None]).min(dim=1).values
    assert bool((best <= brute * (1 + 1e-6)).all())
    assert bool((best >= brute * (1 - 1e-3)).all())


def test_specs_cover_what_the_lookup_assumes() -> None:
    for activation in TABLE_ACTIVATIONS:
        spec = default_spec(activation)
        if spec.period > 0:   # the lower axis spans one full period (the lookup shifts l into it)
            assert math.isclose(spec.step * (spec.n_lower - 1), spec.period)
        else:
            assert spec.lower_start == spec.upper_start and spec.n_lower == spec.n_upper
    sine = default_spec("sin")
    assert math.isclose(sine.step * (sine.n_upper - sine.n_lower), 4 * math.pi)


def test_save_and_read_round_trip(tmp_path: Path) -> None:
    spec = coarsened(default_spec("sigmoid"), 40)
    built = build_table(spec)
    path = save_table(built, tmp_path)
    read_spec, t, anchor = read_table_file(path)
    assert read_spec == spec
    assert np.abs(t - built.t).max() <= 1 / 65534
    assert np.array_equal(anchor, built.anchor)
    assert np.all(t[~built.valid] == 0.5)


def test_wrong_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "sigmoid.npz"
    with np.load(table_directory() / "sigmoid.npz") as data:
        fields = dict(data)
    fields["version"] = np.asarray(TABLE_VERSION + 1)
    np.savez_compressed(path, **fields)
    with pytest.raises(ValueError, match="version"):
        read_table_file(path)


# activation -> coarsening factor of the shipped grid (a few dozen cells each: fast)
REBUILD = {"sigmoid": 32, "tanh": 32, "gelu": 30, "sin": 21, "cos": 21, "exp": 20}


@pytest.mark.parametrize("activation", TABLE_ACTIVATIONS)
def test_rebuilding_a_coarse_table_reproduces_the_shipped_cells(activation: str) -> None:
    """Every cell of a coarse rebuild is a shipped cell: same split (or an equally good one)."""
    shipped_spec, shipped_t, shipped_anchor = read_table_file(table_directory() / f"{activation}.npz")
    factor = REBUILD[activation]
    built = build_table(coarsened(shipped_spec, factor))
    rows = np.arange(built.spec.n_lower) * factor
    cols = np.arange(built.spec.n_upper) * factor
    ship_t = shipped_t[np.ix_(rows, cols)].astype(np.float64)
    ship_anchor = shipped_anchor[np.ix_(rows, cols)]
    valid = built.valid
    assert valid.sum() >= 10
    assert np.array_equal(built.anchor[valid], ship_anchor[valid])
    close = np.abs(built.t - ship_t)[valid] <= 2e-3
    assert close.mean() >= 0.9
    lows, ups = np.meshgrid(built.spec.lower_axis(), built.spec.upper_axis(), indexing="ij")
    lower, upper = torch.from_numpy(lows[valid]), torch.from_numpy(ups[valid])
    j_built = _looseness_of_cells(built.spec, lower, upper, built.t[valid], built.anchor[valid])
    j_ship = _looseness_of_cells(built.spec, lower, upper, ship_t[valid], ship_anchor[valid])
    assert torch.allclose(j_ship, j_built, rtol=1e-4, atol=1e-12)


def _looseness_of_cells(spec, lower: torch.Tensor, upper: torch.Tensor, t: np.ndarray,
                        anchor: np.ndarray) -> torch.Tensor:
    """``J`` at the split a cell prescribes: its anchor if it names one, else ``l + t (u - l)``."""
    point = lower + torch.from_numpy(t.astype(np.float64)) * (upper - lower)
    for k, a in enumerate(spec.anchors):
        point = torch.where(torch.from_numpy(anchor == k + 1), torch.full_like(point, a), point)
    return split_looseness(spec.activation, lower, upper, point)


def test_cli_build_and_evaluate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "tables"
    assert main(["tables", "build", "--out", str(out), "--activations", "exp", "--step", "1.0"]) == 0
    spec, t, _ = read_table_file(out / "exp.npz")
    assert spec.step == 1.0 and t.shape == (spec.n_lower, spec.n_upper)
    report = tmp_path / "figures.json"
    assert main(["tables", "evaluate", "--activations", "exp", "--samples", "50", "--json", str(report)]) == 0
    assert "exp" in capsys.readouterr().out and report.is_file()


@pytest.mark.parametrize("argv", [["tables"], ["tables", "build", "--step", "0"],
                                  ["tables", "evaluate", "--samples", "0"]])
def test_cli_bad_input(argv: list[str]) -> None:
    assert main(argv) == 2

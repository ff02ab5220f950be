"""The conjunction bound: exact for two rows (against an LP), a valid bound for more (never above the LP
optimum, never below the best single row, never above sampled values), and in branch and bound it
closes a conjunction that no single row can close without splitting."""
from __future__ import annotations

import math
import time

import numpy as np
import pytest
import torch
from scipy.optimize import linprog
from torch import nn

from netgen import export
from nlverify.model import load_onnx
from nlverify.verifier.bab import BabOptions, bab_search
from nlverify.verifier.conjunction import conjunction_gap, conjunction_lower_bound
from nlverify.verifier.problem import Problem


def _lp_min_max(a: np.ndarray, h: np.ndarray, low: np.ndarray, up: np.ndarray) -> float:
    """``min over the box of max_i (a_i . x + h_i)`` as an LP in ``(x, s)``: minimise ``s`` subject to
    ``a_i . x + h_i <= s``."""
    m, n = a.shape
    cost = np.zeros(n + 1)
    cost[-1] = 1.0
    rows = np.hstack([a, -np.ones((m, 1))])
    result = linprog(cost, A_ub=rows, b_ub=-h, bounds=list(zip(low, up)) + [(None, None)], method="highs")
    assert result.status == 0
    return float(result.fun)


def _random_case(generator: torch.Generator, k: int, m: int, n: int):
    a = torch.randn(k, m, n, generator=generator, dtype=torch.float64)
    a[:, :, 0] *= torch.rand(k, m, generator=generator, dtype=torch.float64) < 0.8  # some exact zeros
    constant = torch.randn(k, m, generator=generator, dtype=torch.float64)
    d = torch.randn(k, m, generator=generator, dtype=torch.float64)
    centre = torch.randn(k, n, generator=generator, dtype=torch.float64)
    radius = torch.rand(k, n, generator=generator, dtype=torch.float64) * torch.tensor([0.0, 1e-6, 1.0, 10.0])[
        torch.randint(0, 4, (k, n), generator=generator)].double()
    return a, constant, d, centre - radius, centre + radius


def test_two_rows_are_exact_and_more_rows_are_bounded_by_the_lp():
    generator = torch.Generator().manual_seed(0)
    for m in (1, 2, 3, 4):
        a, constant, d, low, up = _random_case(generator, 60, m, 5)
        bound = conjunction_lower_bound(a, constant, d, low, up)
        single = (constant - d + (a.clamp(min=0) * low.unsqueeze(1) + a.clamp(max=0) * up.unsqueeze(1)).sum(-1))
        assert (bound >= single.max(1).values - 1e-12).all()
        for i in range(a.shape[0]):
            exact = _lp_min_max(a[i].numpy(), (constant[i] - d[i]).numpy(), low[i].numpy(), up[i].numpy())
            assert float(bound[i]) <= exact + 1e-7 * (1 + abs(exact))
            if m <= 2:
                assert float(bound[i]) == pytest.approx(exact, abs=1e-7 * (1 + abs(exact)))


def test_bound_never_exceeds_sampled_values_of_the_maximum():
    generator = torch.Generator().manual_seed(1)
    a, constant, d, low, up = _random_case(generator, 40, 3, 4)
    bound = conjunction_lower_bound(a, constant, d, low, up)
    points = low.unsqueeze(1) + (up - low).unsqueeze(1) * torch.rand(40, 5000, 4, generator=generator,
                                                                     dtype=torch.float64)
    values = (torch.einsum("kmn,ksn->ksm", a, points) + (constant - d).unsqueeze(1)).max(-1).values
    assert (bound <= values.min(1).values + 1e-12).all()


def test_non_finite_rows_are_ignored_and_the_gap_keeps_a_margin():
    a = torch.tensor([[[1.0, 0.0], [-1.0, 0.0]]], dtype=torch.float64)
    low, up = torch.tensor([[-1.0, -1.0]]), torch.tensor([[1.0, 1.0]])
    d = torch.tensor([[-0.5, -0.5]])
    both = conjunction_lower_bound(a, torch.zeros(1, 2, dtype=torch.float64), d, low, up)
    assert float(both) == pytest.approx(0.5)  # max(x + 0.5, -x + 0.5) >= 0.5
    one = conjunction_lower_bound(a, torch.tensor([[0.0, -math.inf]], dtype=torch.float64), d, low, up)
    assert float(one) == pytest.approx(-0.5)  # only the first row: min of x + 0.5
    none = conjunction_lower_bound(a, torch.full((1, 2), -math.inf, dtype=torch.float64), d, low, up)
    assert float(none) == -math.inf
    gap = conjunction_gap(a, torch.zeros(1, 2, dtype=torch.float64), d, low, up)
    assert gap.dtype == torch.float32 and 0 < float(gap) < 0.5


class _Pair(nn.Module):
    """``y0 = x0 + relu(x1) / 10``, ``y1 = -x0 + relu(x1) / 10``."""

    def forward(self, x):
        shared = torch.relu(x[:, 1:]) / 10
        return torch.cat([x[:, :1] + shared, -x[:, :1] + shared], dim=1)


def test_input_split_closes_a_conjunction_at_the_root(tmp_path):
    """``y0 <= -0.5 and y1 <= -0.5`` on ``[-1, 1]^2`` needs ``x0 <= -0.4`` and ``x0 >= 0.4``: infeasible, but
    each row alone is violated somewhere, so no single row closes the root; the combination
    ``(y0 + y1) / 2 >= 0 > -0.5`` does."""
    model = load_onnx(export(_Pair(), (2,), tmp_path / "pair.onnx"))
    problem = Problem(0, 0, -torch.ones(2), torch.ones(2), torch.eye(2), torch.tensor([-0.5, -0.5]),
                      torch.full((2,), -math.inf))
    report, proved = bab_search(model, [problem], time.monotonic() + 20, BabOptions(mode="input"))
    assert report.status == "proved" and proved == [True]
    assert report.domains == 1 and report.rounds == 0
    feasible = Problem(0, 0, -torch.ones(2), torch.ones(2), torch.eye(2), torch.tensor([-0.5, 0.7]),
                       torch.full((2,), -math.inf))  # x0 = -0.6, x1 = 0 violates both rows
    report, _ = bab_search(model, [feasible], time.monotonic() + 20, BabOptions(mode="input"))
    assert report.status == "counterexample"

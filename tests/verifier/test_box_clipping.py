"""Box clipping (nlverify.verifier.box_clipping): no point that the linear bounds leave as a possible
violation is ever cut away, the cut is as deep as the rows allow, and clipped input-split BaB keeps
its verdicts while bounding fewer domains."""
from __future__ import annotations

import math
import time

import pytest
import torch

from netgen import export, make_net
from nlverify.model import load_onnx
from nlverify.verifier.bab import BabOptions, bab_problem
from nlverify.verifier.box_clipping import clip_to_violation
from nlverify.verifier.problem import Problem


def _random_case(seed: int, k: int = 200, m: int = 3, n: int = 4, cut: tuple[float, float] = (-0.2, 1.2)):
    """Random rows, thresholds and boxes, with degenerate dimensions, zero coefficients, rows without a
    finite bound, tiny and huge scales."""
    g = torch.Generator().manual_seed(seed)
    scale = 10.0 ** torch.randint(-4, 4, (k, 1, 1), generator=g).double()
    a = torch.randn(k, m, n, generator=g, dtype=torch.float64) * scale
    a[torch.rand(k, m, n, generator=g) < 0.2] = 0.0
    centre = torch.randn(k, n, generator=g, dtype=torch.float64) * 10.0 ** torch.randint(-2, 3, (k, 1), generator=g)
    radius = torch.rand(k, n, generator=g, dtype=torch.float64) * 10.0 ** torch.randint(-6, 2, (k, 1), generator=g)
    radius[torch.rand(k, n, generator=g) < 0.1] = 0.0
    lower, upper = (centre - radius).float(), (centre + radius).float()
    constant = torch.randn(k, m, generator=g, dtype=torch.float64) * scale.squeeze(-1)
    constant[torch.rand(k, m, generator=g) < 0.1] = -math.inf
    # thresholds around the rows' range over the box, so that some boxes are cut, some emptied, some kept
    low64, up64 = lower.double().unsqueeze(1), upper.double().unsqueeze(1)
    row_min = constant + (torch.minimum(a * low64, a * up64)).sum(-1)
    row_max = constant + (torch.maximum(a * low64, a * up64)).sum(-1)
    t = cut[0] + torch.rand(k, m, generator=g, dtype=torch.float64) * (cut[1] - cut[0])
    d = torch.where(torch.isfinite(row_min), row_min + t * (row_max - row_min), torch.zeros_like(row_min)).float()
    return a.float(), constant, d, lower, upper


@pytest.mark.parametrize("pairs", [False, True])
@pytest.mark.parametrize("seed", range(5))
def test_every_possible_violation_stays_inside_the_clipped_box(seed, pairs):
    a, constant, d, lower, upper = _random_case(seed)
    new_lower, new_upper, empty = clip_to_violation(a, constant, d, lower, upper, pairs=pairs)
    assert (new_lower >= lower).all() and (new_upper <= upper).all()
    g = torch.Generator().manual_seed(100 + seed)
    samples = 4000
    u = torch.rand(a.shape[0], samples, a.shape[2], generator=g, dtype=torch.float64)
    u[:, :8] = torch.randint(0, 2, (a.shape[0], 8, a.shape[2]), generator=g).double()  # corners too
    x = lower.double().unsqueeze(1) + u * (upper.double() - lower.double()).unsqueeze(1)  # (k, s, n)
    rows = torch.einsum("kmn,ksn->ksm", a.double(), x) + constant.unsqueeze(1) - d.double().unsqueeze(1)
    rows = torch.where(torch.isfinite(constant).unsqueeze(1), rows, torch.full_like(rows, -math.inf))
    possible = (rows <= 0).all(-1)  # (k, s): the linear bounds allow a violation here
    inside = ((x >= new_lower.double().unsqueeze(1)) & (x <= new_upper.double().unsqueeze(1))).all(-1)
    assert not (possible & ~inside).any()
    assert not (possible.any(1) & empty).any()
    # the random cases exercise every outcome
    shrunk = ((new_lower > lower) | (new_upper < upper)).any(1)
    assert empty.any() and (shrunk & ~empty).any() and (~shrunk & ~empty).any()


def test_the_cut_is_as_deep_as_one_row_allows():
    # y >= x0 + 2 x1 on [0, 1]^2 and a violation needs y <= 0.5: x0 <= 0.5 and x1 <= 0.25
    a = torch.tensor([[[1.0, 2.0]]])
    lower, upper = torch.zeros(1, 2), torch.ones(1, 2)
    new_lower, new_upper, empty = clip_to_violation(a, torch.zeros(1, 1, dtype=torch.float64),
                                                    torch.tensor([[0.5]]), lower, upper)
    assert not empty.item() and new_lower.tolist() == [[0.0, 0.0]]
    assert new_upper[0, 0].item() == pytest.approx(0.5, abs=1e-5) and new_upper[0, 0].item() >= 0.5
    assert new_upper[0, 1].item() == pytest.approx(0.25, abs=1e-5) and new_upper[0, 1].item() >= 0.25
    # a negative coefficient lifts the lower end: y >= -x0 + 1 and y <= 0.25 need x0 >= 0.75
    new_lower, _, _ = clip_to_violation(torch.tensor([[[-1.0, 0.0]]]), torch.ones(1, 1, dtype=torch.float64),
                                        torch.tensor([[0.25]]), lower, upper)
    assert new_lower[0, 0].item() == pytest.approx(0.75, abs=1e-5) and new_lower[0, 0].item() <= 0.75


def test_two_rows_that_exclude_each_other_empty_the_box():
    # y0 >= x0 needs x0 <= 0.4; y1 >= 1 - x0 needs x0 >= 0.6: no violation anywhere, though neither
    # row alone proves the box
    a = torch.tensor([[[1.0], [-1.0]]])
    constant = torch.tensor([[0.0, 1.0]], dtype=torch.float64)
    _, _, empty = clip_to_violation(a, constant, torch.tensor([[0.4, 0.4]]), torch.zeros(1, 1), torch.ones(1, 1))
    assert empty.tolist() == [True]
    _, _, empty = clip_to_violation(a, constant, torch.tensor([[0.6, 0.6]]), torch.zeros(1, 1), torch.ones(1, 1))
    assert empty.tolist() == [False]


def test_a_pair_of_rows_cuts_deeper_than_either_row():
    # violations need x0 - x1 <= 0 and x0 + x1 - 0.5 <= 0 on [0, 1]^2, so x0 <= 0.25 (at x0 = x1); each
    # row alone only gives x0 <= 0.5; their average, x0 - 0.25 <= 0, is a kink of the pair
    a = torch.tensor([[[1.0, -1.0], [1.0, 1.0]]])
    constant = torch.tensor([[0.0, -0.5]], dtype=torch.float64)
    lower, upper = torch.zeros(1, 2), torch.ones(1, 2)
    _, single, _ = clip_to_violation(a, constant, torch.zeros(1, 2), lower, upper, pairs=False)
    _, paired, _ = clip_to_violation(a, constant, torch.zeros(1, 2), lower, upper)
    assert single[0, 0].item() == pytest.approx(0.5, abs=1e-5)
    assert paired[0, 0].item() == pytest.approx(0.25, abs=1e-5) and paired[0, 0].item() >= 0.25
    assert paired[0, 1].item() == pytest.approx(0.5, abs=1e-5)


def _problem(d: float, inputs: int = 2) -> Problem:
    low, up = -torch.ones(inputs), torch.ones(inputs)
    return Problem(0, 0, low, up, torch.ones(1, 1), torch.tensor([d]), torch.full((1,), -math.inf))


@pytest.mark.parametrize("activation", ["relu", "tanh", "sin", "gelu"])
def test_clipped_search_keeps_its_verdicts_with_fewer_domains(tmp_path, activation):
    """Clipping, alone and with shrunk boxes bounded again, proves just below the true minimum and
    falsifies just above it, as the plain search does, and bounds fewer domains."""
    net, shape = make_net(activation, "mlp", seed=3, width=16, inputs=2, outputs=1)
    model = load_onnx(export(net, shape, tmp_path / "net.onnx"))
    grid = torch.stack(torch.meshgrid(torch.linspace(-1, 1, 401), torch.linspace(-1, 1, 401),
                                      indexing="ij"), -1).reshape(-1, 2)
    with torch.no_grad():
        bottom = float(model.forward(grid).min())
    configurations = {"plain": dict(clip_input_boxes=False), "clip": dict(rebound_volume_ratio=0.0),
                      "clip+rebound": dict(rebound_volume_ratio=0.9)}
    proved, found = {}, {}
    for name, settings in configurations.items():
        options = BabOptions(mode="input", **settings)
        proved[name] = bab_problem(model, _problem(bottom - 0.02), time.monotonic() + 30, options)
        found[name] = bab_problem(model, _problem(bottom + 0.02), time.monotonic() + 30, options)
        assert proved[name].status == "proved", (name, proved[name])
        assert found[name].status == "counterexample", (name, found[name])
    # measured (plain -> clip -> clip+rebound): relu 11 -> 9 -> 7 domains, tanh 11 -> 5 -> 3, sin 9 -> 3 -> 3,
    # gelu 9 -> 7 -> 7
    assert proved["clip"].domains < proved["plain"].domains
    assert proved["clip+rebound"].domains < proved["plain"].domains


def test_two_rows_clip_to_the_exact_projection_of_their_polytope():
    """With two rows, each new end is the exact extreme of ``x_j`` over ``{x in box: h_1, h_2 <= 0}``
    (a linear program), up to the proof margin: never inside it (unsound), and never beyond the
    extreme of the same program with the thresholds raised by a bound on the margin."""
    from scipy.optimize import linprog

    from nlverify.verifier.problem import PROOF_ABS_TOL, PROOF_REL_TOL

    a, constant, d, lower, upper = _random_case(7, k=80, m=2, n=3, cut=(0.2, 0.6))
    keep = torch.isfinite(constant).all(1) & ((upper - lower).min(1).values > 1e-3)
    a, constant, d, lower, upper = a[keep], constant[keep], d[keep], lower[keep], upper[keep]
    new_lower, new_upper, empty = clip_to_violation(a, constant, d, lower, upper, rounds=1)

    def extreme(objective, A, b, box):
        solved = linprog(objective, A_ub=A, b_ub=b, bounds=box, method="highs")
        assert solved.status in (0, 2)
        return None if solved.status == 2 else solved.fun

    checked = 0
    for k in range(a.shape[0]):
        A = a[k].double().numpy()
        b = (d[k].double() - constant[k]).numpy()
        box = list(zip(lower[k].double().tolist(), upper[k].double().tolist()))
        reach = float(a[k].double().abs().sum(1).max()) * float(torch.maximum(lower[k].abs(), upper[k].abs()).max())
        margin = 2 * (PROOF_ABS_TOL + PROOF_REL_TOL * (float(b.__abs__().max()) + float(d[k].abs().max()) + reach))
        for j in range(A.shape[1]):
            for sign, end in ((1.0, new_lower), (-1.0, new_upper)):
                objective = [0.0] * A.shape[1]
                objective[j] = sign
                exact = extreme(objective, A, b, box)
                if exact is None:
                    continue  # the box holds no violation; clipping may or may not see it
                assert not empty[k], k
                loose = extreme(objective, A, b + margin, box)
                value = sign * end[k, j].item()  # the clip's bound on sign * x_j, as a minimum
                assert value <= exact + 1e-9 * (1 + abs(exact)), (k, j, sign)
                assert value >= loose - 1e-9 * (1 + abs(loose)), (k, j, sign)
                checked += 1
    assert checked > 50
    # the pair's combinations matter on these cases: single rows leave some ends looser
    single_lower, single_upper, _ = clip_to_violation(a, constant, d, lower, upper, rounds=1, pairs=False)
    assert ((single_upper > new_upper) | (single_lower < new_lower))[~empty].any()

"""Input-split steering: a row that the network violates somewhere in a box never steers its split,
however tight its bound, and the test that says so only ever answers "hopeless" with a witness."""
from __future__ import annotations

import math
import time

import torch
from torch import nn

from netgen import export
from nlverify.model import load_onnx
from nlverify.verifier.bab import BabOptions
from nlverify.verifier.input_split import InputSplitSearch
from nlverify.verifier.problem import Problem

RHO = 0.005


class _BowlAndLine(nn.Module):
    """``y0 = |x|^2`` (a Lyapunov-style bowl, minimum 0 at the origin), ``y1 = x0 + 5``."""

    def forward(self, x):
        bowl = (x * (x @ torch.eye(2))).sum(-1, keepdim=True)
        return torch.cat([bowl, x[:, :1] + 5.0], -1)


def _search(tmp_path, low, up, d, steer=True):
    model = load_onnx(export(_BowlAndLine(), (2,), tmp_path / "bowl.onnx"))
    problem = Problem(0, 0, low, up, torch.eye(2), d, torch.full((2,), -math.inf))
    options = BabOptions(mode="input", steer_by_provable_rows=steer)
    return model, problem, InputSplitSearch(model, [problem], time.monotonic() + 30, options)


def test_a_row_violated_inside_the_box_is_not_provable(tmp_path):
    # box [-0.1, 1]^2: the bowl is below RHO only near the origin, not at the centre (0.405) nor at
    # any corner (>= 0.02), so only a descent finds the witness; y1 >= 4.9 > 1 everywhere
    low, up = torch.full((2,), -0.1), torch.ones(2)
    model, problem, search = _search(tmp_path, low, up, torch.tensor([RHO, 1.0]))
    provable = search._provable_rows(low[None], up[None], torch.tensor([0]))
    assert provable.tolist() == [[False, True]]
    # violated by RHO = 0.005: a sizeable part of a gap of 0.001, a sliver of a gap of 1.0 (most of
    # that gap is looseness that splitting removes, so the row still steers)
    tight, loose = torch.tensor([[-0.001, -0.5]]), torch.tensor([[-1.0, -0.5]])
    assert search._provable_rows(low[None], up[None], torch.tensor([0]), tight).tolist() == [[False, True]]
    assert search._provable_rows(low[None], up[None], torch.tensor([0]), loose).tolist() == [[True, True]]
    # the steering row: the bowl's bound is the better one here, yet the line steers
    lb = torch.tensor([[-0.001, -0.5]])
    assert search._steering_rows(low[None], up[None], lb, torch.tensor([0])).tolist() == [1]
    _, _, plain = _search(tmp_path, low, up, torch.tensor([RHO, 1.0]), steer=False)
    assert plain._steering_rows(low[None], up[None], lb, torch.tensor([0])).tolist() == [0]


def test_hopeless_only_with_a_witness(tmp_path):
    generator = torch.Generator().manual_seed(0)
    centre = torch.rand(64, 2, generator=generator) * 2 - 1
    radius = torch.rand(64, 2, generator=generator) * 0.5
    low, up = centre - radius, centre + radius
    _, _, search = _search(tmp_path, torch.full((2,), -2.0), torch.full((2,), 2.0), torch.tensor([RHO, 4.5]))
    provable = search._provable_rows(low, up, torch.zeros(64, dtype=torch.long))
    # exact minima over each box: the bowl's at the point of the box nearest the origin, the line's at x0 = l0
    nearest = torch.minimum(torch.maximum(torch.zeros_like(low), low), up)
    bowl_min = (nearest ** 2).sum(1)
    line_min = low[:, 0] + 5.0
    assert not (~provable[:, 0] & (bowl_min > RHO)).any()
    assert not (~provable[:, 1] & (line_min > 4.5)).any()
    assert (~provable[:, 0]).any() and provable[:, 0].any()


def test_alternate_branching_is_strong_every_few_depths(tmp_path):
    model = load_onnx(export(_BowlAndLine(), (2,), tmp_path / "bowl.onnx"))
    problem = Problem(0, 0, -torch.ones(2), torch.ones(2), torch.eye(2), torch.ones(2), torch.full((2,), -math.inf))
    depth = torch.arange(9)
    for every, expected in ((4, [0, 4, 8]), (2, [0, 2, 4, 6, 8]), (1, list(range(9)))):
        options = BabOptions(mode="input", input_branching="alternate", strong_every=every)
        strong = InputSplitSearch(model, [problem], time.monotonic() + 30, options)._strong_domains(depth)
        assert depth[strong].tolist() == expected
    # auto: alternate on few inputs (this model has 2), every BabOptions.strong_every depths
    auto = InputSplitSearch(model, [problem], time.monotonic() + 30, BabOptions(mode="input", strong_every=3))
    assert depth[auto._strong_domains(depth)].tolist() == [0, 3, 6]
    # ... but never where boxes are bounded by forward bounds (a costly network: 2 n of them per scored domain)
    costly = BabOptions(mode="input", strong_every=3, input_forward_min_cost=0.0)
    assert not InputSplitSearch(model, [problem], time.monotonic() + 30, costly)._strong_domains(depth).any()


def test_strong_scoring_stops_at_the_deadline_and_leaves_smear(tmp_path):
    low, up = torch.full((2,), -1.0), torch.ones(2)
    _, _, search = _search(tmp_path, low, up, torch.tensor([RHO, 1.0]))
    boxes_low, boxes_up = torch.rand(8, 2) - 1, torch.rand(8, 2)
    smear = torch.rand(8, 2)
    problem = torch.zeros(8, dtype=torch.long)
    strong = torch.ones(8, dtype=torch.bool)
    scores = smear.clone()
    search.deadline = time.monotonic() + 60
    search._strong_scores(scores, strong, boxes_low, boxes_up, problem)
    assert torch.equal(scores, search.strong_input_scores(boxes_low, boxes_up, problem))
    scores = smear.clone()
    search.deadline = time.monotonic() - 1  # no time left: nothing is strong-scored
    search._strong_scores(scores, strong, boxes_low, boxes_up, problem)
    assert torch.equal(scores, smear)

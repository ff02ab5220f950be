"""The search bookkeeping shared by both splitting modes: per-point violations and per-problem verdicts
(a problem is proved only when none of its domains is open in the store or in flight)."""
from __future__ import annotations

import math
import time

import torch

from netgen import export, make_net
from nlverify.model import load_onnx
from nlverify.verifier.bab import BabOptions
from nlverify.verifier.problem import Problem
from nlverify.verifier.search import Search, violation


def _model(tmp_path):
    net, shape = make_net("tanh", "mlp", seed=3, width=8, inputs=2, outputs=2)
    return load_onnx(export(net, shape, tmp_path / "tanh.onnx"))


def _problem(row: list[float], d: float) -> Problem:
    return Problem(0, 0, -torch.ones(2), torch.ones(2), torch.tensor([row]), torch.tensor([d]), torch.tensor([-math.inf]))


def test_violation_with_shared_and_per_point_rows(tmp_path):
    model = _model(tmp_path)
    x = torch.rand(5, 2) * 2 - 1
    C, d = torch.tensor([[1.0, -1.0], [0.0, 1.0]]), torch.tensor([0.5, -0.2])
    shared = violation(model, x, C, d)
    per_point = violation(model, x, C.expand(5, 2, 2), d.expand(5, 2))
    torch.testing.assert_close(shared, per_point)
    y = model.forward(x)
    torch.testing.assert_close(shared, torch.maximum(y[:, 0] - y[:, 1] - 0.5, y[:, 1] + 0.2))


def test_a_problem_is_proved_only_when_no_domain_of_it_is_open_or_in_flight(tmp_path):
    model = _model(tmp_path)
    search = Search(model, [_problem([1.0, 0.0], 0.0), _problem([0.0, 1.0], 0.0), _problem([1.0, 1.0], 0.0)],
                    time.monotonic() + 10, BabOptions())
    assert search.problems_proved() == [True, True, True]  # nothing open yet
    fields = {"problem": torch.tensor([1, 1, 2]), "x": torch.zeros(3, 2)}
    lower = torch.tensor([[-1.0], [-2.0], [-0.5]])  # all open (below d = 0)
    search.push_open(fields, lower, torch.zeros(3, dtype=torch.long))
    assert search.problems_proved() == [True, False, False]
    batch = search.pop(1)  # the lowest gap: problem 1's second domain
    assert batch.fields["problem"].tolist() == [1]
    search.pop(2)  # the store is empty, but problems 1 and 2 are in flight
    assert len(search.store) == 0 and search.problems_proved() == [True, False, False]
    search.expired()  # the next round starts: the previous children were all pushed or closed
    assert search.problems_proved() == [True, True, True]
    closed = torch.tensor([[1.0]])  # above d with margin: not pushed
    search.push_open({"problem": torch.tensor([0]), "x": torch.zeros(1, 2)}, closed, torch.zeros(1, dtype=torch.long))
    assert len(search.store) == 0


class _Clock:
    """A ``time`` stand-in whose ``monotonic()`` the test sets."""

    def __init__(self, now: float) -> None:
        self.now = now

    def monotonic(self) -> float:
        return self.now


def test_a_round_is_not_started_when_a_recent_round_says_it_would_overrun(tmp_path, monkeypatch):
    from nlverify.verifier import search as search_module

    clock = _Clock(100.0)
    monkeypatch.setattr(search_module, "time", clock)
    search = Search(_model(tmp_path), [_problem([1.0, 0.0], 0.0)], 110.0, BabOptions())
    assert not search.expired()  # the first round starts at 100
    clock.now = 105.0
    assert not search.expired()  # it took 5 s: 105 + 5 is not past 110
    clock.now = 105.1
    assert search.expired()  # a 0.1 s round, but the recent 5 s one would overrun (the last alone would not)
    # time a search budgets itself (input split's strong scoring) is left out of the prediction
    other = Search(_model(tmp_path), [_problem([1.0, 0.0], 0.0)], 110.0, BabOptions())
    clock.now = 100.0
    other.expired()
    other.round_time_excluded = 4.9
    clock.now = 105.0
    assert not other.expired() and abs(other.next_round_seconds() - 0.1) < 1e-9

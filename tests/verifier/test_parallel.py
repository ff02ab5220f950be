"""Input-split BaB sharded across forked workers: the same verdicts as one process, a counterexample from
any worker, work handed over on request, and never a proof when a worker fails or dies."""
from __future__ import annotations

import math
import os
import time
from multiprocessing import Pipe

import numpy as np
import pytest
import torch
from torch import nn

from netgen import export
from nlverify.model import load_onnx
from nlverify.verifier import parallel
from nlverify.verifier.bab import BabOptions, bab_search
from nlverify.verifier.domains import Popped
from nlverify.verifier.input_split import InputSplitSearch
from nlverify.verifier.problem import Problem

pytestmark = pytest.mark.skipif("fork" not in parallel.multiprocessing.get_all_start_methods(),
                                reason="workers are forked")

# the violation asks for sin(5 x0) cos(5 x1) <= d on [-1, 1]^2, whose minimum is -1 (at x0 = -pi/10,
# x1 = 0, among others): unsat below it, sat above; at d = -1.001 one process bounds 151 domains, enough
# to be dealt to several workers
TRUE_MINIMUM = -1.0


class _Waves(nn.Module):
    def forward(self, x):
        return torch.sin(5 * x[:, :1]) * torch.cos(5 * x[:, 1:])


@pytest.fixture(scope="module")
def waves(tmp_path_factory):
    return load_onnx(export(_Waves(), (2,), tmp_path_factory.mktemp("waves") / "waves.onnx"))


def _problem(d: float) -> Problem:
    return Problem(0, 0, -torch.ones(2), torch.ones(2), torch.ones(1, 1), torch.tensor([d]),
                   torch.full((1,), -math.inf))


def _options(**kwargs) -> BabOptions:
    settings = dict(mode="input", input_workers=2, parallel_after_s=0.0, input_batch_domains=4)
    settings.update(kwargs)
    return BabOptions(**settings)


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_sharded_search_proves_what_one_process_proves(waves, workers):
    report, proved = bab_search(waves, [_problem(TRUE_MINIMUM - 1e-3)], time.monotonic() + 60,
                                _options(input_workers=workers))
    assert report.status == "proved" and proved == [True]
    if workers == 1:
        assert report.processes == 0
    else:
        assert report.processes >= workers  # one per shard, more when work is handed over


def test_sharded_search_returns_a_workers_counterexample(waves):
    report, proved = bab_search(waves, [_problem(TRUE_MINIMUM + 2e-3)], time.monotonic() + 60, _options())
    assert report.status == "counterexample" and proved == [False]
    x = torch.as_tensor(report.counterexample, dtype=torch.float64)
    assert float(torch.sin(5 * x[0]) * torch.cos(5 * x[1])) <= TRUE_MINIMUM + 2e-3 and bool((x.abs() <= 1).all())


def test_deal_is_round_robin():
    popped = Popped({"low": torch.arange(10.0).reshape(5, 2)}, torch.arange(5.0), torch.arange(5))
    first, second = parallel.deal(popped, 2)
    assert first.gap.tolist() == [0.0, 2.0, 4.0] and second.gap.tolist() == [1.0, 3.0]
    assert second.fields["low"].tolist() == [[2.0, 3.0], [6.0, 7.0]]


def test_a_worker_hands_over_half_of_its_domains_on_request(waves):
    search = InputSplitSearch(waves, [_problem(0.0)], time.monotonic() + 60, _options())
    low = torch.rand(6, 2) - 1
    fields = {"low": low, "up": low + 0.1, "problem": torch.zeros(6, dtype=torch.long)}
    search.store.push(fields, -torch.arange(6.0), torch.zeros(6, dtype=torch.long))
    parent_end, worker_end = Pipe()
    parallel._answer_share_requests(search, worker_end)  # no request: nothing happens
    assert len(search.store) == 6 and not parent_end.poll()
    parent_end.send("share")
    parallel._answer_share_requests(search, worker_end)
    kind, arrays = parent_end.recv()
    given = parallel._from_numpy(arrays)
    assert kind == "shard" and len(given) == 3 and len(search.store) == 3
    kept = set(search.store.values("low")[:, 0].tolist())
    assert kept.isdisjoint(given.fields["low"][:, 0].tolist()) and len(kept | set(given.fields["low"][:, 0].tolist())) == 6


def _failing_rounds(action):
    original = InputSplitSearch.search_rounds

    def rounds(self, until=None, min_open=1):
        if until is None:  # only the forked workers run without a pause time
            action()
        return original(self, until, min_open)
    return rounds


def test_an_error_in_a_worker_is_raised_in_the_parent(waves, monkeypatch):
    def fail():
        raise ValueError("injected")
    monkeypatch.setattr(InputSplitSearch, "search_rounds", _failing_rounds(fail))
    with pytest.raises(RuntimeError, match="worker failed: ValueError: injected"):
        bab_search(waves, [_problem(TRUE_MINIMUM - 1e-3)], time.monotonic() + 60, _options())


def test_a_worker_that_dies_leaves_the_problem_open(waves, monkeypatch):
    monkeypatch.setattr(InputSplitSearch, "search_rounds", _failing_rounds(lambda: os._exit(3)))
    report, proved = bab_search(waves, [_problem(TRUE_MINIMUM - 1e-3)], time.monotonic() + 60, _options())
    assert report.status == "timeout" and proved == [False]


def test_a_search_that_ends_before_the_pause_forks_nothing(waves):
    report, proved = bab_search(waves, [_problem(TRUE_MINIMUM - 1e-3)], time.monotonic() + 60,
                                _options(parallel_after_s=30.0))
    assert report.status == "proved" and proved == [True] and report.processes == 0
    assert np.isfinite(report.seconds)


def test_a_worker_whose_parent_is_gone_exits(waves, monkeypatch):
    search = InputSplitSearch(waves, [_problem(0.0)], time.monotonic() + 60, _options())
    parent_end, worker_end = Pipe()

    def exit_(code):
        raise SystemExit(code)
    monkeypatch.setattr(parallel.os, "_exit", exit_)
    parallel._answer_share_requests(search, worker_end, os.getppid())  # the parent is alive: no exit
    with pytest.raises(SystemExit):
        parallel._answer_share_requests(search, worker_end, os.getppid() + 1)

"""What every branch-and-bound search shares: the open-domain store, the problems it covers, the
falsification hooks, and the bookkeeping that turns an ended search into per-problem verdicts.

A search covers one or more problems (see :mod:`nlverify.verifier.pipeline`) with the same region box
and row count. Every domain carries the index of its problem (field ``"problem"``), from which its rows
``C`` and thresholds ``d`` are looked up, so domains of different problems share a round's batched bound
call. A problem is proved when no domain of it is left open: neither in the store nor in the batch
being worked on when the search ended.

Falsification: each round evaluates the model at points the bounds suggest (the minimiser of a
domain's linear lower bound, box centres); every ``attack_every`` rounds a short PGD runs from the
worst domains. A point with ``max_i (C f(x) - d)_i <= 0`` is returned as a candidate; the pipeline
reports ``sat`` only after onnxruntime confirms it on the original file.
"""
from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import numpy as np
import torch
from torch import Tensor

from nlverify import faults  # TEST-ONLY bug injection; inert unless NLVERIFY_INJECT_BUG is set
from nlverify.graph import Graph
from nlverify.verifier.domains import DomainStore, domain_gap
from nlverify.verifier.problem import Problem

if TYPE_CHECKING:
    from nlverify.verifier.bab import BabOptions

__all__ = ["BabReport", "Search", "violation", "ROUND_MEMORY"]

ROUND_MEMORY = 8  # rounds whose longest duration predicts the next (see Search.expired)


@dataclass
class BabReport:
    """What BaB concluded for one problem, with counters for the log."""

    status: str  # "proved", "counterexample", "timeout", "memory", "stuck"
    counterexample: np.ndarray | None = None
    rounds: int = 0
    domains: int = 0  # domains bounded (children)
    open_domains: int = 0
    max_depth: int = 0
    worst_gap: float = -math.inf
    inherited_closed: int = 0  # input split: children closed by the parent's linear bound alone
    mode: str = ""
    message: str = ""
    seconds: float = 0.0
    problem: int = 0  # with a counterexample: which problem of the search it falsifies
    processes: int = 0  # input split: worker processes forked (nlverify.verifier.parallel); 0 when serial


def violation(model, x: Tensor, C: Tensor, d: Tensor) -> Tensor:
    """``max_i (C f(x) - d)_i`` per point: ``<= 0`` means ``x`` violates the property. ``C`` ``(m, outputs)``
    and ``d`` ``(m,)`` for all points, or ``(k, m, outputs)`` and ``(k, m)`` per point."""
    with torch.no_grad():
        y = model.forward(x)
    values = y @ C.T if C.dim() == 2 else (C @ y.unsqueeze(-1)).squeeze(-1)
    return (values - d).max(1).values


class Search:
    """State of one BaB search: the store, its field layout, and the falsification hooks (subclasses
    implement :meth:`run` for one way of splitting).

    A search covers one or more problems of the same region box and row count (activation split runs
    all of a region's problems in one store, so every round bounds domains of all of them in one
    batched call). Every domain carries its problem's index (field ``"problem"``); its rows ``C`` and
    thresholds ``d`` are looked up from it."""

    def __init__(self, model, problems: list[Problem], deadline: float, options: BabOptions) -> None:
        self.model = model
        self.graph: Graph = model.graph
        self.propagator = model.propagator
        self.problems = problems
        self.problem = problems[0]  # the region box is the same for all
        self.deadline = deadline
        self.options = options
        self.Cs = torch.stack([p.C for p in problems])  # (P, m, outputs)
        self.ds = torch.stack([p.d for p in problems])  # (P, m)
        device = self.problem.C.device
        self.store = DomainStore(options.max_memory_bytes, device=device)
        self.report = BabReport("timeout")
        self.in_flight = torch.zeros(0, dtype=torch.long, device=device)  # problems of the popped batch
        self.found_problem: int | None = None
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(options.seed)
        self._round_started: float | None = None
        self._round_durations: deque[float] = deque(maxlen=ROUND_MEMORY)
        # seconds of the current round that a search budgets separately (input split's strong scoring)
        self.round_time_excluded = 0.0
        # called at the top of every round with the search (a parallel worker answers work requests there)
        self.round_hook: Callable[[Search], None] | None = None
        # problems with domains still open in parallel workers (see nlverify.verifier.parallel)
        self.open_in_workers = torch.zeros(len(problems), dtype=torch.bool, device=device)

    def expired(self) -> bool:
        """Called once at the top of every round: True when the deadline has passed, or when the longest
        of the last :data:`ROUND_MEMORY` rounds says the next one would end after it (a round cannot be
        interrupted, so the budget is honoured by not starting one that cannot finish). The previous
        round's children are all pushed or closed by now, so nothing is in flight.

        The longest, not the last: a round can cost several times its predecessor. Time a search budgets
        on its own (``round_time_excluded``) is left out: input split's strong scoring, which comes every
        few depths (a planted soundness-suite net, 8 inputs: smear rounds 0.2-0.6 s, strong ones 2.9
        and 5.9 s; judged by the last round alone, ``verify --timeout 10`` ended after 15.6 s)."""
        self.in_flight = self.in_flight[:0]
        now = time.monotonic()
        if self._round_started is not None:
            self._round_durations.append(now - self._round_started - self.round_time_excluded)
        self._round_started, self.round_time_excluded = now, 0.0
        return now + self.next_round_seconds() > self.deadline

    def next_round_seconds(self) -> float:
        """The predicted duration of the next round: the longest of the last :data:`ROUND_MEMORY`."""
        return max(self._round_durations, default=0.0)

    def reset_round_clock(self) -> None:
        """Start timing afresh (a forked worker's first round); the past rounds' durations stay as the
        prediction for it, so a worker forked near the deadline does not start a round blind."""
        self._round_started, self.round_time_excluded = None, 0.0

    def problems_proved(self) -> list[bool]:
        """Per problem: no domain of it is open in the store, in the batch being worked on, or in a
        parallel worker."""
        still_open = self.open_in_workers.clone()
        still_open[self.store.values("problem").long()] = True
        still_open[self.in_flight] = True
        return (~still_open).tolist()

    def check_points(self, x: Tensor, problem: Tensor) -> np.ndarray | None:
        """The first point (flattened) with a non-positive violation of its domain's problem ``(k,)``, as
        float64, else None (records which problem it falsifies)."""
        if x.shape[0] == 0:
            return None
        v = violation(self.model, x.reshape(x.shape[0], -1), self.Cs[problem], self.ds[problem])
        hits = torch.nonzero(v <= 0).flatten()
        if hits.numel() == 0:
            return None
        best = hits[torch.argmin(v[hits])]
        self.found_problem = int(problem[best])
        lower, upper = self.problem.lower.double(), self.problem.upper.double()
        point = torch.minimum(torch.maximum(x.reshape(x.shape[0], -1)[best].double(), lower), upper)
        return point.cpu().numpy()

    def pgd_attack(self, x0: Tensor, lower: Tensor, upper: Tensor, problem: Tensor) -> np.ndarray | None:
        from nlverify.verifier.attack import AttackOptions, ViolationTensors, pgd

        k = x0.shape[0]
        spec = ViolationTensors(self.Cs[problem], self.ds[problem], torch.arange(k, device=x0.device), lower, upper)
        options = AttackOptions(steps=self.options.attack_steps, start_step=0.2, end_step=1e-3,
                                seed=self.options.seed)
        best_x, _ = pgd(self.model, spec, x0, torch.arange(k, device=x0.device), options, self.deadline)
        return self.check_points(best_x, problem)

    def finish(self, status: str, counterexample: np.ndarray | None = None, message: str = "") -> BabReport:
        if status == "proved":  # the last batch's children were all pushed or closed: nothing is in flight
            self.in_flight = self.in_flight[:0]
        self.report.status = status
        self.report.counterexample = counterexample
        self.report.open_domains = len(self.store)
        self.report.max_depth = max(self.report.max_depth, self.store.max_depth())
        self.report.worst_gap = self.store.min_gap() if len(self.store) else self.report.worst_gap
        self.report.message = message
        return self.report

    def push_open(self, fields: dict[str, Tensor], lower: Tensor, depth: Tensor,
                  conjunction_gap: Tensor | None = None) -> None:
        """Store the domains not yet closed. ``conjunction_gap`` (``(k,)``, optional): a gap of the whole
        conjunction (:mod:`nlverify.verifier.conjunction`); ``> 0`` closes a domain like a proved row."""
        gap = domain_gap(lower, self.ds[fields["problem"]])  # > 0 exactly where closed_domains says closed
        if conjunction_gap is not None:
            gap = torch.maximum(gap, conjunction_gap)
        keep = ~(gap > 0)
        if faults.ACTIVE: keep = faults.drop_domains(keep)  # TEST-ONLY fault hook (faults.py)
        self.report.domains += lower.shape[0]
        if keep.any():
            self.store.push({n: v[keep] for n, v in fields.items()}, gap[keep], depth[keep])

    def pop(self, k: int):
        """The next batch; its problems count as open until their children are pushed or closed."""
        batch = self.store.pop(k)
        self.in_flight = batch.fields["problem"]
        return batch

    def run(self) -> BabReport:
        raise NotImplementedError

"""Input-split branch and bound on several CPU cores: the open domains are dealt to forked workers.

Why
    An input-split round on a small network is many small tensor operations, and torch's intra-op
    threads speed it up little: lsnc state_0 problem 0, BaB alone, takes 252.6 s on one thread and
    181.2 s on two (1.39x). Domains are independent of each other, so processes that each own part of
    the tree can use every core.

How
    The search first runs alone for ``BabOptions.parallel_after_s`` seconds; most problems end there
    and pay nothing. If domains are still open, they are drained from the store (worst gap first) and
    dealt round-robin into one shard per worker, so that every shard gets its share of the hard domains.
    Each worker is a forked copy of the search with one torch thread and its shard in a fresh store (the
    memory cap divided among the workers). It runs the same rounds until its shard is closed, it finds
    a counterexample, or the deadline passes.

    When a worker has closed its shard while others still run, the parent asks the worker that has
    gone longest without handing work over to give up half of its open domains (every second one,
    worst gap first), and forks a fresh worker for them; no core idles while work remains.

Verdicts
    A counterexample from any worker ends the search and the others are stopped; the pipeline confirms
    it in onnxruntime, as for a serial search. A problem is proved only when every worker has reported
    and none has a domain of it open. A worker that dies without a report (killed, out of memory) or
    overruns the deadline leaves every problem open: the search then ends in a timeout, never in a
    proof. An exception inside a worker is raised again in the parent.

Workers are forked, so they share the loaded model with the parent at no cost and start in
milliseconds; the domains travel between processes as numpy arrays. CPU only
(:func:`~nlverify.verifier.input_rules.input_workers`).
"""
from __future__ import annotations

import math
import multiprocessing
import os
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait

import numpy as np
import torch

from nlverify.verifier.domains import DomainStore, Popped
from nlverify.verifier.search import BabReport, Search

__all__ = ["WorkerReport", "deal", "run_sharded"]

GRACE_S = 5.0  # how long past the deadline a worker may take to report before it is stopped
RETRY_SHARE_S = 0.5  # a worker that had too little to share is asked again after this long
MIN_SHARE = 2  # a worker hands over half of its open domains only when it holds at least this many


@dataclass
class WorkerReport:
    """What one worker sends back when its rounds end."""

    status: str
    counterexample: np.ndarray | None
    found_problem: int | None
    open_problems: list[bool]  # per problem of the search: a domain of it is still open in this worker
    rounds: int
    domains: int
    inherited_closed: int
    open_domains: int
    max_depth: int
    worst_gap: float
    message: str


def deal(popped: Popped, shards: int) -> list[Popped]:
    """``popped`` dealt round-robin into ``shards`` parts (domain ``i`` to part ``i mod shards``)."""
    return [Popped({name: value[s::shards] for name, value in popped.fields.items()}, popped.gap[s::shards],
                   popped.depth[s::shards]) for s in range(shards)]


def _to_numpy(popped: Popped) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    return ({name: value.numpy() for name, value in popped.fields.items()}, popped.gap.numpy(),
            popped.depth.numpy())


def _from_numpy(arrays: tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]) -> Popped:
    fields, gap, depth = arrays
    return Popped({name: torch.from_numpy(value) for name, value in fields.items()}, torch.from_numpy(gap),
                  torch.from_numpy(depth))


def _answer_share_requests(search: Search, connection: Connection, parent: int | None = None) -> None:
    """A worker's round hook: on a request, hand every second open domain (worst gap first) to the
    parent, or None when holding fewer than :data:`MIN_SHARE`. A worker whose parent (pid ``parent``)
    is gone exits: a killed ``verify`` leaves no search running behind it."""
    if parent is not None and os.getppid() != parent:
        os._exit(0)
    if not connection.poll():
        return
    connection.recv()
    if len(search.store) < MIN_SHARE:
        connection.send(("shard", None))
        return
    popped = search.store.drain()
    kept, given = deal(popped, 2)
    search.store.push(kept.fields, kept.gap, kept.depth)
    connection.send(("shard", _to_numpy(given)))


def _worker_report(search: Search, report: BabReport) -> WorkerReport:
    return WorkerReport(report.status, report.counterexample, search.found_problem,
                        [not p for p in search.problems_proved()],
                        report.rounds, report.domains, report.inherited_closed, report.open_domains,
                        report.max_depth, report.worst_gap, report.message)


def _work(search: Search, shard: Popped, connection: Connection, store_bytes: int, parent: int) -> None:
    """The body of a forked worker: its shard's rounds, then one message ("done" or "error") and exit."""
    try:
        torch.set_num_threads(1)
        search.store = DomainStore(store_bytes, device=search.store.device)
        search.store.push(shard.fields, shard.gap, shard.depth)
        search.report = BabReport("timeout", mode=search.report.mode)
        search.reset_round_clock()
        search.round_hook = lambda s: _answer_share_requests(s, connection, parent)
        report = search.search_rounds()
        connection.send(("done", _worker_report(search, report)))
    except BaseException as error:  # noqa: BLE001 -- reported to the parent, which raises it again
        try:
            connection.send(("error", f"{type(error).__name__}: {error}"))
        except OSError:
            pass
    finally:
        connection.close()
        os._exit(0)  # no atexit handlers or buffered output of the parent's copy


@dataclass
class _Worker:
    process: multiprocessing.Process
    since: float  # when it started or last answered a share request
    asked: bool = False
    next_ask: float = 0.0


@dataclass
class _Pool:
    """The parent's view of the running workers."""

    search: Search
    size: int
    running: dict[Connection, _Worker] = field(default_factory=dict)
    reports: list[WorkerReport] = field(default_factory=list)
    processes: int = 0
    lost: bool = False  # a worker died or overran the deadline without reporting

    def start(self, shard: Popped) -> None:
        if len(shard) == 0:
            return
        context = multiprocessing.get_context("fork")
        parent_end, child_end = context.Pipe()
        store_bytes = max(1, self.search.options.max_memory_bytes // self.size)
        process = context.Process(target=_work, args=(self.search, shard, child_end, store_bytes, os.getpid()),
                                  daemon=True)
        process.start()
        child_end.close()
        self.running[parent_end] = _Worker(process, time.monotonic())
        self.processes += 1

    def receive(self, connection: Connection) -> WorkerReport | None:
        """Handle one message; returns a finished worker's report."""
        worker = self.running[connection]
        try:
            kind, payload = connection.recv()
        except (EOFError, OSError):
            kind, payload = "died", None
        if kind == "shard":
            worker.asked, worker.since = False, time.monotonic()
            if payload is None:
                worker.next_ask = time.monotonic() + RETRY_SHARE_S
            else:
                self.start(_from_numpy(payload))
            return None
        self._retire(connection)
        if kind == "error":
            raise RuntimeError(f"an input-split worker failed: {payload}")
        if kind == "died":
            self.lost = True
            return None
        self.reports.append(payload)
        return payload

    def ask_for_work(self) -> None:
        """Fill idle cores: ask the workers longest without a hand-over to share."""
        now = time.monotonic()
        idle = self.size - len(self.running)
        candidates = sorted((w.since, id(c), c) for c, w in self.running.items() if not w.asked and w.next_ask <= now)
        for _, _, connection in candidates[:max(idle, 0)]:
            try:
                connection.send("share")
                self.running[connection].asked = True
            except OSError:  # it is ending; its report or EOF is on the way
                pass

    def stop_all(self) -> None:
        for connection in list(self.running):
            self.running[connection].process.kill()
            self._retire(connection)

    def _retire(self, connection: Connection) -> None:
        worker = self.running.pop(connection)
        connection.close()
        worker.process.join(timeout=1.0)


def run_sharded(search: Search, workers: int) -> BabReport:
    """Continue ``search`` (paused, with domains open) on ``workers`` forked processes; returns its
    report, with the workers' counts added and :attr:`Search.open_in_workers` set (see the module
    docstring)."""
    pool = _Pool(search, workers)
    popped = search.store.drain()
    search.store = DomainStore(search.store.max_bytes, device=search.store.device)  # the parent holds none
    try:
        for shard in deal(popped, workers):
            pool.start(shard)
        while pool.running:
            now = time.monotonic()
            timeout = search.deadline + GRACE_S - now
            if timeout <= 0:
                pool.lost = True
                break
            if len(pool.running) < workers:
                timeout = min(timeout, RETRY_SHARE_S)
            for connection in wait(list(pool.running), timeout):
                report = pool.receive(connection)
                if report is not None and report.status == "counterexample":
                    pool.stop_all()
                    break
            pool.ask_for_work()
    finally:
        pool.stop_all()
    return _merge(search, pool)


def _merge(search: Search, pool: _Pool) -> BabReport:
    report = search.report
    report.processes = pool.processes
    open_problems = torch.zeros(len(search.problems), dtype=torch.bool)
    for worker in pool.reports:
        report.rounds += worker.rounds
        report.domains += worker.domains
        report.inherited_closed += worker.inherited_closed
        report.open_domains += worker.open_domains
        report.max_depth = max(report.max_depth, worker.max_depth)
        if worker.open_domains:
            report.worst_gap = min(report.worst_gap, worker.worst_gap) if math.isfinite(report.worst_gap) \
                else worker.worst_gap
        open_problems |= torch.tensor(worker.open_problems, dtype=torch.bool)
    found = next((w for w in pool.reports if w.status == "counterexample"), None)
    if pool.lost or found is not None:  # the search was cut short: nothing it did not finish is proved
        open_problems[:] = True
    search.open_in_workers = open_problems.to(search.open_in_workers.device)
    if found is not None:
        report.status, report.counterexample = "counterexample", found.counterexample
        search.found_problem = found.found_problem
        return report
    statuses = {w.status for w in pool.reports} | ({"timeout"} if pool.lost else set())
    report.status = next((s for s in ("memory", "stuck", "timeout") if s in statuses), "proved")
    report.message = next((w.message for w in pool.reports if w.status == report.status and w.message), "")
    return report

"""Branch-and-bound over general nonlinearities, batched over domains: options and orchestration.

A *problem* (one region box and one conjunction ``C y <= d``, see :mod:`nlverify.verifier.pipeline`) is
proved when every domain of a partition of its box is closed: some row ``i`` has

    lower bound of (C y)_i over the domain  -  d_i  >  proof_margin        (the pipeline's margin)

or the domain is empty (its split boxes contradict each other, lower bound ``+inf``). The open domains
live in a :class:`~nlverify.verifier.domains.DomainStore`; each round pops a batch (lowest gap first),
splits every domain in two, bounds *all* children in one batched call, closes what is proved, and
pushes the rest. A child's lower bound is the max of its own bound and its parent's (the parent's bound
holds on the child, a subset), so bounds never get worse down the tree. Two ways to split, chosen from
the input size (``BabOptions.mode``):

* activation split (:mod:`nlverify.verifier.activation_split`), for high-dimensional inputs; one search
  per region covers all of its problems;
* input split (:mod:`nlverify.verifier.input_split`), for at most ``input_split_max_inputs`` free inputs; one
  search per problem.

Shared machinery (store, falsification, per-problem verdicts) is in :mod:`nlverify.verifier.search`.
Verdicts per problem: proved when none of its domains is left open; a candidate counterexample;
otherwise not proved (deadline, memory cap of the store, or a domain too thin to split).
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

import torch

from nlverify.bounds.backward_steps import box_minimum
from nlverify.verifier.activation_split import ActivationSplitSearch, bound_activation_domains
from nlverify.verifier.branching import refinement_cost
from nlverify.verifier.domains import best_rows, closed_domains, domain_gap
from nlverify.verifier.input_rules import INPUT_BOUNDS
from nlverify.verifier.input_split import (
    INPUT_BRANCHING, STRONG_BRANCHING_MAX_INPUTS, InputSplitSearch, bound_input_boxes, free_dims,
    inherited_lower_bound, linear_minimiser, split_box,
)
from nlverify.verifier.problem import INPUT_SPLIT_MAX_INPUTS, Problem, ProblemOutcome
from nlverify.verifier.search import BabReport, violation

__all__ = ["BabOptions", "BabReport", "branch_and_bound", "bab_problem", "bab_search", "search_groups",
           "domain_gap", "closed_domains", "best_rows", "violation", "bound_input_boxes", "bound_activation_domains",
           "linear_minimiser", "box_minimum", "inherited_lower_bound", "split_box", "refinement_cost",
           "INPUT_BOUNDS", "INPUT_BRANCHING", "STRONG_BRANCHING_MAX_INPUTS"]

log = logging.getLogger(__name__)

SPLIT_MODES = ("auto", "input", "activation")


@dataclass
class BabOptions:
    mode: str = "auto"  # "auto": input split when the region leaves <= input_split_max_inputs inputs free
    input_split_max_inputs: int = INPUT_SPLIT_MAX_INPUTS
    batch_domains: int = 256  # activation split: domains popped per round (2x children bounded)
    input_batch_domains: int | str = "auto"  # input split: domains popped per round; "auto": 8192 on networks
    # whose CROWN pass per domain costs under input_large_batch_max_cost multiply-adds, else 2048 (lsnc state,
    # cost 6.6e3, BaB alone: state_6 problem 0 2048 -> 46.8 s, 8192 -> 33.4 s; state_8 26.7 / 4096 22.6 /
    # 21.3 s; the per-round work is shared overhead on such small nets. 16384 was tried: state_0 BaB alone
    # on two threads 181.2 -> 163.3 s, but whole pipelines within noise (state_10 74.3 / 71.6 s, state_6
    # 13.8 / 14.0, state_18 35.9 / 35.7) at a third more peak memory (1.4 -> 1.9 GB); 32768: 189.6 s)
    input_large_batch_max_cost: float = 1e5
    iterations: int = 4  # alpha/beta iterations per activation-split round (warm-started; eran 7903, 60 s:
    # 8 -> 2561 domains, worst gap -1.53; 4 -> 3839, -1.38; 2 -> 3925, -1.49)
    root_iterations: int = 30  # output alpha iterations at the activation-split root
    learning_rate: float = 0.1  # Adam's step at the activation-split root (cold alphas)
    child_learning_rate: float = 0.02  # Adam's step on children, which start from their parent's (already
    # optimised) parameters: Adam's first steps move every parameter by about this much, and at 0.1 they
    # undid the parent's optimum each generation (mnist_fc prop_6 with tight root boxes: 0.1 -> timeout after
    # 21,078 domains, a subtree's own bounds falling from -0.26 to -0.57; 0.05 -> proved in 130; 0.02 -> 138).
    # eran_sigmoid, worst gap after 45 s of BaB: 9044 0.1 -0.756, 0.05 -0.730, 0.02 -0.707, 0.01 -0.718,
    # 0.005 -0.765; 1655 (40 s) 0.1 -2.303, 0.02 -2.268
    branching: str = "bbps"  # or "width" (baseline, for ablation)
    split_points: str = "table"  # or "midpoint" (baseline, for ablation); ReLU/LeakyReLU split at 0 either way
    input_alpha_iterations: int | str = "auto"  # >0: alpha-CROWN (output alphas) on input-split children;
    # "auto": 12 when one CROWN pass over the split targets costs >= input_alpha_min_cost multiply-adds
    # per domain (few domains are affordable, so each should be bounded tightly), else 0. dist_shift
    # index9192 (cost 2.7e6), BaB alone: 0 -> gap -0.30 after 50 s; 5 -> -0.10; 8 -> proved in 15 s;
    # 12 -> proved in 10.8 s (31 domains); 20 -> 15.3 s. ACAS Xu (cost 1.6e5) is faster with 0.
    input_alpha_min_cost: float = 1e6
    input_bounds: str = "auto"  # input split node boxes: "crown", "hybrid" (forward, CROWN where open),
    # "forward", or "auto": "forward" on networks whose CROWN pass per domain costs at least
    # input_forward_min_cost multiply-adds, else "crown" (see input_rules.input_bound_method)
    input_forward_min_cost: float = 1e8
    input_branching: str = "auto"  # "smear", "strong" (try every dimension), "alternate" (strong at depths
    # that are multiples of strong_every, smear elsewhere), "auto": alternate up to STRONG_BRANCHING_MAX_INPUTS
    # inputs, else smear
    strong_every: int = 8  # strong scoring bounds 2 n children per domain; with box clipping and forward-only
    # scores, BaB alone: lsnc state_6 every 2 -> 68.6 s, 4 -> 52.9, 6 -> 48.9, 8 -> 46.8, 12 -> 47.0;
    # state_8 39.6 / 28.8 / 26.5 / 26.7 / 27.5; whole pipeline on ACAS Xu 1_1 prop_5 (4 / 8) 6.7 / 7.1 s,
    # 3_3 prop_9 8.3 / 8.4 s, 1_1 prop_3 4.2 / 4.0 s; pure smear (no strong depths) timed out on state_8
    steer_by_provable_rows: bool = True  # input-split smear skips rows that a short descent finds violated
    # in the box by a sizeable part of their gap (see InputSplitSearch._provable_rows; lsnc output_8:
    # open after 40,577 domains -> proved in 9,257; output_6 5,215 -> 3,055)
    clip_input_boxes: bool = True  # input split: shrink each box to where its linear bounds allow a
    # violation (nlverify.verifier.box_clipping)
    rebound_volume_ratio: float = 0.5  # input split: bound a clipped child again when clipping left less than
    # this share of its volume (0: never); lsnc BaB alone, state_6 / state_8 problem 0: 0 -> 33.4 / 21.3 s,
    # 0.25 -> 31.6 / 19.4, 0.5 -> 28.9 / 17.6, 0.8 -> 30.6 / 16.6
    input_workers: int | str = "auto"  # input split: processes sharing the open domains once the search has
    # run parallel_after_s seconds alone; "auto": one per torch thread (verify --threads), see
    # input_rules.input_workers and nlverify.verifier.parallel
    parallel_after_s: float = 2.0
    second_order: bool = True  # input split: also bound products through their factors' affine bounds
    # (nlverify.bounds.second_order) and keep the better bound per row
    refine_intermediate: str = "auto"  # "on"/"off"/"auto": re-bound intermediate boxes of children by CROWN
    refine_max_cost: float = 2e7  # "auto" turns refinement on below this many multiply-adds per domain
    warm_start: bool = True  # keep alphas/betas per domain and start children from them (measured on eran
    # 7903, 60 s: off leaves the worst gap at the root's -3.42 without refinement, since 8 cold iterations
    # rarely beat the parent; on: -1.79 without, -1.87 with refinement and one more problem proved)
    attack_every: int = 4  # rounds between PGD runs on the worst domains (0: never)
    attack_domains: int = 32
    attack_steps: int = 40
    max_memory_bytes: int = 2 << 30  # cap of the domain store
    seed: int = 0


def _mode(model, options: BabOptions, problem: Problem | None = None) -> str:
    """``"input"`` when at most ``input_split_max_inputs`` inputs are free: the model's input count, or
    fewer when the region fixes some inputs (dist_shift fixes 784 pixels and perturbs 8 latent inputs;
    on its index9192 input split closed the gap from -1.69 to -0.38 in 42 s, activation split to
    -1.33)."""
    if options.mode not in SPLIT_MODES:
        raise ValueError(f"unknown BaB mode '{options.mode}', expected one of {SPLIT_MODES}")
    if options.mode != "auto":
        return options.mode
    free = model.graph.num_inputs if problem is None else free_dims(problem).numel()
    return "input" if free <= options.input_split_max_inputs else "activation"


def bab_search(model, problems: list[Problem], deadline: float,
               options: BabOptions | None = None) -> tuple[BabReport, list[bool]]:
    """One branch-and-bound search over ``problems`` (same region box and row count) until all are
    proved, one is falsified, or ``deadline`` (monotonic). Returns the report and, per problem, whether it
    was proved (no domain of it left open)."""
    options = options or BabOptions()
    start = time.monotonic()
    search_class = InputSplitSearch if _mode(model, options, problems[0]) == "input" else ActivationSplitSearch
    search = search_class(model, problems, deadline, options)
    report = search.run()
    report.seconds = time.monotonic() - start
    proved = search.problems_proved()
    if report.status == "counterexample":
        report.problem = search.found_problem
    return report, proved


def bab_problem(model, problem: Problem, deadline: float, options: BabOptions | None = None) -> BabReport:
    """Branch and bound on one problem until it is proved, falsified, or ``deadline`` (monotonic)."""
    return bab_search(model, [problem], deadline, options)[0]


def _hardness(problem: Problem) -> float:
    """``max_i (best_lower_i - d_i)``: the lowest is the most likely to hide a counterexample."""
    return float(torch.nan_to_num(problem.best_lower - problem.d, nan=-math.inf).max())


def search_groups(model, problems: list[Problem], options: BabOptions) -> list[list[int]]:
    """Indices of the problems each search covers, hardest group first. Activation split puts the
    problems of one region with the same row count into one search (their domains share every round's
    batched bound call: measured on eran_sigmoid, a lone problem's early rounds carry 1, 2, 4, ...
    domains at almost the cost of a full batch). Input split keeps one search per problem (its rounds
    are already full; the ACAS Xu figures in the module docstring are per problem)."""
    order = sorted(range(len(problems)), key=lambda i: _hardness(problems[i]))
    groups: dict[tuple, list[int]] = {}
    for i in order:
        p = problems[i]
        if _mode(model, options, p) == "input":
            key = (i,)
        else:
            key = (p.region, p.C.shape[0], tuple(p.lower.tolist()), tuple(p.upper.tolist()))
        groups.setdefault(key, []).append(i)
    return list(groups.values())


def branch_and_bound(model, problems: list[Problem], time_left: float, device: str = "cpu", seed: int = 0,
                     options: BabOptions | None = None) -> list[ProblemOutcome]:
    """The pipeline's BaB stage: one :class:`ProblemOutcome` per problem.

    Searches (:func:`search_groups`) run hardest first. BaB stops at the first search that leaves a
    problem falsified or unproved, since the verdict cannot be ``unsat`` after that; the remaining
    problems stay unproved."""
    options = options or BabOptions(seed=seed)
    deadline = time.monotonic() + time_left
    outcomes = [ProblemOutcome() for _ in problems]
    for group in search_groups(model, problems, options):
        report, proved = bab_search(model, [problems[i] for i in group], deadline, options)
        log.info("bab problems %s (region %d): %s after %d rounds, %d domains, depth %d, %.1fs, %d/%d proved%s",
                 [problems[i].conjunction for i in group], problems[group[0]].region, report.status, report.rounds,
                 report.domains, report.max_depth, report.seconds, sum(proved), len(group),
                 (f" ({report.message})" if report.message else "")
                 + (f" [{report.processes} worker processes]" if report.processes else ""))
        for i, done in zip(group, proved):
            outcomes[i].proved = done
        if report.status == "counterexample":
            outcomes[group[report.problem]].counterexample = report.counterexample
        if report.status != "proved":
            break
    return outcomes

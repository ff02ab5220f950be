"""How an input-split search sizes itself from the network: node-box method, alpha iterations per child,
domains per round. Each rule reads the network's CROWN cost per domain
(:func:`~nlverify.verifier.branching.refinement_cost`) and its neuron count; each ``"auto"`` option of
:class:`~nlverify.verifier.bab.BabOptions` resolves here, and an explicit value passes through.
"""
from __future__ import annotations

import multiprocessing
import os

import torch

from nlverify.graph import Graph
from nlverify.verifier.branching import refinement_cost

__all__ = ["INPUT_BOUNDS", "AUTO_INPUT_ALPHA_ITERATIONS", "INPUT_BATCH", "LARGE_INPUT_BATCH", "INPUT_ROUND_BYTES",
           "ROUND_BYTES_PER_NEURON", "input_bound_method", "input_alpha_iterations", "input_batch_domains",
           "input_workers"]

INPUT_BOUNDS = ("hybrid", "crown", "forward")
AUTO_INPUT_ALPHA_ITERATIONS = 12
INPUT_BATCH, LARGE_INPUT_BATCH = 2048, 8192
INPUT_ROUND_BYTES = 4 << 30
ROUND_BYTES_PER_NEURON = 64


def input_bound_method(graph: Graph, options) -> str:
    """How input-split boxes get their node boxes: ``options.input_bounds``, or for ``"auto"``
    ``"forward"`` on networks whose CROWN pass per domain costs at least ``options.input_forward_min_cost``
    multiply-adds, else ``"crown"``. CROWN's passes grow with every neuron they bound, forward bounds
    with the input count only, and past ``CrownOptions.max_crown_neurons`` CROWN falls back to IBP.
    cgan (5 inputs, layers of up to 28,800 neurons, cost 8.6e9): the root box bounded in 0.26 s with
    forward boxes against 16.6 s with CROWN's, and tighter (gap -1.22 against -2.39); 16 sub-boxes
    0.34 s against 259 s. Every other shared benchmark costs at most 2.3e7 and keeps "crown"."""
    method = options.input_bounds
    if method == "auto":
        return "forward" if refinement_cost(graph) >= options.input_forward_min_cost else "crown"
    if method not in INPUT_BOUNDS:
        raise ValueError(f"unknown input-split bound method '{method}', expected 'auto' or one of {INPUT_BOUNDS}")
    return method


def input_alpha_iterations(graph: Graph, options) -> int:
    """The alpha-CROWN iterations per input-split child: ``options.input_alpha_iterations``, or for
    ``"auto"`` :data:`AUTO_INPUT_ALPHA_ITERATIONS` on networks whose CROWN pass per domain costs at
    least ``options.input_alpha_min_cost`` multiply-adds, else 0 (see ``BabOptions``). "auto" gives 0
    too where node boxes come from forward bounds alone (:func:`input_bound_method`): alpha-CROWN
    bounds its node boxes by CROWN, the cost that forward bounds are there to avoid."""
    if options.input_alpha_iterations != "auto":
        return int(options.input_alpha_iterations)
    if input_bound_method(graph, options) == "forward":
        return 0
    return AUTO_INPUT_ALPHA_ITERATIONS if refinement_cost(graph) >= options.input_alpha_min_cost else 0


def input_batch_domains(graph: Graph, options) -> int:
    """Domains popped per input-split round: ``options.input_batch_domains``, or for ``"auto"``
    :data:`LARGE_INPUT_BATCH` on networks whose CROWN pass per domain costs under
    ``options.input_large_batch_max_cost`` multiply-adds, else :data:`INPUT_BATCH` (see ``BabOptions``),
    and never more than :data:`INPUT_ROUND_BYTES` allow at :data:`ROUND_BYTES_PER_NEURON` per neuron
    of the network and domain. A round holds per-neuron tensors of both children of every domain
    (relaxations, the steering descent's activations): cgan (165,000 neurons) at 2,048 domains peaked at
    11.3 GB, about 33 bytes per neuron and domain; the cap gives it 406. The largest other shared
    network (ml4acopf, 9,300 neurons) is allowed 7,216, above its 2,048."""
    if options.input_batch_domains != "auto":
        return int(options.input_batch_domains)
    batch = LARGE_INPUT_BATCH if refinement_cost(graph) < options.input_large_batch_max_cost else INPUT_BATCH
    return max(1, min(batch, INPUT_ROUND_BYTES // max(graph.num_neurons * ROUND_BYTES_PER_NEURON, 1)))


def input_workers(options, device: torch.device) -> int:
    """Processes an input-split search may shard its domains across
    (:mod:`nlverify.verifier.parallel`): ``options.input_workers``, or for ``"auto"`` the torch thread
    count (the cores the caller gave the verifier, ``verify --threads``), capped by the cores this
    process may run on. 1 on a GPU (one device serves one process best) and where processes cannot be
    forked."""
    if torch.device(device).type != "cpu" or "fork" not in multiprocessing.get_all_start_methods():
        return 1
    if options.input_workers != "auto":
        return max(1, int(options.input_workers))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(torch.get_num_threads(), cores))

"""TEST-ONLY bug injection: deliberately unsound switches, so the soundness suite can show it catches bugs.

NEVER set this outside a test. Every fault below makes ``nlverify verify`` able to answer ``unsat`` on a
property that is violated. They exist for one purpose: ``tests/benchmarks/test_soundness_selftest.py``
runs our own verifier through the soundness harness with each fault switched on and asserts that the
harness reports at least one unsound claim (a suite that cannot catch these is not worth running).

One environment variable, read once when this module is first imported::

    NLVERIFY_INJECT_BUG=name[:fraction][,name[:fraction]...]

=======================  ==================================================================================
``shrink_box[:f]``       every input box of the bound problems shrinks towards its centre: half-widths
                         times ``1 - f`` (default f = 0.5), before any bound is computed
                         (:func:`nlverify.verifier.problem.problems_from_spec`)
``tighten_intermediate`` every intermediate node box shrinks the same way (default f = 0.5) in
``[:f]``                 :func:`nlverify.bounds.crown.propagate_bounds`
``skip_intercept``       the intercepts of the first nonlinear node's relaxation are dropped (set to 0) in
                         the backward pass (:meth:`nlverify.bounds.crown.BackwardPropagator.lower_bound`)
``drop_domains[:f]``     branch and bound drops each open domain with probability f (default 0.5; a
                         fixed seed) as if it were proved, where children are pruned
                         (:meth:`nlverify.verifier.search.Search.push_open`)
=======================  ==================================================================================

While any fault is active a warning goes to stderr (once per process). Unset, :data:`ACTIVE` is an empty
dict and every hook is a single falsy test of it: no parsing, no call, no cost.
"""
from __future__ import annotations

import math
import os
import sys
from dataclasses import fields, replace

__all__ = ["ENV_VAR", "FAULTS", "ACTIVE", "active", "parse", "shrink_box", "tighten_intermediate",
           "skip_intercept", "drop_domains"]

ENV_VAR = "NLVERIFY_INJECT_BUG"
FAULTS: dict[str, float | None] = {  # name -> default parameter (None: takes none)
    "shrink_box": 0.5,
    "tighten_intermediate": 0.5,
    "skip_intercept": None,
    "drop_domains": 0.5,
}


def parse(text: str) -> tuple[dict[str, float], list[str]]:
    """``(faults, problems)`` of a variable's value: ``{name: parameter}`` (``nan`` for a fault without a
    parameter) and one message per item that was not understood (those items are ignored)."""
    active: dict[str, float] = {}
    problems: list[str] = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, _, value = item.partition(":")
        name = name.strip()
        if name not in FAULTS:
            problems.append(f"unknown fault {name!r} (known: {', '.join(FAULTS)})")
            continue
        default = FAULTS[name]
        if not value.strip():
            active[name] = math.nan if default is None else default
            continue
        try:
            parameter = float(value)
        except ValueError:
            problems.append(f"{name}: parameter {value!r} is not a number")
            continue
        if default is None or not 0.0 <= parameter <= 1.0:
            problems.append(f"{name}: parameter {value!r} not accepted (a fraction in [0, 1], if any)")
            continue
        active[name] = parameter
    return active, problems


def _load() -> dict[str, float]:
    text = os.environ.get(ENV_VAR, "")
    if not text.strip():
        return {}
    parsed, problems = parse(text)
    for problem in problems:
        print(f"nlverify: {ENV_VAR}: {problem}; ignored", file=sys.stderr, flush=True)
    if parsed:
        listed = ", ".join(name if math.isnan(p) else f"{name}:{p:g}" for name, p in parsed.items())
        print(f"nlverify: WARNING: TEST-ONLY bug injection active ({ENV_VAR}={listed}): "
              "this verifier is deliberately UNSOUND; its verdicts mean nothing", file=sys.stderr, flush=True)
    return parsed


ACTIVE: dict[str, float] = _load()  # parsed once per process; empty (falsy) when the variable is unset


def active(name: str) -> float | None:
    """The parameter of fault ``name`` if it is active (``nan`` for one without a parameter), else None."""
    return ACTIVE.get(name)


# ------------------------------------------------------------------------------------------------ the faults
def _shrink(low, up, f: float):
    """``[c - (1 - f) r, c + (1 - f) r]`` for the box ``[c - r, c + r]``."""
    centre, radius = (low + up) / 2, (up - low) / 2 * (1.0 - f)
    return centre - radius, centre + radius


def shrink_box(low, up):
    """Fault ``shrink_box``: the input box, shrunk (unchanged when inactive)."""
    f = active("shrink_box")
    return (low, up) if f is None else _shrink(low, up, f)


def tighten_intermediate(low, up):
    """Fault ``tighten_intermediate``: an intermediate node box, shrunk (unchanged when inactive)."""
    f = active("tighten_intermediate")
    return (low, up) if f is None else _shrink(low, up, f)


def skip_intercept(graph, relaxation_for):
    """Fault ``skip_intercept``: the relaxation callback, wrapped so that the first nonlinear node of
    ``graph`` gets zero intercepts (unchanged when inactive)."""
    if active("skip_intercept") is None:
        return relaxation_for
    nonlinear = graph.nonlinear_nodes()
    first = nonlinear[0].name if nonlinear else None

    def wrapped(node, start):
        relaxation = relaxation_for(node, start)
        if node.name != first:
            return relaxation
        zeros = {f.name: relaxation.__dict__[f.name] * 0 for f in fields(relaxation) if "intercept" in f.name}
        return replace(relaxation, **zeros)

    return wrapped


_generator = None  # drop_domains: seeded once per process, so a faulty run is reproducible


def drop_domains(keep):
    """Fault ``drop_domains``: the mask of open domains to keep, with each open one dropped with
    probability ``f`` (unchanged when inactive)."""
    global _generator
    f = active("drop_domains")
    if f is None:
        return keep
    import torch

    if _generator is None:
        _generator = torch.Generator().manual_seed(0)
    dropped = torch.rand(keep.shape, generator=_generator) < f
    return keep & ~dropped.to(keep.device)

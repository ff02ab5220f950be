"""The order in which the suite writer tries its instance slots, and the wall-clock budget.

A *slot* is one (activation, instance config) pair of the chosen size; it is filled by the first
attempt that passes every check, and is tried at most ``max_tries`` times (attempt ``k`` uses the
seed of ``(suite seed, activation, config, k)``, so a slot's instance does not depend on the order).

**Order** (:func:`attempt_plan`). With a wall-clock budget not every attempt runs, so the order
decides what a run produces. An attempt's *tier* is ``attempt + delay(slot)``, with delay 0 for
planted MLPs and decoys and 2 for planted CNNs; attempts run by tier, then config, then activation:
every slot's first attempt comes before anything's third, the attempts that fill slots fastest come
first, and within a tier the activations take turns (a budget that ends mid-tier leaves the same
configs empty for every activation, not whole activations). Measured for the trained planting
(``--size small``, 1 thread, load ~3): a planted MLP attempt takes ~6 s and hides about a third to a
half of the time, a planted CNN attempt ~13 s and hides about one time in ten or less (1 of 31 before
this order existed), a decoy ~6 s and is always written (it is kept whatever the attack finds); so a
second MLP attempt is worth more than a first CNN attempt. The constructive planting hides almost
every first attempt, where the order only moves retries later.

**Budget** (:class:`RunBudget`). An attempt is *started* only while the run is within its budget;
a started attempt is never cut, so every written instance is exactly what its seed and training
configuration reproduce, and a run ends at most one attempt after the budget.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Sequence

__all__ = ["slot_delay", "attempt_plan", "RunBudget"]


def slot_delay(kind: str, planted: bool) -> int:
    """Tiers a slot's first attempt waits: 2 for a planted CNN, else 0 (see the module doc)."""
    return 2 if planted and kind == "cnn" else 0


def attempt_plan(activations: int, configs: Sequence, max_tries: int) -> list[tuple[int, int, int]]:
    """Every ``(activation index, config index, attempt)`` the writer may run, in the order it runs
    them (a slot filled earlier skips its later attempts). ``configs`` need ``kind`` and ``planted``."""
    plan = [(attempt + slot_delay(config.kind, config.planted), a_index, c_index, attempt)
            for a_index in range(activations) for c_index, config in enumerate(configs)
            for attempt in range(max_tries)]
    return [(a_index, c_index, attempt) for _, a_index, c_index, attempt in
            sorted(plan, key=lambda item: (item[0], item[2], item[1]))]


@dataclass
class RunBudget:
    """A wall-clock budget for the whole run (``seconds=None``: unlimited)."""

    seconds: float | None = None
    started: float = field(default_factory=time.perf_counter)

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def allows_another(self) -> bool:
        """Whether a new attempt may start now."""
        return self.seconds is None or self.elapsed() < self.seconds

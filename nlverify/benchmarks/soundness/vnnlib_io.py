"""VNN-LIB properties of the suite: an input box and "class ``c`` is not the argmax".

A VNN-LIB file states the *violation* (VNN-COMP convention): the verifier must
answer ``sat`` when some ``x`` in the box has ``y_j >= y_c`` for some ``j != c``::

    (declare-const X_0 Real) ...  (declare-const Y_0 Real) ...
    (assert (<= X_0 0.53)) (assert (>= X_0 0.47)) ...
    (assert (or (and (>= Y_0 Y_2)) (and (>= Y_1 Y_2))))

:func:`read_property` reads back exactly this subset (the files this package
writes); it is deliberately small and strict, and independent of the project's
general parser so that each can check the other.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import numpy as np

__all__ = ["RobustnessProperty", "write_property", "read_property", "format_property"]


@dataclass(frozen=True)
class RobustnessProperty:
    lower: np.ndarray  # (n,) float64
    upper: np.ndarray  # (n,) float64
    label: int  # c
    classes: int

    def contains(self, x: np.ndarray) -> bool:
        x = np.asarray(x, dtype=np.float64).reshape(-1)
        return x.shape == self.lower.shape and bool(np.all(x >= self.lower) and np.all(x <= self.upper))

    def violated_by(self, y: np.ndarray) -> bool:
        """``max_{j != c} y_j >= y_c``."""
        y = np.asarray(y, dtype=np.float64).reshape(-1)
        return bool(np.delete(y, self.label).max() >= y[self.label])


def format_property(prop: RobustnessProperty, comment: str = "") -> str:
    lines = [f"; {line}" for line in comment.splitlines()] if comment else []
    lines += [f"(declare-const X_{i} Real)" for i in range(prop.lower.size)]
    lines += [f"(declare-const Y_{j} Real)" for j in range(prop.classes)]
    lines.append("")
    for i, (lo, hi) in enumerate(zip(prop.lower, prop.upper)):
        lines.append(f"(assert (<= X_{i} {float(hi)!r}))")
        lines.append(f"(assert (>= X_{i} {float(lo)!r}))")
    lines.append("")
    disjuncts = " ".join(f"(and (>= Y_{j} Y_{prop.label}))" for j in range(prop.classes) if j != prop.label)
    lines.append(f"(assert (or {disjuncts}))")
    return "\n".join(lines) + "\n"


def write_property(path: Union[str, Path], prop: RobustnessProperty, comment: str = "") -> bytes:
    data = format_property(prop, comment).encode()
    Path(path).write_bytes(data)
    return data


_DECL = re.compile(r"\(declare-const\s+([XY])_(\d+)\s+Real\)")
_BOUND = re.compile(r"\(assert\s+\((<=|>=)\s+X_(\d+)\s+([^\s()]+)\)\)")
_OR = re.compile(r"\(assert\s+\(or((?:\s*\(and\s+\(>=\s+Y_\d+\s+Y_\d+\)\))+)\s*\)\)")
_PAIR = re.compile(r"\(and\s+\(>=\s+Y_(\d+)\s+Y_(\d+)\)\)")


def read_property(path: Union[str, Path]) -> RobustnessProperty:
    """Parse a file written by :func:`write_property`; ``ValueError`` on anything else."""
    text = "\n".join(line.split(";", 1)[0] for line in Path(path).read_text().splitlines())
    counts = {"X": 0, "Y": 0}
    for name, index in _DECL.findall(text):
        counts[name] = max(counts[name], int(index) + 1)
    n, classes = counts["X"], counts["Y"]
    lower, upper = np.full(n, -np.inf), np.full(n, np.inf)
    for op, index, value in _BOUND.findall(text):
        (upper if op == "<=" else lower)[int(index)] = float(value)
    if n == 0 or not (np.isfinite(lower).all() and np.isfinite(upper).all()):
        raise ValueError(f"{path}: every X_i needs a finite lower and upper bound")
    match = _OR.search(text)
    if not match:
        raise ValueError(f"{path}: no (assert (or (and (>= Y_j Y_c)) ...)) output property")
    pairs = [(int(j), int(c)) for j, c in _PAIR.findall(match.group(1))]
    labels = {c for _, c in pairs}
    if len(labels) != 1 or sorted(j for j, _ in pairs) != [j for j in range(classes) if j not in labels]:
        raise ValueError(f"{path}: the output property is not 'Y_c is not the argmax'")
    return RobustnessProperty(lower, upper, labels.pop(), classes)

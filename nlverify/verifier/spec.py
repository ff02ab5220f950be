"""VNN-LIB properties parsed into a :class:`Spec`.

Semantics (VNN-COMP): a VNN-LIB file describes the *violation* of a property.
It is the conjunction of its ``assert`` statements; the verifier answers
``sat`` when some input ``x`` and the network output ``y = f(x)`` satisfy that
formula. We bring the formula to disjunctive normal form and group it as

    violation  <=>  OR_r [ lower_r <= x <= upper_r  AND  OR_k ( C_rk @ y <= d_rk ) ]

one :class:`Region` per distinct input box ``r``, each with a disjunction of
:class:`Conjunction` s ``k`` of linear output constraints.

Accepted syntax
---------------
VNN-LIB 1.0 (the VNN-COMP dialect of SMT-LIB):

* ``(declare-const X_i Real)`` / ``(declare-const Y_i Real)``, indices 0..n-1;
* ``(assert F)`` where ``F`` nests ``and``, ``or`` and comparisons
  ``<=``, ``>=``, ``<``, ``>``, ``=`` (chains ``(<= a b c)`` allowed);
  ``true`` / ``false`` literals;
* linear terms on either side: numbers in any float syntax (``-1``, ``+.5``,
  ``1e-06``), variables, ``(+ t...)``, ``(- t...)`` (unary = negation),
  ``(* c t)`` with all factors but one constant, ``(/ t c)``;
* ``;`` comments, arbitrary whitespace; ``check-sat``, ``get-model``,
  ``exit``, ``set-logic``, ``set-info``, ``set-option`` are ignored.

Strict comparisons ``<`` / ``>`` are read as ``<=`` / ``>=``: the closure of the
violation set. That only enlarges the set a verifier must exclude (so ``unsat``
stays sound), and counterexamples are checked with an explicit tolerance anyway.

VNN-LIB 2.0 (subset): an optional ``(vnnlib-version <2.0>)`` header, exactly
one ``(declare-network NAME (declare-input X TYPE [d1,...]) (declare-output Y
TYPE [e1,...]))`` with one input and one output tensor (any element type
name, e.g. ``Real``, ``real``, ``float32``; values are treated as reals;
``[]`` is a scalar), and tensor-indexed variables ``X[i,j,...]`` which are
flattened in row-major (C) order to ``X_n``. Several networks, several
inputs/outputs, ``declare-hidden`` and network equivalence annotations are
rejected with a :class:`SpecError`.

Restrictions (each a :class:`SpecError` naming the line): every input must get a
finite lower and upper bound in every region; a constraint may not mix inputs
and outputs, nor relate two inputs (input sets must be boxes).
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import numpy as np

__all__ = [
    "SpecError",
    "Conjunction",
    "Region",
    "Spec",
    "parse_vnnlib",
    "parse_vnnlib_string",
    "check_against_model",
]

# A DNF blow-up beyond this many conjunctions is almost surely a mistake in the
# file (and would take minutes to verify anyway): fail clearly instead of hanging.
MAX_DNF_CONJUNCTIONS = 100_000


class SpecError(Exception):
    """A malformed or unsupported VNN-LIB property. The message is one line:
    ``<file>:<line>: <what was expected>``."""


# --------------------------------------------------------------------------- data model


@dataclass(frozen=True)
class Conjunction:
    """The output constraints ``C @ y <= d`` (all rows must hold)."""

    C: np.ndarray  # (m, num_outputs) float64
    d: np.ndarray  # (m,) float64

    def is_satisfied_by(self, y: np.ndarray, tol: float = 0.0) -> bool:
        """``C y <= d + tol * max(1, |d|)`` row-wise (tolerance relative above magnitude 1)."""
        y = np.asarray(y, dtype=np.float64).reshape(-1)
        slack = tol * np.maximum(1.0, np.abs(self.d))
        return bool(np.all(self.C @ y <= self.d + slack))


@dataclass(frozen=True)
class Region:
    """An input box ``lower <= x <= upper`` and a disjunction of output conjunctions."""

    lower: np.ndarray  # (num_inputs,) float64
    upper: np.ndarray  # (num_inputs,) float64
    disjuncts: list[Conjunction]

    def contains(self, x: np.ndarray, tol: float = 0.0) -> bool:
        """``lower - tol*max(1,|lower|) <= x <= upper + tol*max(1,|upper|)``."""
        x = np.asarray(x, dtype=np.float64).reshape(-1)
        if x.shape != self.lower.shape:
            return False
        low_slack = tol * np.maximum(1.0, np.abs(self.lower))
        up_slack = tol * np.maximum(1.0, np.abs(self.upper))
        return bool(np.all(x >= self.lower - low_slack) and np.all(x <= self.upper + up_slack))

    def is_violated_by(self, x: np.ndarray, y: np.ndarray, tol: float = 0.0,
                       input_tol: float | None = None) -> bool:
        if not self.contains(x, tol if input_tol is None else input_tol):
            return False
        return any(conj.is_satisfied_by(y, tol) for conj in self.disjuncts)


@dataclass(frozen=True)
class Spec:
    """A parsed property: the violation is ``OR`` over :attr:`regions`."""

    num_inputs: int
    num_outputs: int
    regions: list[Region]
    source: str = "<string>"
    # Tensor shapes from a VNN-LIB 2.0 declaration; None for VNN-LIB 1.0 files.
    input_shape: tuple[int, ...] | None = None
    output_shape: tuple[int, ...] | None = None

    def input_boxes(self) -> list[tuple[np.ndarray, np.ndarray]]:
        return [(region.lower, region.upper) for region in self.regions]

    def violated_region(self, x: np.ndarray, y: np.ndarray, tol: float = 0.0,
                        input_tol: float | None = None) -> int | None:
        """Index of the first region whose box holds ``x`` and one of whose
        conjunctions ``y`` satisfies, else None."""
        for index, region in enumerate(self.regions):
            if region.is_violated_by(x, y, tol, input_tol):
                return index
        return None

    def is_violated_by(self, x: np.ndarray, y: np.ndarray, tol: float = 0.0,
                       input_tol: float | None = None) -> bool:
        """True when ``(x, y)`` is a counterexample: inside some region's box and
        satisfying one conjunction of that region (tolerances as in
        :meth:`Region.contains` / :meth:`Conjunction.is_satisfied_by`;
        ``input_tol`` defaults to ``tol``)."""
        return self.violated_region(x, y, tol, input_tol) is not None


def check_against_model(spec: Spec, num_inputs: int, num_outputs: int) -> None:
    """Raise :class:`SpecError` unless the spec's variable counts match the model's."""
    problems = []
    if spec.num_inputs != num_inputs:
        problems.append(f"declares {spec.num_inputs} inputs but the model takes {num_inputs} input values")
    if spec.num_outputs != num_outputs:
        problems.append(f"declares {spec.num_outputs} outputs but the model produces {num_outputs} output values")
    if problems:
        raise SpecError(f"{spec.source}: property does not match the model: " + "; ".join(problems))


# --------------------------------------------------------------------------- reading


def parse_vnnlib(path: Union[str, Path]) -> Spec:
    """Parse a ``.vnnlib`` (or ``.vnnlib.gz``) file."""
    path = Path(path)
    try:
        if path.name.endswith(".gz"):
            with gzip.open(path, "rt", encoding="utf-8") as handle:
                text = handle.read()
        else:
            text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError, EOFError) as exc:
        raise SpecError(f"{path}: cannot read property file: {exc}") from None
    return parse_vnnlib_string(text, source=str(path))


def parse_vnnlib_string(text: str, source: str = "<string>") -> Spec:
    """Parse VNN-LIB text; ``source`` names it in error messages (the grammar: :mod:`.vnnlib`)."""
    from nlverify.verifier.vnnlib import VnnlibParser

    return VnnlibParser(text, source).parse()

"""Verdicts, VNN-COMP result files, and counterexample validation.

Result file format (VNN-COMP): the first line is the verdict; for ``sat`` it
is followed by the counterexample as an s-expression of ``(X_i value)`` and
``(Y_j value)`` pairs::

    sat
    ((X_0 0.02500000074505806)
     (X_1 0.975)
     (Y_0 -0.023232329)
     (Y_1 0.33434343))

Counterexample validation runs the ORIGINAL ONNX file in onnxruntime: the
design's invariant is that no ``sat`` is reported without a point that an
independent runtime confirms.

Tolerances (``DEFAULT_INPUT_TOL``, ``DEFAULT_OUTPUT_TOL``): a value ``v`` passes
a bound ``b`` when it is off by at most ``tol * max(1, |b|)`` -- absolute for
bounds of magnitude up to 1, relative above. The model runs in float32, so the
point actually evaluated is ``float32(x)``; rounding alone moves it by up to
6e-8 relative, which 1e-6 covers with room, while still rejecting points that
are genuinely outside the box or do not violate the property.
"""

from __future__ import annotations

import enum
import gzip
import math
import os
import re
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Union

import numpy as np

from nlverify.verifier.spec import Spec

__all__ = [
    "Verdict",
    "ResultFile",
    "ResultFileError",
    "DEFAULT_INPUT_TOL",
    "DEFAULT_OUTPUT_TOL",
    "write_result_file",
    "read_result_file",
    "run_onnx",
    "validate_counterexample",
]

DEFAULT_INPUT_TOL = 1e-6
DEFAULT_OUTPUT_TOL = 1e-6


class Verdict(str, enum.Enum):
    """Outcome of a verification run (VNN-COMP vocabulary)."""

    SAT = "sat"  # a counterexample exists (and we have one)
    UNSAT = "unsat"  # proved: no input in the boxes violates the property
    UNKNOWN = "unknown"
    TIMEOUT = "timeout"
    ERROR = "error"

    @classmethod
    def parse(cls, word: str) -> "Verdict":
        """Exact, case-insensitive match; ``violated`` means sat and ``holds``
        means unsat (older VNN-COMP spellings)."""
        lowered = word.strip().lower()
        aliases = {"violated": cls.SAT, "holds": cls.UNSAT}
        if lowered in aliases:
            return aliases[lowered]
        try:
            return cls(lowered)
        except ValueError:
            raise ValueError(f"unknown verdict {word!r}: expected one of "
                             f"{', '.join(v.value for v in cls)} (or violated / holds)") from None

    def __str__(self) -> str:
        return self.value


class ResultFileError(ValueError):
    """A result file that cannot be read as VNN-COMP output."""


@dataclass(frozen=True)
class ResultFile:
    verdict: Verdict
    x: np.ndarray | None = None  # float64, counterexample inputs (sat only)
    y: np.ndarray | None = None  # float64, outputs the tool reported (sat only)


# --------------------------------------------------------------------------- writing


def _format_assignment(x: np.ndarray, y: np.ndarray) -> str:
    """``((X_0 v)\\n (X_1 v)\\n ... (Y_m v))`` with shortest round-trip reprs."""
    pairs = [f"(X_{i} {float(v)!r})" for i, v in enumerate(x)]
    pairs += [f"(Y_{j} {float(v)!r})" for j, v in enumerate(y)]
    return "(" + "\n ".join(pairs) + ")"


def write_result_file(path: Union[str, Path], verdict: Union[Verdict, str],
                      x: np.ndarray | None = None, y: np.ndarray | None = None) -> None:
    """Write a VNN-COMP result file. ``sat`` requires the counterexample ``x``
    and its outputs ``y``; other verdicts take none. Written to a temporary
    file then renamed, so a reader never sees half a file."""
    verdict = verdict if isinstance(verdict, Verdict) else Verdict.parse(verdict)
    if verdict is Verdict.SAT:
        if x is None or y is None:
            raise ValueError("a sat result needs the counterexample x and its outputs y")
        x = np.asarray(x, dtype=np.float64).reshape(-1)
        y = np.asarray(y, dtype=np.float64).reshape(-1)
        if not (np.isfinite(x).all() and np.isfinite(y).all()):
            raise ValueError("counterexample contains non-finite values")
        text = f"{verdict.value}\n{_format_assignment(x, y)}\n"
    else:
        if x is not None or y is not None:
            raise ValueError(f"a {verdict.value} result carries no counterexample")
        text = f"{verdict.value}\n"
    path = Path(path)
    handle, temporary = tempfile.mkstemp(dir=path.parent if str(path.parent) else ".", prefix=f".{path.name}.")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(text)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


# --------------------------------------------------------------------------- reading

_ASSIGNMENT_RE = re.compile(r"\(\s*([XY])_(\d+)\s+([^\s()]+)\s*\)")


def _dense(values: dict[int, float], name: str, path: Union[str, Path]) -> np.ndarray | None:
    if not values:
        return None
    missing = sorted(set(range(max(values) + 1)) - set(values))
    if missing:
        raise ResultFileError(f"{path}: counterexample has no value for {name}_{missing[0]}")
    return np.array([values[i] for i in range(len(values))], dtype=np.float64)


def read_result_file(path: Union[str, Path]) -> ResultFile:
    """Read a VNN-COMP result file: the verdict is the first word (exact,
    case-insensitive); for ``sat`` the ``(X_i v)`` / ``(Y_j v)`` pairs that
    follow are parsed (absent pairs give ``x`` / ``y`` = None)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ResultFileError(f"{path}: cannot read result file: {exc}") from None
    words = text.split(None, 1)
    if not words:
        raise ResultFileError(f"{path}: empty result file")
    try:
        verdict = Verdict.parse(words[0])
    except ValueError as exc:
        raise ResultFileError(f"{path}:1: {exc}") from None
    if verdict is not Verdict.SAT:
        return ResultFile(verdict)
    rest = words[1] if len(words) > 1 else ""
    values: dict[str, dict[int, float]] = {"X": {}, "Y": {}}
    for match in _ASSIGNMENT_RE.finditer(rest):
        name, index, literal = match.group(1), int(match.group(2)), match.group(3)
        try:
            value = float(literal)
        except ValueError:
            raise ResultFileError(f"{path}: non-numeric value {literal!r} for {name}_{index}") from None
        if index in values[name]:
            raise ResultFileError(f"{path}: {name}_{index} assigned twice")
        values[name][index] = value
    return ResultFile(verdict, _dense(values["X"], "X", path), _dense(values["Y"], "Y", path))


# --------------------------------------------------------------------------- onnxruntime

@lru_cache(maxsize=16)
def _session(resolved_path: str, mtime_ns: int):
    """One onnxruntime session per file version (mtime in the key so a rewritten
    file is reloaded). ``.onnx.gz`` is decompressed in memory."""
    import onnxruntime  # local: importing it costs ~0.3 s, unneeded for parsing

    if resolved_path.endswith(".gz"):
        with gzip.open(resolved_path, "rb") as stream:
            model: Union[str, bytes] = stream.read()
    else:
        model = resolved_path
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    return onnxruntime.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def _session_for(onnx_path: Union[str, Path]):
    path = Path(onnx_path).resolve()
    return _session(str(path), path.stat().st_mtime_ns)


def _input_array(session, x: np.ndarray) -> tuple[str, np.ndarray]:
    """Reshape the flat ``x`` to the model's single input (symbolic dims = 1) in its dtype."""
    inputs = session.get_inputs()
    if len(inputs) != 1:
        raise ValueError(f"model has {len(inputs)} inputs; exactly one is supported")
    shape = [d if isinstance(d, int) and d > 0 else 1 for d in inputs[0].shape]
    type_name = inputs[0].type  # e.g. "tensor(float)"
    dtype = {"tensor(float)": np.float32, "tensor(double)": np.float64,
             "tensor(float16)": np.float16}.get(type_name)
    if dtype is None:
        raise ValueError(f"unsupported model input type {type_name}")
    if math.prod(shape) != x.size:
        raise ValueError(f"model input {inputs[0].name} has shape {shape} ({math.prod(shape)} values) "
                         f"but the counterexample has {x.size}")
    return inputs[0].name, x.astype(dtype).reshape(shape)


def run_onnx(onnx_path: Union[str, Path], x: np.ndarray) -> np.ndarray:
    """Evaluate the model's first output at the flat input ``x`` with
    onnxruntime; returns it flattened, as float64."""
    session = _session_for(onnx_path)
    name, array = _input_array(session, np.asarray(x, dtype=np.float64).reshape(-1))
    output = session.run([session.get_outputs()[0].name], {name: array})[0]
    return np.asarray(output, dtype=np.float64).reshape(-1)


def validate_counterexample(onnx_path: Union[str, Path], spec: Spec, x: np.ndarray,
                            tol: float = DEFAULT_OUTPUT_TOL,
                            input_tol: float = DEFAULT_INPUT_TOL) -> tuple[bool, np.ndarray | None, str]:
    """Check a claimed counterexample against the original model.

    Returns ``(ok, y, message)``: ``ok`` when ``float32(x)`` (what the model is
    actually fed) lies in some region's box and ``y = model(x)`` from
    onnxruntime satisfies one conjunction of that region, with the tolerances
    described in the module docstring. ``y`` is None when the model could not
    be run; ``message`` says which check failed (or which region matched).
    """
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    if x.size != spec.num_inputs:
        return False, None, f"counterexample has {x.size} inputs, the property {spec.num_inputs}"
    if not np.isfinite(x).all():
        return False, None, "counterexample contains non-finite inputs"
    try:
        y = run_onnx(onnx_path, x)
    except Exception as exc:  # a model we cannot run cannot confirm anything
        return False, None, f"onnxruntime could not evaluate {onnx_path}: {exc}"
    if y.size != spec.num_outputs:
        return False, y, f"model produced {y.size} outputs, the property declares {spec.num_outputs}"
    evaluated_x = x.astype(np.float32).astype(np.float64)
    boxes = [index for index, region in enumerate(spec.regions) if region.contains(evaluated_x, input_tol)]
    if not boxes:
        return False, y, f"input is outside every input box (tolerance {input_tol:g})"
    for index in boxes:
        region = spec.regions[index]
        for number, conjunction in enumerate(region.disjuncts):
            if conjunction.is_satisfied_by(y, tol):
                return True, y, f"valid: violates region {index}, disjunct {number}"
    return False, y, f"input is inside region(s) {boxes} but the outputs satisfy no violation constraint (tolerance {tol:g})"

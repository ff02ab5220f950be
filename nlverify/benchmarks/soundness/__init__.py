"""Soundness suite: VNN-COMP instances with planted, hidden counterexamples, and a harness
that runs any VNN-COMP-style verifier on them and names its unsound claims.

Modules: :mod:`.models` (torch models per activation, ONNX export),
:mod:`.needle` (the planted counterexample), :mod:`.check` (onnxruntime,
float64 and interval checks of a plant), :mod:`.attack` (the hiddenness
attack), :mod:`.vnnlib_io`, :mod:`.generate` (the suite writer),
:mod:`.harness` (run and score a verifier), :mod:`.cli`.
"""

from .generate import generate_suite
from .harness import run_harness

__all__ = ["generate_suite", "run_harness"]

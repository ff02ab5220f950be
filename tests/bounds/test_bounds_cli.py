"""``nlverify bounds``: prints sound bounds on the bundled example; bad input is exit 2, one line."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

EXAMPLES = Path(__file__).resolve().parents[2] / "nlverify" / "data" / "examples"
MODEL, SPEC = EXAMPLES / "demo_sigmoid.onnx", EXAMPLES / "demo_sigmoid.vnnlib"


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nlverify", "bounds", *map(str, args)],
                          capture_output=True, text=True, timeout=120)


def test_json_bounds_enclose_samples_of_the_model():
    import nlverify
    from nlverify.verifier.spec import parse_vnnlib

    done = _run(MODEL, SPEC, "--method", "crown", "--json")
    assert done.returncode == 0, done.stderr
    box = json.loads(done.stdout)["boxes"][0]
    low, up = torch.tensor(box["lower"]), torch.tensor(box["upper"])
    box_low, box_up = (torch.tensor(b, dtype=torch.float32) for b in parse_vnnlib(SPEC).input_boxes()[0])
    x = box_low + (box_up - box_low) * torch.rand(2000, box_low.numel())
    y = nlverify.load_onnx(MODEL)(x)
    assert (y >= low - 1e-5).all() and (y <= up + 1e-5).all() and (up > low).all()


@pytest.mark.parametrize("args,needle", [
    (("missing.onnx", SPEC), "not found"),
    ((MODEL, "missing.vnnlib"), "missing.vnnlib"),
    ((MODEL, SPEC, "--device", "cuda"), "CUDA"),
])
def test_bad_input_is_one_line_and_exit_2(args, needle):
    if "cuda" in args and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    done = _run(*args)
    assert done.returncode == 2
    assert needle in done.stderr and len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr

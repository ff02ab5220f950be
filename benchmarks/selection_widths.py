"""Output-bound widths of IBP, CROWN and alpha-CROWN on generated nets whose activations torch exports
through selection ops (MaxMin, GroupSort, Max/Min of halves, products of halves; ReLU for reference).

Nets: ``tests/netgen.make_net`` with width 32, 8 inputs (CNN: 1x6x6), seed 1; four boxes of radius 0.3
around N(0, 1) centres. Prints one line per (activation, architecture): the mean width of each method's
output bounds and its time. This is how the passes behind selection ops
(``nlverify.bounds.crown.refinement_candidates``) were measured.

Run: ``.venv/bin/python benchmarks/selection_widths.py [--threads 1]``
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from netgen import export, make_net  # noqa: E402
from nlverify import load_onnx  # noqa: E402

ACTIVATIONS = ["maxmin", "groupsort", "max2", "mul", "relu"]
ARCHITECTURES = ["mlp", "residual", "cnn"]
METHODS = ["ibp", "crown", "alpha-crown"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        for activation in ACTIVATIONS:
            for architecture in ARCHITECTURES:
                net, shape = make_net(activation, architecture, seed=1, width=32, inputs=8)
                model = load_onnx(export(net, shape, Path(tmp) / f"{activation}_{architecture}.onnx"))
                torch.manual_seed(0)
                centre = torch.randn(4, *shape)
                cells = []
                for method in METHODS:
                    start = time.perf_counter()
                    low, up = model.bounds(centre - 0.3, centre + 0.3, method=method)
                    cells.append(f"{method} {float((up - low).mean()):.3f} ({time.perf_counter() - start:.2f} s)")
                print(f"{activation:10s} {architecture:9s} " + "  ".join(cells), flush=True)


if __name__ == "__main__":
    main()

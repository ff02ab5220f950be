"""``nlverify bounds MODEL SPEC``: bounds of every output on each input box of a property."""
from __future__ import annotations

import json
import time

import numpy as np
import torch


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("bounds", help="bound every output of a model on a property's input boxes",
                              description="Print sound lower/upper bounds of every model output over each "
                                          "input box of a VNN-LIB property.")
    p.add_argument("model", help="ONNX model (.onnx or .onnx.gz)")
    p.add_argument("spec", help="VNN-LIB property; only its input boxes are used")
    p.add_argument("--method", choices=["ibp", "crown", "alpha-crown"], default="crown")
    p.add_argument("--iterations", type=int, default=20, help="alpha-CROWN iterations (default 20)")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("-v", "--verbose", action="store_true")
    p.set_defaults(run=run)


def run(args) -> int:
    from nlverify.cli import require_device
    from nlverify.model import load_onnx
    from nlverify.verifier.spec import check_against_model, parse_vnnlib

    require_device(args.device)

    model = load_onnx(args.model)
    spec = parse_vnnlib(args.spec)
    check_against_model(spec, model.num_inputs, model.num_outputs)
    model.to(device=args.device)
    boxes = spec.input_boxes()
    lower = torch.tensor(np.array([b[0] for b in boxes]), dtype=torch.float32, device=args.device)
    upper = torch.tensor(np.array([b[1] for b in boxes]), dtype=torch.float32, device=args.device)
    options = {"iterations": args.iterations} if args.method == "alpha-crown" else {}
    start = time.perf_counter()
    low, up = model.bounds(lower, upper, method=args.method, **options)
    elapsed = time.perf_counter() - start
    if args.json:
        print(json.dumps({"method": args.method, "seconds": elapsed,
                          "boxes": [{"lower": l.tolist(), "upper": u.tolist()} for l, u in zip(low, up)]}))
        return 0
    for index, (l, u) in enumerate(zip(low, up)):
        print(f"box {index}  ({args.method}, {elapsed:.3f} s)")
        for j, (a, b) in enumerate(zip(l.tolist(), u.tolist())):
            print(f"  Y_{j:<4} [{a: .6g}, {b: .6g}]")
    return 0

"""Speed and tightness of IBP, CROWN and alpha-CROWN on the shared benchmark nets and generated MLPs.

Nets: eran_sigmoid 6x200 (784 inputs), mnist_fc 256x2, and 6x200 MLPs with tanh / GELU / sin
activations (random weights scaled 1/sqrt(fan_in), 784 inputs). Boxes: the first property box of the
benchmark (eps 0.012 for eran, 0.03 for mnist), or an eps=0.01 box around a random point.
Per method: median wall time over repeats for one box and for a batch of 64 boxes (alpha-CROWN's batch
only with ``--alpha-batch``), and the mean width of the output bounds. Prints a table, writes results/bounds_speed.{csv,json}.

Run: ``.venv/bin/python benchmarks/bounds_speed.py [--repeats 5] [--threads 2]``
"""
from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "benchmarks"
sys.path.insert(0, str(REPO))

from nlverify.model import Model, load_onnx  # noqa: E402


def generated_mlp(activation: str, path: Path) -> Path:
    torch.manual_seed(0)
    act = {"tanh": nn.Tanh, "gelu": nn.GELU, "sin": None}[activation]
    layers: list[nn.Module] = []
    width, fan_in = 200, 784
    for _ in range(6):
        linear = nn.Linear(fan_in, width)
        nn.init.normal_(linear.weight, std=fan_in ** -0.5)
        layers += [linear, act() if act else Sine()]
        fan_in = width
    layers.append(nn.Linear(fan_in, 10))
    torch.onnx.export(nn.Sequential(*layers).eval(), torch.zeros(1, 784), str(path), opset_version=17, dynamo=False)
    return path


class Sine(nn.Module):
    def forward(self, x):
        return torch.sin(x)


def property_box(vnnlib: Path) -> tuple[torch.Tensor, torch.Tensor]:
    from nlverify.verifier.spec import parse_vnnlib

    low, up = parse_vnnlib(vnnlib).input_boxes()[0]
    return torch.tensor(low, dtype=torch.float32)[None], torch.tensor(up, dtype=torch.float32)[None]


def nets(tmp: Path) -> list[tuple[str, Model, torch.Tensor, torch.Tensor]]:
    out = []
    if SHARED.is_dir():
        eran = SHARED / "eran_sigmoid"
        spec = sorted((eran / "specs").rglob("*.vnnlib"))[0]
        out.append(("eran_sigmoid 6x200", load_onnx(next((eran / "nets").glob("*6x200*.onnx"))), *property_box(spec)))
        mnist = SHARED / "mnist_fc"
        out.append(("mnist_fc 256x2", load_onnx(mnist / "onnx" / "mnist-net_256x2.onnx"),
                    *property_box(mnist / "vnnlib" / "prop_0_0.03.vnnlib")))
    g = torch.Generator().manual_seed(1)
    centre = torch.rand(1, 784, generator=g)
    for activation in ("tanh", "gelu", "sin"):
        model = load_onnx(generated_mlp(activation, tmp / f"{activation}.onnx"))
        out.append((f"{activation} 6x200 (generated)", model, centre - 0.01, centre + 0.01))
    return out


def timed(fn, repeats: int) -> tuple[float, object]:
    fn()  # warm-up (lazy imports, allocator)
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--alpha-iterations", type=int, default=20)
    parser.add_argument("--alpha-batch", action="store_true",
                        help="also time alpha-CROWN on the batch (slow on CPU: intermediate alphas per box)")
    parser.add_argument("--out", type=Path, default=REPO / "results")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    tmp = args.out / "generated"
    tmp.mkdir(exist_ok=True)
    rows = []
    print(f"{'net':<26} {'method':<12} {'1 box (s)':>10} {f'{args.batch} boxes (s)':>14} {'ratio':>6} {'mean width':>12}")
    for name, model, low, up in nets(tmp):
        radius = (up - low) / 2
        noise = torch.rand(args.batch, low.shape[1], generator=torch.Generator().manual_seed(2)) * 0.0
        batch_low = (low + noise).clamp(max=up).expand(args.batch, -1).contiguous()
        batch_up = (up + noise).expand(args.batch, -1).contiguous()
        for method in ("ibp", "crown", "alpha-crown"):
            options = {"iterations": args.alpha_iterations} if method == "alpha-crown" else {}
            repeats = max(1, args.repeats // (3 if method == "alpha-crown" else 1))
            one, (lb, ub) = timed(lambda: model.bounds(low, up, method=method, **options), repeats)
            if method == "alpha-crown" and not args.alpha_batch:
                many = float("nan")
            else:
                many, _ = timed(lambda: model.bounds(batch_low, batch_up, method=method, **options), max(1, repeats // 2))
            width = float((ub - lb).mean())
            rows.append({"net": name, "method": method, "seconds_1": one, f"seconds_{args.batch}": many,
                         "batch_ratio": many / one, "mean_width": width, "threads": args.threads,
                         "eps": float(radius.max())})
            print(f"{name:<26} {method:<12} {one:>10.4f} {many:>14.4f} {many / one:>6.2f} {width:>12.5g}")
    with open(args.out / "bounds_speed.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    (args.out / "bounds_speed.json").write_text(json.dumps(rows, indent=2))
    print(f"wrote {args.out / 'bounds_speed.csv'}")


if __name__ == "__main__":
    main()

"""Regenerate the bundled demo example (``nlverify/data/examples``): a small sigmoid MLP trained to
separate three Gaussian blobs in 5-D, and two properties around a correctly classified point:

* ``demo_sigmoid.vnnlib``: a small box (radius 0.05) where class 0 stays the top class (expected unsat);
* ``demo_sigmoid_large.vnnlib``: a large box (radius 1.5) that reaches another class (expected sat).

Run: ``.venv/bin/python scripts/make_demo_example.py``. Deterministic (seeded).
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

OUT = Path(__file__).resolve().parents[1] / "nlverify" / "data" / "examples"


def train() -> nn.Module:
    torch.manual_seed(0)
    centres = torch.randn(3, 5) * 2.0
    x = torch.cat([c + 0.6 * torch.randn(400, 5) for c in centres])
    y = torch.arange(3).repeat_interleave(400)
    net = nn.Sequential(nn.Linear(5, 32), nn.Sigmoid(), nn.Linear(32, 32), nn.Sigmoid(), nn.Linear(32, 3))
    optimiser = torch.optim.Adam(net.parameters(), lr=0.02)
    for _ in range(300):
        optimiser.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        optimiser.step()
    net.centres = centres
    return net.eval()


def write_property(path: Path, centre: torch.Tensor, radius: float, label: int, outputs: int) -> None:
    lines = [f"; demo property: class {label} stays the top class on an L-inf ball of radius {radius}",
             "; the file states the violation: some other output is at least as large as Y_{label}"]
    lines += [f"(declare-const X_{i} Real)" for i in range(len(centre))]
    lines += [f"(declare-const Y_{j} Real)" for j in range(outputs)]
    for i, c in enumerate(centre.tolist()):
        lines.append(f"(assert (>= X_{i} {c - radius:.6f}))")
        lines.append(f"(assert (<= X_{i} {c + radius:.6f}))")
    others = " ".join(f"(and (>= Y_{j} Y_{label}))" for j in range(outputs) if j != label)
    lines.append(f"(assert (or {others}))")
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    net = train()
    centre = net.centres[0]
    torch.onnx.export(net, centre[None], str(OUT / "demo_sigmoid.onnx"), opset_version=17, dynamo=False,
                      input_names=["input"], output_names=["logits"])
    write_property(OUT / "demo_sigmoid.vnnlib", centre, 0.05, 0, 3)
    write_property(OUT / "demo_sigmoid_large.vnnlib", centre, 1.5, 0, 3)
    print("wrote", sorted(p.name for p in OUT.iterdir()))


if __name__ == "__main__":
    main()

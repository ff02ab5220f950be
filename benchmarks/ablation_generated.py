"""The generated half of the BaB ablation: small trained tanh / sin / GELU MLPs and L-inf robustness
properties whose radius is calibrated to lie *between* what the incomplete bounds prove and what an
attack falsifies, so that branch-and-bound has work to do.

Data ("MNIST-like random data"): ``x ~ U[0, 1]^D`` (D = 64, an 8x8 "image"), label = argmax of a fixed
random teacher ``W2 tanh(W1 x + b1)`` over 4 classes. A student MLP ``D -> H -> H -> H -> 4`` with the
activation under test is trained by Adam for a few hundred steps (seconds on one core). D > 32 so BaB
splits activations, not inputs (``BabOptions.input_split_max_inputs``).

Radius of a property around a correctly classified held-out point ``x0`` with label ``c``: on a
geometric grid of radii, ``eps_bound`` is the largest radius at which alpha-CROWN proves
``y_c - y_j > 0`` for every ``j != c`` on ``[x0 - eps, x0 + eps] ∩ [0, 1]^D``, and ``eps_attack`` the
smallest at which PGD finds ``max_j (y_j - y_c) >= 0`` (both refined on a finer grid between the
two, with a stronger attack; :func:`bracket`). The property gets

    eps = eps_bound * (eps_attack / eps_bound) ** position        (geometric interpolation)

so ``position = 0`` is (just) provable by the bounds and ``position = 1`` is falsified; in between the
answer is unknown to both, which is where the ablation is informative. ``position`` was calibrated on a
few points (see the module docstring of ``ablation.py``). Everything is seeded; the folder is rebuilt
whenever its ``manifest.json`` does not match the requested parameters.

Files: ``<out>/<activation>.onnx``, ``<out>/specs/<activation>_<k>.vnnlib``, ``<out>/instances.csv``
(``onnx,vnnlib,timeout``, VNN-COMP style) and ``<out>/calibration.csv`` (the radii per instance).
"""
from __future__ import annotations

import csv
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

ACTIVATIONS = ("tanh", "sin", "gelu")


@dataclass(frozen=True)
class GeneratedSpec:
    seed: int = 0
    inputs: int = 64
    hidden: int = 48
    layers: int = 3
    classes: int = 4
    train_steps: int = 400
    points: int = 4  # properties per activation
    position: float = 0.35  # where between eps_bound and eps_attack the radius lies (log scale)
    timeout: float = 30.0  # the instances.csv timeout column (the ablation caps it anyway)
    version: int = 2  # of the generation procedure: bump it when the code changes what is generated


class Sine(nn.Module):
    def forward(self, x):
        return torch.sin(x)


def _activation(name: str) -> nn.Module:
    return {"tanh": nn.Tanh(), "sin": Sine(), "gelu": nn.GELU()}[name]


def teacher_data(spec: GeneratedSpec, count: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` points ``U[0,1]^D`` labelled by the seeded random teacher (the same teacher for every call
    with the same seed: its weights are drawn from their own generator)."""
    teacher = torch.Generator().manual_seed(spec.seed + 1000)
    w1 = torch.randn(spec.inputs, 32, generator=teacher) * 3 / spec.inputs ** 0.5
    b1 = -w1.sum(0) / 2  # centre the hidden pre-activations on the cube's centre
    w2 = torch.randn(32, spec.classes, generator=teacher)
    x = torch.rand(count, spec.inputs, generator=generator)
    return x, (torch.tanh(x @ w1 + b1) @ w2).argmax(1)


def train_mlp(activation: str, spec: GeneratedSpec) -> tuple[nn.Sequential, torch.Tensor, torch.Tensor]:
    """The trained student and its held-out points ``(x, label)``, correctly classified ones only."""
    torch.manual_seed(spec.seed)
    generator = torch.Generator().manual_seed(spec.seed)
    x_train, y_train = teacher_data(spec, 4096, generator)
    x_test, y_test = teacher_data(spec, 256, generator)
    layers: list[nn.Module] = []
    width = spec.inputs
    for _ in range(spec.layers):
        layers += [nn.Linear(width, spec.hidden), _activation(activation)]
        width = spec.hidden
    net = nn.Sequential(*layers, nn.Linear(width, spec.classes))
    optimiser = torch.optim.Adam(net.parameters(), lr=3e-3)
    for step in range(spec.train_steps):
        batch = torch.randint(0, len(x_train), (256,), generator=generator)
        loss = nn.functional.cross_entropy(net(x_train[batch]), y_train[batch])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    net.eval()
    with torch.no_grad():
        correct = net(x_test).argmax(1) == y_test
    return net, x_test[correct], y_test[correct]


def robustness_C(label: int, classes: int) -> torch.Tensor:
    """Rows ``e_label - e_j`` (j != label): the property holds when every row of ``C y`` is > 0."""
    others = [j for j in range(classes) if j != label]
    C = torch.zeros(len(others), classes)
    C[:, label] = 1.0
    C[torch.arange(len(others)), others] = -1.0
    return C


def radius_grid() -> torch.Tensor:
    return torch.logspace(-3.5, -0.5, 49)  # ratio ~1.15 between neighbours


def _proved_radii(model, x0: torch.Tensor, C: torch.Tensor, radii: torch.Tensor, method: str) -> torch.Tensor:
    """``(len(radii),)`` bool: every row of ``C y`` proved > 0 on the clipped box of each radius (one
    batched call)."""
    from nlverify.bounds.alpha import AlphaOptions, alpha_crown
    from nlverify.bounds.crown import CrownOptions, crown
    from nlverify.verifier.problem import rows_proved

    lower, upper = (x0[None] - radii[:, None]).clamp(0, 1), (x0[None] + radii[:, None]).clamp(0, 1)
    C = C[None].expand(len(radii), -1, -1).contiguous()
    if method == "crown":
        low, _, _ = crown(model.graph, lower, upper, C, CrownOptions(), model.propagator, need_upper=False)
    else:
        low, _, _, _ = alpha_crown(model.graph, lower, upper, C, AlphaOptions(iterations=30),
                                   propagator=model.propagator, need_upper=False)
    low = low.detach()
    return rows_proved(low, torch.zeros_like(low)).all(1)


def _last_of_prefix(proved: torch.Tensor) -> int:
    """Index of the last ``True`` of the leading run of ``True`` (-1 when ``proved[0]`` is False)."""
    return int(proved.long().cumprod(0).sum()) - 1


def eps_bound(model, x0: torch.Tensor, label: int, classes: int, grid: torch.Tensor,
              below: float = float("inf")) -> float:
    """Largest grid radius (all smaller ones too) at which alpha-CROWN proves every row; 0 if none.

    CROWN on the whole grid first (cheap); alpha-CROWN (30 iterations, as the pipeline) only on the
    radii above CROWN's and below ``below`` (the attack's radius: nothing is provable from there on)."""
    C = robustness_C(label, classes)
    k = _last_of_prefix(_proved_radii(model, x0, C, grid, "crown"))
    candidates = torch.arange(k + 1, len(grid))
    candidates = candidates[grid[candidates] < below]
    if len(candidates):
        k += 1 + _last_of_prefix(_proved_radii(model, x0, C, grid[candidates], "alpha"))
    return float(grid[k]) if k >= 0 else 0.0


def eps_attack(net: nn.Module, x0: torch.Tensor, label: int, grid: torch.Tensor, restarts: int = 32,
               steps: int = 60, seed: int = 0) -> float:
    """Smallest grid radius at which signed-gradient PGD (all radii and restarts in one batch) finds
    ``max_j (y_j - y_label) >= 0``; ``inf`` if none."""
    generator = torch.Generator().manual_seed(seed)
    eps = grid.repeat_interleave(restarts)[:, None]
    lower, upper = (x0[None] - eps).clamp(0, 1), (x0[None] + eps).clamp(0, 1)
    x = lower + (upper - lower) * torch.rand(lower.shape, generator=generator)
    found = torch.zeros(len(x), dtype=torch.bool)
    for step in range(steps):
        x.requires_grad_(True)
        y = net(x)
        others = y.clone()
        others[:, label] = -float("inf")
        margin = others.max(1).values - y[:, label]
        found |= margin.detach() >= 0
        (gradient,) = torch.autograd.grad(margin.sum(), x)
        step_size = eps * 0.1 * (1 - step / steps) + eps * 0.01
        x = torch.minimum(torch.maximum(x.detach() + step_size * gradient.sign(), lower), upper)
    hits = found.reshape(len(grid), restarts).any(1)
    return float(grid[hits.nonzero()[0]]) if bool(hits.any()) else float("inf")


def bracket(net: nn.Module, model, x0: torch.Tensor, label: int, classes: int) -> tuple[float, float]:
    """``(eps_bound, eps_attack)``: located on the coarse :func:`radius_grid`, then refined on 7 radii
    (geometric) strictly between the two, with a stronger attack there."""
    coarse = radius_grid()
    high = eps_attack(net, x0, label, coarse)
    low = eps_bound(model, x0, label, classes, coarse, below=high)
    if not 0 < low < high < float("inf"):
        return low, high
    fine = torch.logspace(torch.log10(torch.tensor(low)), torch.log10(torch.tensor(high)), 9)[1:-1]
    high = min(high, eps_attack(net, x0, label, fine, restarts=128, steps=150))
    return max(low, eps_bound(model, x0, label, classes, fine, below=high)), high


def write_vnnlib(path: Path, x0: torch.Tensor, eps: float, label: int, classes: int) -> None:
    """VNN-LIB robustness property in the VNN-COMP MNIST style: the box, then the violation
    ``OR_j (y_j >= y_label)``."""
    low, up = (x0 - eps).clamp(0, 1).tolist(), (x0 + eps).clamp(0, 1).tolist()
    lines = [f"; generated for the BaB ablation: label {label}, eps {eps:.8f}"]
    lines += [f"(declare-const X_{i} Real)" for i in range(len(low))]
    lines += [f"(declare-const Y_{j} Real)" for j in range(classes)]
    for i, (a, b) in enumerate(zip(low, up)):
        lines += [f"(assert (<= X_{i} {b:.8f}))", f"(assert (>= X_{i} {a:.8f}))"]
    lines.append("(assert (or")
    lines += [f"\t(and (>= Y_{j} Y_{label}))" for j in range(classes) if j != label]
    lines.append("))")
    path.write_text("\n".join(lines) + "\n")


def export(net: nn.Module, inputs: int, path: Path) -> None:
    torch.onnx.export(net, torch.zeros(1, inputs), str(path), opset_version=17, dynamo=False,
                      input_names=["x"], output_names=["y"])


def generate(out: Path, spec: GeneratedSpec, force: bool = False, progress=print) -> Path:
    """Build (or keep, when its manifest matches ``spec``) the generated benchmark folder ``out``."""
    from nlverify.model import load_onnx

    manifest = out / "manifest.json"
    if not force and manifest.is_file() and json.loads(manifest.read_text()) == asdict(spec):
        return out
    (out / "specs").mkdir(parents=True, exist_ok=True)
    rows, calibration = [], []
    for activation in ACTIVATIONS:
        net, points, labels = train_mlp(activation, spec)
        export(net, spec.inputs, out / f"{activation}.onnx")
        model = load_onnx(out / f"{activation}.onnx")
        kept = 0
        for x0, label in zip(points, labels.tolist()):
            if kept == spec.points:
                break
            low, high = bracket(net, model, x0, label, spec.classes)
            if not 0 < low < high < float("inf"):
                continue  # nothing between what the bounds prove and what the attack finds
            eps = low * (high / low) ** spec.position
            name = f"specs/{activation}_{kept}.vnnlib"
            write_vnnlib(out / name, x0, eps, label, spec.classes)
            rows.append([f"{activation}.onnx", name, f"{spec.timeout:g}"])
            calibration.append({"onnx": f"{activation}.onnx", "vnnlib": name, "label": label,
                                "eps_bound": low, "eps_attack": high, "eps": eps})
            progress(f"generated {name}: eps_bound {low:.5f}, eps_attack {high:.5f} -> eps {eps:.5f}")
            kept += 1
    with open(out / "instances.csv", "w", newline="") as stream:
        csv.writer(stream).writerows(rows)
    with open(out / "calibration.csv", "w", newline="") as stream:
        writer = csv.DictWriter(stream, ["onnx", "vnnlib", "label", "eps_bound", "eps_attack", "eps"])
        writer.writeheader()
        writer.writerows(calibration)
    manifest.write_text(json.dumps(asdict(spec), indent=1))
    return out

"""The suite writer: planted (violated) and decoy (clean) VNN-COMP instances, plus an answer key.

For every activation and every :class:`InstanceConfig` of the chosen size, an
instance is built (:func:`build_instance`):

1. a random base network (MLP or small CNN) with the activation; the box
   ``[x0 - eps, x0 + eps]`` around a random centre; label ``c`` = the base
   argmax at ``x0``; the class-``c`` output bias is shifted so that interval
   arithmetic certifies ``y_c - y_j >= BASE_MARGIN`` on the whole box for the
   base network alone;
2. a random interior point ``x*`` (each coordinate at most 70% of the way
   from ``x0`` to a face), the weakest wrong class ``j`` there, and the
   needle of :mod:`.needle` merged in, at the height that makes ``y_j - y_c``
   at ``x*`` equal ``tau`` (planted) or that stops short of the base margin
   (decoy); hidden units shuffled;
3. for planted instances, the checks of :mod:`.check` (onnxruntime float32 and
   torch float64 margins ``>= MIN_MARGIN``, ``x*`` inside the box as read
   back from the written VNN-LIB, a certified L-inf ball around ``x*``);
4. the hiddenness attack of :mod:`.attack` (every instance). A planted
   instance whose needle the attack finds is discarded and rebuilt from the
   next seed; a decoy on which the attack finds a violation (it should not)
   is kept and labelled ``violated`` with that counterexample.

Attempts run in the order of :mod:`.schedule` (first attempts before retries, slow-to-hide planted
CNNs later), and a ``time_budget`` stops starting new ones; the summary lists the slots left empty.

File names are random hex ids and ``instances.csv`` is shuffled; the answer
key goes to a separate directory.
"""

from __future__ import annotations

import csv
import hashlib
import json
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Union

import numpy as np
import torch

from .attack import AttackBudget, hiddenness_attack
from .check import MIN_MARGIN, certify_plant, margin_lower_bounds, ort_outputs, violation_margin
from .models import ACTIVATIONS, CNNWeights, MLPWeights, build_model, export_onnx
from .needle import STEP_FAMILY, WIDTH, merge, needle_network, shuffle_units
from .schedule import RunBudget, attempt_plan
from .vnnlib_io import RobustnessProperty, read_property, write_property

__all__ = [
    "InstanceConfig",
    "SIZES",
    "BuiltInstance",
    "build_instance",
    "generate_suite",
    "CleanProver",
    "nlverify_clean_prover",
]

BASE_MARGIN = 1.0  # certified (interval) margin of the base network on the box
CLASSES = 3
INTERIOR = 0.7  # x* - x0 in [-0.7, 0.7] * eps per coordinate
CleanProver = Callable[[Path, Path], str]  # (onnx, vnnlib) -> "holds" | "unknown"


def nlverify_clean_prover(timeout: float = 20.0, log: Callable[[str], None] | None = None) -> CleanProver:
    """Our own verifier as the clean prover: ``"holds"`` when
    :func:`nlverify.verifier.pipeline.verify` answers ``unsat`` (run in-process, ``timeout`` seconds),
    ``"unknown"`` for any other verdict or an error.

    A ``holds`` label then rests on our verifier's proof. The harness re-checks every counterexample
    with onnxruntime, so should another verifier later find a valid one on such an instance, it is
    reported as ``key_contradicted``: a soundness bug of ours, not a wrong score. Refused (``ValueError``)
    while a TEST-ONLY fault of :mod:`nlverify.faults` is active: an unsound prover would write
    a wrong key."""
    from nlverify import faults

    if faults.ACTIVE:
        raise ValueError(f"{faults.ENV_VAR} is set: our verifier is deliberately unsound and cannot be the "
                         "clean prover; unset it or drop --prove-clean")
    log = log or (lambda message: None)

    def prove(onnx: Path, vnnlib: Path) -> str:
        from nlverify.verifier.pipeline import verify
        from nlverify.verifier.result import Verdict

        try:
            result = verify(onnx, vnnlib, timeout)
        except Exception as exc:  # a decoy we cannot verify stays unknown; the suite is still usable
            log(f"  clean prover failed on {Path(onnx).name}: {type(exc).__name__}: {exc}")
            return "unknown"
        return "holds" if result.verdict is Verdict.UNSAT else "unknown"

    prove.description = f"nlverify verify (in-process, timeout {timeout:g} s)"
    return prove


@dataclass(frozen=True)
class InstanceConfig:
    kind: str  # "mlp" | "cnn"
    input_shape: tuple[int, ...]
    hidden: tuple[int, ...]  # MLP hidden widths (after the conv layer for a CNN)
    eps: float
    planted: bool = True
    conv_channels: int = 4


def _grid(planted_mlps, planted_cnns, clean, eps_values) -> tuple[InstanceConfig, ...]:
    configs = []
    for eps in eps_values:
        configs += [InstanceConfig("mlp", (d,), widths, eps) for d, widths in planted_mlps]
        configs += [InstanceConfig("cnn", shape, widths, eps, True, ch) for shape, widths, ch in planted_cnns]
    configs += [InstanceConfig(c.kind, c.input_shape, c.hidden, c.eps, False, c.conv_channels) for c in clean]
    return tuple(configs)


SIZES: dict[str, tuple[InstanceConfig, ...]] = {
    # per activation: 6 planted + 2 decoys
    "small": _grid([(4, (16, 16)), (8, (16, 16, 16))], [((1, 4, 4), (16, 16), 4)],
                   [InstanceConfig("mlp", (4,), (16, 16), 0.05), InstanceConfig("cnn", (1, 4, 4), (16, 16), 0.05)],
                   (0.02, 0.05)),
    # per activation: 10 planted + 3 decoys
    "medium": _grid([(8, (32, 32)), (16, (32, 32, 32)), (32, (32, 32))],
                    [((1, 6, 6), (32, 32), 8), ((3, 4, 4), (32, 32), 8)],
                    [InstanceConfig("mlp", (16,), (32, 32, 32), 0.05), InstanceConfig("mlp", (32,), (32, 32), 0.02),
                     InstanceConfig("cnn", (1, 6, 6), (32, 32), 0.05, False, 8)],
                    (0.02, 0.05)),
    # for tests: 1 planted + 1 decoy per activation
    "tiny": _grid([(4, (8, 8))], [], [InstanceConfig("mlp", (4,), (8, 8), 0.05)], (0.05,)),
}


@dataclass
class BuiltInstance:
    """An instance in memory, checked, before it is written."""

    config: InstanceConfig
    activation: str
    seed: int
    weights: Union[MLPWeights, CNNWeights]
    prop: RobustnessProperty
    target: int
    x_star: np.ndarray
    base_margin_at_x_star: float
    height: float
    margin_torch64: float
    certified_radius: float
    info: dict = field(default_factory=dict)


def _gain(activation: str) -> float:
    return {"sigmoid": 4.0, "tanh": 1.0, "sin": 1.0}.get(activation, 2.0 ** 0.5)


def random_base(config: InstanceConfig, activation: str, rng: np.random.Generator) -> Union[MLPWeights, CNNWeights]:
    """A random base network (He-like scaling per activation), biases ~ N(0, 0.1^2)."""
    gain = _gain(activation)

    def dense(n_out: int, n_in: int) -> tuple[np.ndarray, np.ndarray]:
        return rng.normal(0, gain / np.sqrt(n_in), (n_out, n_in)), rng.normal(0, 0.1, n_out)

    if config.kind == "mlp":
        sizes = [config.input_shape[0], *config.hidden]
        hidden = [dense(sizes[i + 1], sizes[i]) for i in range(len(config.hidden))]
        return MLPWeights(activation, hidden, dense(CLASSES, sizes[-1]))
    channels, height, width = config.input_shape
    ch = config.conv_channels
    conv = (rng.normal(0, gain / np.sqrt(9 * channels), (ch, channels, 3, 3)), rng.normal(0, 0.1, ch))
    sizes = [ch * height * width, *config.hidden]
    hidden = [dense(sizes[i + 1], sizes[i]) for i in range(len(config.hidden))]
    return CNNWeights(activation, (channels, height, width), conv, hidden, dense(CLASSES, sizes[-1]))


def _f32(values: np.ndarray) -> np.ndarray:
    return np.asarray(values, dtype=np.float32).astype(np.float64)


def build_instance(config: InstanceConfig, activation: str, seed: int) -> BuiltInstance:
    """Build and check one instance in memory (see the module doc); raises
    ``RuntimeError`` when a planted needle fails a check."""
    rng = np.random.default_rng(seed)
    n = int(np.prod(config.input_shape))
    x0 = _f32(rng.uniform(0.2, 0.8, n))
    lower, upper = _f32(x0 - config.eps), _f32(x0 + config.eps)
    base = random_base(config, activation, rng)
    base64 = build_model(base, torch.float64)
    with torch.no_grad():
        label = int(base64(torch.as_tensor(x0).reshape(1, *config.input_shape)).argmax())
    lb = margin_lower_bounds(base64, config.input_shape, lower, upper, label, CLASSES)
    base.out[1][label] += BASE_MARGIN - lb.min()
    base64 = build_model(base, torch.float64)

    x_star = _f32(x0 + config.eps * rng.uniform(-INTERIOR, INTERIOR, n))
    with torch.no_grad():
        y_base = base64(torch.as_tensor(x_star).reshape(1, *config.input_shape))[0].numpy()
    margins = y_base[label] - y_base
    margins[label] = np.inf
    target = int(margins.argmin())
    m_star = float(margins[target])

    needle = needle_network(activation, x_star, np.full(n, config.eps), lower, base, rng)
    needle64 = build_model(needle, torch.float64)
    with torch.no_grad():
        g_star = float(needle64(torch.as_tensor(x_star).reshape(1, *config.input_shape))[0, 0])
        far = np.where(x_star < x0, upper, lower)  # the corner farthest from x*
        g_far = float(needle64(torch.as_tensor(far).reshape(1, *config.input_shape))[0, 0])
    g_ref = g_far if activation in STEP_FAMILY else 0.0
    if config.planted:
        tau = max(0.05, 0.1 * m_star)
        height = (m_star + tau) / (g_star - g_ref)
    else:
        tau = -rng.uniform(0.3, 0.6) * m_star
        height = (m_star + tau) / (g_star - g_ref)
    merged = shuffle_units(merge(base, needle, target, height, g_ref), rng)
    model64 = build_model(merged, torch.float64)
    margin64, radius = certify_plant(model64, config.input_shape, x_star, lower, upper, label, target, CLASSES,
                                     config.planted, WIDTH * config.eps)
    prop = RobustnessProperty(lower, upper, label, CLASSES)
    return BuiltInstance(config, activation, seed, merged, prop, target, x_star, m_star, float(height),
                         margin64, radius, {"tau": float(tau), "g_star": g_star, "g_ref": g_ref})


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def package_versions() -> dict[str, str]:
    import onnx
    import onnxruntime

    import nlverify

    return {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
            "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__, "nlverify": nlverify.__version__}


def _new_name(taken: set[str], rng: np.random.Generator) -> str:
    while True:
        name = rng.bytes(6).hex()
        if name not in taken:
            taken.add(name)
            return name


def generate_suite(out_dir: Union[str, Path], key_dir: Union[str, Path],
                   activations: Iterable[str] = ACTIVATIONS, size: str = "small", seed: int = 0,
                   budget: AttackBudget | None = None, timeout: float = 60.0, max_tries: int = 4,
                   clean_prover: CleanProver | None = None, threads: int | None = 1,
                   planting: str = "constructive", log: Callable[[str], None] | None = None,
                   training=None, time_budget: float | None = None) -> dict:
    """Write a VNN-COMP suite to ``out_dir`` and its answer key to ``key_dir/key.jsonl``.

    ``clean_prover`` (optional) upgrades a decoy's truth from ``unknown`` to
    ``holds`` when it returns ``"holds"`` (meant for a complete verifier, e.g.
    :func:`nlverify_clean_prover`); it runs with the generator's torch threads.
    ``planting="trained"`` trains every network instead (:mod:`.trained`; ``training`` is its
    :class:`.trained.TrainingConfig`, default when None); the checks and the attack are the same.
    ``time_budget`` (seconds, None: unlimited) stops *starting* attempts once the run has taken that
    long (:mod:`.schedule`: the order of attempts, and why a started one is never cut); the slots left
    empty are listed in the summary's ``unfilled`` (``why``: ``budget`` or ``tries``).
    Returns a summary (counts per activation, discarded plants, unfilled slots, seconds, budget).
    """
    if planting not in ("constructive", "trained"):
        raise ValueError(f"unknown planting {planting!r}; expected 'constructive' or 'trained'")
    if planting == "trained" and training is None:
        from .trained import TrainingConfig

        training = TrainingConfig()
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; expected one of {', '.join(SIZES)}")
    activations = list(activations)
    for act in activations:
        if act not in ACTIVATIONS:
            raise ValueError(f"unknown activation {act!r}; expected one of {', '.join(ACTIVATIONS)}")
    budget = budget or AttackBudget()
    out_dir, key_dir = Path(out_dir), Path(key_dir)
    if out_dir.resolve() == key_dir.resolve() or key_dir.resolve().is_relative_to(out_dir.resolve()):
        raise ValueError("the key directory must not be inside the suite directory")
    (out_dir / "onnx").mkdir(parents=True, exist_ok=True)
    (out_dir / "vnnlib").mkdir(parents=True, exist_ok=True)
    key_dir.mkdir(parents=True, exist_ok=True)
    log = log or (lambda message: None)
    previous_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    started = time.perf_counter()
    names_rng = np.random.default_rng([seed, 0x6E616D65])  # names: independent of the instances
    taken: set[str] = set()
    versions = package_versions()
    summary: dict = {"per_activation": {}, "discarded": [], "budget": budget.to_dict(), "size": size, "seed": seed,
                     "planting": planting, "training": None if training is None else training.to_dict(),
                     "clean_prover": None if clean_prover is None else
                     getattr(clean_prover, "description", getattr(clean_prover, "__name__", "custom"))}
    clock = RunBudget(time_budget, started)
    summary["time_budget"], summary["budget_exhausted"] = time_budget, False
    counts = {act: {"planted": 0, "clean": 0, "clean_violated": 0, "clean_holds": 0, "seconds": 0.0,
                    "attack_seconds": 0.0, "prover_seconds": 0.0,
                    "attempts": {"mlp": 0, "cnn": 0}, "hidden": {"mlp": 0, "cnn": 0}} for act in activations}
    configs = SIZES[size]
    filled: dict[tuple[int, int], dict] = {}
    tries: dict[tuple[int, int], int] = {}
    try:
        for a_index, c_index, attempt in attempt_plan(len(activations), configs, max_tries):
            if (a_index, c_index) in filled:
                continue
            if not clock.allows_another():
                summary["budget_exhausted"] = True
                break
            activation, config, act_counts = activations[a_index], configs[c_index], counts[activations[a_index]]
            instance_seed = int(np.random.SeedSequence([seed, a_index, c_index, attempt]).generate_state(1)[0])
            tries[a_index, c_index] = attempt + 1
            act_counts["attempts"][config.kind] += config.planted
            began = time.perf_counter()
            try:
                entry = _write_instance(config, activation, instance_seed, out_dir, budget,
                                        names_rng, taken, clean_prover, timeout, training)
            except RuntimeError as exc:
                summary["discarded"].append({"activation": activation, "config": asdict(config),
                                             "seed": instance_seed, "reason": str(exc)})
                log(f"  discarded {activation} {config.kind}{config.input_shape} seed {instance_seed}: {exc}")
                continue
            finally:
                act_counts["seconds"] += time.perf_counter() - began
            entry["seeds"] = {"suite": seed, "instance": entry.pop("_seed"), "attempt": attempt}
            entry["versions"] = versions
            filled[a_index, c_index] = entry
            act_counts["attack_seconds"] += entry["attack"]["seconds"]
            if config.planted:
                act_counts["planted"] += 1
                act_counts["hidden"][config.kind] += 1
            else:
                act_counts["clean"] += 1
                act_counts["clean_violated"] += entry["truth"] == "violated"
                act_counts["clean_holds"] += entry["truth"] == "holds"
                act_counts["prover_seconds"] += entry.get("prover_seconds", 0.0)
            log(f"  {activation:10s} {config.kind}{config.input_shape} eps={config.eps} "
                f"{'planted' if config.planted else 'decoy  '} truth={entry['truth']:8s} "
                f"attack {entry['attack']['seconds']:.1f}s"
                + (f", prover {entry['prover_seconds']:.1f}s" if "prover_seconds" in entry else "")
                + f" [{clock.elapsed():.0f} s]")
    finally:
        torch.set_num_threads(previous_threads)
    summary["per_activation"] = counts
    summary["unfilled"] = [{"activation": activations[a], "config": asdict(configs[c]), "attempts": tries.get((a, c), 0),
                            "why": "budget" if tries.get((a, c), 0) < max_tries else "tries"}
                           for a in range(len(activations)) for c in range(len(configs)) if (a, c) not in filled]
    entries = [filled[slot] for slot in sorted(filled)]
    rows = [(entry["onnx"], entry["vnnlib"], timeout) for entry in entries]
    order = np.random.default_rng([seed, 0x73687566]).permutation(len(rows))
    with open(out_dir / "instances.csv", "w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        for index in order:
            writer.writerow(rows[index][:2] + (f"{rows[index][2]:g}",))
    with open(key_dir / "key.jsonl", "w") as handle:
        for index in order:
            handle.write(json.dumps(entries[index]) + "\n")
    summary["seconds"] = time.perf_counter() - started
    summary["instances"] = len(rows)
    summary["planted"] = sum(c["planted"] for c in summary["per_activation"].values())
    (key_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _write_instance(config: InstanceConfig, activation: str, seed: int, out_dir: Path, budget: AttackBudget,
                    names_rng: np.random.Generator, taken: set[str], clean_prover: CleanProver | None,
                    timeout: float, training=None) -> dict:
    """Build (by needle, or by training when ``training`` is a :class:`.trained.TrainingConfig`),
    check, attack and write one instance; returns its key entry."""
    if training is None:
        inst = build_instance(config, activation, seed)
    else:
        from .trained import build_trained_instance

        inst = build_trained_instance(config, activation, seed, training)
    model32 = build_model(inst.weights, torch.float32)
    attack = hiddenness_attack(model32, inst.prop.lower, inst.prop.upper, inst.prop.label,
                               config.input_shape, budget, seed=seed % (2 ** 31))
    if config.planted and attack.found:
        raise RuntimeError(f"not hidden: the attack ({attack.method}) found a violation, margin {attack.margin:.3g}")
    name = _new_name(taken, names_rng)
    onnx_rel, vnnlib_rel = f"onnx/{name}.onnx", f"vnnlib/{name}.vnnlib"
    onnx_path, vnnlib_path = out_dir / onnx_rel, out_dir / vnnlib_rel
    export_onnx(model32, config.input_shape, onnx_path)
    write_property(vnnlib_path, inst.prop, comment=f"instance {name}: robustness of class {inst.prop.label} on an L-inf box")
    parsed = read_property(vnnlib_path)
    entry = {"onnx": onnx_rel, "vnnlib": vnnlib_rel, "label": inst.prop.label,
             "activation": activation, "kind": config.kind, "input_shape": list(config.input_shape),
             "hidden_widths": list(config.hidden), "eps": config.eps, "_seed": seed,
             "attack": {"found": attack.found, "method": attack.method, "best_margin": attack.margin,
                        "seconds": round(attack.seconds, 3), "steps_run": attack.steps_run,
                        "budget": attack.budget}}
    if config.planted:
        y32 = ort_outputs(onnx_path, inst.x_star)
        margin32 = violation_margin(y32, inst.prop.label)
        problems = []
        if margin32 < MIN_MARGIN:
            problems.append(f"onnxruntime margin at x* is {margin32:.3g} < {MIN_MARGIN}")
        if not parsed.contains(inst.x_star):
            problems.append("x* is outside the box read back from the VNN-LIB file")
        if problems:
            onnx_path.unlink()
            vnnlib_path.unlink()
            raise RuntimeError("; ".join(problems))
        entry.update({"truth": "violated", "hidden": True, "counterexample": [float(v) for v in inst.x_star],
                      "target": inst.target, "output_ort32": [float(v) for v in y32],
                      "margins": {"ort32": margin32, "torch64": inst.margin_torch64,
                                  "base_at_x_star": inst.base_margin_at_x_star, "tau": inst.info["tau"]},
                      "certified_radius": inst.certified_radius, "needle_height": inst.height})
    else:
        truth, counterexample = "unknown", None
        if attack.found:
            y32 = ort_outputs(onnx_path, attack.x)
            if parsed.contains(attack.x) and parsed.violated_by(y32):
                truth, counterexample = "violated", attack.x
        elif clean_prover is not None:
            began = time.perf_counter()
            truth = "holds" if clean_prover(onnx_path, vnnlib_path) == "holds" else "unknown"
            entry["prover_seconds"] = round(time.perf_counter() - began, 3)
        entry.update({"truth": truth, "hidden": None, "counterexample": counterexample,
                      "margins": {"base_at_x_star": inst.base_margin_at_x_star, "decoy_gap": -inst.info["tau"]},
                      "needle_height": inst.height})
    entry["planting"] = "constructive" if training is None else "trained"
    if training is not None:  # no base network and no needle: their fields give way to the training record
        entry.pop("needle_height")
        entry["margins"] = {k: v for k, v in entry["margins"].items() if k not in ("base_at_x_star", "tau", "decoy_gap")}
        entry["margins"].update(inst.info["margins"])
        entry["training"] = inst.info["training"]
    entry["sha256"] = {"onnx": _sha256(onnx_path), "vnnlib": _sha256(vnnlib_path)}
    return entry

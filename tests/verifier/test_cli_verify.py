"""``nlverify verify``: verdicts, result files, and bad input (exit 2, one line, no traceback, no verdict)."""
from __future__ import annotations

import gzip
import shutil

import pytest

from nlverify.cli import main
from nlverify.verifier.result import Verdict, read_result_file
from verifier_models import HEADER, SAT_SPEC, UNSAT_SPEC, relu_net, softmax_net, write

pytest.importorskip("onnx")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli")
    relu_net(path / "relu.onnx")
    softmax_net(path / "softmax.onnx")
    write(path / "sat.vnnlib", SAT_SPEC)
    write(path / "unsat.vnnlib", UNSAT_SPEC)
    (path / "corrupt.onnx").write_bytes(b"\x08\x07 this is not a protobuf \xff\xfe" * 10)
    with open(path / "relu.onnx", "rb") as src, gzip.open(path / "relu.onnx.gz", "wb") as dst:
        shutil.copyfileobj(src, dst)
    with gzip.open(path / "sat.vnnlib.gz", "wt") as dst:
        dst.write(SAT_SPEC)
    return path


def test_sat_writes_counterexample(folder, capsys):
    result_file = folder / "sat.txt"
    code = main(["verify", str(folder / "relu.onnx.gz"), str(folder / "sat.vnnlib.gz"), "--timeout", "30",
                 "--result-file", str(result_file)])
    out = capsys.readouterr().out
    assert code == 0 and out.splitlines()[0] == "sat" and "time:" in out
    result = read_result_file(result_file)
    assert result.verdict is Verdict.SAT and result.x.shape == (2,) and result.y[0] >= 1.9 - 1e-6


def test_unsat(folder, capsys):
    result_file = folder / "unsat.txt"
    code = main(["verify", str(folder / "relu.onnx"), str(folder / "unsat.vnnlib"), "--result-file",
                 str(result_file), "--seed", "1", "-v"])
    assert code == 0 and capsys.readouterr().out.splitlines()[0] == "unsat"
    assert read_result_file(result_file).verdict is Verdict.UNSAT


BAD_SPECS = {
    "unbalanced": HEADER + "(assert (>= Y_0 1.9)\n",
    "unknown_variable": HEADER + "(assert (>= Y_7 1.9))\n",
    "non_numeric": HEADER + "(assert (>= Y_0 one))\n",
    "too_many_inputs": HEADER + "(declare-const X_2 Real)(assert (>= X_2 0))(assert (<= X_2 1))"
                                "(assert (>= Y_0 1.9))\n",
}


def _assert_bad_input(capsys, argv, result_file=None):
    code = main(argv + (["--result-file", str(result_file)] if result_file else []))
    captured = capsys.readouterr()
    assert code == 2
    assert captured.out == ""  # no verdict printed
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("nlverify: error:"), captured.err
    assert "Traceback" not in captured.err
    if result_file:
        assert result_file.read_text().split() == ["error"]


@pytest.mark.parametrize("name", sorted(BAD_SPECS))
def test_malformed_or_mismatched_property(folder, capsys, name):
    spec = write(folder / f"{name}.vnnlib", BAD_SPECS[name])
    _assert_bad_input(capsys, ["verify", str(folder / "relu.onnx"), str(spec)], folder / f"{name}.txt")


@pytest.mark.parametrize("model,spec,extra", [
    ("missing.onnx", "sat.vnnlib", []),
    ("relu.onnx", "missing.vnnlib", []),
    ("softmax.onnx", "sat.vnnlib", []),
    ("corrupt.onnx", "sat.vnnlib", []),
    ("relu.onnx", "sat.vnnlib", ["--timeout", "0"]),
    ("relu.onnx", "sat.vnnlib", ["--timeout", "-3"]),
])
def test_bad_input(folder, capsys, model, spec, extra):
    _assert_bad_input(capsys, ["verify", str(folder / model), str(folder / spec), *extra],
                      folder / f"bad_{model}_{len(extra)}.txt")


def test_unsupported_op_is_named(folder, capsys):
    main(["verify", str(folder / "softmax.onnx"), str(folder / "sat.vnnlib")])
    assert "Softmax" in capsys.readouterr().err

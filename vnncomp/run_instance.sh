#!/usr/bin/env bash
# VNN-COMP: run_instance.sh v1 CATEGORY ONNX VNNLIB RESULTS_FILE TIMEOUT
# Runs `nlverify verify`, which writes RESULTS_FILE (sat + counterexample / unsat / unknown / timeout /
# error). The verifier's own budget is TIMEOUT minus a small allowance for start-up.
set -uo pipefail
if [ "$#" -ne 6 ]; then
    echo "usage: run_instance.sh v1 CATEGORY ONNX VNNLIB RESULTS_FILE TIMEOUT" >&2
    exit 1
fi
VERSION="$1"; CATEGORY="$2"; ONNX="$3"; VNNLIB="$4"; RESULTS_FILE="$5"; TIMEOUT="$6"
if [ "$VERSION" != "v1" ]; then
    echo "run_instance.sh: expected version string v1, got '$VERSION'" >&2
    exit 1
fi
TOOL_DIR="$(cd "$(dirname "$0")/.." && pwd)"
# Start-up (imports) takes a few seconds: leave them out of the verifier's budget, keep at least 1 s.
BUDGET="$(awk -v t="$TIMEOUT" 'BEGIN { b = t - 5; if (b < 1) b = 1; print b }')"
DEVICE=cpu
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then DEVICE=cuda; fi
THREADS="$(nproc 2>/dev/null || echo 1)"
echo "nlverify on $CATEGORY: $(basename "$ONNX") $(basename "$VNNLIB"), budget ${BUDGET}s, device $DEVICE"
"$TOOL_DIR/.venv/bin/nlverify" verify "$ONNX" "$VNNLIB" --timeout "$BUDGET" --result-file "$RESULTS_FILE" \
    --device "$DEVICE" --threads "$THREADS"
STATUS=$?
if [ ! -s "$RESULTS_FILE" ]; then
    echo "error" > "$RESULTS_FILE"  # the verifier died before writing anything
fi
exit $STATUS

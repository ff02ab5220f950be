#!/usr/bin/env bash
# VNN-COMP: prepare_instance.sh v1 CATEGORY ONNX VNNLIB
# Nothing to convert: checks the arguments and that the files exist. Kills no processes (run_instance
# runs the verifier in the foreground, so nothing of ours outlives an instance).
set -euo pipefail
if [ "$#" -ne 4 ]; then
    echo "usage: prepare_instance.sh v1 CATEGORY ONNX VNNLIB" >&2
    exit 1
fi
VERSION="$1"; CATEGORY="$2"; ONNX="$3"; VNNLIB="$4"
if [ "$VERSION" != "v1" ]; then
    echo "prepare_instance.sh: expected version string v1, got '$VERSION'" >&2
    exit 1
fi
for f in "$ONNX" "$VNNLIB"; do
    if [ ! -f "$f" ]; then
        echo "prepare_instance.sh: no such file: $f" >&2
        exit 1
    fi
done
echo "prepared $CATEGORY instance: $(basename "$ONNX") $(basename "$VNNLIB")"
exit 0

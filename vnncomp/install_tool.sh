#!/usr/bin/env bash
# VNN-COMP: install_tool.sh v1
# Creates the pinned virtual environment (.venv) with the repository Makefile's `install` target.
set -euo pipefail
TOOL_DIR="$(cd "$(dirname "$0")/.." && pwd)"
VERSION="${1:-v1}"
if [ "$VERSION" != "v1" ]; then
    echo "install_tool.sh: expected version string v1, got '$VERSION'" >&2
    exit 1
fi
make -C "$TOOL_DIR" install
"$TOOL_DIR/.venv/bin/nlverify" --version

#!/usr/bin/env bash
# Generates the Python code of the v1 contract into clients/python/squidmesh/v1.
# Usage: scripts/gen_proto.sh [OUT_DIR]   (default: clients/python)
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-clients/python}"
py="${PYTHON:-.venv/bin/python}"
rm -rf "$out/squidmesh/v1"
mkdir -p "$out/squidmesh/v1"
"$py" -m grpc_tools.protoc -I proto \
  --python_out="$out" --grpc_python_out="$out" \
  --mypy_out="$out" --mypy_grpc_out="$out" \
  proto/squidmesh/v1/*.proto
touch "$out/squidmesh/__init__.py" "$out/squidmesh/v1/__init__.py" "$out/squidmesh/py.typed"

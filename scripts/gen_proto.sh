#!/usr/bin/env bash
# Generates every language's code from proto/. Python lands in clients/python and is committed;
# `make lint` regenerates it and fails when the committed copy differs.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
out=clients/python
rm -rf "$out/styletransfer/v1"
mkdir -p "$out/styletransfer/v1"
"$PY" -m grpc_tools.protoc -Iproto \
  --python_out="$out" --pyi_out="$out" --grpc_python_out="$out" \
  proto/styletransfer/v1/*.proto
touch "$out/styletransfer/v1/__init__.py"

#!/usr/bin/env bash
# Generates the Python code from proto/ into clients/python, where it is committed (the other
# clients generate theirs in their own build.sh).
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
# What the Python code derives from the .proto beyond the stubs: field comments and the client's
# typed TransferOptions fields.
"$PY" scripts/gen_options.py

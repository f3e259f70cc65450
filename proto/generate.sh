#!/usr/bin/env bash
# Regenerates the Python code for proto/gradserve/v1/*.proto, next to the .proto files.
# CI runs this and fails when the committed generated code differs.
set -euo pipefail
cd "$(dirname "$0")"
python -m grpc_tools.protoc -I. --python_out=. --pyi_out=. --grpc_python_out=. gradserve/v1/*.proto

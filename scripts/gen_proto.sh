#!/usr/bin/env bash
# Regenerates gauntlet/deployments/proto/*_pb2*.py from policy.proto (needs grpcio-tools, in [dev]).
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/python -m grpc_tools.protoc -I . --python_out=. --grpc_python_out=. gauntlet/deployments/proto/policy.proto

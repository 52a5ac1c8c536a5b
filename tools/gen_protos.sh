#!/usr/bin/env bash
# Regenerates ckpt_rank/protos/results_pb2.py from results.proto with the pinned generator
# (grpcio-tools' bundled protoc; no system protoc). The generated code needs a protobuf runtime of
# the same major version as that protoc: grpcio-tools 1.85.1 bundles protoc 35.1 (protobuf 7.35.1),
# which runs on the pinned protobuf==7.36.2.
#
# Usage: tools/gen_protos.sh [OUT_ROOT]
#   OUT_ROOT: where ckpt_rank/protos/results_pb2.py is written (default: the repository root, i.e.
#   in place). PYTHON: the interpreter with grpcio-tools (default: .venv/bin/python).
set -euo pipefail
GRPCIO_TOOLS_VERSION=1.85.1
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
OUT_ROOT="${1:-$ROOT}"
FOUND="$("$PYTHON" -c 'import importlib.metadata as m; print(m.version("grpcio-tools"))' \
         2>/dev/null || echo 'not installed')"
if [[ "$FOUND" != "$GRPCIO_TOOLS_VERSION" ]]; then
  echo "gen_protos.sh: needs grpcio-tools==$GRPCIO_TOOLS_VERSION, found $FOUND in $PYTHON;" \
       "install it with: $PYTHON -m pip install grpcio-tools==$GRPCIO_TOOLS_VERSION" >&2
  exit 1
fi
mkdir -p "$OUT_ROOT"
cd "$ROOT"
# Paths relative to the root, so the descriptor is named ckpt_rank/protos/results.proto;
# grpc_tools.protoc adds its bundled google/protobuf/*.proto to the include path.
"$PYTHON" -m grpc_tools.protoc --proto_path=. --python_out="$OUT_ROOT" \
  ckpt_rank/protos/results.proto

#!/usr/bin/env bash
# Drives a real gateway (`serve --sandbox`) from Python's gRPC stack, a client no one
# on the team wrote: reflection (v1alpha), health, generated stubs, rich error
# details, idempotency, event streams and graceful shutdown (tests/clients).
#
# Installs what it needs project-locally when missing:
#   - grpcio, grpcio-tools, grpcio-status, … and pytest into .venv-clients/
#     (python3 -m venv; rebuilt when tests/clients/requirements.txt changes);
#   - @grpc/grpc-js and @grpc/proto-loader into tests/clients/node-groups/node_modules
#     (npm ci), for the README's Node consumer-group member;
#   - the gateway binary, as the test suite builds it (cargo test --no-run).
# Python stubs are generated from proto/ into a temporary directory on every run.
# Network use: PyPI, the npm registry (and crates.io for a cold cargo build), only
# when missing.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

VENV="$ROOT/.venv-clients"
REQUIREMENTS=tests/clients/requirements.txt

step() { printf '\n==> %s\n' "$*"; }

# --- Python clients -----------------------------------------------------------

req_hash="$(sha256sum "$REQUIREMENTS" | cut -d' ' -f1)"
if [[ ! -x "$VENV/bin/pytest" || "$(cat "$VENV/.requirements.sha256" 2>/dev/null)" != "$req_hash" ]]; then
  step "installing the Python gRPC clients into .venv-clients/"
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check -r "$REQUIREMENTS"
  echo "$req_hash" > "$VENV/.requirements.sha256"
fi
PY="$VENV/bin/python"
"$PY" -c 'import grpc, google.protobuf; print(f"grpcio {grpc.__version__}, protobuf {google.protobuf.__version__}")'

# The README's Node consumer-group member runs with @grpc/grpc-js from the npm registry.
NODE_GROUPS=tests/clients/node-groups
if [[ ! -d "$NODE_GROUPS/node_modules/@grpc/grpc-js" ]]; then
  step "installing @grpc/grpc-js and @grpc/proto-loader (npm ci in $NODE_GROUPS)"
  (cd "$NODE_GROUPS" && npm ci --no-audit --no-fund)
fi

# --- gateway binary -------------------------------------------------------------

# why: the binary as `cargo test` builds it (same features), so after the test
# suite this is a no-op instead of a second build of hyper and axum.
step "gateway binary (cargo test --no-run)"
cargo test --locked --workspace --lib --bins --tests --no-run --quiet

# --- stubs ------------------------------------------------------------------------

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
stubs="$work/stubs"
mkdir -p "$stubs"
step "generating Python stubs from proto/ (grpc_tools.protoc)"
mapfile -t protos < <(cd proto && find . -name '*.proto' -printf '%P\n' | sort)
# grpc_tools.protoc adds its bundled well-known types (google/protobuf/*.proto).
"$PY" -m grpc_tools.protoc -I proto --python_out="$stubs" --grpc_python_out="$stubs" "${protos[@]}"
echo "${#protos[@]} protos -> $(find "$stubs" -name '*_pb2*.py' | wc -l) modules"

# --- tests ----------------------------------------------------------------------

step "pytest tests/clients"
set +e
DR_GATEWAY_PY_STUBS="$stubs" "$VENV/bin/pytest" tests/clients -q -p no:cacheprovider 2>&1 | tee "$work/pytest.log"
status="${PIPESTATUS[0]}"
set -e
if [[ $status -ne 0 ]]; then
  echo "pytest failed (exit $status; 5 means no tests were collected)" >&2
  exit "$status"
fi
summary="$(grep -E '^[0-9]+ passed' "$work/pytest.log" | tail -n1)"
echo
echo "check-clients: OK — Python gRPC clients against the gateway: $summary"

#!/usr/bin/env bash
# Drives a real gateway (`serve --sandbox`) from Node's gRPC stack, a client no one on
# the team wrote: @grpc/grpc-js + @grpc/proto-loader with the README's loader
# options, and protobufjs + google-proto-files for the google.rpc error details
# (tests/clients/node, node's built-in test runner).
#
# Installs what it needs project-locally when missing:
#   - the npm packages into tests/clients/node/node_modules (`npm ci` from the
#     committed package-lock.json; again when the lock file changes);
#   - the gateway binary, as the test suite builds it (cargo test --no-run).
# Network use: the npm registry (and crates.io for a cold cargo build), only when missing.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
NODE_DIR=tests/clients/node

step() { printf '\n==> %s\n' "$*"; }

# --- npm packages ---------------------------------------------------------------

lock_hash="$(sha256sum "$NODE_DIR/package-lock.json" | cut -d' ' -f1)"
if [[ ! -d "$NODE_DIR/node_modules" || "$(cat "$NODE_DIR/node_modules/.lock.sha256" 2>/dev/null)" != "$lock_hash" ]]; then
  step "installing the Node gRPC clients into $NODE_DIR/node_modules (npm ci)"
  (cd "$NODE_DIR" && npm ci --no-audit --no-fund --loglevel=error)
  echo "$lock_hash" > "$NODE_DIR/node_modules/.lock.sha256"
fi
echo "node $(node --version), $(cd "$NODE_DIR" && node -p "'@grpc/grpc-js ' + require('@grpc/grpc-js/package.json').version + ', @grpc/proto-loader ' + require('@grpc/proto-loader/package.json').version")"

# --- gateway binary -------------------------------------------------------------

# why: the binary as `cargo test` builds it (same features), so after the test
# suite this is a no-op instead of a second build of hyper and axum.
step "gateway binary (cargo test --no-run)"
cargo test --locked --workspace --lib --bins --tests --no-run --quiet

# --- tests ----------------------------------------------------------------------

step "node --test tests/clients/node"
mapfile -t tests < <(find "$NODE_DIR/test" -name '*.test.mjs' | sort)
(cd "$NODE_DIR" && node --test --test-reporter=spec "${tests[@]#"$NODE_DIR/"}")
echo
echo "check-node-client: OK — Node gRPC clients against the gateway (${#tests[@]} test files)"

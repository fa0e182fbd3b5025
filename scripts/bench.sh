#!/usr/bin/env bash
# The one command that runs dr-gateway's benchmark suite (the performance issue's
# table): every figure printed beside a bare baseline measured in the same run.
#
#   bash scripts/bench.sh                  # every bench, one after the other
#   bash scripts/bench.sh unary_rpc        # only the named ones
#
# Benches (crates/dr-gateway/benches/, figures in its README.md):
#   webhook_intake  instructions per signed event (callgrind), native server CPU per event and accepted/s, vs a bare axum handler
#   unary_rpc       GetCharge / CreateFulfillment instructions vs the floor, p50, RPS vs a bare proxy
#   fan_out         idle-subscriber RSS and fan-out delivery at 1 / 1,000 / 10,000 subscribers,
#                   vs a bare tonic broadcast stream
#   event_memory    RSS per stored event vs the events' own bytes
#
# Installs valgrind (Debian) when missing. Builds once with the `bench` profile
# (release settings, symbols kept for callgrind_annotate); takes ~15 min after the build
# on 2 cores. Wall-clock figures are noisy on shared cores; instruction counts are not.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
step() { printf '\n==> %s\n' "$*"; }

if ! command -v valgrind >/dev/null 2>&1; then
  step "installing valgrind (callgrind counts the instructions)"
  if [[ "$(id -u)" == 0 ]]; then SUDO=(); else SUDO=(sudo); fi
  "${SUDO[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get install -y -qq --no-install-recommends valgrind
fi

benches=("$@")
if ((${#benches[@]} == 0)); then
  benches=(webhook_intake unary_rpc fan_out event_memory)
fi

step "building the benches (cargo bench --no-run)"
cargo bench --locked -p dr-gateway --no-run "${benches[@]/#/--bench=}"

status=0
for bench in "${benches[@]}"; do
  step "$bench"
  if ! cargo bench --locked -p dr-gateway --bench "$bench"; then
    echo "bench.sh: $bench FAILED" >&2
    status=1
  fi
done
exit "$status"

#!/usr/bin/env bash
# Runs every fuzz target of crates/dr-gateway/fuzz (libFuzzer) for a short time,
# starting from its committed seeds (the reproducers of past findings among them),
# with a per-input timeout that catches a parser gone super-linear.
#
# Builds with plain cargo, not cargo-fuzz: the fuzz workspace's dev profile puts
# libFuzzer's coverage instrumentation on the gateway's crate and the targets only
# (`profile-rustflags`, hence RUSTC_BOOTSTRAP=1 on the stable toolchain), so no
# cargo-fuzz install and no optimised build of every dependency. For long runs by
# hand, see crates/dr-gateway/fuzz/README.md.
#
#   FUZZ_SECONDS   seconds per target (default 10)
#   FUZZ_TARGETS   space-separated subset (default: every target)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
FUZZ_DIR="$ROOT/crates/dr-gateway/fuzz"
SECONDS_PER_TARGET="${FUZZ_SECONDS:-10}"
# A single input slower than this is a finding: every parser is linear in its
# input, and the largest seed takes milliseconds.
INPUT_TIMEOUT=2
# why: the fuzz workspace builds into the gateway's target directory (its own would
# be crates/dr-gateway/fuzz/target): the binaries are found where this script looks,
# and the dependencies, built without instrumentation, are the test build's.
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
export CARGO_TARGET_DIR="$TARGET_DIR"

cd "$FUZZ_DIR"
RUSTC_BOOTSTRAP=1 cargo build --locked --quiet --bins
targets="${FUZZ_TARGETS:-$(basename -s .rs fuzz_targets/*.rs)}"
for target in $targets; do
  corpus="$(mktemp -d)"
  log="$(mktemp)"
  mkdir -p artifacts
  status=0
  "$TARGET_DIR/debug/$target" -max_total_time="$SECONDS_PER_TARGET" -timeout="$INPUT_TIMEOUT" \
    -rss_limit_mb=2048 -print_final_stats=1 -artifact_prefix="artifacts/$target-" \
    "$corpus" "seeds/$target" >"$log" 2>&1 || status=$?
  runs="$(grep -E '^stat::number_of_executed_units' "$log" | awk '{print $2}' || true)"
  echo "fuzz: $target ${SECONDS_PER_TARGET}s, ${runs:-?} inputs (seeds: seeds/$target)"
  rm -rf "$corpus"
  if [[ "$status" != 0 ]]; then
    tail -40 "$log" >&2
    echo "fuzz: $target FAILED; the input is in $FUZZ_DIR/artifacts/" >&2
    rm -f "$log"
    exit 1
  fi
  rm -f "$log"
done
echo "fuzz: every target ran ${SECONDS_PER_TARGET}s without a finding"

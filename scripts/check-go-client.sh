#!/usr/bin/env bash
# Drives a real gateway (`serve --sandbox`) from Go's gRPC stack, a client no one on
# the team wrote: code generated from proto/ by protoc-gen-go and protoc-gen-go-grpc
# (through the protos' own go_package, no M flags), grpc-go, and
# status.FromError(err).Details() for the google.rpc error details (tests/clients/go).
#
# No Go module proxy is reachable, so everything comes from Debian: Go 1.19, grpc-go,
# golang/protobuf, genproto (google.rpc errdetails), the two protoc plugins and
# protoc with the well-known types. The build runs in GOPATH mode
# (GO111MODULE=off) over Debian's /usr/share/gocode. The generated code goes to a
# temporary GOPATH on every run, first with protoc (the README's recipe), then with
# `buf generate` and buf.gen.yaml, and the two must agree.
# Network use: Debian's archive (and crates.io for a cold cargo build), only when missing.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
BUF=tools/node_modules/.bin/buf
GO_PACKAGE=github.com/dr-gateway/dr-gateway/gen/go/digitalriver/gateway/v1

step() { printf '\n==> %s\n' "$*"; }

# --- Debian packages --------------------------------------------------------------

packages=(golang-go golang-google-grpc-dev golang-google-protobuf-dev golang-google-genproto-dev
  golang-github-golang-protobuf-1-5-dev protoc-gen-go protoc-gen-go-grpc protobuf-compiler libprotobuf-dev)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
  step "installing Debian packages: ${missing[*]}"
  if [[ "$(id -u)" == 0 ]]; then SUDO=(); else SUDO=(sudo); fi
  "${SUDO[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
export PATH="/usr/lib/go/bin:$PATH"
echo "$(go version), $(protoc --version), grpc-go $(dpkg-query -W -f='${Version}' golang-google-grpc-dev)"

# buf (for `buf generate`), as scripts/test.sh installs it.
if [[ ! -x "$BUF" ]]; then
  step "installing buf (npm ci in tools/)"
  (cd tools && npm ci --no-audit --no-fund)
fi

# --- gateway binary -------------------------------------------------------------

# why: the binary as `cargo test` builds it (same features), so after the test
# suite this is a no-op instead of a second build of hyper and axum.
step "gateway binary (cargo test --no-run)"
cargo test --locked --workspace --lib --bins --tests --no-run --quiet

# --- generated code ---------------------------------------------------------------

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mapfile -t protos < <(cd proto && find . -name '*.proto' -printf '%P\n' | sort)
step "generating Go code from proto/ (protoc, protoc-gen-go, protoc-gen-go-grpc)"
mkdir -p "$work/gopath/src" "$work/buf"
protoc -I proto -I /usr/include --go_out="$work/gopath/src" --go-grpc_out="$work/gopath/src" "${protos[@]}"
generated="$work/gopath/src/$GO_PACKAGE"
ls "$generated"

step "the same with buf generate (buf.gen.yaml)"
"$BUF" generate --template buf.gen.yaml -o "$work/buf"
# why: only the header line naming the protoc version may differ (buf: "(unknown)").
diff -r -I '^//[[:space:]]*protoc[[:space:]]' "$generated" "$work/buf/gen/go/digitalriver/gateway/v1"
echo "buf generate: same code as protoc's"

# --- tests ------------------------------------------------------------------------

step "go test tests/clients/go (GOPATH mode, Debian's packages)"
suite="$work/gopath/src/dr-gateway-client-tests"
mkdir -p "$suite"
cp tests/clients/go/*.go "$suite/"
(
  cd "$suite"
  export GO111MODULE=off GOPROXY=off GOFLAGS= GOPATH="$work/gopath:/usr/share/gocode"
  go vet .
  DR_GATEWAY_BINARY="$ROOT/target/debug/dr-gateway" go test -count=1 -v -timeout 5m .
)
echo
echo "check-go-client: OK — Go gRPC clients against the gateway"

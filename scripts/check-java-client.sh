#!/usr/bin/env bash
# Compiles the README's Java snippet (tests/clients/java) against the code protoc and
# grpc-java's plugin generate from proto/, with Debian's grpc-java and protobuf-java.
# Debian's proto-google-common-protos predates google.rpc.ErrorInfo, so the
# com.google.rpc classes are generated too, from googleapis' google/rpc protos as the
# npm package google-proto-files ships them (the Node client tests install it). A
# compile check only: no Maven repository is reachable, so no Java client calls a
# gateway here.
#
# Installs Debian packages when missing (and the Node tests' npm packages); network
# use: Debian's archive and the npm registry, only when missing.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

step() { printf '\n==> %s\n' "$*"; }

packages=(openjdk-17-jdk-headless protobuf-compiler libprotobuf-dev libprotobuf-java libgrpc-java
  protobuf-compiler-grpc-java-plugin libgeronimo-annotation-1.3-spec-java)
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
echo "$(javac -version 2>&1), $(protoc --version), grpc-java $(dpkg-query -W -f='${Version}' libgrpc-java)"

googleapis=tests/clients/node/node_modules/google-proto-files
if [[ ! -f "$googleapis/google/rpc/error_details.proto" ]]; then
  step "installing google-proto-files (npm ci in tests/clients/node)"
  (cd tests/clients/node && npm ci --no-audit --no-fund --loglevel=error)
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/gen" "$work/classes"
mapfile -t protos < <(cd proto && find . -name '*.proto' -printf '%P\n' | sort)
step "generating Java code from proto/ (protoc --java_out, grpc-java plugin)"
protoc -I proto -I /usr/include --java_out="$work/gen" --grpc-java_out="$work/gen" \
  --plugin=protoc-gen-grpc-java=/usr/bin/grpc_java_plugin "${protos[@]}"
protoc -I "$googleapis" -I /usr/include --java_out="$work/gen" google/rpc/status.proto google/rpc/error_details.proto
echo "$(find "$work/gen" -name '*.java' | wc -l) files in $(cd "$work/gen" && find . -name '*.java' -printf '%h\n' | sort -u | sed 's|^\./||; s|/|.|g' | tr '\n' ' ')"

step "javac: generated code + tests/clients/java"
jars=(grpc-api grpc-stub grpc-protobuf grpc-protobuf-lite protobuf guava jsr305 error_prone_annotations
  geronimo-annotation-1.3-spec)
classpath="$(printf '/usr/share/java/%s.jar:' "${jars[@]}")"
javac -Xlint:all -Xlint:-processing -Werror -d "$work/classes" -cp "$classpath" \
  $(find "$work/gen" -name '*.java') tests/clients/java/*.java 2>&1 | grep -v "^Note:" || true
test -f "$work/classes/clienttest/ErrorDetails.class" || { echo "check-java-client: javac failed" >&2; exit 1; }
echo
echo "check-java-client: OK — the README's Java snippet compiles against the generated code"

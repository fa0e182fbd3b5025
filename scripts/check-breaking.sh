#!/usr/bin/env bash
# buf breaking: proto/ must stay wire- and source-compatible (buf's FILE rules) with
# the previous commit on main. With uncommitted changes to proto/ the comparison is
# against HEAD (what the next commit will follow); on a clean tree, against HEAD~1
# (what the last commit changed).
#
# One kind of FILE_SAME_* finding is let through: a file option (go_package,
# java_package, …) set in a file whose previous version did not set it at all. That
# is a file adopting the language conventions, which no one could have relied on
# before (protoc-gen-go refused these files without it); changing or removing an
# option that was set still fails. Each adoption is printed.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
BUF=tools/node_modules/.bin/buf

if ! git rev-parse --git-dir >/dev/null 2>&1; then
  echo "buf breaking: not a git checkout; nothing to compare against" >&2
  exit 1
fi
if [[ -n "$(git status --porcelain -- proto buf.yaml)" ]]; then
  against=HEAD
else
  against=HEAD~1
  if ! git rev-parse --verify --quiet "$against^{commit}" >/dev/null; then
    # A shallow clone: fetch one more commit of history.
    git fetch --quiet --deepen=1 origin 2>/dev/null || true
  fi
  if ! git rev-parse --verify --quiet "$against^{commit}" >/dev/null; then
    echo "buf breaking: no previous commit in this clone; the first commit has nothing to break"
    exit 0
  fi
fi
ref="$(git rev-parse "$against")"
findings="$(mktemp)"
trap 'rm -f "$findings"' EXIT
status=0
"$BUF" breaking --against ".git#ref=$ref" --error-format json >"$findings" || status=$?
if ((status != 0)) && [[ ! -s "$findings" ]]; then
  echo "buf breaking failed without findings (exit $status)" >&2
  exit "$status"
fi
python3 - "$ref" "$findings" <<'PY'
import json, re, subprocess, sys

ref, findings = sys.argv[1], sys.argv[2]
breaking, adopted = [], {}
for line in open(findings, encoding="utf-8"):
    if not line.strip():
        continue
    f = json.loads(line)
    rule = f.get("type", "")
    if rule.startswith("FILE_SAME_") and rule not in ("FILE_SAME_PACKAGE", "FILE_SAME_SYNTAX"):
        option = rule[len("FILE_SAME_"):].lower()
        before = subprocess.run(["git", "show", f"{ref}:{f['path']}"], capture_output=True, text=True)
        if before.returncode == 0 and not re.search(rf"^\s*option\s+{option}\s*=", before.stdout, re.M):
            adopted.setdefault(f["path"], []).append(option)
            continue
    breaking.append(f"{f['path']}:{f.get('start_line', 0)}:{f.get('start_column', 0)}:{f.get('message', rule)} ({rule})")
for path, options in adopted.items():
    print(f"buf breaking: {path} adopts {', '.join(options)} (unset before): allowed")
for b in breaking:
    print(b, file=sys.stderr)
sys.exit(1 if breaking else 0)
PY
echo "buf breaking: ok (against $against, $(git rev-parse --short "$against"))"

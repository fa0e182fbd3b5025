#!/usr/bin/env bash
# buf breaking: proto/ must stay wire- and source-compatible (buf's FILE rules) with
# the previous commit on main. With uncommitted changes to proto/ the comparison is
# against HEAD (what the next commit will follow); on a clean tree, against HEAD~1
# (what the last commit changed).
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
"$BUF" breaking --against ".git#ref=$(git rev-parse "$against")"
echo "buf breaking: ok (against $against, $(git rev-parse --short "$against"))"

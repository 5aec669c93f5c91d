#!/usr/bin/env bash
# Builds the Node.js client: installs the pinned dependencies (npm ci) when node_modules is
# missing or was installed from another package-lock.json, then generates the stubs from
# proto/styletransfer/v1/style_transfer.proto and compiles src/ into dist/. Safe to run again;
# works from any directory.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here"

command -v node >/dev/null || { echo "build.sh: node is not installed (Node.js 20 or newer)" >&2; exit 1; }
command -v npm >/dev/null || { echo "build.sh: npm is not installed" >&2; exit 1; }

start=$(date +%s%N)
stamp=node_modules/.installed-from.sha256
lock_sum="$(cat package.json package-lock.json | sha256sum | cut -d' ' -f1)"
if [[ ! -f "$stamp" || "$(cat "$stamp")" != "$lock_sum" ]]; then
    echo "build.sh: npm ci (node_modules missing or stale)"
    npm ci --no-audit --no-fund --loglevel=error
    echo "$lock_sum" >"$stamp"
fi
installed=$(date +%s%N)

npm run --silent build
done_at=$(date +%s%N)

ms() { echo "$(( ($2 - $1) / 1000000 ))"; }
echo "build.sh: built $here/dist in $(ms "$start" "$done_at") ms" \
    "(install $(ms "$start" "$installed") ms, generate + tsc $(ms "$installed" "$done_at") ms)"

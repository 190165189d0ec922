#!/usr/bin/env bash
# The quick start: installs what is missing, builds isc, runs the built-in demo ISC and proves
# its confinement from inside with `isc verify` while it runs.
#   scripts/demo.sh              the demo
#   scripts/demo.sh FILE [ARGS]  `isc run FILE ARGS` instead
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "run as root (isc creates namespaces, cgroups and mounts)" >&2; exit 1; }
export PATH="$HOME/.cargo/bin:$PATH"
scripts/deps.sh
cargo build --release -p isc-cli
ISC=./target/x86_64-unknown-linux-gnu/release/isc
if [ $# -gt 0 ]; then exec "$ISC" run "$@"; fi

"$ISC" run &
run=$!
for _ in $(seq 100); do
  "$ISC" ps --json | grep -q '"name": "demo"' && break
  sleep 0.02
done
echo "== isc verify demo (active probes from inside the running ISC)"
verdict=0
"$ISC" verify demo || verdict=$?
wait "$run"
echo "== the demo ISC exited; its audit trail:"
"$ISC" audit verify
exit "$verdict"

#!/usr/bin/env bash
# The quick start: installs missing packages, builds isc, runs the built-in demo ISC.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "run as root (isc creates namespaces, cgroups and mounts)" >&2; exit 1; }
export PATH="$HOME/.cargo/bin:$PATH"
scripts/deps.sh
cargo build --release -p isc-cli
exec ./target/release/isc run "$@"

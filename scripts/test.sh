#!/usr/bin/env bash
# The test command: installs missing system packages, builds, runs every test as root on the
# real kernel, then fails if anything was left behind.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "run as root: the tests create namespaces, cgroups and mounts" >&2; exit 1; }
export PATH="$HOME/.cargo/bin:$PATH"
scripts/deps.sh
cargo build --workspace --all-targets
cargo test --workspace --no-fail-fast -- --test-threads="${ISC_TEST_THREADS:-4}"
scripts/leak-check.sh

#!/bin/bash
# bench/phases.sh - where the start path's time goes: runs `isc run MANIFEST` N times with
# ISC_TIMINGS=1 and prints, per phase mark, the median time since main() and the median
# duration of the phase. (Whole-command medians against peers: bench/peers.sh.)
#
#   bench/phases.sh MANIFEST [N=30]    env: ISC_BIN (default target/x86_64-unknown-linux-gnu/release/isc), ISC_ARGS
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
M=${1:?usage: bench/phases.sh MANIFEST [N]}
N=${2:-30}
ISC=${ISC_BIN:-$REPO/target/x86_64-unknown-linux-gnu/release/isc}
T=$(mktemp -d /tmp/isc-phases.XXXXXX)
trap 'rm -rf "$T"' EXIT
for i in $(seq "$N"); do
  # shellcheck disable=SC2086
  ISC_TIMINGS=1 "$ISC" ${ISC_ARGS:-} run "$M" 2>"$T/$i" >/dev/null || { cat "$T/$i" >&2; exit 1; }
done
python3 - "$T" "$N" <<'PY'
import statistics, sys
d, n = sys.argv[1], int(sys.argv[2])
runs = []
for i in range(1, n + 1):
    rows = [l.split(None, 3) for l in open(f"{d}/{i}") if l.startswith("isc-timing:")]
    runs.append({r[3].strip(): int(r[1]) for r in rows})
# Marks come from several threads and processes, so their order differs between runs: each
# label's median is taken on its own, and the phases are listed in the order of those medians.
labels = {l for r in runs for l in r}
at = {l: statistics.median(r[l] for r in runs if l in r) for l in labels}
print(f"{'at us':>7} {'delta us':>9}  end of phase ({n} runs, medians per mark, sorted)")
prev = 0
for l in sorted(labels, key=lambda l: at[l]):
    seen = sum(1 for r in runs if l in r)
    note = "" if seen == n else f"  (in {seen} of {n} runs)"
    print(f"{at[l]:7.0f} {at[l] - prev:9.0f}  {l}{note}")
    prev = at[l]
PY

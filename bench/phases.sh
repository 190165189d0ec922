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
    runs.append([(r[3].strip(), int(r[1])) for r in rows])
labels = [l for l, _ in runs[0]]
print(f"{'at us':>7} {'phase us':>9}  end of phase ({n} runs, medians)")
for k, label in enumerate(labels):
    at = statistics.median(r[k][1] for r in runs)
    dur = statistics.median(r[k][1] - (r[k - 1][1] if k else 0) for r in runs)
    print(f"{at:7.0f} {dur:9.0f}  {label}")
PY

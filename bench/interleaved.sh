#!/usr/bin/env bash
# The start-latency targets measured with runs interleaved one by one, in a random order per
# round: `isc run` of the peers' busybox tree as `dir:` and as a stored image (the
# integrity-checked start), bwrap, and crun hardened (through ../shared/bench/peers/nocg2.sh,
# as peers.sh runs it). peers.sh measures each case in blocks of runs; a block drifts by
# ±0.2 ms on this shared VM, and crun runs warm in its own block (~20 ms against ~32 ms here).
#   bench/interleaved.sh [ISC_BIN] [N=300]   (root; run bench/peers.sh once first for the bundles)
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ISC=$(realpath "${1:-$HERE/../target/x86_64-unknown-linux-gnu/release/isc}"); N=${2:-300}
P=${PEERS_WORK:-/tmp/isc-peers}
NOCG2=${PEERS_DIR:-$HERE/../../shared/bench/peers}/nocg2.sh
[ -d "$P/bundle-hardened" ] && [ -x "$NOCG2" ] || { echo "no peers bundles or nocg2.sh: run bench/peers.sh once first" >&2; exit 2; }
source "$HERE/tree.sh"
bench_tree isc-il
mkdir -p "$W/crun"
oci_layout "$W/rootfs" "$W/oci"
I=("$ISC" --root "$W/root" --state "$W/state" --log warn)
ID=$("${I[@]}" image import "oci:$W/oci" --json | jq -r .id)
bench_manifest il-dir "dir:$W/rootfs" > "$W/dir.toml"
bench_manifest il-store "id:$ID" > "$W/store.toml"
nice -n -10 "$W/interleave" "$N" \
  -- "${I[@]}" run "$W/dir.toml" \
  -- "${I[@]}" run "$W/store.toml" \
  -- "$(command -v bwrap)" --unshare-all --ro-bind "$R" / --proc /proc --dev /dev /bin/true \
  -- "$NOCG2" crun --root "$W/crun" run --bundle "$P/bundle-hardened" isc-il-crun-h \
  | sed -e 's/^cmd0/isc (dir)    /' -e 's/^cmd1/isc (store)  /' -e 's/^cmd2/bwrap        /' -e 's/^cmd3/crun hardened/' \
  | tee "$W/out"
awk '{for (i = 1; i < NF; i++) if ($i == "median") m[NR] = $(i + 1)} END{printf "isc (dir): %.3f x bwrap, %.3f x crun hardened; isc (store): %.3f x bwrap, %.3f x crun hardened (targets: 1.25, 0.2)\n", m[1]/m[3], m[1]/m[4], m[2]/m[3], m[2]/m[4]}' "$W/out"

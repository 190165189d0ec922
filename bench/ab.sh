#!/usr/bin/env bash
# A/B start latency of two isc binaries (and bwrap as the yardstick), runs interleaved one by
# one (bench/tools/interleave.c): blocks of runs of one command drift too much on a shared VM
# to compare two close builds. Each binary gets a fresh --root and a tmpfs --state.
#   bench/ab.sh ISC_A ISC_B [N=200]     (root; needs ../shared/bench/peers set up: bench/peers.sh)
# AB_CASE=store runs the same tree imported into each binary's image store and started by id
# (peers.sh's "isc (store)" case: the before-start integrity check on); the default is dir:.
set -euo pipefail
A=$(realpath "$1"); B=$(realpath "$2"); N=${3:-200}
HERE=$(cd "$(dirname "$0")" && pwd)
source "$HERE/tree.sh"
bench_tree isc-ab
bench_manifest bench-ab "dir:$W/rootfs" > "$W/dir.toml"
MANIFEST=$W/dir.toml
if [ "${AB_CASE:-dir}" = store ]; then
  oci_layout "$W/rootfs" "$W/oci"
  for x in a b; do
    bin=$A; [ $x = b ] && bin=$B
    ID=$("$bin" --root "$W/r$x" --state "$W/state" --log warn image import "oci:$W/oci" --json | jq -r .id)
  done
  bench_manifest bench-ab "id:$ID" > "$W/store.toml"
  MANIFEST=$W/store.toml
fi
mkdir -p "$W/state/a" "$W/state/b"
nice -n -10 "$W/interleave" "$N" \
  -- "$A" --root "$W/ra" --state "$W/state/a" --log warn run "$MANIFEST" \
  -- "$B" --root "$W/rb" --state "$W/state/b" --log warn run "$MANIFEST" \
  -- "$(command -v bwrap)" --unshare-all --ro-bind "$R" / --proc /proc --dev /dev /bin/true \
  | sed -e 's/^cmd0/A    /' -e 's/^cmd1/B    /' -e 's/^cmd2/bwrap/'

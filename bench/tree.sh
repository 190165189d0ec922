# bench/tree.sh - sourced by bench/ab.sh and bench/interleaved.sh: a work directory with a tmpfs
# state directory (removed on exit), the peers' busybox tree with isc's skeleton mount points,
# the resource-limited /bin/true manifest, the OCI layout writer and the interleaver.
#   bench_tree PREFIX      sets W (the work dir, mode 0755: ISCs' user namespaces must reach
#                          the tree), R (the peers' rootfs) and $W/rootfs, $W/state, $W/interleave
#   bench_manifest NAME SOURCE > FILE
HERE=${HERE:-$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)}
bench_tree() {
  R=${PEERS_WORK:-/tmp/isc-peers}/bundle/rootfs
  [ -d "$R" ] || { echo "no peers rootfs at $R: run bench/peers.sh once first" >&2; exit 2; }
  W=$(mktemp -d "/tmp/$1.XXXXXX"); chmod 755 "$W"; mkdir -p "$W/state"
  mount -t tmpfs -o size=64m,mode=0755 "$1-state" "$W/state"
  trap 'umount "$W/state" 2>/dev/null || true; chattr -R -i "$W" 2>/dev/null || true; rm -rf "$W" || true' EXIT
  cp -a "$R" "$W/rootfs"; mkdir -p "$W"/rootfs/{proc,dev,sys,tmp,run/secrets,etc}
  cc -O2 -o "$W/interleave" "$HERE/tools/interleave.c"
}
bench_manifest() {
  printf 'name = "%s"\n[service]\nexec = ["/bin/true"]\n[image]\nsource = "%s"\n[resources]\nmemory = "64M"\npids = 64\ncpu_weight = 50\ncpu = 1.0\n' "$1" "$2"
}
source <(sed -n '/^oci_layout()/,/^}/p' "$HERE/peers.sh")

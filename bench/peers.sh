#!/bin/bash
# bench/peers.sh - start latency of isc against its peers, measured IN THE SAME RUN.
#
# One command (root, Debian 12):   bench/peers.sh
#
#  1. builds isc in release (`cargo build --release -p isc-cli`; SKIP_BUILD=1 skips it),
#  2. runs ../shared/bench/peers/setup.sh (installs crun, runc, bwrap, hyperfine; builds the busybox
#     OCI bundles under $PEERS_WORK, default /tmp/isc-peers). apt-get is skipped when every tool
#     is already installed (FORCE_APT=1 forces it),
#  3. measures with `hyperfine -N` (no shell; same WARMUP/RUNS for every case) the whole lifecycle
#     of running /bin/true in a fresh container:
#       isc (dir)   the strict default profile + memory 64M / pids 64 / cpu weight 50 (= crun's
#                   512 shares) / cpu quota 1.0, root = a copy of the peers' busybox rootfs
#       isc (store) the same tree imported into isc's image store (an OCI layout made here) and
#                   started by id: the before-start integrity check on (issue 3)
#       isc (host)  the same, root image built from the host's /bin/true and its ELF closure
#                   (a dynamically linked service: not the peers' busybox)
#       crun, crun hardened, runc, runc hardened, bwrap, bwrap hardened (as ../shared peers.sh)
#  4. prints medians, the ratios isc/peer, and PASS/FAIL for the targets of issue 2:
#       isc <= 0.2 x crun hardened   and   isc <= 1.25 x bwrap.
#     Exit status 0 unless a case could not run (a missed target is reported, not an error).
#  5. IDLE=1 (default) also measures idle memory per container: N_IDLE=20 `sleep 600` ISCs vs
#     crun (started detached, --cgroup-manager=disabled), charged to a dedicated memory cgroup
#     created below this script's own memory cgroup (the method of ../shared/PEERS.md).
#
# Env: RUNS (50), WARMUP (5), ROUNDS (1: each round measures every case once; medians are taken
#      over the pooled samples, which spreads slow drift of the shared host over all cases),
#      NICE (-10), ONLY (regex on case names), OUT (results dir), PEERS_DIR, PEERS_WORK,
#      IDLE (1), N_IDLE (20), SETTLE (5 s), CASE_SETTLE (1 s of quiet before each case's
#      block), ISC_BIN (an isc binary to measure instead of the
#      release build; implies SKIP_BUILD=1 is sensible), SKIP_BUILD, SKIP_APT, FORCE_APT.
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
if [ -z "${PEERS_DIR:-}" ]; then
  for d in "$REPO/../shared/bench/peers" /work/shared/bench/peers; do
    [ -x "$d/setup.sh" ] && { PEERS_DIR=$(cd "$d" && pwd); break; }
  done
fi
[ -n "${PEERS_DIR:-}" ] && [ -x "$PEERS_DIR/setup.sh" ] || {
  echo "peers scripts not found: set PEERS_DIR (expected ../shared/bench/peers beside the repo)" >&2; exit 2; }
[ "$(id -u)" = 0 ] || { echo "run as root" >&2; exit 2; }

RUNS=${RUNS:-50}
WARMUP=${WARMUP:-5}
ROUNDS=${ROUNDS:-1}
NICE=${NICE:--10}
ONLY=${ONLY:-.}
IDLE=${IDLE:-1}
N_IDLE=${N_IDLE:-20}
SETTLE=${SETTLE:-5}
# Before each case's block: the previous case's deferred teardown (RCU callbacks, namespace and
# cgroup release in kworkers, writeback) is done before the first warm-up run. A heavy case
# (runc hardened: ~38 ms of cgroup work per run) otherwise spills into the next case's runs.
CASE_SETTLE=${CASE_SETTLE:-1}
export PEERS_WORK=${PEERS_WORK:-/tmp/isc-peers}
BENCH=$PEERS_WORK
NOCG2=$PEERS_DIR/nocg2.sh
ISC=${ISC_BIN:-$REPO/target/x86_64-unknown-linux-gnu/release/isc}
OUT=${OUT:-$BENCH/out-isc}
mkdir -p "$OUT"
T=$(mktemp -d /tmp/isc-bench.XXXXXX)
# isc's PID 1 is root only in its user namespace (an unprivileged host uid): the image below
# $T must be reachable by "others", which mktemp's 0700 forbids.
chmod 755 "$T"
FAILED=0
# images in isc's store are immutable (chattr +i): clear the flag before removing the temp dir
# Runtime state on tmpfs, as in production (/run is a tmpfs under systemd): registry entries,
# control sockets and lock files are created and removed at every start. Some hosts keep /run
# on the root filesystem (this VM: ext4 mounted with `discard`, where the last close of an
# unlinked file waits for a synchronous discard), so the state directory gets a tmpfs of its
# own, and so do crun's and runc's state roots (--root): the same conditions for all three.
S=$(mktemp -d /run/isc-bench.XXXXXX)
mount -t tmpfs -o size=64m,mode=0755 isc-bench-state "$S" || { echo "cannot mount a tmpfs at $S" >&2; exit 2; }
mkdir -p "$S/crun" "$S/runc"
cleanup_tmp() { chattr -R -i "$T" 2>/dev/null; rm -rf "$T"; umount "$S" 2>/dev/null; rmdir "$S"; }
trap 'cleanup_tmp' EXIT
note() { echo "$*" | tee -a "$OUT/notes.txt" >&2; }
: > "$OUT/notes.txt"

# --------------------------------------------------------------------------- build + peers
if [ "${SKIP_BUILD:-0}" != 1 ]; then
  echo "== building isc (release)" >&2
  (cd "$REPO" && cargo build --release -q -p isc-cli) || { echo "build failed" >&2; exit 2; }
fi
[ -x "$ISC" ] || { echo "$ISC missing" >&2; exit 2; }
if [ "${FORCE_APT:-0}" != 1 ] && command -v crun >/dev/null && command -v runc >/dev/null \
   && command -v bwrap >/dev/null && command -v hyperfine >/dev/null && command -v jq >/dev/null \
   && [ -x /bin/busybox ]; then
  export SKIP_APT=${SKIP_APT:-1}
fi
echo "== peers setup ($PEERS_DIR/setup.sh)" >&2
"$PEERS_DIR/setup.sh" >"$OUT/setup.log" 2>&1 || { tail "$OUT/setup.log" >&2; echo "setup.sh failed" >&2; exit 2; }
R=$BENCH/bundle/rootfs

# --------------------------------------------------------------------------- isc inputs
# The peers' rootfs lacks /run/secrets, one of the mount points every isc image must hold
# (prepare_dir_image refuses a tree without them), so isc gets a copy with the skeleton added.
IR=$T/rootfs
cp -a "$R" "$IR"
mkdir -p "$IR"/{proc,dev,sys,tmp,run/secrets,etc}
LIMITS='[resources]
memory = "64M"
pids = 64
cpu_weight = 50
cpu = 1.0'
cat > "$T/dir.toml" <<EOF
name = "bench-dir"
[service]
exec = ["/bin/true"]
[image]
source = "dir:$IR"
$LIMITS
EOF
cat > "$T/host.toml" <<EOF
name = "bench-host"
[service]
exec = ["/bin/true"]
[image]
source = "host"
paths = ["/bin/true"]
$LIMITS
EOF
ISCA=(--root "$T/root" --state "$S" --log warn)
# The same tree as an OCI image layout (one uncompressed layer), imported into isc's store: the
# "isc (store)" case starts it by id, with the before-start integrity check that `dir:` skips
# (issue 3: "start latency with the integrity check on must stay within the foundation's target").
oci_layout() { # SRC DEST
  local src=$1 d=$2 ld ls cd cs md ms
  mkdir -p "$d/blobs/sha256"
  tar -C "$src" --numeric-owner --sort=name -cf "$d/blob" .
  ld=$(sha256sum "$d/blob" | cut -d' ' -f1); ls=$(stat -c %s "$d/blob"); mv "$d/blob" "$d/blobs/sha256/$ld"
  printf '{"architecture":"amd64","os":"linux","config":{},"rootfs":{"type":"layers","diff_ids":["sha256:%s"]}}' "$ld" >"$d/blob"
  cd=$(sha256sum "$d/blob" | cut -d' ' -f1); cs=$(stat -c %s "$d/blob"); mv "$d/blob" "$d/blobs/sha256/$cd"
  printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"sha256:%s","size":%s}]}' "$cd" "$cs" "$ld" "$ls" >"$d/blob"
  md=$(sha256sum "$d/blob" | cut -d' ' -f1); ms=$(stat -c %s "$d/blob"); mv "$d/blob" "$d/blobs/sha256/$md"
  printf '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s}]}' "$md" "$ms" >"$d/index.json"
  printf '{"imageLayoutVersion":"1.0.0"}' >"$d/oci-layout"
}
oci_layout "$IR" "$T/oci"
ID=$("$ISC" "${ISCA[@]}" image import "oci:$T/oci" --json | jq -r .id) || { echo "importing the rootfs failed" >&2; exit 2; }
cat > "$T/store.toml" <<EOF
name = "bench-store"
[service]
exec = ["/bin/true"]
[image]
source = "id:$ID"
$LIMITS
EOF
for f in dir host store; do
  "$ISC" "${ISCA[@]}" manifest check "$T/$f.toml" >/dev/null || { echo "manifest $f.toml refused" >&2; exit 2; }
done

# --------------------------------------------------------------------------- cases
# name | wrapper ("" or nocg2) | command (hyperfine -N splits it on spaces: no quoting inside)
CASES=(
  "isc (dir)||$ISC ${ISCA[*]} run $T/dir.toml"
  "isc (host)||$ISC ${ISCA[*]} run $T/host.toml"
  "isc (store)||$ISC ${ISCA[*]} run $T/store.toml"
  "host /bin/true (floor)||$R/bin/true"
  "crun|nocg2|crun --root $S/crun run --bundle $BENCH/bundle bench-crun"
  "crun hardened|nocg2|crun --root $S/crun run --bundle $BENCH/bundle-hardened bench-crun-h"
  "runc||runc --root $S/runc run --bundle $BENCH/bundle bench-runc"
  "runc hardened||runc --root $S/runc run --bundle $BENCH/bundle-hardened bench-runc-h"
  "bwrap||bwrap --unshare-all --ro-bind $R / --proc /proc --dev /dev /bin/true"
  "bwrap hardened||bwrap --unshare-all --cap-drop ALL --die-with-parent --new-session --ro-bind $R / --proc /proc --dev /dev /bin/true"
)
slug() { echo "$1" | tr -c 'a-zA-Z0-9\n' '_'; }
cleanup_case() { # a container left behind by a failed OCI run
  case $1 in
    crun*) "$NOCG2" crun --root "$S/crun" delete -f "${2##* }" >/dev/null 2>&1;;
    runc*) runc --root "$S/runc" delete -f "${2##* }" >/dev/null 2>&1;;
  esac
  return 0
}
ver() {
  case $1 in
    isc*) "$ISC" --version | awk '{print $2}' | sed 's/^/isc /';;
    host*) echo "busybox";;
    crun*) crun --version | head -1 | awk '{print "crun "$3}';;
    runc*) runc --version | head -1 | awk '{print "runc "$3}';;
    bwrap*) bwrap --version;;
  esac
}

declare -A OK
for c in "${CASES[@]}"; do
  IFS='|' read -r name wrap cmd <<< "$c"
  [[ $name =~ $ONLY ]] || continue
  s=$(slug "$name"); : > "$OUT/$s.times"
  W=(nice -n "$NICE"); [ "$wrap" = nocg2 ] && W+=("$NOCG2")
  # functional check (3 tries), showing the error if it keeps failing
  OK[$name]=0
  for _ in 1 2 3; do
    # shellcheck disable=SC2086
    if err=$("${W[@]}" timeout -s KILL 60 $cmd 2>&1 >/dev/null); then OK[$name]=1; break; fi
    cleanup_case "$name" "$cmd"
    note "$name: attempt failed: $(echo "$err" | tail -2 | tr '\n' ' ')"
  done
  [ "${OK[$name]}" = 1 ] || { FAILED=1; note "$name: does not run, skipped"; }
  [ -n "${err:-}" ] && note "$name: stderr on success: $(echo "$err" | head -2 | tr '\n' ' ')"
done

LOAD0=$(cut -d' ' -f1-3 /proc/loadavg)
for round in $(seq "$ROUNDS"); do
  for c in "${CASES[@]}"; do
    IFS='|' read -r name wrap cmd <<< "$c"
    [[ $name =~ $ONLY ]] || continue
    [ "${OK[$name]}" = 1 ] || continue
    s=$(slug "$name")
    W=(nice -n "$NICE"); [ "$wrap" = nocg2 ] && W+=("$NOCG2")
    echo "== round $round/$ROUNDS: $name" >&2
    sync; sleep "$CASE_SETTLE"
    if ! "${W[@]}" hyperfine -N -i --style basic --warmup "$WARMUP" --runs "$RUNS" \
        --export-json "$OUT/$s.$round.json" "$cmd" >"$OUT/$s.$round.hyperfine.txt" 2>&1; then
      note "$name: hyperfine failed: $(tail -3 "$OUT/$s.$round.hyperfine.txt" | tr '\n' ' ')"
      cleanup_case "$name" "$cmd"; FAILED=1; continue
    fi
    jq -r '.results[0].times[]' "$OUT/$s.$round.json" >> "$OUT/$s.times"
    nf=$(jq '[.results[0].exit_codes[] | select(. != 0)] | length' "$OUT/$s.$round.json")
    [ "$nf" != 0 ] && { note "$name: $nf failed run(s) in round $round"; FAILED=1; }
  done
done
LOAD1=$(cut -d' ' -f1-3 /proc/loadavg)

# stats over the pooled samples (seconds -> ms)
stats() { sort -g "$1" | awk '{a[NR]=$1*1000; s+=$1*1000}
  END{ if(NR==0){print "- - - - 0"; exit}
       m=(NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2
       printf "%.2f %.2f %.2f %.2f %d\n", m, a[1], a[int(NR*0.9+0.5)<1?1:int(NR*0.9+0.5)], s/NR, NR }'; }
declare -A MED
TABLE=$OUT/table.md
{
  echo "Measured $(date -u +%Y-%m-%dT%H:%MZ) on $(uname -r), $(nproc) CPUs; RUNS=$RUNS x ROUNDS=$ROUNDS, WARMUP=$WARMUP, nice $NICE; load avg before: $LOAD0, after: $LOAD1"
  echo
  echo "| case | version | median ms | min ms | p90 ms | mean ms | samples |"
  echo "|---|---|---:|---:|---:|---:|---:|"
  for c in "${CASES[@]}"; do
    IFS='|' read -r name _ _ <<< "$c"
    [[ $name =~ $ONLY ]] || continue
    read -r med mn p90 mean n < <(stats "$OUT/$(slug "$name").times")
    MED[$name]=$med
    echo "| $name | $(ver "$name") | $med | $mn | $p90 | $mean | $n |"
  done
  echo
  echo "| ratio (median / median) | isc (dir) | isc (store) | isc (host) |"
  echo "|---|---:|---:|---:|"
  for c in "${CASES[@]}"; do
    IFS='|' read -r name _ _ <<< "$c"
    case $name in isc*) continue;; esac
    [[ $name =~ $ONLY ]] || continue
    r() { awk -v a="${MED[$1]:--}" -v b="${MED[$name]:--}" 'BEGIN{ if(a=="-"||b=="-"||b==0) print "-"; else printf "%.2f", a/b }'; }
    echo "| isc / $name | $(r "isc (dir)") | $(r "isc (store)") | $(r "isc (host)") |"
  done
  echo
  echo "Targets (issues 2-4): median isc <= 0.2 x crun hardened and <= 1.25 x bwrap, same run;"
  echo "(store) is the same tree by id, with the integrity check before start (issue 3)."
  for i in "isc (dir)" "isc (store)" "isc (host)"; do
    for t in "crun hardened|0.2" "bwrap|1.25"; do
      IFS='|' read -r peer lim <<< "$t"
      a=${MED[$i]:--}; b=${MED[$peer]:--}
      if [ "$a" = - ] || [ "$b" = - ]; then echo "- $i vs $peer: NOT MEASURED"; continue; fi
      # (host) runs the host's dynamically linked /bin/true (ld.so and libc inside the ISC), not
      # the peers' static busybox: its ratio is shown, but it is not one of the targets.
      awk -v a="$a" -v b="$b" -v l="$lim" -v i="$i" -v p="$peer" 'BEGIN{
        r=a/b; v=(i=="isc (host)")?"not a target (another service)":((r<=l)?"PASS":"FAIL");
        printf "- %s <= %s x %s: %.2f ms vs %.2f ms (limit %.2f ms), ratio %.3f: %s\n",
          i, l, p, a, b, b*l, r, v }'
    done
  done
} > "$TABLE"
cat "$TABLE"

# --------------------------------------------------------------------------- idle memory
# PEERS.md's method, below this script's own memory cgroup: a launcher subshell joins a dedicated
# memory cgroup, starts N containers running `sleep 600`, and the cgroup's usage (hierarchical:
# isc's per-ISC cgroups are created below the launcher's cgroup) grows by what they cost.
ctr_procs() { # processes of the containers (isc monitor + PID 1, crun, sleep) in cgroup $1 and below
  local p n=0
  for p in $(find "$1" -name cgroup.procs -exec cat {} + | sort -un); do
    case $(cat "/proc/$p/comm" 2>/dev/null) in isc|sleep|crun) n=$((n + 1));; esac
  done
  echo "$n"
}
# memory.usage_in_bytes (cgroup v1) includes the per-CPU charge batches (up to 64 pages per CPU
# and cgroup, memcg_stock) and drifts by +-30 KiB per container at N=20: the "exact" column adds
# the hierarchical anonymous and page-cache pages of memory.stat to the kernel memory instead.
exact_user() { awk '$1=="total_rss"||$1=="total_cache"{t+=$2} END{print t+0}' "$1/memory.stat"; }
idle() { # idle <rt>
  local rt=$1 own base cg
  own=$(awk -F: '$2=="memory"{print $3}' /proc/self/cgroup)
  base=/sys/fs/cgroup/memory${own%/}/iscbench-idle-$$
  cg=$base/$rt
  mkdir -p "$cg" || return 1
  (
    echo "$BASHPID" > "$cg/cgroup.procs"
    start_one() { # start_one <i>
      case $rt in
        isc)
          sed -e "s/^name = .*/name = \"bench-idle-$1\"/" -e 's|^exec = .*|exec = ["/bin/sleep", "600"]|' \
            "$T/dir.toml" > "$T/idle-$1.toml"
          "$ISC" "${ISCA[@]}" run "$T/idle-$1.toml" </dev/null >/dev/null 2>>"$OUT/idle.err" &
          echo $! >> "$T/idle-isc.pids"
          # One start at a time: an `isc run` starting while another is between creating its
          # cgroup and registering collects that cgroup as stale. (Names do not start with
          # `isc-`: launch.rs then mismatches cgroup and ISC names and kills running ISCs.)
          for _ in $(seq 100); do
            "$ISC" "${ISCA[@]}" ps 2>/dev/null | grep -q "^bench-idle-$1 " && break; sleep 0.05
          done;;
        crun)
          "$NOCG2" crun --cgroup-manager=disabled run -d --bundle "$BENCH/bundle-sleep" "bench-idle-$1" \
            </dev/null >/dev/null 2>>"$OUT/idle.err";;
      esac
    }
    stop_all() {
      case $rt in
        isc) for p in $(cat "$T/idle-isc.pids" 2>/dev/null); do kill -TERM "$p" 2>/dev/null; done
             for p in $(cat "$T/idle-isc.pids" 2>/dev/null); do
               for _ in $(seq 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done; done
             rm -f "$T/idle-isc.pids";;
        crun) for i in $(seq 0 "$N_IDLE"); do "$NOCG2" crun kill "bench-idle-$i" KILL >/dev/null 2>&1; done
              sleep 1
              for i in $(seq 0 "$N_IDLE"); do "$NOCG2" crun delete -f "bench-idle-$i" >/dev/null 2>&1; done;;
      esac
    }
    start_one 0; sleep 1; stop_all          # warm-up: page cache, first cgroup dirs
    sync; sleep "$SETTLE"
    u0=$(cat "$cg/memory.usage_in_bytes"); k0=$(cat "$cg/memory.kmem.usage_in_bytes" 2>/dev/null || echo 0)
    s0=$(exact_user "$cg")
    n0=$(ctr_procs "$cg")
    for i in $(seq "$N_IDLE"); do start_one "$i"; done
    sleep "$SETTLE"
    u1=$(cat "$cg/memory.usage_in_bytes"); k1=$(cat "$cg/memory.kmem.usage_in_bytes" 2>/dev/null || echo 0)
    s1=$(exact_user "$cg")
    n1=$(ctr_procs "$cg")
    echo "| $rt | $N_IDLE | $(( (u1 - u0) / 1024 / N_IDLE )) | $(( (k1 - k0) / 1024 / N_IDLE )) | $(( (s1 - s0 + k1 - k0) / 1024 / N_IDLE )) | $(awk -v a="$n0" -v b="$n1" -v n="$N_IDLE" 'BEGIN{printf "%.1f", (b-a)/n}') |"
    stop_all
    echo "$BASHPID" > "/sys/fs/cgroup/memory${own}/cgroup.procs"
  )
  for _ in 1 2 3 4 5; do
    find "$base" -depth -type d -exec rmdir {} \; 2>/dev/null
    [ -d "$base" ] || break; sleep 1
  done
}
if [ "$IDLE" = 1 ]; then
  echo "== idle memory: $N_IDLE x sleep 600 per runtime" >&2
  {
    echo
    echo "Idle memory, $N_IDLE x \`sleep 600\` (memory cgroup usage delta / container, after ${SETTLE}s):"
    echo
    echo "| runtime | N | memory / container KiB | of which kernel (kmem) KiB | exact (stat + kmem) KiB | processes / container |"
    echo "|---|---:|---:|---:|---:|---:|"
    for rt in isc crun; do idle "$rt" || { note "idle $rt: failed"; FAILED=1; }; done
  } | tee -a "$TABLE"
fi

echo "results: $OUT (table: $TABLE)" >&2
exit "$FAILED"

#!/bin/bash
# bench/dock.sh - issue 9: the Dock at scale, measured IN THE SAME RUN against podman.
#
# One command (root, Debian 12):   bench/dock.sh
#
#  1. builds isc in release (`cargo build --release -p isc-cli`; SKIP_BUILD=1 skips it);
#  2. a busybox root tree (`sleep`, `sh`) used by both sides: the ISCs take it as
#     `[image] source = "dir:…"`, podman as `--rootfs`;
#  3. start: N_START ISCs through the Dock (`isc up` of all manifests at once: concurrent API
#     calls; total time, and the per-ISC start latency the API reports), then the same number
#     of `podman run -d` of the same tree, one after the other (podman's own model) and
#     concurrently (xargs -P 8);
#  4. memory: the Dock runs in a dedicated v1 memory cgroup below this script's own, so its
#     monitors and the ISCs' cgroups (created below the monitor's) are all charged there
#     (PEERS.md's method); per-ISC cost = Δ memory.usage_in_bytes / N, plus the PSS of the
#     monitor and PID 1 (smaps_rollup), against PEERS.md's podman figure (1031 KiB; target
#     ≤ 0.6×) and podman measured here the same way;
#  5. `isc dock ps` latency with N_PS ISCs running (hyperfine; target ≤ 50 ms), and the engine's
#     own `isc ps --json` (reads every ISC's registry entry, no Dock) beside it;
#  6. everything is stopped and removed (trap), including on failure.
#
# Env: N_START (100), N_PS (500), BATCH (50), RUNS (20), SETTLE (3 s), SKIP_PODMAN.
# Needs: busybox (static), hyperfine, python3; podman (optional) with runc.
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
[ "$(id -u)" = 0 ] || { echo "run as root" >&2; exit 2; }
for t in busybox hyperfine python3; do
  command -v "$t" >/dev/null || { echo "missing $t (apt-get install -y busybox-static hyperfine)" >&2; exit 2; }
done
N_START=${N_START:-100}; N_PS=${N_PS:-500}; BATCH=${BATCH:-50}; RUNS=${RUNS:-20}; SETTLE=${SETTLE:-3}
[ "$N_PS" -ge $((N_START + 20)) ] || N_PS=$((N_START + 20))
if [ -z "${SKIP_BUILD:-}" ]; then
  (cd "$REPO" && cargo build --release -p isc-cli >&2) || exit 2
fi
ISC="$REPO/target/x86_64-unknown-linux-gnu/release/isc"
W=$(mktemp -d /tmp/isc-bench-dock-XXXXXX)
chmod 755 "$W"   # the ISCs' user namespaces must reach the image tree
ROOT="$W/root"; STATE="$W/state"; SOCK="$STATE/dock.sock"
isc() { "$ISC" --root "$ROOT" --state "$STATE" --log error "$@"; }
PODMAN="podman --runtime runc --cgroup-manager=cgroupfs --events-backend=file"
OWN_MEMCG=$(grep ':memory:' /proc/self/cgroup | cut -d: -f3-)
MEMCG="/sys/fs/cgroup/memory$OWN_MEMCG/isc-bench-dock-$$"
PMEMCG="/sys/fs/cgroup/memory$OWN_MEMCG/isc-bench-podman-$$"
DOCK_PID=""
PODS=()
PODMAN_CREATED=()

jlen() { python3 -c 'import json,sys; print(len(json.load(sys.stdin)))'; }
names() { isc dock ps --json 2>/dev/null | python3 -c 'import json,sys; [print(r["name"]) for r in json.load(sys.stdin)]' 2>/dev/null; }
cleanup() {
  if [ -n "$DOCK_PID" ] && kill -0 "$DOCK_PID" 2>/dev/null; then
    names | xargs -r -P 8 -n 1 "$ISC" --root "$ROOT" --state "$STATE" --log error dock rm >/dev/null 2>&1
    kill "$DOCK_PID" 2>/dev/null; wait "$DOCK_PID" 2>/dev/null
  fi
  # Monitors outlive the Dock by design: stop any that are left through the engine.
  for n in $(isc ps --json 2>/dev/null | python3 -c 'import json,sys; [print(s["name"]) for s in json.load(sys.stdin)]' 2>/dev/null); do
    isc stop "$n" >/dev/null 2>&1
  done
  if [ ${#PODS[@]} -gt 0 ]; then $PODMAN rm -f -i -t 0 "${PODS[@]}" >/dev/null 2>&1; fi
  # podman's --cgroup-parent is created in every v1 hierarchy: remove what did not exist before.
  # Exiting processes (conmon, monitors) keep a cgroup busy for a moment: retry.
  for d in "$MEMCG" "$PMEMCG" "${PODMAN_CREATED[@]}"; do
    for _ in $(seq 40); do
      [ -d "$d" ] || break
      find "$d" -depth -type d -exec rmdir {} \; 2>/dev/null
      [ -d "$d" ] && sleep 0.25
    done
    [ -d "$d" ] && echo "cleanup: could not remove the cgroup $d" >&2
  done
  rm -rf "$W" 2>/dev/null || { sleep 1; rm -rf "$W"; }
}
trap cleanup EXIT
trap 'exit 1' INT TERM
ms() { date +%s%N; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN{ if (b > 0) printf "%.2f", a/b; else print "-" }'; }
kib_of() { awk -v k="$2" '$1==k":"{print $2}' "/proc/$1/status"; }
pss_of() { awk '/^Pss:/{print $2}' "/proc/$1/smaps_rollup" 2>/dev/null || echo 0; }
cg_kib() { echo $(( $(cat "$1/memory.usage_in_bytes") / 1024 )); }

# ---------------------------------------------------------------------------- the root tree
TREE="$W/tree"
mkdir -p "$TREE/bin" "$TREE/usr/bin" "$TREE/etc" "$TREE/proc" "$TREE/dev" "$TREE/tmp" "$TREE/sys" "$TREE/run/secrets"
cp "$(command -v busybox)" "$TREE/bin/busybox"
for a in sh sleep true; do ln -s busybox "$TREE/bin/$a"; done
echo "root:x:0:0::/:/bin/sh" > "$TREE/etc/passwd"
chmod -R a+rX "$TREE"
manifest() { # name
  cat > "$W/m/$1.toml" <<EOF
name = "$1"
[service]
exec = ["/bin/sleep", "100000"]
[image]
source = "dir:$TREE"
[resources]
memory = "16M"
pids = 8
EOF
}
mkdir -p "$W/m" "$ROOT"
for i in $(seq "$N_PS"); do manifest "bd-$i"; done
# Allow N_PS × 16M whatever the host's size; the guard itself is not under test here.
cat > "$ROOT/dock.toml" <<EOF
start_timeout_s = 120
[resources]
memory_total = "64G"
reserve = "0"
EOF

# ---------------------------------------------------------------------------- the Dock
mkdir "$MEMCG"
( echo "$BASHPID" > "$MEMCG/cgroup.procs"; exec "$ISC" --root "$ROOT" --state "$STATE" --log warn dock serve ) 2>"$W/dock.stderr" &
DOCK_PID=$!
for _ in $(seq 200); do isc dock ps --json >/dev/null 2>&1 && break; sleep 0.05; done
isc dock ps --json >/dev/null || { echo "the Dock did not start:"; cat "$W/dock.stderr"; exit 1; }
# Warm-up: one ISC started and removed (binary and tree in the page cache, cgroup parents).
isc up "$W/m/bd-1.toml" >/dev/null && isc dock rm bd-1 >/dev/null || { echo "the warm-up ISC did not start"; exit 1; }
sleep "$SETTLE"
DOCK_IDLE_RSS=$(kib_of "$DOCK_PID" VmRSS)
MEM0=$(cg_kib "$MEMCG")

echo "== start $N_START ISCs through the Dock (isc up, concurrent API calls)"
files=(); for i in $(seq "$N_START"); do files+=("$W/m/bd-$i.toml"); done
t0=$(ms)
isc up --json "${files[@]}" > "$W/up.json" || { echo "isc up failed"; tail -5 "$W/dock.stderr"; exit 1; }
t1=$(ms)
DOCK_TOTAL_MS=$(( (t1 - t0) / 1000000 ))
running=$(isc dock ps --json | python3 -c 'import json,sys; print(sum(r["status"]=="running" for r in json.load(sys.stdin)))')
# Per-ISC latency one at a time (no concurrency): the next 20 ISCs, sequentially.
seq_ms=()
for i in $(seq $((N_START + 1)) $((N_START + 20))); do
  a=$(ms); isc up "$W/m/bd-$i.toml" >/dev/null || exit 1; b=$(ms); seq_ms+=($(( (b - a) / 1000 )))
done
DOCK_SEQ_US=$(printf '%s\n' "${seq_ms[@]}" | sort -n | awk '{a[NR]=$1} END{print a[int((NR+1)/2)]}')
echo "  $running/$N_START running; total ${DOCK_TOTAL_MS} ms = $(awk -v t="$DOCK_TOTAL_MS" -v n="$N_START" 'BEGIN{printf "%.1f", t/n}') ms per ISC; one at a time (median of 20): $(awk -v u="$DOCK_SEQ_US" 'BEGIN{printf "%.1f", u/1000}') ms"
N_NOW=$((N_START + 20))

echo "== memory ($N_NOW ISCs, settled ${SETTLE} s)"
sleep "$SETTLE"
MEM1=$(cg_kib "$MEMCG")
PER_ISC=$(( (MEM1 - MEM0) / N_NOW ))
# Userspace PSS of the monitors and their PID 1s (the sleep service itself excluded).
mon_pss=0; init_pss=0; n_mon=0; mon_rss=0; mon_threads=0
for n in $(isc ps --json | python3 -c 'import json,sys; [print(s["monitor_pid"], s["init_pid"]) for s in json.load(sys.stdin)]' | tr ' ' ':'); do
  m=${n%%:*}; p=${n##*:}
  mon_pss=$((mon_pss + $(pss_of "$m"))); init_pss=$((init_pss + $(pss_of "$p")))
  mon_rss=$((mon_rss + $(kib_of "$m" VmRSS))); mon_threads=$((mon_threads + $(kib_of "$m" Threads)))
  n_mon=$((n_mon + 1))
done
kmem=$(( ($(cat "$MEMCG/memory.kmem.usage_in_bytes" 2>/dev/null || echo 0)) / 1024 ))
stat() { awk -v k="$1" '$1==k{print int($2/1024)}' "$MEMCG/memory.stat"; }
echo "  cgroup: ${PER_ISC} KiB per ISC (Δ memory.usage_in_bytes / $N_NOW; now: rss $(stat total_rss) KiB, cache $(stat total_cache) KiB, kmem $kmem KiB in all)"
echo "  monitor: PSS $((mon_pss / n_mon)) KiB, RSS $((mon_rss / n_mon)) KiB, $(awk -v a="$mon_threads" -v n="$n_mon" 'BEGIN{printf "%.1f", a/n}') threads; PID 1: PSS $((init_pss / n_mon)) KiB (means over $n_mon)"
echo "  Dock RSS: idle (no ISC) ${DOCK_IDLE_RSS} KiB; with $N_NOW ISCs $(kib_of "$DOCK_PID" VmRSS) KiB"
echo "  target ≤ 0.6 × podman (PEERS.md 1031 KiB) = 619 KiB per ISC: ratio isc/podman(PEERS) $(ratio "$PER_ISC" 1031)"

echo "== isc dock ps with $N_PS ISCs"
i=$((N_NOW + 1))
while [ "$i" -le "$N_PS" ]; do
  last=$((i + BATCH - 1)); [ "$last" -gt "$N_PS" ] && last=$N_PS
  batch=(); for j in $(seq "$i" "$last"); do batch+=("$W/m/bd-$j.toml"); done
  isc up "${batch[@]}" >/dev/null || { echo "isc up of bd-$i..bd-$last failed"; exit 1; }
  i=$((last + 1))
done
running=$(isc dock ps --json | python3 -c 'import json,sys; print(sum(r["status"]=="running" for r in json.load(sys.stdin)))')
echo "  $running running"
hyperfine -N --warmup 3 --runs "$RUNS" --export-json "$W/ps.json" \
  "$ISC --root $ROOT --state $STATE --log error dock ps" \
  "$ISC --root $ROOT --state $STATE --log error dock ps --json" \
  "$ISC --root $ROOT --state $STATE --log error ps --json" >/dev/null 2>&1
python3 - "$W/ps.json" <<'EOF'
import json, sys
for r in json.load(open(sys.argv[1]))["results"]:
    what = "isc " + r["command"].split(" --log error ")[1]
    print(f"  {what}: median {r['median']*1000:.1f} ms, mean {r['mean']*1000:.1f} ± {r['stddev']*1000:.1f} ms (target ≤ 50 ms)")
EOF
MEM_PS=$(cg_kib "$MEMCG")
echo "  memory with $running ISCs: $(( (MEM_PS - MEM0) / running )) KiB per ISC; Dock RSS $(kib_of "$DOCK_PID" VmRSS) KiB"
t0=$(ms)
names | xargs -r -P 8 -n 1 "$ISC" --root "$ROOT" --state "$STATE" --log error dock rm >/dev/null 2>&1
t1=$(ms)
echo "  removed $running ISCs in $(( (t1 - t0) / 1000000 )) ms (xargs -P 8 isc dock rm)"

# ---------------------------------------------------------------------------- podman
if [ -n "${SKIP_PODMAN:-}" ] || ! command -v podman >/dev/null || ! command -v runc >/dev/null; then
  echo "== podman: skipped (SKIP_PODMAN set, or podman/runc not installed)"
  exit 0
fi
echo "== podman run -d of the same tree ($N_START containers)"
mkdir "$PMEMCG"
# Record which directories of the cgroup parent path do not exist yet in each hierarchy
# (shallowest first), so that cleanup removes exactly those.
for h in /sys/fs/cgroup/*/; do
  [ -L "${h%/}" ] && continue
  d="${h%/}"
  for part in $(echo "$OWN_MEMCG/isc-bench-podman-$$" | tr '/' ' '); do
    d="$d/$part"
    [ -d "$d" ] || { PODMAN_CREATED+=("$d"); break; }
  done
done
pod_run() { # i
  $PODMAN run -d --name "isc-bench-pod-$$-$1" --network none --read-only \
    --cgroup-parent "$OWN_MEMCG/isc-bench-podman-$$" --memory 16m --pids-limit 8 --ulimit nofile=1024:1024 --ulimit nproc=4096:4096 \
    --rootfs "$TREE" /bin/sleep 100000 >/dev/null 2>>"$W/podman.err"
}
PODS+=("isc-bench-pod-$$-0")   # the warm-up; removed by cleanup even when it fails
(
  echo "$BASHPID" > "$PMEMCG/cgroup.procs"
  pod_run 0
) || { echo "  podman cannot run here: $(tail -2 "$W/podman.err")"; exit 0; }
$PODMAN rm -f -i -t 0 "isc-bench-pod-$$-0" >/dev/null 2>&1
for i in $(seq "$N_START"); do PODS+=("isc-bench-pod-$$-$i"); done
sleep "$SETTLE"
PMEM0=$(cg_kib "$PMEMCG")
t0=$(ms)
(
  echo "$BASHPID" > "$PMEMCG/cgroup.procs"
  for i in $(seq "$N_START"); do pod_run "$i"; done
)
t1=$(ms)
POD_TOTAL_MS=$(( (t1 - t0) / 1000000 ))
pod_running=$($PODMAN ps -q --filter "name=isc-bench-pod-$$-" | wc -l)
sleep "$SETTLE"
PMEM1=$(cg_kib "$PMEMCG")
POD_PER=$(( (PMEM1 - PMEM0) / N_START ))
echo "  $pod_running/$N_START running; total ${POD_TOTAL_MS} ms = $(awk -v t="$POD_TOTAL_MS" -v n="$N_START" 'BEGIN{printf "%.1f", t/n}') ms per container (sequential)"
echo "  memory: ${POD_PER} KiB per container (same method)"
$PODMAN rm -f -i -t 0 "${PODS[@]}" >/dev/null 2>&1
t0=$(ms)
(
  echo "$BASHPID" > "$PMEMCG/cgroup.procs"
  seq "$N_START" | xargs -P 8 -I{} $PODMAN run -d --name "isc-bench-pod-$$-{}" --network none --read-only \
    --cgroup-parent "$OWN_MEMCG/isc-bench-podman-$$" --memory 16m --pids-limit 8 --ulimit nofile=1024:1024 --ulimit nproc=4096:4096 \
    --rootfs "$TREE" /bin/sleep 100000 >/dev/null 2>>"$W/podman.err"
)
t1=$(ms)
POD_PAR_MS=$(( (t1 - t0) / 1000000 ))
echo "  concurrent (xargs -P 8): total ${POD_PAR_MS} ms"
$PODMAN rm -f -i -t 0 "${PODS[@]}" >/dev/null 2>&1

echo "== ratios (isc / podman, same run)"
echo "  start $N_START, total: Dock ${DOCK_TOTAL_MS} ms vs podman concurrent ${POD_PAR_MS} ms: $(ratio "$DOCK_TOTAL_MS" "$POD_PAR_MS") (sequential podman ${POD_TOTAL_MS} ms: $(ratio "$DOCK_TOTAL_MS" "$POD_TOTAL_MS"))"
echo "  one start: Dock $(awk -v u="$DOCK_SEQ_US" 'BEGIN{printf "%.1f", u/1000}') ms vs podman $(awk -v t="$POD_TOTAL_MS" -v n="$N_START" 'BEGIN{printf "%.1f", t/n}') ms: $(ratio "$(awk -v u="$DOCK_SEQ_US" 'BEGIN{print u/1000}')" "$(awk -v t="$POD_TOTAL_MS" -v n="$N_START" 'BEGIN{print t/n}')")"
echo "  memory per ISC: ${PER_ISC} KiB vs podman ${POD_PER} KiB here: $(ratio "$PER_ISC" "$POD_PER") (vs PEERS.md 1031 KiB: $(ratio "$PER_ISC" 1031); target ≤ 0.6)"

#!/bin/bash
# bench/image.sh - issue 3: image build, hashing throughput, and directory vs EROFS images,
# all measured IN THE SAME RUN on the same files.
#
# One command (root, Debian 12):   bench/image.sh
#
#  1. builds isc in release (`cargo build --release -p isc-cli`; SKIP_BUILD=1 skips it);
#  2. build: the host closure of /usr/bin/python3 with its stdlib (/usr/lib/python3.11) into a
#     fresh store, BUILDS times (median of cold builds), plus one cache hit;
#  3. hashing: every regular file of the stored tree, page cache hot (one warm-up read first),
#     hashed by `isc image hash` (the store's BLAKE3 path: 256 KiB reads, one thread), by
#     `b3sum --num-threads 1`, by `b3sum` (all cores, mmap) and by `sha256sum`; MB/s each, and
#     the ratio b3sum(1 thread)/isc (issue 3 target: isc within 1.5x of b3sum single-threaded);
#  4. packing: `isc image pack` (mkfs.erofs + mount + re-hash of the packed tree);
#  5. start latency: hyperfine -N, the whole `isc run` of `python3 -c "import json"` with the
#     image as a directory (`id:`) vs packed (`erofs:`); integrity check on in both;
#  6. memory: N_IDLE idle python ISCs per form (`import json, email, decimal, asyncio` then
#     sleep), image pages evicted from the page cache first (posix_fadvise DONTNEED), charged to a
#     dedicated memory cgroup below this script's own (cgroup v1); reported per ISC.
#
# Env: BUILDS (3), RUNS (30), WARMUP (3), N_IDLE (8), SETTLE (3 s), NICE (0).
# Needs: erofs-utils (mkfs.erofs), b3sum, hyperfine, coreutils.
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
[ "$(id -u)" = 0 ] || { echo "run as root" >&2; exit 2; }
for t in mkfs.erofs b3sum sha256sum hyperfine python3; do
  command -v "$t" >/dev/null || { echo "missing $t (apt-get install -y erofs-utils b3sum hyperfine)" >&2; exit 2; }
done
BUILDS=${BUILDS:-3}; RUNS=${RUNS:-30}; WARMUP=${WARMUP:-3}; N_IDLE=${N_IDLE:-8}; SETTLE=${SETTLE:-3}
if [ -z "${SKIP_BUILD:-}" ]; then
  (cd "$REPO" && cargo build --release -p isc-cli >&2) || exit 2
fi
ISC="$REPO/target/x86_64-unknown-linux-gnu/release/isc"
W=$(mktemp -d /tmp/isc-bench-image-XXXXXX)
chmod 755 "$W"   # the ISC's user namespace must be able to reach the image to bind-mount it
ROOT="$W/root"; STATE="$W/state"
isc() { "$ISC" --root "$ROOT" --state "$STATE" --log error "$@"; }
MEMCG=""
cleanup() {
  for n in $(isc ps --json 2>/dev/null | python3 -c 'import json,sys; [print(s["name"]) for s in json.load(sys.stdin)]' 2>/dev/null); do
    isc stop "$n" >/dev/null 2>&1
  done
  sleep 1
  [ -n "${IMG:-}" ] && isc image rm "$IMG" >/dev/null 2>&1
  if [ -n "$MEMCG" ] && [ -d "$MEMCG" ]; then
    echo $$ > "$(dirname "$MEMCG")/cgroup.procs" 2>/dev/null
    rmdir "$MEMCG" 2>/dev/null
  fi
  rm -rf "$W"
}
trap cleanup EXIT
ns() { date +%s%N; }
median() { sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
jget() { python3 -c "import json,sys; v=json.load(sys.stdin); print(v$1)"; }

manifest() { # name source exec...
  local name=$1 src=$2; shift 2
  local exec; exec=$(printf '"%s", ' "$@"); exec="[${exec%, }]"
  local paths=""
  [ "$src" = host ] && paths='paths = ["/usr/bin/python3", "/usr/lib/python3.11"]'
  cat > "$W/$name.toml" <<EOF
name = "$name"
[service]
exec = $exec
env = { PATH = "/usr/bin:/bin", PYTHONDONTWRITEBYTECODE = "1" }
[image]
source = "$src"
$paths
[filesystem]
tmpfs = [{ path = "/tmp", size = "16M" }]
EOF
  echo "$W/$name.toml"
}

echo "== isc image bench ($(uname -r), $(nproc) CPUs, $(date -u +%FT%TZ))"
# --- 2. build -------------------------------------------------------------------------------
M_BUILD=$(manifest pybuild host /usr/bin/python3 -c pass)
times=()
for i in $(seq "$BUILDS"); do
  [ -n "${IMG:-}" ] && isc image rm "$IMG" >/dev/null
  t0=$(ns); out=$(isc image build "$M_BUILD" --json) || { echo "build failed" >&2; exit 1; }; t1=$(ns)
  IMG=$(echo "$out" | jget '["id"]'); times+=($(( (t1 - t0) / 1000000 )))
done
ENTRIES=$(echo "$out" | jget '["entries"]'); BYTES=$(echo "$out" | jget '["bytes"]')
BUILD_MS=$(printf '%s\n' "${times[@]}" | median)
t0=$(ns); isc image build "$M_BUILD" >/dev/null; t1=$(ns); HIT_MS=$(( (t1 - t0) / 1000000 ))
ID2=$(isc image build "$M_BUILD")
echo "build: python3 + /usr/lib/python3.11: $ENTRIES entries, $BYTES bytes; cold build median ${BUILD_MS} ms (${times[*]}), cache hit ${HIT_MS} ms; id ${IMG:0:16} (rebuild gives the same id: $([ "$ID2" = "$IMG" ] && echo yes || echo NO))"
RFS="$ROOT/images/$IMG/rootfs"

# --- 3. hashing -----------------------------------------------------------------------------
LIST="$W/files"; find "$RFS" -type f -print0 | sort -z > "$LIST"
NFILES=$(tr -cd '\0' < "$LIST" | wc -c)
HBYTES=$(xargs -0 stat -c %s < "$LIST" | awk '{s+=$1} END {print s}')
xargs -0 cat < "$LIST" > /dev/null   # warm the page cache: measure hashing, not the disk
mbs() { awk -v b="$HBYTES" -v n="$1" 'BEGIN {printf "%.0f", b / 1e6 / (n / 1e9)}'; }
timed() { local t0 t1; t0=$(ns); "$@" > /dev/null 2>&1; t1=$(ns); echo $((t1 - t0)); }
best() { local b=""; for _ in 1 2 3; do local t; t=$(timed "$@"); [ -z "$b" ] || [ "$t" -lt "$b" ] && b=$t; done; echo "$b"; }
T_ISC=$(best isc image hash "$RFS")
T_B3_1=$(best sh -c "xargs -0 b3sum --num-threads 1 < '$LIST'")
T_B3=$(best sh -c "xargs -0 b3sum < '$LIST'")
T_SHA=$(best sh -c "xargs -0 sha256sum < '$LIST'")
# Cross-check: isc's per-file BLAKE3 equals b3sum's.
if diff <(isc image hash "$RFS" 2>/dev/null | awk '{print $1}') <(xargs -0 b3sum --num-threads 1 < "$LIST" | awk '{print $1}') >/dev/null; then SAME=yes; else SAME=NO; fi
echo "hash: $NFILES files, $HBYTES bytes, page cache hot, best of 3:"
echo "  isc image hash (BLAKE3, 1 thread)  $(mbs "$T_ISC") MB/s"
echo "  b3sum --num-threads 1              $(mbs "$T_B3_1") MB/s"
echo "  b3sum (all $(nproc) CPUs)                 $(mbs "$T_B3") MB/s"
echo "  sha256sum                          $(mbs "$T_SHA") MB/s"
echo "  isc throughput / b3sum(1 thread) throughput = $(awk -v a="$T_B3_1" -v b="$T_ISC" 'BEGIN {printf "%.2f", a / b}') (target >= 0.67, i.e. within 1.5x); digests identical to b3sum: $SAME"
echo "  (wall time of whole processes, including their start-up)"

# --- 4. packing -----------------------------------------------------------------------------
PK=$(isc image pack "$IMG" --json) || { echo "pack failed" >&2; exit 1; }
EROFS=$(echo "$PK" | jget '["file"]')
echo "pack: $(echo "$PK" | jget '["bytes"]') bytes EROFS in $(echo "$PK" | jget '["ms"]' | cut -d. -f1) ms (mkfs.erofs + loop mount + full re-hash against the manifest)"

# --- 5. start latency -----------------------------------------------------------------------
M_DIR=$(manifest pydir "id:$IMG" /usr/bin/python3 -c "import json")
M_EROFS=$(manifest pyerofs "erofs:$EROFS" /usr/bin/python3 -c "import json")
isc run "$M_DIR" >/dev/null && isc run "$M_EROFS" >/dev/null || { echo "a start failed" >&2; exit 1; }
hyperfine -N --style none --warmup "$WARMUP" --runs "$RUNS" --export-json "$W/start.json" \
  -n directory "$ISC --root $ROOT --state $STATE --log error run $M_DIR" \
  -n erofs "$ISC --root $ROOT --state $STATE --log error run $M_EROFS" > /dev/null 2>&1 \
  || { echo "hyperfine failed" >&2; exit 1; }
python3 - "$W/start.json" <<'EOF'
import json, statistics, sys
r = {x["command"]: x for x in json.load(open(sys.argv[1]))["results"]}
for n in ("directory", "erofs"):
    t = sorted(r[n]["times"])
    print(f"start: isc run python3 -c 'import json', {n:9}: median {statistics.median(t)*1e3:6.1f} ms, "
          f"p90 {t[int(len(t)*0.9)]*1e3:6.1f} ms ({len(t)} runs)")
d, e = (statistics.median(r[n]["times"]) for n in ("directory", "erofs"))
print(f"start: erofs/directory = {e/d:.2f}")
EOF

# --- 6. memory ------------------------------------------------------------------------------
OWN=$(awk -F: '$2 ~ /(^|,)memory(,|$)/ {print $3}' /proc/self/cgroup)
MEMCG="/sys/fs/cgroup/memory${OWN%/}/isc-bench-image-$$"
evict() { python3 - "$@" <<'EOF'
import os, sys
for top in sys.argv[1:]:
    paths = [top] if os.path.isfile(top) else [os.path.join(d, f) for d, _, fs in os.walk(top) for f in fs]
    for p in paths:
        if os.path.islink(p) or not os.path.isfile(p):
            continue
        fd = os.open(p, os.O_RDONLY | os.O_NOFOLLOW)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.close(fd)
EOF
}
if mkdir "$MEMCG" 2>/dev/null; then
  echo $$ > "$MEMCG/cgroup.procs"
  for form in directory erofs; do
    src="id:$IMG"; [ $form = erofs ] && src="erofs:$EROFS"
    evict "$RFS" "$EROFS"; sleep 1
    base=$(cat "$MEMCG/memory.usage_in_bytes")
    # One at a time: concurrent `isc run`s in one state directory collect each other's
    # not-yet-registered cgroups as stale (reported to the lead).
    t0=$(date +%s)
    for i in $(seq "$N_IDLE"); do
      m=$(manifest "idle$form$i" "$src" /usr/bin/python3 -c "import json, email, decimal, asyncio, time; time.sleep(600)")
      isc run "$m" >/dev/null 2>"$W/idle$form$i.err" &
      while [ "$(isc ps --json | python3 -c 'import json,sys; print(len(json.load(sys.stdin)))')" -lt "$i" ]; do
        [ $(( $(date +%s) - t0 )) -gt 120 ] && { echo "ISCs did not start: $(cat "$W"/idle$form*.err | sort -u | head -3)" >&2; break 2; }
        sleep 0.1
      done
    done
    sleep "$SETTLE"
    used=$(cat "$MEMCG/memory.usage_in_bytes")
    cache=$(awk '$1=="total_cache" {print $2}' "$MEMCG/memory.stat")
    rss=$(awk '$1=="total_rss" {print $2}' "$MEMCG/memory.stat")
    running=$(isc ps --json | python3 -c 'import json,sys; print(len(json.load(sys.stdin)))')
    [ "$running" = "$N_IDLE" ] || { echo "memory: only $running of $N_IDLE ISCs running; skipped" >&2; continue; }
    echo "memory: $N_IDLE idle python ISCs, $form: $(( (used - base) / N_IDLE / 1024 )) KiB per ISC charged (cgroup total: rss $((rss / 1048576)) MiB, page cache $((cache / 1048576)) MiB)"
    for i in $(seq "$N_IDLE"); do isc stop "idle$form$i" >/dev/null 2>&1; done
    wait
  done
else
  echo "memory: could not create $MEMCG; skipped"
fi
echo "== done"

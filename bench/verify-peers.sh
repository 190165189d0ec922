#!/bin/bash
# bench/verify-peers.sh - `isc verify` side by side on the peers (issue 8): a crun default
# container, a crun hardened container, a bubblewrap sandbox, and an ISC, each running
# `sleep`. Prints one table of exposure per principle (0 = best, 10 = worst).
#
# Foreign processes get `isc verify --pid` (kernel-state and config-free checks only: weaker
# evidence, marked as such); the ISC gets both `--pid` (same footing) and `isc verify NAME`
# (active probes from inside its live confinement).
#
# Needs root and the peers' bundles: runs ../shared/bench/peers/setup.sh (SKIP_APT=1 when the
# tools are present). Leaves nothing running; everything it made is removed on exit.
#
# Env: ISC_BIN (default: target/x86_64-unknown-linux-gnu/release/isc, built if missing), PEERS_WORK (/tmp/isc-peers).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
PEERS_DIR=${PEERS_DIR:-$REPO/../shared/bench/peers}
[ -d "$PEERS_DIR" ] || PEERS_DIR=/work/shared/bench/peers
BENCH=${PEERS_WORK:-/tmp/isc-peers}
ISC=${ISC_BIN:-$REPO/target/x86_64-unknown-linux-gnu/release/isc}
[ "$(id -u)" = 0 ] || { echo "run as root" >&2; exit 1; }
[ -x "$ISC" ] || (cd "$REPO" && cargo build --release -p isc-cli)
if command -v crun >/dev/null && command -v bwrap >/dev/null && command -v jq >/dev/null; then
  export SKIP_APT=${SKIP_APT:-1}
fi
"$PEERS_DIR/setup.sh" >/dev/null
NOCG2=$PEERS_DIR/nocg2.sh
R=$BENCH/bundle/rootfs
T=$(mktemp -d /tmp/isc-vp.XXXXXX)
chmod 755 "$T"
ISCA=(--root "$T/root" --state "$T/state" --log warn)
pids=()
cleanup() {
  set +e
  "$NOCG2" crun kill isc-vp-crun KILL >/dev/null 2>&1
  "$NOCG2" crun kill isc-vp-crun-h KILL >/dev/null 2>&1
  sleep 0.3
  "$NOCG2" crun delete -f isc-vp-crun >/dev/null 2>&1
  "$NOCG2" crun delete -f isc-vp-crun-h >/dev/null 2>&1
  "$ISC" "${ISCA[@]}" stop vp-isc >/dev/null 2>&1
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null; done
  python3 - "$T" <<'EOF' 2>/dev/null
import os, sys, fcntl, struct
# The image store is immutable (FS_IMMUTABLE_FL): clear the flag before removing the tree.
FS_IOC_GETFLAGS, FS_IOC_SETFLAGS, IMM = 0x80086601, 0x40086602, 0x10
for root, dirs, files in os.walk(sys.argv[1]):
    for n in dirs + files:
        p = os.path.join(root, n)
        try:
            fd = os.open(p, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError:
            continue
        try:
            f = struct.unpack('i', fcntl.ioctl(fd, FS_IOC_GETFLAGS, b'\0' * 4))[0]
            if f & IMM:
                fcntl.ioctl(fd, FS_IOC_SETFLAGS, struct.pack('i', f & ~IMM))
        except OSError:
            pass
        os.close(fd)
EOF
  rm -rf "$T"
}
trap cleanup EXIT

state_pid() { "$NOCG2" crun state "$1" | jq -r .pid; }

# crun default and hardened (the peers' bundles running `sleep 600`)
"$NOCG2" crun run -d --bundle "$BENCH/bundle-sleep" isc-vp-crun </dev/null >/dev/null
"$NOCG2" crun run -d --bundle "$BENCH/bundle-sleep-hardened" isc-vp-crun-h </dev/null >/dev/null
crun_pid=$(state_pid isc-vp-crun)
crun_h_pid=$(state_pid isc-vp-crun-h)

# bubblewrap, hardened flags; --info-fd reports the sandboxed child's pid
bwrap --unshare-all --die-with-parent --new-session --cap-drop ALL --ro-bind "$R" / \
  --proc /proc --dev /dev --info-fd 3 /bin/sleep 600 3>"$T/bwrap.json" </dev/null >/dev/null 2>&1 &
pids+=($!)
for _ in $(seq 100); do [ -s "$T/bwrap.json" ] && break; sleep 0.02; done
bwrap_pid=$(jq -r '."child-pid"' "$T/bwrap.json")

# the ISC: same busybox rootfs, strict defaults, the same limits as crun's hardened bundle
cp -a "$R" "$T/rootfs"
mkdir -p "$T/rootfs"/{proc,dev,sys,tmp,run/secrets,etc}
cat > "$T/isc.toml" <<EOF
name = "vp-isc"
[service]
exec = ["/bin/sleep", "600"]
[image]
source = "dir:$T/rootfs"
[resources]
memory = "64M"
pids = 64
cpu = 1.0
EOF
"$ISC" "${ISCA[@]}" run "$T/isc.toml" </dev/null >/dev/null 2>&1 &
pids+=($!)
for _ in $(seq 200); do "$ISC" "${ISCA[@]}" ps --json | grep -q '"vp-isc"' && break; sleep 0.02; done
isc_pid=$("$ISC" "${ISCA[@]}" ps --json | jq -r '.[] | select(.name=="vp-isc") | .init_pid')
isc_svc=$(cat "/proc/$isc_pid/task/$isc_pid/children" | awk '{print $1}')

verify_pid() { "$ISC" "${ISCA[@]}" verify --pid "$1" --json 2>/dev/null || true; }
verify_pid "$crun_pid" > "$T/crun.json"
verify_pid "$crun_h_pid" > "$T/crun-h.json"
verify_pid "$bwrap_pid" > "$T/bwrap-r.json"
verify_pid "$isc_svc" > "$T/isc-pid.json"
"$ISC" "${ISCA[@]}" verify vp-isc --json > "$T/isc-live.json" 2>/dev/null || true
# How long one full verify of a live ISC takes (target: <= 250 ms), whole command.
if command -v hyperfine >/dev/null; then
  hyperfine -N -i --style none -w 2 -r 15 --export-json "$T/verify-time.json" \
    "$ISC ${ISCA[*]} verify vp-isc --json" >/dev/null 2>&1 || true
fi

python3 - "$T" <<'EOF'
import json, sys, os
t = sys.argv[1]
cols = [("crun", "crun.json"), ("crun hardened", "crun-h.json"), ("bwrap hardened", "bwrap-r.json"),
        ("isc (--pid)", "isc-pid.json"), ("isc (live probes)", "isc-live.json")]
reps = {}
for name, f in cols:
    try:
        reps[name] = json.load(open(os.path.join(t, f)))
    except Exception as e:
        reps[name] = None
def fmt(v):
    return "-" if v is None else f"{v:.1f}"
rows = []
first = next(r for r in reps.values() if r)
for p in first["score"]["principles"]:
    row = [f'{p["id"]} {p["title"]}']
    for name, _ in cols:
        r = reps[name]
        ps = {x["id"]: x for x in r["score"]["principles"]} if r else {}
        row.append(fmt(ps.get(p["id"], {}).get("exposure")))
    rows.append(row)
over = ["overall exposure"] + [fmt(reps[n]["score"]["exposure"]) if reps[n] else "-" for n, _ in cols]
verdict = ["verdict"] + [("PASS" if reps[n]["score"]["pass"] else "FAIL") if reps[n] else "-" for n, _ in cols]
checks = ["checks pass/fail/n.a."] + [
    (lambda r: f'{sum(p["passed"] for p in r["score"]["principles"])}/{sum(p["failed"] for p in r["score"]["principles"])}/{sum(p["not_applicable"] for p in r["score"]["principles"])}')(reps[n]) if reps[n] else "-"
    for n, _ in cols]
hdr = ["principle (exposure 0-10, lower is better)"] + [n for n, _ in cols]
print("| " + " | ".join(hdr) + " |")
print("|---" + "|---:" * len(cols) + "|")
for r in rows + [over, verdict, checks]:
    print("| " + " | ".join(r) + " |")
print()
try:
    vt = json.load(open(os.path.join(t, "verify-time.json")))["results"][0]
    print(f"full `isc verify` of the live ISC: median {vt['median']*1000:.1f} ms over {len(vt['times'])} runs (target <= 250 ms)")
    print()
except Exception:
    pass
print("--pid runs kernel-state checks only (no probes inside foreign confinement); the live column adds")
print("active probes forked by the ISC's PID 1. Same host, same run:", os.popen("date -u +%FT%TZ").read().strip())
EOF

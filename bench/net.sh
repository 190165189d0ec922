#!/usr/bin/env bash
# Network benchmark for `isc run` (issue 5). Not CI. Everything runs inside a private network
# namespace (re-exec under `unshare --net --mount`) that stands in for the host.
#   1. start latency of an ISC (/bin/true) without and with a [network] (hyperfine)
#   2. TCP throughput ISC -> outside through the policy vs the same path from a plain netns
#      behind an unfiltered veth pair (no nft table), same sender (bash + dd), same sink
#   3. nft apply time for 1/100/1000 ISCs and per-ISC add/remove at that size (add_one: the
#      start path, base already in place; add_base_ms: the same behind a re-stated base)
# Usage: bench/net.sh [path/to/isc]   (default target/x86_64-unknown-linux-gnu/debug/isc; build it first)
#   SECTIONS="1 2 3" (default) picks sections; ROUNDS=5 throughput rounds; MB=2000 per round.
set -euo pipefail
cd "$(dirname "$0")/.."
ISC=$(realpath "${1:-target/x86_64-unknown-linux-gnu/debug/isc}")
if [ -z "${ISC_NET_BENCH_INNER:-}" ]; then
    exec env ISC_NET_BENCH_INNER=1 unshare --net --mount -- "$0" "$ISC"
fi
ip link set lo up
sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1
W=$(mktemp -d /tmp/isc-bench-net-XXXXXX); chmod 755 "$W"  # the ISC user must traverse it
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    chattr -R -i "$W" 2>/dev/null || true
    rm -rf "$W" 2>/dev/null || true
}
trap cleanup EXIT
I=("$ISC" --root "$W/root" --state "$W/state")

manifest() { # name exec-json network-body-or-empty
    { echo "name = \"$1\""; echo "[service]"; echo "exec = $2"
      echo "[image]"; echo 'source = "host"'
      echo 'paths = ["/bin/true", "/bin/bash", "/usr/bin/dd"]'
      if [ -n "$3" ]; then printf '[network]\n%b\n' "$3"; fi; } > "$W/$1.toml"
}

SECTIONS=${SECTIONS:-1 2 3}
ROUNDS=${ROUNDS:-5}
if [[ " $SECTIONS " == *" 1 "* ]]; then
echo "== 1. start latency (isc run of /bin/true; debug build) =="
manifest nonet '["/bin/true"]' ''
manifest withnet '["/bin/true"]' 'listen = [{ port = 8080 }]\negress = ["192.0.2.2:443"]'
"${I[@]}" run "$W/nonet.toml"; "${I[@]}" run "$W/withnet.toml"   # warm the image store
hyperfine -N --warmup 3 --runs 30 --export-json "$W/start.json" \
    "${I[*]} run $W/nonet.toml" "${I[*]} run $W/withnet.toml" >/dev/null
python3 - "$W/start.json" <<'PY'
import json,sys
r=json.load(open(sys.argv[1]))["results"]
a,b=r[0]["mean"]*1e3,r[1]["mean"]*1e3
print(f"START without network: {a:.1f} ms  (sd {r[0]['stddev']*1e3:.1f})")
print(f"START with network:    {b:.1f} ms  (sd {r[1]['stddev']*1e3:.1f})  ratio {b/a:.2f}, +{b-a:.1f} ms")
PY
fi

if [[ " $SECTIONS " == *" 2 "* ]]; then
echo "== 2. TCP throughput: ISC -> outside through the policy vs unfiltered veth =="
MB=${MB:-2000}
unshare --net -- sleep 600 & OUT=$!; PIDS+=($OUT)
unshare --net -- sleep 600 & PLAIN=$!; PIDS+=($PLAIN)
sleep 0.2
ip link add up-isc0 type veth peer name eth0 netns "$OUT"
ip addr add 192.0.2.1/24 dev up-isc0; ip link set up-isc0 up
nsenter --net=/proc/$OUT/ns/net sh -c 'ip link set lo up; ip addr add 192.0.2.2/24 dev eth0; ip link set eth0 up; ip route add default via 192.0.2.1'
ip link add bplain0 type veth peer name eth0 netns "$PLAIN"
ip addr add 10.99.0.0/31 dev bplain0; ip link set bplain0 up
nsenter --net=/proc/$PLAIN/ns/net sh -c 'ip link set lo up; ip addr add 10.99.0.1/31 dev eth0; ip link set eth0 up; ip route add default via 10.99.0.0'
sink() { # port -> prints MB/s of one connection
    nsenter --net=/proc/$OUT/ns/net python3 -c '
import socket,sys,time
s=socket.socket(socket.AF_INET6); s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)
s.bind(("::",int(sys.argv[1]))); s.listen(1); c,_=s.accept(); t=time.time(); n=0
while True:
    b=c.recv(1<<20)
    if not b: break
    n+=len(b)
print(f"{n/(time.time()-t)/1e6:.0f}")' "$1"
}
SEND="exec 3<>/dev/tcp/192.0.2.2/5201; dd if=/dev/zero bs=1M count=$MB status=none >&3"
for round in $(seq 1 "$ROUNDS"); do
    sink 5201 > "$W/plain.$round" & S=$!; PIDS+=($S); sleep 0.3
    nsenter --net=/proc/$PLAIN/ns/net bash -c "$SEND"; wait $S
    manifest "tput$round" "[\"/bin/bash\", \"-c\", \"$SEND\"]" 'egress = ["192.0.2.2:5201"]'
    sink 5201 > "$W/isc.$round" & S=$!; PIDS+=($S); sleep 0.3
    "${I[@]}" run "$W/tput$round.toml"; wait $S
done
python3 - "$W" "$ROUNDS" <<'PY'
import sys,statistics as st
w,n=sys.argv[1],int(sys.argv[2])
p=[float(open(f"{w}/plain.{i}").read()) for i in range(1,n+1)]
q=[float(open(f"{w}/isc.{i}").read()) for i in range(1,n+1)]
# Each round measures both paths back to back, so a round's ratio compares like with like
# even while the shared host's load drifts; the median over rounds is the figure.
r=sorted(b/a for a,b in zip(p,q))
print(f"TPUT unfiltered veth: {st.median(p):.0f} MB/s  runs {p}")
print(f"TPUT through policy:  {st.median(q):.0f} MB/s  runs {q}")
print(f"TPUT ratio policy/unfiltered per round {[round(x,2) for x in r]}: median {st.median(r):.2f} (target >= 0.95)")
PY
fi

if [[ " $SECTIONS " == *" 3 "* ]]; then
echo "== 3. nft apply time (ms; add/remove: median of 11; rm_no_close: remove before its socket's close, which waits for an RCU grace period) =="
echo "            ISCs      full_ms   add_one_ms remove_one_ms  add_base_ms  rm_no_close"
cargo test -q -p isc-cli --test network_bench bench_ruleset_apply -- --ignored --nocapture 2>/dev/null | grep BENCH || true
fi

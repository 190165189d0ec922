#!/usr/bin/env bash
# Fails when a test left a kernel object behind: mounts, cgroups, links, network namespaces,
# nftables tables, loop devices or processes that belong to isc. Run after the test suite.
set -uo pipefail
leaks=()
m=$(awk '{print $5}' /proc/self/mountinfo | grep -E '(^|/)isc([-_./]|$)|isc-test' || true)
[ -n "$m" ] && leaks+=("mounts: $m")
c=$(find /sys/fs/cgroup -maxdepth 8 -type d \( -name 'isc-*' -o -name 'isc.*' -o -name 'isc' \) 2>/dev/null || true)
[ -n "$c" ] && leaks+=("cgroups: $c")
l=$(ip -o link show 2>/dev/null | grep -E ': (isc|ifbisc)' || true)
[ -n "$l" ] && leaks+=("links: $l")
n=$(ip netns list 2>/dev/null | grep -i isc || true)
[ -n "$n" ] && leaks+=("netns: $n")
if command -v nft >/dev/null; then
  t=$(nft list tables 2>/dev/null | grep -i isc || true)
  [ -n "$t" ] && leaks+=("nft tables: $t")
fi
lo=$(losetup -a 2>/dev/null | grep -i isc || true)
[ -n "$lo" ] && leaks+=("loop devices: $lo")
p=$(ps -eo pid,args | awk '$2 ~ /target\/([^ ]*\/)?(debug|release)\/isc$/ {print}' || true)
[ -n "$p" ] && leaks+=("processes: $p")
if [ ${#leaks[@]} -gt 0 ]; then
  echo "LEAK CHECK FAILED: the test suite left these behind:" >&2
  printf '  %s\n' "${leaks[@]}" >&2
  exit 1
fi
echo "leak check: nothing left behind"

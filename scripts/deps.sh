#!/usr/bin/env bash
# Installs what a fresh Debian 12 machine lacks for building and testing isc. Idempotent.
set -euo pipefail
need=()
command -v nft >/dev/null || need+=(nftables)
command -v mkfs.ext4 >/dev/null || need+=(e2fsprogs)
command -v unshare >/dev/null || need+=(util-linux)
command -v tc >/dev/null || need+=(iproute2)
command -v mkfs.erofs >/dev/null || need+=(erofs-utils)
command -v cc >/dev/null || need+=(gcc)
[ -f /usr/lib/x86_64-linux-gnu/libc.a ] || need+=(libc6-dev)   # isc links glibc statically (.cargo/config.toml)
command -v python3 >/dev/null || need+=(python3)
command -v busybox >/dev/null || need+=(busybox)        # verify's undeclared-listener mutant
command -v setpriv >/dev/null || need+=(util-linux)     # the Dock's 403 test
if [ ${#need[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
if ! command -v cargo >/dev/null; then
  if [ -x "$HOME/.cargo/bin/cargo" ]; then
    echo "note: add \$HOME/.cargo/bin to PATH" >&2
  else
    echo "error: no Rust toolchain: install Rust stable (rustup) first" >&2
    exit 1
  fi
fi

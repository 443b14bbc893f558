#!/usr/bin/env bash
# Installs Debian's nftables (the `nft` command) for the partition tests
# (crates/backchannel/tests/common/partition.rs), which drop and lose packets
# with nftables rules inside network namespaces of their own: this kernel has
# no `tc netem`. Idempotent: does nothing when `nft` is already there. Prints
# the binary's path. Needs root, or sudo without a password; fails saying so.
set -euo pipefail

find_nft() {
    command -v nft 2>/dev/null && return 0
    for p in /usr/sbin/nft /sbin/nft /usr/bin/nft; do
        if [ -x "$p" ]; then
            echo "$p"
            return 0
        fi
    done
    return 1
}

if NFT="$(find_nft)"; then
    echo "nft already installed: $NFT"
    exit 0
fi

if [ "$(id -u)" -eq 0 ]; then
    AS_ROOT=()
elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
    AS_ROOT=(sudo -n)
else
    echo "install-nftables.sh: nft is missing and installing it needs root: run" \
        "\`sudo apt-get install nftables\` (or this script as root)" >&2
    exit 1
fi
if ! command -v apt-get >/dev/null; then
    echo "install-nftables.sh: nft is missing and there is no apt-get here: install" \
        "nftables with the system's package manager" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
# The package lists may be missing or stale (a fresh container): update them once if the
# first try finds no candidate.
if ! "${AS_ROOT[@]}" apt-get install -y -q --no-install-recommends nftables >/dev/null 2>&1; then
    "${AS_ROOT[@]}" apt-get update -q >/dev/null
    "${AS_ROOT[@]}" apt-get install -y -q --no-install-recommends nftables >/dev/null
fi

if ! NFT="$(find_nft)"; then
    echo "install-nftables.sh: apt-get installed nftables but there is no nft command" >&2
    exit 1
fi
echo "nft installed: $NFT"

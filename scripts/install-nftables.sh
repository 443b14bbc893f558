#!/usr/bin/env bash
# Installs Debian's nftables (the `nft` command) for the partition tests
# (crates/backchannel/tests/common/partition.rs), which drop and lose packets
# with nftables rules inside network namespaces of their own: this kernel has
# no `tc netem`. See install-debian.sh.
exec bash "$(dirname "$0")/install-debian.sh" nftables nft

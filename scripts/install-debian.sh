#!/usr/bin/env bash
# Installs a Debian package that tests need, if its command is missing:
#   bash scripts/install-debian.sh PACKAGE COMMAND
# nftables (`nft`) for the partition tests (crates/backchannel/tests/common/partition.rs),
# tmux for the terminal UI's end-to-end test (crates/backchannel/tests/ui.rs). Idempotent:
# does nothing when COMMAND is already there. Prints the command's path. Needs root, or
# sudo without a password; fails saying so.
set -euo pipefail

if [ $# -ne 2 ]; then
    echo "usage: $0 PACKAGE COMMAND" >&2
    exit 2
fi
PACKAGE=$1
COMMAND=$2

find_command() {
    command -v "$COMMAND" 2>/dev/null && return 0
    for d in /usr/sbin /sbin /usr/bin /bin; do
        if [ -x "$d/$COMMAND" ]; then
            echo "$d/$COMMAND"
            return 0
        fi
    done
    return 1
}

if FOUND="$(find_command)"; then
    echo "$COMMAND already installed: $FOUND"
    exit 0
fi

if [ "$(id -u)" -eq 0 ]; then
    AS_ROOT=()
elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
    AS_ROOT=(sudo -n)
else
    echo "install-debian.sh: $COMMAND is missing and installing it needs root: run" \
        "\`sudo apt-get install $PACKAGE\` (or this script as root)" >&2
    exit 1
fi
if ! command -v apt-get >/dev/null; then
    echo "install-debian.sh: $COMMAND is missing and there is no apt-get here: install" \
        "$PACKAGE with the system's package manager" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
# The package lists may be missing or stale (a fresh container): update them once if the
# first try finds no candidate.
if ! "${AS_ROOT[@]}" apt-get install -y -q --no-install-recommends "$PACKAGE" >/dev/null 2>&1; then
    "${AS_ROOT[@]}" apt-get update -q >/dev/null
    "${AS_ROOT[@]}" apt-get install -y -q --no-install-recommends "$PACKAGE" >/dev/null
fi

if ! FOUND="$(find_command)"; then
    echo "install-debian.sh: apt-get installed $PACKAGE but there is no $COMMAND command" >&2
    exit 1
fi
echo "$COMMAND installed: $FOUND"

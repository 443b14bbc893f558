#!/usr/bin/env bash
# Makes the fixtures of one backchannel release's relay on a NATS JetStream cluster
# (`relay --store nats`): the three nodes' JetStream store directories with envelopes
# waiting, and two clients' homes, which a later relay on the same stores must still
# serve (crates/backchannel/tests/nats_upgrade.rs opens them). The embedded store's
# fixtures are made by scripts/make-fixtures.sh; this is its pattern for the cluster.
#
#   scripts/make-nats-fixtures.sh PATH/TO/backchannel [RELEASE]
#
# PATH/TO/backchannel must be built at the commit RELEASE names (default 94ba14f). The
# set is written from scratch into
# crates/backchannel/tests/fixtures/release-RELEASE-nats/ (an existing one is replaced,
# except its README.md, which is written by hand from what this script prints).
# nats-server is the pinned one (bash scripts/install-nats.sh), or $NATS_SERVER.
#
# What is fixed, so that a test can use the fixtures at any later date:
# - the passphrase of both homes: "fixture-passphrase";
# - the relay's address: 127.0.0.1:29472 (below Linux's ephemeral ports, 32768-60999,
#   so no client socket takes it; not the embedded fixtures' 29471, so both tests may
#   run at once); the homes hold it with the relay's PIN;
# - the relay's identity: a relay on NATS keeps no files, its key and certificate are
#   the record `bc.tls` of the stream BC_META, shared by every relay of the cluster, so
#   the stores carry the PIN;
# - the cluster: three nodes n1, n2, n3 of cluster "bc-test" (the names the tests'
#   harness, crates/backchannel/tests/common/nats.rs, gives its nodes: JetStream knows
#   its peers by server name, and a stream its cluster by name), `sync_interval: always`;
#   their ports here are 29481-29489, which the stores do not record;
# - the relay keeps envelopes for 36500 days (`--envelope-ttl`, the envelope stream's
#   `max_age`, which a later relay with the same subjects and limits keeps).
#
# The story (every text is in the set's README.md):
#   1. alice creates channel deal-room and admits bob; they exchange a message each and
#      read them (the channel's sequencer has granted claims: the join's commit).
#   2. alice creates the drop box tips-line (proof of work 8 bits); an anonymous source
#      leaves letter 1, alice reads it and replies (the reply waits at the relay for the
#      source's receipt).
#   3. alice sends two messages and a small file (notes.txt) that bob never fetches
#      (waiting at the relay).
#   4. the source leaves letter 2 with an attachment and letter 3 (waiting at the relay,
#      alice never fetches them).
#   5. the relay stops, then the three nodes, each with SIGTERM (a clean shutdown).
set -euo pipefail

if [[ $# -lt 1 || ! -x $1 ]]; then
    echo "usage: $0 PATH/TO/backchannel [RELEASE]  (a binary built at commit RELEASE)" >&2
    exit 2
fi
BIN=$(realpath "$1")
RELEASE=${2:-94ba14f}
REPO=$(cd "$(dirname "$0")/.." && pwd)
OUT=$REPO/crates/backchannel/tests/fixtures/release-$RELEASE-nats
PORT=29472
LISTEN=127.0.0.1:$PORT
NATS_BASE=29481
export BACKCHANNEL_PASSPHRASE=fixture-passphrase
export RUST_LOG=info
NATS=${NATS_SERVER:-$REPO/.tools/nats/bin/nats-server}
if [[ ! -x $NATS ]]; then
    bash "$REPO/scripts/install-nats.sh" >/dev/null
fi

WORK=$(mktemp -d)
RELAY_PID=
NATS_PIDS=()
cleanup() {
    if [[ -n $RELAY_PID ]]; then
        kill -TERM "$RELAY_PID" 2>/dev/null || true
        wait "$RELAY_PID" 2>/dev/null || true
    fi
    for pid in "${NATS_PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${NATS_PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$WORK"
}
trap cleanup EXIT
cd "$WORK"

for p in $PORT $(seq $NATS_BASE $((NATS_BASE + 8))); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
        echo "something already listens on 127.0.0.1:$p; stop it first" >&2
        exit 1
    fi
done

if [[ -d $OUT ]]; then
    find "$OUT" -mindepth 1 -maxdepth 1 ! -name README.md -exec rm -rf {} +
fi
mkdir -p "$OUT/nats" "$OUT/source"

# ---- the cluster ----
# Node i (1-3): client port NATS_BASE+i-1, monitoring +3, routes +6.
ROUTES=""
for i in 1 2 3; do
    ROUTES="$ROUTES    nats-route://127.0.0.1:$((NATS_BASE + 5 + i))
"
done
NATS_URLS=()
for i in 1 2 3; do
    cat >"$WORK/n$i.conf" <<CONF
server_name: n$i
listen: 127.0.0.1:$((NATS_BASE + i - 1))
http: 127.0.0.1:$((NATS_BASE + 2 + i))

jetstream {
  store_dir: "$OUT/nats/n$i"
  sync_interval: always
}

cluster {
  name: bc-test
  listen: 127.0.0.1:$((NATS_BASE + 5 + i))
  routes: [
$ROUTES  ]
}
CONF
    "$NATS" -c "$WORK/n$i.conf" >"$WORK/n$i.log" 2>&1 &
    NATS_PIDS+=($!)
    NATS_URLS+=(--nats "nats://127.0.0.1:$((NATS_BASE + i - 1))")
done
# Ready when every node is current with a JetStream meta leader (plain /healthz).
ready=0
for _ in $(seq 150); do
    ok=0
    for i in 1 2 3; do
        python3 - "$((NATS_BASE + 2 + i))" <<'PY' && ok=$((ok + 1)) || true
import sys, urllib.request
try:
    urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/healthz", timeout=1)
except Exception:
    sys.exit(1)
PY
    done
    if [[ $ok = 3 ]]; then
        ready=1
        break
    fi
    sleep 0.2
done
if [[ $ready != 1 ]]; then
    echo "the cluster did not come up:" >&2
    cat "$WORK"/n*.log >&2
    exit 1
fi

# ---- helpers ----

# Starts the relay on the cluster; waits for its address line. Its --data directory is
# given only because the release's relay has a default one; a relay on NATS keeps
# nothing there (checked at the end).
start_relay() {
    : >"$WORK/relay.out"
    "$BIN" relay --listen "$LISTEN" --data "$WORK/relay-data" --store nats "${NATS_URLS[@]}" \
        --nats-replicas 3 --envelope-ttl 36500d --stats-interval 1s \
        >"$WORK/relay.out" 2>>"$WORK/relay.log" &
    RELAY_PID=$!
    for _ in $(seq 300); do
        if grep -q '^relay address: ' "$WORK/relay.out"; then
            ADDRESS=$(sed -n 's/^relay address: //p' "$WORK/relay.out" | head -1)
            return
        fi
        sleep 0.1
    done
    echo "the relay did not start:" >&2
    cat "$WORK/relay.log" >&2
    exit 1
}

stop_relay() {
    kill -TERM "$RELAY_PID"
    wait "$RELAY_PID" || true
    RELAY_PID=
}

# Envelopes stored right now, from the relay's latest counts line (one a second).
stored_envelopes() {
    sleep 1.5
    grep -o ' envelopes=[0-9]*' "$WORK/relay.log" | tail -1 | cut -d= -f2
}

alice() { BACKCHANNEL_HOME=$OUT/alice "$BIN" "$@"; }
bob() { BACKCHANNEL_HOME=$OUT/bob "$BIN" "$@"; }
# The anonymous source has no home (drop send needs none and makes none).
source_() { BACKCHANNEL_HOME=$WORK/no-home "$BIN" "$@"; }
# Releases from commit d051f37 on refuse `drop send` and `drop check` without a proxy unless --direct.
DIRECT=$("$BIN" drop send --help | grep -q -- '--direct' && echo --direct || true)

# Line i (from 0) of a deterministic text, cut to a size: the test writes the same.
pattern() { # prefix size
    (set +o pipefail; awk -v p="$1" 'BEGIN { for (i = 0; i < 100000; i++) printf "%s %06d\n", p, i }' | head -c "$2")
}

# ---- 1. the channel ----
start_relay
echo "relay: $ADDRESS"
alice init --name alice --relay "$ADDRESS"
bob init --name bob --relay "$ADDRESS"
alice channel new deal-room
INVITE=$(alice invite deal-room)
bob join "$INVITE"
alice sync
bob sync --wait 5
bob sync
bob channels | grep -q deal-room
alice send deal-room "welcome to the deal room"
bob send deal-room "glad to be here"
bob read deal-room
alice read deal-room
# (for the fingerprints printed at the end)
bob read deal-room --all --json >"$WORK/bob-read.json"
alice read deal-room --all --json >"$WORK/alice-read.json"

# ---- 2. the drop box, a letter read and answered ----
DROP=$(alice drop create tips-line --pow-bits 8)
source_ drop send $DIRECT "$DROP" "the ledger is in locker 12" >"$OUT/source/receipt-1.txt"
alice drop read tips-line --json --save-to "$WORK/letters" >"$WORK/letter-1.json"
LETTER_1=$(python3 -c 'import json,sys; print(json.loads(sys.stdin.readline())["id"])' <"$WORK/letter-1.json")
alice drop reply tips-line "$LETTER_1" "received; do not come to the office"

# ---- 3. what waits for bob ----
alice send deal-room "first look: the valuation is too high"
alice send deal-room "second: we need the audited accounts"
pattern "notes line" 3000 >"$WORK/notes.txt"
alice send deal-room --file "$WORK/notes.txt"

# ---- 4. what waits for alice ----
printf 'page one of the ledger, line by line\n' >"$WORK/scan.txt"
source_ drop send $DIRECT "$DROP" "a scan of the first page" --file "$WORK/scan.txt" >"$OUT/source/receipt-2.txt"
source_ drop send $DIRECT "$DROP" "a third letter, still at the relay" >"$OUT/source/receipt-3.txt"
STORED=$(stored_envelopes)

# ---- 5. a clean stop ----
stop_relay
for pid in "${NATS_PIDS[@]}"; do
    kill -TERM "$pid"
done
for pid in "${NATS_PIDS[@]}"; do
    wait "$pid" || true
done
NATS_PIDS=()
if [[ -n $(ls -A "$WORK/relay-data" 2>/dev/null) ]]; then
    echo "the relay on NATS wrote into its --data directory: $(ls -A "$WORK/relay-data")" >&2
    exit 1
fi

# ---- the record ----
NOTES_SHA=$(sha256sum "$WORK/notes.txt" | cut -d' ' -f1)
printf '%s\n' "$ADDRESS" >"$OUT/relay-address.txt"
printf '%s\n' "$DROP" >"$OUT/source/drop-address.txt"
echo "made $OUT ($(du -sh "$OUT" | cut -f1); stores: $(du -sh "$OUT/nats" | cut -f1)):"
echo "  relay address: $ADDRESS"
echo "  envelopes stored at the relay: $STORED"
echo "  notes.txt: 3000 bytes, SHA-256 $NOTES_SHA"
fingerprint() { # of the first message from $2 in the `read --json` lines of file $1
    python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("from") == sys.argv[1]:
        print(m["from_fingerprint"]); break' "$2" <"$1"
}
echo "  alice's fingerprint: $(fingerprint "$WORK/bob-read.json" alice)"
echo "  bob's fingerprint: $(fingerprint "$WORK/alice-read.json" bob)"
echo "  nats-server: $("$NATS" --version)"
echo "  binary: $BIN (check that it was built at commit $RELEASE)"
echo "update $OUT/README.md (address, fingerprints, counts) and the test's constants"

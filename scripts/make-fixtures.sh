#!/usr/bin/env bash
# Makes the on-disk fixtures of one backchannel release: a relay's data directory
# and two clients' homes in known states, which later code must still open, read
# and keep using (crates/backchannel/tests/formats.rs opens them).
#
#   scripts/make-fixtures.sh PATH/TO/backchannel [RELEASE]
#
# PATH/TO/backchannel must be built at the commit RELEASE names (default 94ba14f):
# the fixtures are worth something only if the release users have made them. The
# set is written from scratch into
# crates/backchannel/tests/fixtures/release-RELEASE/ (an existing one is replaced,
# except its README.md, which is written by hand from what this script prints and
# lists what the set holds, for the test to check).
# A later format change copies this script's pattern for its own release.
#
# What is fixed, so that a test can use the fixtures at any later date:
# - the passphrase of both homes: "fixture-passphrase";
# - the relay's address: 127.0.0.1:29471 (below Linux's ephemeral ports, 32768-60999,
#   so no client socket takes it); the homes hold it with its port and the relay's
#   PIN, so the test runs the relay of the fixture on that same port;
# - the relay keeps envelopes for 36500 days: an envelope's expiry is written into
#   the store when it arrives (`--envelope-ttl` of the relay that stored it), so the
#   fixture's waiting envelopes must be stored with a long one, whatever flag the
#   test's relay gets later;
# - the file whose transfer is in progress: /tmp/backchannel-fixture-RELEASE/term-sheet.txt.
#   Alice's home records that absolute path (a resume is `send --file` of the same
#   path), so the test writes the same bytes there again (a deterministic pattern,
#   below) before resuming.
#
# The story (every text, name, size and hash is in the set's README.md):
#   1. alice creates channel deal-room and admits bob.
#   2. alice and bob exchange a message each and read them (read messages).
#   3. bob sends a small file (notes.txt) and a message; alice fetches both but reads
#      neither (a complete file, unsaved, sealed in alice's home; an unread message).
#   3b. bob creates channel side-room, admits alice, and writes there; alice fetches
#      it but never reads it (an unread message in her home).
#   4. alice creates the drop box tips-line; an anonymous source leaves letter 1, alice
#      reads it and replies (the reply waits at the relay for the source's receipt);
#      the source leaves letter 2 with an attachment, which alice fetches but does not
#      read (sealed in alice's home).
#   5. alice sends a message that bob fetches but does not read, then two more that
#      bob never fetches (waiting at the relay).
#   6. alice sends term-sheet.txt (3 parts) while the relay is nearly full: the offer
#      and part 0 are stored, parts 1 and 2 are refused and stay in her outbox; the
#      send stops with "the file is not completely sent" (a transfer in progress).
#   7. the source leaves letter 3 (waiting at the relay, alice never fetches it).
#   8. with the relay stopped, bob writes a message (queued in his home) and exports
#      it as a courier bundle for alice, who has not imported it.
set -euo pipefail

if [[ $# -lt 1 || ! -x $1 ]]; then
    echo "usage: $0 PATH/TO/backchannel [RELEASE]  (a binary built at commit RELEASE)" >&2
    exit 2
fi
BIN=$(realpath "$1")
RELEASE=${2:-94ba14f}
REPO=$(cd "$(dirname "$0")/.." && pwd)
OUT=$REPO/crates/backchannel/tests/fixtures/release-$RELEASE
PORT=29471
LISTEN=127.0.0.1:$PORT
export BACKCHANNEL_PASSPHRASE=fixture-passphrase
# The relay's own log level (its first stdout line is the address either way).
export RUST_LOG=info
SRC_DIR=/tmp/backchannel-fixture-$RELEASE
TERM_SHEET=$SRC_DIR/term-sheet.txt
# 2 full parts of 64 KiB and a short third one: three parts, the offer alone first.
TERM_SHEET_SIZE=132072

# Scratch space: the relay's logs, the source's files, and the working directory
# of every command (so that no default output folder lands in the repository).
WORK=$(mktemp -d)
RELAY_PID=
cleanup() {
    if [[ -n $RELAY_PID ]]; then
        kill -TERM "$RELAY_PID" 2>/dev/null || true
        wait "$RELAY_PID" 2>/dev/null || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT
cd "$WORK"

if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then
    echo "something already listens on $LISTEN; stop it first" >&2
    exit 1
fi

if [[ -d $OUT ]]; then
    find "$OUT" -mindepth 1 -maxdepth 1 ! -name README.md -exec rm -rf {} +
fi
mkdir -p "$OUT/courier" "$OUT/source" "$SRC_DIR"

# ---- helpers ----

# Starts the relay on the fixture's data directory with extra flags; waits for
# its address line.
start_relay() {
    : >"$WORK/relay.out"
    "$BIN" relay --listen "$LISTEN" --data "$OUT/relay" --envelope-ttl 36500d \
        --stats-interval 1s "$@" >"$WORK/relay.out" 2>>"$WORK/relay.log" &
    RELAY_PID=$!
    for _ in $(seq 100); do
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

# SIGTERM: the relay finishes what is in flight and closes its store cleanly.
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
    # (head closes the pipe early: awk's SIGPIPE is expected, not a failure)
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

# ---- 2. read messages ----
alice send deal-room "welcome to the deal room"
bob send deal-room "glad to be here"
bob read deal-room
alice read deal-room

# ---- 3. a complete file and a message alice fetches but does not read ----
pattern "notes line" 3000 >"$WORK/notes.txt"
bob send deal-room --file "$WORK/notes.txt"
bob send deal-room "the notes are attached; the numbers are in the second table"

# ---- 3b. a second channel, made by bob, that alice fetches but never reads ----
# (read_upto is per channel, and a member's own message marks its channel read, so
# an unread message can stay in alice's home only in a channel she does not write in.)
bob channel new side-room
INVITE=$(bob invite side-room)
alice join "$INVITE"
bob sync
alice sync --wait 5
alice sync
bob send side-room "a quiet word: the seller is flexible"

# ---- 4. the drop box ----
DROP=$(alice drop create tips-line --pow-bits 8)
source_ drop send $DIRECT "$DROP" "the ledger is in locker 12" >"$OUT/source/receipt-1.txt"
alice drop read tips-line --json --save-to "$WORK/letters" >"$WORK/letter-1.json"
LETTER_1=$(python3 -c 'import json,sys; print(json.loads(sys.stdin.readline())["id"])' <"$WORK/letter-1.json")
alice drop reply tips-line "$LETTER_1" "received; do not come to the office"
printf 'page one of the ledger, line by line\n' >"$WORK/scan.txt"
source_ drop send $DIRECT "$DROP" "a scan of the first page" --file "$WORK/scan.txt" >"$OUT/source/receipt-2.txt"

# ---- 5. messages bob fetches but does not read, and two he never fetches ----
# (alice's send fetches letter 2 first: it stays unread in her home.)
alice send deal-room "first look: the valuation is too high"
bob sync
alice send deal-room "second: we need the audited accounts"
alice send deal-room "third: meet on thursday at ten"

# ---- 6. a file in progress ----
pattern "term sheet line" "$TERM_SHEET_SIZE" >"$TERM_SHEET"
stop_relay
start_relay
# Room for the offer (1 envelope) and part 0 (17 envelopes), nothing more.
LIMIT=$(($(stored_envelopes) + 18))
stop_relay
start_relay --max-stored-envelopes "$LIMIT"
if alice send deal-room --file "$TERM_SHEET" 2>"$WORK/send-file.err"; then
    echo "the transfer of $TERM_SHEET was meant to stop partway, but it completed" >&2
    exit 1
fi
grep -q 'the file is not completely sent' "$WORK/send-file.err" || {
    cat "$WORK/send-file.err" >&2
    exit 1
}
STORED=$(stored_envelopes)
stop_relay
if [[ $STORED -ne $LIMIT ]]; then
    echo "expected $LIMIT envelopes at the relay after the interrupted send, found $STORED" >&2
    exit 1
fi

# ---- 7. a letter alice never fetches ----
start_relay
source_ drop send $DIRECT "$DROP" "a third letter, still at the relay" >"$OUT/source/receipt-3.txt"
stop_relay

# ---- 8. a courier bundle (no relay answers) ----
if bob send deal-room "carried by hand: the accounts are coming" 2>"$WORK/queued.err"; then
    echo "bob's send should have been queued (the relay is stopped)" >&2
    exit 1
fi
grep -q queued "$WORK/queued.err"
bob courier export deal-room --to "$OUT/courier/bob-to-alice.bundle"

# ---- the record ----
TERM_SHEET_SHA=$(sha256sum "$TERM_SHEET" | cut -d' ' -f1)
NOTES_SHA=$(sha256sum "$WORK/notes.txt" | cut -d' ' -f1)
rm -rf "$SRC_DIR"
printf '%s\n' "$ADDRESS" >"$OUT/relay-address.txt"
printf '%s\n' "$DROP" >"$OUT/source/drop-address.txt"
echo "made $OUT ($(du -sh "$OUT" | cut -f1)):"
echo "  relay address: $ADDRESS"
echo "  term-sheet.txt: $TERM_SHEET_SIZE bytes, SHA-256 $TERM_SHEET_SHA"
echo "  notes.txt: 3000 bytes, SHA-256 $NOTES_SHA"
echo "  commit: $(git -C "$REPO" rev-parse HEAD) (check that the binary was built there)"
echo "update $OUT/README.md (address, fingerprints above, hashes) and the test's constants"

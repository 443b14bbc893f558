#!/usr/bin/env python3
"""The file-transfer figures of BENCHMARKS.md: a relay and two homes on loopback, the real
binary, one file sent with `send --file` and received with `sync` + `read --save-to`, each
timed; beside it, in the same round, `bench relay` with one client (the relay's raw envelope
rate for one sender, the baseline). Rounds are interleaved; medians are printed.

    cargo build --release && python3 scripts/bench-files.py [ROUNDS] [MIB]   # default 3, 100
"""
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release", "backchannel")
ENVELOPE_DATA = 4056 - 28  # payload bytes per envelope (CHUNK_DATA)


def run(home, *args, check=True):
    # The cheap test setting of the vault's key derivation: the figures are the transfer's,
    # not the ~1 s every command spends deriving the real key (BENCHMARKS.md has that).
    env = dict(os.environ, BACKCHANNEL_PASSPHRASE="bench", BACKCHANNEL_HOME=home, BACKCHANNEL_INSECURE_TEST_KDF="1")
    out = subprocess.run([BIN, *args], capture_output=True, text=True, env=env)
    if check and out.returncode != 0:
        sys.exit(f"`backchannel {' '.join(args)}` failed: {out.stderr}")
    return out.stdout


def timed(home, *args):
    start = time.monotonic()
    run(home, *args)
    return time.monotonic() - start


def one_round(mib):
    with tempfile.TemporaryDirectory() as d:
        relay = subprocess.Popen(
            [BIN, "relay", "--listen", "127.0.0.1:0", "--data", os.path.join(d, "relay"),
             "--max-envelopes-per-mailbox", "100000", "--max-requests-per-second", "0",
             "--address-store-rate", "0"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        try:
            address = relay.stdout.readline().strip().removeprefix("relay address: ")
            a, b = os.path.join(d, "a"), os.path.join(d, "b")
            run(a, "init", "--name", "alice", "--relay", address)
            run(b, "init", "--name", "bob", "--relay", address)
            run(a, "channel", "new", "files")
            invite = run(a, "invite", "files").strip()
            run(b, "join", invite)
            run(a, "sync")
            run(b, "sync", "--wait", "5")
            path = os.path.join(d, "payload.bin")
            with open(path, "wb") as f:
                f.write(os.urandom(mib << 20))
            send = timed(a, "send", "files", "--file", path)
            receive = timed(b, "sync")
            save = timed(b, "read", "files", "--save-to", os.path.join(d, "out"))
            with open(path, "rb") as f1, open(os.path.join(d, "out", "payload.bin"), "rb") as f2:
                if hashlib.sha256(f1.read()).digest() != hashlib.sha256(f2.read()).digest():
                    sys.exit("the received file differs")
        finally:
            relay.terminate()
            relay.wait()
    base = json.loads(subprocess.run(
        [BIN, "bench", "relay", "--clients", "1", "--messages", "20000", "--json"],
        capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1])
    envelopes = (mib << 20) / ENVELOPE_DATA
    return {
        "send_s": send, "receive_s": receive, "save_s": save,
        "send_mib_s": mib / send, "receive_mib_s": mib / receive,
        "send_env_s": envelopes / send, "receive_env_s": envelopes / receive,
        "baseline_env_s": base["envelopes_per_s"],
    }


def main():
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    mib = int(sys.argv[2]) if len(sys.argv) > 2 else 100
    results = [one_round(mib) for _ in range(rounds)]
    med = {k: statistics.median(r[k] for r in results) for k in results[0]}
    print(f"| {mib} MiB, medians of {rounds} | send | receive (sync) | save (read) |")
    print("|---|---|---|---|")
    print(f"| time | {med['send_s']:.1f} s | {med['receive_s']:.1f} s | {med['save_s']:.2f} s |")
    print(f"| MiB/s | {med['send_mib_s']:.1f} | {med['receive_mib_s']:.1f} | |")
    print(f"| envelopes/s | {med['send_env_s']:,.0f} | {med['receive_env_s']:,.0f} | |")
    print(f"| ratio to `bench relay --clients 1` ({med['baseline_env_s']:,.0f} env/s, same rounds) "
          f"| {med['send_env_s'] / med['baseline_env_s']:.2f} | {med['receive_env_s'] / med['baseline_env_s']:.2f} | |")


if __name__ == "__main__":
    main()

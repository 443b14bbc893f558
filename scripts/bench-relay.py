#!/usr/bin/env python3
"""The relay figures of BENCHMARKS.md: each configuration run ROUNDS times, interleaved
so that a noisy neighbour hits all of them alike, and the median of each field printed
as a Markdown table. Starts (and stops) a local 3-node NATS cluster with
scripts/nats-cluster.sh for the clustered runs.

    cargo build --release && python3 scripts/bench-relay.py [ROUNDS]   # default 3
"""
import json
import os
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release", "backchannel")
NATS = ["--nats", "nats://127.0.0.1:14222", "--nats", "nats://127.0.0.1:14223", "--nats", "nats://127.0.0.1:14224"]

RUNS = {
    "embedded, 1 relay, as fast as it goes": ["relay", "--clients", "16", "--messages", "50000"],
    "NATS R3, 2 relays, as fast as it goes": ["relay", "--store", "nats", *NATS, "--relays", "2", "--clients", "16", "--messages", "20000"],
    "NATS R3, 1 relay, as fast as it goes": ["relay", "--store", "nats", *NATS, "--clients", "16", "--messages", "20000"],
    "embedded, 2,000 envelopes/s": ["relay", "--clients", "16", "--messages", "20000", "--rate", "2000"],
    "10,000 idle connections": ["connections", "--count", "10000"],
}


def bench(args):
    out = subprocess.run([BIN, "bench", *args, "--json"], capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"bench {' '.join(args)} failed: {out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    cluster = os.path.join(ROOT, "target", "bench-nats")
    subprocess.run(["bash", os.path.join(ROOT, "scripts", "nats-cluster.sh"), "start", cluster], check=True)
    results = {name: [] for name in RUNS}
    try:
        for r in range(rounds):
            for name, args in RUNS.items():
                res = bench(args)
                results[name].append(res)
                print(f"round {r + 1}, {name}: {json.dumps(res)}", file=sys.stderr)
    finally:
        subprocess.run(["bash", os.path.join(ROOT, "scripts", "nats-cluster.sh"), "stop", cluster])
    med = lambda name, f: statistics.median(f(x) for x in results[name])
    print(f"Medians of {rounds} interleaved rounds.\n")
    print("| run | envelopes/s | baseline envelopes/s | ratio | p50 ms | p99 ms | p99.9 ms | relay CPU s | relay peak RSS MiB |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name in RUNS:
        if RUNS[name][0] != "relay":
            continue
        print(
            f"| {name} | {med(name, lambda x: x['envelopes_per_s']):,.0f} "
            f"| {med(name, lambda x: x['baseline']['envelopes_per_s']):,.0f} "
            f"| {med(name, lambda x: x['ratio_to_baseline']):.2f} "
            f"| {med(name, lambda x: x['latency_ms']['p50']):.1f} "
            f"| {med(name, lambda x: x['latency_ms']['p99']):.1f} "
            f"| {med(name, lambda x: x['latency_ms']['p999']):.1f} "
            f"| {med(name, lambda x: x['relay_cpu_s']):.2f} "
            f"| {med(name, lambda x: x['relay_rss_mib']):.0f} |"
        )
    for name in RUNS:
        if RUNS[name][0] == "connections":
            print(
                f"\n{name}: {med(name, lambda x: x['kib_per_connection']):.1f} KiB per connection "
                f"(relay RSS {med(name, lambda x: x['relay_rss_mib']):.0f} MiB)"
            )


if __name__ == "__main__":
    main()

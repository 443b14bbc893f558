#!/usr/bin/env python3
"""Runs `backchannel bench relay` and `bench connections` once at a small size and
checks that each JSON report has every field BENCHMARKS.md and the issue name, with
sane values. Used by .ci/run. With --nats URL..., also runs `bench relay --store nats`.

    python3 scripts/check-bench-json.py target/debug/backchannel [--nats URL ...]
"""
import json
import subprocess
import sys


def run(binary, *args):
    out = subprocess.run([binary, "bench", *args, "--json"], check=True, capture_output=True, text=True, timeout=600)
    lines = [l for l in out.stdout.splitlines() if l.strip()]
    assert len(lines) == 1, f"one JSON object expected, got: {out.stdout!r}"
    return json.loads(lines[0])


def number(report, *path):
    v = report
    for k in path:
        assert k in v, f"missing field {'.'.join(path)} in {report}"
        v = v[k]
    assert isinstance(v, (int, float)) and v >= 0, f"{'.'.join(path)} is not a number >= 0: {v!r}"
    return v


def check_relay(r, store):
    assert r.get("store") == store, r
    eps = number(r, "envelopes_per_s")
    assert eps > 0, r
    p50, p99, p999 = (number(r, "latency_ms", p) for p in ("p50", "p99", "p999"))
    assert p50 <= p99 <= p999, r
    number(r, "relay_cpu_s")
    assert number(r, "relay_rss_mib") > 0, r
    assert isinstance(r.get("baseline", {}).get("name"), str), r
    base = number(r, "baseline", "envelopes_per_s")
    ratio = number(r, "ratio_to_baseline")
    assert abs(ratio - eps / base) < 1e-6 * max(1.0, ratio), r
    # CPU per envelope, per process, in the same run (issue 20, point 2).
    cpu = r["cpu_us_per_envelope"]
    assert len(cpu["relays"]) == r["relays"] and all(x > 0 for x in cpu["relays"]), r
    assert number(r, "cpu_us_per_envelope", "load_generator") > 0, r
    number(r, "baseline", "cpu_us_per_envelope", "bench_process")
    nodes = cpu["nats_nodes"]
    if store == "nats":
        assert len(nodes) == 3 and all(x > 0 for x in nodes), f"the local NATS nodes' CPU: {r}"
        assert len(r["baseline"]["cpu_us_per_envelope"]["nats_nodes"]) == 3, r
    else:
        assert nodes == [], r
    number(r, "idle_mailboxes")
    number(r, "idle_connections")
    print(f"bench relay --store {store}: {eps:.0f} envelopes/s, {ratio:.2f} x baseline, p99 {p99:.1f} ms, "
          f"CPU µs/envelope: relays {', '.join(f'{x:.0f}' for x in cpu['relays'])}, "
          f"nodes {', '.join(f'{x:.0f}' for x in nodes) or '-'}, load generator {cpu['load_generator']:.0f}")


def main():
    binary = sys.argv[1]
    nats = sys.argv[sys.argv.index("--nats") + 1:] if "--nats" in sys.argv else []
    r = run(binary, "relay", "--clients", "4", "--messages", "400", "--idle-connections", "50")
    assert r["idle_connections"] == 50, r
    check_relay(r, "embedded")
    if nats:
        args = ["relay", "--store", "nats", "--relays", "2", "--clients", "4", "--messages", "400",
                "--idle-mailboxes", "200"]
        for u in nats:
            args += ["--nats", u]
        r = run(binary, *args)
        assert r["idle_mailboxes"] == 200, r
        check_relay(r, "nats")
    c = run(binary, "connections", "--count", "50")
    assert number(c, "connections") == 50, c
    assert number(c, "relay_rss_mib") > 0, c
    number(c, "kib_per_connection")
    print(f"bench connections: {c['kib_per_connection']:.1f} KiB per connection")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Draws the cost at scale (issue 20, point 5) from the JSON lines of the scale harness.

    export BC_SCALE_OUT=scale.jsonl
    BC_SCALE_MEMBERS=2,10,100,1000 BC_SCALE_CHANNELS=1,10,100,1000 \\
        cargo test --release -p backchannel-client --lib sim::scale::cost_at_scale -- --nocapture
    BC_SCALE_TREE=sparse BC_SCALE_MEMBERS=2,10,100 BC_SCALE_CHANNELS= \\
        cargo test --release -p backchannel-client --lib sim::scale::cost_at_scale -- --nocapture
    python3 scripts/plot-scale.py scale.jsonl docs/

Writes docs/scale-members.png and docs/scale-channels.png: log-log, each measured curve
beside the growth the issue expects (O(n) for a message, drawn as n - 1 copies;
O(log n) cryptography + O(n) fan-out for adding and removing; O(channels) for an idle
sync), each reference line drawn
through the curve's smallest size. A step from one size to the next that grows more than
1.5 times faster than expected is circled in red, with the reason given by
--note "op:size:text" (repeatable) or else the factor. Times are CPU time of the whole
process (all threads), medians; the machine is shared, so wall time is drawn faint.

Needs matplotlib (`pip install matplotlib`); nothing in CI runs this.
"""

import argparse
import json
import math
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def load(paths):
    rows = []
    for path in paths:
        with open(path) as f:
            for raw in f:
                raw = raw.strip()
                if raw.startswith("{"):
                    rows.append(json.loads(raw))
    return rows


def table(rows, kind, size_key, tree=None):
    """{(op, size): row}, the last line of each winning (a later run replaces an earlier one)."""
    out = {}
    for r in rows:
        if r.get("kind") != kind:
            continue
        if tree is not None and r.get("tree", "sparse") != tree:
            continue
        out[(r["op"], r[size_key])] = r
    return out


def expected(kind, x, x0, y0):
    """The expected growth through (x0, y0)."""
    if kind == "linear":
        return y0 * x / x0
    if kind == "fan-out":
        # O(n): one copy for each of the n - 1 other members.
        return y0 * (x - 1) / (x0 - 1)
    if kind == "log+fan-out":
        # O(log n) cryptography plus O(n) fan-out, both terms weighing the same at the
        # smallest size (the O(n) term dominates above it).
        f = lambda n: math.log2(max(n, 2)) + n - 1  # noqa: E731
        return y0 * f(x) / f(x0)
    raise ValueError(kind)


def too_fast(xs, ys, kind):
    """(size, value, factor) where the step from the size before grew over 1.5 times faster than expected."""
    marks = []
    for i in range(1, len(xs)):
        want = expected(kind, xs[i], xs[i - 1], ys[i - 1])
        if ys[i] > 1.5 * want:
            marks.append((xs[i], ys[i], ys[i] / want))
    return marks


def curve(ax, pts, label, kind, colour, notes, key, style="o-", faint=None):
    pts = sorted(p for p in pts if p[1] is not None and p[1] > 0)
    if not pts:
        return
    xs = [p[0] for p in pts]
    ys = [p[1] for p in pts]
    ax.plot(xs, ys, style, color=colour, label=label)
    if faint:
        fpts = sorted(p for p in faint if p[1])
        ax.plot([p[0] for p in fpts], [p[1] for p in fpts], style, color=colour, alpha=0.25, lw=1)
    ref = [expected(kind, x, xs[0], ys[0]) for x in xs]
    ax.plot(xs, ref, ":", color=colour, alpha=0.7)
    for x, y, factor in too_fast(xs, ys, kind):
        ax.plot([x], [y], "o", ms=15, mfc="none", mec="red", mew=1.5)
        text = notes.get((key, x), f"{factor:.1f}x over expected")
        ax.annotate(text, (x, y), textcoords="offset points", xytext=(-8, 10), ha="right", fontsize=7,
                    color="red")


def finish(ax, xlabel, ylabel, title):
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.plot([], [], ":", color="grey", label="expected growth (dotted)")
    ax.legend(fontsize=7)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("jsonl", nargs="+")
    p.add_argument("outdir")
    p.add_argument("--note", action="append", default=[], help='"key:size:text", the reason for a mark')
    p.add_argument("--caption", action="append", default=[], help="a line under the members figure (what a short note means)")
    a = p.parse_args()
    notes = {}
    for n in a.note:
        key, size, text = n.split(":", 2)
        notes[(key, int(size))] = text
    rows = load(a.jsonl)
    if not rows:
        sys.exit("no JSON lines")

    pop = table(rows, "members", "members", "populated")
    sparse = table(rows, "members", "members", "sparse")

    def pts(t, op, field, scale=1.0):
        return [(s, r[field] * scale) for (o, s), r in t.items() if o == op and field in r]

    fig, (left, right) = plt.subplots(1, 2, figsize=(14, 6))
    for op, label, kind, colour in [
        ("send", "send one message (sender)", "fan-out", "tab:blue"),
        ("add", "add one member (admin's sync)", "log+fan-out", "tab:green"),
        ("remove", "remove one member", "log+fan-out", "tab:orange"),
        ("rotate", "self-update after a removal (each member)", "log+fan-out", "tab:red"),
        ("join", "newcomer reads the welcome", "linear", "tab:purple"),
    ]:
        curve(left, pts(pop, op, "cpu_median_s", 1000), label, kind, colour, notes, f"{op}-time",
              faint=pts(pop, op, "median_s", 1000))
    finish(left, "members", "CPU ms (median; wall time faint)", "Time per operation, populated tree")

    for op, label, kind, colour in [
        ("send", "send", "fan-out", "tab:blue"),
        ("add", "add one", "log+fan-out", "tab:green"),
        ("remove", "remove one", "log+fan-out", "tab:orange"),
    ]:
        curve(right, pts(pop, op, "bytes", 1 / 1024), label, kind, colour, notes, f"{op}-bytes")
    curve(right, pts(sparse, "add", "bytes", 1 / 1024), "add one, sparse tree", "log+fan-out", "tab:olive",
          notes, "sparse-add-bytes", style="s--")
    # A removal makes every other member rotate its mailbox: n - 1 self-update commits,
    # each fanned out to n - 1 members (derived from the measured remove and rotate).
    whole = []
    for (o, s), r in pop.items():
        rot = pop.get(("rotate", s))
        if o == "remove" and rot:
            whole.append((s, (r["bytes"] + (s - 1) * rot["bytes"]) / 1024))
    curve(right, whole, "one removal, whole channel (remove + n-1 rotations)", "log+fan-out", "tab:brown",
          notes, "removal-channel-bytes", style="^-")
    finish(right, "members", "KiB uploaded (request frames)", "Bytes uploaded per operation")
    fig.tight_layout()
    if a.caption:
        fig.subplots_adjust(bottom=0.1 + 0.03 * len(a.caption))
        fig.text(0.01, 0.01, "\n".join(a.caption), fontsize=8, color="red", va="bottom")
    out = os.path.join(a.outdir, "scale-members.png")
    fig.savefig(out, dpi=100)
    print(out)

    ch = table(rows, "channels", "channels")
    fig, (left, right) = plt.subplots(1, 2, figsize=(14, 6))
    curve(left, pts(ch, "idle_sync", "cpu_median_s", 1000) or pts(ch, "idle_sync", "median_s", 1000),
          "idle sync", "linear", "tab:blue", notes, "sync-time", faint=pts(ch, "idle_sync", "median_s", 1000))
    finish(left, "channels in the home", "CPU ms (median; wall time faint)", "Idle sync")
    curve(right, pts(ch, "idle_sync", "vault_bytes", 1 / 1024), "home on disk", "linear", "tab:brown", notes,
          "vault")
    finish(right, "channels in the home", "KiB", "Size of the home (vault, witness, sealed files)")
    fig.tight_layout()
    out = os.path.join(a.outdir, "scale-channels.png")
    fig.savefig(out, dpi=100)
    print(out)


if __name__ == "__main__":
    main()

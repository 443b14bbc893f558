#!/usr/bin/env python3
"""The terminal UI's idle CPU use and its display latency, in a real terminal (tmux).

Alice runs `backchannel ui` (holding her home itself, no daemon) in a tmux window; Bob sends
with plain `send` commands, each of which returns once the relay has the message. The latency
is from that return to the text appearing on Alice's screen (tmux capture-pane, polled every
10 ms), without cover traffic and with Alice's home set to cover traffic at 4/s. Idle CPU is
the UI process's user + system time over 10 s with nothing arriving, read from /proc.

Usage: python3 scripts/ui-measure.py [path/to/backchannel] (default target/release/backchannel;
build it with `cargo build --release`). Needs tmux (scripts/install-debian.sh tmux tmux).
"""
import json, os, statistics, subprocess, sys, tempfile, time

BIN = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "..", "target", "release", "backchannel")
BIN = os.path.abspath(BIN)
root = tempfile.mkdtemp()
SOCK = os.path.join(root, "tmux.sock")
# Throwaway homes: the cheap test setting of the vault's key derivation.
env = dict(os.environ, BACKCHANNEL_PASSPHRASE="pw", BACKCHANNEL_INSECURE_TEST_KDF="1")
TICKS = os.sysconf("SC_CLK_TCK")


def run(home, *a):
    r = subprocess.run([BIN, *a], env=dict(env, BACKCHANNEL_HOME=f"{root}/{home}"),
                       capture_output=True, text=True)
    if r.returncode:
        sys.exit(f"FAIL {a}: {r.stderr}")
    return r.stdout


def tmux(*a):
    return subprocess.run(["tmux", "-S", SOCK, *a], capture_output=True, text=True, check=True).stdout


def screen():
    return tmux("capture-pane", "-p", "-t", "ui")


def wait_for(text, within=30.0):
    deadline = time.time() + within
    while text not in screen():
        if time.time() > deadline:
            sys.exit(f"{text!r} not shown:\n{screen()}")
        time.sleep(0.01)


def ui_pid():
    """The `backchannel ui` process: the child of the window's shell."""
    shell = tmux("display-message", "-p", "-t", "ui", "#{pane_pid}").strip()
    for _ in range(100):
        for task in os.listdir(f"/proc/{shell}/task"):
            kids = open(f"/proc/{shell}/task/{task}/children").read().split()
            for k in kids:
                if open(f"/proc/{k}/cmdline").read().split("\0")[1:2] == ["ui"]:
                    return int(k)
        time.sleep(0.1)
    sys.exit("no ui process")


def cpu_seconds(pid):
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


def session(label, cover, n=15):
    if cover:
        run("alice", "config", "set", "cover", cover)
    else:
        run("alice", "config", "set", "cover", "off")
    line = (f"env BACKCHANNEL_HOME='{root}/alice' BACKCHANNEL_PASSPHRASE=pw "
            f"BACKCHANNEL_INSECURE_TEST_KDF=1 '{BIN}' ui c; sleep 600")
    tmux("new-session", "-d", "-s", "ui", "-x", "100", "-y", "30", line)
    wait_for("relay: reachable")
    time.sleep(2)
    pid = ui_pid()
    before, t0 = cpu_seconds(pid), time.time()
    time.sleep(10)
    idle = (cpu_seconds(pid) - before) / (time.time() - t0)
    lats = []
    for i in range(n):
        text = f"{label}-probe-{i:02}"
        run("bob", "send", "c", text)
        t = time.time()
        wait_for(text, 10)
        lats.append(time.time() - t)
        time.sleep(0.3)
    tmux("kill-server")
    lats.sort()
    return {
        "idle_cpu_percent_of_a_core": round(100 * idle, 2),
        "latency_median_s": round(statistics.median(lats), 3),
        "latency_p90_s": round(lats[int(0.9 * (len(lats) - 1))], 3),
        "latency_max_s": round(lats[-1], 3),
        "samples": n,
    }


relay = subprocess.Popen([BIN, "relay", "--listen", "127.0.0.1:0", "--data", root + "/relay"],
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
try:
    addr = relay.stdout.readline().strip().split(": ")[1]
    for name in ["alice", "bob"]:
        run(name, "init", "--name", name, "--relay", addr)
    run("alice", "channel", "new", "c")
    run("bob", "join", run("alice", "invite", "c").strip())
    run("alice", "sync")
    run("bob", "sync", "--wait", "5")
    print(json.dumps({"no cover": session("plain", None), "cover 4/s": session("cover", "4/s")}, indent=1))
finally:
    relay.terminate()

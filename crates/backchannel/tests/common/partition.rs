#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! A private network of network namespaces for partition tests (issue 17, point 2):
//! three NATS JetStream nodes, relays and clients, each a *host* with an address of
//! its own, joined by a switch; partitions, packet loss and delay made and healed
//! while they run.
//!
//! [`Net::new`] starts the *switch*: a program ([`PARTITION_PY`]) in a new user and
//! network namespace (`unshare -Urn`, no root needed), which makes a Linux bridge
//! there with the address [`SWITCH_ADDR`]. [`Net::host`] starts the same program in
//! another network namespace of that user namespace (`nsenter --user` into the
//! switch's, then `unshare -n`); it makes a veth pair, keeps one end as its `eth0`
//! with the address `10.213.0.N/24`, and hands the other to the switch, which puts it
//! on the bridge. Every host reaches every other through the bridge, and nothing else:
//! a host's only routes are its loopback and the /24, and the switch has no uplink. So
//! nothing a test runs here can reach, or be reached from, any address outside the
//! namespaces; the test process itself reads results through files and through
//! commands it runs inside ([`Host::command`], `nsenter --user --net`), and asks the
//! switch (which every host can reach, whatever the partition) for the NATS nodes'
//! monitoring pages ([`Net::http_get`]) and for JetStream API requests
//! ([`Net::nats_request`]).
//!
//! Faults are nftables rules in each host's own namespace (one table, `inet bc`,
//! rewritten whole and atomically at each change by `nft -f`; this kernel has no `tc
//! netem`): [`Net::cut`] drops every packet between two groups of hosts, both ways, on
//! both sides; [`Net::lose`] drops a random share of the packets each host of a group
//! receives from the others (`numgen random mod 100 < N`); [`Net::heal`] removes them
//! all. Delay is a delaying TCP proxy inside a host ([`Host::proxy`], [`Host::set_delay`]):
//! [`NatsNet::start`] with `delayable_routes` makes every cluster route go through one.
//!
//! `nft` comes from Debian's nftables: [`require_nft`] installs it on first use
//! (`scripts/install-nftables.sh`) and a test that cannot have it fails, never skips.
//! The NATS nodes are the pinned `nats-server` of [`super::nats::require_nats`],
//! configured as there (JetStream, `sync_interval: always`, a three-node cluster).
//!
//! Everything a `Net` started stops when it is dropped: each program inside exits when
//! its standard input closes (also if the test process dies), and the NATS nodes and
//! relays are killed by their owners' `Drop`.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::{bin, collect, read_lines, spawn_announced, workspace, Client, DaemonProc, RelayProc, Run};

/// The first three bytes of every host's address.
pub const PREFIX: &str = "10.213.0";
/// The switch's address on the bridge (monitoring and JetStream requests come from it).
pub const SWITCH_ADDR: &str = "10.213.0.1";
/// The NATS nodes' ports, the same on every node (each has its own address).
pub const NATS_CLIENT_PORT: u16 = 4222;
pub const NATS_HTTP_PORT: u16 = 8222;
pub const NATS_ROUTE_PORT: u16 = 6222;
/// The port a relay listens on, at its host's address.
pub const RELAY_PORT: u16 = 7443;
/// Where node `j`'s delaying route proxy listens inside the other nodes:
/// `127.0.0.1:ROUTE_PROXY_BASE + j`.
const ROUTE_PROXY_BASE: u16 = 16001;
/// How long a program inside may take to answer a control line.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(200);
const CLUSTER_NAME: &str = "bc-partition";

/// The program every namespace runs: `partition.py switch ADDR` (in the new user and
/// network namespace: the bridge) or `partition.py host ADDR PORT_NAME SWITCH_PID` (in a
/// host's own network namespace: its end of a veth pair). It prints `ready PID` once set
/// up, then answers each line on its standard input with one line (`ok ...` or `err
/// ...`), and exits when its standard input closes:
///
/// - `attach PORT_NAME` (the switch): the veth end onto the bridge;
/// - `http HOST PORT PATH`: a GET, answered `ok STATUS BASE64_BODY`;
/// - `nats HOST PORT SUBJECT BASE64_PAYLOAD`: one request in the plain NATS protocol,
///   answered `ok BASE64_REPLY`;
/// - `connect HOST PORT SECONDS`: a TCP connection attempt, answered `ok connected` or
///   `ok ERROR_NAME`;
/// - `proxy LISTEN_PORT HOST PORT`: a delaying TCP proxy from `127.0.0.1:LISTEN_PORT` to
///   `HOST:PORT`; `delay MS`: the delay of every proxy of this program from now on
///   (each chunk it reads is written on that much later, in order, both ways).
pub const PARTITION_PY: &str = r#"
import asyncio, base64, os, shutil, socket, subprocess, sys, threading, urllib.error, urllib.request

IP = shutil.which("ip") or next((p for p in ("/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip") if os.path.exists(p)), None)
if IP is None:
    sys.exit("partition.py: no `ip` command (iproute2) to make the network")

def ip(*args):
    r = subprocess.run([IP, *args], capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError("ip %s: %s" % (" ".join(args), r.stderr.strip()))

def b64(b):
    return base64.b64encode(b).decode()

def http_get(host, port, path):
    try:
        with urllib.request.urlopen("http://%s:%s%s" % (host, port, path), timeout=2) as r:
            return "ok %d %s" % (r.status, b64(r.read()))
    except urllib.error.HTTPError as e:
        return "ok %d %s" % (e.code, b64(e.read()))
    except Exception as e:
        return "err %s" % type(e).__name__

def nats_request(host, port, subject, payload):
    s = socket.create_connection((host, int(port)), timeout=3)
    try:
        f = s.makefile("rb")
        f.readline()
        s.sendall(b'CONNECT {"verbose":false,"pedantic":false,"protocol":1,"headers":false,"echo":false}\r\n'
                  + b"SUB _INBOX.probe 1\r\n"
                  + b"PUB %s _INBOX.probe %d\r\n" % (subject.encode(), len(payload)) + payload + b"\r\n")
        while True:
            line = f.readline()
            if not line:
                return "err closed"
            if line.startswith(b"PING"):
                s.sendall(b"PONG\r\n")
            elif line.startswith(b"-ERR"):
                return "err " + line.decode().strip().replace(" ", "_")
            elif line.startswith(b"MSG"):
                n = int(line.split()[-1])
                return "ok " + b64(f.read(n + 2)[:n])
    finally:
        s.close()

def connect(host, port, seconds):
    try:
        socket.create_connection((host, int(port)), timeout=float(seconds)).close()
        return "ok connected"
    except Exception as e:
        return "ok %s" % type(e).__name__

DELAY = [0.0]
LOOP = asyncio.new_event_loop()
threading.Thread(target=LOOP.run_forever, daemon=True).start()
SERVERS = []

async def carry(reader, writer):
    queue = asyncio.Queue()
    async def rx():
        try:
            while True:
                data = await reader.read(65536)
                queue.put_nowait((LOOP.time() + DELAY[0], data))
                if not data:
                    return
        except Exception:
            queue.put_nowait((0, b""))
    async def tx():
        try:
            while True:
                due, data = await queue.get()
                wait = due - LOOP.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                if not data:
                    writer.write_eof()
                    return
                writer.write(data)
                await writer.drain()
        except Exception:
            writer.close()
    await asyncio.gather(rx(), tx())

async def start_proxy(listen_port, host, port):
    async def accepted(r1, w1):
        try:
            r2, w2 = await asyncio.open_connection(host, port)
        except Exception:
            w1.close()
            return
        await asyncio.gather(carry(r1, w2), carry(r2, w1), return_exceptions=True)
        w1.close()
        w2.close()
    SERVERS.append(await asyncio.start_server(accepted, "127.0.0.1", listen_port))

def common(words):
    cmd = words[0]
    if cmd == "http":
        return http_get(words[1], words[2], words[3])
    if cmd == "nats":
        return nats_request(words[1], words[2], words[3], base64.b64decode(words[4]))
    if cmd == "connect":
        return connect(words[1], words[2], words[3])
    if cmd == "proxy":
        asyncio.run_coroutine_threadsafe(start_proxy(int(words[1]), words[2], int(words[3])), LOOP).result(10)
        return "ok"
    if cmd == "delay":
        DELAY[0] = int(words[1]) / 1000.0
        return "ok"
    return "err unknown command " + cmd

role = sys.argv[1]
ip("link", "set", "lo", "up")
if role == "switch":
    ip("link", "add", "br0", "type", "bridge")
    ip("addr", "add", sys.argv[2] + "/24", "dev", "br0")
    ip("link", "set", "br0", "up")
    def handle(words):
        if words[0] == "attach":
            ip("link", "set", words[1], "master", "br0", "up")
            return "ok"
        return common(words)
else:
    addr, port_name, switch = sys.argv[2], sys.argv[3], sys.argv[4]
    ip("link", "add", "eth0", "type", "veth", "peer", "name", port_name, "netns", switch)
    ip("addr", "add", addr + "/24", "dev", "eth0")
    ip("link", "set", "eth0", "up")
    handle = common
print("ready %d" % os.getpid(), flush=True)
for line in sys.stdin:
    words = line.split()
    if not words:
        continue
    try:
        answer = handle(words)
    except Exception as e:
        answer = "err %s: %s" % (type(e).__name__, str(e).replace("\n", " "))
    print(answer, flush=True)
os._exit(0)
"#;

/// The `nft` binary, if there is one.
fn nft_path() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin"].map(PathBuf::from))
        .map(|dir| dir.join("nft"))
        .find(|candidate| candidate.is_file())
}

/// The `nft` command the partition tests run inside their namespaces. On a machine
/// without one it installs Debian's nftables first (`scripts/install-nftables.sh`, once,
/// whichever test gets there first); if that fails the test fails, saying what to do.
pub fn require_nft() -> PathBuf {
    if let Some(nft) = nft_path() {
        return nft;
    }
    let tools = workspace().join(".tools");
    fs::create_dir_all(&tools).unwrap();
    // One install at a time: nextest runs the tests in parallel processes.
    let out = Command::new("flock")
        .arg(tools.join("nftables.lock"))
        .arg("bash")
        .arg(workspace().join("scripts/install-nftables.sh"))
        .output();
    match (out, nft_path()) {
        (Ok(o), Some(nft)) if o.status.success() => nft,
        (out, _) => panic!(
            "nft (nftables) is not installed and installing it failed: run `bash scripts/install-nftables.sh` \
             as root (or `apt-get install nftables`); the partition tests drop packets with nftables rules \
             inside their own network namespaces. The install said: {}",
            match out {
                Ok(o) => format!(
                    "{}{}",
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&o.stderr)
                ),
                Err(e) => format!("(could not run it: {e})"),
            }
        ),
    }
}

/// One program inside a namespace ([`PARTITION_PY`]) and its line protocol.
struct Keeper {
    what: String,
    child: Child,
    pid: u32,
    control: Mutex<(ChildStdin, Receiver<String>)>,
    stderr: Arc<Mutex<String>>,
}

impl Keeper {
    fn spawn(mut cmd: Command, what: &str) -> Keeper {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start the {what}'s namespace program ({e}): it needs util-linux's unshare and nsenter, and python3")
            });
        let stdin = child.stdin.take().unwrap();
        let stderr = collect(child.stderr.take().unwrap());
        let lines = read_lines(child.stdout.take().unwrap());
        let mut keeper = Keeper {
            what: what.to_string(),
            child,
            pid: 0,
            control: Mutex::new((stdin, lines)),
            stderr,
        };
        let ready = keeper.control.lock().unwrap().1.recv_timeout(ANSWER_TIMEOUT).ok();
        keeper.pid = match ready.as_deref().and_then(|l| l.strip_prefix("ready ")) {
            Some(pid) => pid.trim().parse().unwrap(),
            None => {
                let _ = keeper.child.kill();
                let _ = keeper.child.wait();
                thread::sleep(Duration::from_millis(100));
                panic!(
                    "cannot make the {what}'s network namespace (user namespaces, veth and bridges are \
                     needed): it printed {ready:?}, not `ready PID`; on stderr:\n{}",
                    keeper.stderr.lock().unwrap()
                );
            }
        };
        keeper
    }

    /// Sends one control line and returns the answer after `ok` (panics on `err` or no answer).
    fn ask(&self, line: &str) -> String {
        let answer = {
            let mut control = self.control.lock().unwrap();
            writeln!(control.0, "{line}").unwrap();
            control.0.flush().unwrap();
            control.1.recv_timeout(ANSWER_TIMEOUT).ok()
        };
        match answer.as_deref().map(|a| a.split_once(' ').unwrap_or((a, ""))) {
            Some(("ok", rest)) => rest.to_string(),
            _ => panic!(
                "the {}'s namespace program answered {answer:?} to `{line}`; on stderr:\n{}",
                self.what,
                self.stderr.lock().unwrap()
            ),
        }
    }

    /// [`Keeper::ask`], with an `err` answer returned rather than a panic.
    fn try_ask(&self, line: &str) -> Result<String, String> {
        let mut control = self.control.lock().unwrap();
        writeln!(control.0, "{line}").unwrap();
        control.0.flush().unwrap();
        match control.1.recv_timeout(ANSWER_TIMEOUT) {
            Ok(a) => match a.split_once(' ').unwrap_or((a.as_str(), "")) {
                ("ok", rest) => Ok(rest.to_string()),
                (_, rest) => Err(rest.to_string()),
            },
            Err(_) => Err("no answer".to_string()),
        }
    }
}

impl Drop for Keeper {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The fault rules of one host.
#[derive(Default, Clone)]
struct Rules {
    /// Addresses no packet goes to or comes from.
    cut: BTreeSet<String>,
    /// Addresses whose packets to this host are dropped at random, and the percentage.
    lossy: BTreeSet<String>,
    loss_percent: u8,
}

/// The switch and the faults; see the module's documentation.
pub struct Net {
    dir: TempDir,
    nft: PathBuf,
    switch: Keeper,
    /// Each host's address -> its namespace program's pid (for `nsenter`) and its rules.
    hosts: Mutex<BTreeMap<String, (u32, Rules)>>,
}

impl Net {
    /// The switch of a new private network (its own user and network namespace).
    pub fn new() -> Net {
        let nft = require_nft();
        let dir = tempfile::Builder::new().prefix("bc-partition-").tempdir().unwrap();
        let script = dir.path().join("partition.py");
        fs::write(&script, PARTITION_PY).unwrap();
        let mut cmd = Command::new("unshare");
        cmd.args(["--user", "--map-root-user", "--net", "--", "python3", "-u"])
            .arg(&script)
            .args(["switch", SWITCH_ADDR]);
        let switch = Keeper::spawn(cmd, "switch");
        Net {
            dir,
            nft,
            switch,
            hosts: Mutex::new(BTreeMap::new()),
        }
    }

    /// The directory holding the program, configs, stores and logs of this network.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A new host `name` at `10.213.0.{octet}` (2 to 254), on the bridge.
    pub fn host(&self, name: &str, octet: u8) -> Host {
        assert!((2..=254).contains(&octet), "octet {octet} is not a host address");
        let addr = format!("{PREFIX}.{octet}");
        assert!(!self.hosts.lock().unwrap().contains_key(&addr), "{addr} is taken");
        let port_name = format!("v{octet}");
        let mut cmd = Command::new("nsenter");
        cmd.arg("--target")
            .arg(self.switch.pid.to_string())
            .args([
                "--user",
                "--preserve-credentials",
                "--",
                "unshare",
                "--net",
                "--",
                "python3",
                "-u",
            ])
            .arg(self.dir.path().join("partition.py"))
            .args(["host", &addr, &port_name, &self.switch.pid.to_string()]);
        let keeper = Keeper::spawn(cmd, name);
        self.switch.ask(&format!("attach {port_name}"));
        self.hosts
            .lock()
            .unwrap()
            .insert(addr.clone(), (keeper.pid, Rules::default()));
        Host {
            name: name.to_string(),
            addr,
            keeper,
            nft: self.nft.clone(),
        }
    }

    /// Cuts every host of `a` off from every host of `b`: each drops every packet to or
    /// from the other side (in addition to any cut already made).
    pub fn cut(&self, a: &[&Host], b: &[&Host]) {
        {
            let mut hosts = self.hosts.lock().unwrap();
            for (side, other) in [(a, b), (b, a)] {
                for h in side {
                    let rules = &mut hosts.get_mut(&h.addr).unwrap().1;
                    rules.cut.extend(other.iter().map(|o| o.addr.clone()));
                }
            }
        }
        self.apply(a.iter().chain(b));
    }

    /// Each host of `among` drops `percent` % of the packets it receives from the others,
    /// at random (replacing an earlier loss; 0 removes it).
    pub fn lose(&self, among: &[&Host], percent: u8) {
        assert!(percent < 100);
        {
            let mut hosts = self.hosts.lock().unwrap();
            for h in among {
                let rules = &mut hosts.get_mut(&h.addr).unwrap().1;
                rules.lossy = among
                    .iter()
                    .filter(|o| o.addr != h.addr)
                    .map(|o| o.addr.clone())
                    .collect();
                rules.loss_percent = percent;
            }
        }
        self.apply(among.iter());
    }

    /// Removes every cut and every loss.
    pub fn heal(&self) {
        let pids: Vec<(String, u32)> = {
            let mut hosts = self.hosts.lock().unwrap();
            hosts
                .iter_mut()
                .map(|(addr, (pid, rules))| {
                    *rules = Rules::default();
                    (addr.clone(), *pid)
                })
                .collect()
        };
        for (addr, pid) in pids {
            self.load(&addr, pid, &Rules::default());
        }
    }

    fn apply<'h>(&self, hosts: impl Iterator<Item = &'h &'h Host>) {
        let todo: Vec<(String, u32, Rules)> = {
            let all = self.hosts.lock().unwrap();
            hosts
                .map(|h| {
                    let (pid, rules) = &all[&h.addr];
                    (h.addr.clone(), *pid, rules.clone())
                })
                .collect()
        };
        for (addr, pid, rules) in todo {
            self.load(&addr, pid, &rules);
        }
    }

    /// Replaces the host's table `inet bc` with `rules`, in one transaction.
    fn load(&self, addr: &str, pid: u32, rules: &Rules) {
        let set = |addrs: &BTreeSet<String>| addrs.iter().cloned().collect::<Vec<_>>().join(", ");
        let mut input = String::new();
        let mut output = String::new();
        if !rules.cut.is_empty() {
            input.push_str(&format!("    ip saddr {{ {} }} drop\n", set(&rules.cut)));
            output.push_str(&format!("    ip daddr {{ {} }} drop\n", set(&rules.cut)));
        }
        if !rules.lossy.is_empty() && rules.loss_percent > 0 {
            input.push_str(&format!(
                "    ip saddr {{ {} }} numgen random mod 100 < {} drop\n",
                set(&rules.lossy),
                rules.loss_percent
            ));
        }
        let text = format!(
            "table inet bc {{}}\n\
             delete table inet bc\n\
             table inet bc {{\n\
             \x20 chain input {{\n\
             \x20   type filter hook input priority 0; policy accept;\n\
             {input}\
             \x20 }}\n\
             \x20 chain output {{\n\
             \x20   type filter hook output priority 0; policy accept;\n\
             {output}\
             \x20 }}\n\
             }}\n"
        );
        let mut child = nsenter(pid)
            .arg(&self.nft)
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "nft refused the rules of {addr} (in its own network namespace):\n{text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `GET path` on `addr:port`, from the switch: `(status, body)`, or `None` if nothing
    /// answered within 2 s.
    pub fn http_get(&self, addr: &str, port: u16, path: &str) -> Option<(u16, String)> {
        let answer = self.switch.try_ask(&format!("http {addr} {port} {path}")).ok()?;
        let (status, body) = answer.split_once(' ').unwrap_or((answer.as_str(), ""));
        Some((
            status.parse().ok()?,
            String::from_utf8_lossy(&unbase64(body)).into_owned(),
        ))
    }

    /// One request on `subject` to the NATS server at `addr:port` (from the switch): the
    /// reply's text, or why there was none.
    pub fn nats_request(&self, addr: &str, port: u16, subject: &str, payload: &str) -> Result<String, String> {
        let answer = self
            .switch
            .try_ask(&format!("nats {addr} {port} {subject} {}", base64(payload.as_bytes())))?;
        Ok(String::from_utf8_lossy(&unbase64(&answer)).into_owned())
    }
}

/// `nsenter` into the user and network namespaces of `pid`.
fn nsenter(pid: u32) -> Command {
    let mut c = Command::new("nsenter");
    c.arg("--target")
        .arg(pid.to_string())
        .args(["--user", "--net", "--preserve-credentials", "--"]);
    c
}

/// One host of a [`Net`]: its own network namespace, with one address on the bridge.
pub struct Host {
    pub name: String,
    /// `10.213.0.N`.
    pub addr: String,
    keeper: Keeper,
    nft: PathBuf,
}

impl Host {
    /// `program`, to run inside this host (as `nsenter ... -- program`).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = nsenter(self.keeper.pid);
        c.arg(program);
        c
    }

    /// `cmd` run inside this host: the same program, arguments, environment changes and
    /// working directory; standard input null.
    pub fn wrap(&self, cmd: &Command) -> Command {
        let mut c = self.command(cmd.get_program());
        c.args(cmd.get_args()).stdin(Stdio::null());
        for (key, value) in cmd.get_envs() {
            match value {
                Some(v) => c.env(key, v),
                None => c.env_remove(key),
            };
        }
        if let Some(d) = cmd.get_current_dir() {
            c.current_dir(d);
        }
        c
    }

    /// Runs `args` inside this host; its output.
    pub fn output(&self, args: &[&str]) -> Output {
        let mut c = self.command(args[0]);
        c.args(&args[1..]).stdin(Stdio::null());
        c.output().unwrap()
    }

    /// The table `inet bc` as nft lists it here (for a failure's message).
    pub fn rules(&self) -> String {
        let out = self.output(&[self.nft.to_str().unwrap(), "list", "ruleset"]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A TCP connection attempt from here to `addr:port`, waiting at most `seconds`:
    /// `"connected"`, or the name of Python's error (`TimeoutError`,
    /// `ConnectionRefusedError`, `OSError` for an unreachable network).
    pub fn connect(&self, addr: &str, port: u16, seconds: f64) -> String {
        self.keeper.ask(&format!("connect {addr} {port} {seconds}"))
    }

    /// A delaying TCP proxy inside this host from `127.0.0.1:listen` to `addr:port`.
    pub fn proxy(&self, listen: u16, addr: &str, port: u16) {
        self.keeper.ask(&format!("proxy {listen} {addr} {port}"));
    }

    /// The delay of every proxy of this host, each way, from now on.
    pub fn set_delay(&self, delay: Duration) {
        self.keeper.ask(&format!("delay {}", delay.as_millis()));
    }

    /// A relay here, at `addr:RELAY_PORT`, on the NATS servers `nats` (in that order), with
    /// its data in `data` and `extra` flags; killed (with its logs shown if the test
    /// failed) when dropped.
    pub fn relay(&self, data: &Path, nats: &[String], extra: &[&str]) -> RelayProc {
        let mut cmd = Command::new(bin());
        cmd.args(["relay", "--listen", &format!("{}:{RELAY_PORT}", self.addr), "--data"])
            .arg(data)
            .args(["--store", "nats", "--nats-replicas", "3", "--stats-interval", "1s"]);
        for url in nats {
            cmd.args(["--nats", url]);
        }
        cmd.args(extra).env("RUST_LOG", "debug");
        let (mut child, line, stderr) = spawn_announced(self.wrap(&cmd));
        let address = match line.trim().strip_prefix("relay address: ") {
            Some(a) => a.to_string(),
            None => {
                let _ = child.wait();
                thread::sleep(Duration::from_millis(200));
                panic!(
                    "the relay in {} did not start: {line:?}\n{}",
                    self.name,
                    stderr.lock().unwrap()
                );
            }
        };
        assert!(address.ends_with(&format!("@{}:{RELAY_PORT}", self.addr)), "{address}");
        RelayProc {
            child,
            address,
            data: data.to_path_buf(),
            port: RELAY_PORT,
            stderr,
        }
    }

    /// [`Client::run`], inside this host.
    pub fn run(&self, client: &Client, args: &[&str]) -> Run {
        self.wrap(&client.cmd(args)).output().unwrap().into()
    }

    /// [`Client::ok`], inside this host: runs and asserts success; returns stdout.
    pub fn ok(&self, client: &Client, args: &[&str]) -> String {
        let r = self.run(client, args);
        assert!(
            r.ok,
            "`backchannel {}` (in {}) failed:\nstdout: {}\nstderr: {}",
            args.join(" "),
            self.name,
            r.stdout,
            r.stderr
        );
        r.stdout
    }

    /// `init` with the relay addresses `relays` (the first is tried first).
    pub fn init(&self, client: &Client, name: &str, relays: &[&str]) {
        let mut args = vec!["init", "--name", name];
        for r in relays {
            args.extend(["--relay", r]);
        }
        self.ok(client, &args);
    }

    /// [`super::channel_with`], inside this host: `admin` makes `channel` and admits each
    /// of `others` with an invite of its own.
    pub fn channel_with(&self, admin: &Client, others: &[&Client], channel: &str) {
        self.ok(admin, &["channel", "new", channel]);
        for o in others {
            let invite = self.ok(admin, &["invite", channel]);
            let invite = invite.trim();
            assert!(invite.starts_with("bc-invite:"), "{invite}");
            self.ok(o, &["join", invite]);
            self.ok(admin, &["sync"]);
            self.ok(o, &["sync", "--wait", "5"]);
        }
        for o in others {
            self.ok(o, &["sync"]);
        }
    }

    /// `read --json --all`: the texts of real messages (not events), `(from, text)`,
    /// and the warnings the command printed (but the test-only key derivation's, which
    /// every command of a test home prints).
    pub fn texts(&self, client: &Client, channel: &str) -> (Vec<(String, String)>, Vec<String>) {
        let r = self.run(client, &["read", channel, "--json", "--all"]);
        assert!(
            r.ok,
            "`backchannel read {channel}` (in {}) failed:\n{}",
            self.name, r.stderr
        );
        let texts = super::fixtures::said(&r.stdout);
        let warnings = r
            .stderr
            .lines()
            .filter(|l| l.starts_with("warning") && !l.contains("test-only key derivation"))
            .map(str::to_string)
            .collect();
        (texts, warnings)
    }

    /// [`DaemonProc::start`], inside this host (stopped with SIGTERM on drop).
    pub fn daemon(&self, client: &Client) -> DaemonProc {
        let (child, line, stderr) = spawn_announced(self.wrap(&client.cmd(&["daemon"])));
        let daemon = DaemonProc { child, stderr };
        if !line.starts_with("daemon running") {
            thread::sleep(Duration::from_millis(200));
            let said = daemon.stderr.lock().unwrap().clone();
            panic!(
                "unexpected first line from the daemon in {}: {line:?}\n{said}",
                self.name
            );
        }
        daemon
    }
}

/// A stream's other replicas as one node sees them: `(name, current)`.
pub type Replicas = Vec<(String, bool)>;

/// One NATS node: its host and what stays the same across its restarts.
struct NsNode {
    name: String,
    host: Host,
    config: PathBuf,
    log: PathBuf,
    child: Mutex<Option<Child>>,
}

/// Three `nats-server` processes (`n1`, `n2`, `n3`, indexed 0, 1, 2), each in a host of
/// its own (`10.213.0.11` to `.13`), forming the JetStream cluster `bc-partition`; every
/// node is killed on drop.
pub struct NatsNet<'n> {
    net: &'n Net,
    nodes: Vec<NsNode>,
    logs_shown: AtomicBool,
}

/// How long a cluster may take to elect a meta leader and see every node current.
pub const START_TIMEOUT: Duration = Duration::from_secs(45);

impl<'n> NatsNet<'n> {
    /// Starts the three nodes of a cluster on `net` and waits until every node is healthy
    /// and the meta leader sees both others current. With `delayable_routes`, each node
    /// reaches each other one through a delaying proxy inside its own host
    /// ([`NatsNet::set_route_delay`]): its routes name the proxies, and each node
    /// advertises its proxy's address (`127.0.0.1:PORT`, the same port in every host) as
    /// its cluster address, so that no route the nodes learn from each other goes around
    /// them.
    pub fn start(net: &'n Net, bin: &Path, delayable_routes: bool) -> NatsNet<'n> {
        const NODES: usize = 3;
        let nodes: Vec<NsNode> = (0..NODES)
            .map(|i| {
                let name = format!("n{}", i + 1);
                let host = net.host(&name, 11 + i as u8);
                let config = net.dir().join(format!("{name}.conf"));
                let log = net.dir().join(format!("{name}.log"));
                let store = net.dir().join(format!("{name}-store"));
                let routes: String = (0..NODES)
                    .filter(|&j| j != i || !delayable_routes)
                    .map(|j| {
                        if delayable_routes {
                            let port = ROUTE_PROXY_BASE + j as u16;
                            host.proxy(port, &format!("{PREFIX}.{}", 11 + j), NATS_ROUTE_PORT);
                            format!("    nats-route://127.0.0.1:{port}\n")
                        } else {
                            format!("    nats-route://{PREFIX}.{}:{NATS_ROUTE_PORT}\n", 11 + j)
                        }
                    })
                    .collect();
                let advertise = if delayable_routes {
                    format!("  advertise: 127.0.0.1:{}\n", ROUTE_PROXY_BASE + i as u16)
                } else {
                    String::new()
                };
                let text = format!(
                    "server_name: {name}\n\
                     listen: {addr}:{NATS_CLIENT_PORT}\n\
                     http: {addr}:{NATS_HTTP_PORT}\n\
                     \n\
                     jetstream {{\n\
                     \x20 store_dir: {store:?}\n\
                     \x20 sync_interval: always\n\
                     }}\n\
                     \n\
                     cluster {{\n\
                     \x20 name: {CLUSTER_NAME}\n\
                     \x20 listen: {addr}:{NATS_ROUTE_PORT}\n\
                     {advertise}\
                     \x20 routes: [\n\
                     {routes}\
                     \x20 ]\n\
                     }}\n",
                    addr = host.addr,
                    store = store.display().to_string(),
                );
                fs::write(&config, text).unwrap();
                NsNode {
                    name,
                    host,
                    config,
                    log,
                    child: Mutex::new(None),
                }
            })
            .collect();
        let cluster = NatsNet {
            net,
            nodes,
            logs_shown: AtomicBool::new(false),
        };
        let began = Instant::now();
        for node in &cluster.nodes {
            let mut log = OpenOptions::new().create(true).append(true).open(&node.log).unwrap();
            writeln!(log, "==== harness: starting {} ====", node.name).unwrap();
            let mut cmd = node.host.command(bin);
            cmd.arg("-c")
                .arg(&node.config)
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log);
            let child = cmd
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {} ({}): {e}", bin.display(), node.name));
            *node.child.lock().unwrap() = Some(child);
        }
        cluster.wait_meta_leader(&[0, 1, 2], START_TIMEOUT);
        eprintln!("nats cluster (namespaces): started in {:.1?}", began.elapsed());
        cluster
    }

    /// Node `i`'s host (for [`Net::cut`] and [`Net::lose`]).
    pub fn host(&self, i: usize) -> &Host {
        &self.nodes[i].host
    }

    /// Every node's host.
    pub fn hosts(&self) -> Vec<&Host> {
        self.nodes.iter().map(|n| &n.host).collect()
    }

    /// The client URL of node `i`, `nats://10.213.0.1X:4222`.
    pub fn url(&self, i: usize) -> String {
        format!("nats://{}:{NATS_CLIENT_PORT}", self.nodes[i].host.addr)
    }

    /// The server name of node `i`: `n1`, `n2` or `n3`.
    pub fn name(&self, i: usize) -> &str {
        &self.nodes[i].name
    }

    /// The index of the node named `name`.
    pub fn index(&self, name: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.name == name)
    }

    /// Every node's delaying route proxy waits `delay` each way (with `delayable_routes`).
    pub fn set_route_delay(&self, delay: Duration) {
        for n in &self.nodes {
            n.host.set_delay(delay);
        }
    }

    /// `GET path` on node `i`'s monitoring port, from the switch.
    pub fn monitor(&self, i: usize, path: &str) -> Option<(u16, String)> {
        self.net.http_get(&self.nodes[i].host.addr, NATS_HTTP_PORT, path)
    }

    /// Node `i`'s `/healthz`: `Ok(())` on 200, else the status and body.
    pub fn health(&self, i: usize) -> Result<(), String> {
        match self.monitor(i, "/healthz") {
            Some((200, _)) => Ok(()),
            Some((status, body)) => Err(format!("{status} {}", body.trim())),
            None => Err("no answer".to_string()),
        }
    }

    fn jsz(&self, i: usize, query: &str) -> Option<serde_json::Value> {
        match self.monitor(i, &format!("/jsz{query}"))? {
            (200, body) => serde_json::from_str(&body).ok(),
            _ => None,
        }
    }

    /// Node `i`'s view of `stream`'s cluster: its leader's index (if it knows one) and
    /// whether each other replica is current, `(name, current)`.
    pub fn stream_view(&self, i: usize, stream: &str) -> Option<(Option<usize>, Replicas)> {
        let jsz = self.jsz(i, "?streams=true")?;
        let detail = jsz["account_details"]
            .as_array()?
            .iter()
            .flat_map(|a| a["stream_detail"].as_array().cloned().unwrap_or_default())
            .find(|s| s["name"].as_str() == Some(stream))?;
        let leader = detail["cluster"]["leader"].as_str().and_then(|l| self.index(l));
        let replicas = detail["cluster"]["replicas"]
            .as_array()
            .map(|r| {
                r.iter()
                    .map(|p| {
                        (
                            p["name"].as_str().unwrap_or_default().to_string(),
                            p["current"].as_bool().unwrap_or(false),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        Some((leader, replicas))
    }

    /// `$JS.API.STREAM.INFO.<stream>` asked of node `i` (by the switch, which every
    /// node reaches whatever the cut): the answer of the leader node `i` reaches, which
    /// for a node cut off from the others is itself if it still calls itself the leader.
    pub fn stream_info(&self, i: usize, stream: &str) -> Option<serde_json::Value> {
        let answer = self
            .net
            .nats_request(
                &self.nodes[i].host.addr,
                NATS_CLIENT_PORT,
                &format!("$JS.API.STREAM.INFO.{stream}"),
                "{}",
            )
            .ok()?;
        let info: serde_json::Value = serde_json::from_str(&answer).ok()?;
        info.get("state").is_some().then_some(info)
    }

    /// The leader of `stream` as node `i` sees it.
    pub fn stream_leader(&self, i: usize, stream: &str) -> Option<usize> {
        self.stream_view(i, stream)?.0
    }

    /// How many client connections named `name` node `i` has (its `/connz`): a relay's
    /// NATS connection is named `backchannel-relay`.
    pub fn connections_named(&self, i: usize, name: &str) -> usize {
        let Some((200, body)) = self.monitor(i, "/connz") else {
            return 0;
        };
        let connz: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        connz["connections"]
            .as_array()
            .map_or(0, |c| c.iter().filter(|c| c["name"].as_str() == Some(name)).count())
    }

    /// The meta leader's name as node `i` sees it.
    pub fn meta_leader_of(&self, i: usize) -> Option<String> {
        self.jsz(i, "")?["meta_cluster"]["leader"].as_str().map(str::to_string)
    }

    /// Waits until every node of `nodes` names the same leader of `stream`, one of
    /// `nodes`, and that leader sees the other nodes of `nodes` current; returns the
    /// leader. Panics with the logs after `timeout`.
    pub fn wait_stream_leader(&self, nodes: &[usize], stream: &str, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        loop {
            let last = match self.stream_leader_among(nodes, stream) {
                Ok(l) => return l,
                Err(e) => e,
            };
            self.check_alive();
            if Instant::now() >= deadline {
                self.fail(&format!(
                    "no leader of {stream} among {:?} after {timeout:?}: {last}",
                    self.names(nodes)
                ));
            }
            thread::sleep(POLL);
        }
    }

    /// [`NatsNet::wait_stream_leader`]'s condition, once: the leader, or why not.
    pub fn stream_leader_among(&self, nodes: &[usize], stream: &str) -> Result<usize, String> {
        let mut leader = None;
        for &i in nodes {
            let (l, _) = self
                .stream_view(i, stream)
                .ok_or_else(|| format!("{} does not show {stream}", self.name(i)))?;
            let l = l.ok_or_else(|| format!("{} knows no leader of {stream}", self.name(i)))?;
            if leader.is_some_and(|x| x != l) {
                return Err(format!("the nodes disagree on the leader of {stream}"));
            }
            leader = Some(l);
        }
        let leader = leader.ok_or("no nodes")?;
        if !nodes.contains(&leader) {
            return Err(format!("{} leads {stream}, not one of these", self.name(leader)));
        }
        let (_, replicas) = self.stream_view(leader, stream).ok_or("the leader does not answer")?;
        for &i in nodes {
            if i != leader && !replicas.iter().any(|(n, current)| n == self.name(i) && *current) {
                return Err(format!(
                    "{} does not see {} current on {stream}: {replicas:?}",
                    self.name(leader),
                    self.name(i)
                ));
            }
        }
        Ok(leader)
    }

    /// Makes node `to` the leader of `stream` (JetStream's leader stepdown, asking for
    /// `to` as the preferred new leader, until it is), with all three nodes current.
    pub fn move_stream_leader(&self, stream: &str, to: usize) {
        let deadline = Instant::now() + Duration::from_secs(45);
        let mut said;
        loop {
            match self.stream_leader_among(&[0, 1, 2], stream) {
                Ok(l) if l == to => return,
                Ok(l) => {
                    let request = format!("{{\"placement\":{{\"preferred\":\"{}\"}}}}", self.name(to));
                    said = match self.net.nats_request(
                        &self.nodes[l].host.addr,
                        NATS_CLIENT_PORT,
                        &format!("$JS.API.STREAM.LEADER.STEPDOWN.{stream}"),
                        &request,
                    ) {
                        Ok(a) | Err(a) => a,
                    };
                    thread::sleep(Duration::from_secs(1));
                }
                Err(e) => said = e,
            }
            if Instant::now() >= deadline {
                self.fail(&format!(
                    "could not make {} the leader of {stream}: {said}",
                    self.name(to)
                ));
            }
            thread::sleep(POLL);
        }
    }

    /// Waits until node `i` answers `/healthz` with 200 and every stream's leader sees it
    /// current again (after a heal); returns how long that took.
    pub fn wait_current(&self, i: usize, streams: &[&str], timeout: Duration) -> Duration {
        let began = Instant::now();
        let deadline = began + timeout;
        loop {
            let last = match self.health(i) {
                Err(e) => format!("{} not healthy: {e}", self.name(i)),
                Ok(()) => match streams
                    .iter()
                    .map(|s| self.stream_leader_among(&[0, 1, 2], s))
                    .find(Result::is_err)
                {
                    Some(Err(e)) => e,
                    _ => return began.elapsed(),
                },
            };
            self.check_alive();
            if Instant::now() >= deadline {
                self.fail(&format!("{} not current again after {timeout:?}: {last}", self.name(i)));
            }
            thread::sleep(POLL);
        }
    }

    /// Waits until every node of `live` is healthy and agrees on a meta leader among them
    /// that sees the others current; returns the leader's name.
    pub fn wait_meta_leader(&self, live: &[usize], timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let last = match self.meta_leader(live) {
                Ok(l) => return l,
                Err(e) => e,
            };
            self.check_alive();
            if Instant::now() >= deadline {
                self.fail(&format!("no JetStream meta leader after {timeout:?}: {last}"));
            }
            thread::sleep(POLL);
        }
    }

    fn meta_leader(&self, live: &[usize]) -> Result<String, String> {
        let mut leader: Option<String> = None;
        for &i in live {
            self.health(i).map_err(|e| format!("{}: {e}", self.name(i)))?;
            let l = self
                .meta_leader_of(i)
                .ok_or_else(|| format!("{}: no meta leader", self.name(i)))?;
            if leader.as_ref().is_some_and(|x| *x != l) {
                return Err("the nodes disagree on the meta leader".into());
            }
            leader = Some(l);
        }
        let leader = leader.ok_or("no nodes")?;
        let li = self.index(&leader).ok_or("an unknown meta leader")?;
        let replicas = self.jsz(li, "").ok_or("the meta leader does not answer")?["meta_cluster"]["replicas"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        for &i in live {
            if i != li
                && !replicas
                    .iter()
                    .any(|p| p["name"].as_str() == Some(self.name(i)) && p["current"].as_bool() == Some(true))
            {
                return Err(format!("{leader} does not see {} current", self.name(i)));
            }
        }
        Ok(leader)
    }

    fn names(&self, nodes: &[usize]) -> Vec<&str> {
        nodes.iter().map(|&i| self.name(i)).collect()
    }

    /// Panics with the logs if a node exited on its own.
    fn check_alive(&self) {
        for node in &self.nodes {
            if let Some(status) = node.child.lock().unwrap().as_mut().and_then(|c| c.try_wait().unwrap()) {
                self.fail(&format!("{} exited on its own ({status})", node.name));
            }
        }
    }

    /// How many times a node became the leader of a stream so far (each new leader logs
    /// "JetStream cluster new stream leader for ...").
    pub fn stream_elections(&self) -> usize {
        self.nodes
            .iter()
            .map(|n| {
                fs::read_to_string(&n.log)
                    .unwrap_or_default()
                    .lines()
                    .filter(|l| l.contains("new stream leader for"))
                    .count()
            })
            .sum()
    }

    /// Panics with `why` and every node's log.
    pub fn fail(&self, why: &str) -> ! {
        self.logs_shown.store(true, Ordering::SeqCst);
        panic!("{why}\n{}", self.logs())
    }

    /// Every node's log, one after another.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for node in &self.nodes {
            out.push_str(&format!(
                "---------- {} ({}, {}) ----------\n",
                node.name,
                node.host.addr,
                node.log.display()
            ));
            match File::open(&node.log) {
                Ok(mut f) => {
                    let mut text = Vec::new();
                    let _ = f.read_to_end(&mut text);
                    out.push_str(&String::from_utf8_lossy(&text));
                }
                Err(e) => out.push_str(&format!("(no log: {e})\n")),
            }
            out.push_str(&format!("nft rules:\n{}", node.host.rules()));
        }
        out
    }
}

impl Drop for NatsNet<'_> {
    fn drop(&mut self) {
        if thread::panicking() && !self.logs_shown.load(Ordering::SeqCst) {
            eprintln!("nats cluster logs (the test failed):\n{}", self.logs());
        }
        for node in &self.nodes {
            if let Some(mut child) = node.child.lock().unwrap().take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// Base64, as the namespace program writes and reads it.
fn base64(bytes: &[u8]) -> String {
    data_encoding::BASE64.encode(bytes)
}

fn unbase64(text: &str) -> Vec<u8> {
    data_encoding::BASE64.decode(text.trim().as_bytes()).unwrap_or_default()
}

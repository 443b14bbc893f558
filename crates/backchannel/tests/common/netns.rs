#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! A network namespace for some of a test's processes, from which only chosen
//! loopback TCP ports of the host are reachable.
//!
//! [`Namespace::new`] makes a user and network namespace (`unshare -Urn`) whose only
//! interface is its own loopback. A small Python program ([`NAMESPACE_PY`]) runs in
//! it and, for each *bridged* port P, listens on `127.0.0.1:P` inside the namespace;
//! every connection it accepts is carried over the filesystem unix socket
//! `dir/bridge-P.sock` (a path, which every network namespace can reach) to a thread
//! of the test process, which connects to `127.0.0.1:P` on the host and copies the
//! bytes both ways. So `127.0.0.1:P` names the same relay inside the namespace and
//! outside it, and every other host port is unreachable from inside: a connection
//! to it is refused, as to a port where nothing listens.
//!
//! A *trapped* port ([`Namespace::with_traps`]) is listened on inside the namespace
//! too, but a connection to it is counted and closed at once: nothing reaches the
//! host. A test traps the port of a relay its processes must never contact, so that
//! a connection attempt shows in [`Namespace::connections`] even if the client
//! shrugs off the failure.
//!
//! [`Namespace::connections`] counts every connection the namespace's side has
//! accepted on a port, however short-lived: before it answers, the program inside
//! connects to each port itself and waits until it has accepted that connection,
//! and as a listener's queue is first in, first out, every connection made before
//! the call (by a process that has finished, say) has been accepted and counted.
//!
//! [`Namespace::command`] and [`Namespace::wrap`] run a program inside the
//! namespace with `nsenter`, in the same filesystem, with the environment the
//! `Command` is given; [`Namespace::run`], [`Namespace::ok`], [`Namespace::fails`]
//! and [`Namespace::init`] mirror [`Client`]'s. Dropping the `Namespace` kills the
//! program inside (the namespace goes when its last process does) and ends the
//! bridges. Traffic stays on loopback: the namespace has no other interface, and the
//! bridges connect to `127.0.0.1` only.
//!
//! If a namespace cannot be made or entered (no `unshare`, `nsenter`, `ip` or
//! `python3`, or user namespaces forbidden), [`Namespace::new`] panics saying so:
//! a test that needs one does not pass without it.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use super::{collect, read_lines, Client, DaemonProc, Run};

/// How long the program inside may take to start, or to answer a count.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(20);

/// The program that runs inside the namespace: `namespace.py DIR bridge:P... trap:P...`.
///
/// It brings the loopback up, listens on `127.0.0.1:P` for each port, prints
/// `ready PID`, then answers each `count` line on its standard input with
/// `counts P=N ...` (connections accepted per port, its own markers not counted). It
/// exits when its standard input closes, so that it does not outlive a test process
/// that was killed.
pub const NAMESPACE_PY: &str = r#"
import os, shutil, socket, subprocess, sys, threading

sock_dir = sys.argv[1]
specs = [(kind, int(port)) for kind, port in (a.split(":") for a in sys.argv[2:])]

ip = shutil.which("ip") or next((p for p in ("/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip") if os.path.exists(p)), None)
if ip is None:
    sys.exit("namespace.py: no `ip` command to bring the loopback up")
subprocess.run([ip, "link", "set", "lo", "up"], check=True)

cond = threading.Condition()
counts = {port: 0 for _, port in specs}
# Our own probes come from an address no client uses; those not yet accepted, per port.
MARKER_HOST = "127.93.0.1"
markers = {port: set() for _, port in specs}

def pump(src, dst):
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            dst.sendall(data)
        dst.shutdown(socket.SHUT_WR)
        return True
    except OSError:
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        return False

def bridge(conn, port):
    up = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        up.connect(os.path.join(sock_dir, "bridge-%d.sock" % port))
    except OSError:
        conn.close()
        up.close()
        return
    back = threading.Thread(target=pump, args=(up, conn), daemon=True)
    back.start()
    pump(conn, up)
    back.join()
    conn.close()
    up.close()

def serve(kind, port, listener):
    while True:
        conn, peer = listener.accept()
        with cond:
            if peer[0] == MARKER_HOST and peer[1] in markers[port]:
                markers[port].discard(peer[1])
                cond.notify_all()
                conn.close()
                continue
            counts[port] += 1
        if kind == "trap":
            conn.close()
        else:
            threading.Thread(target=bridge, args=(conn, port), daemon=True).start()

for kind, port in specs:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(1024)
    threading.Thread(target=serve, args=(kind, port, listener), daemon=True).start()

def settle():
    # Connects to each port and waits until that connection is accepted: a listener
    # accepts in order, so every connection made before this one has been counted.
    probes = []
    for _, port in specs:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.bind((MARKER_HOST, 0))
        with cond:
            markers[port].add(s.getsockname()[1])
        s.connect(("127.0.0.1", port))
        probes.append(s)
    with cond:
        done = cond.wait_for(lambda: not any(markers.values()), timeout=15)
    for s in probes:
        s.close()
    return done

print("ready %d" % os.getpid(), flush=True)
for line in sys.stdin:
    if line.strip() == "count":
        if not settle():
            print("error: a listener did not accept its probe", flush=True)
            continue
        with cond:
            print("counts " + " ".join("%d=%d" % (p, n) for p, n in counts.items()), flush=True)
os._exit(0)
"#;

/// A network namespace reaching only some loopback ports of the host; see the
/// module's documentation.
pub struct Namespace {
    /// The program inside (`unshare` execs it, so this is its pid too).
    child: Child,
    /// Its pid, as it printed it: the process `nsenter` enters.
    pid: u32,
    /// Control requests to the program inside, and its answers, a line each.
    control: Mutex<(ChildStdin, Receiver<String>)>,
    stderr: Arc<Mutex<String>>,
    bridged: Vec<u16>,
    trapped: Vec<u16>,
    stop: Arc<AtomicBool>,
    listeners: Vec<(PathBuf, JoinHandle<()>)>,
}

impl Namespace {
    /// A namespace from which `127.0.0.1:P` reaches the host's `127.0.0.1:P` for each
    /// bridged port, and nothing else is reachable. Its files go in `dir` (made if
    /// missing; keep the path short: a unix socket's path holds at most 107 bytes).
    pub fn new(dir: &Path, bridged: &[u16]) -> Self {
        Self::with_traps(dir, bridged, &[])
    }

    /// [`Namespace::new`], and also listening inside on each trapped port, where a
    /// connection is counted and closed at once.
    pub fn with_traps(dir: &Path, bridged: &[u16], trapped: &[u16]) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let mut all: Vec<u16> = bridged.iter().chain(trapped).copied().collect();
        all.sort_unstable();
        all.dedup();
        assert_eq!(
            all.len(),
            bridged.len() + trapped.len(),
            "a port may be given once, bridged or trapped: {bridged:?} {trapped:?}"
        );
        assert!(!all.contains(&0), "port 0 is no port to bridge or trap");

        // The bridges' host ends listen before the program inside can connect to them.
        let stop = Arc::new(AtomicBool::new(false));
        let mut listeners = Vec::new();
        for &port in bridged {
            let path = dir.join(format!("bridge-{port}.sock"));
            assert!(
                path.as_os_str().len() < 108,
                "the unix socket path {} is too long for a bridge: give the namespace a shorter directory",
                path.display()
            );
            let _ = std::fs::remove_file(&path);
            let listener = UnixListener::bind(&path)
                .unwrap_or_else(|e| panic!("cannot listen on {} for a bridge: {e}", path.display()));
            let stop = stop.clone();
            let handle = thread::spawn(move || host_side(listener, port, stop));
            listeners.push((path, handle));
        }

        let script = dir.join("namespace.py");
        std::fs::write(&script, NAMESPACE_PY).unwrap();
        let mut cmd = Command::new("unshare");
        cmd.args(["--user", "--map-root-user", "--net", "--", "python3", "-u"])
            .arg(&script)
            .arg(dir)
            .args(bridged.iter().map(|p| format!("bridge:{p}")))
            .args(trapped.iter().map(|p| format!("trap:{p}")))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap_or_else(|e| {
            panic!("cannot make a network namespace for the test: `unshare` did not start ({e}); it needs util-linux's unshare and python3")
        });
        let stdin = child.stdin.take().unwrap();
        let stderr = collect(child.stderr.take().unwrap());
        let lines = read_lines(child.stdout.take().unwrap());

        let mut ns = Namespace {
            child,
            pid: 0,
            control: Mutex::new((stdin, lines)),
            stderr,
            bridged: bridged.to_vec(),
            trapped: trapped.to_vec(),
            stop,
            listeners,
        };
        let ready = ns.answer();
        ns.pid = match ready.as_deref().and_then(|l| l.strip_prefix("ready ")) {
            Some(pid) => pid.trim().parse().unwrap(),
            None => {
                let _ = ns.child.kill();
                let _ = ns.child.wait();
                thread::sleep(Duration::from_millis(100));
                panic!(
                    "cannot make a network namespace for the test (`unshare --user --map-root-user --net` \
                     running {}): it printed {:?}, not `ready PID`; on stderr:\n{}",
                    script.display(),
                    ready.unwrap_or_default(),
                    ns.logs()
                );
            }
        };
        // Entering it must work too, or every command in it would fail less clearly.
        let entered = ns.command("true").output().unwrap_or_else(|e| {
            panic!("cannot enter the test's network namespace: `nsenter` did not start ({e}); it needs util-linux's nsenter")
        });
        assert!(
            entered.status.success(),
            "cannot enter the test's network namespace with nsenter: {}",
            String::from_utf8_lossy(&entered.stderr)
        );
        ns
    }

    /// The pid of the program inside, which `nsenter --target` enters.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    pub fn bridged(&self) -> &[u16] {
        &self.bridged
    }

    pub fn trapped(&self) -> &[u16] {
        &self.trapped
    }

    /// `program`, to run inside the namespace (as `nsenter ... -- program`): give it
    /// arguments, environment and standard streams as to any `Command`.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("nsenter");
        c.arg("--target")
            .arg(self.pid.to_string())
            .args(["--user", "--net", "--preserve-credentials", "--"])
            .arg(program);
        c
    }

    /// `cmd` run inside the namespace: the same program, arguments, environment
    /// changes and working directory. Standard input is null (as in
    /// [`Client::cmd`]); a `Command`'s other standard streams cannot be read back, so
    /// set them on the result. (`env_clear` cannot be read back either.)
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

    /// [`Client::cmd`], inside the namespace.
    pub fn client_cmd(&self, client: &Client, args: &[&str]) -> Command {
        self.wrap(&client.cmd(args))
    }

    /// [`Client::run`], inside the namespace.
    pub fn run(&self, client: &Client, args: &[&str]) -> Run {
        self.client_cmd(client, args).output().unwrap().into()
    }

    /// [`Client::ok`], inside the namespace: runs and asserts success; returns stdout.
    pub fn ok(&self, client: &Client, args: &[&str]) -> String {
        let r = self.run(client, args);
        assert!(
            r.ok,
            "`backchannel {}` (in the namespace) failed:\nstdout: {}\nstderr: {}",
            args.join(" "),
            r.stdout,
            r.stderr
        );
        r.stdout
    }

    /// [`Client::fails`], inside the namespace: runs and asserts failure with a
    /// one-line error; returns stderr.
    pub fn fails(&self, client: &Client, args: &[&str]) -> String {
        let r = self.run(client, args);
        assert!(
            !r.ok,
            "`backchannel {}` (in the namespace) should have failed; stdout: {}",
            args.join(" "),
            r.stdout
        );
        let errors: Vec<&str> = r.stderr.lines().filter(|l| l.starts_with("error: ")).collect();
        assert_eq!(errors.len(), 1, "expected one error line, got: {}", r.stderr);
        r.stderr
    }

    /// [`Client::init`], inside the namespace.
    pub fn init(&self, client: &Client, name: &str, relay: &str) {
        self.ok(client, &["init", "--name", name, "--relay", relay]);
    }

    /// [`DaemonProc::start`], inside the namespace (stopped with SIGTERM on drop, as
    /// `nsenter` execs the daemon in its own place).
    pub fn daemon(&self, client: &Client, extra: &[&str]) -> DaemonProc {
        let mut cmd = self.client_cmd(client, &["daemon"]);
        cmd.args(extra);
        let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        let stderr = collect(child.stderr.take().unwrap());
        thread::spawn(move || {
            let mut rest = String::new();
            let _ = out.read_to_string(&mut rest);
        });
        let daemon = DaemonProc { child, stderr };
        if !line.starts_with("daemon running") {
            thread::sleep(Duration::from_millis(200));
            let said = daemon.stderr.lock().unwrap().clone();
            panic!("unexpected first line from the daemon in the namespace: {line:?}\n{said}");
        }
        daemon
    }

    /// How many connections have been made to `port` (bridged or trapped) from inside
    /// the namespace, every one made before this call counted, however short-lived.
    pub fn connections(&self, port: u16) -> usize {
        assert!(
            self.bridged.contains(&port) || self.trapped.contains(&port),
            "port {port} is neither bridged nor trapped: connections to it are refused, not counted"
        );
        self.counts().into_iter().find(|&(p, _)| p == port).unwrap().1
    }

    /// [`Namespace::connections`] for every port: the bridged ones, then the trapped ones,
    /// each in the order given.
    pub fn counts(&self) -> Vec<(u16, usize)> {
        let answer = {
            let mut control = self.control.lock().unwrap();
            writeln!(control.0, "count").unwrap();
            control.0.flush().unwrap();
            answer_from(&control.1)
        };
        let Some(counts) = answer.as_deref().and_then(|a| a.strip_prefix("counts")) else {
            panic!("the namespace's program did not count: {answer:?}\n{}", self.logs());
        };
        counts
            .split_whitespace()
            .map(|kv| {
                let (p, n) = kv.split_once('=').unwrap();
                (p.parse().unwrap(), n.parse().unwrap())
            })
            .collect()
    }

    /// Tries a TCP connection to `127.0.0.1:port` from inside the namespace: `Ok` if
    /// it was accepted, else the error Python names (`ConnectionRefusedError` for a
    /// port neither bridged nor trapped). A bridged or trapped port counts it.
    pub fn try_connect(&self, port: u16) -> Result<(), String> {
        const PROBE: &str = r#"
import socket, sys
try:
    socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=10).close()
except OSError as e:
    print(type(e).__name__)
    sys.exit(1)
print("connected")
"#;
        let out = self
            .command("python3")
            .args(["-c", PROBE, &port.to_string()])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&out.stdout).trim().to_string();
        match (out.status.success(), said.as_str()) {
            (true, "connected") => Ok(()),
            (false, e) if !e.is_empty() => Err(e.to_string()),
            _ => panic!(
                "the connection probe in the namespace failed: {said}\n{}",
                String::from_utf8_lossy(&out.stderr)
            ),
        }
    }

    /// What the program inside wrote on stderr.
    pub fn logs(&self) -> String {
        self.stderr.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The next line from the program inside, waiting at most [`ANSWER_TIMEOUT`].
    fn answer(&self) -> Option<String> {
        answer_from(&self.control.lock().unwrap().1)
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Each host-side listener wakes to a connection of its own and sees the stop.
        self.stop.store(true, Ordering::SeqCst);
        for (path, handle) in self.listeners.drain(..) {
            let _ = UnixStream::connect(&path);
            let _ = handle.join();
            let _ = std::fs::remove_file(&path);
        }
        if thread::panicking() {
            let logs = self.logs();
            if !logs.is_empty() {
                eprintln!("the namespace's program said, on stderr:\n{logs}");
            }
        }
    }
}

/// Accepts the bridge connections for `port` from inside the namespace, and carries
/// each to `127.0.0.1:port` on the host.
fn host_side(listener: UnixListener, port: u16, stop: Arc<AtomicBool>) {
    for conn in listener.incoming() {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok(inner) = conn else { continue };
        thread::spawn(move || {
            // Refused (nothing on the port now): closing the bridge closes the
            // connection inside too.
            let Ok(outer) = TcpStream::connect(("127.0.0.1", port)) else {
                return;
            };
            let (Ok(inner2), Ok(outer2)) = (inner.try_clone(), outer.try_clone()) else {
                return;
            };
            let back = thread::spawn(move || pump(outer2, inner2));
            pump(inner, outer);
            let _ = back.join();
        });
    }
}

/// Copies `from` to `to` until `from` ends, then half-closes `to`; on an error,
/// shuts both down so that the other direction ends too.
fn pump<A, B>(mut from: A, mut to: B)
where
    A: Read + ShutdownBoth,
    B: Write + ShutdownBoth,
{
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) => {
                to.shut(Shutdown::Write);
                return;
            }
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    from.shut(Shutdown::Both);
    to.shut(Shutdown::Both);
}

/// `shutdown` on either kind of stream.
trait ShutdownBoth {
    fn shut(&self, how: Shutdown);
}

impl ShutdownBoth for TcpStream {
    fn shut(&self, how: Shutdown) {
        let _ = self.shutdown(how);
    }
}

impl ShutdownBoth for UnixStream {
    fn shut(&self, how: Shutdown) {
        let _ = self.shutdown(how);
    }
}

/// The next line on `lines`, or `None` if it ended or took longer than [`ANSWER_TIMEOUT`].
fn answer_from(lines: &Receiver<String>) -> Option<String> {
    lines.recv_timeout(ANSWER_TIMEOUT).ok()
}

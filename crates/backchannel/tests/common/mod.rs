//! Test harness: the real `backchannel` binary, a relay process on loopback,
//! and clients each with their own home.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod fixtures;
pub mod nats;
pub mod netns;
pub mod observer;
pub mod partition;
pub mod socks5;

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};

pub const PASS: &str = "correct horse battery staple";

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_backchannel")
}

/// What every command that opens a home made with the test setting of the key derivation
/// (`BACKCHANNEL_INSECURE_TEST_KDF`, which [`Client::cmd`] sets) prints first on stderr.
/// The harness takes that one line out of what it collects, so that a test asserting
/// "a warning" or "no warning" sees the command's own; `vault::the_test_kdf_warns_on_every_open`
/// checks the line itself.
pub const TEST_KDF_WARNING: &str = "test-only key derivation";

/// `stderr` without the test-KDF warning line.
pub fn without_test_kdf_warning(stderr: &str) -> String {
    stderr
        .split_inclusive('\n')
        .filter(|l| !(l.starts_with("warning: ") && l.contains(TEST_KDF_WARNING)))
        .collect()
}

/// The workspace's root (where `scripts/` and `.tools/` are).
fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Spawns a long-running process and reads the line it announces itself with;
/// its stderr is collected in the background ([`collect`]) and the rest of its stdout drained.
fn spawn_announced(mut cmd: Command) -> (Child, String, Arc<Mutex<String>>) {
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    let stderr = collect(child.stderr.take().unwrap());
    std::thread::spawn(move || {
        let mut rest = String::new();
        let _ = out.read_to_string(&mut rest);
    });
    (child, line, stderr)
}

/// Collects everything `err` says, in the background, without the test-KDF warning line
/// ([`without_test_kdf_warning`]).
fn collect(mut err: impl Read + Send + 'static) -> Arc<Mutex<String>> {
    let sink = Arc::new(Mutex::new(String::new()));
    let out = sink.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        let mut partial = String::new();
        while let Ok(n) = err.read(&mut buf) {
            if n == 0 {
                break;
            }
            partial.push_str(&String::from_utf8_lossy(&buf[..n]));
            if let Some(end) = partial.rfind('\n') {
                let lines: String = partial.drain(..=end).collect();
                out.lock().unwrap().push_str(&without_test_kdf_warning(&lines));
            }
        }
        out.lock().unwrap().push_str(&partial);
    });
    sink
}

/// The lines of `out`, as they come, on a channel.
fn read_lines(out: impl Read + Send + 'static) -> std::sync::mpsc::Receiver<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

/// The envelopes waiting in one mailbox, read from a stopped relay's store the way its
/// operator could.
pub fn stored_envelopes(data: &Path, receive_id: [u8; 32]) -> Vec<Vec<u8>> {
    use backchannel_relay::store::EmbeddedStore;
    let store = EmbeddedStore::open(&data.join("mailboxes.redb"), 10_000).unwrap();
    let out = store
        .fetch(&[backchannel_core::mailbox::MailboxId(receive_id)], 100)
        .unwrap()
        .into_iter()
        .map(|d| d.envelope.as_bytes().to_vec())
        .collect();
    drop(store);
    // Let the store's writer thread release the file.
    std::thread::sleep(std::time::Duration::from_millis(200));
    out
}

/// Deletes the newest envelope of a mailbox from a stopped relay's store (an operator
/// dropping one message for one recipient); returns how many were there.
pub fn drop_newest_envelope(data: &Path, receive_id: [u8; 32]) -> usize {
    use backchannel_relay::store::EmbeddedStore;
    let id = backchannel_core::mailbox::MailboxId(receive_id);
    let store = EmbeddedStore::open(&data.join("mailboxes.redb"), 10_000).unwrap();
    let waiting = store.fetch(&[id], 100).unwrap();
    if let Some(newest) = waiting.iter().map(|d| d.seq).max() {
        store.ack(id, newest).unwrap();
    }
    drop(store);
    std::thread::sleep(std::time::Duration::from_millis(200));
    waiting.len()
}

/// A relay process; killed on drop.
pub struct RelayProc {
    pub child: Child,
    pub address: String,
    pub data: PathBuf,
    pub port: u16,
    pub stderr: Arc<Mutex<String>>,
}

impl RelayProc {
    pub fn start(data: &Path, extra: &[&str]) -> Self {
        Self::start_on(data, "127.0.0.1:0", extra)
    }

    pub fn start_on(data: &Path, listen: &str, extra: &[&str]) -> Self {
        let mut cmd = Command::new(bin());
        cmd.args(["relay", "--listen", listen, "--data"])
            .arg(data)
            .args(extra)
            .env("RUST_LOG", "trace");
        let (mut child, line, stderr) = spawn_announced(cmd);
        let address = match line.trim().strip_prefix("relay address: ") {
            Some(a) => a.to_string(),
            None => {
                // It exited: let its stderr be read to the end, then show it.
                let _ = child.wait();
                std::thread::sleep(std::time::Duration::from_millis(200));
                panic!("the relay did not start: {line:?}\n{}", stderr.lock().unwrap());
            }
        };
        assert!(address.starts_with("bc://"), "{address}");
        let port = address.rsplit(':').next().unwrap().parse().unwrap();
        RelayProc {
            child,
            address,
            data: data.to_path_buf(),
            port,
            stderr,
        }
    }

    /// `kill -9`.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn logs(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }
}

impl Drop for RelayProc {
    fn drop(&mut self) {
        self.kill9();
        // A failing test shows what the relay said (its logs hold no secrets: a test
        // checks that), so that a failure seen once in CI can be read afterwards.
        if std::thread::panicking() {
            let logs = self.logs();
            let lines: Vec<&str> = logs.lines().collect();
            let tail = lines[lines.len().saturating_sub(300)..].join("\n");
            eprintln!(
                "relay {} logs, the last 300 lines (the test failed):\n{tail}",
                self.address
            );
        }
    }
}

/// A client home.
#[derive(Clone)]
pub struct Client {
    pub home: PathBuf,
    pub pass: String,
}

pub struct Run {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for Run {
    fn from(o: Output) -> Self {
        Run {
            ok: o.status.success(),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: without_test_kdf_warning(&String::from_utf8_lossy(&o.stderr)),
        }
    }
}

impl Client {
    pub fn new(root: &Path, name: &str) -> Self {
        Client {
            home: root.join(name),
            pass: PASS.to_string(),
        }
    }

    /// A copy of this device as it is now (its home's files), under `root/name`: what
    /// someone keeps who copied the device before, say, its owner was removed.
    pub fn copy_as(&self, root: &Path, name: &str) -> Client {
        let copy = Client::new(root, name);
        std::fs::create_dir_all(&copy.home).unwrap();
        for f in files(&self.home) {
            std::fs::copy(&f, copy.home.join(f.file_name().unwrap())).unwrap();
        }
        copy
    }

    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(bin());
        c.args(args)
            .env("BACKCHANNEL_HOME", &self.home)
            .env("BACKCHANNEL_PASSPHRASE", &self.pass)
            .env("BACKCHANNEL_INSECURE_TEST_KDF", "1")
            .stdin(Stdio::null());
        c
    }

    pub fn run(&self, args: &[&str]) -> Run {
        self.cmd(args).output().unwrap().into()
    }

    /// Runs with `input` on standard input.
    pub fn run_with_input(&self, args: &[&str], input: &str) -> Run {
        use std::io::Write as _;
        let mut child = self
            .cmd(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
        child.wait_with_output().unwrap().into()
    }

    /// Runs and asserts success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let r = self.run(args);
        assert!(
            r.ok,
            "`backchannel {}` failed:\nstdout: {}\nstderr: {}",
            args.join(" "),
            r.stdout,
            r.stderr
        );
        r.stdout
    }

    /// Runs and asserts failure with a one-line error; returns stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let r = self.run(args);
        assert!(
            !r.ok,
            "`backchannel {}` should have failed; stdout: {}",
            args.join(" "),
            r.stdout
        );
        let errors: Vec<&str> = r.stderr.lines().filter(|l| l.starts_with("error: ")).collect();
        assert_eq!(errors.len(), 1, "expected one error line, got: {}", r.stderr);
        r.stderr
    }

    pub fn init(&self, name: &str, relay: &str) {
        self.ok(&["init", "--name", name, "--relay", relay]);
    }

    /// `read --json --all` as parsed objects.
    pub fn messages(&self, channel: &str) -> Vec<serde_json::Value> {
        self.ok(&["read", channel, "--json", "--all"])
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// Texts of real messages (not events) in a channel.
    pub fn texts(&self, channel: &str) -> Vec<(String, String)> {
        self.messages(channel)
            .into_iter()
            .filter(|m| m.get("event").is_none())
            .map(|m| {
                (
                    m["from"].as_str().unwrap().to_string(),
                    m["text"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    }
}

/// `init` of `c` as `name` at `relay`: the fingerprint it prints (`xxxx xxxx ...`).
pub fn init_with_fingerprint(c: &Client, name: &str, relay: &str) -> String {
    let out = c.ok(&["init", "--name", name, "--relay", relay]);
    out.lines()
        .find_map(|l| l.strip_prefix("fingerprint: "))
        .unwrap_or_else(|| panic!("no fingerprint in {out:?}"))
        .to_string()
}

/// The names of `channel`'s members as `c` lists them, sorted.
pub fn member_names(c: &Client, channel: &str) -> Vec<String> {
    let mut names: Vec<String> = c
        .ok(&["members", channel, "--json"])
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["name"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    names.sort();
    names
}

/// Plays a relay whose operator changes what it keeps for short addresses: `change` is given
/// each bundle the relay at `data` holds (stopped), as stored (`expires_at (8) | bundle`, the
/// table `bundles` of `crates/relay/src/store/embedded/`), and what it leaves is written back.
/// Returns how many there were.
pub fn tamper_with_bundles(data: &Path, mut change: impl FnMut(&mut Vec<u8>)) -> usize {
    use redb::ReadableTable as _;
    let db = redb::Database::open(data.join("mailboxes.redb")).unwrap();
    let def: redb::TableDefinition<[u8; 16], &[u8]> = redb::TableDefinition::new("bundles");
    let tx = db.begin_write().unwrap();
    let count;
    {
        let mut t = tx.open_table(def).unwrap();
        let entries: Vec<([u8; 16], Vec<u8>)> = t
            .iter()
            .unwrap()
            .map(|e| {
                let (k, v) = e.unwrap();
                (k.value(), v.value().to_vec())
            })
            .collect();
        count = entries.len();
        for (name, mut value) in entries {
            change(&mut value);
            t.insert(name, value.as_slice()).unwrap();
        }
    }
    tx.commit().unwrap();
    count
}

/// Two relays on loopback, A and B (their data in `root/relay-a` and `root/relay-b`), each
/// with `--forward-private` (loopback is a private address, where a relay forwards only when
/// its operator allows it) and its `extra` flags.
pub fn two_relays(root: &Path, a_extra: &[&str], b_extra: &[&str]) -> (RelayProc, RelayProc) {
    let start = |name: &str, extra: &[&str]| {
        let mut flags = vec!["--forward-private"];
        flags.extend_from_slice(extra);
        RelayProc::start(&root.join(name), &flags)
    };
    (start("relay-a", a_extra), start("relay-b", b_extra))
}

/// A client's connection to its relay at `home` that forwards to the relay at `to`.
pub async fn forwarding_connection(
    home: &backchannel_core::relay_address::RelayAddress,
    to: &backchannel_core::relay_address::RelayAddress,
) -> backchannel_client::RelayConnection {
    backchannel_client::RelayConnection::connect(home)
        .await
        .unwrap()
        .forward_to(to)
        .await
        .unwrap()
}

/// One initialized client per name, each with its own home under `root`.
pub fn people<const N: usize>(root: &Path, relay: &RelayProc, names: [&str; N]) -> [Client; N] {
    names.map(|n| {
        let c = Client::new(root, n);
        c.init(n, &relay.address);
        c
    })
}

/// The idle-mailbox scenario of issue 17, point 5, against `relay` (started with a short
/// `--idle-mailbox-lifetime`): alice and bob keep syncing for `syncing`, alice updating her
/// keys in their channel every other round (a claim at its sequencer, as every member's
/// weekly key update is), carol stops after joining. Then: a letter to carol's drop box
/// fails saying it no longer exists; alice's and bob's mailboxes and the channel's
/// sequencer are there (a message, a key update and an answer go through); alice's send to carol says her
/// mailbox no longer exists; the relay counts at least two mailboxes expired.
/// `before_checks` gets alice, bob and carol once the syncing is over, for checks of its own.
pub fn idle_mailboxes_expire_and_those_in_use_stay(
    root: &Path,
    relay: &RelayProc,
    syncing: std::time::Duration,
    before_checks: impl FnOnce(&Client, &Client, &Client),
) {
    let [alice, bob, carol] = people(root, relay, ["alice", "bob", "carol"]);
    channel_with(&alice, &[&bob], "kept");
    channel_with(&alice, &[&carol], "left");
    let drop_address = carol.ok(&["drop", "create", "tips"]).trim().to_string();
    let until = std::time::Instant::now() + syncing;
    let mut round = 0;
    while std::time::Instant::now() < until {
        alice.ok(&["sync"]);
        bob.ok(&["sync"]);
        if round % 2 == 0 {
            alice.ok(&["update", "kept"]);
        }
        round += 1;
        std::thread::sleep(std::time::Duration::from_millis(400));
    }
    before_checks(&alice, &bob, &carol);
    let source = Client::new(root, "source-without-home");
    let e = source.fails(&["drop", "send", "--direct", &drop_address, "is anyone there?"]);
    assert!(e.contains("no longer exists"), "{e}");

    bob.ok(&["sync"]);
    alice.ok(&["send", "kept", "still here"]);
    alice.ok(&["update", "kept"]);
    bob.ok(&["send", "kept", "so am i, after your update"]);
    let texts = |c: &Client| c.texts("kept").into_iter().map(|(_, t)| t).collect::<Vec<_>>();
    assert_eq!(texts(&bob), ["still here", "so am i, after your update"]);
    assert_eq!(texts(&alice), ["still here", "so am i, after your update"]);
    let r = alice.run(&["send", "left", "carol?"]);
    assert!(
        r.stderr.contains("mailbox no longer exists"),
        "{}{}",
        r.stdout,
        r.stderr
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let expired: u64 = relay
            .logs()
            .lines()
            .rev()
            .find(|l| l.contains("relay counts"))
            .and_then(|l| l.split_whitespace().find_map(|w| w.strip_prefix("mailboxes_expired=")))
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        if expired >= 2 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "mailboxes expired: {expired}");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// Each of `sent` (texts that carry their send index, zero-padded) shown exactly once by
/// `who`, and `sender`'s messages in the order sent. `shown` is sender -> texts shown.
pub fn assert_exactly_once_in_order(
    shown: &std::collections::HashMap<String, Vec<String>>,
    sender: &str,
    sent: &[String],
    who: &str,
) {
    let got = shown.get(sender).cloned().unwrap_or_default();
    let mut counts: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    for t in &got {
        *counts.entry(t.as_str()).or_default() += 1;
    }
    let missing: Vec<&String> = sent.iter().filter(|t| !counts.contains_key(t.as_str())).collect();
    assert!(
        missing.is_empty(),
        "{who} is missing {} of {sender}'s messages: {missing:?} (shown: {got:?})",
        missing.len()
    );
    let twice: Vec<(&&str, &usize)> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        twice.is_empty(),
        "{who} was shown some of {sender}'s messages more than once: {twice:?}"
    );
    let mut sorted = got.clone();
    sorted.sort();
    assert_eq!(got, sorted, "{who} shows {sender}'s messages out of order");
}

/// Alice makes a channel and admits each of `others` with one invite each.
pub fn channel_with(alice: &Client, others: &[&Client], channel: &str) {
    channel_with_options(alice, others, channel, &[]);
}

/// [`channel_with`], with more arguments to `channel new` (e.g. `--disappear 5s`).
pub fn channel_with_options(alice: &Client, others: &[&Client], channel: &str, options: &[&str]) {
    let mut new = vec!["channel", "new", channel];
    new.extend_from_slice(options);
    alice.ok(&new);
    for o in others {
        let invite = alice.ok(&["invite", channel]);
        let invite = invite.trim();
        assert!(invite.starts_with("bc-invite:"));
        assert_eq!(invite.lines().count(), 1);
        o.ok(&["join", invite]);
        alice.ok(&["sync"]);
        o.ok(&["sync", "--wait", "5"]);
    }
    for o in others {
        o.ok(&["sync"]);
    }
}

/// Every file under `dir`, recursively.
pub fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

pub fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

pub fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// A runtime for tests that drive a relay directly (a hostile client).
pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A relay address with its port replaced (to route a client through a proxy).
pub fn via_port(address: &str, port: u16) -> String {
    let (head, _) = address.rsplit_once(':').unwrap();
    format!("{head}:{port}")
}

/// `backchannel daemon` for a client; stopped with SIGTERM on drop.
pub struct DaemonProc {
    pub child: Child,
    pub stderr: Arc<Mutex<String>>,
}

impl DaemonProc {
    pub fn start(client: &Client, extra: &[&str]) -> Self {
        let mut cmd = client.cmd(&["daemon"]);
        cmd.args(extra);
        let (child, line, stderr) = spawn_announced(cmd);
        assert!(line.starts_with("daemon running"), "unexpected first line: {line:?}");
        DaemonProc { child, stderr }
    }

    /// SIGTERM, then wait.
    pub fn stop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

impl Drop for DaemonProc {
    fn drop(&mut self) {
        self.stop();
    }
}

//! `backchannel bench`: a load generator for the relay, and a count of what idle
//! connections cost. Both start real relay processes (this same binary) on loopback
//! and drive them over real TLS WebSocket connections; BENCHMARKS.md has the figures.
//!
//! Every throughput is reported beside a baseline measured in the same run: the
//! storage engine alone doing the same writes, reads and deletes with the same
//! durability (the embedded store in-process, or JetStream itself publishing,
//! consuming and acknowledging with the same replicas).

use std::collections::HashSet;
use std::io::{BufRead, BufReader, IsTerminal};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use backchannel_client::connection::{ConnectError, RelayConnection};
use backchannel_core::envelope::{Envelope, ENVELOPE_SIZE};
use backchannel_core::frame::{Request, Response, MAX_FETCH};
use backchannel_core::mailbox::{MailboxId, MailboxKeys};
use backchannel_core::relay_address::RelayAddress;
use backchannel_relay::store::{EmbeddedStore, MailboxStore, ProvenWork, Quota};
use rand_core::OsRng;
use serde_json::json;

type BenchError = Box<dyn std::error::Error + Send + Sync>;

/// Which store the relays under test use.
#[derive(Debug, Clone)]
pub enum Store {
    /// The embedded redb store, one relay.
    Embedded,
    /// A NATS JetStream cluster at these URLs.
    Nats {
        /// Server URLs.
        urls: Vec<String>,
        /// Stream replicas.
        replicas: Option<usize>,
        /// Bound of the record stream (`--nats-meta-bytes`), if not the default.
        meta_bytes: Option<u64>,
    },
}

/// `bench relay` settings.
#[derive(Debug, Clone)]
pub struct RelayBench {
    /// Store under test.
    pub store: Store,
    /// Relay processes (clients are spread over them).
    pub relays: usize,
    /// Concurrent clients.
    pub clients: usize,
    /// Envelopes in total.
    pub messages: usize,
    /// Sends in flight per client (unpaced runs).
    pub window: usize,
    /// Total send rate, envelopes per second (open loop); `None`: as fast as it goes.
    pub rate: Option<f64>,
    /// Mailboxes made before the run, each holding one envelope, never read.
    pub idle_mailboxes: usize,
    /// Idle connections held through the run, each long-polling a mailbox of its own.
    pub idle_connections: usize,
}

/// A relay child process, stopped on drop.
struct RelayChild {
    child: Child,
    address: RelayAddress,
}

impl Drop for RelayChild {
    fn drop(&mut self) {
        // SIGTERM, so the relay shuts down as in production (and a profiler it runs
        // under writes its output); SIGKILL if it is still there after 5 s.
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl RelayChild {
    fn start(data: &Path, store: &Store, extra: &[&str]) -> Result<Self, BenchError> {
        let exe = std::env::current_exe()?;
        let mut cmd = Command::new(exe);
        cmd.args(["relay", "--listen", "127.0.0.1:0", "--data"])
            .arg(data)
            // The load generator is one address with many fast connections.
            .args([
                "--max-requests-per-second",
                "0",
                "--max-envelopes-per-mailbox",
                "4000000",
            ])
            .args(["--max-connections", "100000", "--max-connections-per-address", "100000"])
            .args(["--max-mailboxes-per-connection", "100000"])
            .args(["--address-create-rate", "0", "--address-store-rate", "0"])
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if let Store::Nats {
            urls,
            replicas,
            meta_bytes,
        } = store
        {
            cmd.args(["--store", "nats"]);
            for u in urls {
                cmd.args(["--nats", u]);
            }
            if let Some(r) = replicas {
                cmd.args(["--nats-replicas", &r.to_string()]);
            }
            if let Some(b) = meta_bytes {
                cmd.args(["--nats-meta-bytes", &b.to_string()]);
            }
        }
        let mut child = cmd.spawn()?;
        let stdout = child.stdout.take().ok_or("no relay stdout")?;
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        let address = line
            .trim()
            .strip_prefix("relay address: ")
            .ok_or_else(|| format!("the relay did not start: {line:?}"))?
            .parse()?;
        Ok(Self { child, address })
    }

    /// CPU seconds (user + system) and peak resident MiB, from /proc.
    fn usage(&self) -> (f64, f64) {
        let pid = self.child.id();
        (cpu_seconds(&pid.to_string()), rss_mib(pid, "VmHWM:"))
    }
}

/// A process's CPU seconds so far (user + system), from `/proc/PID/stat` (`self` for this
/// one); 0 when it is gone.
fn cpu_seconds(pid: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            // Fields after the parenthesized command name; utime and stime are 14 and 15.
            let rest = s.rsplit_once(')')?.1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
            Some(ticks / 100.0)
        })
        .unwrap_or(0.0)
}

/// The process listening on this machine's TCP `port` (a NATS node of the cluster under
/// test), found through `/proc/net/tcp{,6}` and the processes' open sockets; `None` when
/// it is not local or not visible.
fn listening_pid(port: u16) -> Option<u32> {
    let mut inodes = HashSet::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            // local_address is HEXIP:HEXPORT; state 0A is LISTEN; the inode is field 10.
            let local_port = f.get(1).and_then(|a| a.rsplit_once(':')).map(|(_, p)| p);
            if local_port.and_then(|p| u16::from_str_radix(p, 16).ok()) == Some(port) && f.get(3) == Some(&"0A") {
                if let Some(inode) = f.get(9) {
                    inodes.insert(format!("socket:[{inode}]"));
                }
            }
        }
    }
    if inodes.is_empty() {
        return None;
    }
    for proc_dir in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = proc_dir.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(proc_dir.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if let Ok(target) = std::fs::read_link(fd.path()) {
                if inodes.contains(target.to_string_lossy().as_ref()) {
                    return Some(pid);
                }
            }
        }
    }
    None
}

/// The NATS nodes among `urls` that run on this machine: (URL, pid).
fn local_nodes(urls: &[String]) -> Vec<(String, u32)> {
    urls.iter()
        .filter_map(|u| {
            let port: u16 = u.rsplit_once(':')?.1.trim_end_matches('/').parse().ok()?;
            Some((u.clone(), listening_pid(port)?))
        })
        .collect()
}

/// CPU seconds of each of `pids` now.
fn cpu_of(pids: &[(String, u32)]) -> Vec<f64> {
    pids.iter().map(|(_, pid)| cpu_seconds(&pid.to_string())).collect()
}

/// µs of CPU per envelope between two samples.
fn per_envelope(before: &[f64], after: &[f64], envelopes: usize) -> Vec<f64> {
    before
        .iter()
        .zip(after)
        .map(|(b, a)| (a - b) * 1e6 / envelopes.max(1) as f64)
        .collect()
}

/// A /proc/PID/status field in MiB (`VmRSS:` now, `VmHWM:` the peak).
fn rss_mib(pid: u32, field: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with(field))?;
            line.split_whitespace().nth(1)?.parse::<f64>().ok()
        })
        .map(|kib| kib / 1024.0)
        .unwrap_or(0.0)
}

fn progress(total: u64, what: &str) -> Option<indicatif::ProgressBar> {
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = indicatif::ProgressBar::new(total);
    if let Ok(style) =
        indicatif::ProgressStyle::with_template(&format!("{what} [{{bar:40}}] {{pos}}/{{len}} {{per_sec}} eta {{eta}}"))
    {
        bar.set_style(style);
    }
    Some(bar)
}

/// Updates a progress bar from a counter until `done` reaches `total`.
fn watch_progress(
    bar: Option<indicatif::ProgressBar>,
    done: Arc<AtomicU64>,
    total: u64,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let Some(bar) = bar else { return };
        loop {
            let n = done.load(Ordering::Relaxed);
            bar.set_position(n);
            if n >= total {
                bar.finish_and_clear();
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
}

/// Times a refused send is sent again before the bench gives up.
const MAX_ATTEMPTS: usize = 200;

/// An envelope stamped with its send time (ns since `t0`) and a serial.
fn stamped(t0: Instant, serial: u64) -> Result<Envelope, BenchError> {
    stamped_at(t0.elapsed(), serial)
}

/// An envelope stamped with the time it was due to be sent (since `t0`): a paced send
/// that goes out late counts its lateness as latency (no coordinated omission).
fn stamped_at(due: Duration, serial: u64) -> Result<Envelope, BenchError> {
    let mut b = [0u8; ENVELOPE_SIZE];
    let ns = due.as_nanos() as u64;
    b[..8].copy_from_slice(&ns.to_le_bytes());
    b[8..16].copy_from_slice(&serial.to_le_bytes());
    Ok(Envelope::from_bytes(&b)?)
}

fn stamp_of(e: &Envelope) -> u64 {
    let mut ns = [0u8; 8];
    ns.copy_from_slice(&e.as_bytes()[..8]);
    u64::from_le_bytes(ns)
}

/// How many envelopes client `i` of `n` sends, of `total`.
fn share(total: usize, n: usize, i: usize) -> usize {
    total / n + usize::from(i < total % n)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn refused(what: &str, e: ConnectError) -> BenchError {
    format!("{what}: {e}").into()
}

/// Runs `bench relay`; returns the JSON report.
pub async fn relay(b: &RelayBench) -> Result<serde_json::Value, BenchError> {
    let n = b.clients.max(1);
    let k = b.relays.max(1);
    let m = b.messages.max(n);
    let dir = tempfile::tempdir()?;

    // The NATS nodes on this machine, to read their CPU (none for the embedded store).
    let nodes = match &b.store {
        Store::Embedded => Vec::new(),
        Store::Nats { urls, .. } => local_nodes(urls),
    };
    // The baseline first, on the same machine and in the same run.
    let (nodes_before, self_before) = (cpu_of(&nodes), cpu_seconds("self"));
    let (baseline_name, baseline_eps) = match &b.store {
        Store::Embedded => (
            "embedded store (redb, group commit), in-process",
            embedded_baseline(&dir.path().join("baseline.redb"), n, m, b.window).await?,
        ),
        Store::Nats { urls, replicas, .. } => (
            "JetStream work queue: publish + pull consume + double ack (deletes), same replicas",
            nats_baseline(urls, *replicas, n, m, b.window).await?,
        ),
    };

    let baseline_cpu = json!({
        "nats_nodes": per_envelope(&nodes_before, &cpu_of(&nodes), m),
        "bench_process": per_envelope(&[self_before], &[cpu_seconds("self")], m)[0],
    });

    let mut relays = Vec::new();
    for r in 0..k {
        relays.push(RelayChild::start(&dir.path().join(format!("relay{r}")), &b.store, &[])?);
    }
    let idle_made = idle_mailboxes(&relays, b.idle_mailboxes).await?;
    // Idle long-polls, held through the run: what a relay full of waiting daemons costs.
    let addrs: Vec<RelayAddress> = relays.iter().map(|r| r.address.clone()).collect();
    let (mut idle_polls, stop_idle) = hold_long_polls(&addrs, b.idle_connections).await?;

    // Each client: a receive connection holding its mailbox, a send connection.
    let mut boxes = Vec::new();
    let mut receivers = Vec::new();
    let mut senders = Vec::new();
    for i in 0..n {
        let addr = &relays[i % k].address;
        let keys = MailboxKeys::generate(addr.clone(), &mut OsRng);
        let mut recv = RelayConnection::connect(addr).await?;
        recv.request(&Request::create(&keys, 0))
            .await
            .map_err(|e| refused("creating a mailbox", e))?;
        receivers.push(recv);
        senders.push(RelayConnection::connect(addr).await?);
        boxes.push(keys);
    }

    let relay_pids: Vec<(String, u32)> = relays.iter().map(|r| (String::new(), r.child.id())).collect();
    let (relays_before, nodes_before, self_before) = (cpu_of(&relay_pids), cpu_of(&nodes), cpu_seconds("self"));
    let t0 = Instant::now();
    let received = Arc::new(AtomicU64::new(0));
    let retries = Arc::new(AtomicU64::new(0));
    let ticker = watch_progress(progress(m as u64, "envelopes"), received.clone(), m as u64);
    let mut tasks = tokio::task::JoinSet::new();
    // Client i sends to client i+1's mailbox, so client i receives client i-1's share.
    for (i, mut conn) in receivers.into_iter().enumerate() {
        let expect = share(m, n, (i + n - 1) % n);
        let id = boxes[i].id();
        let received = received.clone();
        tasks.spawn(async move { receive(&mut conn, id, expect, t0, &received).await.map(Some) });
    }
    for (i, mut conn) in senders.into_iter().enumerate() {
        let to = boxes[(i + 1) % n].address.send.0;
        let count = share(m, n, i);
        let window = if b.rate.is_some() { 1 } else { b.window.max(1) };
        let period = b.rate.map(|r| Duration::from_secs_f64(n as f64 / r.max(1.0)));
        let retries = retries.clone();
        tasks.spawn(async move {
            let mut sent = 0usize;
            let mut serial = (i as u64) << 32;
            // Paced clients are staggered over one period, so they don't all send at once.
            let offset = period.map(|p| p * i as u32 / n as u32).unwrap_or_default();
            while sent < count {
                let due = period.map(|p| offset + p * sent as u32);
                if let Some(due) = due {
                    tokio::time::sleep_until((t0 + due).into()).await;
                }
                let batch = window.min(count - sent);
                let mut reqs = Vec::with_capacity(batch);
                for _ in 0..batch {
                    serial += 1;
                    reqs.push(Request::Send {
                        send: to,
                        envelope: match due {
                            Some(due) => stamped_at(due, serial)?,
                            None => stamped(t0, serial)?,
                        },
                        pow: 0,
                    });
                }
                // A send the relay refuses for now (its store slow or unavailable, a limit)
                // is sent again shortly, as a client would; each retry is counted.
                let mut attempts = 0;
                while !reqs.is_empty() {
                    let answers = conn.pipeline(&reqs).await?;
                    let mut again = Vec::new();
                    for (req, r) in reqs.into_iter().zip(answers) {
                        if let Err(e) = r {
                            if attempts >= MAX_ATTEMPTS {
                                return Err(refused("a send, after retries", e));
                            }
                            again.push(req);
                        }
                    }
                    if !again.is_empty() {
                        attempts += 1;
                        retries.fetch_add(again.len() as u64, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    reqs = again;
                }
                sent += batch;
            }
            Ok(None)
        });
    }
    let mut latencies = Vec::with_capacity(m);
    while let Some(done) = tasks.join_next().await {
        if let Some(mut l) = done?? {
            latencies.append(&mut l);
        }
    }
    let elapsed = t0.elapsed().as_secs_f64();
    ticker.abort();
    let _ = stop_idle.send(());
    idle_polls.abort_all();
    let run_cpu = json!({
        "relays": per_envelope(&relays_before, &cpu_of(&relay_pids), m),
        "nats_nodes": per_envelope(&nodes_before, &cpu_of(&nodes), m),
        "load_generator": per_envelope(&[self_before], &[cpu_seconds("self")], m)[0],
    });
    let (cpu, rss) = relays
        .iter()
        .map(RelayChild::usage)
        .fold((0.0, 0.0), |a, u| (a.0 + u.0, a.1 + u.1));
    drop(relays);

    latencies.sort_by(f64::total_cmp);
    let eps = m as f64 / elapsed;
    let store = match &b.store {
        Store::Embedded => "embedded",
        Store::Nats { .. } => "nats",
    };
    Ok(json!({
        "store": store,
        "relays": k,
        "clients": n,
        "messages": m,
        "envelope_bytes": ENVELOPE_SIZE,
        "rate": b.rate,
        "seconds": elapsed,
        "envelopes_per_s": eps,
        "latency_ms": {
            "p50": percentile(&latencies, 0.50),
            "p99": percentile(&latencies, 0.99),
            "p999": percentile(&latencies, 0.999),
        },
        "send_retries": retries.load(Ordering::Relaxed),
        "relay_cpu_s": cpu,
        "relay_rss_mib": rss,
        "idle_mailboxes": idle_made,
        "idle_connections": b.idle_connections,
        "nats_nodes_rss_mib": nodes.iter().map(|(_, pid)| rss_mib(*pid, "VmRSS:")).collect::<Vec<_>>(),
        "cpu_us_per_envelope": run_cpu,
        "baseline": {
            "name": baseline_name,
            "envelopes_per_s": baseline_eps,
            "cpu_us_per_envelope": baseline_cpu,
        },
        "ratio_to_baseline": eps / baseline_eps,
    }))
}

/// Makes `count` mailboxes spread over `relays`, each holding one envelope, and leaves them
/// unread; returns how many were made.
async fn idle_mailboxes(relays: &[RelayChild], count: usize) -> Result<usize, BenchError> {
    /// Creates (and then sends) pipelined this many at a time per connection.
    const BATCH: usize = 500;
    if count == 0 {
        return Ok(0);
    }
    let bar = progress(count as u64, "idle mailboxes");
    let mut tasks = tokio::task::JoinSet::new();
    for (r, relay) in relays.iter().enumerate() {
        let addr = relay.address.clone();
        let mine = share(count, relays.len(), r);
        tasks.spawn(async move {
            let mut made = 0;
            while made < mine {
                let n = BATCH.min(mine - made);
                let keys: Vec<MailboxKeys> = (0..n)
                    .map(|_| MailboxKeys::generate(addr.clone(), &mut OsRng))
                    .collect();
                // A connection per batch: a relay limits the mailboxes one connection opens.
                let mut conn = RelayConnection::connect(&addr).await?;
                let creates: Vec<Request> = keys.iter().map(|k| Request::create(k, 0)).collect();
                for r in conn.pipeline(&creates).await? {
                    r.map_err(|e| refused("creating an idle mailbox", e))?;
                }
                let mut serial = 0;
                let mut sends = Vec::with_capacity(n);
                for k in &keys {
                    serial += 1;
                    sends.push(Request::Send {
                        send: k.address.send.0,
                        envelope: stamped(Instant::now(), serial)?,
                        pow: 0,
                    });
                }
                let mut sender = RelayConnection::connect(&addr).await?;
                for r in sender.pipeline(&sends).await? {
                    r.map_err(|e| refused("filling an idle mailbox", e))?;
                }
                made += n;
            }
            Ok::<usize, BenchError>(made)
        });
    }
    let mut made = 0;
    while let Some(done) = tasks.join_next().await {
        made += done??;
        if let Some(bar) = &bar {
            bar.set_position(made as u64);
        }
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    Ok(made)
}

/// Long-polls one mailbox until `expect` envelopes came, acknowledging each; returns
/// each one's send-to-delivery latency in ms.
async fn receive(
    conn: &mut RelayConnection,
    id: MailboxId,
    expect: usize,
    t0: Instant,
    received: &AtomicU64,
) -> Result<Vec<f64>, BenchError> {
    let mut lat = Vec::with_capacity(expect);
    while lat.len() < expect {
        let got = match conn
            .request(&Request::Fetch {
                max: MAX_FETCH,
                wait_ms: 2000,
            })
            .await
        {
            Ok(Response::Envelopes(list)) => list,
            Ok(other) => return Err(format!("unexpected answer to a fetch: {other:?}").into()),
            Err(e) => return Err(refused("a fetch", e)),
        };
        let now = t0.elapsed().as_nanos() as u64;
        let mut acks = Vec::with_capacity(got.len());
        for d in &got {
            lat.push(now.saturating_sub(stamp_of(&d.envelope)) as f64 / 1e6);
            acks.push(Request::Ack {
                mailbox: id,
                seq: d.seq,
            });
        }
        for r in conn.pipeline(&acks).await? {
            r.map_err(|e| refused("an ack", e))?;
        }
        received.fetch_add(got.len() as u64, Ordering::Relaxed);
    }
    Ok(lat)
}

/// The embedded store alone: `n` writers with `window` sends each in flight (so its
/// group commit batches as it does under the relay), `n` readers fetching and
/// acknowledging each batch at once, every send durable before it returns. Writes go
/// through the same queue the relay uses (the `MailboxStore` methods).
async fn embedded_baseline(path: &Path, n: usize, m: usize, window: usize) -> Result<f64, BenchError> {
    let store: Arc<EmbeddedStore> = Arc::new(EmbeddedStore::open_with_quota(
        path,
        Quota {
            per_mailbox: 4_000_000,
            total: u64::MAX,
        },
    )?);
    let mut caps = Vec::new();
    let mut ids = Vec::new();
    for _ in 0..n {
        let keys = MailboxKeys::generate(
            RelayAddress {
                pin: [0; 32],
                host: "localhost".into(),
                port: 1,
            },
            &mut OsRng,
        );
        let s = store.clone();
        let (id, public, digest) = (keys.id(), keys.recipient_public(), keys.address.send.digest());
        tokio::task::spawn_blocking(move || s.create(id, public, digest, 0)).await??;
        caps.push(keys.address.send.0);
        ids.push(keys.id());
    }
    let t0 = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for (i, cap) in caps.iter().enumerate() {
        let count = share(m, n, i);
        let (store, cap) = (store.clone(), *cap);
        let window = window.max(1);
        tasks.spawn(async move {
            let mut sent = 0;
            while sent < count {
                let batch = window.min(count - sent);
                let mut pending = Vec::with_capacity(batch);
                for s in 0..batch {
                    pending.push(MailboxStore::send(
                        &*store,
                        cap,
                        stamped(t0, (sent + s) as u64)?,
                        u64::MAX,
                        ProvenWork::NONE,
                    ));
                }
                for p in pending {
                    p.await?;
                }
                sent += batch;
            }
            Ok::<(), BenchError>(())
        });
    }
    for (i, id) in ids.iter().enumerate() {
        let expect = share(m, n, i);
        let (store, id) = (store.clone(), *id);
        tasks.spawn(async move {
            let mut got = 0;
            while got < expect {
                let s = store.clone();
                let list = tokio::task::spawn_blocking(move || s.fetch(&[id], usize::from(MAX_FETCH))).await??;
                if list.is_empty() {
                    tokio::time::sleep(Duration::from_micros(500)).await;
                }
                got += list.len();
                let acks: Vec<_> = list.iter().map(|d| MailboxStore::ack(&*store, id, d.seq)).collect();
                for a in acks {
                    a.await?;
                }
            }
            Ok(())
        });
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    Ok(m as f64 / t0.elapsed().as_secs_f64())
}

/// JetStream alone, doing what the relay's store does for each envelope (issue 20, point 2:
/// a fair baseline): a file stream with the relay's replicas and work-queue retention; `n`
/// publishers with `window` acknowledgements outstanding each, `n` pull consumers that
/// double-ack each message, which deletes it (as the relay's ack deletes an envelope) and
/// waits for the server's confirmation.
async fn nats_baseline(
    urls: &[String],
    replicas: Option<usize>,
    n: usize,
    m: usize,
    window: usize,
) -> Result<f64, BenchError> {
    use async_nats::jetstream::{self, consumer, stream};
    use futures_util::StreamExt;
    let addrs: Vec<async_nats::ServerAddr> = urls.iter().map(|u| u.parse()).collect::<Result<_, _>>()?;
    let client = async_nats::connect(addrs).await?;
    let js = jetstream::new(client.clone());
    let replicas = replicas.unwrap_or_else(|| client.server_info().connect_urls.len().clamp(1, 3));
    let mut tag = [0u8; 4];
    rand_core::RngCore::fill_bytes(&mut OsRng, &mut tag);
    let tag: String = tag.iter().map(|b| format!("{b:02x}")).collect();
    let name = format!("BC_BENCH_{tag}");
    let config = stream::Config {
        name: name.clone(),
        subjects: vec![format!("bcbench.{tag}.*")],
        storage: stream::StorageType::File,
        num_replicas: replicas,
        retention: stream::RetentionPolicy::WorkQueue,
        ..Default::default()
    };
    // A cluster that just started may not serve JetStream yet: retry for a while.
    let mut tries = 0;
    let s = loop {
        match js.create_stream(config.clone()).await {
            Ok(s) => break s,
            Err(_) if tries < 40 => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(e) => return Err(e.into()),
        }
    };
    let t0 = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        let count = share(m, n, i);
        let js = js.clone();
        let subject = format!("bcbench.{tag}.{i}");
        tasks.spawn(async move {
            let mut inflight = std::collections::VecDeque::new();
            for s in 0..count {
                let env = stamped(t0, s as u64)?;
                let payload = bytes::Bytes::copy_from_slice(env.as_bytes());
                let id = format!("{i}-{s}");
                let ack = publish_retrying(&js, &subject, &id, payload.clone()).await?;
                inflight.push_back((ack, id, payload));
                if inflight.len() >= window.max(1) {
                    if let Some(a) = inflight.pop_front() {
                        confirm(&js, &subject, a).await?;
                    }
                }
            }
            for a in inflight {
                confirm(&js, &subject, a).await?;
            }
            Ok::<(), BenchError>(())
        });
    }
    for i in 0..n {
        let expect = share(m, n, i);
        let config = consumer::pull::Config {
            durable_name: Some(format!("c{i}")),
            filter_subject: format!("bcbench.{tag}.{i}"),
            ack_policy: consumer::AckPolicy::Explicit,
            ..Default::default()
        };
        let mut tries = 0;
        let c = loop {
            match s.create_consumer(config.clone()).await {
                Ok(c) => break c,
                Err(_) if tries < MAX_ATTEMPTS => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => return Err(e.into()),
            }
        };
        tasks.spawn(async move {
            let mut got = 0;
            let mut msgs = c.messages().await?;
            // Up to `window` double acks in flight, as the relay pipelines its deletes.
            let mut acks = futures_util::stream::FuturesUnordered::new();
            while got < expect {
                if acks.len() >= window.max(1) {
                    if let Some(Ok(())) = acks.next().await {
                        got += 1;
                    }
                    continue;
                }
                tokio::select! {
                    Some(done) = acks.next(), if !acks.is_empty() => {
                        // An ack lost to a leader change is redelivered, and acked then.
                        if done.is_ok() {
                            got += 1;
                        }
                    }
                    next = msgs.next() => match next {
                        Some(Ok(msg)) => acks.push(async move { msg.double_ack().await.map_err(|_| ()) }),
                        // A missed heartbeat while the cluster re-elects: keep pulling.
                        Some(Err(_)) => {}
                        None => return Err("the consumer ended".into()),
                    },
                }
            }
            Ok(())
        });
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    let eps = m as f64 / t0.elapsed().as_secs_f64();
    let _ = js.delete_stream(&name).await;
    Ok(eps)
}

type AckFuture = async_nats::jetstream::context::PublishAckFuture;

/// Publishes with a message id (so a retry is stored once), retrying while JetStream
/// is briefly unavailable (an overloaded cluster re-electing a leader answers "no
/// responders").
async fn publish_retrying(
    js: &async_nats::jetstream::Context,
    subject: &str,
    id: &str,
    payload: bytes::Bytes,
) -> Result<AckFuture, BenchError> {
    use async_nats::jetstream::message::PublishMessage;
    let mut tries = 0;
    loop {
        let msg = PublishMessage::build().payload(payload.clone()).message_id(id);
        match js.send_publish(subject.to_string(), msg).await {
            Ok(ack) => return Ok(ack),
            Err(_) if tries < MAX_ATTEMPTS => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Waits for a publish's acknowledgement, publishing again (same id) if it failed.
async fn confirm(
    js: &async_nats::jetstream::Context,
    subject: &str,
    (ack, id, payload): (AckFuture, String, bytes::Bytes),
) -> Result<(), BenchError> {
    let mut ack = ack;
    let mut tries = 0;
    loop {
        match ack.await {
            Ok(_) => return Ok(()),
            Err(_) if tries < MAX_ATTEMPTS => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
                ack = publish_retrying(js, subject, &id, payload.clone()).await?;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Long-polls held open: `count` connections, spread over `addrs`, each with a mailbox of
/// its own and a `Fetch` waiting on it, renewed until the returned sender is sent on (or
/// dropped with the tasks). Returns once every connection waits.
async fn hold_long_polls(
    addrs: &[RelayAddress],
    count: usize,
) -> Result<(tokio::task::JoinSet<()>, tokio::sync::broadcast::Sender<()>), BenchError> {
    let opened = Arc::new(AtomicU64::new(0));
    let ticker = watch_progress(progress(count as u64, "connections"), opened.clone(), count as u64);
    let (hold_tx, _) = tokio::sync::broadcast::channel::<()>(1);
    let mut tasks = tokio::task::JoinSet::new();
    // Connect in waves so the handshakes don't all time out together on 2 cores.
    let wave = 64;
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<Result<(), String>>(count.max(1));
    for start in (0..count).step_by(wave) {
        for i in 0..(start + wave).min(count) - start {
            let addr = addrs
                .get((start + i) % addrs.len().max(1))
                .ok_or("no relay to hold long-polls on")?
                .clone();
            let ready = ready_tx.clone();
            let mut hold = hold_tx.subscribe();
            tasks.spawn(async move {
                let setup = async {
                    let mut conn = RelayConnection::connect(&addr).await?;
                    let keys = MailboxKeys::generate(addr.clone(), &mut OsRng);
                    conn.request(&Request::create(&keys, 0)).await?;
                    Ok::<_, ConnectError>(conn)
                };
                let mut conn = match setup.await {
                    Ok(c) => {
                        let _ = ready.send(Ok(())).await;
                        c
                    }
                    Err(e) => {
                        let _ = ready.send(Err(e.to_string())).await;
                        return;
                    }
                };
                // Subscribed: a long-poll waiting for envelopes, renewed until told to stop.
                loop {
                    tokio::select! {
                        _ = hold.recv() => return,
                        r = conn.request(&Request::Fetch { max: MAX_FETCH, wait_ms: 25_000 }) => {
                            if r.is_err() { return; }
                        }
                    }
                }
            });
        }
        for _ in start..(start + wave).min(count) {
            match ready_rx.recv().await {
                Some(Ok(())) => {
                    opened.fetch_add(1, Ordering::Relaxed);
                }
                Some(Err(e)) => return Err(format!("a connection failed: {e}").into()),
                None => return Err("connection tasks ended".into()),
            }
        }
    }
    ticker.abort();
    Ok((tasks, hold_tx))
}

/// Runs `bench connections`: `count` idle connections, each with a mailbox open and
/// a long-poll waiting, to one relay; returns the JSON report.
pub async fn connections(count: usize) -> Result<serde_json::Value, BenchError> {
    let dir = tempfile::tempdir()?;
    let relay = RelayChild::start(dir.path(), &Store::Embedded, &["--idle-timeout", "3600s"])?;
    let pid = relay.child.id();
    // Settle, then measure the relay before any client connection.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = rss_mib(pid, "VmRSS:");
    let (mut tasks, hold_tx) = hold_long_polls(std::slice::from_ref(&relay.address), count).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = rss_mib(pid, "VmRSS:");
    let _ = hold_tx.send(());
    tasks.abort_all();
    let per = (after - before).max(0.0) * 1024.0 / count.max(1) as f64;
    Ok(json!({
        "connections": count,
        "relay_rss_mib": after,
        "relay_rss_before_mib": before,
        "kib_per_connection": per,
    }))
}

/// Runs `bench forward`: two relays on loopback, a home relay and a destination, and one
/// mailbox on the destination. Sends `messages` envelopes into it one at a time (each waits
/// for its answer), alternating blocks sent directly to the destination and blocks forwarded
/// through the home relay (docs/protocol.md, "Forwarding"), so that both arms share the
/// machine's noise. Reports each arm's latency (median, p99) and each relay's CPU per envelope.
pub async fn forward(messages: usize) -> Result<serde_json::Value, BenchError> {
    let dir = tempfile::tempdir()?;
    let home = RelayChild::start(&dir.path().join("home"), &Store::Embedded, &["--forward-private"])?;
    let dest = RelayChild::start(
        &dir.path().join("destination"),
        &Store::Embedded,
        &["--forwarder-rate", "0"],
    )?;
    let keys = MailboxKeys::generate(dest.address.clone(), &mut OsRng);
    let mut direct = RelayConnection::connect(&dest.address)
        .await
        .map_err(|e| refused("connecting to the destination", e))?;
    direct
        .request(&Request::create(&keys, 0))
        .await
        .map_err(|e| refused("creating the mailbox", e))?;
    let mut forwarded = RelayConnection::connect(&home.address)
        .await
        .map_err(|e| refused("connecting to the home relay", e))?
        .forward_to(&dest.address)
        .await
        .map_err(|e| refused("asking the home relay to forward", e))?;
    let send = Request::Send {
        send: keys.address.send.0,
        envelope: Envelope::from_bytes(&[7; ENVELOPE_SIZE])?,
        pow: 0,
    };
    // A warm-up of each, then blocks of each in turn.
    for conn in [&mut direct, &mut forwarded] {
        for _ in 0..20 {
            conn.request(&send).await.map_err(|e| refused("warming up", e))?;
        }
    }
    let block = (messages / 20).max(1);
    let mut times: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    // CPU seconds of [home, destination] spent in each arm.
    let mut cpu = [[0.0f64; 2]; 2];
    let mut sent = 0;
    while sent < messages {
        for (arm, conn) in [&mut direct, &mut forwarded].into_iter().enumerate() {
            let before = [home.usage().0, dest.usage().0];
            for _ in 0..block {
                let t = Instant::now();
                conn.request(&send).await.map_err(|e| refused("sending", e))?;
                times[arm].push(t.elapsed().as_secs_f64() * 1000.0);
            }
            let after = [home.usage().0, dest.usage().0];
            for r in 0..2 {
                cpu[arm][r] += after[r] - before[r];
            }
        }
        sent += block;
    }
    let mut report = serde_json::Map::new();
    report.insert("envelopes_per_arm".into(), json!(times[0].len()));
    for (arm, name) in [(0, "direct"), (1, "forwarded")] {
        let t = &mut times[arm];
        t.sort_by(f64::total_cmp);
        let n = t.len().max(1) as f64;
        report.insert(format!("{name}_median_ms"), json!(percentile(t, 0.5)));
        report.insert(format!("{name}_p99_ms"), json!(percentile(t, 0.99)));
        report.insert(format!("{name}_home_cpu_us_per_envelope"), json!(cpu[arm][0] / n * 1e6));
        report.insert(
            format!("{name}_destination_cpu_us_per_envelope"),
            json!(cpu[arm][1] / n * 1e6),
        );
    }
    Ok(serde_json::Value::Object(report))
}

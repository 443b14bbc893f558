//! Cost at scale (issue 20, point 5), measured through the simulator: the real engines
//! and the relay's real embedded store in one process, so that a channel of 1,000 members
//! costs no process start-ups.
//!
//! - **A channel of N members**: the founder (an admin) sends, adds one member and removes
//!   it. Each is the whole client-side operation of `send`, of the `sync` that admits a
//!   waiting joiner (fetch, commit, claim, fan-out of the commit and the welcome) and of
//!   `remove`, with the founder's state saved to a real home on disk (sealed, fsync'd,
//!   renamed), as the binary does. Bytes uploaded are those of the encoded request frames.
//! - **A home of C channels** (two members each): the time of an idle `sync` and the size
//!   of the home on disk.
//!
//! How the fixtures are built (not timed): one observer joins like any member and follows
//! every change, to check that the channel still works; the others join by the real invite
//! and join request, in batches that one commit adds, and are never run again. The relay
//! accepts their envelopes and drops them ([`SimRelay::sinks`]), so that what nobody reads
//! does not fill the store; the founder does all its work for them. While a fixture grows,
//! the founder's saves stay in memory; before anything is measured, its state is saved to
//! its home once, and from then on every save goes there.
//!
//! Its figures are in BENCHMARKS.md ("Cost at scale"), from
//! `BC_SCALE_MEMBERS=2,10,100,1000 BC_SCALE_CHANNELS=1,10,100,1000 cargo test --release -p
//! backchannel-client --lib sim::scale::cost_at_scale -- --nocapture`;
//! `scripts/plot-scale.py` draws them.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use backchannel_core::channel::Suite;
use backchannel_core::identity::Identity;
use backchannel_core::vault::KdfParams;
use rand_core::OsRng;

use super::{relay_address, Crash, Member, NetStats, SimBlobs, SimRelay, SimVault};
use crate::engine::{now_ms, Lifetime};
use crate::home::{Home, Vault};
use crate::session::Session;
use crate::state::State;
use crate::ClientError;

const ROOM: &str = "room";
const HOUR: Duration = Duration::from_secs(3600);

/// A home on disk whose saves are held back while a fixture is built (`real` off), and go
/// to disk as the binary's do once it is measured.
struct SwitchVault {
    home: Home,
    real: Arc<AtomicBool>,
    saves: Arc<Saves>,
}

/// The saves asked of a home, and the bytes of the states they were given (the home skips
/// writing a state identical to the last one written).
#[derive(Debug, Default)]
struct Saves {
    count: AtomicU64,
    bytes: AtomicU64,
}

impl Vault for SwitchVault {
    fn save(&mut self, state: &[u8]) -> Result<(), ClientError> {
        if self.real.load(Ordering::Relaxed) {
            self.saves.count.fetch_add(1, Ordering::Relaxed);
            self.saves.bytes.fetch_add(state.len() as u64, Ordering::Relaxed);
            self.home.save(state)
        } else {
            Ok(())
        }
    }
}

/// What a member sent, counted by its [`NetStats`].
#[derive(Debug, Clone, Copy, Default)]
struct Traffic {
    requests: u64,
    bytes: u64,
    envelopes: u64,
    envelope_bytes: u64,
    links: u64,
    saves: u64,
    saved_bytes: u64,
}

impl Traffic {
    fn of(s: &NetStats, v: &Saves) -> Self {
        Self {
            requests: s.requests.load(Ordering::Relaxed),
            bytes: s.bytes.load(Ordering::Relaxed),
            envelopes: s.envelopes.load(Ordering::Relaxed),
            envelope_bytes: s.envelope_bytes.load(Ordering::Relaxed),
            links: s.links.load(Ordering::Relaxed),
            saves: v.count.load(Ordering::Relaxed),
            saved_bytes: v.bytes.load(Ordering::Relaxed),
        }
    }

    fn since(self, before: Self) -> Self {
        Self {
            requests: self.requests - before.requests,
            bytes: self.bytes - before.bytes,
            envelopes: self.envelopes - before.envelopes,
            envelope_bytes: self.envelope_bytes - before.envelope_bytes,
            links: self.links - before.links,
            saves: self.saves - before.saves,
            saved_bytes: self.saved_bytes - before.saved_bytes,
        }
    }
}

/// One timed operation.
#[derive(Debug, Clone, Copy)]
struct Sample {
    seconds: f64,
    /// CPU time of every thread of this process (openmls's rayon workers included, and
    /// the in-process relay's share): on a shared machine, what waiting for the disk or
    /// for a core does not inflate.
    cpu_seconds: f64,
    traffic: Traffic,
}

/// CPU time so far of every thread of this process, in seconds (Linux's per-thread
/// schedstat, in nanoseconds; 0 where it cannot be read).
fn cpu_seconds() -> f64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0.0;
    };
    let ns: u64 = tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next().and_then(|n| n.parse::<u64>().ok()))
        .sum();
    ns as f64 / 1e9
}

/// Times `op` on `member`, with what it sent meanwhile.
async fn timed<F, T>(stats: &Arc<NetStats>, saves: &Arc<Saves>, op: F) -> (Sample, T)
where
    F: std::future::Future<Output = T>,
{
    let before = Traffic::of(stats, saves);
    let cpu = cpu_seconds();
    let start = Instant::now();
    let out = op.await;
    let seconds = start.elapsed().as_secs_f64();
    let cpu_seconds = cpu_seconds() - cpu;
    (
        Sample {
            seconds,
            cpu_seconds,
            traffic: Traffic::of(stats, saves).since(before),
        },
        out,
    )
}

/// A member that joins and is never run again: its mailboxes are sinks.
fn sink(relay: &Arc<SimRelay>, name: &str) -> Member {
    let identity = Identity::generate(name, &mut OsRng).unwrap();
    let state = State::new(name.into(), *identity.secret_bytes(), relay_address(), Vec::new(), None);
    let bytes = state.encode().unwrap();
    let blobs = SimBlobs::default();
    let session = Session::decode(&bytes, Box::new(blobs.clone()), now_ms()).unwrap();
    let saved = Arc::new(Mutex::new(bytes));
    let crash = Crash::never();
    let vault = Box::new(SimVault {
        saved: saved.clone(),
        crash: crash.clone(),
    });
    Member::over(relay, name, session, vault, saved, blobs, crash, true)
}

/// The member measured: its home is a real one in `dir` (a fast key derivation: it is done
/// once, and not measured).
fn at_home(relay: &Arc<SimRelay>, name: &str, dir: &Path) -> (Member, Arc<AtomicBool>, Arc<Saves>) {
    let identity = Identity::generate(name, &mut OsRng).unwrap();
    let state = State::new(name.into(), *identity.secret_bytes(), relay_address(), Vec::new(), None);
    let bytes = state.encode().unwrap();
    let home = Home::create(dir, b"scale", &bytes, KdfParams::test_only()).unwrap();
    let session = Session::decode(&bytes, Box::new(home.blobs()), now_ms()).unwrap();
    let real = Arc::new(AtomicBool::new(false));
    let saves = Arc::new(Saves::default());
    let vault = Box::new(SwitchVault {
        home,
        real: real.clone(),
        saves: saves.clone(),
    });
    let member = Member::over(
        relay,
        name,
        session,
        vault,
        Arc::default(),
        SimBlobs::default(),
        Crash::never(),
        false,
    );
    (member, real, saves)
}

/// Bytes of every file under `dir`.
fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// A text of 100 bytes.
fn text(i: usize) -> String {
    let head = format!("message {i} ");
    format!("{head}{}", "x".repeat(100 - head.len()))
}

/// Warnings of `m`, for a failure's message.
fn warnings(m: &mut Member) -> Vec<String> {
    m.engine.take_warnings().into_iter().map(|w| w.text).collect()
}

/// A channel whose founder is measured.
struct ScaleChannel {
    relay: Arc<SimRelay>,
    founder: Member,
    real: Arc<AtomicBool>,
    saves: Arc<Saves>,
    dir: PathBuf,
    observer: Member,
    /// Members that are run, besides the observer: with `populate`, those who joined at
    /// positions 2, 4, 8, …, 512, who commit an update after each batch.
    live: Vec<Member>,
    /// Whether the founder's copath is kept populated (see [`ScaleChannel::grow_to`]).
    populate: bool,
    /// Members now, the founder included.
    joined: usize,
    /// For names.
    next: usize,
    sent: usize,
}

impl ScaleChannel {
    async fn new(dir: &Path, populate: bool) -> Self {
        let relay = SimRelay::new();
        let (mut founder, real, saves) = at_home(&relay, "founder", dir);
        founder
            .engine
            .channel_new(ROOM, Suite::default(), Lifetime::default(), false, false)
            .await
            .unwrap();
        let mut observer = Member::new(&relay, "observer");
        let invite = founder.engine.invite(ROOM, 1, HOUR, false).await.unwrap();
        observer.engine.join(&invite, None, Duration::ZERO).await.unwrap();
        founder.sync().await;
        observer.sync().await;
        let mut s = Self {
            relay,
            founder,
            real,
            saves,
            dir: dir.to_path_buf(),
            observer,
            live: Vec::new(),
            populate,
            joined: 0,
            next: 0,
            sent: 0,
        };
        s.joined = s.count();
        assert_eq!(s.joined, 2);
        s
    }

    fn count(&self) -> usize {
        self.founder.engine.members(ROOM).unwrap().len()
    }

    /// Saves of the founder go to disk (`true`, after one save there) or stay in memory.
    fn measuring(&mut self, on: bool) {
        self.real.store(on, Ordering::Relaxed);
        if on {
            self.founder.engine.save().unwrap();
        }
    }

    /// Adds members until there are `n`, at most `batch` by one commit.
    ///
    /// Without `populate`, nobody but the founder ever commits: the tree stays *sparse*, and
    /// each of the founder's commits encrypts a path secret to every other member (the
    /// commit grows with N). With it, the members who joined at positions 2, 4, 8, … (one in
    /// each subtree on the founder's copath) commit an update after each batch, as the
    /// `group` bench's *populated* tree: the founder's commits then encrypt to about
    /// log2 N nodes, the state of a channel whose members rotate their mailboxes.
    async fn grow_to(&mut self, n: usize, batch: usize) {
        self.measuring(false);
        while self.joined < n {
            let k = batch.min(n - self.joined);
            let invite = self
                .founder
                .engine
                .invite(ROOM, u32::try_from(k).unwrap(), HOUR, false)
                .await
                .unwrap();
            for i in 0..k {
                let name = format!("member{}", self.next);
                self.next += 1;
                let position = self.joined + i;
                if self.populate && position >= 2 && position.is_power_of_two() {
                    let mut j = Member::new(&self.relay, &name);
                    j.engine.join(&invite, None, Duration::ZERO).await.unwrap();
                    self.live.push(j);
                } else {
                    let mut j = sink(&self.relay, &name);
                    j.engine.join(&invite, None, Duration::ZERO).await.unwrap();
                }
            }
            let want = self.joined + k;
            for _ in 0..50 {
                self.founder.sync().await;
                if self.count() >= want {
                    break;
                }
            }
            let got = self.count();
            assert_eq!(got, want, "{:?}", warnings(&mut self.founder));
            self.joined = got;
            self.observer.sync().await;
            if self.populate {
                for i in 0..self.live.len() {
                    self.live[i].sync().await;
                    // One that keeps losing its epoch (to the others' rotations) tries
                    // again after the next batch; its subtree stays less populated meanwhile.
                    if let Err(e) = self.live[i].engine.update_keys(ROOM).await {
                        let w = warnings(&mut self.live[i]);
                        eprintln!(
                            "{} could not update at {} members: {e} {w:?}",
                            self.live[i].name, self.joined
                        );
                    }
                }
                self.founder.sync().await;
            }
        }
        self.catch_up().await;
        assert_eq!(self.observer.epoch(ROOM), self.founder.epoch(ROOM));
    }

    /// The observer and the live members read what came (and rotate after a removal).
    async fn catch_up(&mut self) {
        self.observer.sync().await;
        for m in &mut self.live {
            m.sync().await;
        }
    }

    async fn send(&mut self) -> Sample {
        self.sent += 1;
        let t = text(self.sent);
        let (sample, r) = timed(
            &self.founder.stats.clone(),
            &self.saves.clone(),
            self.founder.engine.send(ROOM, &t),
        )
        .await;
        r.unwrap();
        sample
    }

    /// The founder admits one joiner (timed: its `sync`), then the joiner reads its welcome
    /// (timed: its `sync`); returns both and the new member.
    async fn add(&mut self) -> (Sample, Sample, Member) {
        let name = format!("probe{}", self.next);
        self.next += 1;
        let mut probe = Member::new(&self.relay, &name);
        let invite = self.founder.engine.invite(ROOM, 1, HOUR, false).await.unwrap();
        probe.engine.join(&invite, None, Duration::ZERO).await.unwrap();
        let stats = self.founder.stats.clone();
        let (add, r) = timed(&stats, &self.saves, self.founder.engine.sync(Duration::ZERO)).await;
        r.unwrap();
        assert_eq!(self.count(), self.joined + 1, "{:?}", warnings(&mut self.founder));
        let stats = probe.stats.clone();
        let (join, r) = timed(&stats, &Arc::default(), probe.engine.sync(Duration::ZERO)).await;
        r.unwrap();
        assert_eq!(probe.epoch(ROOM), self.founder.epoch(ROOM));
        (add, join, probe)
    }

    async fn remove(&mut self, probe: Member) -> Sample {
        let stats = self.founder.stats.clone();
        let (sample, r) = timed(&stats, &self.saves, self.founder.engine.remove(ROOM, &probe.name)).await;
        r.unwrap();
        assert_eq!(self.count(), self.joined, "{:?}", warnings(&mut self.founder));
        sample
    }

    /// The founder's next sync after a removal: every member who reads a removal rotates its
    /// mailbox there (a self-update commit, fanned out to all), since the removed member
    /// knew its send capability (`Session::trails_after_commit`).
    async fn rotate(&mut self) -> Sample {
        let epoch = self.founder.epoch(ROOM);
        let stats = self.founder.stats.clone();
        let (sample, r) = timed(&stats, &self.saves, self.founder.engine.sync(Duration::ZERO)).await;
        r.unwrap();
        assert_eq!(self.founder.epoch(ROOM), epoch + 1, "{:?}", warnings(&mut self.founder));
        sample
    }

    /// The observer catches up and has read the last message.
    async fn check(&mut self) {
        self.catch_up().await;
        self.catch_up().await;
        assert_eq!(self.observer.epoch(ROOM), self.founder.epoch(ROOM));
        let last = text(self.sent);
        assert!(
            self.observer.texts(ROOM).contains(&last),
            "the observer missed {last:?}"
        );
    }
}

/// A home with many channels, measured.
struct ScaleHome {
    relay: Arc<SimRelay>,
    owner: Member,
    real: Arc<AtomicBool>,
    saves: Arc<Saves>,
    dir: PathBuf,
    channels: usize,
}

impl ScaleHome {
    fn new(dir: &Path) -> Self {
        let relay = SimRelay::new();
        let (owner, real, saves) = at_home(&relay, "owner", dir);
        Self {
            relay,
            owner,
            real,
            saves,
            dir: dir.to_path_buf(),
            channels: 0,
        }
    }

    fn measuring(&mut self, on: bool) {
        self.real.store(on, Ordering::Relaxed);
        if on {
            self.owner.engine.save().unwrap();
        }
    }

    /// Channels of two members (the owner and one who joined by invite) until there are `c`.
    async fn grow_to(&mut self, c: usize) {
        self.measuring(false);
        for i in self.channels..c {
            let name = format!("c{i}");
            self.owner
                .engine
                .channel_new(&name, Suite::default(), Lifetime::default(), false, false)
                .await
                .unwrap();
            let invite = self.owner.engine.invite(&name, 1, HOUR, false).await.unwrap();
            let mut peer = sink(&self.relay, &format!("peer{i}"));
            peer.engine.join(&invite, None, Duration::ZERO).await.unwrap();
        }
        self.owner.sync().await;
        self.owner.sync().await;
        for i in 0..c {
            let n = self.owner.engine.members(&format!("c{i}")).unwrap().len();
            assert_eq!(n, 2, "c{i}: {:?}", warnings(&mut self.owner));
        }
        self.channels = c;
    }

    async fn idle_sync(&mut self) -> Sample {
        let stats = self.owner.stats.clone();
        let (sample, r) = timed(&stats, &self.saves, self.owner.engine.sync(Duration::ZERO)).await;
        assert_eq!(r.unwrap(), 0, "an idle sync brought something");
        sample
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// One JSON line: `fields` (already JSON) with the timing of `samples` and their mean traffic.
fn line(fields: &str, samples: &[Sample]) -> String {
    let secs: Vec<f64> = samples.iter().map(|s| s.seconds).collect();
    let cpu: Vec<f64> = samples.iter().map(|s| s.cpu_seconds).collect();
    let n = samples.len().max(1) as f64;
    let mean = |f: fn(&Traffic) -> u64| samples.iter().map(|s| f(&s.traffic) as f64).sum::<f64>() / n;
    format!(
        "{{{fields},\"n\":{},\"median_s\":{:.6},\"min_s\":{:.6},\"max_s\":{:.6},\"cpu_median_s\":{:.6},\"cpu_min_s\":{:.6},\"requests\":{:.1},\"bytes\":{:.1},\"envelopes\":{:.1},\"envelope_bytes\":{:.1},\"links\":{:.1},\"saves\":{:.1},\"saved_bytes\":{:.1}}}",
        samples.len(),
        median(secs.clone()),
        secs.iter().copied().fold(f64::INFINITY, f64::min),
        secs.iter().copied().fold(0.0, f64::max),
        median(cpu.clone()),
        cpu.iter().copied().fold(f64::INFINITY, f64::min),
        mean(|t| t.requests),
        mean(|t| t.bytes),
        mean(|t| t.envelopes),
        mean(|t| t.envelope_bytes),
        mean(|t| t.links),
        mean(|t| t.saves),
        mean(|t| t.saved_bytes),
    )
}

/// Where the lines go: printed, and appended to `out` when given.
struct Report(Option<std::fs::File>);

impl Report {
    fn emit(&mut self, l: String) {
        use std::io::Write as _;
        println!("{l}");
        if let Some(f) = &mut self.0 {
            writeln!(f, "{l}").unwrap();
            f.flush().unwrap();
        }
    }
}

/// The whole measurement: channels of each of `members`, homes of each of `channels`,
/// `reps` repetitions of each operation (sends: 2 × `reps`), members added `batch` by one
/// commit while a fixture grows.
async fn run(members: &[usize], channels: &[usize], reps: usize, batch: usize, populate: bool, report: &mut Report) {
    let tmp = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let mut ch = ScaleChannel::new(&tmp.path().join("founder"), populate).await;
    let tree = if populate { "populated" } else { "sparse" };
    report.emit(format!(
        "{{\"kind\":\"setup\",\"what\":\"channel\",\"members\":2,\"seconds\":{:.3}}}",
        started.elapsed().as_secs_f64()
    ));
    for &n in members {
        let t = Instant::now();
        ch.grow_to(n, batch).await;
        report.emit(format!(
            "{{\"kind\":\"setup\",\"what\":\"members\",\"tree\":\"{tree}\",\"members\":{n},\"batch\":{batch},\"seconds\":{:.3}}}",
            t.elapsed().as_secs_f64()
        ));
        ch.measuring(true);
        // Once untimed: the first send after the growth also reads what came meanwhile.
        ch.send().await;
        let sends: Vec<Sample> = {
            let mut v = Vec::new();
            for _ in 0..2 * reps {
                v.push(ch.send().await);
            }
            v
        };
        ch.check().await;
        let (mut adds, mut joins, mut removes, mut rotates) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for _ in 0..reps {
            let (add, join, probe) = ch.add().await;
            ch.catch_up().await;
            let remove = ch.remove(probe).await;
            let rotate = ch.rotate().await;
            // The others read both, and each rotates its own mailbox in turn (the founder
            // reads those in the untimed sync of its next invite).
            ch.catch_up().await;
            ch.catch_up().await;
            adds.push(add);
            joins.push(join);
            removes.push(remove);
            rotates.push(rotate);
        }
        ch.send().await;
        ch.check().await;
        let vault = dir_bytes(&ch.dir);
        for (op, samples) in [
            ("send", &sends),
            ("add", &adds),
            ("join", &joins),
            ("remove", &removes),
            ("rotate", &rotates),
        ] {
            report.emit(line(
                &format!(
                    "\"kind\":\"members\",\"tree\":\"{tree}\",\"members\":{n},\"op\":\"{op}\",\"vault_bytes\":{vault}"
                ),
                samples,
            ));
        }
    }
    drop(ch);

    let mut home = ScaleHome::new(&tmp.path().join("owner"));
    for &c in channels {
        let t = Instant::now();
        home.grow_to(c).await;
        report.emit(format!(
            "{{\"kind\":\"setup\",\"what\":\"channels\",\"channels\":{c},\"seconds\":{:.3}}}",
            t.elapsed().as_secs_f64()
        ));
        home.measuring(true);
        // Twice untimed: whatever the growth left to do is done.
        home.owner.sync().await;
        home.owner.sync().await;
        let mut syncs = Vec::new();
        for _ in 0..reps {
            syncs.push(home.idle_sync().await);
        }
        let vault = dir_bytes(&home.dir);
        let state = std::fs::metadata(home.dir.join("state.bcv")).map_or(0, |m| m.len());
        let mailboxes = home.owner.engine.mailbox_count();
        report.emit(line(
            &format!(
                "\"kind\":\"channels\",\"channels\":{c},\"op\":\"idle_sync\",\"vault_bytes\":{vault},\"state_bytes\":{state},\"mailboxes\":{mailboxes}"
            ),
            &syncs,
        ));
    }
}

fn sizes(var: &str, default: &[usize]) -> Vec<usize> {
    match std::env::var(var) {
        Ok(v) => v
            .split(',')
            .filter(|s| !s.trim().is_empty())
            .map(|s| s.trim().parse().unwrap())
            .collect(),
        Err(_) => default.to_vec(),
    }
}

/// The measurement of BENCHMARKS.md, "Cost at scale", and, with none of its settings given,
/// a run at a size the test suite affords (2 and 5 members, 1 and 3 channels), so that the
/// harness is exercised by every test run. Sizes from `BC_SCALE_MEMBERS` and
/// `BC_SCALE_CHANNELS` (comma-separated; BENCHMARKS.md uses 2,10,100,1000 and
/// 1,10,100,1000), repetitions from `BC_SCALE_REPS` (5 for a measurement), the batch of
/// joiners one commit adds while a channel grows from `BC_SCALE_BATCH` (50: a commit adding
/// 100 X-Wing key packages is over the relay's 512 KiB), `BC_SCALE_TREE=sparse` for a tree
/// where only the founder commits; JSON lines on stdout and appended to `BC_SCALE_OUT` if
/// set. A measurement takes minutes: run it in release.
#[tokio::test(flavor = "current_thread")]
async fn cost_at_scale() {
    let measuring = std::env::var_os("BC_SCALE_MEMBERS").is_some() || std::env::var_os("BC_SCALE_CHANNELS").is_some();
    let (members, channels, reps, batch) = if measuring {
        (
            sizes("BC_SCALE_MEMBERS", &[]),
            sizes("BC_SCALE_CHANNELS", &[]),
            sizes("BC_SCALE_REPS", &[5])[0],
            sizes("BC_SCALE_BATCH", &[50])[0],
        )
    } else {
        (vec![2, 5], vec![1, 3], 1, 2)
    };
    let populate = std::env::var("BC_SCALE_TREE").map_or(true, |t| t != "sparse");
    let out = std::env::var("BC_SCALE_OUT")
        .ok()
        .map(|p| std::fs::OpenOptions::new().create(true).append(true).open(p).unwrap());
    run(&members, &channels, reps, batch, populate, &mut Report(out)).await;
}

//! Many clients and a relay in one process: the real engine (the driver) and session
//! of each member, over the relay's real embedded store behind its trait, with no
//! sockets. The relay model can reorder and duplicate what it delivers, and each
//! member can be made to crash after any number of effects (saves and requests):
//! the member is then restarted from the bytes of its last save, through the
//! persisted codec, like a process killed and started again.
//!
//! Modelled on quinn-proto's `Pair::drive`: deterministic enough to run in the test
//! suite in a fraction of a second per scenario.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backchannel_core::channel::Suite;
use backchannel_core::frame::{encode_request, ErrorCode, Request, Response};
use backchannel_core::identity::Identity;
use backchannel_core::mailbox::{MailboxId, MailboxKeys, SendCapability};
use backchannel_core::pow::ProvenWork;
use backchannel_core::relay_address::RelayAddress;
use backchannel_relay::deposit::{commit_part, DepositBudget, DepositSlot};
use backchannel_relay::store::{ClaimProof, EmbeddedStore, MailboxStore, StoreError};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_core::OsRng;
use zeroize::Zeroizing;

use crate::connection::ConnectError;
use crate::engine::{Engine, Lifetime};
use crate::home::Vault;
use crate::session::{Blobs, Session};
use crate::state::State;
use crate::transport::{LinkKey, NetFuture, Network, Results, TransportConfig};
use crate::ClientError;

mod scale;

/// How many effects a member may still perform before it crashes (negative: never).
#[derive(Debug, Default)]
struct Crash(AtomicI64);

impl Crash {
    fn never() -> Arc<Self> {
        Arc::new(Crash(AtomicI64::new(-1)))
    }

    /// Whether the next effect may happen (and counts it).
    fn allow(&self) -> bool {
        let left = self.0.load(Ordering::SeqCst);
        if left < 0 {
            return true;
        }
        if left == 0 {
            return false;
        }
        self.0.store(left - 1, Ordering::SeqCst);
        true
    }

    fn crashed(&self) -> bool {
        self.0.load(Ordering::SeqCst) == 0
    }
}

/// What one member asked of the relay, counted as its requests go (the scale bench reads
/// the bytes a sender uploads from it). Bytes are those of the encoded frames, before the
/// link's own framing and encryption.
#[derive(Debug, Default)]
struct NetStats {
    /// Requests sent.
    requests: AtomicU64,
    /// Bytes of those requests, encoded as frames.
    bytes: AtomicU64,
    /// `Send` requests among them (one envelope each).
    envelopes: AtomicU64,
    /// Bytes of the envelopes those carry.
    envelope_bytes: AtomicU64,
    /// Links opened (a connection of the member's, in the real client).
    links: AtomicU64,
}

impl NetStats {
    fn count(&self, req: &Request) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.bytes
            .fetch_add(encode_request(0, req).len() as u64, Ordering::Relaxed);
        if let Request::Send { envelope, .. } = req {
            self.envelopes.fetch_add(1, Ordering::Relaxed);
            self.envelope_bytes
                .fetch_add(envelope.as_bytes().len() as u64, Ordering::Relaxed);
        }
    }
}

/// What the relay does to deliveries.
#[derive(Debug, Clone, Copy, Default)]
struct Faults {
    /// Shuffle each fetch's envelopes.
    reorder: bool,
    /// Deliver about one envelope in four twice.
    duplicate: bool,
    /// Deliver every envelope twice (a relay replaying each one).
    replay: bool,
}

/// The relay: its real embedded store, and a model of its request handling.
struct SimRelay {
    store: EmbeddedStore,
    faults: Mutex<Faults>,
    /// The send capability whose next envelope the relay stores but withholds.
    hold_next: Mutex<Option<[u8; 32]>>,
    /// Envelopes stored and withheld from every fetch, until released.
    held: Mutex<HashSet<(MailboxId, u64)>>,
    /// Whether the relay also refuses to hand out the commits its sequencers hold.
    hide_commits: Mutex<bool>,
    rng: Mutex<rand::rngs::StdRng>,
    /// Digests of the send capabilities of mailboxes whose envelopes the relay accepts
    /// and drops (members the scale bench never runs again: their mailboxes would only
    /// fill the store).
    sinks: Mutex<HashSet<[u8; 32]>>,
    deposits: DepositBudget,
    _dir: tempfile::TempDir,
}

impl SimRelay {
    fn new() -> Arc<Self> {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(&dir.path().join("mailboxes.redb"), 100_000).unwrap();
        Arc::new(Self {
            store,
            faults: Mutex::new(Faults::default()),
            hold_next: Mutex::new(None),
            held: Mutex::new(HashSet::new()),
            hide_commits: Mutex::new(false),
            rng: Mutex::new(rand::rngs::StdRng::seed_from_u64(7)),
            sinks: Mutex::new(HashSet::new()),
            deposits: DepositBudget::default(),
            _dir: dir,
        })
    }

    fn set_faults(&self, f: Faults) {
        *self.faults.lock().unwrap() = f;
    }

    /// Withholds the next envelope sent with capability `send` (a relay hiding a commit
    /// from one member), until [`SimRelay::release`].
    fn withhold_next(&self, send: [u8; 32]) {
        *self.hold_next.lock().unwrap() = Some(send);
    }

    fn release(&self) {
        self.held.lock().unwrap().clear();
        *self.hide_commits.lock().unwrap() = false;
    }

    /// Answers every fetch of a held commit as if the sequencer held none, until
    /// [`SimRelay::release`].
    fn hide_commits(&self) {
        *self.hide_commits.lock().unwrap() = true;
    }

    fn is_sink(&self, send: &[u8; 32]) -> bool {
        let sinks = self.sinks.lock().unwrap();
        !sinks.is_empty() && sinks.contains(&SendCapability(*send).digest())
    }

    /// A refusal as the relay answers it (a failure of the store is `Storage`).
    fn refusal(e: StoreError) -> ConnectError {
        let (code, detail) = e.refusal().unwrap_or((ErrorCode::Storage, 0));
        ConnectError::Refused(code, detail)
    }

    /// One request on a connection that has opened `opened`, through the store's trait
    /// (as the relay's server calls it).
    async fn handle(
        &self,
        opened: &mut HashSet<MailboxId>,
        deposit: &mut DepositSlot,
        req: &Request,
    ) -> Result<Response, ConnectError> {
        let store = &self.store;
        let r = match req {
            Request::Create {
                mailbox,
                recipient_key,
                send_digest,
                pow_bits,
            } => MailboxStore::create(store, *mailbox, *recipient_key, *send_digest, *pow_bits)
                .await
                .map(|()| {
                    opened.insert(*mailbox);
                    Response::Ok
                }),
            Request::Open { mailbox, .. } => match MailboxStore::recipient_key(store, *mailbox).await {
                Ok(Some(_)) => {
                    opened.insert(*mailbox);
                    Ok(Response::Ok)
                }
                Ok(None) => Err(StoreError::NoSuchMailbox),
                Err(e) => Err(e),
            },
            Request::Send { send, .. } if self.is_sink(send) => Ok(Response::Ok),
            Request::Send { send, envelope, .. } => {
                MailboxStore::send(store, *send, envelope.clone(), u64::MAX, ProvenWork::NONE)
                    .await
                    .map(|stored| {
                        let mut hold = self.hold_next.lock().unwrap();
                        if *hold == Some(*send) {
                            *hold = None;
                            self.held.lock().unwrap().insert(stored);
                        }
                        Response::Ok
                    })
            }
            Request::Fetch { max, wait_ms } => {
                let ids: Vec<MailboxId> = opened.iter().copied().collect();
                // A long-poll, as the relay's: wait (up to `wait_ms`) for something to arrive.
                let deadline = tokio::time::Instant::now() + Duration::from_millis(u64::from(*wait_ms));
                let mut fetched = MailboxStore::fetch(store, &ids, *max as usize).await;
                while matches!(&fetched, Ok(l) if l.is_empty()) && tokio::time::Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    fetched = MailboxStore::fetch(store, &ids, *max as usize).await;
                }
                fetched.map(|mut list| {
                    let held = self.held.lock().unwrap();
                    list.retain(|d| !held.contains(&(d.mailbox, d.seq)));
                    let faults = *self.faults.lock().unwrap();
                    let mut rng = self.rng.lock().unwrap();
                    if faults.replay {
                        let copies = list.clone();
                        list.extend(copies);
                    }
                    if faults.duplicate {
                        let copies: Vec<_> = list.iter().filter(|_| rng.gen_ratio(1, 4)).cloned().collect();
                        list.extend(copies);
                    }
                    if faults.reorder {
                        list.shuffle(&mut *rng);
                    }
                    Response::Envelopes(list)
                })
            }
            Request::Ack { mailbox, seq } => MailboxStore::ack(store, *mailbox, *seq).await.map(|()| Response::Ok),
            Request::Delete { mailbox } => {
                opened.remove(mailbox);
                MailboxStore::delete(store, *mailbox).await.map(|()| Response::Ok)
            }
            Request::Claim { .. } | Request::ClaimKeyed { .. } => {
                return Err(ConnectError::Refused(ErrorCode::NoDeposit, 0))
            }
            Request::Deposit { part, total, bytes } => {
                return match deposit.push(&self.deposits, *part, *total, bytes, std::time::Instant::now()) {
                    Ok(()) => Ok(Response::Ok),
                    Err(code) => Err(ConnectError::Refused(code, 0)),
                }
            }
            req @ Request::ClaimCommit { digest, .. } => {
                let commit = match deposit.take(digest, std::time::Instant::now()) {
                    Ok(c) => c,
                    Err(code) => return Err(ConnectError::Refused(code, 0)),
                };
                match ClaimProof::of(req) {
                    Some((send, epoch, proof)) => MailboxStore::claim(store, send, epoch, proof, Some(commit))
                        .await
                        .map(|()| Response::Ok),
                    None => Ok(Response::Ok),
                }
            }
            Request::FetchCommit { .. } if *self.hide_commits.lock().unwrap() => Err(StoreError::EpochConflict(0)),
            Request::FetchCommit { send, epoch, key, part } => MailboxStore::held_commit(store, *send, *epoch, *key)
                .await
                .and_then(|c| match commit_part(&c, *part) {
                    Some((total, bytes)) => Ok(Response::Commit { total, bytes }),
                    None => Err(StoreError::NoSuchMailbox),
                }),
            // Short invite lines: published and fetched through the store, its clock at 0 (the
            // sim's time is the members' own; nothing published here expires).
            Request::Publish {
                name,
                expires_at,
                bundle,
            } => MailboxStore::bundle_publish(store, *name, bundle.clone(), *expires_at, 0)
                .await
                .map(|()| Response::Ok),
            Request::Bundle { name } => match MailboxStore::bundle_get(store, *name, 0).await {
                Ok(Some(bundle)) => Ok(Response::Record(bundle)),
                Ok(None) => return Err(ConnectError::Refused(ErrorCode::NoSuchBundle, 0)),
                Err(e) => Err(e),
            },
            _ => Ok(Response::Ok),
        };
        r.map_err(Self::refusal)
    }
}

/// A member's network: a connection to the sim relay per set of links, each with the
/// mailboxes opened on it and its deposit.
struct SimNet {
    relay: Arc<SimRelay>,
    conns: HashMap<LinkKey, (HashSet<MailboxId>, DepositSlot)>,
    crash: Arc<Crash>,
    stats: Arc<NetStats>,
    /// The mailboxes this member creates are sinks ([`SimRelay::sinks`]).
    sink: bool,
}

impl Network for SimNet {
    fn pipeline<'a>(&'a mut self, key: &'a LinkKey, reqs: &'a [Request]) -> NetFuture<'a, Results> {
        Box::pin(async move {
            // Let the other members run between requests, so that their commits race.
            tokio::task::yield_now().await;
            let mut out = Vec::with_capacity(reqs.len());
            for req in reqs {
                if !self.crash.allow() {
                    return Err(ConnectError::Unreachable {
                        relay: "sim".into(),
                        source: None,
                    });
                }
                self.stats.count(req);
                if let Request::Create { send_digest, .. } = req {
                    if self.sink {
                        self.relay.sinks.lock().unwrap().insert(*send_digest);
                    }
                }
                if !self.conns.contains_key(key) {
                    self.stats.links.fetch_add(1, Ordering::Relaxed);
                }
                let (opened, deposit) = self.conns.entry(key.clone()).or_default();
                out.push(self.relay.handle(opened, deposit, req).await);
            }
            Ok(out)
        })
    }

    fn open<'a>(
        &'a mut self,
        key: &'a LinkKey,
        boxes: &'a [MailboxKeys],
    ) -> NetFuture<'a, Vec<Result<(), ConnectError>>> {
        Box::pin(async move {
            let reqs: Vec<Request> = boxes.iter().map(|k| Request::open(k, &[0; 32])).collect();
            let results = self.pipeline(key, &reqs).await?;
            Ok(results.into_iter().map(|r| r.map(|_| ())).collect())
        })
    }

    fn forget(&mut self, key: &LinkKey) {
        self.conns.remove(key);
    }
}

/// A member's vault: the bytes of its last save.
struct SimVault {
    saved: Arc<Mutex<Vec<u8>>>,
    crash: Arc<Crash>,
}

impl Vault for SimVault {
    fn save(&mut self, state: &[u8]) -> Result<(), ClientError> {
        if !self.crash.allow() {
            return Err(ClientError::io(
                "writing the local store",
                std::io::Error::other("crashed"),
            ));
        }
        *self.saved.lock().unwrap() = state.to_vec();
        Ok(())
    }
}

/// Sealed bulk data by folder and name.
type BlobMap = BTreeMap<(String, String), Vec<u8>>;

/// Sealed bulk data in memory (kept across a member's restarts, like files on disk).
#[derive(Clone, Default)]
pub(crate) struct SimBlobs(pub(crate) Arc<Mutex<BlobMap>>);

impl SimBlobs {
    /// Bytes held, in all.
    pub(crate) fn bytes(&self) -> u64 {
        self.0.lock().unwrap().values().map(|b| b.len() as u64).sum()
    }
}

impl Blobs for SimBlobs {
    fn write(&mut self, folder: &str, name: &str, plain: &[u8]) -> Result<(), ClientError> {
        self.0
            .lock()
            .unwrap()
            .insert((folder.into(), name.into()), plain.to_vec());
        Ok(())
    }

    fn read(&self, folder: &str, name: &str) -> Result<Zeroizing<Vec<u8>>, ClientError> {
        self.0
            .lock()
            .unwrap()
            .get(&(folder.to_string(), name.to_string()))
            .cloned()
            .map(Zeroizing::new)
            .ok_or_else(|| ClientError::io("reading part of a received file", std::io::ErrorKind::NotFound.into()))
    }

    fn remove(&mut self, folder: &str) {
        self.0.lock().unwrap().retain(|(f, _), _| f != folder);
    }

    fn delete(&mut self, folder: &str, name: &str) {
        self.0.lock().unwrap().remove(&(folder.to_string(), name.to_string()));
    }

    fn folders(&self) -> Vec<String> {
        let mut v: Vec<String> = self.0.lock().unwrap().keys().map(|(f, _)| f.clone()).collect();
        v.dedup();
        v
    }

    fn names(&self, folder: &str) -> Vec<String> {
        self.0
            .lock()
            .unwrap()
            .keys()
            .filter(|(f, _)| f == folder)
            .map(|(_, n)| n.clone())
            .collect()
    }
}

/// One member: its engine, and what survives a crash.
struct Member {
    name: String,
    engine: Engine,
    saved: Arc<Mutex<Vec<u8>>>,
    blobs: SimBlobs,
    crash: Arc<Crash>,
    relay: Arc<SimRelay>,
    stats: Arc<NetStats>,
}

fn relay_address() -> RelayAddress {
    RelayAddress {
        pin: [9; 32],
        host: "sim.invalid".into(),
        port: 1,
    }
}

impl Member {
    fn new(relay: &Arc<SimRelay>, name: &str) -> Self {
        let identity = Identity::generate(name, &mut OsRng).unwrap();
        let state = State::new(name.into(), *identity.secret_bytes(), relay_address(), Vec::new(), None);
        let saved = Arc::new(Mutex::new(state.encode().unwrap()));
        Self::start(relay, name, saved, SimBlobs::default())
    }

    /// Starts (or restarts) from the bytes of the last save.
    fn start(relay: &Arc<SimRelay>, name: &str, saved: Arc<Mutex<Vec<u8>>>, blobs: SimBlobs) -> Self {
        let crash = Crash::never();
        let bytes = saved.lock().unwrap().clone();
        let session = Session::decode(&bytes, Box::new(blobs.clone()), crate::engine::now_ms()).unwrap();
        let vault = Box::new(SimVault {
            saved: saved.clone(),
            crash: crash.clone(),
        });
        Self::over(relay, name, session, vault, saved, blobs, crash, false)
    }

    /// A member whose engine runs `session`, saving to `vault`, over the sim relay.
    #[allow(clippy::too_many_arguments)]
    fn over(
        relay: &Arc<SimRelay>,
        name: &str,
        session: Session,
        vault: Box<dyn Vault>,
        saved: Arc<Mutex<Vec<u8>>>,
        blobs: SimBlobs,
        crash: Arc<Crash>,
        sink: bool,
    ) -> Self {
        let stats = Arc::new(NetStats::default());
        let engine = Engine::from_parts(
            session,
            vault,
            Box::new(SimNet {
                relay: relay.clone(),
                conns: HashMap::new(),
                crash: crash.clone(),
                stats: stats.clone(),
                sink,
            }),
            TransportConfig::default(),
        );
        Self {
            name: name.into(),
            engine,
            saved,
            blobs,
            crash,
            relay: relay.clone(),
            stats,
        }
    }

    /// The process dies; a new one starts from what was saved.
    fn restart(&mut self) {
        *self = Self::start(&self.relay, &self.name, self.saved.clone(), self.blobs.clone());
    }

    /// Crash after `n` more effects.
    fn crash_after(&self, n: i64) {
        self.crash.0.store(n, Ordering::SeqCst);
    }

    async fn sync(&mut self) {
        self.engine.sync(Duration::ZERO).await.unwrap();
    }

    /// Every text message in `channel`, in order (events left out).
    fn texts(&mut self, channel: &str) -> Vec<String> {
        self.engine
            .read(channel, true)
            .unwrap()
            .into_iter()
            .filter(|m| m.message.event.is_none())
            .map(|m| m.message.text)
            .collect()
    }

    fn epoch(&self, channel: &str) -> u64 {
        self.engine.session.load_group(channel).unwrap().epoch()
    }

    fn members(&self, channel: &str) -> Vec<String> {
        let mut m: Vec<String> = self
            .engine
            .members(channel)
            .unwrap()
            .into_iter()
            .map(|m| m.name)
            .collect();
        m.sort();
        m
    }
}

/// A channel `name` made by the first member, with every other member in it.
async fn channel(relay: &Arc<SimRelay>, name: &str, people: &[&str]) -> Vec<Member> {
    let mut members: Vec<Member> = people.iter().map(|p| Member::new(relay, p)).collect();
    members[0]
        .engine
        .channel_new(name, Suite::default(), Lifetime::default(), false, false)
        .await
        .unwrap();
    for i in 1..members.len() {
        let invite = members[0]
            .engine
            .invite(name, 1, Duration::from_secs(3600), false)
            .await
            .unwrap();
        members[i].engine.join(&invite, None, Duration::ZERO).await.unwrap();
        members[0].sync().await;
        members[i].sync().await;
        for m in members.iter_mut().take(i) {
            m.sync().await;
        }
    }
    for m in &mut members {
        m.sync().await;
    }
    members
}

fn names(people: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = people.iter().map(|s| s.to_string()).collect();
    v.sort();
    v
}

#[tokio::test(flavor = "current_thread")]
async fn five_members_committing_at_once_agree_on_one_channel() {
    let relay = SimRelay::new();
    let people = ["ada", "bea", "cyd", "dov", "eve"];
    let mut m = channel(&relay, "room", &people).await;
    for round in 0..2 {
        // Everyone rotates its keys at the same moment: one wins each epoch, the others
        // fetch the winner's commit and try again on top of it.
        let [a, b, c, d, e] = &mut m[..] else { unreachable!() };
        let (ra, rb, rc, rd, re) = tokio::join!(
            a.engine.update_keys("room"),
            b.engine.update_keys("room"),
            c.engine.update_keys("room"),
            d.engine.update_keys("room"),
            e.engine.update_keys("room"),
        );
        for r in [ra, rb, rc, rd, re] {
            r.unwrap_or_else(|e| panic!("round {round}: {e}"));
        }
        for x in m.iter_mut() {
            x.sync().await;
        }
        for x in m.iter_mut() {
            x.sync().await;
        }
        let epochs: Vec<u64> = m.iter().map(|x| x.epoch("room")).collect();
        assert!(
            epochs.iter().all(|e| *e == epochs[0]),
            "round {round}: epochs {epochs:?}"
        );
        for x in &m {
            assert_eq!(x.members("room"), names(&people));
        }
    }
    // The channel still works for everyone: each says something, all read all.
    for x in m.iter_mut() {
        let text = format!("after the race, {}", x.name);
        x.engine.send("room", &text).await.unwrap();
    }
    for x in m.iter_mut() {
        x.sync().await;
    }
    for x in m.iter_mut() {
        let texts = x.texts("room");
        for p in people {
            let want = format!("after the race, {p}");
            assert_eq!(
                texts.iter().filter(|t| **t == want).count(),
                1,
                "{} sees {want:?} once",
                x.name
            );
        }
    }
}

#[tokio::test(flavor = "current_thread")]
async fn two_hundred_messages_reordered_and_duplicated_are_each_shown_once() {
    let relay = SimRelay::new();
    let mut m = channel(&relay, "room", &["ada", "bea"]).await;
    relay.set_faults(Faults {
        reorder: true,
        duplicate: true,
        ..Faults::default()
    });
    let sent: Vec<String> = (0..200).map(|i| format!("message number {i}")).collect();
    for t in &sent {
        m[0].engine.send("room", t).await.unwrap();
    }
    m[1].sync().await;
    m[1].sync().await;
    let got = m[1].texts("room");
    let mut want = sent.clone();
    want.sort();
    let mut seen = got.clone();
    seen.sort();
    assert_eq!(seen, want, "every message once, whatever the order and the copies");
}

#[tokio::test(flavor = "current_thread")]
async fn a_member_offline_across_twenty_epochs_catches_up() {
    let relay = SimRelay::new();
    let mut m = channel(&relay, "room", &["ada", "bea", "cyd"]).await;
    // cyd is away while the channel moves on by 20 epochs, with messages in between.
    let start = m[2].epoch("room");
    for i in 0..20 {
        let who = i % 2;
        m[who].engine.update_keys("room").await.unwrap();
        let text = format!("epoch step {i}");
        m[who].engine.send("room", &text).await.unwrap();
        m[1 - who].sync().await;
    }
    assert_eq!(m[0].epoch("room"), start + 20);
    m[2].sync().await;
    m[2].sync().await;
    assert_eq!(m[2].epoch("room"), m[0].epoch("room"));
    let texts = m[2].texts("room");
    for i in 0..20 {
        let want = format!("epoch step {i}");
        assert_eq!(texts.iter().filter(|t| **t == want).count(), 1, "{want:?} once");
    }
    // And cyd can still speak.
    m[2].engine.send("room", "back again").await.unwrap();
    m[0].sync().await;
    assert!(m[0].texts("room").contains(&"back again".to_string()));
}

/// Runs `op` on member 0 with a crash after `k` effects, for every `k` until the
/// operation completes; after each crash the member restarts from its last save and
/// syncs twice; then `check` runs on the world.
async fn crash_everywhere<Op, Check>(people: &[&str], mut op: Op, mut check: Check)
where
    Op: for<'a> FnMut(
        &'a mut Member,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), ClientError>> + 'a>>,
    Check: FnMut(usize, bool, &mut [Member]),
{
    for k in 0.. {
        let relay = SimRelay::new();
        let mut m = channel(&relay, "room", people).await;
        m[0].crash_after(k);
        let _ = op(&mut m[0]).await;
        let crashed = m[0].crash.crashed();
        m[0].restart();
        for _ in 0..2 {
            for x in m.iter_mut() {
                x.sync().await;
            }
        }
        check(k as usize, crashed, &mut m);
        // Whatever the crash left, the channel still works: another member can change
        // it (no epoch is held by a commit that will never come) and a message reaches
        // every member still in it, once.
        m[1].engine
            .update_keys("room")
            .await
            .unwrap_or_else(|e| panic!("crash after {k} effects: the channel is stuck: {e}"));
        let text = format!("still talking after a crash at {k}");
        m[1].engine.send("room", &text).await.unwrap();
        for x in m.iter_mut() {
            x.sync().await;
        }
        for x in m.iter_mut() {
            if x.engine.session.is_active("room") {
                let n = x.texts("room").iter().filter(|t| **t == text).count();
                assert_eq!(n, 1, "crash after {k}: {} reads the next message once", x.name);
            }
        }
        if !crashed {
            assert!(k > 2, "the operation needs more than two effects");
            eprintln!("crashed at each of {k} points");
            return;
        }
    }
}

#[tokio::test(flavor = "current_thread")]
async fn a_send_crashed_between_any_two_effects_is_shown_once_or_not_at_all() {
    crash_everywhere(
        &["ada", "bea"],
        |a| Box::pin(async move { a.engine.send("room", "the one message").await }),
        |k, crashed, m| {
            let mine = m[0].texts("room").iter().filter(|t| *t == "the one message").count();
            let theirs = m[1].texts("room").iter().filter(|t| *t == "the one message").count();
            // Before the first save the send never happened; after it, it happens once.
            let want = if k == 0 { 0 } else { 1 };
            assert_eq!(
                (mine, theirs),
                (want, want),
                "crash after {k} effects (crashed: {crashed})"
            );
        },
    )
    .await;
}

#[tokio::test(flavor = "current_thread")]
async fn a_commit_crashed_between_any_two_effects_leaves_one_channel() {
    crash_everywhere(
        &["ada", "bea", "cyd"],
        |a| Box::pin(async move { a.engine.remove("room", "cyd").await.map(|_| ()) }),
        |k, crashed, m| {
            let (e0, e1) = (m[0].epoch("room"), m[1].epoch("room"));
            assert_eq!(
                e0, e1,
                "crash after {k} effects (crashed: {crashed}): ada and bea agree"
            );
            let members = m[0].members("room");
            assert_eq!(members, m[1].members("room"), "crash after {k}");
            if !crashed {
                assert_eq!(members, names(&["ada", "bea"]));
            }
        },
    )
    .await;
}

/// Finding 6 of the integrity review: a relay that delivers every envelope twice used to
/// spend an invite's uses on the copies of one join request, and the duplicate key package
/// in the batch aborted the admission. Now the copy is dropped without taking a use: the
/// joiner is admitted, and the invite's second use admits a second joiner.
#[tokio::test(flavor = "current_thread")]
async fn a_replayed_join_request_takes_one_use_and_admits_once() {
    let relay = SimRelay::new();
    let mut m = channel(&relay, "room", &["ada"]).await;
    let invite = m[0]
        .engine
        .invite("room", 2, Duration::from_secs(3600), false)
        .await
        .unwrap();
    relay.set_faults(Faults {
        replay: true,
        ..Faults::default()
    });
    for name in ["bea", "cyd"] {
        let mut joiner = Member::new(&relay, name);
        joiner.engine.join(&invite, None, Duration::ZERO).await.unwrap();
        m[0].sync().await;
        joiner.sync().await;
        m.push(joiner);
    }
    assert_eq!(m[0].members("room"), names(&["ada", "bea", "cyd"]));
    for x in &mut m {
        x.sync().await;
    }
    assert_eq!(m[2].members("room"), names(&["ada", "bea", "cyd"]));
}

/// Finding 6: a join request that nobody answers is given up a day after its invite
/// expired: the joiner is told, its join mailbox is deleted at the relay and the key
/// package's private key is forgotten.
#[tokio::test(flavor = "current_thread")]
async fn an_unanswered_join_request_is_given_up_after_its_invite_expired() {
    let relay = SimRelay::new();
    let mut m = channel(&relay, "room", &["ada"]).await;
    let invite = m[0]
        .engine
        .invite("room", 1, Duration::from_secs(60), false)
        .await
        .unwrap();
    let mut bea = Member::new(&relay, "bea");
    bea.engine.join(&invite, None, Duration::ZERO).await.unwrap();
    // Ada never answers. A day and a minute later:
    let waiting = bea.engine.session.state().pending_joins[0].mailbox.id();
    let later = crate::engine::now_ms() + (60 + crate::session::lifecycle::JOIN_GRACE.as_secs() + 1) * 1000;
    bea.engine.session.set_now(later);
    bea.engine.session.expire_invites();
    assert!(bea.engine.session.state().pending_joins.is_empty());
    assert_eq!(
        bea.engine.session.provider.forget_key_packages(),
        0,
        "already forgotten"
    );
    bea.sync().await;
    assert!(bea
        .engine
        .take_warnings()
        .iter()
        .any(|w| w.text.contains("gave up waiting to be admitted")));
    assert_eq!(
        MailboxStore::recipient_key(&relay.store, waiting).await.unwrap(),
        None,
        "the join mailbox is deleted"
    );
}

/// Finding 3: a relay withholds a commit from one member (in the mailbox, and at the
/// sequencer) and delivers the message that follows it. That member says at once that it
/// is behind, and does not seal its own message in the epoch the others have left: it
/// waits, and goes once the commit arrives.
#[tokio::test(flavor = "current_thread")]
async fn a_member_whose_commit_is_withheld_says_it_is_behind_and_does_not_send() {
    let relay = SimRelay::new();
    let mut m = channel(&relay, "room", &["ada", "bea"]).await;
    let bea_box = m[1].engine.debug_mailbox("room").unwrap().address.send.0;
    relay.withhold_next(bea_box);
    relay.hide_commits();
    m[0].engine.update_keys("room").await.unwrap();
    m[0].engine.send("room", "after the change").await.unwrap();
    m[1].sync().await;
    let warned = m[1].engine.take_warnings();
    assert!(
        warned.iter().any(|w| w.text.contains("this device is behind")),
        "{warned:?}"
    );
    assert!(m[1].texts("room").is_empty(), "nothing readable yet");
    match m[1].engine.send("room", "a reply").await {
        Err(ClientError::Queued(crate::Holdup::Behind)) => {}
        other => panic!("{other:?}"),
    }
    // Once the relay lets the commit through, everything arrives and the reply goes.
    relay.release();
    m[1].sync().await;
    assert!(m[1].texts("room").contains(&"after the change".to_string()));
    m[0].sync().await;
    assert!(m[0].texts("room").contains(&"a reply".to_string()));
    assert_eq!(m[0].epoch("room"), m[1].epoch("room"));
}

/// Finding 1: a commit lost on its way to one member's mailbox (a relay that drops it)
/// is read at the channel's sequencer, which holds it with the grant of its epoch: the
/// member catches up in the same sync, reads what followed, and can reply at once.
#[tokio::test(flavor = "current_thread")]
async fn a_commit_missing_from_the_mailbox_is_read_at_the_sequencer() {
    let relay = SimRelay::new();
    let mut m = channel(&relay, "room", &["ada", "bea"]).await;
    let bea_box = m[1].engine.debug_mailbox("room").unwrap().address.send.0;
    relay.withhold_next(bea_box);
    m[0].engine.update_keys("room").await.unwrap();
    m[0].engine.send("room", "after the change").await.unwrap();
    m[1].sync().await;
    assert_eq!(m[0].epoch("room"), m[1].epoch("room"));
    assert_eq!(m[1].texts("room"), vec!["after the change".to_string()]);
    m[1].engine.send("room", "a reply").await.unwrap();
    m[0].sync().await;
    assert!(m[0].texts("room").contains(&"a reply".to_string()));
    // The withheld copy, once the relay lets it through, is skipped without a word.
    relay.release();
    m[1].sync().await;
    let warned = m[1].engine.take_warnings();
    assert!(!warned.iter().any(|w| w.text.contains("discarded")), "{warned:?}");
    assert_eq!(m[1].texts("room").len(), 2);
}

/// Finding 4 (part): a relay that replays one bad envelope, or a holder of a member's send
/// capability who sends garbage, 500 times over: the member's history gets one event that
/// counts them, its saved state grows by that one event, and honest messages still arrive.
#[tokio::test(flavor = "current_thread")]
async fn five_hundred_rejections_are_one_counted_event() {
    use backchannel_core::envelope::{Envelope, ENVELOPE_SIZE};
    use rand::RngCore;
    let relay = SimRelay::new();
    let mut m = channel(&relay, "room", &["ada", "bea"]).await;
    m[1].sync().await;
    let _ = m[1].engine.read("room", false).unwrap();
    let before = m[1].engine.session.encode().unwrap().len();
    let bea_box = m[1].engine.debug_mailbox("room").unwrap().address.send.0;
    let mut junk = vec![0u8; ENVELOPE_SIZE];
    rand::thread_rng().fill_bytes(&mut junk);
    let junk = Envelope::from_bytes(&junk).unwrap();
    for _ in 0..500 {
        MailboxStore::send(&relay.store, bea_box, junk.clone(), u64::MAX, ProvenWork::NONE)
            .await
            .unwrap();
    }
    m[0].engine.send("room", "still here").await.unwrap();
    for _ in 0..40 {
        m[1].sync().await;
    }
    let shown = m[1].engine.read("room", false).unwrap();
    let events: Vec<&str> = shown
        .iter()
        .filter(|v| v.message.event.is_some())
        .map(|v| v.message.text.as_str())
        .collect();
    assert_eq!(
        events,
        vec!["discarded an envelope that failed authentication (forged or corrupted) (500 times)"]
    );
    assert!(shown.iter().any(|v| v.message.text == "still here"));
    let after = m[1].engine.session.encode().unwrap().len();
    assert!(after < before + 2048, "the state grew from {before} to {after} bytes");
}

/// The alarms in `channel` in `m`'s history, in order: its events other than joins, role changes,
/// removals and closing.
fn events(m: &mut Member, channel: &str) -> Vec<(crate::state::EventKind, String)> {
    use crate::state::EventKind::{Closed, Joined, Removed, Role};
    m.engine
        .read(channel, true)
        .unwrap()
        .into_iter()
        .filter_map(|v| v.message.event.map(|k| (k, v.message.text)))
        .filter(|(k, _)| !matches!(k, Joined | Removed | Closed | Role))
        .collect()
}

/// Finding 3: a relay drops one copy of one message for one member (it stores it and
/// never delivers it). The next message from the same sender shows that one is missing,
/// said at once and kept in the history; when the relay lets it through after all, it is
/// shown and the event says it came out of order.
#[tokio::test(flavor = "current_thread")]
async fn a_withheld_message_is_reported_missing_until_it_arrives() {
    use crate::state::EventKind;
    let relay = SimRelay::new();
    let mut m = channel(&relay, "room", &["ada", "bea"]).await;
    let bea_box = m[1].engine.debug_mailbox("room").unwrap().address.send.0;
    m[0].engine.send("room", "one").await.unwrap();
    relay.withhold_next(bea_box);
    m[0].engine.send("room", "two").await.unwrap();
    m[0].engine.send("room", "three").await.unwrap();
    m[1].sync().await;
    assert_eq!(m[1].texts("room"), ["one", "three"]);
    let warned = m[1].engine.take_warnings();
    assert!(
        warned.iter().any(|w| w.text.contains("a message from ada is missing")),
        "{warned:?}"
    );
    assert_eq!(
        events(&mut m[1], "room"),
        [(EventKind::Missing, "a message from ada is missing".to_string())]
    );
    relay.release();
    m[1].sync().await;
    assert_eq!(m[1].texts("room"), ["one", "three", "two"]);
    assert_eq!(
        events(&mut m[1], "room"),
        [(
            EventKind::Missing,
            "the message from ada that was missing arrived, out of order".to_string()
        )]
    );
    // Nothing is reported where nothing was withheld.
    assert!(events(&mut m[0], "room").is_empty());
}

/// Finding 3: the last message a member sent is withheld for good. No later message
/// shows the gap; the sender's next commit does (a key update: weekly at the latest).
#[tokio::test(flavor = "current_thread")]
async fn a_withheld_last_message_is_missed_at_the_senders_next_commit() {
    use crate::state::EventKind;
    let relay = SimRelay::new();
    let mut m = channel(&relay, "room", &["ada", "bea"]).await;
    let bea_box = m[1].engine.debug_mailbox("room").unwrap().address.send.0;
    m[0].engine.send("room", "one").await.unwrap();
    relay.withhold_next(bea_box);
    m[0].engine.send("room", "the last word").await.unwrap();
    m[1].sync().await;
    assert_eq!(m[1].texts("room"), ["one"]);
    assert!(events(&mut m[1], "room").is_empty());
    m[0].engine.update_keys("room").await.unwrap();
    m[1].sync().await;
    assert_eq!(
        events(&mut m[1], "room"),
        [(EventKind::Missing, "a message from ada is missing".to_string())]
    );
}

/// Finding 3: a relay withholds a removal from one member, who goes on sealing in the
/// epoch before it (so the removed member could read what it sends). A member who has
/// seen the removal shows that message with a loud note saying so.
#[tokio::test(flavor = "current_thread")]
async fn a_message_sealed_before_a_removal_is_flagged() {
    use crate::state::EventKind;
    let relay = SimRelay::new();
    let mut m = channel(&relay, "room", &["ada", "bea", "cyd"]).await;
    let bea_box = m[1].engine.debug_mailbox("room").unwrap().address.send.0;
    relay.withhold_next(bea_box);
    m[0].engine.remove("room", "cyd").await.unwrap();
    m[1].engine.send("room", "for ada and cyd").await.unwrap();
    m[0].sync().await;
    assert!(m[0].texts("room").contains(&"for ada and cyd".to_string()));
    let ev = events(&mut m[0], "room");
    assert_eq!(
        ev.last(),
        Some(&(
            EventKind::Exposed,
            "bea sealed the message above before cyd was removed: cyd could read it".to_string()
        )),
        "{ev:?}"
    );
    // Once bea has the removal, what it sends is not flagged.
    relay.release();
    m[1].sync().await;
    m[1].engine.send("room", "now for ada alone").await.unwrap();
    m[0].sync().await;
    assert_eq!(
        events(&mut m[0], "room")
            .iter()
            .filter(|(k, _)| *k == EventKind::Exposed)
            .count(),
        1
    );
}

/// Finding 6: a relay replays the join request of someone the invite admitted and who
/// was removed since. The invite admits a person once: the request is refused with a
/// warning and takes no use.
#[tokio::test(flavor = "current_thread")]
async fn a_replayed_join_request_of_a_removed_member_is_refused() {
    let relay = SimRelay::new();
    let mut m = channel(&relay, "room", &["ada"]).await;
    let invite = m[0]
        .engine
        .invite("room", 2, Duration::from_secs(3600), false)
        .await
        .unwrap();
    let invite_box = m[0].engine.session.channel("room").unwrap().invites[0].mailbox.clone();
    let mut bea = Member::new(&relay, "bea");
    bea.engine.join(&invite, None, Duration::ZERO).await.unwrap();
    // The relay keeps a copy of bea's request.
    let copies = MailboxStore::fetch(&relay.store, &[invite_box.id()], 100)
        .await
        .unwrap();
    assert!(!copies.is_empty());
    m[0].sync().await;
    bea.sync().await;
    assert_eq!(m[0].members("room"), names(&["ada", "bea"]));
    m[0].engine.remove("room", "bea").await.unwrap();
    for c in copies {
        MailboxStore::send(
            &relay.store,
            invite_box.address.send.0,
            c.envelope,
            u64::MAX,
            ProvenWork::NONE,
        )
        .await
        .unwrap();
    }
    m[0].sync().await;
    assert_eq!(m[0].members("room"), names(&["ada"]));
    let warned = m[0].engine.take_warnings();
    assert!(
        warned.iter().any(|w| w
            .text
            .contains("refused bea: the invite had already admitted them once")),
        "{warned:?}"
    );
    assert_eq!(m[0].engine.session.channel("room").unwrap().invites[0].uses_left, 1);
}

/// Finding 4: a removed member knew every member's mailbox (its send capability). Each
/// remaining member rotates its mailbox at its next sync after reading the removal, the
/// remover included, so what the ex-member can send them dies with its membership.
#[tokio::test(flavor = "current_thread")]
async fn after_a_removal_every_remaining_member_rotates_its_mailbox() {
    let relay = SimRelay::new();
    let mut m = channel(&relay, "room", &["ada", "bea", "cyd"]).await;
    let before: Vec<_> = m.iter().map(|x| x.engine.debug_mailbox("room").unwrap().id()).collect();
    m[0].engine.remove("room", "cyd").await.unwrap();
    for _ in 0..2 {
        m[0].sync().await;
        m[1].sync().await;
    }
    for (i, x) in m.iter().take(2).enumerate() {
        assert_ne!(x.engine.debug_mailbox("room").unwrap().id(), before[i], "{}", x.name);
    }
    assert_eq!(m[0].epoch("room"), m[1].epoch("room"));
    m[1].engine.send("room", "after the rotations").await.unwrap();
    m[0].sync().await;
    assert!(m[0].texts("room").contains(&"after the rotations".to_string()));
}

/// Finding 4: a hostile member (or anyone holding a member's mailbox keys, like an
/// ex-member for the days after a rotation) pushes well over 1 GiB at bea: valid messages
/// that fill her history past its cap (4 MiB in tests, 64 MiB in the binary: the same
/// code), then 256 payloads of 4 MiB, every one
/// short of its last chunk, and chunks announcing payloads larger than a channel mailbox
/// takes. Her saved state stays within 8 MiB plus 64 KiB for her one channel, what is
/// sealed beside it within its stated caps, the oldest history gives way with one event,
/// one counted event says what was refused, and the honest messages sent meanwhile arrive.
#[tokio::test(flavor = "current_thread")]
async fn a_gibibyte_of_hostile_data_keeps_the_vault_bounded_and_honest_messages_arrive() {
    use crate::session::inbox::{Via, CHANNEL_PARTIAL_BYTES};
    use crate::session::log::{HISTORY_BYTES, SEGMENT_BYTES};
    use crate::session::Role;
    use crate::state::EventKind;
    use backchannel_core::envelope::seal_payload;
    use backchannel_core::envelope::PayloadKind;
    let relay = SimRelay::new();
    let mut m = channel(&relay, "room", &["ada", "bea", "mal"]).await;
    let vault_bound = 8 * 1024 * 1024 + 64 * 1024;
    let before = m[1].engine.session.encode().unwrap().len();
    let sealed = |m: &Member| m.blobs.bytes();
    let sealed_bound = HISTORY_BYTES + SEGMENT_BYTES as u64 + CHANNEL_PARTIAL_BYTES as u64 + (1 << 20);
    let mut pushed = 0usize;

    // Valid messages: 40 of 200 kB from mal, an honest one from ada after the 20th.
    let big = "m".repeat(200_000);
    for i in 0..40 {
        m[2].engine.send("room", &big).await.unwrap();
        pushed += big.len();
        if i == 20 {
            m[0].engine.send("room", "in the middle of it").await.unwrap();
        }
        m[1].sync().await;
        let _ = m[1].engine.take_warnings();
    }
    // Offers of empty files (complete at once, so no limit on transfers in progress
    // applies): the records a channel keeps are bounded, and the flood deletes mal's own
    // records, not the file ada sent before it, which bea has not saved yet.
    let dir = tempfile::tempdir().unwrap();
    let ledger = dir.path().join("ledger.txt");
    std::fs::write(&ledger, vec![b'l'; 10_000]).unwrap();
    m[0].engine.send_file("room", &ledger, &mut |_| {}).await.unwrap();
    for i in 0..100 {
        let empty = dir.path().join(format!("empty-{i}"));
        std::fs::write(&empty, b"").unwrap();
        m[2].engine.send_file("room", &empty, &mut |_| {}).await.unwrap();
    }
    m[1].sync().await;
    let _ = m[1].engine.take_warnings();
    let records = m[1].engine.session.state.files.incoming.len();
    assert!(
        records <= crate::session::files::MAX_FILES_PER_CHANNEL,
        "{records} file records"
    );
    assert!(
        m[1].engine
            .session
            .state
            .files
            .incoming
            .iter()
            .any(|f| f.offer.name == "ledger.txt" && f.status == crate::state::FileStatus::Complete),
        "ada's unsaved file was deleted by mal's flood"
    );
    let state = m[1].engine.session.encode().unwrap().len();
    assert!(state <= vault_bound, "the saved state is {state} bytes");
    assert!(sealed(&m[1]) <= sealed_bound, "{} bytes sealed", sealed(&m[1]));

    // Unfinished payloads.
    let keys = m[1].engine.debug_mailbox("room").unwrap();
    let role = Role::Channel("room".into());
    let (seal, send) = (&keys.address.seal, &keys.address.send);
    let filler = vec![0x5a; CHANNEL_PARTIAL_BYTES];
    for round in 0..256 {
        let envs = seal_payload(seal, send, PayloadKind::Mls, &filler, &mut OsRng).unwrap();
        for e in &envs[..envs.len() - 1] {
            m[1].engine.session.receive(&keys, &role, e, Via::Relay);
            pushed += e.as_bytes().len();
        }
        if round % 64 == 0 {
            // An honest message, in the middle of it all.
            m[0].engine.send("room", &format!("still here {round}")).await.unwrap();
            m[1].sync().await;
        }
        // As after every batch it fetches, the member saves (and then what was dropped
        // to make room is deleted).
        m[1].engine.save().unwrap();
        let _ = m[1].engine.take_warnings();
    }
    let oversize = seal_payload(
        seal,
        send,
        PayloadKind::Mls,
        &vec![1; CHANNEL_PARTIAL_BYTES + 1],
        &mut OsRng,
    )
    .unwrap();
    for e in oversize.iter().take(100) {
        m[1].engine.session.receive(&keys, &role, e, Via::Relay);
        pushed += e.as_bytes().len();
    }
    assert!(pushed >= (1 << 30) + 8_000_000, "{pushed} bytes pushed");
    let state = m[1].engine.session.encode().unwrap().len();
    assert!(state <= vault_bound, "the saved state is {state} bytes");
    assert!(sealed(&m[1]) <= sealed_bound, "{} bytes sealed", sealed(&m[1]));
    assert!(m[1].engine.session.partial_bytes() <= CHANNEL_PARTIAL_BYTES as u64);
    // Well within the bound: the vault grew by what its tail and indexes hold (16 kB
    // before, 19 kB after, when this was written, without the file records).
    assert!(
        state < before + 48 * 1024,
        "the saved state grew from {before} to {state} bytes"
    );

    m[0].engine.send("room", "and after").await.unwrap();
    m[1].sync().await;
    let texts = m[1].texts("room");
    for want in [
        "in the middle of it",
        "still here 0",
        "still here 64",
        "still here 128",
        "still here 192",
        "and after",
    ] {
        assert_eq!(texts.iter().filter(|t| *t == want).count(), 1, "{want}");
    }
    // The oldest of mal's messages gave way; what is left of them is whole.
    let kept = texts.iter().filter(|t| **t == big).count();
    assert!((10..40).contains(&kept), "{kept} of mal's messages kept");
    let alarms = events(&mut m[1], "room");
    let trimmed: Vec<&String> = alarms
        .iter()
        .filter(|(k, _)| *k == EventKind::Trimmed)
        .map(|(_, t)| t)
        .collect();
    assert!(!trimmed.is_empty(), "{alarms:?}");
    assert!(trimmed[0].contains("MiB of a channel's history"), "{trimmed:?}");
    let refused: Vec<&String> = alarms
        .iter()
        .filter(|(k, _)| *k == EventKind::Rejected)
        .map(|(_, t)| t)
        .collect();
    // 100 empty files offered beside ada's one, 64 kept: each of the 37 deleted is said,
    // all of them mal's.
    let (deleted, others): (Vec<&String>, Vec<&String>) = refused
        .into_iter()
        .partition(|t| t.starts_with("deleted the unsaved file "));
    assert_eq!(deleted.len(), 37, "{deleted:?}");
    assert!(
        deleted.iter().all(|t| t.starts_with("deleted the unsaved file empty-")),
        "{deleted:?}"
    );
    assert_eq!(
        others,
        ["discarded a message larger than this mailbox takes (100 times)"],
        "{others:?}"
    );
    // Bea still talks.
    m[1].engine.send("room", "bea, unshaken").await.unwrap();
    m[0].sync().await;
    assert!(m[0].texts("room").contains(&"bea, unshaken".to_string()));
}

/// Issue 16, point 4 (and finding 1): at the weekly mailbox rotation an admin also moves
/// the channel's sequencer to a fresh mailbox on the same relay; a member who is not an
/// admin rotates only its mailbox. Both agree on the new sequencer and commit there.
#[tokio::test(flavor = "current_thread")]
async fn an_admins_weekly_rotation_moves_the_sequencer() {
    let relay = SimRelay::new();
    let mut m = channel(&relay, "room", &["ada", "bea"]).await;
    let seq = |x: &Member| x.engine.debug_sequencer("room").unwrap().0;
    let before = seq(&m[0]);
    // Bea's mailbox is due (a week old): she rotates it, and the sequencer stays.
    m[1].engine
        .session
        .state
        .channels
        .get_mut("room")
        .unwrap()
        .mailbox_since = 1;
    m[1].sync().await;
    m[0].sync().await;
    assert_eq!(seq(&m[0]), before);
    assert_eq!(seq(&m[1]), before);
    // Ada's is due: she rotates it and moves the sequencer, on the same relay.
    let old_id = m[0].engine.session.state.channels["room"]
        .sequencer
        .as_ref()
        .unwrap()
        .id();
    m[0].engine
        .session
        .state
        .channels
        .get_mut("room")
        .unwrap()
        .mailbox_since = 1;
    m[0].sync().await;
    m[1].sync().await;
    let after = seq(&m[0]);
    assert_ne!(after, before);
    assert_eq!(after.relay, before.relay);
    assert_eq!(seq(&m[1]), after);
    // Commits go on at the new one.
    m[1].engine.update_keys("room").await.unwrap();
    m[0].sync().await;
    assert_eq!(m[0].epoch("room"), m[1].epoch("room"));
    m[0].engine.send("room", "after the move").await.unwrap();
    m[1].sync().await;
    assert!(m[1].texts("room").contains(&"after the move".to_string()));
    // The old sequencer stays at the relay, with the commits it holds, as long as a retired
    // mailbox (a member who missed the move reads it there), then goes.
    let store = &relay.store;
    let exists = |id| async move { MailboxStore::recipient_key(store, id).await.unwrap().is_some() };
    assert!(exists(old_id).await, "kept for its grace");
    for r in &mut m[0].engine.session.state.channels.get_mut("room").unwrap().retired {
        r.until = 1;
    }
    m[0].sync().await;
    assert!(!exists(old_id).await, "deleted after it");
}

/// Finding 1: a device killed at a random point of a `remove` or an `update` (seeded; the
/// seed is printed, and `BC_KILL_SEED` repeats a run), 20 times, and never restarted. The
/// commit it may have won is held at the sequencer, so the others never wait for the dead
/// device: right after, they update, remove the dead member, and talk, in one epoch.
#[tokio::test(flavor = "current_thread")]
async fn a_device_killed_during_a_remove_or_an_update_never_stops_the_others() {
    let seed: u64 = std::env::var("BC_KILL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::thread_rng().gen());
    eprintln!("seed {seed} (BC_KILL_SEED={seed} repeats this run)");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut crashed_runs = 0;
    for run in 0..20 {
        let relay = SimRelay::new();
        let mut m = channel(&relay, "room", &["ada", "bea", "cyd", "dee"]).await;
        m[0].engine.admin("room", "bea", false).await.unwrap();
        for x in m.iter_mut() {
            x.sync().await;
        }
        let removing = rng.gen_bool(0.5);
        let k = rng.gen_range(1..24);
        let at = format!(
            "run {run} of seed {seed}: {} killed after {k} effects",
            if removing { "remove" } else { "update" }
        );
        m[0].crash_after(k);
        let _ = if removing {
            m[0].engine.remove("room", "dee").await.map(|_| ())
        } else {
            m[0].engine.update_keys("room").await
        };
        crashed_runs += usize::from(m[0].crash.crashed());
        // Ada's device is gone for good; the others go on without it.
        let mut others: Vec<Member> = m.drain(1..).collect();
        for x in others.iter_mut() {
            x.sync().await;
        }
        others[0]
            .engine
            .update_keys("room")
            .await
            .unwrap_or_else(|e| panic!("{at}: bea cannot update: {e}"));
        others[0]
            .engine
            .remove("room", "ada")
            .await
            .unwrap_or_else(|e| panic!("{at}: bea cannot remove ada: {e}"));
        let text = format!("after run {run}");
        others[1]
            .engine
            .send("room", &text)
            .await
            .unwrap_or_else(|e| panic!("{at}: cyd cannot send: {e}"));
        for _ in 0..2 {
            for x in others.iter_mut() {
                x.sync().await;
            }
        }
        // Bea and cyd agree (dee, if ada's removal of her went through, may never hear of
        // it: the dead device was to tell her).
        let (bea, cyd) = (&others[0], &others[1]);
        assert_eq!(bea.epoch("room"), cyd.epoch("room"), "{at}: one epoch");
        assert_eq!(bea.members("room"), cyd.members("room"), "{at}: one member list");
        assert!(!bea.members("room").contains(&"ada".to_string()), "{at}");
        for x in others.iter_mut().take(2) {
            let n = x.texts("room").iter().filter(|t| **t == text).count();
            assert_eq!(n, 1, "{at}: {} reads cyd's message once", x.name);
        }
        if others[2].engine.session.is_active("room") && others[0].members("room").contains(&"dee".to_string()) {
            let n = others[2].texts("room").iter().filter(|t| **t == text).count();
            assert_eq!(n, 1, "{at}: dee, still a member, reads cyd's message once");
        }
    }
    assert!(
        crashed_runs >= 10,
        "most runs kill the device mid-way: {crashed_runs} of 20"
    );
}

/// A crash between a write beside the vault and the save that would have counted it
/// leaves a folder nobody points at. Opening a home collects such folders
/// (`Session::collect_orphans`), and nothing the state points at: the history sealed in
/// segments, a received file's parts.
#[tokio::test(flavor = "current_thread")]
async fn orphaned_sealed_folders_are_collected_and_nothing_in_use_is() {
    use crate::session::Blobs;
    let relay = SimRelay::new();
    let mut m = channel(&relay, "room", &["ada", "bea"]).await;
    for i in 0..100 {
        m[0].engine
            .send("room", &format!("message {i} {}", "x".repeat(300)))
            .await
            .unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let notes = dir.path().join("notes.txt");
    std::fs::write(&notes, vec![b'n'; 100_000]).unwrap();
    m[0].engine.send_file("room", &notes, &mut |_| {}).await.unwrap();
    m[1].sync().await;
    let history = m[1].engine.session.state.channels["room"].history.clone();
    assert!(!history.segments.is_empty());
    let parts = m[1].engine.session.state.files.incoming[0].folder.clone();

    let mut blobs = m[1].blobs.clone();
    blobs
        .write("0123456789abcdef0123456789abcdef", "0", b"left by a crash")
        .unwrap();
    // A segment a save replaced, and an unfinished write, left by a crash in a folder in use.
    blobs.write(&history.folder, "999", b"an old segment").unwrap();
    blobs.write(&history.folder, "1000.tmp", b"half written").unwrap();
    let segments = blobs.names(&history.folder).len();
    let before = blobs.folders();
    assert!(
        before.contains(&parts) && before.contains(&history.folder),
        "{before:?}"
    );
    assert_eq!(m[1].engine.session.collect_orphans(), 3);
    m[1].engine.save().unwrap();
    let after = blobs.folders();
    assert_eq!(after.len(), before.len() - 1, "{after:?}");
    assert_eq!(blobs.names(&history.folder).len(), segments - 2);
    assert!(!after.contains(&"0123456789abcdef0123456789abcdef".to_string()));
    let texts = m[1].texts("room");
    assert_eq!(texts.iter().filter(|t| t.starts_with("message ")).count(), 100);
    assert_eq!(m[1].engine.session.collect_orphans(), 0);
}

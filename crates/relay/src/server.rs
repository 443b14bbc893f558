//! The connection loop: TLS, WebSocket, one frame per binary message, and
//! the limits that keep a flooder from exhausting the relay (docs/protocol.md,
//! "Relay limits").

use std::collections::{HashMap, HashSet};
use std::io;
use std::net::{IpAddr, Ipv6Addr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use backchannel_core::frame::{
    decode_request, encode_response, ErrorCode, FrameError, Limits as WireLimits, Request, Response, FRAME_SIZE,
    MAX_FETCH, PROTOCOL_VERSION,
};
use backchannel_core::mailbox::{verify_open_proof, MailboxId};
use backchannel_core::pow;
use futures_util::stream::FuturesOrdered;
use futures_util::{FutureExt, SinkExt, StreamExt};
use rand_core::{OsRng, RngCore};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;

use crate::answer_floor::AnswerFloor;
use crate::corked::Corked;
use crate::deposit::{commit_part, DepositBudget, DepositSlot};
use crate::forward::{Ask, Forwarder};
use crate::proofs::SpentProofs;
use crate::store::{Backend, ClaimProof, MailboxStore, ProvenWork, StoreError};
use crate::tls::WireKeys;
use crate::waiters::Waiters;
use crate::{now_secs, Limits};
use backchannel_core::forward::{self as seal, AnswerKey, ForwardError, SESSION_LEN};
use backchannel_core::relay_address::Pin as RelayPin;

/// Most bytes of the WebSocket upgrade request (request line and headers) read
/// before the connection is dropped. A real client sends about 250. (tungstenite
/// has a fixed 64 KiB cap of its own, added for CVE-2023-43669; ours is lower and
/// does not depend on that.)
pub const MAX_UPGRADE_REQUEST: usize = 8 * 1024;

/// Refused connections that may be answered with `TooManyConnections` at the same
/// time; beyond that a refused connection is closed at once, without a handshake.
const MAX_PENDING_REFUSALS: usize = 16;

/// Time a refused connection gets to complete its handshake and read the refusal.
const REFUSAL_TIMEOUT: Duration = Duration::from_secs(2);

/// The longest idle timeout a connection keeps (a century): an instant must hold its
/// deadline.
const IDLE_TIMEOUT_CAP: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// Time a closing connection gets to send its WebSocket close frame.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// Counters for the relay's log and for tests. Counts only.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Open connections (after the handshake).
    pub connections: AtomicUsize,
    /// Connections refused at `--max-connections`.
    pub refused_connections: AtomicU64,
    /// Connections refused at `--max-connections-per-address`.
    pub refused_per_address: AtomicU64,
    /// Refused connections closed at once, without a handshake or an answer (too many
    /// refusals pending).
    pub refusals_unanswered: AtomicU64,
    /// Handshakes (TLS and WebSocket together) cut off at `--handshake-timeout`.
    pub handshake_timeouts: AtomicU64,
    /// Handshakes that failed: not TLS 1.3, not a WebSocket upgrade, or cut short.
    pub handshake_failures: AtomicU64,
    /// Upgrade requests dropped as too large ([`MAX_UPGRADE_REQUEST`]) or sent in too many pieces.
    pub oversize_upgrades: AtomicU64,
    /// Connections closed at `--idle-timeout`: no complete message received, or a response not taken.
    pub idle_timeouts: AtomicU64,
    /// Frames longer than a frame: answered `FrameTooLarge`, or the connection closed if
    /// longer than two frames.
    pub oversize_frames: AtomicU64,
    /// Requests refused with `RateLimited`.
    pub rate_limited: AtomicU64,
    /// Connections closed to make room for an address holding fewer.
    pub evicted_connections: AtomicU64,
    /// Creates and sends refused with `RateLimited` by their address's budget.
    pub address_limited: AtomicU64,
    /// Requests refused with `TooManyMailboxes`.
    pub too_many_mailboxes: AtomicU64,
    /// Sends refused with `MailboxFull`.
    pub mailbox_full: AtomicU64,
    /// Sends refused with `RelayFull`.
    pub relay_full: AtomicU64,
    /// Sends to a drop box refused with `WorkRequired` (no or a wrong proof of work).
    pub work_required: AtomicU64,
    /// Envelopes stored.
    pub envelopes_in: AtomicU64,
    /// Envelopes acknowledged.
    pub envelopes_acked: AtomicU64,
    /// Envelopes deleted at expiry.
    pub envelopes_expired: AtomicU64,
    /// Mailboxes deleted after `--idle-mailbox-lifetime` unused.
    pub mailboxes_expired: AtomicU64,
    /// Requests refused with a protocol error (of any code).
    pub protocol_errors: AtomicU64,
    /// Requests of paced connections done after the answer floor (the store was slower):
    /// an observer may tell those apart by their answer time.
    pub answers_late: AtomicU64,
    /// Requests answered `Storage`: the store failed (each is logged with what it was doing).
    pub storage_failures: AtomicU64,
    /// Our users' requests forwarded to another relay and answered by it.
    pub forwarded: AtomicU64,
    /// Our users' requests that could not be forwarded: the other relay was unreachable.
    pub forward_unreachable: AtomicU64,
    /// Requests forwarded to us by other relays, opened and executed.
    pub forwarded_in: AtomicU64,
    /// Nameplates allocated (`Request::Nameplate`).
    pub nameplates_created: AtomicU64,
    /// Nameplates taken (`Request::TakeNameplate` answered with the record; here or
    /// forwarded to us).
    pub nameplates_taken: AtomicU64,
    /// Bundles published or refreshed (`Request::Publish` answered `Ok`).
    pub bundles_published: AtomicU64,
    /// Bundles fetched (`Request::Bundle` answered with the bundle; here or forwarded to us).
    pub bundles_fetched: AtomicU64,
    /// How long each successful write (`Send`, `Ack`, `Create`, `Delete`, `ClaimCommit`)
    /// took, from when the store was asked until its answer was taken up (which, on a
    /// connection that pipelines and reads its answers slowly, includes that wait).
    pub write_times: Histogram,
}

/// Upper bounds of the [`Histogram`]'s buckets, in seconds.
pub const WRITE_BUCKETS: [f64; 10] = [0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0];

/// Durations counted in [`WRITE_BUCKETS`] (cumulative when exported, as Prometheus has it).
#[derive(Debug, Default)]
pub struct Histogram {
    /// Per bucket, the observations at most its bound and above the previous one; the last
    /// slot holds those above every bound.
    pub buckets: [AtomicU64; WRITE_BUCKETS.len() + 1],
    /// The sum of all observations, in microseconds.
    pub sum_micros: AtomicU64,
}

impl Histogram {
    fn observe(&self, took: Duration) {
        let secs = took.as_secs_f64();
        let at = WRITE_BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(WRITE_BUCKETS.len());
        if let Some(bucket) = self.buckets.get(at) {
            bucket.fetch_add(1, Ordering::Relaxed);
        }
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
    }
}

impl Metrics {
    fn count(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Every counter with its name and what it counts: the one list that the counts line in
    /// the log and `relay --metrics` both read.
    pub fn counters(&self) -> [(&'static str, &'static str, &AtomicU64); 29] {
        [
            (
                "refused_connections",
                "Connections refused at --max-connections.",
                &self.refused_connections,
            ),
            (
                "refused_per_address",
                "Connections refused at --max-connections-per-address.",
                &self.refused_per_address,
            ),
            (
                "refusals_unanswered",
                "Refused connections closed without an answer.",
                &self.refusals_unanswered,
            ),
            (
                "handshake_timeouts",
                "Handshakes cut off at --handshake-timeout.",
                &self.handshake_timeouts,
            ),
            (
                "handshake_failures",
                "Handshakes that failed.",
                &self.handshake_failures,
            ),
            (
                "oversize_upgrades",
                "Upgrade requests dropped as too large.",
                &self.oversize_upgrades,
            ),
            (
                "idle_timeouts",
                "Connections closed at --idle-timeout.",
                &self.idle_timeouts,
            ),
            ("oversize_frames", "Frames longer than a frame.", &self.oversize_frames),
            ("rate_limited", "Requests refused with RateLimited.", &self.rate_limited),
            (
                "evicted_connections",
                "Connections closed to make room for an address holding fewer.",
                &self.evicted_connections,
            ),
            (
                "address_limited",
                "Creates and sends refused with RateLimited by their address's budget.",
                &self.address_limited,
            ),
            (
                "too_many_mailboxes",
                "Requests refused with TooManyMailboxes.",
                &self.too_many_mailboxes,
            ),
            ("mailbox_full", "Sends refused with MailboxFull.", &self.mailbox_full),
            ("relay_full", "Sends refused with RelayFull.", &self.relay_full),
            (
                "work_required",
                "Sends to a drop box refused with WorkRequired.",
                &self.work_required,
            ),
            ("envelopes_in", "Envelopes stored.", &self.envelopes_in),
            ("envelopes_acked", "Envelopes acknowledged.", &self.envelopes_acked),
            (
                "envelopes_expired",
                "Envelopes deleted at expiry.",
                &self.envelopes_expired,
            ),
            (
                "mailboxes_expired",
                "Mailboxes deleted after --idle-mailbox-lifetime unused.",
                &self.mailboxes_expired,
            ),
            (
                "protocol_errors",
                "Requests refused with a protocol error.",
                &self.protocol_errors,
            ),
            (
                "answers_late",
                "Paced answers that left after the answer floor.",
                &self.answers_late,
            ),
            (
                "storage_failures",
                "Requests answered Storage: the store failed.",
                &self.storage_failures,
            ),
            (
                "forwarded",
                "Our users' requests forwarded to another relay and answered by it.",
                &self.forwarded,
            ),
            (
                "forward_unreachable",
                "Our users' requests not forwarded: the other relay was unreachable.",
                &self.forward_unreachable,
            ),
            (
                "forwarded_in",
                "Requests forwarded to us by other relays, opened and executed.",
                &self.forwarded_in,
            ),
            (
                "nameplates_created",
                "Nameplates (invite codes' numbers) allocated.",
                &self.nameplates_created,
            ),
            (
                "nameplates_taken",
                "Nameplates taken (each at most once).",
                &self.nameplates_taken,
            ),
            (
                "bundles_published",
                "Bundles (what short addresses name) published or refreshed.",
                &self.bundles_published,
            ),
            (
                "bundles_fetched",
                "Bundles fetched (each as often as asked).",
                &self.bundles_fetched,
            ),
        ]
    }
}

pub(crate) struct Shared {
    store: Arc<Backend>,
    limits: Limits,
    /// The long-polls waiting, by mailbox: a delivery wakes its mailbox's only.
    waiters: Arc<Waiters>,
    metrics: Arc<Metrics>,
    connections: Arc<Semaphore>,
    addresses: Arc<AddressBook>,
    refusals: Arc<Semaphore>,
    /// Budget of requests executing concurrently, relay-wide.
    concurrent: Arc<Semaphore>,
    /// Proofs of work already used for a drop box.
    spent: Arc<SpentProofs>,
    /// Bytes of commits deposited on connections, relay-wide.
    deposits: DepositBudget,
    /// When a paced connection's answers may leave.
    floor: AnswerFloor,
    /// The TLS certificate in use, its credential and the forward key: replaced by a key
    /// rotation ([`Shared::rotate`]).
    keys: std::sync::RwLock<Arc<WireKeys>>,
    /// The forward key before the last rotation, and when it stops opening seals.
    previous_forward: Mutex<Option<(Arc<backchannel_core::forward::ForwardKeys>, Instant)>>,
    /// Our PIN (what a sealed request is bound to).
    pin: [u8; 32],
    /// Our connections to other relays, for our users' forwarded requests.
    forwarder: Forwarder,
    /// The token bucket of forwarding relays, by address (as the per-address limits key it),
    /// all their connections together: identities made up on one address share one budget.
    forwarders: Mutex<HashMap<IpAddr, Bucket>>,
    /// What each address may create and store, all its connections together.
    budgets: AddressBudgets,
    /// When this relay last marked each mailbox used ([`Shared::refresh`]).
    refreshed: Mutex<HashMap<MailboxId, Instant>>,
    /// The protocol version announced in the hello ([`PROTOCOL_VERSION`] but in tests
    /// that play a relay of another version).
    pub(crate) protocol_version: u8,
    /// Told every request and the connection it came on, in tests that play an operator
    /// who records that (`Relay::with_recorder`).
    pub(crate) recorder: Option<crate::Recorder>,
    /// Numbers the connections for the recorder.
    connection_count: std::sync::atomic::AtomicU64,
    /// Turns true when the relay shuts down.
    closing: watch::Receiver<bool>,
    /// Never sent on: `serve` waits until every clone (one per `Shared`) is dropped.
    _done: mpsc::Sender<()>,
}

impl Shared {
    pub(crate) fn new(
        store: Arc<Backend>,
        limits: Limits,
        waiters: Arc<Waiters>,
        metrics: Arc<Metrics>,
        keys: Arc<WireKeys>,
        closing: watch::Receiver<bool>,
        done: mpsc::Sender<()>,
    ) -> Self {
        let forward_private = limits.forward_private;
        Self {
            store,
            connections: Arc::new(Semaphore::new(limits.max_connections)),
            addresses: Arc::new(AddressBook::new(limits.max_connections_per_address)),
            refusals: Arc::new(Semaphore::new(MAX_PENDING_REFUSALS)),
            concurrent: Arc::new(Semaphore::new(CONCURRENT_BUDGET)),
            spent: Arc::new(SpentProofs::default()),
            deposits: DepositBudget::default(),
            floor: AnswerFloor::new(limits.answer_floor),
            limits,
            waiters,
            metrics,
            pin: RelayPin::of_certificate(&keys.identity_cert).0,
            forwarder: Forwarder::new(keys.clone(), forward_private),
            forwarders: Mutex::new(HashMap::new()),
            budgets: AddressBudgets::default(),
            refreshed: Mutex::new(HashMap::new()),
            keys: std::sync::RwLock::new(keys),
            previous_forward: Mutex::new(None),
            protocol_version: PROTOCOL_VERSION,
            recorder: None,
            connection_count: std::sync::atomic::AtomicU64::new(0),
            closing,
            _done: done,
        }
    }

    /// The keys in use.
    pub(crate) fn keys(&self) -> Arc<WireKeys> {
        self.keys.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Uses `new` from now on (`relay rotate-key`): new connections get its TLS certificate
    /// and credential; the forward key it replaces still opens seals for [`KEY_OVERLAP`]
    /// (clients that asked for the credential before the rotation seal to it).
    pub(crate) fn rotate(&self, new: WireKeys) {
        let old = {
            let mut keys = self.keys.write().unwrap_or_else(|e| e.into_inner());
            std::mem::replace(&mut *keys, Arc::new(new))
        };
        *self.previous_forward.lock().unwrap_or_else(|e| e.into_inner()) =
            Some((old.forward.clone(), Instant::now() + KEY_OVERLAP));
    }

    /// Opens a sealed request with the forward key in use, or with the one before the last
    /// rotation while it still may.
    fn open_sealed(&self, sealed: &[u8]) -> Result<([u8; SESSION_LEN], Request, AnswerKey), ForwardError> {
        let current = seal::open(&self.keys().forward, &self.pin, sealed);
        if !matches!(current, Err(ForwardError::Unsealed)) {
            return current;
        }
        let previous = self
            .previous_forward
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .filter(|(_, until)| Instant::now() < *until)
            .map(|(k, _)| k.clone());
        match previous {
            Some(k) => seal::open(&k, &self.pin, sealed),
            None => current,
        }
    }

    /// Marks `ids` used in the store, those this relay has not marked for a while (a day,
    /// or an eighth of `--idle-mailbox-lifetime` if that is shorter): a recipient opening
    /// or fetching from its mailboxes keeps them from expiring, at the cost of one write
    /// per mailbox a day, not one per fetch. Best effort: a failure is logged, and the
    /// mailbox is marked again at the next open or fetch after that interval.
    fn refresh(&self, ids: &[MailboxId]) {
        let every = (self.limits.idle_mailbox_lifetime / 8).min(REFRESH_EVERY);
        let now = Instant::now();
        let due: Vec<MailboxId> = {
            let mut map = self.refreshed.lock().unwrap_or_else(|e| e.into_inner());
            if map.len() > MAX_REFRESHED {
                // Forgetting only costs a write per mailbox sooner than needed.
                map.clear();
            }
            ids.iter()
                .copied()
                .filter(|id| {
                    let due = map.get(id).is_none_or(|at| now.saturating_duration_since(*at) >= every);
                    if due {
                        map.insert(*id, now);
                    }
                    due
                })
                .collect()
        };
        if due.is_empty() {
            return;
        }
        // In the background: an open or a fetch does not wait for it (on a cluster that has
        // lost its quorum it would wait the whole patience, and then only log).
        let store = self.store.clone();
        tokio::spawn(async move {
            if let Err(e) = store.touch(&due, crate::now_secs()).await {
                log_store_failure("marking mailboxes used", &e);
            }
        });
    }

    /// A permit to run one more request concurrently, if the relay-wide budget allows.
    fn concurrent_budget(&self) -> Option<OwnedSemaphorePermit> {
        self.concurrent.clone().try_acquire_owned().ok()
    }

    /// Completes when the relay starts shutting down.
    async fn closing(&self) {
        let mut closing = self.closing.clone();
        let _ = closing.wait_for(|c| *c).await;
    }
}

fn ws_config() -> WebSocketConfig {
    // Small explicit buffers: tungstenite's defaults cost ~128 KiB per connection.
    WebSocketConfig::default()
        .read_buffer_size(2 * 1024)
        .write_buffer_size(0)
        .max_write_buffer_size(256 * 1024)
        .max_message_size(Some(2 * FRAME_SIZE))
        .max_frame_size(Some(2 * FRAME_SIZE))
}

/// Open connections per address. Entries go when their last connection does, so
/// the map never holds more entries than there are connections.
struct AddressBook {
    /// Each address's connections, oldest first.
    counts: Mutex<HashMap<IpAddr, Vec<Held>>>,
    max: usize,
    next: std::sync::atomic::AtomicU64,
}

/// A connection in the [`AddressBook`]: its number, and the signal that closes it.
type Held = (u64, Arc<Notify>);

/// The unit one party is assumed to control: an IPv4 address, or an IPv6 /64 (the
/// smallest block a site is usually given, so one party gets 2^64 addresses).
fn address_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !u128::from(u64::MAX))),
        },
    }
}

impl AddressBook {
    fn new(max: usize) -> Self {
        Self {
            counts: Mutex::new(HashMap::new()),
            max,
            next: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// A place for one more connection from `ip`, unless it has its maximum.
    fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<AddressSlot> {
        let key = address_key(ip);
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let held = counts.entry(key).or_default();
        if held.len() >= self.max {
            if held.is_empty() {
                counts.remove(&key);
            }
            return None;
        }
        let number = self.next.fetch_add(1, Ordering::Relaxed);
        let evict = Arc::new(Notify::new());
        held.push((number, evict.clone()));
        Some(AddressSlot {
            book: self.clone(),
            key,
            number,
            evict,
        })
    }

    /// With every connection taken, makes room for one from `ip` if some address holds at
    /// least two more than it does: the newest connection of the address holding the most
    /// is told to close (and no longer counts). So a few addresses cannot hold every
    /// connection against the others: at capacity the relay's connections are shared out
    /// evenly among the addresses that want them. Returns whether one was told.
    fn evict_for(&self, ip: IpAddr) -> bool {
        let key = address_key(ip);
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let mine = counts.get(&key).map_or(0, Vec::len);
        let Some((busiest, n)) = counts.iter().map(|(k, v)| (*k, v.len())).max_by_key(|(_, n)| *n) else {
            return false;
        };
        if n < mine + 2 {
            return false;
        }
        let Some(held) = counts.get_mut(&busiest) else {
            return false;
        };
        let Some((_, evict)) = held.pop() else {
            return false;
        };
        if held.is_empty() {
            counts.remove(&busiest);
        }
        evict.notify_one();
        true
    }
}

/// One connection's place in the [`AddressBook`], given back on drop.
struct AddressSlot {
    book: Arc<AddressBook>,
    key: IpAddr,
    number: u64,
    /// Notified when the connection is to close to make room ([`AddressBook::evict_for`]).
    evict: Arc<Notify>,
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut counts = self.book.counts.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(held) = counts.get_mut(&self.key) {
            held.retain(|(n, _)| *n != self.number);
            if held.is_empty() {
                counts.remove(&self.key);
            }
        }
    }
}

/// How long an evicted connection's requests in flight get to be answered.
const EVICTED_ANSWERS: Duration = Duration::from_millis(500);

/// How long a connection that made room by eviction waits for its place.
const EVICTION_WAIT: Duration = Duration::from_secs(2);

/// How often a mailbox in use is marked so in the store, at most ([`Shared::refresh`]).
const REFRESH_EVERY: Duration = Duration::from_secs(24 * 3600);

/// Most mailboxes whose last marking the relay remembers ([`Shared::refresh`]).
const MAX_REFRESHED: usize = 1 << 20;

/// Most addresses whose budgets the relay keeps ([`AddressBudgets`]). Past it, the budgets
/// that are full again (the same as a new one) are forgotten; if none is, the address gets
/// no budget until one is, and is refused for a second.
const MAX_BUDGETS: usize = 65_536;

/// What each address (as the per-address connection limit keys it: an IPv4 address, an
/// IPv6 /64) may create and store, all its connections together: mailboxes created at
/// `--address-create-rate` a minute, and envelopes stored (its sends and the requests it
/// forwards through this relay) at `--address-store-rate` a second. Kept in memory only,
/// by address and never by mailbox (no record says which address made or filled which
/// mailbox). A forwarding relay's connection is not counted here: its forwarders' budget
/// holds it, and its users are counted at their own relay.
#[derive(Default)]
struct AddressBudgets {
    map: Mutex<HashMap<IpAddr, (Bucket, Bucket)>>,
}

impl AddressBudgets {
    /// Takes what `req` costs `address`, or says how long until it may.
    fn take(&self, address: IpAddr, req: &Request, limits: &Limits) -> Result<(), Duration> {
        let create = match req {
            // A nameplate is charged as a mailbox is; so is each take, a guess at a number:
            // this bounds how fast one address sweeps the nameplates. A bundle's publish and
            // each fetch likewise (a fetch is a guess at a name).
            Request::Create { .. }
            | Request::Nameplate { .. }
            | Request::TakeNameplate { .. }
            | Request::Publish { .. }
            | Request::Bundle { .. } => true,
            Request::Send { .. } | Request::Forward { .. } => false,
            _ => return Ok(()),
        };
        let now = Instant::now();
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= MAX_BUDGETS && !map.contains_key(&address) {
            map.retain(|_, (c, s)| !(c.is_full(now) && s.is_full(now)));
            if map.len() >= MAX_BUDGETS {
                return Err(Duration::from_secs(1));
            }
        }
        let (creates, stores) = map.entry(address).or_insert_with(|| {
            (
                Bucket::with_rate(
                    f64::from(limits.address_create_rate) / 60.0,
                    limits.address_create_burst,
                    now,
                ),
                Bucket::new(limits.address_store_rate, limits.address_store_burst, now),
            )
        });
        if create {
            creates.take(now)
        } else {
            stores.take(now)
        }
    }
}

/// The token bucket of one connection: `rate` requests a second on average, up
/// to `burst` at once.
#[derive(Debug)]
struct Bucket {
    tokens: f64,
    last: Instant,
    rate: f64,
    burst: f64,
}

impl Bucket {
    fn new(rate: u32, burst: u32, now: Instant) -> Self {
        Self::with_rate(f64::from(rate), burst, now)
    }

    /// A bucket that earns `rate` tokens a second (a fraction for a rate by the minute).
    fn with_rate(rate: f64, burst: u32, now: Instant) -> Self {
        let burst = f64::from(burst.max(1));
        Self {
            tokens: burst,
            last: now,
            rate,
            burst,
        }
    }

    /// Whether it would hold its whole burst at `now` (it is then the same as a new one).
    fn is_full(&self, now: Instant) -> bool {
        self.rate <= 0.0
            || self.tokens + now.saturating_duration_since(self.last).as_secs_f64() * self.rate >= self.burst
    }

    /// Takes a token, or says how long until the next one (a rate of 0 never refuses).
    fn take(&mut self, now: Instant) -> Result<(), Duration> {
        if self.rate <= 0.0 {
            return Ok(());
        }
        let earned = now.saturating_duration_since(self.last).as_secs_f64() * self.rate;
        self.tokens = (self.tokens + earned).min(self.burst);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - self.tokens) / self.rate))
        }
    }
}

/// Caps the bytes read from a stream until [`Capped::uncap`]: the WebSocket
/// upgrade request is read through it, so an oversize one is dropped after
/// [`MAX_UPGRADE_REQUEST`] bytes instead of being buffered.
struct Capped<S> {
    inner: S,
    /// Bytes still allowed; `None` once uncapped.
    left: Option<usize>,
}

/// The error a [`Capped`] stream reads once its cap is spent.
#[derive(Debug, thiserror::Error)]
#[error("the WebSocket upgrade request is too large")]
struct UpgradeTooLarge;

impl<S> Capped<S> {
    fn uncap(&mut self) {
        self.left = None;
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Capped<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let Some(left) = self.left else {
            return Pin::new(&mut self.inner).poll_read(cx, buf);
        };
        if left == 0 {
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, UpgradeTooLarge)));
        }
        // Only the upgrade request passes here: a small copy is fine.
        let mut chunk = [0u8; 1024];
        let n = left.min(buf.remaining()).min(chunk.len());
        let mut part = ReadBuf::new(&mut chunk[..n]);
        match Pin::new(&mut self.inner).poll_read(cx, &mut part) {
            Poll::Ready(Ok(())) => {
                let got = part.filled().len();
                buf.put_slice(part.filled());
                self.left = Some(left - got);
                Poll::Ready(Ok(()))
            }
            other => other,
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Capped<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

type Ws = WebSocketStream<Capped<TlsStream<Corked<TcpStream>>>>;

enum HandshakeError {
    TooLarge,
    Failed,
}

/// TLS, then the WebSocket upgrade read through a [`Capped`] stream.
async fn handshake(tcp: TcpStream, tls: &TlsAcceptor) -> Result<Ws, HandshakeError> {
    let tls = tls.accept(Corked::new(tcp)).await.map_err(|_| HandshakeError::Failed)?;
    let capped = Capped {
        inner: tls,
        left: Some(MAX_UPGRADE_REQUEST),
    };
    match tokio_tungstenite::accept_async_with_config(capped, Some(ws_config())).await {
        Ok(mut ws) => {
            ws.get_mut().uncap();
            Ok(ws)
        }
        Err(WsError::AttackAttempt) => Err(HandshakeError::TooLarge),
        Err(WsError::Io(e)) if e.get_ref().is_some_and(|e| e.is::<UpgradeTooLarge>()) => Err(HandshakeError::TooLarge),
        Err(_) => Err(HandshakeError::Failed),
    }
}

pub(crate) async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(_) => {
                // Out of file descriptors, most likely: let connections close.
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // The per-address limit first, so that one address over its limit takes
        // nothing from the relay-wide one.
        let Some(address) = shared.addresses.admit(peer.ip()) else {
            Metrics::count(&shared.metrics.refused_per_address);
            refuse(tcp, &shared);
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let permit = match shared.connections.clone().try_acquire_owned() {
            Ok(permit) => permit,
            // Full: room is made by closing a connection of the address holding the most,
            // if it holds at least two more than this one; the new connection takes the
            // place once that one is gone.
            Err(_) if shared.addresses.evict_for(peer.ip()) => {
                Metrics::count(&shared.metrics.evicted_connections);
                let shared = shared.clone();
                tokio::spawn(async move {
                    let wait = shared.connections.clone().acquire_owned();
                    match tokio::time::timeout(EVICTION_WAIT, wait).await {
                        Ok(Ok(permit)) => handle(tcp, shared, permit, address).await,
                        _ => {
                            Metrics::count(&shared.metrics.refused_connections);
                            drop(address);
                            refuse(tcp, &shared);
                        }
                    }
                });
                continue;
            }
            Err(_) => {
                Metrics::count(&shared.metrics.refused_connections);
                refuse(tcp, &shared);
                continue;
            }
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            handle(tcp, shared, permit, address).await;
        });
    }
}

/// Answers a connection over a limit with `TooManyConnections` (after the TLS and
/// WebSocket handshakes, so that a client can say why), while few such answers are
/// pending; otherwise, under a flood, closes it at once.
fn refuse(tcp: TcpStream, shared: &Arc<Shared>) {
    let Ok(slot) = shared.refusals.clone().try_acquire_owned() else {
        Metrics::count(&shared.metrics.refusals_unanswered);
        drop(tcp);
        return;
    };
    let shared = shared.clone();
    tokio::spawn(async move {
        let _slot = slot;
        let answer = async {
            let acceptor = TlsAcceptor::from(shared.keys().server_config.clone());
            let Ok(mut ws) = handshake(tcp, &acceptor).await else {
                return;
            };
            let refusal = Response::Error {
                code: ErrorCode::TooManyConnections,
                detail: 0,
            };
            if send_response(&mut ws, 0, &refusal).await.is_ok() {
                let _ = ws.close(None).await;
            }
        };
        let timeout = REFUSAL_TIMEOUT.min(shared.limits.handshake_timeout);
        tokio::select! {
            _ = tokio::time::timeout(timeout, answer) => {}
            _ = shared.closing() => {}
        }
    });
}

async fn handle(tcp: TcpStream, shared: Arc<Shared>, permit: OwnedSemaphorePermit, address: AddressSlot) {
    // One timeout over TLS and the upgrade together: a client that trickles
    // either is cut off at the same time.
    // One set of keys for the whole connection: the hello's credential must name the very
    // certificate this handshake presents, even if a rotation happens in between.
    let keys = shared.keys();
    let acceptor = TlsAcceptor::from(keys.server_config.clone());
    let handshake = tokio::select! {
        // Boxed: the handshake's large state is freed once it is done, instead of sizing
        // every connection's task for it (docs/reliability.md, memory per connection).
        r = tokio::time::timeout(shared.limits.handshake_timeout, Box::pin(handshake(tcp, &acceptor))) => r,
        _ = shared.closing() => return,
        _ = address.evict.notified() => return,
    };
    let mut ws = match handshake {
        Ok(Ok(ws)) => ws,
        Ok(Err(HandshakeError::TooLarge)) => return Metrics::count(&shared.metrics.oversize_upgrades),
        Ok(Err(HandshakeError::Failed)) => return Metrics::count(&shared.metrics.handshake_failures),
        Err(_) => return Metrics::count(&shared.metrics.handshake_timeouts),
    };
    shared.metrics.connections.fetch_add(1, Ordering::Relaxed);
    if serve_connection(&mut ws, &shared, &keys, &address).await == Ended::Shutdown {
        close_on_shutdown(&mut ws).await;
    }
    shared.metrics.connections.fetch_sub(1, Ordering::Relaxed);
    drop(permit);
    drop(address);
}

/// The request id of a frame, if it got that far.
fn request_id(bytes: &[u8]) -> u32 {
    bytes
        .get(1..5)
        .and_then(|b| b.try_into().ok())
        .map(u32::from_be_bytes)
        .unwrap_or(0)
}

/// Why [`serve_connection`] returned.
#[derive(Debug, PartialEq, Eq)]
enum Ended {
    /// The client left, broke the protocol, or hit a limit that ends a connection.
    Client,
    /// The relay is shutting down.
    Shutdown,
}

/// Closes a connection on shutdown: a close frame, then whatever the client still
/// sends (requests it pipelined) is read and dropped until it closes too. Closing
/// a socket with unread bytes makes the kernel reset the connection, and a reset
/// can discard the last answers before the client has read them.
async fn close_on_shutdown(ws: &mut Ws) {
    let close = async {
        let _ = ws.close(None).await;
        while let Some(Ok(_)) = ws.next().await {}
    };
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, close).await;
}

/// Reads and answers requests until the client leaves, breaks a limit that ends the
/// connection, or the relay shuts down. `Send`, `Claim` and `Ack` run concurrently (up
/// to [`PIPELINE_DEPTH`], so that one client's pipelined writes share a group commit);
/// anything else waits for them and runs alone. Answers go out in request order. A
/// request that was read is always executed and answered, shutdown or not.
async fn serve_connection(ws: &mut Ws, shared: &Shared, keys: &WireKeys, slot: &AddressSlot) -> Ended {
    let address = slot.key;
    let mut conn = Connection {
        nonce: {
            let mut n = [0u8; 32];
            OsRng.fill_bytes(&mut n);
            n
        },
        opened: HashSet::new(),
        touched: 0,
        deposit: DepositSlot::for_address(address),
        paced: false,
        number: shared
            .connection_count
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        address,
        forwarder: false,
        sessions: Sessions::default(),
    };
    let number = conn.number;
    let hello = Response::Hello {
        version: shared.protocol_version,
        nonce: conn.nonce,
        limits: WireLimits {
            max_request_frame: FRAME_SIZE as u32,
            max_envelopes_per_mailbox: shared.limits.max_envelopes_per_mailbox,
            max_mailboxes_per_connection: shared.limits.max_mailboxes_per_connection as u32,
        },
        identity: keys.identity_cert.clone(),
        credential: keys.credential.clone(),
    };
    // Capped where an instant could not hold it (the flag takes any number of seconds):
    // a far deadline is no deadline.
    let idle = shared.limits.idle_timeout.min(IDLE_TIMEOUT_CAP);
    let metrics = &shared.metrics;
    if !answer(ws, 0, &hello, shared).await {
        return Ended::Client;
    }
    let mut bucket = Bucket::new(
        shared.limits.max_requests_per_second,
        shared.limits.request_burst,
        Instant::now(),
    );
    // Requests being executed, answered in the order they came.
    let mut inflight: FuturesOrdered<Pending<'_>> = FuturesOrdered::new();
    // Made once for the connection, not at every turn of the loop: registering and
    // dropping a waiter (and a timer) per event cost about 3 % of the relay's CPU per
    // envelope. The idle timer is moved on lazily: each turn of the loop, once the last
    // event is handled, moves the deadline, and the timer, when it fires before it, is set
    // to it again.
    let closing = shared.closing();
    tokio::pin!(closing);
    let evicted = slot.evict.notified();
    tokio::pin!(evicted);
    let mut deadline = tokio::time::Instant::now() + idle;
    let idle_timer = tokio::time::sleep_until(deadline);
    tokio::pin!(idle_timer);
    let mut event_handled = false;
    loop {
        if event_handled {
            deadline = tokio::time::Instant::now() + idle;
        }
        event_handled = true;
        let event = tokio::select! {
            biased;
            () = &mut closing => {
                // Every request read is executed and answered, then the connection closes.
                while let Some((id, response)) = inflight.next().await {
                    if !finish(ws, id, &response, shared).await {
                        return Ended::Client;
                    }
                }
                return Ended::Shutdown;
            }
            // Closed to make room for another address ([`AddressBook::evict_for`]): what is
            // in flight is answered if it is done soon (a long-poll is not waited for), then
            // the connection closes as at shutdown, within the new one's wait.
            () = &mut evicted => {
                let answer = async {
                    while let Some((id, response)) = inflight.next().await {
                        if !finish(ws, id, &response, shared).await {
                            break;
                        }
                    }
                };
                let _ = tokio::time::timeout(EVICTED_ANSWERS, answer).await;
                return Ended::Shutdown;
            }
            Some((id, response)) = inflight.next(), if !inflight.is_empty() => Event::Done(id, response),
            next = ws.next(), if inflight.len() < PIPELINE_DEPTH => Event::Read(Some(next)),
            () = &mut idle_timer, if inflight.len() < PIPELINE_DEPTH => {
                if tokio::time::Instant::now() < deadline {
                    idle_timer.as_mut().reset(deadline);
                    event_handled = false;
                    continue;
                }
                Event::Read(None)
            }
        };
        let msg = match event {
            Event::Done(id, response) => {
                if !finish_ready(ws, id, &response, &mut inflight, shared).await {
                    return Ended::Client;
                }
                continue;
            }
            Event::Read(next) => next,
        };
        // Whatever ends the connection, requests already read are executed and answered
        // first (as far as the client still takes answers).
        let msg = match msg {
            Some(Some(Ok(m))) => m,
            Some(Some(Err(WsError::Capacity(_)))) => {
                Metrics::count(&metrics.oversize_frames);
                return drain(ws, &mut inflight, shared).await;
            }
            Some(Some(Err(_)) | None) => return drain(ws, &mut inflight, shared).await,
            // Idle for `idle`.
            None => {
                Metrics::count(&metrics.idle_timeouts);
                return drain(ws, &mut inflight, shared).await;
            }
        };
        let bytes = match msg {
            Message::Close(_) => return drain(ws, &mut inflight, shared).await,
            // Control frames cost a token too; tungstenite answers pings itself.
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {
                if bucket.take(Instant::now()).is_err() {
                    Metrics::count(&metrics.rate_limited);
                }
                continue;
            }
            Message::Text(_) => Vec::new().into(),
            Message::Binary(b) => b,
        };
        let id = request_id(&bytes);
        let arrived = Instant::now();
        let request = if let Err(wait) = conn.take_token(&mut bucket, shared) {
            Metrics::count(&metrics.rate_limited);
            Err(Response::Error {
                code: ErrorCode::RateLimited,
                detail: u64::try_from(wait.as_millis()).unwrap_or(u64::MAX).saturating_add(1),
            })
        } else {
            match decode_request(&bytes) {
                Ok((_, req)) => {
                    if let Some(record) = &shared.recorder {
                        record(number, &req);
                    }
                    match conn.forwarder {
                        false => match shared.budgets.take(conn.address, &req, &shared.limits) {
                            Ok(()) => Ok(req),
                            Err(wait) => {
                                Metrics::count(&metrics.address_limited);
                                Err(Response::Error {
                                    code: ErrorCode::RateLimited,
                                    detail: u64::try_from(wait.as_millis()).unwrap_or(u64::MAX).saturating_add(1),
                                })
                            }
                        },
                        true => Ok(req),
                    }
                }
                Err(FrameError::TooLarge(_)) => {
                    Metrics::count(&metrics.oversize_frames);
                    Err(Connection::err(ErrorCode::FrameTooLarge))
                }
                // With the relay's version, which a client of another version reads
                // to say which side to upgrade (docs/protocol.md, "Versions").
                Err(_) => Err(Response::Error {
                    code: ErrorCode::Malformed,
                    detail: u64::from(shared.protocol_version),
                }),
            }
        };
        // On a paced connection no answer leaves before its floor (docs/protocol.md,
        // "Answer times"); the request that declares it is the first so answered.
        let mut answered = Answered {
            arrived,
            started: arrived,
            paced: conn.paced || matches!(request, Ok(Request::Paced)),
            writes: matches!(&request, Ok(req) if writes(req)),
        };
        let request = request.and_then(|req| match req {
            // Only a relay that proved its identity forwards (each seal costs an X-Wing
            // decapsulation, counted against the forwarders' budget of its address).
            Request::Sealed { .. } if !conn.forwarder => Err(Connection::err(ErrorCode::Malformed)),
            req => Work::of(req, shared),
        });
        match request {
            // A refusal takes its place in the order of answers.
            Err(response) => inflight.push_back(Box::pin(async move {
                answered.wait(shared, false).await;
                (id, response)
            })),
            Ok(req) => match (conn.concurrent(&req), shared.concurrent_budget()) {
                // Within the relay-wide budget of requests in flight (each may hold an envelope).
                (true, Some(permit)) => inflight.push_back(Box::pin(async move {
                    let response = match req {
                        Work::Plain(req) => serve_concurrent(shared, number, req).await,
                        Work::Sealed { inner, key, .. } => {
                            sealed_answer(shared, &key, &serve_stateless(shared, inner).await)
                        }
                    };
                    drop(permit);
                    answered.wait(shared, !matches!(response, Response::Error { .. })).await;
                    (id, response)
                })),
                _ => {
                    // Anything else reads or changes the connection's state: it runs alone,
                    // after every earlier request is answered.
                    while let Some((id, response)) = inflight.next().await {
                        if !finish(ws, id, &response, shared).await {
                            return Ended::Client;
                        }
                    }
                    // Boxed for the same reason: only a request being served holds its state.
                    answered.started = Instant::now();
                    let response = match req {
                        Work::Plain(req) => Box::pin(conn.serve(shared, req)).await,
                        Work::Sealed { session, inner, key } => {
                            let response = Box::pin(conn.serve_sealed(shared, session, inner)).await;
                            sealed_answer(shared, &key, &response)
                        }
                    };
                    answered.wait(shared, !matches!(response, Response::Error { .. })).await;
                    if !finish(ws, id, &response, shared).await {
                        return Ended::Client;
                    }
                }
            },
        }
    }
}

/// What decides when a request's answer may leave.
#[derive(Clone, Copy)]
struct Answered {
    arrived: Instant,
    /// When the store was asked (later than `arrived` for a request that waited for the
    /// connection's earlier ones).
    started: Instant,
    /// On a paced connection: not before the answer floor.
    paced: bool,
    /// The request writes to the store: its time tells the floor how slow the store is.
    writes: bool,
}

impl Answered {
    /// Called when the answer is ready: counts how long a write took, and on a paced
    /// connection waits until the floor has passed since the request arrived (a request done
    /// after it is counted in `answers_late`).
    ///
    /// Only a write that `succeeded` counts (a refused one never reached the store, and a
    /// flood of them would pull the floor down), and only one of a paced connection tells the
    /// floor: such a connection sends one request at a time, so nothing but the store stands
    /// between the request and its answer (a pipelining client that reads slowly would make
    /// its writes look slow, and push every paced link's floor up).
    async fn wait(self, shared: &Shared, succeeded: bool) {
        if self.writes && succeeded {
            let took = self.started.elapsed();
            if self.paced {
                shared.floor.record(took);
            }
            shared.metrics.write_times.observe(took);
        }
        if !self.paced {
            return;
        }
        let took = self.arrived.elapsed();
        let floor = shared.floor.get();
        if took > floor {
            Metrics::count(&shared.metrics.answers_late);
        } else {
            tokio::time::sleep_until(self.arrived + floor).await;
        }
    }
}

/// Whether a request writes to the store (waits for its fsync when it succeeds).
fn writes(req: &Request) -> bool {
    matches!(
        req,
        Request::Send { .. }
            | Request::Ack { .. }
            | Request::Create { .. }
            | Request::Delete { .. }
            | Request::ClaimCommit { .. }
    )
}

/// How long the forward key a rotation replaced still opens seals: a client asks for a
/// destination's credential when it connects, so one that did just before a rotation seals to
/// the old key for as long as it keeps that connection.
pub const KEY_OVERLAP: Duration = Duration::from_secs(600);

/// Requests of one connection executed at once, at most: each may hold an envelope.
const PIPELINE_DEPTH: usize = 32;

/// Requests executed concurrently in the whole relay, at most (beyond that a request runs
/// alone on its connection): about 16 MiB of envelopes.
const CONCURRENT_BUDGET: usize = 4096;

/// Answers every request still in flight, then ends the connection.
async fn drain(ws: &mut Ws, inflight: &mut FuturesOrdered<Pending<'_>>, shared: &Shared) -> Ended {
    while let Some((id, response)) = inflight.next().await {
        if !finish(ws, id, &response, shared).await {
            // The client takes no more answers; the rest still execute.
            while inflight.next().await.is_some() {}
        }
    }
    Ended::Client
}

/// A request being executed: its id and, when done, its answer.
type Pending<'a> = Pin<Box<dyn std::future::Future<Output = (u32, Response)> + Send + 'a>>;

enum Event<R> {
    Done(u32, Response),
    Read(R),
}

/// Sends `response` and every later one already done, in order, flushing once: the
/// answers of a batch of pipelined writes, committed together, leave in one system call
/// ([`Corked`]). False if the connection is done for.
async fn finish_ready(
    ws: &mut Ws,
    id: u32,
    response: &Response,
    inflight: &mut FuturesOrdered<Pending<'_>>,
    shared: &Shared,
) -> bool {
    let send = async {
        count_response(response, shared);
        feed_response(ws, id, response).await?;
        while let Some(Some((id, response))) = inflight.next().now_or_never() {
            count_response(&response, shared);
            feed_response(ws, id, &response).await?;
        }
        ws.flush().await
    };
    match tokio::time::timeout(shared.limits.idle_timeout, send).await {
        Ok(r) => r.is_ok(),
        Err(_) => {
            Metrics::count(&shared.metrics.idle_timeouts);
            false
        }
    }
}

/// Counts a refusal among the metrics.
fn count_response(response: &Response, shared: &Shared) {
    if let Response::Error { code, .. } = response {
        count_refusal(&shared.metrics, *code);
        Metrics::count(&shared.metrics.protocol_errors);
    }
}

/// Counts a response and sends it; false if the connection is done for.
async fn finish(ws: &mut Ws, id: u32, response: &Response, shared: &Shared) -> bool {
    count_response(response, shared);
    answer(ws, id, response, shared).await
}

fn count_refusal(metrics: &Metrics, code: ErrorCode) {
    match code {
        ErrorCode::TooManyMailboxes => Metrics::count(&metrics.too_many_mailboxes),
        ErrorCode::MailboxFull => Metrics::count(&metrics.mailbox_full),
        ErrorCode::RelayFull => Metrics::count(&metrics.relay_full),
        ErrorCode::WorkRequired => Metrics::count(&metrics.work_required),
        ErrorCode::Storage => Metrics::count(&metrics.storage_failures),
        _ => {}
    }
}

/// Sends a response; a client that does not take it within the idle timeout is
/// cut off (returns false, as for any failed write).
async fn answer(ws: &mut Ws, id: u32, response: &Response, shared: &Shared) -> bool {
    match tokio::time::timeout(shared.limits.idle_timeout, send_response(ws, id, response)).await {
        Ok(r) => r.is_ok(),
        Err(_) => {
            Metrics::count(&shared.metrics.idle_timeouts);
            false
        }
    }
}

/// Sends a response's frames (several for a fetch), flushing once.
async fn send_response<S>(ws: &mut S, id: u32, response: &Response) -> Result<(), S::Error>
where
    S: futures_util::Sink<Message> + Unpin,
{
    feed_response(ws, id, response).await?;
    ws.flush().await
}

/// Hands a response's frames to the WebSocket without flushing.
async fn feed_response<S>(ws: &mut S, id: u32, response: &Response) -> Result<(), S::Error>
where
    S: futures_util::Sink<Message> + Unpin,
{
    for frame in encode_response(id, response) {
        ws.feed(Message::Binary(frame.into())).await?;
    }
    Ok(())
}

struct Connection {
    nonce: [u8; 32],
    opened: HashSet<MailboxId>,
    /// Mailboxes created or opened on this connection.
    touched: usize,
    /// The connection declared itself paced: its answers wait for the answer floor.
    paced: bool,
    /// The commit being deposited for this connection's next claim.
    deposit: DepositSlot,
    /// The connection's number (a forwarded request's queue at the forwarder).
    number: u64,
    /// The address it came from.
    address: IpAddr,
    /// The connection proved a relay's identity ([`Request::Forwarder`]): it may hand over
    /// sealed requests, counted against the forwarders' budget of its address.
    forwarder: bool,
    /// The deposits of forwarded commits, per session ([`Sessions`]).
    sessions: Sessions,
}

/// Most sessions one connection keeps: a forwarding relay's carries many users' requests,
/// each user's connection with a session of its own; past this, the oldest is forgotten (a
/// deposit in it lapses early, and its claim is refused `NoDeposit` and sent again).
const MAX_SESSIONS: usize = 4096;

/// Most forwarding addresses whose budgets the relay keeps; past it they are all forgotten
/// (each starts full again: a burst more for each).
const MAX_FORWARDERS: usize = 4096;

/// The deposits of forwarded commits, by session (`backchannel_core::forward`: a commit's
/// parts and its claim share a session, and nothing else does), as a connection keeps its
/// own deposit.
#[derive(Default)]
struct Sessions {
    by_id: HashMap<[u8; SESSION_LEN], DepositSlot>,
    /// Oldest first.
    order: std::collections::VecDeque<[u8; SESSION_LEN]>,
}

impl Sessions {
    /// The deposit of session `id`, started if there is none.
    fn deposit(&mut self, id: [u8; SESSION_LEN], address: IpAddr) -> &mut DepositSlot {
        if !self.by_id.contains_key(&id) {
            if self.order.len() >= MAX_SESSIONS {
                if let Some(old) = self.order.pop_front() {
                    self.by_id.remove(&old);
                }
            }
            self.order.push_back(id);
        }
        self.by_id
            .entry(id)
            .or_insert_with(|| DepositSlot::for_address(address))
    }
}

/// What a request read from a connection asks: a request of its own, or one forwarded to
/// us, opened ([`Request::Sealed`]).
enum Work {
    Plain(Request),
    Sealed {
        session: [u8; SESSION_LEN],
        inner: Request,
        key: AnswerKey,
    },
}

impl Work {
    /// Opens a sealed request; anything else as it is. A seal that does not open is
    /// answered `Unsealed` (the client asks for our forward key again).
    fn of(req: Request, shared: &Shared) -> Result<Self, Response> {
        let Request::Sealed { sealed } = req else {
            return Ok(Work::Plain(req));
        };
        match shared.open_sealed(&sealed) {
            Ok((session, inner, key)) => Ok(Work::Sealed { session, inner, key }),
            Err(ForwardError::Unsealed) => Err(Connection::err(ErrorCode::Unsealed)),
            Err(_) => Err(Response::Error {
                code: ErrorCode::Malformed,
                detail: u64::from(shared.protocol_version),
            }),
        }
    }
}

/// The sealed answer to a forwarded request (counted in `forwarded_in`).
fn sealed_answer(shared: &Shared, key: &AnswerKey, response: &Response) -> Response {
    Metrics::count(&shared.metrics.forwarded_in);
    match seal::seal_answer(key, response) {
        Ok(s) => Response::Sealed(s),
        Err(_) => Connection::err(ErrorCode::Malformed),
    }
}

/// Logs a failure of the store: what the relay was doing and the failure's own
/// description, both fixed text. Never the backend's words (the error's sources),
/// which can hold mailbox ids or NATS subjects: relay logs carry counts only.
pub(crate) fn log_store_failure(doing: &'static str, e: &StoreError) {
    tracing::error!(doing, failure = %e, "storage failure");
}

/// The answer to a request the store refused or failed; a failure is logged (see
/// [`log_store_failure`]) and answered `Storage`.
fn store_error(doing: &'static str, e: StoreError) -> Response {
    let (code, detail) = e.refusal().unwrap_or_else(|| {
        log_store_failure(doing, &e);
        (ErrorCode::Storage, 0)
    });
    Response::Error { code, detail }
}

/// Takes one part of a commit into `slot` (a connection's, or a forwarded session's).
fn deposit(slot: &mut DepositSlot, shared: &Shared, part: u16, total: u16, bytes: &[u8]) -> Response {
    match slot.push(&shared.deposits, part, total, bytes, std::time::Instant::now()) {
        Ok(()) => Response::Ok,
        Err(code) => Connection::err(code),
    }
}

/// Claims an epoch with the whole commit deposited in `slot`.
async fn claim_commit(slot: &mut DepositSlot, shared: &Shared, req: &Request) -> Response {
    let Request::ClaimCommit { digest, .. } = req else {
        return Connection::err(ErrorCode::Malformed);
    };
    let commit = match slot.take(digest, std::time::Instant::now()) {
        Ok(c) => c,
        Err(code) => return Connection::err(code),
    };
    match ClaimProof::of(req) {
        Some((send, epoch, proof)) => match shared.store.claim(send, epoch, proof, Some(commit)).await {
            Ok(()) => Response::Ok,
            Err(e) => store_error("claiming an epoch", e),
        },
        None => Connection::err(ErrorCode::Malformed),
    }
}

/// Executes a request that may run beside others of its connection
/// ([`Connection::concurrent`]): one we forward for our user on connection `source`, or one
/// of [`serve_stateless`]'s.
async fn serve_concurrent(shared: &Shared, source: u64, req: Request) -> Response {
    match req {
        Request::Forward { to, sealed } => {
            let answer = shared.forwarder.ask(source, &to, Ask::Sealed(sealed)).await;
            let counter = match answer {
                Response::Error {
                    code: ErrorCode::Unreachable,
                    ..
                } => &shared.metrics.forward_unreachable,
                _ => &shared.metrics.forwarded,
            };
            Metrics::count(counter);
            answer
        }
        Request::Identify { relay } => shared.forwarder.ask(source, &relay, Ask::Identify).await,
        req => serve_stateless(shared, req).await,
    }
}

/// Executes a `Send`, `Claim` or `Ack` (checked by [`Connection::concurrent`]): requests
/// that touch only the store, so several of one connection may run at once.
async fn serve_stateless(shared: &Shared, req: Request) -> Response {
    let store = shared.store.clone();
    match req {
        Request::Send { send, envelope, pow } => {
            let expires = now_secs().saturating_add(shared.limits.envelope_ttl.as_secs());
            // The proof is checked once, here in the request's task (three SHA-256, a few
            // microseconds, and only for a nonzero nonce), not on the store's writer
            // thread: the writer commits every write of the relay one batch after
            // another, and hashing there would lengthen every send's wait. The store
            // compares the checked work with the mailbox's difficulty in the same step
            // that stores the envelope. A proof already used is refused before the store
            // sees it (proofs.rs).
            let proof = match pow {
                0 => None,
                nonce => pow::prove(&Sha256::digest(send).into(), &envelope, nonce),
            };
            let work = proof.map_or(ProvenWork::NONE, |p| p.work);
            let spent = SpentProofs::key(proof);
            if let Some(key) = spent {
                if !shared.spent.spend(key) {
                    return Connection::err(ErrorCode::WorkRequired);
                }
            }
            match store.send(send, envelope, expires, work).await {
                Ok((mailbox, _)) => {
                    shared.metrics.envelopes_in.fetch_add(1, Ordering::Relaxed);
                    shared.waiters.wake(&mailbox);
                    Response::Ok
                }
                Err(e) => {
                    if let Some(key) = spent {
                        shared.spent.refund(&key);
                    }
                    store_error("storing an envelope", e)
                }
            }
        }
        // A claim without its commit is worth nothing since protocol 4 (docs/protocol.md,
        // "Claims"): only `ClaimCommit` claims. (Clients that sent these are refused at the
        // hello.)
        Request::Claim { .. } | Request::ClaimKeyed { .. } => Connection::err(ErrorCode::NoDeposit),
        Request::FetchCommit { send, epoch, key, part } => match store.held_commit(send, epoch, key).await {
            Ok(commit) => match commit_part(&commit, part) {
                Some((total, bytes)) => Response::Commit { total, bytes },
                None => Connection::err(ErrorCode::Malformed),
            },
            Err(e) => store_error("reading a held commit", e),
        },
        Request::Ack { mailbox, seq } => match store.ack(mailbox, seq).await {
            Ok(()) => {
                shared.metrics.envelopes_acked.fetch_add(1, Ordering::Relaxed);
                Response::Ok
            }
            Err(e) => store_error("deleting an acknowledged envelope", e),
        },
        // Ours or forwarded to us (a joiner whose home is another relay). Neither the number
        // nor the record is ever logged.
        Request::TakeNameplate { number } => match store.nameplate_take(number, now_secs()).await {
            Ok(Some(record)) => {
                Metrics::count(&shared.metrics.nameplates_taken);
                Response::Record(record)
            }
            Ok(None) => Connection::err(ErrorCode::NoSuchNameplate),
            Err(e) => store_error("taking a nameplate", e),
        },
        // Ours or forwarded to us (the holder of a short address whose home is another
        // relay). The bundle stays. Neither the name nor the bundle is ever logged.
        Request::Bundle { name } => match store.bundle_get(name, now_secs()).await {
            Ok(Some(bundle)) => {
                Metrics::count(&shared.metrics.bundles_fetched);
                Response::Record(bundle)
            }
            Ok(None) => Connection::err(ErrorCode::NoSuchBundle),
            Err(e) => store_error("reading a bundle", e),
        },
        _ => Connection::err(ErrorCode::Malformed),
    }
}

impl Connection {
    fn err(code: ErrorCode) -> Response {
        Response::Error { code, detail: 0 }
    }

    async fn serve(&mut self, shared: &Shared, req: Request) -> Response {
        let store = shared.store.clone();
        match req {
            Request::Ping => Response::Pong,
            Request::Nameplate { record } => {
                let expires = now_secs().saturating_add(shared.limits.nameplate_lifetime.as_secs());
                match store.nameplate_create(record, expires).await {
                    Ok(number) => {
                        Metrics::count(&shared.metrics.nameplates_created);
                        Response::Nameplate { number }
                    }
                    Err(e) => store_error("allocating a nameplate", e),
                }
            }
            req @ Request::TakeNameplate { .. } => serve_stateless(shared, req).await,
            // Spoken with one's own relay only: a forwarded one (inside `Sealed`) reaches
            // `serve_stateless`, which refuses it.
            Request::Publish {
                name,
                expires_at,
                bundle,
            } => {
                let now = now_secs();
                let expires = expires_at.min(now.saturating_add(shared.limits.bundle_lifetime.as_secs()));
                match store.bundle_publish(name, bundle, expires, now).await {
                    Ok(()) => {
                        Metrics::count(&shared.metrics.bundles_published);
                        Response::Ok
                    }
                    Err(e) => store_error("publishing a bundle", e),
                }
            }
            req @ Request::Bundle { .. } => serve_stateless(shared, req).await,
            Request::Paced => {
                self.paced = true;
                Response::Ok
            }
            Request::Create {
                mailbox,
                recipient_key,
                send_digest,
                pow_bits,
            } => {
                if self.touched >= shared.limits.max_mailboxes_per_connection {
                    return Self::err(ErrorCode::TooManyMailboxes);
                }
                match store.create(mailbox, recipient_key, send_digest, pow_bits).await {
                    Ok(()) => {
                        self.touched += 1;
                        self.opened.insert(mailbox);
                        Response::Ok
                    }
                    Err(e) => store_error("creating a mailbox", e),
                }
            }
            req @ (Request::Send { .. }
            | Request::Claim { .. }
            | Request::ClaimKeyed { .. }
            | Request::FetchCommit { .. }) => serve_stateless(shared, req).await,
            Request::Deposit { part, total, bytes } => deposit(&mut self.deposit, shared, part, total, &bytes),
            ref req @ Request::ClaimCommit { .. } => claim_commit(&mut self.deposit, shared, req).await,
            Request::Open { mailbox, proof } => {
                if self.opened.contains(&mailbox) {
                    return Response::Ok;
                }
                if self.touched >= shared.limits.max_mailboxes_per_connection {
                    return Self::err(ErrorCode::TooManyMailboxes);
                }
                match store.recipient_key(mailbox).await {
                    Ok(Some(key)) => {
                        if verify_open_proof(&key, &self.nonce, &mailbox, &proof) {
                            self.touched += 1;
                            self.opened.insert(mailbox);
                            shared.refresh(&[mailbox]);
                            Response::Ok
                        } else {
                            Self::err(ErrorCode::BadProof)
                        }
                    }
                    Ok(None) => Self::err(ErrorCode::NoSuchMailbox),
                    Err(e) => store_error("opening a mailbox", e),
                }
            }
            Request::Fetch { max, wait_ms } => {
                let max = max.clamp(1, MAX_FETCH) as usize;
                let wait = Duration::from_millis(u64::from(wait_ms)).min(shared.limits.max_wait);
                self.fetch(shared, max, wait).await
            }
            req @ Request::Ack { .. } => {
                if matches!(&req, Request::Ack { mailbox, .. } if self.opened.contains(mailbox)) {
                    serve_stateless(shared, req).await
                } else {
                    Self::err(ErrorCode::NotOpened)
                }
            }
            req @ (Request::Forward { .. } | Request::Identify { .. }) => {
                serve_concurrent(shared, self.number, req).await
            }
            Request::Forwarder {
                identity,
                scheme,
                signature,
            } => {
                let mut message = seal::FORWARDER_LABEL.to_vec();
                message.extend_from_slice(&self.nonce);
                if !backchannel_core::relay_identity::verify_signature(&identity, scheme, &message, &signature) {
                    return Self::err(ErrorCode::BadProof);
                }
                self.forwarder = true;
                Response::Ok
            }
            // Opened before it gets here ([`Work::of`]): a seal inside a seal is not one.
            Request::Sealed { .. } => Self::err(ErrorCode::Malformed),
            Request::Delete { mailbox } => {
                if !self.opened.contains(&mailbox) {
                    return Self::err(ErrorCode::NotOpened);
                }
                match store.delete(mailbox).await {
                    Ok(()) => {
                        if self.opened.remove(&mailbox) {
                            self.touched = self.touched.saturating_sub(1);
                        }
                        Response::Ok
                    }
                    Err(e) => store_error("deleting a mailbox", e),
                }
            }
        }
    }

    /// A token of this connection's bucket, or of its forwarding relay's (all forwarding
    /// connections from its address together, at the relay's `--forwarder-rate`); or how
    /// long until the next.
    fn take_token(&self, bucket: &mut Bucket, shared: &Shared) -> Result<(), Duration> {
        if !self.forwarder {
            return bucket.take(Instant::now());
        }
        let mut buckets = shared.forwarders.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.len() > MAX_FORWARDERS && !buckets.contains_key(&self.address) {
            buckets.clear();
        }
        buckets
            .entry(self.address)
            .or_insert_with(|| {
                Bucket::new(
                    shared.limits.forwarder_rate,
                    shared.limits.forwarder_burst,
                    Instant::now(),
                )
            })
            .take(Instant::now())
    }

    /// Executes a forwarded request that runs alone: a commit's deposit and claim, in its
    /// `session`, or any other that is not run beside the connection's others.
    ///
    /// A forwarded `Create` is not counted against `--max-mailboxes-per-connection`: one
    /// forwarding connection carries all of a relay's users, and each request has a session of
    /// its own, so no count here would bound one user; the forwarders' budget does.
    async fn serve_sealed(&mut self, shared: &Shared, session: [u8; SESSION_LEN], inner: Request) -> Response {
        match inner {
            Request::Ping => Response::Pong,
            Request::Create {
                mailbox,
                recipient_key,
                send_digest,
                pow_bits,
            } => match shared.store.create(mailbox, recipient_key, send_digest, pow_bits).await {
                Ok(()) => Response::Ok,
                Err(e) => store_error("creating a mailbox", e),
            },
            Request::Deposit { part, total, bytes } => {
                let slot = self.sessions.deposit(session, self.address);
                deposit(slot, shared, part, total, &bytes)
            }
            ref req @ Request::ClaimCommit { .. } => {
                let slot = self.sessions.deposit(session, self.address);
                claim_commit(slot, shared, req).await
            }
            // `Send`, `Claim`, `ClaimKeyed`, `FetchCommit`: what touches only the store.
            req => serve_stateless(shared, req).await,
        }
    }

    /// Whether a request may run beside others of this connection: it reads no state
    /// that another request could change meanwhile (an `Ack` only of a mailbox this
    /// connection has opened; any other is refused, alone).
    fn concurrent(&self, work: &Work) -> bool {
        let req = match work {
            Work::Plain(req) => req,
            Work::Sealed { inner, .. } => {
                return matches!(
                    inner,
                    Request::Send { .. } | Request::Claim { .. } | Request::ClaimKeyed { .. }
                )
            }
        };
        match req {
            // Forwarded on, and answered as the destination answers.
            Request::Forward { .. } | Request::Identify { .. } => true,
            Request::Ack { mailbox, .. } => self.opened.contains(mailbox),
            // Not `FetchCommit`: each reads a whole held commit (up to 512 KiB), so one
            // connection's run one after the other.
            Request::Send { .. } | Request::Claim { .. } | Request::ClaimKeyed { .. } => true,
            _ => false,
        }
    }

    async fn fetch(&self, shared: &Shared, max: usize, wait: Duration) -> Response {
        let deadline = tokio::time::Instant::now() + wait;
        let ids: Vec<MailboxId> = self.opened.iter().copied().collect();
        // A connection kept open for months (a daemon's) keeps its mailboxes alive.
        shared.refresh(&ids);
        // Registered before the first look, so that a delivery after it wakes us; a fetch
        // that does not wait (a paced link's) registers nothing.
        let waiting = (!wait.is_zero()).then(|| shared.waiters.wait_for(&ids));
        loop {
            match shared.store.fetch(&ids, max).await {
                Ok(list) if !list.is_empty() => return Response::Envelopes(list),
                Ok(_) => {}
                Err(e) => return store_error("fetching envelopes", e),
            }
            let Some(waiting) = &waiting else {
                return Response::Envelopes(Vec::new());
            };
            // Wait for a delivery into one of our mailboxes, the deadline, or shutdown.
            tokio::select! {
                woken = tokio::time::timeout_at(deadline, waiting.notified()) => {
                    if woken.is_err() {
                        return Response::Envelopes(Vec::new());
                    }
                }
                _ = shared.closing() => return Response::Envelopes(Vec::new()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use tokio::io::AsyncReadExt;

    #[test]
    fn the_bucket_allows_a_burst_then_the_rate_and_says_when_to_come_back() {
        let t0 = Instant::now();
        let mut b = Bucket::new(10, 3, t0);
        for _ in 0..3 {
            assert_eq!(b.take(t0), Ok(()));
        }
        let wait = b.take(t0).unwrap_err();
        assert_eq!(wait, Duration::from_millis(100));
        // A refused request costs nothing; after 100 ms one more is allowed.
        assert!(b.take(t0 + Duration::from_millis(50)).is_err());
        assert_eq!(b.take(t0 + Duration::from_millis(100)), Ok(()));
        // Idle time refills up to the burst, not beyond.
        let later = t0 + Duration::from_secs(60);
        for _ in 0..3 {
            assert_eq!(b.take(later), Ok(()));
        }
        assert!(b.take(later).is_err());
        // A rate of 0 is no limit.
        let mut free = Bucket::new(0, 1, t0);
        assert!((0..10_000).all(|_| free.take(t0).is_ok()));
    }

    #[test]
    fn one_party_is_an_ipv4_address_or_an_ipv6_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(address_key(a), address_key(b));
        assert_ne!(address_key(a), address_key(c));
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(address_key(mapped), "192.0.2.7".parse::<IpAddr>().unwrap());
        let book = Arc::new(AddressBook::new(2));
        let first = book.admit(a).unwrap();
        let second = book.admit(b).unwrap();
        assert!(book.admit(a).is_none());
        assert!(book.admit(c).is_some());
        drop(first);
        assert!(book.admit(b).is_some());
        drop(second);
        assert!(
            book.counts.lock().unwrap().is_empty(),
            "entries go with their connections"
        );
    }

    /// At capacity, room is made for an address by closing the newest connection of the
    /// address holding the most, and only if it holds at least two more.
    #[tokio::test]
    async fn room_is_made_from_the_address_holding_the_most_connections() {
        let book = Arc::new(AddressBook::new(16));
        let (a, b, c): (IpAddr, IpAddr, IpAddr) = (
            "192.0.2.1".parse().unwrap(),
            "192.0.2.2".parse().unwrap(),
            "192.0.2.3".parse().unwrap(),
        );
        let a_slots: Vec<AddressSlot> = (0..3).map(|_| book.admit(a).unwrap()).collect();
        let _b_slot = book.admit(b).unwrap();
        assert!(book.evict_for(c), "c holds none, a holds three");
        // a's newest was told to close (its signal is waiting for it), the others not.
        for (i, slot) in a_slots.iter().enumerate() {
            let told = tokio::time::timeout(Duration::from_millis(20), slot.evict.notified())
                .await
                .is_ok();
            assert_eq!(told, i == 2, "slot {i}");
        }
        assert!(!book.evict_for(b), "a now holds two, b one: no closer to even");
        assert!(
            !book.evict_for(a),
            "never to make room for the address holding the most"
        );
        drop(a_slots);
        assert_eq!(book.counts.lock().unwrap().get(&b).map(Vec::len), Some(1));
    }

    /// Through the request handlers, from wire frames: a drop box created with a
    /// difficulty refuses sends without their proof of work with `WorkRequired`,
    /// takes a solved one once (a replay is refused too); an ordinary mailbox
    /// takes `pow` 0.
    #[tokio::test]
    async fn a_drop_box_answers_work_required_to_a_send_without_its_proof() {
        use backchannel_core::envelope::{Envelope, ENVELOPE_SIZE};
        use backchannel_core::frame::encode_request;
        use backchannel_core::pow;
        use sha2::{Digest, Sha256};

        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::EmbeddedStore::open(&dir.path().join("m.redb"), 10).unwrap();
        let store = Backend::Embedded(store);
        let (done_tx, done_rx) = mpsc::channel(1);
        drop(done_rx);
        let (_closing_tx, closing) = watch::channel(false);
        let identity = crate::tls::TlsIdentity::generate().unwrap();
        let shared = Shared::new(
            Arc::new(store),
            Limits::default(),
            Arc::new(Waiters::default()),
            Arc::new(Metrics::default()),
            Arc::new(identity.wire_keys(0).unwrap()),
            closing,
            done_tx,
        );
        let mut conn = Connection {
            nonce: [0; 32],
            opened: HashSet::new(),
            touched: 0,
            deposit: DepositSlot::default(),
            paced: false,
            number: 0,
            address: IpAddr::from([127, 0, 0, 1]),
            forwarder: false,
            sessions: Sessions::default(),
        };
        // Every request goes through its wire form, as the relay receives it.
        let wire = |req: Request| decode_request(&encode_request(1, &req)).unwrap().1;
        let (drop_cap, plain_cap) = ([2u8; 32], [5u8; 32]);
        let digest = |cap: [u8; 32]| -> [u8; 32] { Sha256::digest(cap).into() };
        let bits = crate::proofs::REMEMBERED_BITS as u8;
        for (id, cap, pow_bits) in [(1u8, drop_cap, bits), (4, plain_cap, 0)] {
            let create = wire(Request::Create {
                mailbox: MailboxId([id; 32]),
                recipient_key: [3; 32],
                send_digest: digest(cap),
                pow_bits,
            });
            assert_eq!(conn.serve(&shared, create).await, Response::Ok);
        }
        let envelope = Envelope::from_bytes(&[9; ENVELOPE_SIZE]).unwrap();
        let send = |send, pow| {
            wire(Request::Send {
                send,
                envelope: envelope.clone(),
                pow,
            })
        };
        let refused = Response::Error {
            code: ErrorCode::WorkRequired,
            detail: 0,
        };
        let nonce = pow::solve(&pow::challenge(&digest(drop_cap), &envelope), bits);
        assert_eq!(conn.serve(&shared, send(drop_cap, 0)).await, refused);
        assert_eq!(conn.serve(&shared, send(drop_cap, nonce + 1)).await, refused);
        assert_eq!(shared.store.stats().await.unwrap().envelopes, 0);
        assert_eq!(conn.serve(&shared, send(drop_cap, nonce)).await, Response::Ok);
        assert_eq!(conn.serve(&shared, send(plain_cap, 0)).await, Response::Ok);
        assert_eq!(shared.store.stats().await.unwrap().envelopes, 2);
        // The same solved envelope again is a replay: refused, and not stored.
        assert_eq!(conn.serve(&shared, send(drop_cap, nonce)).await, refused);
        assert_eq!(shared.store.stats().await.unwrap().envelopes, 2);
        let metrics = Metrics::default();
        count_refusal(&metrics, ErrorCode::WorkRequired);
        assert_eq!(metrics.work_required.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn a_capped_stream_stops_at_its_cap_until_uncapped() {
        let (mut tx, rx) = tokio::io::duplex(64 * 1024);
        tokio::io::AsyncWriteExt::write_all(&mut tx, &[7u8; 20_000])
            .await
            .unwrap();
        let mut capped = Capped {
            inner: rx,
            left: Some(MAX_UPGRADE_REQUEST),
        };
        let mut got = Vec::new();
        let err = capped.read_to_end(&mut got).await.unwrap_err();
        assert!(err.get_ref().unwrap().is::<UpgradeTooLarge>());
        assert_eq!(got.len(), MAX_UPGRADE_REQUEST);
        capped.uncap();
        drop(tx);
        let mut rest = Vec::new();
        capped.read_to_end(&mut rest).await.unwrap();
        assert_eq!(got.len() + rest.len(), 20_000);
    }
}

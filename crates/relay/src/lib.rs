//! The backchannel relay: anonymous mailboxes of fixed-size sealed
//! envelopes, served over WebSocket on TLS 1.3.
//!
//! The relay never sees a name, a channel or a plaintext: it stores 4096-byte
//! envelopes in mailboxes identified by random ids, hands them to whoever
//! proves the mailbox's recipient key, and deletes them on acknowledgement
//! or expiry. Its logs hold counts only.
#![forbid(unsafe_code)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod answer_floor;
mod corked;
pub mod deposit;
mod exporter;
mod forward;
pub mod proofs;
pub mod server;
pub mod store;
pub mod tls;
mod waiters;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use backchannel_core::relay_address::Pin;
use tokio::net::TcpListener;
use tokio::sync::{broadcast, mpsc, watch};

pub use server::Metrics;
/// The NATS JetStream backend (also at `store::nats`).
pub use store::nats;
use store::{Backend, EmbeddedStore, MailboxStore, Quota, StoreError};

/// The relay could not start or keep running.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RelayError {
    /// A file or socket operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
    /// TLS setup failed.
    #[error("TLS setup failed: {0}")]
    Tls(String),
    /// The store could not be opened.
    #[error("the relay's store could not be opened: {0}")]
    Store(#[source] StoreError),
}

impl RelayError {
    pub(crate) fn io(context: &'static str, source: std::io::Error) -> Self {
        RelayError::Io { context, source }
    }
}

/// Limits the relay enforces. docs/protocol.md ("Relay limits") lists each with its
/// refusal and its metric.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Concurrent connections (handshaking or open).
    pub max_connections: usize,
    /// Concurrent connections from one address: an IPv4 address, or an IPv6 /64.
    pub max_connections_per_address: usize,
    /// Mailboxes one connection may create or open.
    pub max_mailboxes_per_connection: usize,
    /// Envelopes one mailbox may hold.
    pub max_envelopes_per_mailbox: u32,
    /// Envelopes the relay holds in all mailboxes together.
    pub max_stored_envelopes: u64,
    /// Requests per second one connection may make on average (0: no limit).
    pub max_requests_per_second: u32,
    /// Requests one connection may make at once (the token bucket's size).
    pub request_burst: u32,
    /// How long an unacknowledged envelope is kept.
    pub envelope_ttl: Duration,
    /// Longest long-poll.
    pub max_wait: Duration,
    /// Time allowed for the TLS and WebSocket handshakes together.
    pub handshake_timeout: Duration,
    /// A connection that completes no message (or takes no response) for this long is closed.
    pub idle_timeout: Duration,
    /// How often expired envelopes are swept.
    pub sweep_interval: Duration,
    /// How often the counts are logged.
    pub stats_interval: Duration,
    /// On shutdown, time the requests in flight get to finish before the relay exits anyway.
    pub shutdown_grace: Duration,
    /// A paced connection's requests are answered no sooner than this after they arrive
    /// ([`backchannel_core::frame::Request::Paced`]); set it above the store's usual fsync
    /// time (`answers_late` in the counts says how often a store was slower).
    pub answer_floor: Duration,
    /// Requests per second that one forwarding relay (docs/protocol.md, "Forwarding") may
    /// make on average, all its connections together, in place of a connection's
    /// `max_requests_per_second` (0: no limit).
    pub forwarder_rate: u32,
    /// Requests one forwarding relay may make at once (its token bucket's size).
    pub forwarder_burst: u32,
    /// A mailbox unused this long (not opened by its recipient, not claimed at) is deleted
    /// with everything in it. The protocol promises clients at least 90 days
    /// (docs/protocol.md, "Idle mailboxes"); shorter only in tests.
    pub idle_mailbox_lifetime: Duration,
    /// Forward to relays at loopback, private and link-local addresses too (off by default:
    /// a client must not make the relay connect into the network it sits in).
    pub forward_private: bool,
    /// Mailboxes one address (an IPv4 address, or an IPv6 /64) may create per minute on
    /// average, all its connections together (0: no limit).
    pub address_create_rate: u32,
    /// Mailboxes one address may create at once (its bucket's size).
    pub address_create_burst: u32,
    /// Envelopes one address may store per second on average (its sends, and the requests
    /// it forwards through this relay), all its connections together (0: no limit).
    pub address_store_rate: u32,
    /// Envelopes one address may store at once (its bucket's size).
    pub address_store_burst: u32,
    /// How long a nameplate (an invite code's number, docs/protocol.md "Nameplates") is
    /// kept untaken. Its record is kept at least this long, at most a second more.
    pub nameplate_lifetime: Duration,
    /// The longest a bundle (what a short address names, docs/protocol.md "Bundles") is
    /// kept: a `Publish` asking for longer is kept this long, and publishing it again keeps
    /// it longer.
    pub bundle_lifetime: Duration,
}

impl Limits {
    /// The defaults: the one place they are written (the command line's defaults are
    /// read from here).
    pub const DEFAULT: Limits = Limits {
        max_connections: 1024,
        max_connections_per_address: 64,
        max_mailboxes_per_connection: 256,
        max_envelopes_per_mailbox: 10_000,
        max_stored_envelopes: 10_000_000,
        max_requests_per_second: 200,
        request_burst: 1000,
        envelope_ttl: Duration::from_secs(14 * 24 * 3600),
        max_wait: Duration::from_secs(30),
        handshake_timeout: Duration::from_secs(10),
        idle_timeout: Duration::from_secs(120),
        sweep_interval: Duration::from_secs(60),
        stats_interval: Duration::from_secs(60),
        shutdown_grace: Duration::from_secs(5),
        answer_floor: Duration::from_millis(25),
        forwarder_rate: 2000,
        forwarder_burst: 4000,
        idle_mailbox_lifetime: Duration::from_secs(90 * 24 * 3600),
        forward_private: false,
        address_create_rate: 120,
        address_create_burst: 2000,
        address_store_rate: 100,
        address_store_burst: 50_000,
        nameplate_lifetime: Duration::from_secs(600),
        bundle_lifetime: Duration::from_secs(90 * 24 * 3600),
    };
}

impl Default for Limits {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// The embedded store's database file in the data directory.
pub const STORE_FILE: &str = "mailboxes.redb";

/// Told each request a relay reads, with the number of the connection it came on: what an
/// operator who modifies its relay can record ([`Relay::with_recorder`]).
pub type Recorder = Arc<dyn Fn(u64, &backchannel_core::frame::Request) + Send + Sync>;

/// The file in a relay's data directory that asks the running relay to rotate its wire keys
/// (`relay rotate-key`): the relay looks for it every [`ROTATION_POLL`], makes new keys, and
/// deletes it.
pub const ROTATE_FILE: &str = "rotate-keys";

/// How often a running relay looks for [`ROTATE_FILE`].
pub const ROTATION_POLL: Duration = Duration::from_secs(1);

/// Asks the relay running on `data_dir` to make new TLS and forward keys (`relay
/// rotate-key`), and waits up to `wait` for it to have done so. Returns whether it did; if
/// not, the request stays, and a relay started on that directory rotates at once (which it
/// does at every start anyway).
pub async fn ask_to_rotate(data_dir: &Path, wait: Duration) -> Result<bool, RelayError> {
    let path = data_dir.join(ROTATE_FILE);
    if !data_dir.join(tls::TLS_CERT_FILE).exists() {
        return Err(RelayError::io(
            "finding the relay's identity in the data directory",
            std::io::Error::new(std::io::ErrorKind::NotFound, "no relay-cert.der"),
        ));
    }
    std::fs::write(&path, b"").map_err(|e| RelayError::io("asking the relay to rotate its keys", e))?;
    let deadline = tokio::time::Instant::now() + wait;
    while tokio::time::Instant::now() < deadline {
        if !path.exists() {
            return Ok(true);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(!path.exists())
}

/// Where a running relay learns that it is asked to rotate its wire keys.
#[derive(Clone)]
enum RotationSignal {
    /// [`ROTATE_FILE`] appears in the data directory (the embedded store).
    File(PathBuf),
    /// The cluster's rotation record grows (`nats::request_rotation`): every relay of the
    /// cluster rotates.
    Cluster,
}

/// Makes new wire keys whenever asked (`signal`).
async fn watch_rotation(
    shared: Arc<server::Shared>,
    identity: Arc<tls::TlsIdentity>,
    store: Arc<Backend>,
    signal: RotationSignal,
) {
    let rotate = || match identity.wire_keys(now_secs()) {
        Ok(keys) => {
            shared.rotate(keys);
            tracing::info!("wire keys rotated: a new TLS certificate and forward key, the same PIN");
        }
        Err(e) => tracing::error!(failure = %e, "could not make new wire keys"),
    };
    match (signal, store.as_ref()) {
        (RotationSignal::File(dir), _) => {
            let path = dir.join(ROTATE_FILE);
            loop {
                if path.exists() {
                    rotate();
                    let _ = std::fs::remove_file(&path);
                }
                tokio::time::sleep(ROTATION_POLL).await;
            }
        }
        (RotationSignal::Cluster, Backend::Nats(nats)) => {
            // A request made before this relay started is done: its keys are fresh.
            let mut seen = nats.rotation_asked().await.unwrap_or(0);
            loop {
                tokio::time::sleep(ROTATION_POLL).await;
                if let Ok(asked) = nats.rotation_asked().await {
                    if asked > seen {
                        seen = asked;
                        rotate();
                    }
                }
            }
        }
        (RotationSignal::Cluster, _) => {}
    }
}

/// A relay ready to serve: identity loaded, store open.
pub struct Relay {
    pin: Pin,
    /// The identity key, which signs the wire keys of a rotation.
    identity: Arc<tls::TlsIdentity>,
    /// Where it learns that it is asked to rotate its wire keys.
    rotation: RotationSignal,
    /// The TLS certificate of this run and the identity's credential for it.
    keys: Arc<tls::WireKeys>,
    store: Arc<Backend>,
    limits: Limits,
    metrics: Arc<Metrics>,
    /// The protocol version it announces.
    protocol_version: u8,
    recorder: Option<Recorder>,
    /// Where `/metrics`, `/healthz` and `/readyz` are served, if anywhere.
    metrics_listener: Option<TcpListener>,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay").field("pin", &self.pin).finish_non_exhaustive()
    }
}

impl Relay {
    /// Opens the relay's data directory (creating it and the TLS identity on first start).
    pub fn open(data_dir: PathBuf, limits: Limits) -> Result<Self, RelayError> {
        std::fs::create_dir_all(&data_dir).map_err(|e| RelayError::io("creating the data directory", e))?;
        let identity = tls::TlsIdentity::load_or_create(&data_dir)?;
        let quota = Quota {
            per_mailbox: limits.max_envelopes_per_mailbox,
            total: limits.max_stored_envelopes,
        };
        let store = EmbeddedStore::open_with_quota(&data_dir.join(STORE_FILE), quota).map_err(RelayError::Store)?;
        // Keys are made afresh at start: a rotation asked for while no relay ran is done.
        let _ = std::fs::remove_file(data_dir.join(ROTATE_FILE));
        let mut relay = Self::with(identity, Arc::new(Backend::Embedded(store)), limits)?;
        relay.rotation = RotationSignal::File(data_dir);
        Ok(relay)
    }

    fn with(identity: tls::TlsIdentity, store: Arc<Backend>, limits: Limits) -> Result<Self, RelayError> {
        Ok(Self {
            pin: identity.pin(),
            keys: Arc::new(identity.wire_keys(now_secs())?),
            identity: Arc::new(identity),
            rotation: RotationSignal::Cluster,
            store,
            limits,
            metrics: Arc::new(Metrics::default()),
            protocol_version: backchannel_core::frame::PROTOCOL_VERSION,
            recorder: None,
            metrics_listener: None,
        })
    }

    /// Connects to a NATS JetStream cluster as one of the relays that share it: same
    /// identity (kept in the cluster; the first relay to start makes it), same mailboxes.
    pub async fn open_nats(config: nats::NatsConfig, limits: Limits) -> Result<Self, RelayError> {
        let store = nats::NatsStore::connect_with_limits(&config, &limits)
            .await
            .map_err(RelayError::Store)?;
        // Made before asking, so that a failure here never stores an empty identity.
        let made = tls::TlsIdentity::generate()?;
        let shared = store
            .shared_identity(made.to_bytes())
            .await
            .map_err(RelayError::Store)?;
        let identity = tls::TlsIdentity::from_bytes(&shared)?;
        Self::with(identity, Arc::new(Backend::Nats(Box::new(store))), limits)
    }

    /// Announces another protocol version than this build's, and answers unparseable
    /// requests with it: only for tests that play a relay of another version.
    #[doc(hidden)]
    pub fn with_protocol_version(mut self, version: u8) -> Self {
        self.protocol_version = version;
        self
    }

    /// Tells `recorder` every request with the connection it came on: only for tests that
    /// play an operator who modified its relay to record what each connection does (the
    /// relay itself records none of it, and the command line cannot turn this on).
    #[doc(hidden)]
    pub fn with_recorder(mut self, recorder: Recorder) -> Self {
        self.recorder = Some(recorder);
        self
    }

    /// What this relay's hello carries to vouch for its TLS certificate: its identity
    /// certificate and the credential (public: every client sees them).
    pub fn hello_identity(&self) -> (Vec<u8>, Vec<u8>) {
        (self.keys.identity_cert.clone(), self.keys.credential.clone())
    }

    /// Carries `identity` and `credential` in the hello instead of its own: only for tests
    /// that play a relay replaying another relay's hello (which it can read as any client
    /// does) without that relay's TLS key.
    #[doc(hidden)]
    pub fn with_hello_identity(mut self, identity: Vec<u8>, credential: Vec<u8>) -> Self {
        self.keys = Arc::new(self.keys.replaying(identity, credential));
        self
    }

    /// Serves the counts on `listener` while the relay runs: Prometheus text on `/metrics`,
    /// `/healthz` and `/readyz` (`relay --metrics ADDR`). The caller chooses the address
    /// (the command line binds loopback unless told otherwise).
    pub fn with_metrics(mut self, listener: TcpListener) -> Self {
        self.metrics_listener = Some(listener);
        self
    }

    /// The pin clients must see.
    pub fn pin(&self) -> Pin {
        self.pin
    }

    /// A handle on the store (for counts in the demo and tests).
    pub fn store(&self) -> Arc<Backend> {
        self.store.clone()
    }

    /// Live counters.
    pub fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    /// Serves `listener` until `shutdown` completes, then shuts down gracefully: stops
    /// accepting (the listener is closed), lets every request already read finish and be
    /// answered (a `Send` is committed and acknowledged), ends long-polls early with an empty
    /// answer, closes each connection after its current response, and returns once all are
    /// closed or after [`Limits::shutdown_grace`], whichever comes first.
    pub async fn serve(self, listener: TcpListener, shutdown: impl Future<Output = ()>) {
        // The store's notices of deliveries by the cluster's other relays.
        let (notify, notices) = broadcast::channel(4096);
        self.store.forward_deliveries(notify);
        let waiters = Arc::new(waiters::Waiters::default());
        let notices = tokio::spawn(waiters.clone().relay_notices(notices));
        let (closing_tx, closing) = watch::channel(false);
        let (done_tx, mut done) = mpsc::channel::<()>(1);
        let mut shared = server::Shared::new(
            self.store.clone(),
            self.limits.clone(),
            waiters,
            self.metrics.clone(),
            self.keys.clone(),
            closing,
            done_tx,
        );
        shared.protocol_version = self.protocol_version;
        shared.recorder = self.recorder.clone();
        let shared = Arc::new(shared);
        let sweeper = tokio::spawn(sweep(
            self.store.clone(),
            self.limits.sweep_interval,
            self.limits.idle_mailbox_lifetime,
            self.metrics.clone(),
        ));
        let counts = tokio::spawn(log_counts_every(
            self.store.clone(),
            self.limits.stats_interval,
            self.metrics.clone(),
        ));
        let rotation = tokio::spawn(watch_rotation(
            shared.clone(),
            self.identity.clone(),
            self.store.clone(),
            self.rotation.clone(),
        ));
        let exporter = self
            .metrics_listener
            .map(|l| tokio::spawn(exporter::serve(l, self.metrics.clone(), self.store.clone())));
        tracing::info!(
            max_connections = self.limits.max_connections,
            max_connections_per_address = self.limits.max_connections_per_address,
            max_requests_per_second = self.limits.max_requests_per_second,
            max_stored_envelopes = self.limits.max_stored_envelopes,
            envelope_ttl_s = self.limits.envelope_ttl.as_secs(),
            "relay started"
        );
        tokio::select! {
            _ = server::accept_loop(listener, shared.clone()) => {}
            _ = shutdown => {}
        }
        // The accept loop, and with it the listener, is gone: new connections are refused.
        sweeper.abort();
        counts.abort();
        notices.abort();
        rotation.abort();
        if let Some(e) = &exporter {
            e.abort();
        }
        tracing::info!(
            connections = self.metrics.connections.load(Ordering::Relaxed),
            "relay stopping: finishing requests in flight"
        );
        let _ = closing_tx.send(true);
        // Every connection task holds the `Shared` and with it a sender of `done`.
        drop(shared);
        let finished = tokio::time::timeout(self.limits.shutdown_grace, done.recv())
            .await
            .is_ok();
        log_counts(&self.store, &self.metrics).await;
        if finished {
            tracing::info!("relay stopped");
        } else {
            tracing::warn!(
                connections = self.metrics.connections.load(Ordering::Relaxed),
                "relay stopped with connections still open after the shutdown grace period"
            );
        }
    }
}

/// The shortest period a timer gets (`tokio::time::interval` refuses zero).
const MIN_PERIOD: Duration = Duration::from_millis(100);

/// Seconds since the Unix epoch (0 if the clock is before it).
pub(crate) fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

async fn sweep(store: Arc<Backend>, every: Duration, idle: Duration, metrics: Arc<Metrics>) {
    let mut tick = tokio::time::interval(every.max(MIN_PERIOD));
    loop {
        tick.tick().await;
        let now = now_secs();
        match store.expire(now).await {
            Ok(expired) => {
                metrics.envelopes_expired.fetch_add(expired, Ordering::Relaxed);
            }
            Err(e) => server::log_store_failure("deleting expired envelopes", &e),
        }
        match store.expire_idle(now.saturating_sub(idle.as_secs())).await {
            Ok(gone) => {
                metrics.mailboxes_expired.fetch_add(gone, Ordering::Relaxed);
            }
            Err(e) => server::log_store_failure("deleting idle mailboxes", &e),
        }
    }
}

async fn log_counts_every(store: Arc<Backend>, every: Duration, metrics: Arc<Metrics>) {
    let mut tick = tokio::time::interval(every.max(MIN_PERIOD));
    // A count that took longer than the period (a store that does not answer) is
    // followed by one line, not by a burst of the lines it missed.
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        log_counts(&store, &metrics).await;
    }
}

/// One log line of counts: never an id, an address or a time of a single event.
async fn log_counts(store: &Backend, metrics: &Metrics) {
    // O(1) on the embedded store (two table lengths); the NATS store lists its mailbox subjects.
    let stats = match store.stats().await {
        Ok(stats) => stats,
        Err(e) => return server::log_store_failure("counting", &e),
    };
    // The counters come from `Metrics::counters`, the one list that `--metrics` exports too.
    let mut line = format!(
        "connections={} mailboxes={} envelopes={}",
        metrics.connections.load(Ordering::Relaxed),
        stats.mailboxes,
        stats.envelopes
    );
    for (name, _, counter) in metrics.counters() {
        line.push_str(&format!(" {name}={}", counter.load(Ordering::Relaxed)));
    }
    tracing::info!("relay counts {line}");
}

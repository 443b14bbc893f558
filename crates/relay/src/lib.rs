//! The backchannel relay: anonymous mailboxes of fixed-size sealed
//! envelopes, served over WebSocket on TLS 1.3.
//!
//! The relay never sees a name, a channel or a plaintext: it stores 4096-byte
//! envelopes in mailboxes identified by random ids, hands them to whoever
//! proves the mailbox's recipient key, and deletes them on acknowledgement
//! or expiry. Its logs hold counts only.
#![forbid(unsafe_code)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod server;
pub mod store;
pub mod tls;

use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use backchannel_core::relay_address::Pin;
use tokio::net::TcpListener;
use tokio::sync::{broadcast, Semaphore};

pub use server::Metrics;
use store::{EmbeddedStore, MailboxStore};

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
    #[error("the relay's store could not be opened ({0}); check the --data directory")]
    Store(String),
}

impl RelayError {
    pub(crate) fn io(context: &'static str, source: std::io::Error) -> Self {
        RelayError::Io { context, source }
    }
}

/// Limits the relay enforces.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Concurrent connections.
    pub max_connections: usize,
    /// Mailboxes one connection may create or open.
    pub max_mailboxes_per_connection: usize,
    /// Envelopes one mailbox may hold.
    pub max_envelopes_per_mailbox: u32,
    /// How long an unacknowledged envelope is kept.
    pub envelope_ttl: Duration,
    /// Longest long-poll.
    pub max_wait: Duration,
    /// Time allowed for the TLS and WebSocket handshakes.
    pub handshake_timeout: Duration,
    /// A connection silent this long is closed.
    pub idle_timeout: Duration,
    /// How often expired envelopes are swept.
    pub sweep_interval: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 1024,
            max_mailboxes_per_connection: 256,
            max_envelopes_per_mailbox: 10_000,
            envelope_ttl: Duration::from_secs(14 * 24 * 3600),
            max_wait: Duration::from_secs(30),
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(120),
            sweep_interval: Duration::from_secs(60),
        }
    }
}

/// A relay ready to serve: identity loaded, store open.
pub struct Relay {
    pin: Pin,
    tls: Arc<rustls::ServerConfig>,
    store: Arc<dyn MailboxStore>,
    limits: Limits,
    metrics: Arc<Metrics>,
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
        let store = EmbeddedStore::open(&data_dir.join("mailboxes.redb"), limits.max_envelopes_per_mailbox)
            .map_err(|e| RelayError::Store(e.to_string()))?;
        Ok(Self {
            pin: identity.pin(),
            tls: identity.server_config()?,
            store: Arc::new(store),
            limits,
            metrics: Arc::new(Metrics::default()),
        })
    }

    /// The pin clients must see.
    pub fn pin(&self) -> Pin {
        self.pin
    }

    /// A handle on the store (for counts in the demo and tests).
    pub fn store(&self) -> Arc<dyn MailboxStore> {
        self.store.clone()
    }

    /// Live counters.
    pub fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    /// Serves `listener` until `shutdown` completes.
    pub async fn serve(self, listener: TcpListener, shutdown: impl Future<Output = ()>) {
        let (notify, _) = broadcast::channel(4096);
        let shared = Arc::new(server::Shared {
            store: self.store.clone(),
            limits: self.limits.clone(),
            notify,
            metrics: self.metrics.clone(),
            connections: Arc::new(Semaphore::new(self.limits.max_connections)),
            tls: tokio_rustls::TlsAcceptor::from(self.tls.clone()),
        });
        let sweeper = tokio::spawn(sweep(
            self.store.clone(),
            self.limits.sweep_interval,
            self.metrics.clone(),
        ));
        tracing::info!(
            max_connections = self.limits.max_connections,
            envelope_ttl_s = self.limits.envelope_ttl.as_secs(),
            "relay started"
        );
        tokio::select! {
            _ = server::accept_loop(listener, shared) => {}
            _ = shutdown => {}
        }
        sweeper.abort();
        tracing::info!("relay stopped");
    }
}

async fn sweep(store: Arc<dyn MailboxStore>, every: Duration, metrics: Arc<Metrics>) {
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let s = store.clone();
        let expired = tokio::task::spawn_blocking(move || s.expire(now)).await;
        let s = store.clone();
        let stats = tokio::task::spawn_blocking(move || s.stats()).await;
        if let (Ok(Ok(expired)), Ok(Ok(stats))) = (expired, stats) {
            tracing::info!(
                connections = metrics.connections.load(Ordering::Relaxed),
                mailboxes = stats.mailboxes,
                envelopes = stats.envelopes,
                expired,
                envelopes_in = metrics.envelopes_in.load(Ordering::Relaxed),
                envelopes_acked = metrics.envelopes_acked.load(Ordering::Relaxed),
                refused_connections = metrics.refused_connections.load(Ordering::Relaxed),
                protocol_errors = metrics.protocol_errors.load(Ordering::Relaxed),
                "relay counts"
            );
        }
    }
}

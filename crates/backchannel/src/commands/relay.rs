//! `relay`: runs a relay until SIGTERM or Ctrl-C.

use backchannel_core::relay_address::RelayAddress;
use backchannel_relay::nats::{NatsConfig, DEFAULT_META_BYTES, DEFAULT_PATIENCE};
use backchannel_relay::store::Quota;
use backchannel_relay::{Limits, Relay};

use crate::args::{LogFormat, RelayAction, RelayArgs, Span, StorageArgs, StoreKind};
use crate::error::CliError;
use crate::output::Out;

impl StorageArgs {
    /// Refuses `--store nats` without a server, and NATS options without `--store nats`;
    /// `bench_relays` is `bench relay --relays` (more than one relay needs NATS too).
    pub fn check(&self, bench_relays: Option<usize>) -> Result<(), CliError> {
        let nats_options = !self.nats.is_empty()
            || self.nats_replicas.is_some()
            || self.nats_meta_bytes.is_some()
            || self.nats_patience.is_some();
        match (self.store, bench_relays) {
            (StoreKind::Nats, _) if self.nats.is_empty() => Err(CliError::NatsWithoutServers),
            (StoreKind::Nats, _) => Ok(()),
            (StoreKind::Embedded, None) if nats_options => Err(CliError::NatsOptionsWithoutNats),
            (StoreKind::Embedded, Some(relays)) if nats_options || relays > 1 => Err(CliError::BenchOptionsWithoutNats),
            (StoreKind::Embedded, _) => Ok(()),
        }
    }
}

/// `relay`: opens the store, prints the relay's address (its first line on stdout),
/// and serves.
pub async fn run(a: &RelayArgs, out: &Out) -> Result<(), CliError> {
    if let Some(RelayAction::RotateKey { data, storage }) = &a.action {
        return rotate_key(data, storage, out).await;
    }
    a.storage.check(None)?;
    if let Some(addr) = a.metrics.filter(|m| !m.ip().is_loopback() && !a.metrics_public) {
        return Err(CliError::MetricsNotLoopback(addr));
    }
    log_to_stderr(a.log_format);
    let limits = Limits {
        max_connections: a.max_connections,
        max_connections_per_address: a.max_connections_per_address,
        max_mailboxes_per_connection: a.max_mailboxes_per_connection,
        max_envelopes_per_mailbox: a.max_envelopes_per_mailbox,
        max_stored_envelopes: a.max_stored_envelopes,
        max_requests_per_second: a.max_requests_per_second,
        request_burst: a.request_burst,
        handshake_timeout: a.handshake_timeout.0,
        idle_timeout: a.idle_timeout.0,
        envelope_ttl: a.envelope_ttl.0,
        sweep_interval: a.sweep_interval.0,
        stats_interval: a.stats_interval.0,
        shutdown_grace: a.shutdown_grace.0,
        answer_floor: a.answer_floor.0,
        forwarder_rate: a.forwarder_rate,
        forwarder_burst: a.forwarder_burst,
        forward_private: a.forward_private,
        idle_mailbox_lifetime: a.idle_mailbox_lifetime.0,
        address_create_rate: a.address_create_rate,
        address_create_burst: a.address_create_burst,
        address_store_rate: a.address_store_rate,
        address_store_burst: a.address_store_burst,
        nameplate_lifetime: a.nameplate_lifetime.0,
        bundle_lifetime: a.bundle_lifetime.0,
        ..Limits::default()
    };
    let relay = match a.storage.store {
        StoreKind::Embedded => Relay::open(a.data.clone(), limits)?,
        StoreKind::Nats => {
            let Span(ttl) = a.envelope_ttl;
            let config = NatsConfig {
                urls: a.storage.nats.clone(),
                replicas: a.storage.nats_replicas,
                quota: Quota {
                    per_mailbox: limits.max_envelopes_per_mailbox,
                    total: limits.max_stored_envelopes,
                },
                ttl,
                meta_bytes: a.storage.nats_meta_bytes.unwrap_or(DEFAULT_META_BYTES),
                patience: a.storage.nats_patience.map_or(DEFAULT_PATIENCE, |Span(p)| p),
                idle_lifetime: limits.idle_mailbox_lifetime,
            };
            Relay::open_nats(config, limits).await?
        }
    };
    let relay = match a.metrics {
        Some(addr) => {
            let metrics = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| CliError::Listen { addr, source })?;
            relay.with_metrics(metrics)
        }
        None => relay,
    };
    let listener = tokio::net::TcpListener::bind(a.listen)
        .await
        .map_err(|source| CliError::Listen { addr: a.listen, source })?;
    let local = listener
        .local_addr()
        .map_err(CliError::io("reading the listening address"))?;
    let host = a.advertise.clone().unwrap_or_else(|| local.ip().to_string());
    let address = RelayAddress {
        pin: relay.pin().0,
        host,
        port: local.port(),
    };
    out.line(format!("relay address: {address}"));
    out.flush();
    relay.serve(listener, shutdown_signal()).await;
    Ok(())
}

/// Logs go to stderr, without colours. RUST_LOG sets a level for backchannel's own
/// crates only: dependencies (rustls, tungstenite) are capped at `warn`, because at
/// debug and trace they log peer addresses and handshake details, which our logs
/// must not hold.
fn log_to_stderr(format: LogFormat) {
    let level = std::env::var("RUST_LOG")
        .ok()
        .and_then(|l| l.parse::<tracing_subscriber::filter::LevelFilter>().ok())
        .unwrap_or(tracing_subscriber::filter::LevelFilter::INFO);
    let logs = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_env_filter(tracing_subscriber::EnvFilter::new(format!(
            "warn,backchannel_relay={level},backchannel={level}"
        )));
    match format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().flatten_event(true).init(),
    }
}

/// Resolves on SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => return std::future::pending().await,
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// `relay rotate-key --data DIR` (or `--store nats --nats URL…`): asks the relay running on
/// `DIR` (or every relay of the cluster) for new wire keys.
async fn rotate_key(data: &std::path::Path, storage: &StorageArgs, out: &Out) -> Result<(), CliError> {
    storage.check(None)?;
    if storage.store == StoreKind::Nats {
        backchannel_relay::nats::request_rotation(&storage.nats)
            .await
            .map_err(|e| CliError::from(backchannel_relay::RelayError::Store(e)))?;
        out.line(format!(
            "asked every relay of the cluster for a new TLS certificate and forward key; each makes them within {} s, and the PIN is unchanged",
            (backchannel_relay::ROTATION_POLL * 2).as_secs()
        ));
        return Ok(());
    }
    let wait = backchannel_relay::ROTATION_POLL * 10;
    if backchannel_relay::ask_to_rotate(data, wait).await? {
        out.line(
            "the relay now uses a new TLS certificate and forward key; its PIN, and so every address, is unchanged",
        );
    } else {
        out.line(format!(
            "no relay running on {} took the request within {} s; a relay started on it makes new keys anyway",
            data.display(),
            wait.as_secs()
        ));
    }
    Ok(())
}

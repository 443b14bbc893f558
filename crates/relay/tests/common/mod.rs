#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! What the relay's integration tests share: relays served on loopback ports, stopped when
//! asked, and two relays on one real NATS cluster.

use std::path::{Path, PathBuf};
use std::time::Duration;

use backchannel_core::relay_address::RelayAddress;
use backchannel_relay::nats::{NatsConfig, DEFAULT_META_BYTES};
use backchannel_relay::store::Quota;
use backchannel_relay::{Limits, Relay};

/// The NATS cluster harness of the `backchannel` crate's tests, shared rather than copied.
#[path = "../../../backchannel/tests/common/nats.rs"]
pub mod nats;

/// The workspace root (what the harness installs `nats-server` under).
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Serves `relay` on a loopback port until the test ends; its address.
pub async fn serve(relay: Relay) -> RelayAddress {
    serve_until(relay).await.0
}

/// A relay served until [`Stoppable::stop`].
pub struct Stoppable {
    stop: tokio::sync::oneshot::Sender<()>,
    served: tokio::task::JoinHandle<()>,
}

impl Stoppable {
    /// Stops the relay and waits until it has ended (its store closed).
    pub async fn stop(self) {
        let _ = self.stop.send(());
        self.served.await.unwrap();
    }
}

/// Serves `relay` on a loopback port until stopped; its address.
pub async fn serve_until(relay: Relay) -> (RelayAddress, Stoppable) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = RelayAddress {
        pin: relay.pin().0,
        host: "127.0.0.1".into(),
        port: listener.local_addr().unwrap().port(),
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    // Stopped when asked; a `Stoppable` dropped unused leaves it running.
    let served = tokio::spawn(relay.serve(listener, async move {
        if stopped.await.is_err() {
            std::future::pending::<()>().await;
        }
    }));
    (address, Stoppable { stop, served })
}

/// An embedded relay in `dir`, served until the test ends.
pub async fn start(dir: &Path, limits: Limits) -> RelayAddress {
    serve(Relay::open(dir.to_path_buf(), limits).unwrap()).await
}

/// Opens the embedded relay in `dir`, waiting (up to 10 s) for one stopped just before to
/// let go of its data directory.
pub async fn reopen(dir: &Path, limits: Limits) -> Relay {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match Relay::open(dir.to_path_buf(), limits.clone()) {
            Ok(relay) => return relay,
            Err(e) if tokio::time::Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("the relay does not open again: {e}"),
        }
    }
}

/// Two relays on a real three-node cluster, with `limits`.
pub async fn two_relays_on(cluster: &nats::NatsCluster, limits: Limits) -> (RelayAddress, RelayAddress) {
    let config = NatsConfig {
        urls: cluster.urls(),
        replicas: Some(3),
        quota: Quota {
            per_mailbox: 100,
            total: 10_000,
        },
        ttl: Duration::from_secs(3600),
        meta_bytes: DEFAULT_META_BYTES,
        patience: Duration::from_secs(20),
        idle_lifetime: Duration::from_secs(90 * 24 * 3600),
    };
    let one = Relay::open_nats(config.clone(), limits.clone()).await.unwrap();
    let two = Relay::open_nats(config, limits).await.unwrap();
    assert_eq!(one.pin(), two.pin(), "one relay identity for the cluster");
    (serve(one).await, serve(two).await)
}

//! A relay's identity (docs/protocol.md, "Relay identity"): the PIN names the identity
//! certificate, the TLS key is fresh at each start and vouched for in the hello, and a relay
//! that replays another relay's identity without its TLS key is refused. Both sides run for
//! real: the relay on a loopback port, the client through `RelayConnection`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use backchannel_client::{ConnectError, RelayConnection};
use backchannel_core::relay_address::{Pin, RelayAddress};
use backchannel_core::relay_identity::Credential;
use backchannel_relay::{Limits, Relay};

/// Serves `relay` on a loopback port until the test ends; its address under `pin`.
async fn serve(relay: Relay, pin: Pin) -> RelayAddress {
    serve_until(relay, pin, std::future::pending()).await.0
}

/// Serves `relay` until `stop` completes; its address under `pin`, and the task.
async fn serve_until(
    relay: Relay,
    pin: Pin,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> (RelayAddress, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = RelayAddress {
        pin: pin.0,
        host: "127.0.0.1".into(),
        port: listener.local_addr().unwrap().port(),
    };
    (address, tokio::spawn(relay.serve(listener, stop)))
}

#[tokio::test]
async fn the_pin_stays_while_the_tls_key_is_made_afresh_at_each_start() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let first = Relay::open(data.clone(), Limits::default()).unwrap();
    let pin = first.pin();
    let tls_first = Credential::from_bytes(&first.hello_identity().1)
        .unwrap()
        .tls_cert_digest;
    assert_ne!(tls_first, pin.0, "the TLS certificate is not the identity");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let (address, task) = serve_until(first, pin, async {
        let _ = stopped.await;
    })
    .await;
    drop(RelayConnection::connect(&address).await.unwrap());
    stop.send(()).unwrap();
    task.await.unwrap();
    // The store's writer thread lets go of the file.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;

    let second = Relay::open(data, Limits::default()).unwrap();
    assert_eq!(second.pin(), pin);
    let tls_second = Credential::from_bytes(&second.hello_identity().1)
        .unwrap()
        .tls_cert_digest;
    assert_ne!(tls_second, tls_first, "a fresh TLS key at each start");
    let address = serve(second, pin).await;
    RelayConnection::connect(&address).await.unwrap();
}

/// Serves `relay` under `pin` and connects to it: the client refuses it as not the PIN's.
async fn refused_as_not_the_pins(relay: Relay, pin: Pin) -> ConnectError {
    let address = serve(relay, pin).await;
    let err = RelayConnection::connect(&address).await.unwrap_err();
    assert!(matches!(err, ConnectError::PinMismatch(_)), "{err:?}");
    err
}

/// An attacker's relay that knows the victim's identity certificate and credential (every
/// client sees them in the hello) but not its TLS key: with the victim's credential it is
/// refused (the credential names another TLS certificate), and so it is with a credential
/// of its own under the victim's identity (not signed by it).
#[tokio::test]
async fn a_relay_that_replays_another_relays_identity_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let victim = Relay::open(dir.path().join("victim"), Limits::default()).unwrap();
    let pin = victim.pin();
    let (identity, credential) = victim.hello_identity();
    let good = serve(victim, pin).await;
    RelayConnection::connect(&good).await.unwrap();

    let replaying = Relay::open(dir.path().join("attacker"), Limits::default())
        .unwrap()
        .with_hello_identity(identity.clone(), credential);
    refused_as_not_the_pins(replaying, pin).await;

    let attacker = Relay::open(dir.path().join("attacker2"), Limits::default()).unwrap();
    let own = attacker.hello_identity().1;
    let forging = attacker.with_hello_identity(identity, own);
    let err = refused_as_not_the_pins(forging, pin).await;
    assert!(err.to_string().contains("different key than its address pins"), "{err}");
}

/// A relay that is not the PIN's cannot lure the user into "upgrade backchannel on this
/// device" by announcing a newer version: the identity in the prefix that versions from 5 on
/// keep is checked before the version is believed. (A genuine newer relay still says so:
/// tests/versions.rs.)
#[tokio::test]
async fn a_relay_that_is_not_the_pins_cannot_tell_the_user_to_upgrade() {
    let dir = tempfile::tempdir().unwrap();
    let victim = Relay::open(dir.path().join("victim"), Limits::default()).unwrap();
    let pin = victim.pin();
    let (identity, credential) = victim.hello_identity();
    let impostor = Relay::open(dir.path().join("impostor"), Limits::default())
        .unwrap()
        .with_hello_identity(identity, credential)
        .with_protocol_version(backchannel_core::frame::PROTOCOL_VERSION + 1);
    refused_as_not_the_pins(impostor, pin).await;
}

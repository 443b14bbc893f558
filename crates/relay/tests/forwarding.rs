//! Forwarding at the relay (docs/protocol.md, "Forwarding"): what a relay accepts from a
//! client that asks it to forward, and from another relay that forwards to it. Both relays
//! run for real on loopback ports; clients speak through `RelayConnection`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use backchannel_client::{ConnectError, RelayConnection};
use backchannel_core::envelope::{Envelope, ENVELOPE_SIZE};
use backchannel_core::forward::{self, SEALED_LEN};
use backchannel_core::frame::{ErrorCode, Request};
use backchannel_core::mailbox::MailboxKeys;
use backchannel_core::relay_address::RelayAddress;
use backchannel_core::relay_identity::Credential;
use backchannel_relay::{Limits, Relay};

/// Opens a relay in `dir` and serves it on a loopback port until the test ends; its
/// address and its forward key.
async fn start(dir: &std::path::Path, limits: Limits) -> (RelayAddress, Vec<u8>) {
    let relay = Relay::open(dir.to_path_buf(), limits).unwrap();
    let key = Credential::from_bytes(&relay.hello_identity().1).unwrap().forward_key;
    let pin = relay.pin();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = RelayAddress {
        pin: pin.0,
        host: "127.0.0.1".into(),
        port: listener.local_addr().unwrap().port(),
    };
    tokio::spawn(relay.serve(listener, std::future::pending()));
    (address, key)
}

fn refused(r: Result<backchannel_core::frame::Response, ConnectError>, code: ErrorCode) {
    match r {
        Err(e) if e.is(code) => {}
        other => panic!("expected {code:?}, got {other:?}"),
    }
}

#[tokio::test]
async fn a_relay_takes_sealed_requests_only_from_a_relay_that_proved_its_identity() {
    let dir = tempfile::tempdir().unwrap();
    let (b, b_key) = start(&dir.path().join("b"), Limits::default()).await;
    let home_limits = Limits {
        forward_private: true,
        ..Limits::default()
    };
    let (a, _) = start(&dir.path().join("a"), home_limits).await;

    // A client that hands B a sealed request itself is refused: only relays forward.
    let keys = MailboxKeys::generate(b.clone(), &mut rand_core::OsRng);
    let (sealed, _) = forward::seal(&b_key, &b.pin, &[1; 16], &Request::create(&keys, 0)).unwrap();
    let mut direct = RelayConnection::connect(&b).await.unwrap();
    refused(direct.request(&Request::Sealed { sealed }).await, ErrorCode::Malformed);
    // Nor can it claim to be a relay without the identity key's signature.
    let forged = Request::Forwarder {
        identity: direct.identity().0.to_vec(),
        scheme: 0x0403,
        signature: vec![0; 64],
    };
    refused(direct.request(&forged).await, ErrorCode::BadProof);

    // Through A, the same requests go: a mailbox made on B and an envelope stored there.
    let mut through = RelayConnection::connect(&a)
        .await
        .unwrap()
        .forward_to(&b)
        .await
        .unwrap();
    through.request(&Request::create(&keys, 0)).await.unwrap();
    let send = Request::Send {
        send: keys.address.send.0,
        envelope: Envelope::from_bytes(&[5; ENVELOPE_SIZE]).unwrap(),
        pow: 0,
    };
    through.request(&send).await.unwrap();
    // B's own refusals come back as they are (here: the mailbox exists already).
    refused(
        through.request(&Request::create(&keys, 0)).await,
        ErrorCode::MailboxExists,
    );
    // The receive side is never forwarded: the connection will not carry it.
    let fetch = Request::Fetch { max: 1, wait_ms: 0 };
    assert!(through.request(&fetch).await.is_err());

    // Bytes that are not a seal to B's key: B says so, and A passes it on.
    let mut raw = RelayConnection::connect(&a).await.unwrap();
    let garbage = Request::Forward {
        to: b.clone(),
        sealed: vec![7; SEALED_LEN],
    };
    refused(raw.request(&garbage).await, ErrorCode::Unsealed);

    // A destination that does not prove the PIN it is named by is unreachable through A.
    let wrong = RelayAddress {
        pin: [9; 32],
        ..b.clone()
    };
    match RelayConnection::connect(&a).await.unwrap().forward_to(&wrong).await {
        Err(ConnectError::Unreachable { .. }) => {}
        other => panic!("expected unreachable, got {other:?}"),
    }
}

#[tokio::test]
async fn a_relay_does_not_forward_into_its_own_network_unless_told_to() {
    let dir = tempfile::tempdir().unwrap();
    let (b, _) = start(&dir.path().join("b"), Limits::default()).await;
    let (a, _) = start(&dir.path().join("a"), Limits::default()).await;
    match RelayConnection::connect(&a).await.unwrap().forward_to(&b).await {
        Err(ConnectError::Unreachable { relay, .. }) => assert_eq!(relay, b.authority()),
        other => panic!("expected unreachable, got {other:?}"),
    }
}

//! A client and a relay of different protocol versions: the client tells its user
//! which side to upgrade, in one sentence, instead of failing on bytes. Both run for
//! real, the relay on a loopback port, the client through `RelayConnection`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use backchannel_client::{ConnectError, RelayConnection};
use backchannel_core::frame::{encode_request, ErrorCode, Request, Response, FRAME_SIZE, PROTOCOL_VERSION};
use backchannel_core::relay_address::RelayAddress;
use backchannel_relay::{Limits, Relay};

/// A relay announcing `version`, serving on a loopback port until the test ends.
async fn relay_speaking(version: u8, dir: &std::path::Path) -> RelayAddress {
    let relay = Relay::open(dir.join("data"), Limits::default())
        .unwrap()
        .with_protocol_version(version);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = RelayAddress {
        pin: relay.pin().0,
        host: "127.0.0.1".into(),
        port: listener.local_addr().unwrap().port(),
    };
    tokio::spawn(relay.serve(listener, std::future::pending()));
    address
}

async fn connect(address: &RelayAddress) -> Result<RelayConnection, ConnectError> {
    RelayConnection::connect(address).await
}

/// The error connecting gives.
async fn refusal(address: &RelayAddress) -> ConnectError {
    match connect(address).await {
        Ok(_) => panic!("a relay of another version is refused"),
        Err(e) => e,
    }
}

#[tokio::test]
async fn a_newer_relay_tells_the_user_to_upgrade_this_device() {
    let dir = tempfile::tempdir().unwrap();
    let address = relay_speaking(PROTOCOL_VERSION + 1, dir.path()).await;
    let e = refusal(&address).await;
    assert!(matches!(e, ConnectError::RelayNewer(_)), "{e:?}");
    let message = e.to_string();
    assert!(
        message.ends_with("speaks a newer protocol; upgrade backchannel on this device"),
        "{message}"
    );
}

#[tokio::test]
async fn an_older_relay_tells_the_user_to_ask_its_operator() {
    let dir = tempfile::tempdir().unwrap();
    let address = relay_speaking(PROTOCOL_VERSION - 1, dir.path()).await;
    let e = refusal(&address).await;
    assert!(matches!(e, ConnectError::RelayOlder(_)), "{e:?}");
    let message = e.to_string();
    assert!(
        message.ends_with("is older than this client; ask its operator to upgrade it"),
        "{message}"
    );
}

/// The other direction, as the relay sees it: a request it cannot parse (a newer
/// client's new request) is answered in the frozen error layout with the relay's
/// version, which the client turns into the same sentence.
#[tokio::test]
async fn a_request_the_relay_cannot_parse_is_answered_with_the_relays_version() {
    let dir = tempfile::tempdir().unwrap();
    let address = relay_speaking(PROTOCOL_VERSION, dir.path()).await;
    let mut conn = connect(&address).await.unwrap();
    // A request tag no relay of this version knows.
    let mut unknown = vec![0x7f, 0, 0, 0, 9];
    unknown.resize(FRAME_SIZE, 0);
    match conn.send_raw(unknown).await.unwrap() {
        Response::Error { code, detail } => {
            assert_eq!((code, detail), (ErrorCode::Malformed, u64::from(PROTOCOL_VERSION)));
        }
        other => panic!("{other:?}"),
    }
    // Still usable: the relay did not drop the connection.
    assert_eq!(conn.request(&Request::Ping).await.unwrap(), Response::Pong);
    // A same-version relay refusing a malformed request is a plain refusal, not a version error.
    let mut garbage = encode_request(1, &Request::Ping);
    garbage[FRAME_SIZE - 1] = 1;
    assert!(matches!(
        conn.send_raw(garbage).await.unwrap(),
        Response::Error {
            code: ErrorCode::Malformed,
            ..
        }
    ));
}

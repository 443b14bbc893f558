//! Bundles (docs/protocol.md, "Bundles"): what a short address names, published under a
//! client-chosen name at the publisher's relay and fetched by every holder of the address,
//! directly or forwarded through the holder's own relay; kept across restarts; on the
//! embedded store and on a real three-node NATS cluster shared by two relays. Relays run for
//! real on loopback ports; clients speak through `RelayConnection`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use backchannel_client::{ConnectError, RelayConnection};
use backchannel_core::forward;
use backchannel_core::frame::{ErrorCode, Request, Response, MAX_BUNDLE};
use backchannel_core::relay_identity::Credential;
use backchannel_relay::{Limits, Relay};

mod common;
use common::{nats, reopen, serve, serve_until, start, two_relays_on};

fn publish_req(name: [u8; 16], bundle: &[u8]) -> Request {
    Request::Publish {
        name,
        expires_at: u64::MAX,
        bundle: bundle.to_vec(),
    }
}

/// What a publish is answered: `Ok(())`, or the refusal's code.
fn published(r: Result<Response, ConnectError>) -> Result<(), ErrorCode> {
    match r {
        Ok(Response::Ok) => Ok(()),
        Err(e) if e.is(ErrorCode::BundleTaken) => Err(ErrorCode::BundleTaken),
        other => panic!("expected Ok or BundleTaken, got {other:?}"),
    }
}

async fn publish(conn: &mut RelayConnection, name: [u8; 16], bundle: &[u8]) -> Result<(), ErrorCode> {
    published(conn.request(&publish_req(name, bundle)).await)
}

/// What a fetch is answered: the bundle, or `None` for `NoSuchBundle`.
fn fetched(r: Result<Response, ConnectError>) -> Option<Vec<u8>> {
    match r {
        Ok(Response::Record(bundle)) => Some(bundle),
        Err(e) if e.is(ErrorCode::NoSuchBundle) => None,
        other => panic!("expected a bundle or NoSuchBundle, got {other:?}"),
    }
}

async fn fetch(conn: &mut RelayConnection, name: [u8; 16]) -> Option<Vec<u8>> {
    fetched(conn.request(&Request::Bundle { name }).await)
}

#[tokio::test]
async fn a_bundle_is_fetched_by_everyone_and_only_its_publisher_refreshes_its_name() {
    let dir = tempfile::tempdir().unwrap();
    let relay = start(dir.path(), Limits::default()).await;
    let mut owner = RelayConnection::connect(&relay).await.unwrap();
    let bundle = vec![0xab; MAX_BUNDLE];
    let name = [1; 16];
    publish(&mut owner, name, &bundle).await.unwrap();

    // Not taken: every holder of the short address gets it, as often as asked.
    let mut a = RelayConnection::connect(&relay).await.unwrap();
    let mut b = RelayConnection::connect(&relay).await.unwrap();
    assert_eq!(fetch(&mut a, name).await.unwrap(), bundle);
    assert_eq!(fetch(&mut b, name).await.unwrap(), bundle);
    assert_eq!(fetch(&mut a, name).await.unwrap(), bundle);
    // The same bundle again is a refresh; another is refused, whoever sends it.
    publish(&mut owner, name, &bundle).await.unwrap();
    assert_eq!(
        publish(&mut b, name, b"planted keys").await,
        Err(ErrorCode::BundleTaken)
    );
    let mut changed = bundle.clone();
    changed[MAX_BUNDLE - 1] ^= 1;
    assert_eq!(publish(&mut owner, name, &changed).await, Err(ErrorCode::BundleTaken));
    assert_eq!(fetch(&mut a, name).await.unwrap(), bundle, "unchanged by the refusals");
    // Names never published.
    for never in [[0; 16], [2; 16], [0xff; 16]] {
        assert_eq!(fetch(&mut a, never).await, None);
    }
    // An empty bundle is one.
    publish(&mut owner, [3; 16], b"").await.unwrap();
    assert_eq!(fetch(&mut a, [3; 16]).await.unwrap(), b"");
}

#[tokio::test]
async fn a_bundle_expires_at_the_relays_lifetime_and_its_name_is_free_again() {
    let dir = tempfile::tempdir().unwrap();
    let limits = Limits {
        bundle_lifetime: Duration::from_secs(1),
        sweep_interval: Duration::from_secs(3600),
        ..Limits::default()
    };
    let relay = start(dir.path(), limits).await;
    let mut conn = RelayConnection::connect(&relay).await.unwrap();
    // Asked for ever (u64::MAX): kept the relay's lifetime, a second.
    publish(&mut conn, [1; 16], b"keys").await.unwrap();
    assert_eq!(fetch(&mut conn, [1; 16]).await.unwrap(), b"keys");
    // Kept a second at least, two at most.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(fetch(&mut conn, [1; 16]).await, None);
    publish(&mut conn, [1; 16], b"other keys").await.unwrap();
    assert_eq!(fetch(&mut conn, [1; 16]).await.unwrap(), b"other keys");
    // One that asks for less than the lifetime is kept that long: already past, gone.
    let past = Request::Publish {
        name: [2; 16],
        expires_at: 1,
        bundle: b"old".to_vec(),
    };
    published(conn.request(&past).await).unwrap();
    assert_eq!(fetch(&mut conn, [2; 16]).await, None);
}

#[tokio::test]
async fn a_bundle_published_again_outlives_its_first_expiry() {
    let dir = tempfile::tempdir().unwrap();
    let limits = Limits {
        bundle_lifetime: Duration::from_secs(3),
        sweep_interval: Duration::from_millis(200),
        ..Limits::default()
    };
    let relay = start(dir.path(), limits).await;
    let mut conn = RelayConnection::connect(&relay).await.unwrap();
    publish(&mut conn, [1; 16], b"refreshed").await.unwrap();
    publish(&mut conn, [2; 16], b"left alone").await.unwrap();
    // Published at r (second t = floor(r)): kept through t + 3, gone by r + 4 at the latest.
    // Refreshed at r + 2 (second t + 2 at least): kept through t + 5, past r + 4.
    tokio::time::sleep(Duration::from_secs(2)).await;
    publish(&mut conn, [1; 16], b"refreshed").await.unwrap();
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(fetch(&mut conn, [1; 16]).await.unwrap(), b"refreshed");
    assert_eq!(
        fetch(&mut conn, [2; 16]).await,
        None,
        "not refreshed: expired and swept"
    );
}

#[tokio::test]
async fn a_bundle_outlives_a_restart_of_its_relay() {
    let dir = tempfile::tempdir().unwrap();
    let relay = reopen(dir.path(), Limits::default()).await;
    let (address, stoppable) = serve_until(relay).await;
    let mut conn = RelayConnection::connect(&address).await.unwrap();
    publish(&mut conn, [9; 16], b"printed on a card").await.unwrap();
    drop(conn);
    stoppable.stop().await;

    let (address, _running) = serve_until(reopen(dir.path(), Limits::default()).await).await;
    let mut conn = RelayConnection::connect(&address).await.unwrap();
    assert_eq!(fetch(&mut conn, [9; 16]).await.unwrap(), b"printed on a card");
    // Still held: another bundle is refused after the restart too.
    assert_eq!(publish(&mut conn, [9; 16], b"other").await, Err(ErrorCode::BundleTaken));
}

#[tokio::test]
async fn every_publish_and_fetch_is_charged_to_the_address_like_a_create() {
    let dir = tempfile::tempdir().unwrap();
    let limits = Limits {
        address_create_rate: 1,
        address_create_burst: 3,
        ..Limits::default()
    };
    let relay = start(dir.path(), limits).await;
    let mut conn = RelayConnection::connect(&relay).await.unwrap();
    publish(&mut conn, [1; 16], b"x").await.unwrap();
    assert_eq!(fetch(&mut conn, [2; 16]).await, None);
    assert_eq!(fetch(&mut conn, [3; 16]).await, None);
    // The budget of three is spent: the next guess at a name (and the next publish) wait.
    for req in [Request::Bundle { name: [1; 16] }, publish_req([4; 16], b"y")] {
        match conn.request(&req).await {
            Err(e) if e.is(ErrorCode::RateLimited) => {}
            other => panic!("expected RateLimited, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_fetch_forwarded_through_the_holders_relay_works_and_a_forwarded_publish_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let publishers = Relay::open(dir.path().join("b"), Limits::default()).unwrap();
    let forward_key = Credential::from_bytes(&publishers.hello_identity().1)
        .unwrap()
        .forward_key;
    let publishers = serve(publishers).await;
    let home = Limits {
        forward_private: true,
        ..Limits::default()
    };
    let holders = start(&dir.path().join("a"), home).await;

    let mut owner = RelayConnection::connect(&publishers).await.unwrap();
    publish(&mut owner, [5; 16], b"from b").await.unwrap();
    let mut through = RelayConnection::connect(&holders)
        .await
        .unwrap()
        .forward_to(&publishers)
        .await
        .unwrap();
    // Fetched through A, twice (the bundle stays), and one never published is not there.
    assert_eq!(fetch(&mut through, [5; 16]).await.unwrap(), b"from b");
    assert_eq!(fetch(&mut through, [5; 16]).await.unwrap(), b"from b");
    assert_eq!(fetch(&mut through, [6; 16]).await, None);
    // The holder's own relay never had it.
    let mut at_home = RelayConnection::connect(&holders).await.unwrap();
    assert_eq!(fetch(&mut at_home, [5; 16]).await, None);

    // Publishing is spoken with one's own relay only: the connection will not forward it...
    assert!(through.request(&publish_req([7; 16], b"x")).await.is_err());
    // ...nor will a seal carry one: a modified client cannot make a sealed Publish with the
    // protocol's own code, and the destination refuses any inside a seal it opens
    // (`frame::decode_inner_request` admits forwardable requests only; `server.rs` answers a
    // non-forwardable one that got past it `Malformed`).
    assert_eq!(
        forward::seal(&forward_key, &publishers.pin, &[3; 16], &publish_req([7; 16], b"x")).unwrap_err(),
        forward::ForwardError::NotForwardable
    );
    assert_eq!(fetch(&mut owner, [7; 16]).await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_nats_cluster_a_bundle_published_through_one_relay_is_fetched_through_another_and_races_have_one_winner() {
    let bin = nats::require_nats();
    let cluster = tokio::task::spawn_blocking(move || nats::NatsCluster::start(&bin))
        .await
        .unwrap();
    let (one, two) = two_relays_on(&cluster, Limits::default()).await;
    let mut owner = RelayConnection::connect(&one).await.unwrap();
    let mut holder = RelayConnection::connect(&two).await.unwrap();
    publish(&mut owner, [1; 16], b"published on one").await.unwrap();
    assert_eq!(fetch(&mut holder, [1; 16]).await.unwrap(), b"published on one");
    assert_eq!(fetch(&mut holder, [1; 16]).await.unwrap(), b"published on one");
    assert_eq!(fetch(&mut holder, [2; 16]).await, None);
    // Refreshed through the other relay; refused another bundle through either.
    publish(&mut holder, [1; 16], b"published on one").await.unwrap();
    assert_eq!(
        publish(&mut holder, [1; 16], b"other").await,
        Err(ErrorCode::BundleTaken)
    );
    assert_eq!(
        publish(&mut owner, [1; 16], b"other").await,
        Err(ErrorCode::BundleTaken)
    );

    // Eight publishers of different bundles under one name, through both relays at once,
    // for each of ten names: exactly one wins, and every fetch gets its bundle.
    let mut racers = Vec::new();
    for i in 0..8 {
        racers.push(
            RelayConnection::connect(if i % 2 == 0 { &one } else { &two })
                .await
                .unwrap(),
        );
    }
    for round in 0..10u8 {
        let name = [0x40 + round; 16];
        let reqs: Vec<Request> = (0..8u8).map(|i| publish_req(name, &[round, i])).collect();
        let answers = futures_util::future::join_all(racers.iter_mut().zip(&reqs).map(|(c, req)| c.request(req))).await;
        let winners: Vec<u8> = answers
            .into_iter()
            .zip(0u8..)
            .filter_map(|(a, i)| published(a).ok().map(|()| i))
            .collect();
        assert_eq!(
            winners.len(),
            1,
            "exactly one publish wins (round {round}): {winners:?}"
        );
        let won = vec![round, winners[0]];
        assert_eq!(fetch(&mut owner, name).await.unwrap(), won);
        assert_eq!(fetch(&mut holder, name).await.unwrap(), won);
    }
    drop(cluster);
}

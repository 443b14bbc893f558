//! Nameplates (docs/protocol.md, "Nameplates"): an invite code's number, allocated by the
//! inviter's relay and taken once by the joiner, directly or forwarded through the joiner's
//! own relay; on the embedded store and on a real three-node NATS cluster shared by two
//! relays. Relays run for real on loopback ports; clients speak through `RelayConnection`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use backchannel_client::{ConnectError, RelayConnection};
use backchannel_core::code::MAX_NAMEPLATE;
use backchannel_core::frame::{ErrorCode, Request, Response};
use backchannel_relay::Limits;

mod common;
use common::{nats, start, two_relays_on};

async fn make(conn: &mut RelayConnection, record: &[u8]) -> u32 {
    match conn
        .request(&Request::Nameplate {
            record: record.to_vec(),
        })
        .await
    {
        Ok(Response::Nameplate { number }) => {
            assert!((1..=MAX_NAMEPLATE).contains(&number), "{number}");
            number
        }
        other => panic!("expected a nameplate, got {other:?}"),
    }
}

/// What a take is answered: the record, or `None` for `NoSuchNameplate`.
fn taken(r: Result<Response, ConnectError>) -> Option<Vec<u8>> {
    match r {
        Ok(Response::Record(record)) => Some(record),
        Err(e) if e.is(ErrorCode::NoSuchNameplate) => None,
        other => panic!("expected a record or NoSuchNameplate, got {other:?}"),
    }
}

async fn take(conn: &mut RelayConnection, number: u32) -> Option<Vec<u8>> {
    taken(conn.request(&Request::TakeNameplate { number }).await)
}

#[tokio::test]
async fn a_nameplate_is_taken_once_and_one_never_made_is_not_there() {
    let dir = tempfile::tempdir().unwrap();
    let relay = start(dir.path(), Limits::default()).await;
    let mut inviter = RelayConnection::connect(&relay).await.unwrap();
    let record = vec![0xab; backchannel_core::frame::MAX_NAMEPLATE_RECORD];
    let n = make(&mut inviter, &record).await;
    let other = make(&mut inviter, b"other").await;
    assert_ne!(n, other);

    let mut joiner = RelayConnection::connect(&relay).await.unwrap();
    assert_eq!(take(&mut joiner, n).await.unwrap(), record);
    assert_eq!(take(&mut joiner, n).await, None, "taken once");
    assert_eq!(take(&mut inviter, n).await, None, "by anyone");
    for never in (1..=MAX_NAMEPLATE).filter(|m| *m != other).take(3).chain([0, u32::MAX]) {
        assert_eq!(take(&mut joiner, never).await, None, "{never}");
    }
    assert_eq!(take(&mut joiner, other).await.unwrap(), b"other");
}

#[tokio::test]
async fn an_expired_nameplate_is_gone() {
    let dir = tempfile::tempdir().unwrap();
    let limits = Limits {
        nameplate_lifetime: Duration::from_secs(1),
        sweep_interval: Duration::from_secs(3600),
        ..Limits::default()
    };
    let relay = start(dir.path(), limits).await;
    let mut conn = RelayConnection::connect(&relay).await.unwrap();
    let n = make(&mut conn, b"too late").await;
    // Kept a second at least, two at most.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(take(&mut conn, n).await, None);
}

#[tokio::test]
async fn every_take_is_charged_to_the_address_like_a_create() {
    let dir = tempfile::tempdir().unwrap();
    let limits = Limits {
        address_create_rate: 1,
        address_create_burst: 3,
        ..Limits::default()
    };
    let relay = start(dir.path(), limits).await;
    let mut conn = RelayConnection::connect(&relay).await.unwrap();
    let n = make(&mut conn, b"x").await;
    assert_eq!(take(&mut conn, n + 1).await, None);
    assert_eq!(take(&mut conn, n + 2).await, None);
    // The budget of three is spent: the next guess (and the next nameplate) wait.
    for req in [
        Request::TakeNameplate { number: n },
        Request::Nameplate { record: vec![] },
    ] {
        match conn.request(&req).await {
            Err(e) if e.is(ErrorCode::RateLimited) => {}
            other => panic!("expected RateLimited, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_take_forwarded_through_the_joiners_relay_works_once() {
    let dir = tempfile::tempdir().unwrap();
    let inviters = start(&dir.path().join("b"), Limits::default()).await;
    let home = Limits {
        forward_private: true,
        ..Limits::default()
    };
    let joiners = start(&dir.path().join("a"), home).await;

    let mut inviter = RelayConnection::connect(&inviters).await.unwrap();
    let n = make(&mut inviter, b"from b").await;
    // Allocating is spoken with one's own relay only: the connection will not forward it.
    let mut through = RelayConnection::connect(&joiners)
        .await
        .unwrap()
        .forward_to(&inviters)
        .await
        .unwrap();
    assert!(through.request(&Request::Nameplate { record: vec![1] }).await.is_err());
    assert_eq!(take(&mut through, n).await.unwrap(), b"from b");
    assert_eq!(take(&mut through, n).await, None);
    // The joiner's own relay never had it.
    let mut at_home = RelayConnection::connect(&joiners).await.unwrap();
    assert_eq!(take(&mut at_home, n).await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_nats_cluster_a_nameplate_made_through_one_relay_is_taken_through_another_once() {
    let bin = nats::require_nats();
    let cluster = tokio::task::spawn_blocking(move || nats::NatsCluster::start(&bin))
        .await
        .unwrap();
    let (one, two) = two_relays_on(&cluster, Limits::default()).await;
    // Same PIN: the second address is the same relay on another port.
    let mut inviter = RelayConnection::connect(&one).await.unwrap();
    let mut joiner = RelayConnection::connect(&two).await.unwrap();
    let n = make(&mut inviter, b"made on one").await;
    assert_eq!(take(&mut joiner, n).await.unwrap(), b"made on one");
    assert_eq!(take(&mut joiner, n).await, None);
    assert_eq!(take(&mut inviter, n).await, None);

    // Racing takes through both relays, four connections each: one record and seven
    // refusals each time.
    let mut racers = Vec::new();
    for i in 0..8 {
        racers.push(
            RelayConnection::connect(if i % 2 == 0 { &one } else { &two })
                .await
                .unwrap(),
        );
    }
    // Twenty held at once: twenty numbers.
    let mut made = Vec::new();
    for i in 0..20u8 {
        made.push((make(&mut inviter, &[i]).await, i));
    }
    let numbers: std::collections::HashSet<u32> = made.iter().map(|(n, _)| *n).collect();
    assert_eq!(numbers.len(), made.len(), "a number handed out twice while held");
    for (n, i) in made {
        let req = Request::TakeNameplate { number: n };
        let answers = futures_util::future::join_all(racers.iter_mut().map(|c| c.request(&req))).await;
        let mut got: Vec<_> = answers.into_iter().filter_map(taken).collect();
        assert_eq!(got.len(), 1, "exactly one take wins (nameplate {i})");
        assert_eq!(got.pop().unwrap(), vec![i]);
    }
    drop(cluster);
}

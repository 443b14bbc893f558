//! What a network observer and a relay operator learn: tests that play them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
use std::time::{Duration, Instant};

use common::observer::{lengths_histogram, Dir, Observer, Record, APPLICATION_DATA};
use common::*;

/// Clients whose every connection to the relay passes through the observer.
fn observed_people<const N: usize>(
    root: &std::path::Path,
    relay: &RelayProc,
    obs: &Observer,
    names: [&str; N],
) -> [Client; N] {
    let address = via_port(&relay.address, obs.port);
    names.map(|n| {
        let c = Client::new(root, n);
        c.init(n, &address);
        c
    })
}

/// Application-data records after each connection's setup. In TLS 1.3 the
/// server's encrypted handshake and the WebSocket upgrade response are the
/// first two records down, the client's Finished and the upgrade request the
/// first two up; every record after those must carry exactly one frame.
fn after_setup(records: &[Record]) -> Vec<Record> {
    let mut seen: std::collections::HashMap<(usize, bool), usize> = Default::default();
    records
        .iter()
        .filter(|r| r.content_type == APPLICATION_DATA)
        .filter(|r| {
            let n = seen.entry((r.conn, r.dir == Dir::Up)).or_default();
            *n += 1;
            *n > 2
        })
        .cloned()
        .collect()
}

/// The one length of every record in `dir`, or a failure naming the others.
fn one_length(records: &[Record], dir: Dir) -> u16 {
    let h = lengths_histogram(&records.iter().filter(|r| r.dir == dir).cloned().collect::<Vec<_>>());
    assert_eq!(h.len(), 1, "{dir:?}: more than one record length after setup: {h:?}");
    *h.keys().next().unwrap()
}

#[test]
fn short_and_long_messages_give_the_same_tls_record_lengths() {
    let root = tempfile::tempdir().unwrap();
    let relay = RelayProc::start(&root.path().join("relay"), &[]);
    let obs = Observer::start(relay.port);
    let [alice, bob] = observed_people(root.path(), &relay, &obs, ["alice", "bob"]);
    channel_with(&alice, &[&bob], "wire");

    let mut runs = Vec::new();
    for text in ["ok".to_string(), "x".repeat(3000)] {
        obs.clear();
        alice.ok(&["send", "wire", &text]);
        bob.ok(&["sync"]);
        runs.push(after_setup(&obs.records()));
    }
    assert_eq!(bob.texts("wire").len(), 2);
    let (short, long) = (&runs[0], &runs[1]);
    eprintln!("short: {:?}", lengths_histogram(short));
    eprintln!("long: {:?}", lengths_histogram(long));
    // One size per direction (a frame of 4160 bytes, plus WebSocket and TLS overhead), the
    // same for both messages, and the same number of records.
    for dir in [Dir::Up, Dir::Down] {
        let len = one_length(short, dir);
        assert!(
            usize::from(len) > 4160,
            "{dir:?}: {len}-byte records cannot hold a 4160-byte frame"
        );
        assert_eq!(one_length(long, dir), len, "{dir:?}");
    }
    assert_eq!(
        lengths_histogram(short),
        lengths_histogram(long),
        "a 2-byte and a 3,000-byte message must look the same on the wire"
    );
}

/// Application records of `conns` in `dir` in `[from, to)`.
fn between(obs: &Observer, conns: &[usize], dir: Dir, from: Instant, to: Instant) -> Vec<Record> {
    obs.app_records_since(from)
        .into_iter()
        .filter(|r| r.at < to && r.dir == dir && conns.contains(&r.conn))
        .collect()
}

#[test]
fn with_cover_traffic_the_observer_sees_the_same_steady_stream_whether_or_not_anyone_talks() {
    let root = tempfile::tempdir().unwrap();
    let relay = RelayProc::start(&root.path().join("relay"), &[]);
    let obs = Observer::start(relay.port);
    let [alice] = observed_people(root.path(), &relay, &obs, ["alice"]);
    let [bob] = people(root.path(), &relay, ["bob"]);
    channel_with(&alice, &[&bob], "cover");

    let mut daemon = DaemonProc::start(&alice, &["--cover", "4/s"]);
    std::thread::sleep(Duration::from_millis(1500));
    // The daemon's links: the connections that carry its stream.
    let start = Instant::now();
    std::thread::sleep(Duration::from_millis(500));
    let mut links: Vec<usize> = obs.app_records_since(start).iter().map(|r| r.conn).collect();
    links.sort();
    links.dedup();
    assert_eq!(links.len(), 2, "a send link and a receive link: {links:?}");
    // Alice's commands go through her daemon: no connection of their own.
    let before = obs.connections();
    alice.ok(&["channels"]);
    alice.ok(&["members", "cover"]);
    assert_eq!(obs.connections(), before, "commands used the daemon's links");

    let window = Duration::from_secs(4);
    // A quiet stretch.
    let quiet_from = Instant::now();
    std::thread::sleep(window);
    let quiet = between(&obs, &links, Dir::Up, quiet_from, quiet_from + window);

    // A stretch with traffic both ways (bob's own connections reach the relay through the
    // observer too, since alice's mailbox address names it; only alice's links are counted).
    let busy_from = Instant::now();
    let mut latencies = Vec::new();
    let mut i = 0;
    while busy_from.elapsed() < window - Duration::from_millis(800) {
        let t = Instant::now();
        alice.ok(&["send", "cover", &format!("from alice {i}")]);
        latencies.push(t.elapsed());
        bob.ok(&["send", "cover", &format!("from bob {i}")]);
        i += 1;
    }
    std::thread::sleep(window.saturating_sub(busy_from.elapsed()));
    let busy = between(&obs, &links, Dir::Up, busy_from, busy_from + window);

    let (q, b) = (quiet.len() as f64, busy.len() as f64);
    eprintln!("records up in {window:?}: quiet {q}, busy {b}; {i} messages each way; alice's send took {latencies:?}");
    assert!(
        q >= 50.0,
        "4 send ticks and 12 receive ticks a second: {q} records in 4 s"
    );
    assert!(
        (b - q).abs() <= 0.15 * q,
        "quiet {q} vs busy {b} records: the rate gives the talk away"
    );
    let all: Vec<Record> = quiet.iter().chain(&busy).cloned().collect();
    one_length(&all, Dir::Up);
    one_length(&between(&obs, &links, Dir::Down, quiet_from, Instant::now()), Dir::Down);

    // And the conversation happened: every message arrived, once.
    bob.ok(&["sync"]);
    let bob_got: Vec<String> = bob.texts("cover").into_iter().map(|(_, t)| t).collect();
    let alice_got: Vec<String> = alice.texts("cover").into_iter().map(|(_, t)| t).collect();
    for n in 0..i {
        let a = format!("from alice {n}");
        let b = format!("from bob {n}");
        assert_eq!(bob_got.iter().filter(|t| **t == a).count(), 1, "{bob_got:?}");
        assert_eq!(alice_got.iter().filter(|t| **t == b).count(), 1, "{alice_got:?}");
    }
    daemon.stop();
    let log = daemon.stderr.lock().unwrap().clone();
    assert!(!log.contains("warning"), "{log}");
}

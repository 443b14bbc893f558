//! Crash safety: kill -9 of the relay and of a client at bad moments, and a damaged home.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig} {pid}");
}

#[test]
fn a_client_killed_in_the_middle_of_send_delivers_the_message_on_its_next_run_once() {
    let root = tempfile::tempdir().unwrap();
    let relay = RelayProc::start(&root.path().join("relay"), &[]);
    let [alice, bob] = people(root.path(), &relay, ["alice", "bob"]);
    channel_with(&alice, &[&bob], "c");

    // Freeze the relay: the send stores the message, then hangs in the network; kill it there.
    signal(relay.child.id(), "-STOP");
    let vault = alice.home.join("state.bcv");
    let before = std::fs::read(&vault).unwrap();
    let mut send = alice
        .cmd(&["send", "c", "said once, despite the crash"])
        .spawn()
        .unwrap();
    // The message is stored once the vault changes (every write seals under a fresh
    // nonce); then the send reaches the frozen relay and waits.
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::fs::read(&vault).unwrap() == before {
        assert!(Instant::now() < deadline, "the send never stored the message");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        send.try_wait().unwrap().is_none(),
        "send should be waiting on the frozen relay"
    );
    send.kill().unwrap();
    send.wait().unwrap();
    signal(relay.child.id(), "-CONT");

    // The next run delivers it; every later run leaves it delivered once.
    alice.ok(&["sync"]);
    alice.ok(&["sync"]);
    let got = bob.texts("c");
    assert_eq!(
        got,
        vec![("alice".to_string(), "said once, despite the crash".to_string())]
    );
    assert_eq!(alice.texts("c"), got, "the sender's own history shows it once too");
}

#[test]
fn a_send_while_the_relay_is_down_is_queued_says_so_and_goes_out_later_once() {
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("relay");
    let mut relay = RelayProc::start(&data, &[]);
    let listen = format!("127.0.0.1:{}", relay.port);
    let [alice, bob] = people(root.path(), &relay, ["alice", "bob"]);
    channel_with(&alice, &[&bob], "c");
    relay.kill9();
    let err = alice.fails(&["send", "c", "while you were out"]);
    assert!(err.contains("queued"), "{err}");
    assert!(
        alice.texts("c").iter().any(|(_, t)| t == "while you were out"),
        "shown as written"
    );
    let _relay = RelayProc::start_on(&data, &listen, &[]);
    alice.ok(&["sync"]);
    assert_eq!(
        bob.texts("c"),
        vec![("alice".to_string(), "while you were out".to_string())]
    );
    alice.ok(&["sync"]);
    assert_eq!(bob.texts("c").len(), 1);
}

#[test]
fn killing_the_relay_twenty_times_while_messages_flow_loses_and_repeats_nothing() {
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("relay");
    let relay = RelayProc::start(&data, &[]);
    let listen = format!("127.0.0.1:{}", relay.port);
    let [alice, bob] = people(root.path(), &relay, ["alice", "bob"]);
    channel_with(&alice, &[&bob], "c");

    // A killer thread: kill -9 and restart the relay on the same data dir and port, 20 times.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let killer = {
        let (data, listen, stop) = (data.clone(), listen.clone(), stop.clone());
        let mut relay = relay;
        std::thread::spawn(move || {
            for _ in 0..20 {
                std::thread::sleep(Duration::from_millis(250));
                relay.kill9();
                std::thread::sleep(Duration::from_millis(50));
                relay = RelayProc::start_on(&data, &listen, &[]);
            }
            stop.store(true, std::sync::atomic::Ordering::SeqCst);
            relay
        })
    };
    // Meanwhile both talk; each send either goes out or is queued (and says so).
    let mut sent = Vec::new();
    let mut n = 0;
    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
        for (who, c) in [("alice", &alice), ("bob", &bob)] {
            let text = format!("{who} {n}");
            let r = c.run(&["send", "c", &text]);
            assert!(r.ok || r.stderr.contains("queued"), "{}", r.stderr);
            sent.push((who.to_string(), text));
        }
        n += 1;
    }
    let _relay = killer.join().unwrap();
    // With the relay up for good, a couple of syncs deliver whatever was queued.
    for _ in 0..2 {
        alice.ok(&["sync"]);
        bob.ok(&["sync"]);
    }
    assert!(n >= 5, "only {n} rounds ran");
    for c in [&alice, &bob] {
        let got = c.texts("c");
        for m in &sent {
            assert_eq!(got.iter().filter(|g| *g == m).count(), 1, "{m:?} in {got:?}");
        }
        assert_eq!(got.len(), sent.len());
        // Per sender, in the order sent.
        for who in ["alice", "bob"] {
            let mine: Vec<&(String, String)> = got.iter().filter(|(w, _)| w == who).collect();
            let expected: Vec<&(String, String)> = sent.iter().filter(|(w, _)| w == who).collect();
            assert_eq!(mine, expected);
        }
    }
    eprintln!("{} messages over 20 relay kills", sent.len());
}

#[test]
fn a_truncated_or_altered_home_is_reported_never_reset() {
    let root = tempfile::tempdir().unwrap();
    let relay = RelayProc::start(&root.path().join("relay"), &[]);
    let [alice] = people(root.path(), &relay, ["alice"]);
    alice.ok(&["channel", "new", "c"]);
    let vault = alice.home.join("state.bcv");
    let good = std::fs::read(&vault).unwrap();

    for (what, bytes) in [
        ("truncated", good[..good.len() / 2].to_vec()),
        ("altered", {
            let mut b = good.clone();
            let i = b.len() - 40;
            b[i] ^= 0x01;
            b
        }),
        ("empty", Vec::new()),
    ] {
        std::fs::write(&vault, &bytes).unwrap();
        let err = alice.fails(&["channels"]);
        assert!(err.contains("damaged") || err.contains("modified"), "{what}: {err}");
        assert_eq!(
            std::fs::read(&vault).unwrap(),
            bytes,
            "{what}: the store was left as it was"
        );
    }
    std::fs::write(&vault, &good).unwrap();
    let listed: Vec<serde_json::Value> = alice
        .ok(&["channels", "--json"])
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["name"], "c");
}

#[test]
fn an_idle_sync_does_not_rewrite_the_local_store() {
    let root = tempfile::tempdir().unwrap();
    let relay = RelayProc::start(&root.path().join("relay"), &[]);
    let [alice] = people(root.path(), &relay, ["alice"]);
    alice.ok(&["channel", "new", "c"]);
    alice.ok(&["sync"]);
    let vault = alice.home.join("state.bcv");
    // Every write seals under a fresh nonce: a rewrite changes the bytes.
    let before = std::fs::read(&vault).unwrap();
    alice.ok(&["sync"]);
    alice.ok(&["channels"]);
    assert!(
        std::fs::read(&vault).unwrap() == before,
        "nothing changed, nothing written"
    );
    alice.ok(&["send", "c", "now something changes"]);
    assert!(std::fs::read(&vault).unwrap() != before);
}

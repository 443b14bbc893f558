//! Daemons under cover traffic: their fetches run beside their commands (issue 20, point 4),
//! and still take every message in once, in order, acknowledged, through a relay that dies
//! and comes back.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::*;

/// The texts `c` shows in `channel`, by sender; every command's stderr is checked for a
/// warning (a replayed or refetched envelope would show one).
fn shown(c: &Client, channel: &str) -> HashMap<String, Vec<String>> {
    let r = c.run(&["read", channel, "--json", "--all"]);
    assert!(r.ok, "{}", r.stderr);
    let said = without_test_kdf_warning(&r.stderr);
    assert!(!said.contains("warning"), "{said}");
    let mut by: HashMap<String, Vec<String>> = HashMap::new();
    for line in r.stdout.lines() {
        let m: serde_json::Value = serde_json::from_str(line).unwrap();
        if m.get("event").is_none() {
            by.entry(m["from"].as_str().unwrap().to_string())
                .or_default()
                .push(m["text"].as_str().unwrap().to_string());
        }
    }
    by
}

/// Waits until `c` shows every text of `sent` from each sender, then checks each came once
/// and in order.
fn wait_for_all(c: &Client, who: &str, sent: &[(&str, &[String])]) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let got = shown(c, "talk");
        let complete = sent
            .iter()
            .all(|(from, texts)| got.get(*from).map_or(0, Vec::len) >= texts.len());
        if complete {
            for (from, texts) in sent {
                assert_exactly_once_in_order(&got, from, texts, who);
            }
            return;
        }
        assert!(Instant::now() < deadline, "{who} shows {got:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Two members' daemons under cover carry a conversation both ways while both keep running
/// commands (sends and reads, answered while fetches wait for their ticks): every message
/// is shown once and in order, no command reports a warning, and once the daemons stop
/// nothing is left to fetch again (what they processed was acknowledged, the last of it as
/// they stopped). A relay killed mid-conversation and started again on its data holds up
/// delivery only until the daemons find it again.
#[test]
fn under_cover_daemons_fetch_beside_their_commands_and_lose_or_repeat_nothing() {
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("relay");
    let mut relay = RelayProc::start(&data, &[]);
    let [alice, bob] = people(root.path(), &relay, ["alice", "bob"]);
    channel_with(&alice, &[&bob], "talk");
    let mut daemons = [
        DaemonProc::start(&alice, &["--cover", "8/s"]),
        DaemonProc::start(&bob, &["--cover", "8/s"]),
    ];
    let (mut from_alice, mut from_bob) = (Vec::new(), Vec::new());
    for i in 0..6 {
        let a = format!("a{i:02}");
        let b = format!("b{i:02}");
        alice.ok(&["send", "talk", &a]);
        bob.ok(&["send", "talk", &b]);
        from_alice.push(a);
        from_bob.push(b);
        // Reads while the other's messages are on their way.
        shown(&alice, "talk");
        shown(&bob, "talk");
    }
    let sent = [("alice", from_alice.as_slice()), ("bob", from_bob.as_slice())];
    wait_for_all(&alice, "alice", &sent);
    wait_for_all(&bob, "bob", &sent);

    // The relay dies with the daemons' fetches under way, and comes back on the same port.
    let port = relay.port;
    relay.kill9();
    std::thread::sleep(Duration::from_secs(1));
    relay = RelayProc::start_on(&data, &format!("127.0.0.1:{port}"), &[]);
    for i in 6..10 {
        let a = format!("a{i:02}");
        let b = format!("b{i:02}");
        // A send while the daemon has not yet found the relay again is queued, not lost.
        let r = alice.run(&["send", "talk", &a]);
        assert!(r.ok || r.stderr.contains("queued"), "{}", r.stderr);
        let r = bob.run(&["send", "talk", &b]);
        assert!(r.ok || r.stderr.contains("queued"), "{}", r.stderr);
        from_alice.push(a);
        from_bob.push(b);
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    // Reads show the relay's absence as a warning for a while: only completeness counts here.
    loop {
        let a = alice.run(&["read", "talk", "--json", "--all"]);
        let b = bob.run(&["read", "talk", "--json", "--all"]);
        let done = from_alice.iter().chain(&from_bob).all(|t| {
            let quoted = format!("\"{t}\"");
            a.stdout.contains(&quoted) && b.stdout.contains(&quoted)
        });
        if done {
            break;
        }
        assert!(Instant::now() < deadline, "alice: {}\nbob: {}", a.stdout, b.stdout);
        std::thread::sleep(Duration::from_millis(300));
    }
    for d in &mut daemons {
        d.stop();
    }
    // A daemon stopped just after it took a message in acknowledges it as it goes (at
    // 1/s its next fetch, which would carry the acknowledgement, is half a second away).
    let mut slow = DaemonProc::start(&bob, &["--cover", "1/s"]);
    // Its first sync has run once a command is answered.
    shown(&bob, "talk");
    alice.ok(&["send", "talk", "a99"]);
    from_alice.push("a99".to_string());
    let deadline = Instant::now() + Duration::from_secs(60);
    while !bob.ok(&["read", "talk", "--json", "--all"]).contains("\"a99\"") {
        assert!(Instant::now() < deadline, "bob's daemon did not bring a99");
        std::thread::sleep(Duration::from_millis(20));
    }
    slow.stop();
    let sent = [("alice", from_alice.as_slice()), ("bob", from_bob.as_slice())];
    // Without the daemons, a sync finds nothing left: no envelope fetched again (it would be
    // refused as a replay, with a warning), no message twice.
    for (c, who) in [(&alice, "alice"), (&bob, "bob")] {
        let r = c.run(&["sync"]);
        assert!(r.ok, "{}", r.stderr);
        let said = without_test_kdf_warning(&r.stderr);
        assert!(!said.contains("warning"), "{who}: {said}");
        let got = shown(c, "talk");
        for (from, texts) in &sent {
            assert_exactly_once_in_order(&got, from, texts, who);
        }
    }
    drop(relay);
}

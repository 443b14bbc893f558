//! `backchannel config get|set`: a home's settings, as a user changes them, and what each
//! changes.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
use common::*;

fn relay_of(c: &Client, channel: &str, name: &str) -> String {
    c.ok(&["members", channel, "--json"])
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|m| m["name"] == name)
        .unwrap()["relay"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn settings_read_back_change_what_they_say_and_refuse_bad_values() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let (a, b) = two_relays(root, &[], &[]);
    let alice = Client::new(root, "alice");
    alice.init("alice", &b.address);
    let bob = Client::new(root, "bob");
    bob.init("bob", &a.address);
    let defaults = format!("forward = on\nproxy = none\ncover = off\nrelays = {}\n", a.address);
    assert_eq!(bob.ok(&["config", "get"]), defaults);

    // Without forwarding, bob's mailbox in alice's channel lives on her relay.
    assert_eq!(bob.ok(&["config", "set", "forward", "off"]), "forward = off\n");
    assert_eq!(bob.ok(&["config", "get", "forward"]), "off\n");
    channel_with(&alice, &[&bob], "talk");
    assert_eq!(relay_of(&alice, "talk", "bob"), b.address);
    // With it on again, his next key update moves it home, and messages still flow.
    bob.ok(&["config", "set", "forward", "on"]);
    bob.ok(&["update", "talk"]);
    alice.ok(&["sync"]);
    assert_eq!(relay_of(&alice, "talk", "bob"), a.address);
    alice.ok(&["send", "talk", "to your new mailbox"]);
    bob.ok(&["sync"]);
    assert!(bob.texts("talk").iter().any(|(_, t)| t == "to your new mailbox"));
    bob.ok(&["send", "talk", "through my relay"]);
    alice.ok(&["sync"]);
    assert!(alice.texts("talk").iter().any(|(_, t)| t == "through my relay"));

    // Bad keys and values are named; nothing changes.
    let err = bob.fails(&["config", "set", "forward", "maybe"]);
    assert!(err.contains("forward must be on or off"), "{err}");
    let err = bob.fails(&["config", "set", "cover", "100/s"]);
    assert!(err.contains("between 1/h and 20/s"), "{err}");
    let err = bob.fails(&["config", "set", "proxy", "http://example.org"]);
    assert!(err.contains("socks5h://HOST:PORT or none"), "{err}");
    let err = bob.fails(&["config", "get", "colour"]);
    assert!(err.contains("no setting called \"colour\""), "{err}");
    let err = bob.fails(&["config", "set", "relays", &b.address]);
    assert!(err.contains("addresses of your own relay"), "{err}");
    let err = bob.fails(&["config", "set", "relays", "relay.example.org"]);
    assert!(err.contains("bc://PIN@HOST:PORT"), "{err}");
    assert_eq!(bob.ok(&["config", "get"]), defaults);

    // More addresses of one's own relay: a dead one first is skipped, in order.
    let dead = via_port(&a.address, 9);
    let both = format!("{dead} {}", a.address);
    assert_eq!(
        bob.ok(&["config", "set", "relays", &both]),
        format!("relays = {both}\n")
    );
    bob.ok(&["send", "talk", "past a dead address"]);
    alice.ok(&["sync"]);
    assert!(alice.texts("talk").iter().any(|(_, t)| t == "past a dead address"));

    // The daemon takes its cover rate from the home when not given one.
    bob.ok(&["config", "set", "cover", "4/s"]);
    let mut daemon = bob
        .cmd(&["daemon"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut said = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(daemon.stdout.take().unwrap()), &mut said).unwrap();
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &daemon.id().to_string()])
        .status();
    let _ = daemon.wait();
    assert!(said.contains("one frame every 250 ms"), "{said}");
}

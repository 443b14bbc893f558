//! The network namespace harness (`common/netns.rs`) tested on itself: processes in a
//! namespace reach the relay whose port is bridged, and nothing else on the host; every
//! connection to a bridged or trapped port is counted, however short-lived.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
use std::net::TcpListener;

use common::netns::Namespace;
use common::*;

#[test]
fn a_namespace_reaches_its_bridged_relay_and_nothing_else() {
    let root = tempfile::tempdir().unwrap();
    let a = RelayProc::start(&root.path().join("relay-a"), &[]);
    let b = RelayProc::start(&root.path().join("relay-b"), &[]);
    let ns = Namespace::new(&root.path().join("ns"), &[a.port]);
    assert_eq!(ns.connections(a.port), 0);

    // A command in the namespace gets the environment it is given.
    let said = ns
        .command("sh")
        .args(["-c", "printf %s \"$NETNS_SELF_TEST\""])
        .env("NETNS_SELF_TEST", "it arrived")
        .output()
        .unwrap();
    assert!(said.status.success());
    assert_eq!(String::from_utf8_lossy(&said.stdout), "it arrived");
    // And it is in a namespace of its own: it sees no interface but the loopback.
    let links = ns
        .command("python3")
        .args(["-c", "import socket; print([n for _, n in socket.if_nameindex()])"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&links.stdout).trim(), "['lo']");

    // Bob, inside, uses A (`init` contacts the relay), and talks with Alice, outside.
    let bob = Client::new(root.path(), "bob");
    ns.init(&bob, "bob", &a.address);
    let after_init = ns.connections(a.port);
    assert!(after_init > 0, "bob's init reached relay A without a connection");
    let alice = Client::new(root.path(), "alice");
    alice.init("alice", &a.address);
    alice.ok(&["channel", "new", "x"]);
    let invite = alice.ok(&["invite", "x"]);
    ns.ok(&bob, &["join", invite.trim()]);
    alice.ok(&["sync"]);
    ns.ok(&bob, &["sync", "--wait", "5"]);
    ns.ok(&bob, &["send", "x", "from inside"]);
    alice.ok(&["sync"]);
    assert!(alice.texts("x").contains(&("bob".into(), "from inside".into())));
    alice.ok(&["send", "x", "from outside"]);
    ns.ok(&bob, &["sync"]);
    let texts: Vec<(String, String)> = ns
        .ok(&bob, &["read", "x", "--json", "--all"])
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|m| m.get("event").is_none())
        .map(|m| (m["from"].as_str().unwrap().into(), m["text"].as_str().unwrap().into()))
        .collect();
    assert!(texts.contains(&("alice".into(), "from outside".into())), "{texts:?}");
    assert!(ns.connections(a.port) > after_init);

    // A daemon inside holds its connection through the bridge; commands go through it.
    let mut daemon = ns.daemon(&bob, &[]);
    ns.ok(&bob, &["send", "x", "through the daemon"]);
    alice.ok(&["sync", "--wait", "5"]);
    assert!(alice.texts("x").contains(&("bob".into(), "through the daemon".into())));
    daemon.stop();

    // Carol, inside, cannot reach B: its port is not bridged, so a connection to it is
    // refused inside the namespace and nothing leaves it. (The relay logs no connections
    // to check that by; the host port below, where something listens, shows it.)
    let carol = Client::new(root.path(), "carol");
    let error = ns.fails(&carol, &["init", "--name", "carol", "--relay", &b.address]);
    assert!(error.contains("unreachable"), "{error}");
    assert_eq!(ns.try_connect(b.port), Err("ConnectionRefusedError".to_string()));

    // Nor any other port of the host, where something does listen.
    let other = TcpListener::bind("127.0.0.1:0").unwrap();
    other.set_nonblocking(true).unwrap();
    let port = other.local_addr().unwrap().port();
    assert_eq!(ns.try_connect(port), Err("ConnectionRefusedError".to_string()));
    assert_eq!(
        other.accept().map(|_| ()).unwrap_err().kind(),
        std::io::ErrorKind::WouldBlock,
        "a host port that is not bridged was reached from the namespace"
    );

    // A connection closed at once is counted, exactly, as soon as it has been made.
    let before = ns.connections(a.port);
    ns.try_connect(a.port).unwrap();
    assert_eq!(ns.connections(a.port), before + 1);

    // Outside the namespace, B answers: carol's failure was the namespace's doing.
    let dave = Client::new(root.path(), "dave");
    dave.init("dave", &b.address);

    // Dropping the namespace ends its program and its bridges' sockets.
    let pid = ns.pid();
    drop(ns);
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
    assert!(!root.path().join("ns").join(format!("bridge-{}.sock", a.port)).exists());
}

#[test]
fn a_trapped_port_counts_every_attempt_and_reaches_nothing() {
    let root = tempfile::tempdir().unwrap();
    let a = RelayProc::start(&root.path().join("relay-a"), &[]);
    let b = RelayProc::start(&root.path().join("relay-b"), &[]);
    let ns = Namespace::with_traps(&root.path().join("ns"), &[a.port], &[b.port]);
    assert_eq!(ns.counts(), vec![(a.port, 0), (b.port, 0)]);

    // A client sent to B fails, and the attempt shows in the trap's count.
    let carol = Client::new(root.path(), "carol");
    let error = ns.fails(&carol, &["init", "--name", "carol", "--relay", &b.address]);
    assert!(error.contains(b.address.rsplit_once('@').unwrap().1), "{error}");
    let tried = ns.connections(b.port);
    assert!(tried >= 1, "carol's init made no connection to B's port");
    assert_eq!(ns.connections(a.port), 0);

    // Each short-lived connection counts once.
    for n in 1..=3 {
        ns.try_connect(b.port).unwrap();
        assert_eq!(ns.connections(b.port), tried + n);
    }
    // A is bridged as before.
    let bob = Client::new(root.path(), "bob");
    ns.init(&bob, "bob", &a.address);
    assert!(ns.connections(a.port) > 0);
    assert_eq!(ns.connections(b.port), tried + 3);
}

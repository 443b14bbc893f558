//! Forwarding (docs/protocol.md, "Forwarding"; issue 16): each organization's relay carries
//! what its own members send to mailboxes on the other's relay, so that the other relay
//! never sees their addresses, and nobody's relay learns the mailboxes of the other side.
//!
//! Two relays, A and B, each with its own members. A's members run in a network namespace
//! from which only A's relay is reachable; B's port is trapped there, so that even one
//! short-lived connection to B from one of A's members is counted.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
use std::path::Path;

use common::netns::Namespace;
use common::*;
use sha2::{Digest, Sha256};

fn mailbox_of(c: &Client, ns: Option<&Namespace>, channel: &str) -> (Vec<u8>, Vec<u8>) {
    let out = match ns {
        Some(ns) => ns.ok(c, &["debug", "mailbox", channel]),
        None => c.ok(&["debug", "mailbox", channel]),
    };
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    (
        unhex(v["mailbox"].as_str().unwrap()),
        unhex(v["send"].as_str().unwrap()),
    )
}

fn sequencer_of(c: &Client, channel: &str) -> (String, Vec<u8>) {
    let v: serde_json::Value = serde_json::from_str(&c.ok(&["debug", "sequencer", channel])).unwrap();
    (
        v["relay"].as_str().unwrap().to_string(),
        unhex(v["send"].as_str().unwrap()),
    )
}

/// Every way `id` could sit in a file or a log: its bytes, its hex, and (for a send
/// capability) the digest a relay keeps of it.
fn traces(id: &[u8]) -> Vec<Vec<u8>> {
    let digest = Sha256::digest(id).to_vec();
    vec![
        id.to_vec(),
        hex(id).into_bytes(),
        digest.clone(),
        hex(&digest).into_bytes(),
    ]
}

/// Asserts that nothing under `dir` nor in `log` holds any of `ids`.
fn holds_none(what: &str, dir: &Path, log: &str, ids: &[(&str, &[u8])]) {
    for (name, id) in ids {
        for t in traces(id) {
            for f in files(dir) {
                let bytes = std::fs::read(&f).unwrap();
                assert!(!contains(&bytes, &t), "{what}'s {} holds {name}", f.display());
            }
            assert!(!contains(log.as_bytes(), &t), "{what}'s log holds {name}");
        }
    }
}

#[test]
fn members_of_two_relays_talk_through_their_own_relays_only() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let (a, b) = two_relays(root, &[], &[]);
    // A's members can reach A and nothing else; B's port is trapped (counted, then closed).
    let ns = Namespace::with_traps(&root.join("ns"), &[a.port], &[b.port]);

    let alice = Client::new(root, "alice");
    alice.init("alice", &b.address);
    let carol = Client::new(root, "carol");
    carol.init("carol", &b.address);
    let bob = Client::new(root, "bob");
    ns.init(&bob, "bob", &a.address);
    let dave = Client::new(root, "dave");
    ns.init(&dave, "dave", &a.address);

    // A channel on B with members on both relays.
    alice.ok(&["channel", "new", "talk"]);
    for (who, inside) in [(&bob, true), (&carol, false), (&dave, true)] {
        let invite = alice.ok(&["invite", "talk"]);
        let invite = invite.trim();
        if inside {
            ns.ok(who, &["join", invite]);
        } else {
            who.ok(&["join", invite]);
        }
        alice.ok(&["sync"]);
        if inside {
            ns.ok(who, &["sync", "--wait", "5"]);
        } else {
            who.ok(&["sync", "--wait", "5"]);
        }
    }
    // Every member's mailbox lives on its own relay.
    let members: serde_json::Value = alice
        .ok(&["members", "talk", "--json"])
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .collect::<Vec<_>>()
        .into();
    let relay_of = |name: &str| {
        members.as_array().unwrap().iter().find(|m| m["name"] == name).unwrap()["relay"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(relay_of("alice"), b.address);
    assert_eq!(relay_of("carol"), b.address);
    assert_eq!(relay_of("bob"), a.address);
    assert_eq!(relay_of("dave"), a.address);

    // Everyone says something; everyone reads everything.
    alice.ok(&["send", "talk", "from alice"]);
    ns.ok(&bob, &["send", "talk", "from bob"]);
    carol.ok(&["send", "talk", "from carol"]);
    ns.ok(&dave, &["send", "talk", "from dave"]);
    let said = ["from alice", "from bob", "from carol", "from dave"];
    let read = |c: &Client, inside: bool| -> Vec<String> {
        let out = if inside {
            ns.ok(c, &["sync"]);
            ns.ok(c, &["read", "talk", "--json", "--all"])
        } else {
            c.ok(&["sync"]);
            c.ok(&["read", "talk", "--json", "--all"])
        };
        out.lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .filter_map(|m| m["text"].as_str().map(str::to_string))
            .filter(|t| t.starts_with("from "))
            .collect()
    };
    for (c, inside) in [(&alice, false), (&bob, true), (&carol, false), (&dave, true)] {
        let mut got = read(c, inside);
        got.sort();
        assert_eq!(got, said, "what {} read", c.home.display());
    }

    // An admin on A removes a member: its commit moves the channel's sequencer to a fresh
    // mailbox on B, which bob makes and claims through A.
    let (sequencer_relay, old_sequencer) = sequencer_of(&alice, "talk");
    assert_eq!(sequencer_relay, b.address);
    alice.ok(&["admin", "talk", "bob"]);
    ns.ok(&bob, &["sync"]);
    ns.ok(&bob, &["remove", "talk", "carol"]);
    alice.ok(&["sync"]);
    ns.ok(&dave, &["sync"]);
    let (moved_to, new_sequencer) = sequencer_of(&alice, "talk");
    assert_eq!(moved_to, b.address, "the sequencer stays on the channel's relay");
    assert_ne!(new_sequencer, old_sequencer, "the removal moved the sequencer");
    ns.ok(&dave, &["send", "talk", "after the removal"]);
    alice.ok(&["sync"]);
    assert!(alice.texts("talk").iter().any(|(_, t)| t == "after the removal"));

    // Not one connection from A's members reached B, not even a short one; A's relay did.
    assert_eq!(ns.connections(b.port), 0, "a member of A connected to B");
    assert!(ns.connections(a.port) > 0);

    // Neither relay's disk or log links a member of A to a mailbox on B: A never saw the
    // mailboxes it forwarded to, and B holds nothing of A's members' mailboxes.
    let (alice_box, alice_send) = mailbox_of(&alice, None, "talk");
    let (bob_box, bob_send) = mailbox_of(&bob, Some(&ns), "talk");
    let (dave_box, dave_send) = mailbox_of(&dave, Some(&ns), "talk");
    let b_side: [(&str, &[u8]); 4] = [
        ("alice's mailbox", &alice_box),
        ("alice's send capability", &alice_send),
        ("the old sequencer", &old_sequencer),
        ("the new sequencer", &new_sequencer),
    ];
    let a_side: [(&str, &[u8]); 4] = [
        ("bob's mailbox", &bob_box),
        ("bob's send capability", &bob_send),
        ("dave's mailbox", &dave_box),
        ("dave's send capability", &dave_send),
    ];
    holds_none("relay A", &a.data, &a.logs(), &b_side);
    holds_none("relay B", &b.data, &b.logs(), &a_side);
}

/// With `init --no-forward`, a member sends to the other relay directly, as before
/// forwarding: its mailbox then lives on the channel's relay.
#[test]
fn without_forwarding_a_member_reaches_the_other_relay_itself() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let a = RelayProc::start(&root.join("relay-a"), &[]);
    let b = RelayProc::start(&root.join("relay-b"), &[]);
    let ns = Namespace::with_traps(&root.join("ns"), &[a.port], &[b.port]);
    let alice = Client::new(root, "alice");
    alice.init("alice", &b.address);
    let bob = Client::new(root, "bob");
    ns.ok(&bob, &["init", "--name", "bob", "--relay", &a.address, "--no-forward"]);
    alice.ok(&["channel", "new", "talk"]);
    let invite = alice.ok(&["invite", "talk"]);
    // Bob's join goes to B itself, which this namespace does not reach: it fails, naming B,
    // and the trap counted the attempt.
    let err = ns.fails(&bob, &["join", invite.trim()]);
    assert!(err.contains(&format!("127.0.0.1:{}", b.port)), "{err}");
    assert!(ns.connections(b.port) > 0);
}

/// A relay does not connect into its own network for a client (a private or loopback
/// destination) unless its operator allows it: the client's message stays queued and the
/// user is told the other relay cannot be reached.
#[test]
fn a_relay_forwards_to_private_addresses_only_when_its_operator_allows_it() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let a = RelayProc::start(&root.join("relay-a"), &[]);
    let b = RelayProc::start(&root.join("relay-b"), &[]);
    let alice = Client::new(root, "alice");
    alice.init("alice", &b.address);
    let bob = Client::new(root, "bob");
    bob.init("bob", &a.address);
    alice.ok(&["channel", "new", "talk"]);
    let invite = alice.ok(&["invite", "talk"]);
    let err = bob.fails(&["join", invite.trim()]);
    assert!(err.contains("unreachable"), "{err}");
}

/// The other relay gives ours a budget of its own (`--forwarder-rate`), and ours serves its
/// users' forwarded requests in turn: one user flooding the other relay through ours spends
/// that budget on their own requests only, while another user's messages still go through
/// within their commands.
#[test]
fn one_user_flooding_the_other_relay_through_ours_does_not_hold_up_the_others() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;

    use backchannel_client::ConnectError;
    use backchannel_core::envelope::{Envelope, ENVELOPE_SIZE};
    use backchannel_core::frame::{ErrorCode, Request};
    use backchannel_core::mailbox::MailboxKeys;
    use backchannel_core::relay_address::RelayAddress;

    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let (a, b) = two_relays(root, &[], &["--forwarder-rate", "20", "--forwarder-burst", "20"]);
    let alice = Client::new(root, "alice");
    alice.init("alice", &b.address);
    let bob = Client::new(root, "bob");
    bob.init("bob", &a.address);
    channel_with(&alice, &[&bob], "talk");

    // The flooder: a user of A with 8 connections, each pipelining sends into a mailbox of
    // its own on B, through A, as fast as A takes them.
    let a_addr: RelayAddress = a.address.parse().unwrap();
    let b_addr: RelayAddress = b.address.parse().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let stored = Arc::new(AtomicUsize::new(0));
    let limited = Arc::new(AtomicUsize::new(0));
    let flooder = {
        let (stop, stored, limited) = (stop.clone(), stored.clone(), limited.clone());
        std::thread::spawn(move || {
            rt().block_on(async move {
                let keys = MailboxKeys::generate(b_addr.clone(), &mut rand_core::OsRng);
                let mut first = forwarding_connection(&a_addr, &b_addr).await;
                first.request(&Request::create(&keys, 0)).await.unwrap();
                let send = Request::Send {
                    send: keys.address.send.0,
                    envelope: Envelope::from_bytes(&[7; ENVELOPE_SIZE]).unwrap(),
                    pow: 0,
                };
                let mut tasks = Vec::new();
                for _ in 0..8 {
                    let (stop, stored, limited) = (stop.clone(), stored.clone(), limited.clone());
                    let (a_addr, b_addr, send) = (a_addr.clone(), b_addr.clone(), send.clone());
                    tasks.push(tokio::spawn(async move {
                        let mut c = forwarding_connection(&a_addr, &b_addr).await;
                        let batch = vec![send; 32];
                        while !stop.load(Ordering::Relaxed) {
                            let Ok(answers) = c.pipeline(&batch).await else { break };
                            for r in answers {
                                match r {
                                    Ok(_) => stored.fetch_add(1, Ordering::Relaxed),
                                    Err(ConnectError::Refused(ErrorCode::RateLimited, _)) => {
                                        limited.fetch_add(1, Ordering::Relaxed)
                                    }
                                    Err(e) => panic!("the flooder got {e}"),
                                };
                            }
                        }
                    }));
                }
                for t in tasks {
                    t.await.unwrap();
                }
            })
        })
    };
    std::thread::sleep(std::time::Duration::from_secs(2));
    let started = std::time::Instant::now();
    for i in 0..5 {
        let out = bob.ok(&["send", "talk", &format!("message {i}")]);
        assert_eq!(out.trim(), "sent", "bob's message {i} waited behind the flood");
    }
    let flooded_for = started.elapsed() + std::time::Duration::from_secs(2);
    stop.store(true, Ordering::Relaxed);
    flooder.join().unwrap();
    alice.ok(&["sync"]);
    let got: Vec<String> = alice.texts("talk").into_iter().map(|(_, t)| t).collect();
    for i in 0..5 {
        assert!(got.contains(&format!("message {i}")), "alice has {got:?}");
    }
    // B held A to its budget: the flood was refused beyond it, and stored no more than the
    // budget allowed while it ran (with its burst, and one more second of slack).
    let (stored, limited) = (stored.load(Ordering::Relaxed), limited.load(Ordering::Relaxed));
    eprintln!("flood for {flooded_for:?}: {stored} stored, {limited} refused");
    assert!(limited > 0, "the flood was never refused");
    let most = 20 * (flooded_for.as_secs() as usize + 2) + 20;
    assert!(
        stored <= most,
        "{stored} stored through a budget of 20/s (at most {most})"
    );
}

/// Under cover traffic, a member's daemon forwards through its own relay too: its paced
/// links to the other relay's mailboxes are paced links to its own relay.
#[test]
fn under_cover_a_members_daemon_forwards_through_its_own_relay() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let (a, b) = two_relays(root, &[], &[]);
    let ns = Namespace::with_traps(&root.join("ns"), &[a.port], &[b.port]);
    let alice = Client::new(root, "alice");
    alice.init("alice", &b.address);
    let bob = Client::new(root, "bob");
    ns.init(&bob, "bob", &a.address);
    alice.ok(&["channel", "new", "talk"]);
    let invite = alice.ok(&["invite", "talk"]);
    ns.ok(&bob, &["join", invite.trim()]);
    alice.ok(&["sync"]);
    ns.ok(&bob, &["sync", "--wait", "5"]);

    let mut daemon = ns.daemon(&bob, &["--cover", "8/s"]);
    // Through the daemon: its paced send link to B's mailboxes is a paced link to A.
    let out = ns.ok(&bob, &["send", "talk", "under cover"]);
    assert!(out.contains("sent") || out.contains("queued"), "{out}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        alice.ok(&["sync"]);
        if alice.texts("talk").iter().any(|(_, t)| t == "under cover") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the message never arrived");
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    alice.ok(&["send", "talk", "back to you"]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let read = ns.ok(&bob, &["read", "talk", "--json", "--all"]);
        if read.contains("back to you") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "alice's answer never arrived");
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    daemon.stop();
    assert_eq!(ns.connections(b.port), 0, "bob's daemon connected to B");
}

/// The other relay restarts (a new forward key, its old connections gone): a member's next
/// send through its own relay still goes out within its command.
#[test]
fn a_send_through_our_relay_goes_out_after_the_other_relay_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let (a, mut b) = two_relays(root, &[], &[]);
    let alice = Client::new(root, "alice");
    alice.init("alice", &b.address);
    let bob = Client::new(root, "bob");
    bob.init("bob", &a.address);
    channel_with(&alice, &[&bob], "talk");
    bob.ok(&["send", "talk", "before the restart"]);

    b.kill9();
    let listen = format!("127.0.0.1:{}", b.port);
    let b2 = RelayProc::start_on(&root.join("relay-b"), &listen, &["--forward-private"]);
    assert_eq!(b2.address, b.address, "the same PIN and address");
    let out = bob.ok(&["send", "talk", "after the restart"]);
    assert_eq!(out.trim(), "sent", "{out}");
    alice.ok(&["sync"]);
    let got: Vec<String> = alice.texts("talk").into_iter().map(|(_, t)| t).collect();
    assert!(got.contains(&"after the restart".to_string()), "{got:?}");
}

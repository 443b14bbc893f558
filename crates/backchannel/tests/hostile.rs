//! Bad input, forged and replayed envelopes, relay limits, and what lands on disk.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
use backchannel_client::{ConnectError, RelayConnection};
use backchannel_core::envelope::{seal_payload, Envelope, PayloadKind, ENVELOPE_SIZE};
use backchannel_core::frame::{ErrorCode, Request, Response, FRAME_SIZE};
use backchannel_core::mailbox::{MailboxId, MailboxKeys, SealKey, SendCapability};
use backchannel_core::relay_address::RelayAddress;
use common::*;
use rand_core::{OsRng, RngCore};

struct Target {
    relay: RelayAddress,
    /// The receive id: known to the member and the relay, never to senders.
    id: MailboxId,
    send: SendCapability,
    seal: SealKey,
}

fn target(c: &Client, channel: &str) -> Target {
    let v: serde_json::Value = serde_json::from_str(&c.ok(&["debug", "mailbox", channel])).unwrap();
    Target {
        relay: v["relay"].as_str().unwrap().parse().unwrap(),
        id: MailboxId(unhex(v["mailbox"].as_str().unwrap()).try_into().unwrap()),
        send: SendCapability(unhex(v["send"].as_str().unwrap()).try_into().unwrap()),
        seal: SealKey(unhex(v["seal"].as_str().unwrap()).try_into().unwrap()),
    }
}

fn inject(t: &Target, envelopes: Vec<Envelope>) {
    rt().block_on(async {
        let mut c = RelayConnection::connect(&t.relay).await.unwrap();
        for envelope in envelopes {
            c.request(&Request::Send {
                send: t.send.0,
                envelope,
                pow: 0,
            })
            .await
            .unwrap();
        }
    });
}

#[test]
fn forged_garbage_and_replayed_envelopes_are_never_shown_and_are_reported() {
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("relay");
    let mut relay = RelayProc::start(&data, &[]);
    let [alice, bob] = people(root.path(), &relay, ["alice", "bob"]);
    channel_with(&alice, &[&bob], "auth");
    let t = target(&bob, "auth");

    // 1. Random bytes: fail the envelope's authentication.
    let mut junk = vec![0u8; ENVELOPE_SIZE];
    OsRng.fill_bytes(&mut junk);
    inject(&t, vec![Envelope::from_bytes(&junk).unwrap()]);
    // 2. Correctly sealed (the sender knows the mailbox) but a forged MLS message claiming to be alice.
    let forged = seal_payload(
        &t.seal,
        &t.send,
        PayloadKind::Mls,
        b"\x00\x01forged: alice says pay 1M",
        &mut OsRng,
    )
    .unwrap();
    inject(&t, forged);
    let r = bob.run(&["read", "auth", "--json"]);
    assert!(r.ok, "{}", r.stderr);
    assert!(r.stderr.contains("warning:"), "a warning on stderr: {}", r.stderr);
    assert!(!r.stdout.contains("pay 1M"));
    let events: Vec<serde_json::Value> = r.stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(
        events.iter().filter(|e| e["event"] == "rejected").count() >= 2,
        "{events:?}"
    );
    assert!(bob.texts("auth").is_empty());

    // 3. Replay by the relay operator: read alice's envelope out of the relay's store (the
    //    operator holds its disk and keys), let bob receive it, then put the same bytes back
    //    into bob's mailbox.
    alice.ok(&["send", "auth", "transfer approved"]);
    relay.kill9();
    let captured = stored_envelopes(&data, t.id.0);
    assert!(!captured.is_empty());
    let listen = format!("127.0.0.1:{}", relay.port);
    let _relay2 = RelayProc::start_on(&data, &listen, &[]);
    assert_eq!(
        bob.texts("auth"),
        vec![("alice".to_string(), "transfer approved".to_string())]
    );
    inject(&t, captured.iter().map(|b| Envelope::from_bytes(b).unwrap()).collect());
    let r = bob.run(&["read", "auth", "--json"]);
    assert!(r.stderr.contains("warning:"), "the replay is reported: {}", r.stderr);
    assert_eq!(bob.texts("auth").len(), 1, "the replayed message is shown once");
}

#[test]
fn a_removed_member_with_its_old_keys_cannot_speak_in_the_channel() {
    let root = tempfile::tempdir().unwrap();
    let relay = RelayProc::start(&root.path().join("relay"), &[]);
    let [alice, bob, carol] = people(root.path(), &relay, ["alice", "bob", "carol"]);
    channel_with(&alice, &[&bob, &carol], "kept");
    // Carol keeps a copy of her device before she is removed.
    let stolen = carol.copy_as(root.path(), "carol-copy");
    alice.ok(&["remove", "kept", "carol"]);
    bob.ok(&["sync"]);
    carol.ok(&["sync"]);
    // The copy never saw the removal and still sends with the old epoch's keys.
    let _ = stolen.run(&["send", "kept", "planted by carol after removal"]);
    for c in [&alice, &bob] {
        let r = c.run(&["read", "kept", "--all"]);
        assert!(r.ok, "{}", r.stderr);
        assert!(!r.stdout.contains("planted"), "{}", r.stdout);
    }
}

#[test]
fn bad_input_gives_one_clear_error_and_loses_nothing() {
    let root = tempfile::tempdir().unwrap();
    let relay = RelayProc::start(&root.path().join("relay"), &[]);
    let [alice, bob, carol] = people(root.path(), &relay, ["alice", "bob", "carol"]);
    channel_with(&alice, &[&bob], "ch");
    bob.ok(&["send", "ch", "keep me"]);

    assert!(alice.fails(&["send", "nope", "x"]).contains("no channel called"));
    let e = carol.fails(&["join", "not an invite"]);
    assert!(
        e.contains("not an invite") && e.contains("7-orbit-velvet-harbor"),
        "{e}"
    );
    let good = alice.ok(&["invite", "ch"]);
    let mut damaged = good.trim().to_string();
    damaged.replace_range(20..21, if &damaged[20..21] == "a" { "b" } else { "a" });
    assert!(carol.fails(&["join", &damaged]).contains("damaged"));

    let short = alice.ok(&["invite", "ch", "--expires", "1s"]);
    std::thread::sleep(std::time::Duration::from_millis(2100));
    assert!(carol.fails(&["join", short.trim()]).contains("expired"));

    let once = alice.ok(&["invite", "ch", "--uses", "1"]);
    carol.ok(&["join", once.trim()]);
    alice.ok(&["sync"]);
    let dave = Client::new(root.path(), "dave");
    dave.init("dave", &relay.address);
    assert!(dave.fails(&["join", once.trim()]).contains("used up"));

    let wrong = Client {
        pass: "not the passphrase".into(),
        ..alice.clone()
    };
    assert!(wrong.fails(&["read", "ch"]).contains("passphrase is wrong"));
    let no_pass = alice
        .cmd(&["read", "ch"])
        .env_remove("BACKCHANNEL_PASSPHRASE")
        .output()
        .unwrap();
    assert!(!no_pass.status.success());
    assert!(String::from_utf8_lossy(&no_pass.stderr).contains("BACKCHANNEL_PASSPHRASE"));

    let erin = Client::new(root.path(), "erin");
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let dead = format!("{}:{port}", relay.address.rsplit_once(':').unwrap().0);
    assert!(erin
        .fails(&["init", "--name", "erin", "--relay", &dead])
        .contains("unreachable"));
    let mut forged: RelayAddress = relay.address.parse().unwrap();
    forged.pin[0] ^= 1;
    assert!(erin
        .fails(&["init", "--name", "erin", "--relay", &forged.to_string()])
        .contains("different key"));
    assert!(erin
        .fails(&["init", "--name", "erin", "--relay", "bc://nonsense"])
        .contains("relay address"));

    // Nothing already stored was lost.
    assert!(alice.texts("ch").contains(&("bob".into(), "keep me".into())));
}

#[test]
fn the_home_directory_holds_no_plaintext_name_or_key() {
    let root = tempfile::tempdir().unwrap();
    let relay = RelayProc::start(&root.path().join("relay"), &[]);
    let (alice, bob) = (
        Client::new(root.path(), "alice-secretname"),
        Client::new(root.path(), "bob"),
    );
    alice.init("alice-secretname", &relay.address);
    bob.init("bob-othername", &relay.address);
    channel_with(&alice, &[&bob], "merger-talks");
    bob.ok(&["send", "merger-talks", "the price is 42 million"]);
    alice.texts("merger-talks");
    let seal = target(&alice, "merger-talks").seal;
    let needles: Vec<Vec<u8>> = vec![
        b"alice-secretname".to_vec(),
        b"bob-othername".to_vec(),
        b"merger-talks".to_vec(),
        b"the price is 42 million".to_vec(),
        seal.0.to_vec(),
    ];
    for home in [&alice.home, &bob.home, &relay.data] {
        for f in files(home) {
            let bytes = std::fs::read(&f).unwrap();
            for n in &needles {
                assert!(
                    !contains(&bytes, n),
                    "{} contains {:?}",
                    f.display(),
                    String::from_utf8_lossy(n)
                );
            }
        }
    }
    let logs = relay.logs();
    for n in &needles[..4] {
        assert!(!contains(logs.as_bytes(), n));
    }
    let id = target(&alice, "merger-talks").id;
    assert!(!logs.contains(&hex(&id.0)) && !logs.contains("127.0.0.1"), "{logs}");
}

#[test]
fn relay_limits_are_enforced_with_clear_protocol_errors() {
    let root = tempfile::tempdir().unwrap();
    let relay = RelayProc::start(
        &root.path().join("relay"),
        &[
            "--max-connections",
            "2",
            "--max-mailboxes-per-connection",
            "2",
            "--max-envelopes-per-mailbox",
            "3",
        ],
    );
    let addr: RelayAddress = relay.address.parse().unwrap();
    rt().block_on(async {
        let mut c = RelayConnection::connect(&addr).await.unwrap();
        // Frame size.
        let big = vec![0x08u8; FRAME_SIZE + 1];
        match c.send_raw(big).await.unwrap() {
            Response::Error { code, .. } => assert_eq!(code, ErrorCode::FrameTooLarge),
            other => panic!("{other:?}"),
        }
        // Garbage frame.
        match c.send_raw(vec![0xee, 0, 0, 0, 1]).await.unwrap() {
            Response::Error { code, .. } => assert_eq!(code, ErrorCode::Malformed),
            other => panic!("{other:?}"),
        }
        // A short (unpadded) frame of a valid kind.
        match c.send_raw(vec![0x08, 0, 0, 0, 1]).await.unwrap() {
            Response::Error { code, .. } => assert_eq!(code, ErrorCode::Malformed),
            other => panic!("{other:?}"),
        }
        // Mailboxes per connection.
        let boxes: Vec<MailboxKeys> = (0..3)
            .map(|_| MailboxKeys::generate(addr.clone(), &mut OsRng))
            .collect();
        for (i, k) in boxes.iter().enumerate() {
            let r = c.request(&Request::create(k, 0)).await;
            if i < 2 {
                r.unwrap();
            } else {
                assert!(r.unwrap_err().is(ErrorCode::TooManyMailboxes));
            }
        }
        // Envelopes per mailbox.
        let k = &boxes[0];
        for i in 0..4 {
            let envelope = seal_payload(&k.address.seal, &k.address.send, PayloadKind::Mls, b"x", &mut OsRng)
                .unwrap()
                .remove(0);
            let r = c
                .request(&Request::Send {
                    send: k.address.send.0,
                    envelope,
                    pow: 0,
                })
                .await;
            if i < 3 {
                r.unwrap();
            } else {
                assert!(r.unwrap_err().is(ErrorCode::MailboxFull));
            }
        }
        // A wrong capability looks like a missing mailbox, and so does the receive id used as one.
        for send in [[0; 32], boxes[1].id().0] {
            let envelope = Envelope::from_bytes(&[0u8; ENVELOPE_SIZE]).unwrap();
            let r = c.request(&Request::Send { send, envelope, pow: 0 }).await;
            assert!(r.unwrap_err().is(ErrorCode::NoSuchMailbox));
        }
        // Fetch without opening returns nothing of anyone else's.
        let mut other = RelayConnection::connect(&addr).await.unwrap();
        match other.request(&Request::Fetch { max: 15, wait_ms: 0 }).await.unwrap() {
            Response::Envelopes(v) => assert!(v.is_empty()),
            r => panic!("{r:?}"),
        }
        let r = other
            .request(&Request::Ack {
                mailbox: k.id(),
                seq: 1,
            })
            .await;
        assert!(r.unwrap_err().is(ErrorCode::NotOpened));
        // Concurrent connections: the third is refused.
        match RelayConnection::connect(&addr).await {
            Err(ConnectError::Refused(code, _)) => assert_eq!(code, ErrorCode::TooManyConnections),
            other => panic!("expected a refusal, got {other:?}"),
        }
    });
}

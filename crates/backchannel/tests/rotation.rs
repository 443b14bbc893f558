//! `relay rotate-key`: a running relay makes a new TLS certificate and forward key, signed
//! by its identity key, and keeps its PIN; clients connected before, clients that were
//! offline through it, and other relays that forward to it all keep working.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
use backchannel_client::RelayConnection;
use backchannel_core::envelope::{Envelope, ENVELOPE_SIZE};
use backchannel_core::frame::Request;
use backchannel_core::mailbox::MailboxKeys;
use backchannel_core::relay_address::RelayAddress;
use backchannel_core::relay_identity::Credential;
use common::*;

async fn tls_key_of(relay: &RelayAddress) -> [u8; 32] {
    let c = RelayConnection::connect(relay).await.unwrap();
    Credential::from_bytes(c.identity().1).unwrap().tls_cert_digest
}

#[test]
fn a_rotation_keeps_the_pin_and_every_client_and_forwarder_working() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let (a, b) = two_relays(root, &[], &[]);
    let alice = Client::new(root, "alice");
    alice.init("alice", &b.address);
    let bob = Client::new(root, "bob");
    bob.init("bob", &a.address);
    channel_with(&alice, &[&bob], "talk");
    bob.ok(&["send", "talk", "before"]);
    alice.ok(&["sync"]);

    let (a_addr, b_addr): (RelayAddress, RelayAddress) = (a.address.parse().unwrap(), b.address.parse().unwrap());
    let rt = rt();
    let before = rt.block_on(tls_key_of(&b_addr));
    // A client of A that asked for B's credential before the rotation, and keeps its
    // connection: it seals to B's old forward key.
    let keys = MailboxKeys::generate(b_addr.clone(), &mut rand_core::OsRng);
    let send = Request::Send {
        send: keys.address.send.0,
        envelope: Envelope::from_bytes(&[3; ENVELOPE_SIZE]).unwrap(),
        pow: 0,
    };
    let mut early = rt.block_on(async {
        let mut c = forwarding_connection(&a_addr, &b_addr).await;
        c.request(&Request::create(&keys, 0)).await.unwrap();
        c
    });

    let said = alice.ok(&["relay", "rotate-key", "--data", b.data.to_str().unwrap()]);
    assert!(said.contains("now uses a new TLS certificate"), "{said}");
    let after = rt.block_on(tls_key_of(&b_addr));
    assert_ne!(
        after, before,
        "a new TLS key, under the same PIN (the connection checked it)"
    );

    // The early client's seal to the old forward key still opens, within the overlap.
    rt.block_on(early.request(&send)).unwrap();
    // Members carry on: alice was offline through it and connects afresh; bob's messages
    // go through A's connection to B from before the rotation.
    alice.ok(&["send", "talk", "after, from alice"]);
    bob.ok(&["sync"]);
    assert!(bob.texts("talk").iter().any(|(_, t)| t == "after, from alice"));
    bob.ok(&["send", "talk", "after, from bob"]);
    alice.ok(&["sync"]);
    assert!(alice.texts("talk").iter().any(|(_, t)| t == "after, from bob"));

    // A second rotation: the first key no longer opens anything. The early client is told
    // (its connection is done for), and a fresh one works with the new key.
    alice.ok(&["relay", "rotate-key", "--data", b.data.to_str().unwrap()]);
    assert!(
        rt.block_on(early.request(&send)).is_err(),
        "a key two rotations old still opened"
    );
    rt.block_on(async {
        let mut fresh = forwarding_connection(&a_addr, &b_addr).await;
        fresh.request(&send).await.unwrap();
    });
    bob.ok(&["send", "talk", "after two rotations"]);
    alice.ok(&["sync"]);
    assert!(alice.texts("talk").iter().any(|(_, t)| t == "after two rotations"));
    // The relay's log says it rotated, and nothing else about it.
    assert_eq!(b.logs().matches("wire keys rotated").count(), 2);
}

#[test]
fn rotate_key_says_so_when_no_relay_runs_on_the_directory() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("relay");
    let relay = RelayProc::start(&data, &[]);
    drop(relay);
    let someone = Client::new(dir.path(), "operator");
    let said = someone.ok(&["relay", "rotate-key", "--data", data.to_str().unwrap()]);
    assert!(said.contains("no relay running"), "{said}");
    let err = someone.fails(&[
        "relay",
        "rotate-key",
        "--data",
        dir.path().join("nothing").to_str().unwrap(),
    ]);
    assert!(err.contains("relay-cert.der") || err.contains("identity"), "{err}");
}

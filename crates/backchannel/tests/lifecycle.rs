//! A channel's lifecycle: disappearing messages, channels that expire, and
//! closing a channel for everyone.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use backchannel_client::home::Home;
use backchannel_client::RelayConnection;
use backchannel_core::envelope::{Envelope, ENVELOPE_SIZE};
use backchannel_core::frame::{ErrorCode, Request};
use backchannel_core::relay_address::RelayAddress;
use common::*;

/// A channel mailbox as its member's `debug mailbox` prints it.
struct Mailbox {
    relay: RelayAddress,
    send: [u8; 32],
}

fn mailbox(c: &Client, channel: &str) -> Mailbox {
    let v: serde_json::Value = serde_json::from_str(&c.ok(&["debug", "mailbox", channel])).unwrap();
    Mailbox {
        relay: v["relay"].as_str().unwrap().parse().unwrap(),
        send: unhex(v["send"].as_str().unwrap()).try_into().unwrap(),
    }
}

/// Whether the relay still takes envelopes for this mailbox.
fn exists_at_relay(m: &Mailbox) -> bool {
    rt().block_on(async {
        let mut c = RelayConnection::connect(&m.relay).await.unwrap();
        let envelope = Envelope::from_bytes(&[7u8; ENVELOPE_SIZE]).unwrap();
        match c
            .request(&Request::Send {
                send: m.send,
                envelope,
                pow: 0,
            })
            .await
        {
            Ok(_) => true,
            Err(e) if e.is(ErrorCode::NoSuchMailbox) => false,
            Err(e) => panic!("unexpected relay answer: {e}"),
        }
    })
}

/// The member's whole local store, decrypted, as bytes: what a thief with the
/// passphrase would find on the disk.
fn store_bytes(c: &Client) -> Vec<u8> {
    let (_home, state) = Home::open(&c.home, c.pass.as_bytes()).unwrap();
    state.encode().unwrap()
}

fn channel_json(c: &Client, channel: &str) -> serde_json::Value {
    c.ok(&["channels", "--json"])
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|v| v["name"] == channel)
        .unwrap_or_else(|| panic!("{channel} is not listed"))
}

fn unix_ms() -> u64 {
    let since = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    u64::try_from(since.as_millis()).unwrap()
}

/// Sleeps until the wall clock reads `at` (Unix time in milliseconds), the clock the
/// clients stamp messages and lifetimes with.
fn sleep_until_unix_ms(at: u64) {
    std::thread::sleep(Duration::from_millis(at.saturating_sub(unix_ms())));
}

fn shows(c: &Client, channel: &str, text: &str) -> bool {
    c.texts(channel).iter().any(|(_, t)| t == text)
}

#[test]
fn a_disappearing_message_is_gone_from_both_members_view_and_disk_after_its_time() {
    let root = tempfile::tempdir().unwrap();
    let relay = RelayProc::start(&root.path().join("relay"), &[]);
    let [alice, bob] = people(root.path(), &relay, ["alice", "bob"]);
    channel_with_options(&alice, &[&bob], "brief", &["--disappear", "6s"]);
    // Bob learned the setting from the channel itself, not from alice's word.
    assert_eq!(channel_json(&bob, "brief")["disappear_after_s"], 6);

    alice.ok(&["send", "brief", "burn after reading"]);
    // And a file, which bob's `read` saves: that copy goes with its message too.
    let file = root.path().join("plan.txt");
    std::fs::write(&file, b"the plan, briefly").unwrap();
    alice.ok(&["send", "brief", "--file", file.to_str().unwrap()]);
    let saved_in = root.path().join("bob-files");
    bob.ok(&["read", "brief", "--save-to", saved_in.to_str().unwrap()]);
    assert_eq!(std::fs::read(saved_in.join("plan.txt")).unwrap(), b"the plan, briefly");
    assert!(shows(&bob, "brief", "burn after reading"));
    assert!(shows(&alice, "brief", "burn after reading"));
    assert!(contains(&store_bytes(&bob), b"burn after reading"));

    // A second past its time, by the sending client's own clock (the process may have
    // started well after this test asked for it on a loaded machine).
    let sent_ms = alice
        .messages("brief")
        .iter()
        .find(|m| m["text"] == "burn after reading")
        .and_then(|m| m["sent_at"].as_u64())
        .unwrap();
    sleep_until_unix_ms(sent_ms + 8_000);
    for who in [&alice, &bob] {
        assert!(!shows(who, "brief", "burn after reading"), "still shown");
        assert!(
            !contains(&store_bytes(who), b"burn after reading"),
            "still in the decrypted local store"
        );
    }

    assert!(
        !saved_in.join("plan.txt").exists(),
        "the saved file outlived its message"
    );

    // A message that reaches a member after its time is never shown there.
    alice.ok(&["send", "brief", "too late to read"]);
    std::thread::sleep(Duration::from_secs(7));
    bob.ok(&["sync"]);
    assert!(!shows(&bob, "brief", "too late to read"));
    assert!(!contains(&store_bytes(&bob), b"too late to read"));
    // The channel itself goes on.
    bob.ok(&["send", "brief", "still here"]);
    assert!(shows(&alice, "brief", "still here"));
}

/// An expiring channel closes itself for every member at its end, and its history goes,
/// also from a member removed before the end.
#[test]
fn an_expiring_channel_closes_itself_for_every_member() {
    let root = tempfile::tempdir().unwrap();
    let relay = RelayProc::start(&root.path().join("relay"), &[]);
    let [alice, bob, carol] = people(root.path(), &relay, ["alice", "bob", "carol"]);
    channel_with_options(&alice, &[&bob, &carol], "pop-up", &["--expires", "20s"]);
    let expires_at = channel_json(&bob, "pop-up")["expires_at"].as_u64().unwrap();
    assert_eq!(channel_json(&alice, "pop-up")["expires_at"], expires_at);
    bob.ok(&["send", "pop-up", "while it lasts"]);
    assert!(shows(&alice, "pop-up", "while it lasts"));
    // Carol reads it, then is removed before the end: her copy of the history must not
    // outlive the channel either (issue 17, point 6).
    assert!(shows(&carol, "pop-up", "while it lasts"));
    alice.ok(&["remove", "pop-up", "carol"]);
    carol.ok(&["sync"]);
    assert_eq!(channel_json(&carol, "pop-up")["status"], "removed");
    assert!(shows(&carol, "pop-up", "while it lasts"));
    let (a, b) = (mailbox(&alice, "pop-up"), mailbox(&bob, "pop-up"));
    assert!(unix_ms() < (expires_at - 1) * 1000, "setup took too long for this test");

    sleep_until_unix_ms((expires_at + 1) * 1000);
    let e = bob.fails(&["send", "pop-up", "after the end"]);
    assert!(e.contains("closed"), "{e}");
    alice.ok(&["sync"]);
    for who in [&alice, &bob, &carol] {
        assert_eq!(channel_json(who, "pop-up")["status"], "closed");
        assert!(!shows(who, "pop-up", "while it lasts"), "history kept after expiry");
        assert!(who.ok(&["read", "pop-up", "--all"]).contains("expired"));
    }
    assert!(!exists_at_relay(&a), "alice's mailbox is still at the relay");
    assert!(!exists_at_relay(&b), "bob's mailbox is still at the relay");
}

#[test]
fn closing_a_channel_wipes_it_for_every_member_and_deletes_its_mailboxes() {
    let root = tempfile::tempdir().unwrap();
    let relay = RelayProc::start(&root.path().join("relay"), &[]);
    let [alice, bob, carol] = people(root.path(), &relay, ["alice", "bob", "carol"]);
    channel_with(&alice, &[&bob, &carol], "deal");
    alice.ok(&["send", "deal", "the secret plan"]);
    for who in [&bob, &carol] {
        assert!(shows(who, "deal", "the secret plan"));
    }
    let boxes = [&alice, &bob, &carol].map(|c| mailbox(c, "deal"));
    for b in &boxes {
        assert!(exists_at_relay(b));
    }

    // Only an admin may close it: bob may not, until alice makes him one.
    let refused = bob.fails(&["close", "deal"]);
    assert!(
        refused.contains("only an admin of \"deal\" may close the channel"),
        "{refused}"
    );
    let made = alice.ok(&["admin", "deal", "bob"]);
    assert!(made.contains("bob is now an admin of deal"), "{made}");
    let listed = bob.ok(&["members", "deal"]);
    assert!(
        listed
            .lines()
            .any(|l| l.starts_with("bob (you)") && l.ends_with("\tadmin")),
        "{listed}"
    );
    // Bob closes it; alice and carol are wiped at their next sync.
    bob.ok(&["close", "deal"]);
    alice.ok(&["sync"]);
    carol.ok(&["sync"]);
    for who in [&alice, &bob, &carol] {
        assert_eq!(channel_json(who, "deal")["status"], "closed");
        let all = who.messages("deal");
        assert_eq!(all.len(), 1, "history kept after close: {all:?}");
        assert!(all[0]["text"].as_str().unwrap().contains("closed the channel"));
        assert!(!contains(&store_bytes(who), b"the secret plan"));
        let e = who.fails(&["send", "deal", "anyone?"]);
        assert!(e.contains("closed"), "{e}");
        let e = who.fails(&["members", "deal"]);
        assert!(e.contains("closed"), "{e}");
    }
    for b in &boxes {
        assert!(!exists_at_relay(b), "a closed channel's mailbox is still at the relay");
    }
}

/// Issue 17, point 5: a mailbox nobody opens for the relay's idle lifetime is deleted with
/// everything in it, and one in use never is. Here the lifetime is 3 s (90 days by
/// default): alice and bob keep syncing for three lifetimes, carol stops after joining.
/// Carol's channel mailbox and her drop box go; a letter to the drop box then fails
/// saying the drop box no longer exists, and alice is told her envelope to carol was not
/// delivered; alice's and bob's mailboxes and the channel's sequencer (which alice's key
/// updates claim at, as every member's weekly one does) are there: a message, a key update and an
/// answer all go through.
#[test]
fn a_mailbox_unused_for_the_relays_idle_lifetime_expires_and_one_in_use_never_does() {
    let root = tempfile::tempdir().unwrap();
    let relay = RelayProc::start(
        &root.path().join("relay"),
        &[
            "--idle-mailbox-lifetime",
            "3s",
            "--sweep-interval",
            "300ms",
            "--stats-interval",
            "500ms",
        ],
    );
    // Read at the relay as its operator could: carol's channel mailbox is gone, bob's is
    // there (the probe envelope it leaves is reported as forged, never shown).
    idle_mailboxes_expire_and_those_in_use_stay(root.path(), &relay, Duration::from_secs(9), |_, bob, carol| {
        assert!(
            !exists_at_relay(&mailbox(carol, "left")),
            "carol's idle channel mailbox is gone"
        );
        assert!(
            exists_at_relay(&mailbox(bob, "kept")),
            "bob's mailbox, in use, is there"
        );
    });
}

//! Channel integrity against a hostile member, an ex-member and a hostile host (the
//! attacks of docs/threat-model.md, "Insiders"), each played against real relays and
//! real clients driven through the binary.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
use backchannel_client::{ConnectError, RelayConnection};
use backchannel_core::frame::{claim_lock, commit_digest, ErrorCode, Request};
use backchannel_core::relay_address::RelayAddress;
use common::*;
use rand_core::{OsRng, RngCore};

/// What a member's device knows of a channel's sequencer.
struct Sequencer {
    relay: RelayAddress,
    send: [u8; 32],
    epoch: u64,
    key: [u8; 32],
}

fn sequencer(c: &Client, channel: &str) -> Sequencer {
    let v: serde_json::Value = serde_json::from_str(&c.ok(&["debug", "sequencer", channel])).unwrap();
    Sequencer {
        relay: v["relay"].as_str().unwrap().parse().unwrap(),
        send: unhex(v["send"].as_str().unwrap()).try_into().unwrap(),
        epoch: v["epoch"].as_u64().unwrap(),
        key: unhex(v["claim_key"].as_str().unwrap()).try_into().unwrap(),
    }
}

fn random() -> [u8; 32] {
    let mut b = [0u8; 32];
    OsRng.fill_bytes(&mut b);
    b
}

/// Finding 1 of the integrity review, reproduced by hand before the fix: a removed member's
/// old copy of its device sent one claim for the channel's next epoch, and from then on
/// every commit of every other member lost ("other members kept changing the channel"),
/// and with a leave pending nobody could send. Claims now show the epoch's claim key, which
/// a removed member never learns, and the removal moves the sequencer to a fresh mailbox the
/// copy does not know: each of the copy's claims is refused, and the members go on changing
/// and using the channel.
#[test]
fn a_removed_members_old_device_cannot_freeze_the_channel_with_a_claim() {
    let root = tempfile::tempdir().unwrap();
    let relay = RelayProc::start(&root.path().join("relay"), &[]);
    let [alice, bob, carol] = people(root.path(), &relay, ["alice", "bob", "carol"]);
    channel_with(&alice, &[&bob, &carol], "kept");
    // Carol keeps a copy of her device, with the epoch's claim key, before she is removed.
    let copy = carol.copy_as(root.path(), "carol-copy");
    let old = sequencer(&copy, "kept");
    alice.ok(&["remove", "kept", "carol"]);
    bob.ok(&["sync"]);
    let now = sequencer(&alice, "kept");
    assert_eq!(now.epoch, old.epoch + 1, "the removal is one commit");
    assert_ne!(now.send, old.send, "the removal moved the sequencer");
    assert_eq!(now.relay, old.relay, "to the same relay");

    // The copy claims the next epoch every way it can, at the only sequencer it knows
    // (locked to the epoch the copy never reached; alice, who made it, keeps it 2 days for the
    // commits it holds, then deletes it).
    rt().block_on(async {
        let mut c = RelayConnection::connect(&old.relay).await.unwrap();
        let token = c
            .request(&Request::Claim {
                send: old.send,
                epoch: now.epoch,
                token: random(),
            })
            .await;
        // (A claim without a commit is refused whatever it shows.)
        assert!(matches!(&token, Err(e) if e.is(ErrorCode::NoDeposit)), "{token:?}");
        // With the old epoch's key, or any other, for the current and later epochs.
        for (epoch, key) in [(now.epoch, old.key), (now.epoch, random()), (now.epoch + 1, old.key)] {
            let r = claim_with_garbage(&mut c, old.send, epoch, key).await;
            let refused = matches!(&r, Err(e) if e.is(ErrorCode::NoSuchMailbox) || e.is(ErrorCode::EpochConflict));
            assert!(refused, "epoch {epoch}: {r:?}");
        }
        // The new sequencer is named in the removal commit, which the copy can read (it
        // was sent to carol too, and the copy holds that epoch's keys). Alice locked it
        // to the new epoch's members before she sent that commit: a sequencer never
        // claimed would have taken the copy's claim as its first.
        for (epoch, key) in [(now.epoch, random()), (old.epoch, old.key), (now.epoch + 3, random())] {
            let r = claim_with_garbage(&mut c, now.send, epoch, key).await;
            let refused = matches!(&r, Err(e) if e.is(ErrorCode::NoSuchMailbox) || e.is(ErrorCode::EpochConflict));
            assert!(refused, "new sequencer, epoch {epoch}: {r:?}");
        }
    });
    // The copy's own client, run as its owner would, changes nothing either.
    let _ = copy.run(&["update", "kept"]);
    let _ = copy.run(&["send", "kept", "planted after removal"]);

    // The members go on: key updates, a removal and messages, in both directions.
    alice.ok(&["update", "kept"]);
    bob.ok(&["update", "kept"]);
    alice.ok(&["send", "kept", "still ours"]);
    bob.ok(&["send", "kept", "agreed"]);
    let both = vec![
        ("alice".to_string(), "still ours".to_string()),
        ("bob".to_string(), "agreed".to_string()),
    ];
    assert_eq!(bob.texts("kept"), both);
    assert_eq!(alice.texts("kept"), both);
    // Two key updates, and one mailbox rotation each that the removal made due.
    let later = sequencer(&bob, "kept");
    assert_eq!(later.epoch, sequencer(&alice, "kept").epoch);
    assert_eq!(later.epoch, now.epoch + 4);
    assert_eq!(later.send, now.send);

    // A claim as the protocol before keyed claims made it (a token, no key, no commit) at
    // the new sequencer: refused, as any claim without its commit.
    rt().block_on(async {
        let mut c = RelayConnection::connect(&later.relay).await.unwrap();
        let r = c
            .request(&Request::Claim {
                send: later.send,
                epoch: later.epoch,
                token: random(),
            })
            .await;
        assert!(matches!(&r, Err(e) if e.is(ErrorCode::NoDeposit)), "{r:?}");
    });
}

/// Claims `epoch` at the sequencer `send` with `key`, carrying a commit of random bytes,
/// as a hostile client would: the claim's own answer.
async fn claim_with_garbage(
    c: &mut RelayConnection,
    send: [u8; 32],
    epoch: u64,
    key: [u8; 32],
) -> Result<(), ConnectError> {
    let garbage = random().to_vec();
    let mut answers = c
        .pipeline(&[
            Request::Deposit {
                part: 0,
                total: 1,
                bytes: garbage.clone(),
            },
            Request::ClaimCommit {
                send,
                epoch,
                key,
                next: claim_lock(&random()),
                digest: commit_digest(&garbage),
            },
        ])
        .await?;
    let claim = answers.pop().expect("two answers");
    answers.pop().expect("two answers")?;
    claim.map(|_| ())
}

/// Finding 1, second half: a member who is still in the channel wins its next epoch with a
/// commit that nobody can read (claim keys cannot prevent it: the relay holds no secret of
/// the channel). Until the channel's first admin moves it on, a member's changes there wait
/// with a warning that says why and who moves it on, and the member's other channels work
/// (a failed channel used to stop the whole sync). Then the first admin's next change
/// moves the channel to a new sequencer, and everyone goes on together. And a claim without
/// its commit is refused.
#[test]
fn a_refused_winner_holds_a_channel_up_until_its_first_admin_moves_it_on() {
    let root = tempfile::tempdir().unwrap();
    let relay = RelayProc::start(&root.path().join("relay"), &[]);
    let [alice, bob, carol, mallory] = people(root.path(), &relay, ["alice", "bob", "carol", "mallory"]);
    channel_with(&alice, &[&bob, &carol, &mallory], "frozen");
    channel_with(&alice, &[&bob], "other");
    let before = sequencer(&mallory, "frozen");
    rt().block_on(async {
        let mut c = RelayConnection::connect(&before.relay).await.unwrap();
        // A claim without a commit is worth nothing: refused.
        let bare = c
            .request(&Request::ClaimKeyed {
                send: before.send,
                epoch: before.epoch,
                key: before.key,
                next: claim_lock(&random()),
            })
            .await;
        assert!(matches!(&bare, Err(e) if e.is(ErrorCode::NoDeposit)), "{bare:?}");
        // Mallory wins the next epoch of "frozen" with garbage for a commit.
        claim_with_garbage(&mut c, before.send, before.epoch, before.key)
            .await
            .unwrap();
    });
    // Carol leaves: bob has a proposal to commit in "frozen", which cannot be yet.
    carol.ok(&["leave", "frozen"]);
    let r = bob.run(&["send", "other", "the other channel works"]);
    assert!(r.ok, "{}", r.stderr);
    assert!(
        r.stderr.contains("warning:")
            && r.stderr.contains("cannot change for now")
            && r.stderr.contains("alice, its first admin"),
        "the held-up channel is reported, with why and who moves it on: {}",
        r.stderr
    );
    // With carol's leave waiting, MLS lets bob seal no message there: his is kept, and
    // goes once a commit carries the leave. A change there says why it cannot be made.
    let r = bob.run(&["send", "frozen", "still goes"]);
    assert!(
        !r.ok && r.stderr.contains("queued") && r.stderr.contains("waiting"),
        "{}",
        r.stderr
    );
    let e = bob.fails(&["update", "frozen"]);
    assert!(e.contains("frozen") && e.contains("alice, its first admin"), "{e}");

    // Alice, the first admin, commits carol's leave at her next sync, on a new sequencer
    // claimed there only.
    let r = alice.run(&["read", "other"]);
    assert!(r.ok, "{}", r.stderr);
    assert!(r.stdout.contains("the other channel works"), "{}", r.stdout);
    assert!(r.stderr.contains("new sequencer"), "{}", r.stderr);
    let after = sequencer(&alice, "frozen");
    assert_ne!(after.send, before.send, "a new sequencer");
    assert_eq!(after.relay, before.relay, "on the same relay");
    // The move with carol's leave, and the rotation of alice's mailbox that a removal makes due.
    assert_eq!(after.epoch, before.epoch + 2);
    bob.ok(&["sync"]);
    alice.ok(&["send", "frozen", "moved on"]);
    let events = alice.messages("frozen");
    assert!(
        events
            .iter()
            .any(|m| m["event"] == "rejected" && m["text"].as_str().unwrap().contains("new sequencer")),
        "alice's history says what she did: {events:?}"
    );
    // Everyone still in goes on together: messages, a key update by a member, one code.
    bob.ok(&["send", "frozen", "works again"]);
    bob.ok(&["update", "frozen"]);
    mallory.ok(&["sync"]);
    alice.ok(&["sync"]);
    let texts = vec![
        ("bob".to_string(), "still goes".to_string()),
        ("alice".to_string(), "moved on".to_string()),
        ("bob".to_string(), "works again".to_string()),
    ];
    assert_eq!(alice.texts("frozen"), texts);
    assert_eq!(bob.texts("frozen"), texts);
    let members = bob.ok(&["members", "frozen"]);
    assert!(!members.contains("carol"), "{members}");
    let codes: Vec<String> = [&alice, &bob, &mallory]
        .iter()
        .map(|c| c.ok(&["verify", "frozen"]))
        .collect();
    assert!(codes.iter().all(|c| *c == codes[0]), "{codes:?}");
}

/// The first admin removes the member who won the epoch with garbage: the removal itself
/// moves the channel to a new sequencer, claimed there first, so the removed member never
/// gets a chance at it.
#[test]
fn the_first_admin_removes_a_member_who_won_the_epoch_with_garbage() {
    let root = tempfile::tempdir().unwrap();
    let relay = RelayProc::start(&root.path().join("relay"), &[]);
    let [alice, bob, mallory] = people(root.path(), &relay, ["alice", "bob", "mallory"]);
    channel_with(&alice, &[&bob, &mallory], "room");
    let before = sequencer(&mallory, "room");
    rt().block_on(async {
        let mut c = RelayConnection::connect(&before.relay).await.unwrap();
        claim_with_garbage(&mut c, before.send, before.epoch, before.key)
            .await
            .unwrap();
    });
    // Bob, not an admin, is told who moves the channel on.
    let e = bob.fails(&["update", "room"]);
    assert!(
        e.contains("cannot change for now") && e.contains("alice, its first admin"),
        "{e}"
    );
    let r = alice.run(&["remove", "room", "mallory"]);
    assert!(r.ok, "{}", r.stderr);
    let after = sequencer(&alice, "room");
    assert_eq!(after.epoch, before.epoch + 1, "the removal is the move: one commit");
    assert_ne!(after.send, before.send);
    bob.ok(&["sync"]);
    let members = bob.ok(&["members", "room"]);
    assert!(!members.contains("mallory"), "{members}");
    bob.ok(&["update", "room"]);
    alice.ok(&["sync"]);
    assert_eq!(alice.ok(&["verify", "room"]), bob.ok(&["verify", "room"]));
    // Mallory, removed, cannot claim at the new sequencer with what she held.
    rt().block_on(async {
        let mut c = RelayConnection::connect(&after.relay).await.unwrap();
        for epoch in [after.epoch, after.epoch + 1] {
            let r = claim_with_garbage(&mut c, after.send, epoch, before.key).await;
            let refused = matches!(&r, Err(e) if e.is(ErrorCode::NoSuchMailbox) || e.is(ErrorCode::EpochConflict));
            assert!(refused, "epoch {epoch}: {r:?}");
        }
    });
}

/// Finding 3, the channel code: `backchannel verify CHANNEL` (no member) prints the epoch
/// and 30 digits, the same on every member's device in one epoch, and new after each
/// change (that it differs across a split channel is
/// `channel_sim::the_channel_code_is_shared_by_one_channel_and_differs_across_a_split`).
#[test]
fn every_member_sees_the_same_channel_code() {
    let root = tempfile::tempdir().unwrap();
    let relay = RelayProc::start(&root.path().join("relay"), &[]);
    let [alice, bob, carol] = people(root.path(), &relay, ["alice", "bob", "carol"]);
    channel_with(&alice, &[&bob, &carol], "room");
    let codes = || -> Vec<String> {
        [&alice, &bob, &carol]
            .iter()
            .map(|c| c.ok(&["verify", "room"]).trim().to_string())
            .collect()
    };
    let first = codes();
    assert!(first.iter().all(|c| *c == first[0]), "{first:?}");
    let (epoch, digits) = first[0].split_once(": ").unwrap();
    assert!(epoch.starts_with("epoch "), "{epoch}");
    let groups: Vec<&str> = digits.split(' ').collect();
    assert_eq!(groups.len(), 6, "{digits}");
    assert!(groups
        .iter()
        .all(|g| g.len() == 5 && g.bytes().all(|b| b.is_ascii_digit())));

    carol.ok(&["update", "room"]);
    let second = codes();
    assert!(second.iter().all(|c| *c == second[0]), "{second:?}");
    assert_ne!(second[0], first[0]);
    // Naming a member still gives the safety number; --confirm needs a member.
    assert_eq!(alice.ok(&["verify", "room", "bob"]).trim().split(' ').count(), 12);
    alice.fails(&["verify", "room", "--confirm"]);
}

/// Finding 6: a daemon's stderr is often a system log, so a failed background sync writes
/// a fixed line there; what failed (which can name a channel, a path or a relay) is shown to
/// the next command instead.
#[test]
fn a_daemons_failed_sync_names_nothing_in_its_log() {
    let root = tempfile::tempdir().unwrap();
    let mut relay = RelayProc::start(&root.path().join("relay"), &[]);
    let [alice, bob] = people(root.path(), &relay, ["alice", "bob"]);
    channel_with(&alice, &[&bob], "merger-talks");
    let daemon = DaemonProc::start(&alice, &[]);
    relay.kill9();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !daemon.stderr.lock().unwrap().contains("background sync failed") {
        assert!(std::time::Instant::now() < deadline, "no warning from the daemon");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let log = daemon.stderr.lock().unwrap().clone();
    for secret in ["merger-talks", "127.0.0.1", &relay.port.to_string()] {
        assert!(!log.contains(secret), "{secret} in the daemon's log: {log}");
    }
    let r = alice.run(&["channels"]);
    assert!(
        r.stderr.contains("a background sync failed: the relay at"),
        "the next command says why: {}",
        r.stderr
    );
}

/// Finding 5 (part): a removal committed on someone else's behalf is shown with who asked
/// for it. Bob leaves; alice's client commits his leave; carol is told that bob left, not
/// that alice removed him.
#[test]
fn a_leave_committed_by_another_member_says_who_left() {
    let root = tempfile::tempdir().unwrap();
    let relay = RelayProc::start(&root.path().join("relay"), &[]);
    let [alice, bob, carol] = people(root.path(), &relay, ["alice", "bob", "carol"]);
    channel_with(&alice, &[&bob, &carol], "room");
    let _ = carol.run(&["read", "room"]);
    bob.ok(&["leave", "room"]);
    alice.ok(&["sync"]);
    let events: Vec<String> = carol
        .messages("room")
        .into_iter()
        .filter(|m| m["event"] == "removed")
        .map(|m| m["text"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(events, vec!["bob left".to_string()]);
}

/// Finding 3: the relay's operator drops one of alice's messages for bob (deletes it from
/// the store) and delivers the rest. Bob's `read` says at once that a message from alice is
/// missing (a warning, and a loud `missing` event in the history); alice, who lost nothing,
/// sees no such event.
#[test]
fn a_message_the_relay_drops_is_shown_as_missing() {
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("relay");
    let mut relay = RelayProc::start(&data, &[]);
    let [alice, bob] = people(root.path(), &relay, ["alice", "bob"]);
    channel_with(&alice, &[&bob], "watched");
    let v: serde_json::Value = serde_json::from_str(&bob.ok(&["debug", "mailbox", "watched"])).unwrap();
    let bob_box: [u8; 32] = unhex(v["mailbox"].as_str().unwrap()).try_into().unwrap();
    alice.ok(&["send", "watched", "one"]);
    assert_eq!(bob.texts("watched").len(), 1);
    alice.ok(&["send", "watched", "two: the figure is 4.2M"]);
    relay.kill9();
    assert_eq!(drop_newest_envelope(&data, bob_box), 1, "the message waited for bob");
    let listen = format!("127.0.0.1:{}", relay.port);
    let _relay = RelayProc::start_on(&data, &listen, &[]);
    alice.ok(&["send", "watched", "three"]);

    let r = bob.run(&["read", "watched", "--json"]);
    assert!(r.ok, "{}", r.stderr);
    assert!(
        r.stderr.contains("a message from alice is missing"),
        "said at once: {}",
        r.stderr
    );
    let shown: Vec<serde_json::Value> = r.stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let missing: Vec<&serde_json::Value> = shown.iter().filter(|m| m["event"] == "missing").collect();
    assert_eq!(missing.len(), 1, "{shown:?}");
    assert_eq!(missing[0]["text"], "a message from alice is missing");
    assert_eq!(
        bob.texts("watched"),
        [
            ("alice".to_string(), "one".to_string()),
            ("alice".to_string(), "three".to_string())
        ]
    );
    let human = bob.ok(&["read", "watched", "--all"]);
    assert!(human.contains("!! a message from alice is missing"), "{human}");
    assert!(alice.messages("watched").iter().all(|m| m["event"] != "missing"));
}

/// Finding 5: roles. The creator is the channel's admin; a member who is not may leave and
/// update, not remove, invite or close (unless the channel lets members invite); `members`
/// shows who is what; the last admin cannot leave while others stay, and hands over with
/// `admin`. (A hostile member's client that sends what its role forbids anyway is played in
/// `channel::tests::a_member_who_is_not_an_admin_cannot_remove_invite_or_take_roles`.)
#[test]
fn admins_remove_invite_and_close_members_leave_and_update() {
    let root = tempfile::tempdir().unwrap();
    let relay = RelayProc::start(&root.path().join("relay"), &[]);
    let [alice, bob, carol, dave] = people(root.path(), &relay, ["alice", "bob", "carol", "dave"]);
    channel_with(&alice, &[&bob, &carol], "board");
    let roles = |c: &Client| -> Vec<(String, String)> {
        c.ok(&["members", "board", "--json"])
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                (
                    v["name"].as_str().unwrap().to_string(),
                    v["role"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    };
    let expected = |admins: &[&str], members: &[&str]| {
        let mut v: Vec<(String, String)> = admins
            .iter()
            .map(|n| (n.to_string(), "admin".to_string()))
            .chain(members.iter().map(|n| (n.to_string(), "member".to_string())))
            .collect();
        v.sort();
        v
    };
    let sorted = |mut v: Vec<(String, String)>| {
        v.sort();
        v
    };
    assert_eq!(sorted(roles(&carol)), expected(&["alice"], &["bob", "carol"]));
    // Each member's relay is listed (issue 16, point 3): here everyone's is the one relay.
    for line in carol.ok(&["members", "board", "--json"]).lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(v["relay"], relay.address, "{v}");
    }

    for (args, what) in [
        (vec!["remove", "board", "carol"], "remove members"),
        (vec!["invite", "board"], "invite"),
        (vec!["close", "board"], "close the channel"),
        (vec!["admin", "board", "bob"], "make or unmake admins"),
    ] {
        let e = bob.fails(&args);
        assert!(e.contains(&format!("only an admin of \"board\" may {what}")), "{e}");
    }
    bob.ok(&["update", "board"]);
    bob.ok(&["send", "board", "members still talk"]);

    // The last admin cannot leave while others stay; she hands over first.
    let e = alice.fails(&["leave", "board"]);
    assert!(e.contains("you are the last admin of \"board\""), "{e}");
    assert!(alice
        .ok(&["admin", "board", "bob"])
        .contains("bob is now an admin of board"));
    carol.ok(&["sync"]);
    assert_eq!(sorted(roles(&carol)), expected(&["alice", "bob"], &["carol"]));
    assert!(carol
        .messages("board")
        .iter()
        .any(|m| m["text"] == "alice made bob an admin" && m["event"] == "role"));
    alice.ok(&["leave", "board"]);
    bob.ok(&["sync"]);
    assert!(bob
        .ok(&["remove", "board", "carol"])
        .contains("removed carol from board"));
    assert_eq!(sorted(roles(&bob)), expected(&["bob"], &[]));

    // A channel whose members may invite: dave is invited by carol, who is not an admin.
    channel_with_options(&alice, &[&carol], "open", &["--members-invite"]);
    let invite = carol.ok(&["invite", "open"]);
    dave.ok(&["join", invite.trim()]);
    carol.ok(&["sync"]);
    dave.ok(&["sync", "--wait", "5"]);
    alice.ok(&["sync"]);
    assert_eq!(member_names(&alice, "open"), ["alice", "carol", "dave"]);
    assert!(carol.fails(&["remove", "open", "dave"]).contains("only an admin"));
}

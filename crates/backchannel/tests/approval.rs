//! Approval of joiners (issue 18, point 2; docs/protocol.md, "Approval"): with
//! `invite --approve`, or in a channel made with `channel new --approve`, a joiner waits
//! until the inviter admits it (`pending`, `admit`, `refuse`); WHO is a name or the start of
//! a fingerprint, and a name that is also another's is refused.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
use common::*;

/// `init` by `c` under `name`: its fingerprint, without spaces.
fn init(c: &Client, name: &str, relay: &str) -> String {
    init_with_fingerprint(c, name, relay).replace(' ', "")
}

/// `pending CHANNEL`: (name, fingerprint without spaces) per waiting joiner.
fn pending(c: &Client, channel: &str) -> Vec<(String, String)> {
    c.ok(&["pending", channel])
        .lines()
        .map(|l| {
            let mut f = l.split('\t');
            (f.next().unwrap().to_string(), f.next().unwrap().replace(' ', ""))
        })
        .collect()
}

fn is_member(c: &Client) -> bool {
    c.ok(&["sync", "--wait", "3"]);
    c.ok(&["channels"]).contains("talk")
}

#[test]
fn joiners_wait_for_approval_and_an_ambiguous_name_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let relay = RelayProc::start(&root.join("relay"), &[]);
    let alice = Client::new(root, "alice");
    init(&alice, "alice", &relay.address);
    let bob = Client::new(root, "bob");
    let bob_fp = init(&bob, "bob", &relay.address);
    let carol = Client::new(root, "carol");
    init(&carol, "carol", &relay.address);
    // Another person who also calls herself bob.
    let other_bob = Client::new(root, "other-bob");
    let other_fp = init(&other_bob, "bob", &relay.address);

    alice.ok(&["channel", "new", "talk"]);
    let invite = alice.ok(&["invite", "talk", "--approve", "--uses", "3"]);
    for c in [&bob, &carol, &other_bob] {
        c.ok(&["join", invite.trim()]);
    }
    // Alice's next command reads the requests; nobody is admitted, she is told who waits.
    let synced = alice.run(&["sync"]);
    assert!(synced.ok);
    assert_eq!(
        synced.stderr.matches("waits for approval").count(),
        3,
        "{}",
        synced.stderr
    );
    assert_eq!(member_names(&alice, "talk"), vec!["alice"]);
    let mut waiting = pending(&alice, "talk");
    waiting.sort();
    let mut expected = vec![
        ("bob".to_string(), bob_fp[..32].to_string()),
        ("bob".to_string(), other_fp[..32].to_string()),
        (
            "carol".to_string(),
            waiting.iter().find(|w| w.0 == "carol").unwrap().1.clone(),
        ),
    ];
    expected.sort();
    assert_eq!(waiting, expected);
    assert!(!is_member(&bob));

    // Two wait under the name bob: the name is refused, the fingerprint is asked for.
    let ambiguous = alice.fails(&["admit", "talk", "bob"]);
    assert!(ambiguous.contains("names more than one person"), "{ambiguous}");
    assert_eq!(alice.ok(&["admit", "talk", &bob_fp[..8]]).trim(), "admitted bob");
    assert!(is_member(&bob));
    assert_eq!(member_names(&alice, "talk"), vec!["alice", "bob"]);

    // Refused: carol is not let in, and no longer waits.
    assert_eq!(alice.ok(&["refuse", "talk", "carol"]).trim(), "refused carol");
    assert!(!is_member(&carol));
    alice.ok(&["sync"]);
    assert_eq!(member_names(&alice, "talk"), vec!["alice", "bob"]);

    // The other bob waits under a member's name: the name is refused again.
    assert_eq!(pending(&alice, "talk").len(), 1);
    let ambiguous = alice.fails(&["admit", "talk", "bob"]);
    assert!(ambiguous.contains("names more than one person"), "{ambiguous}");
    let unknown = alice.fails(&["admit", "talk", "dave"]);
    assert!(unknown.contains("nobody called \"dave\" waits"), "{unknown}");
    // A member who may not add members may not admit either.
    let not_allowed = bob.fails(&["admit", "talk", &other_fp[..8]]);
    assert!(not_allowed.contains("admit"), "{not_allowed}");
    assert_eq!(alice.ok(&["admit", "talk", &other_fp[..8]]).trim(), "admitted bob");
    assert!(is_member(&other_bob));
    assert_eq!(member_names(&alice, "talk"), vec!["alice", "bob", "bob"]);
    assert!(pending(&alice, "talk").is_empty());

    // A plain invite to the same channel admits as before.
    let dave = Client::new(root, "dave");
    init(&dave, "dave", &relay.address);
    let plain = alice.ok(&["invite", "talk"]);
    dave.ok(&["join", plain.trim()]);
    alice.ok(&["sync"]);
    assert!(member_names(&alice, "talk").contains(&"dave".to_string()));
}

/// `channel new --approve`: every invite's joiners wait, whoever made the invite and
/// whatever it says.
#[test]
fn a_channel_made_with_approve_holds_every_joiner() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let relay = RelayProc::start(&root.join("relay"), &[]);
    let [alice, bob, carol] = people(root, &relay, ["alice", "bob", "carol"]);
    let made = alice.ok(&["channel", "new", "talk", "--approve", "--members-invite"]);
    assert!(made.contains("waits for approval"), "{made}");
    let invite = alice.ok(&["invite", "talk"]);
    bob.ok(&["join", invite.trim()]);
    alice.ok(&["sync"]);
    assert_eq!(member_names(&alice, "talk"), vec!["alice"]);
    assert_eq!(alice.ok(&["admit", "talk", "bob"]).trim(), "admitted bob");
    assert!(is_member(&bob));

    // Bob (a member, who may invite here) invites carol with a plain invite: she waits
    // for bob, who admits her.
    let invite = bob.ok(&["invite", "talk"]);
    carol.ok(&["join", invite.trim()]);
    bob.ok(&["sync"]);
    assert_eq!(pending(&bob, "talk").len(), 1);
    assert!(!is_member(&carol));
    assert_eq!(bob.ok(&["admit", "talk", "carol"]).trim(), "admitted carol");
    assert!(is_member(&carol));
    alice.ok(&["sync"]);
    assert_eq!(member_names(&alice, "talk"), vec!["alice", "bob", "carol"]);
}

/// A joiner waits no longer than the invite it came by: once that expires, it is dropped
/// from the list with a warning, and nobody is admitted by it.
#[test]
fn a_joiner_waits_no_longer_than_its_invite() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let relay = RelayProc::start(&root.join("relay"), &[]);
    let [alice, bob] = people(root, &relay, ["alice", "bob"]);
    alice.ok(&["channel", "new", "talk"]);
    let invite = alice.ok(&["invite", "talk", "--approve", "--expires", "3s"]);
    bob.ok(&["join", invite.trim()]);
    alice.ok(&["sync"]);
    assert_eq!(pending(&alice, "talk").len(), 1);
    std::thread::sleep(std::time::Duration::from_secs(4));
    let r = alice.run(&["sync"]);
    assert!(r.ok, "{}", r.stderr);
    assert!(r.stderr.contains("bob no longer waits for approval"), "{}", r.stderr);
    assert!(pending(&alice, "talk").is_empty());
    let late = alice.fails(&["admit", "talk", "bob"]);
    assert!(late.contains("nobody called \"bob\" waits"), "{late}");
    assert_eq!(member_names(&alice, "talk"), vec!["alice"]);
}

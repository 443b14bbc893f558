//! A relay on a NATS JetStream cluster (`--store nats`) upgraded in place: the streams
//! that an earlier release's relay wrote (envelopes waiting, mailbox and drop box
//! records, a sequencer's claims, the relay identity) are served by this release's relay
//! on the same cluster, to the homes that release left. The fixture set
//! tests/fixtures/release-<commit>-nats/ was made by scripts/make-nats-fixtures.sh with
//! the binary of the release it names; its README lists what it holds, which is what this
//! test checks.
//!
//! Needs `nats-server`, which the first NATS test installs when it is missing.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
use std::net::TcpListener;
use std::time::{Duration, Instant};

use common::fixtures::*;
use common::nats::{require_nats, NatsCluster};
use common::RelayProc;

/// The fixed address the fixture's relay listened on: the homes hold it.
const LISTEN: &str = "127.0.0.1:29472";

/// Holds the fixture's port for this process (another run of this test, say in another
/// worktree, waits). Released on drop.
fn hold_port() -> std::fs::File {
    take_lock("backchannel-nats-fixture-port.lock")
}

/// Binds the fixture's port, waiting while something else has it (a node of another
/// test's cluster may, for a while: those take ports below 32768 too). Held while this
/// test's own cluster chooses its ports, so that none of them takes it.
fn reserve_port() -> TcpListener {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        match TcpListener::bind(LISTEN) {
            Ok(l) => return l,
            Err(e) => assert!(Instant::now() < deadline, "{LISTEN} stayed in use for 5 minutes: {e}"),
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Texts of `drop read --json` lines.
fn letter_texts(lines: &str) -> Vec<String> {
    lines
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["text"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect()
}

/// What differs between two fixture sets of the same story: who made them, and the keys.
struct Release {
    /// The commit that made the set.
    commit: &'static str,
    relay_address: &'static str,
    alice_fingerprint: &'static str,
    bob_fingerprint: &'static str,
}

/// The set made by the relay of commit 94ba14f on a three-node cluster (its streams'
/// records of that release: claim records of 40 bytes, streams without the later
/// subjects and bounds; see its README.md).
#[test]
fn the_streams_left_by_the_relay_of_release_94ba14f_are_served_by_this_relay() {
    served_by_this_relay(&Release {
        commit: "94ba14f",
        relay_address: "bc://ycvtu2k67zeyayazkutf3qjdqvcvojedzb27mvsettbam57cqbia@127.0.0.1:29472",
        alice_fingerprint: "7134 b563 acce 9e6b 6b48 71a2 d28c 69e4",
        bob_fingerprint: "7fd1 6693 08d2 07f6 5960 43a4 1f28 9fea",
    });
}

/// The story of scripts/make-nats-fixtures.sh, as a release's relay left it on the
/// cluster, served by this release's relay.
fn served_by_this_relay(release: &Release) {
    const NOTES_SHA256: &str = "4585f2c0e2ef713294561f7b470e48e3dce2d5c75fb29eb4f37c9fec27139e1c";
    let bin = require_nats();

    let set = fixture(&format!("release-{}-nats", release.commit));
    let readme = std::fs::read_to_string(set.join("README.md")).unwrap();
    assert!(
        readme.contains(release.relay_address),
        "the README records another relay address"
    );
    assert_eq!(
        std::fs::read_to_string(set.join("relay-address.txt")).unwrap().trim(),
        release.relay_address
    );
    let root = tempfile::tempdir().unwrap();
    copy_dir(&set, root.path());
    let out = root.path().join("out");
    let out_s = out.to_str().unwrap();

    // The release's cluster again, on copies of its nodes' stores (fresh ports: the stores
    // do not record them), then this release's relay on the fixture's port. A relay on
    // NATS keeps its identity in the cluster, so the same PIN, the same address, tells
    // that it read what the release wrote.
    let _port = hold_port();
    let reserved = reserve_port();
    let stores = ["n1", "n2", "n3"].map(|n| root.path().join("nats").join(n));
    let cluster = NatsCluster::start_with_stores(&bin, &stores);
    drop(reserved);
    let mut args: Vec<String> = [
        "--store",
        "nats",
        "--nats-replicas",
        "3",
        "--envelope-ttl",
        "36500d",
        "--stats-interval",
        "1s",
    ]
    .map(String::from)
    .to_vec();
    for url in cluster.urls() {
        args.extend(["--nats".to_string(), url]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let relay = RelayProc::start_on(&root.path().join("relay-data"), LISTEN, &args);
    assert_eq!(
        relay.address, release.relay_address,
        "the relay did not find the identity the release stored in the cluster"
    );

    let alice = home(root.path(), "alice");
    let bob = home(root.path(), "bob");
    let source = home(root.path(), "source-without-home");
    let receipt = |n: u8| {
        std::fs::read_to_string(root.path().join(format!("source/receipt-{n}.txt")))
            .unwrap()
            .trim()
            .to_string()
    };

    // Bob: what waited for him at the relay is shown, once, from alice; the file is whole.
    let unread = bob.ok(&["read", "deal-room", "--json", "--save-to", out_s]);
    assert_eq!(
        said(&unread),
        pairs(&[
            ("alice", "first look: the valuation is too high"),
            ("alice", "second: we need the audited accounts"),
            ("alice", "sent a file: notes.txt (2.9 KiB)"),
        ]),
        "{unread}"
    );
    for line in unread.lines() {
        let m: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(m["from_fingerprint"], release.alice_fingerprint, "{m}");
    }
    let notes = std::fs::read(out.join("notes.txt")).unwrap();
    assert_eq!(notes, pattern("notes line", 3000));
    assert_eq!(sha256_hex(&notes), NOTES_SHA256);
    let again = bob.ok(&["read", "deal-room", "--json"]);
    assert!(said(&again).is_empty(), "shown twice: {again}");
    let history = pairs(&[
        ("alice", "welcome to the deal room"),
        ("bob", "glad to be here"),
        ("alice", "first look: the valuation is too high"),
        ("alice", "second: we need the audited accounts"),
        ("alice", "sent a file: notes.txt (2.9 KiB)"),
    ]);
    assert_eq!(bob.texts("deal-room"), history);

    // Alice: nothing unread in the channel; letters 2 (with its attachment) and 3 waited
    // at the relay, at a drop box whose record demands proof of work.
    let unread = alice.ok(&["read", "deal-room", "--json"]);
    assert!(said(&unread).is_empty(), "{unread}");
    assert_eq!(alice.texts("deal-room"), history);
    let letters_dir = root.path().join("letters");
    let letters = alice.ok(&[
        "drop",
        "read",
        "tips-line",
        "--json",
        "--save-to",
        letters_dir.to_str().unwrap(),
    ]);
    assert_eq!(
        letter_texts(&letters),
        ["a scan of the first page", "a third letter, still at the relay"],
        "{letters}"
    );
    let letters: Vec<serde_json::Value> = letters.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let scan = letters[0]["file"].as_str().unwrap();
    assert_eq!(std::fs::read(scan).unwrap(), b"page one of the ledger, line by line\n");
    assert!(letters[1]["file"].is_null());
    assert!(
        alice.ok(&["drop", "read", "tips-line", "--json"]).trim().is_empty(),
        "a letter shown twice"
    );
    assert_eq!(
        letter_texts(&alice.ok(&["drop", "read", "tips-line", "--all", "--json"])),
        [
            "the ledger is in locker 12",
            "a scan of the first page",
            "a third letter, still at the relay"
        ]
    );
    // The reply alice wrote to letter 1 waited at the relay for its source, once.
    assert_eq!(
        source.ok(&["drop", "check", "--direct", &receipt(1)]).trim(),
        "received; do not come to the office"
    );
    assert!(source.ok(&["drop", "check", "--direct", &receipt(1)]).trim().is_empty());
    assert!(!source.home.exists(), "drop check made a home");

    // And everything keeps working: both change their keys (claims at the sequencer whose
    // record the release wrote), then a message each way, each shown once.
    alice.ok(&["update", "deal-room"]);
    bob.ok(&["update", "deal-room"]);
    alice.ok(&["send", "deal-room", "alice, after the upgrade"]);
    let got = bob.ok(&["read", "deal-room", "--json"]);
    assert_eq!(said(&got), pairs(&[("alice", "alice, after the upgrade")]), "{got}");
    bob.ok(&["send", "deal-room", "bob, after the upgrade"]);
    let got = alice.ok(&["read", "deal-room", "--json"]);
    assert_eq!(said(&got), pairs(&[("bob", "bob, after the upgrade")]), "{got}");
    let carried: serde_json::Value = serde_json::from_str(got.lines().last().unwrap()).unwrap();
    assert_eq!(carried["from_fingerprint"], release.bob_fingerprint, "{carried}");
    let mut after = history.clone();
    after.extend(pairs(&[
        ("alice", "alice, after the upgrade"),
        ("bob", "bob, after the upgrade"),
    ]));
    assert_eq!(alice.texts("deal-room"), after);
    assert_eq!(bob.texts("deal-room"), after);

    // The drop box takes a new letter, and a reply reaches letter 2's source.
    let drop_address = std::fs::read_to_string(root.path().join("source/drop-address.txt")).unwrap();
    source.ok(&[
        "drop",
        "send",
        "--direct",
        drop_address.trim(),
        "a fourth letter, after the upgrade",
    ]);
    assert_eq!(
        letter_texts(&alice.ok(&["drop", "read", "tips-line", "--json"])),
        ["a fourth letter, after the upgrade"]
    );
    let second = letters[0]["id"].as_str().unwrap();
    alice.ok(&["drop", "reply", "tips-line", second, "thank you for the scan"]);
    assert_eq!(
        source.ok(&["drop", "check", "--direct", &receipt(2)]).trim(),
        "thank you for the scan"
    );
    drop(relay);
    drop(cluster);
}

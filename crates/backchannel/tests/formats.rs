//! Formats that last: what an earlier release left on disk (a relay's data
//! directory, two homes, a courier bundle) opens, reads and keeps working with
//! this code. Each fixture set under tests/fixtures/ was made by
//! scripts/make-fixtures.sh with the binary of the release it names; its README
//! lists what it holds, which is what this test checks.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
use std::path::Path;
use std::time::{Duration, Instant};

use common::fixtures::*;
use common::*;

/// The fixed address the fixture's relay listened on: the homes hold it.
const LISTEN: &str = "127.0.0.1:29471";

/// Holds the fixture's port for this process: every fixture set's relay listens on the
/// same one, and the tests of two sets run in parallel processes. Released on drop.
fn hold_port() -> std::fs::File {
    let lock = take_lock("backchannel-fixture-port.lock");
    wait_for_port();
    lock
}

/// Waits until nothing listens on the fixture's port (another run of this test, in
/// another worktree, may hold it for a while).
fn wait_for_port() {
    let deadline = Instant::now() + Duration::from_secs(300);
    while std::net::TcpStream::connect(LISTEN).is_ok() {
        assert!(Instant::now() < deadline, "{LISTEN} stayed in use for 5 minutes");
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// What differs between two fixture sets of the same story: who made them, and the keys.
struct Release {
    /// The commit that made the set.
    commit: &'static str,
    relay_address: &'static str,
    alice_fingerprint: &'static str,
    bob_fingerprint: &'static str,
}

/// The set made by the release at commit 94ba14f (state layout 5, mailbox records of
/// version 1, sequencers without a lock; see its README.md).
#[test]
fn the_state_left_by_release_94ba14f_opens_reads_and_keeps_working() {
    opens_reads_and_keeps_working(&Release {
        commit: "94ba14f",
        relay_address: "bc://jbysz3mufz2z54mnlrfnvdgn37w72ut4ms7rdtadczu4gbtz2r2q@127.0.0.1:29471",
        alice_fingerprint: "e7a1 4abf c072 ecd5 0369 1edb 7eda bed0",
        bob_fingerprint: "a8c9 4d92 8093 b254 6513 d76b b0aa 4fbb",
    });
}

/// The set made by the release at commit 8ae7932 (state layout 6, mailbox records of
/// version 2, locked sequencers; see its README.md).
#[test]
fn the_state_left_by_release_8ae7932_opens_reads_and_keeps_working() {
    opens_reads_and_keeps_working(&Release {
        commit: "8ae7932",
        relay_address: "bc://qsizbobjm7xyu3uquvtu3lvxtvcu4cdgcfge5kf5trjkmvys55fa@127.0.0.1:29471",
        alice_fingerprint: "7642 ff8a 48a9 60e9 989c 5730 994f 8400",
        bob_fingerprint: "0d4e c90e 3a6e 8da1 1681 472f 9f1e 819f",
    });
}

/// The set made by the release at commit 5aa6103 (state layout 7: trails, the identities
/// an invite admitted, arrival times of deferred messages; relay protocol 4 with the
/// `held` table of claimed commits; see its README.md).
#[test]
fn the_state_left_by_release_5aa6103_opens_reads_and_keeps_working() {
    opens_reads_and_keeps_working(&Release {
        commit: "5aa6103",
        relay_address: "bc://2hck37qszxid264cbpsugb4rhlrk4aoz43fk53pjawggbuvfps2q@127.0.0.1:29471",
        alice_fingerprint: "2872 da90 c9d8 2732 def1 d11e abb9 d0dc",
        bob_fingerprint: "d816 3afa 7483 2771 802b d51f 1024 54b2",
    });
}

/// The set made by the release at commit b7cd5b1 (state layout 8: channel histories and
/// drop box letters in logs, here all in their tails in the vault; relay protocol 5 with a
/// data directory of format 3, envelopes indexed by expiry; see its README.md).
#[test]
fn the_state_left_by_release_b7cd5b1_opens_reads_and_keeps_working() {
    opens_reads_and_keeps_working(&Release {
        commit: "b7cd5b1",
        relay_address: "bc://olcktdfpg4wy2j554su6sccs5g2dy6y4ggni7ykq2jarloxb45oq@127.0.0.1:29471",
        alice_fingerprint: "5136 fe3b 3e35 b724 456d b6a9 04b1 c982",
        bob_fingerprint: "d81c 529c 64e8 e4d8 10ce cc84 638d 78a8",
    });
}

/// The set made by the release at commit d088a6d (vault format 1, the last release before
/// format 2; state layout 9 with the home's settings; relay protocol 6 with a data
/// directory of format 3, the last before format 4 dated each mailbox's last use; see its
/// README.md).
#[test]
fn the_state_left_by_release_d088a6d_opens_reads_and_keeps_working() {
    opens_reads_and_keeps_working(&Release {
        commit: "d088a6d",
        relay_address: "bc://fpnw2sqwlrdy4mosio4nnzgox6jb656g6os6xcwcx5itv46bvdlq@127.0.0.1:29471",
        alice_fingerprint: "e007 d8d6 176d cb6e 3298 f378 8661 8cfd",
        bob_fingerprint: "595b cb7e f50b 73b5 5466 d391 e4b8 1a69",
    });
}

/// The set made by the release at commit d508c81 (vault format 2 with the home's
/// generation file; state layout 9, the last before layout 10 kept joiners waiting for
/// approval; relay protocol 6 with a data directory of format 4 as it was before the
/// nameplate and bundle tables were added within that format; see its README.md).
#[test]
fn the_state_left_by_release_d508c81_opens_reads_and_keeps_working() {
    opens_reads_and_keeps_working(&Release {
        commit: "d508c81",
        relay_address: "bc://sbzafh3wry3vxu2makwzbbctcfesticljwuwnwdaqo3nszheoogq@127.0.0.1:29471",
        alice_fingerprint: "3fac 9255 1393 49e1 2901 fdb5 bc51 9f72",
        bob_fingerprint: "02de 4eb7 3924 eb6f 1005 1327 a1f5 90e9",
    });
}

/// The set made by the release at commit 0378a72 (relay data directory format 5: sealed
/// envelopes in `envelope-bodies.bin`, the expiry index an entry per envelope, the last
/// release before format 6 counted them; see its README.md).
#[test]
fn the_state_left_by_release_0378a72_opens_reads_and_keeps_working() {
    opens_reads_and_keeps_working(&Release {
        commit: "0378a72",
        relay_address: "bc://mgvbjngylwg6iori6m4haegixgzzsrk3lzju6wojizowbjhtstva@127.0.0.1:29471",
        alice_fingerprint: "ad5b 323d 2b9b a60c b47e c93e a528 2dc8",
        bob_fingerprint: "c27f 462a cd8f 36c0 a96d 28a7 150b 55b6",
    });
}

/// The story of scripts/make-fixtures.sh, as a release left it, opened by this one.
fn opens_reads_and_keeps_working(release: &Release) {
    // The file alice was sending when it stopped: her home holds this absolute path.
    let term_sheet_at = format!("/tmp/backchannel-fixture-{}/term-sheet.txt", release.commit);
    const TERM_SHEET_SHA256: &str = "04ede2aa7413912aa3f26bdf34a65a32d15e04d9c1bf1cec92b39640fd96e200";
    const NOTES_SHA256: &str = "4585f2c0e2ef713294561f7b470e48e3dce2d5c75fb29eb4f37c9fec27139e1c";

    let set = fixture(&format!("release-{}", release.commit));
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

    // The relay opens its data directory with the same key: the same PIN, the same
    // address. Envelopes carry the expiry they were stored with (100 years); the flag
    // here governs only new ones. A directory of format 4 or later (release d508c81's)
    // holds when each mailbox was last used, on the day the set was made: a relay with
    // the default idle lifetime (90 days) would delete them all at its first sweep once
    // the set is older than that, so this one keeps idle mailboxes (an older directory
    // is dated at its upgrade, and is fresh either way).
    let _port = hold_port();
    let relay = RelayProc::start_on(
        &root.path().join("relay"),
        LISTEN,
        &[
            "--envelope-ttl",
            "36500d",
            "--idle-mailbox-lifetime",
            "36500d",
            "--stats-interval",
            "1s",
        ],
    );
    assert_eq!(relay.address, release.relay_address);

    // The source file of the transfer in progress, byte for byte where it was (written
    // while this run holds the port, so that two runs never share it).
    let term_sheet = pattern("term sheet line", 132_072);
    assert_eq!(sha256_hex(&term_sheet), TERM_SHEET_SHA256);
    let term_sheet_path = Path::new(&term_sheet_at);
    std::fs::create_dir_all(term_sheet_path.parent().unwrap()).unwrap();
    std::fs::write(term_sheet_path, &term_sheet).unwrap();

    let alice = home(root.path(), "alice");
    let bob = home(root.path(), "bob");
    let source = home(root.path(), "source-without-home");
    let receipt = |n: u8| {
        std::fs::read_to_string(root.path().join(format!("source/receipt-{n}.txt")))
            .unwrap()
            .trim()
            .to_string()
    };

    // Alice imports bob's courier bundle before anything else touches her home.
    let imported = alice.ok(&[
        "courier",
        "import",
        root.path().join("courier/bob-to-alice.bundle").to_str().unwrap(),
    ]);
    assert!(imported.contains("1 new in deal-room"), "{imported}");
    // Opening it sealed her home again in vault format 2, every file bound to its place
    // (the received file and the letter's attachment read below are among them).
    let sealed = files(&alice.home)
        .into_iter()
        .filter(|f| {
            let name = f.file_name().unwrap().to_string_lossy();
            name != "lock" && !name.ends_with(".tmp")
        })
        .collect::<Vec<_>>();
    assert!(sealed.len() >= 4, "{sealed:?}");
    for f in &sealed {
        assert!(
            std::fs::read(f).unwrap().starts_with(b"BCVAULT2"),
            "{} is not in format 2",
            f.display()
        );
    }

    // Bob: what waited for him at the relay is exactly what is unread, then the rest.
    let unread = bob.ok(&["read", "deal-room", "--json"]);
    assert_eq!(
        said(&unread),
        pairs(&[
            ("alice", "second: we need the audited accounts"),
            ("alice", "third: meet on thursday at ten"),
            ("alice", "sent a file: term-sheet.txt (129.0 KiB)"),
        ]),
        "{unread}"
    );
    for line in unread.lines() {
        let m: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(m["from_fingerprint"], release.alice_fingerprint, "{m}");
    }
    let offer: serde_json::Value = serde_json::from_str(unread.lines().last().unwrap()).unwrap();
    assert_eq!(offer["file"]["status"], "receiving", "{offer}");
    assert_eq!(offer["file"]["parts"], 3);
    assert_eq!(offer["file"]["parts_received"], 1);
    assert_eq!(offer["file"]["sha256"], TERM_SHEET_SHA256);
    let history = pairs(&[
        ("alice", "welcome to the deal room"),
        ("bob", "glad to be here"),
        ("bob", "sent a file: notes.txt (2.9 KiB)"),
        ("bob", "the notes are attached; the numbers are in the second table"),
        ("alice", "first look: the valuation is too high"),
        ("bob", "carried by hand: the accounts are coming"),
        ("alice", "second: we need the audited accounts"),
        ("alice", "third: meet on thursday at ten"),
        ("alice", "sent a file: term-sheet.txt (129.0 KiB)"),
    ]);
    assert_eq!(bob.texts("deal-room"), history);
    assert!(
        bob.ok(&["read", "deal-room", "--json"]).trim().is_empty(),
        "shown twice"
    );

    // Alice: the message carried by hand is unread (its relay copy, sent by bob's first
    // sync just now, is not shown again); the file bob sent before is saved, checked.
    let unread = alice.ok(&["read", "deal-room", "--json", "--save-to", out_s]);
    assert_eq!(
        said(&unread),
        pairs(&[("bob", "carried by hand: the accounts are coming")]),
        "{unread}"
    );
    let carried: serde_json::Value = serde_json::from_str(unread.lines().next().unwrap()).unwrap();
    assert_eq!(carried["from_fingerprint"], release.bob_fingerprint, "{carried}");
    let notes = std::fs::read(out.join("notes.txt")).unwrap();
    assert_eq!(notes, pattern("notes line", 3000));
    assert_eq!(sha256_hex(&notes), NOTES_SHA256);
    assert_eq!(alice.texts("deal-room"), {
        // Alice's history lists bob's courier message where she received it.
        let mut h = history.clone();
        let carried = h.remove(5);
        h.push(carried);
        h
    });
    // The second channel, which alice had fetched and never read.
    let side = alice.ok(&["read", "side-room", "--json"]);
    assert_eq!(
        said(&side),
        pairs(&[("bob", "a quiet word: the seller is flexible")]),
        "{side}"
    );

    // Alice's drop box: letter 2 (fetched, its attachment sealed in her home) and
    // letter 3 (still at the relay) are unread; letter 1 was read.
    let letters_dir = root.path().join("letters");
    let letters = alice.ok(&[
        "drop",
        "read",
        "tips-line",
        "--json",
        "--save-to",
        letters_dir.to_str().unwrap(),
    ]);
    let letters: Vec<serde_json::Value> = letters.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let texts: Vec<&str> = letters.iter().map(|l| l["text"].as_str().unwrap()).collect();
    assert_eq!(
        texts,
        ["a scan of the first page", "a third letter, still at the relay"]
    );
    let scan = letters[0]["file"].as_str().unwrap();
    assert_eq!(std::fs::read(scan).unwrap(), b"page one of the ledger, line by line\n");
    assert!(letters[1]["file"].is_null());
    let all = alice.ok(&["drop", "read", "tips-line", "--all", "--json"]);
    let all: Vec<String> = all
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["text"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(
        all,
        [
            "the ledger is in locker 12",
            "a scan of the first page",
            "a third letter, still at the relay"
        ]
    );
    // The reply alice wrote to letter 1 waited at the relay for its source.
    assert_eq!(
        source.ok(&["drop", "check", "--direct", &receipt(1)]).trim(),
        "received; do not come to the office"
    );
    assert!(!source.home.exists(), "drop check made a home");

    // Alice's interrupted transfer resumes with the same command, and bob gets the file whole.
    let r = alice.run(&["send", "deal-room", "--file", &term_sheet_at]);
    assert!(r.ok, "{}", r.stderr);
    assert!(r.stderr.contains("resuming an interrupted transfer"), "{}", r.stderr);
    let got = bob.ok(&["read", "deal-room", "--json", "--all", "--save-to", out_s]);
    let files: Vec<serde_json::Value> = got
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|m| m["file"]["name"] == "term-sheet.txt")
        .collect();
    assert_eq!(files.len(), 1, "{got}");
    assert_eq!(files[0]["file"]["status"], "saved", "{got}");
    let saved = std::fs::read(out.join("term-sheet.txt")).unwrap();
    assert_eq!(sha256_hex(&saved), TERM_SHEET_SHA256);
    let _ = std::fs::remove_file(term_sheet_path);
    let _ = std::fs::remove_dir(term_sheet_path.parent().unwrap());

    // And everything keeps working: both change their keys in a channel whose sequencer
    // the release granted claims by token (the first claim with a key locks it), both
    // talk in both channels, the drop box takes a new letter, and a reply reaches
    // letter 2's source.
    alice.ok(&["update", "deal-room"]);
    bob.ok(&["update", "deal-room"]);
    alice.ok(&["send", "deal-room", "alice, after the upgrade"]);
    bob.ok(&["send", "deal-room", "bob, after the upgrade"]);
    bob.ok(&["send", "side-room", "bob in side-room, after the upgrade"]);
    alice.ok(&["send", "side-room", "alice in side-room, after the upgrade"]);
    assert!(alice
        .texts("deal-room")
        .contains(&("bob".into(), "bob, after the upgrade".into())));
    let bob_sees = bob.texts("deal-room");
    assert!(bob_sees.contains(&("alice".into(), "alice, after the upgrade".into())));
    assert!(bob
        .texts("side-room")
        .contains(&("alice".into(), "alice in side-room, after the upgrade".into())));
    for c in [&alice, &bob] {
        let t = c.texts("deal-room");
        for m in &t {
            assert_eq!(t.iter().filter(|x| *x == m).count(), 1, "{m:?} twice in {t:?}");
        }
        assert_eq!(t.len(), history.len() + 2, "{t:?}");
    }
    let drop_address = std::fs::read_to_string(root.path().join("source/drop-address.txt")).unwrap();
    source.ok(&[
        "drop",
        "send",
        "--direct",
        drop_address.trim(),
        "a fourth letter, after the upgrade",
    ]);
    let new = alice.ok(&["drop", "read", "tips-line", "--json"]);
    assert_eq!(new.lines().count(), 1, "{new}");
    let letter: serde_json::Value = serde_json::from_str(new.trim()).unwrap();
    assert_eq!(letter["text"], "a fourth letter, after the upgrade");
    let second = letters[0]["id"].as_str().unwrap();
    alice.ok(&["drop", "reply", "tips-line", second, "thank you for the scan"]);
    assert_eq!(
        source.ok(&["drop", "check", "--direct", &receipt(2)]).trim(),
        "thank you for the scan"
    );
}

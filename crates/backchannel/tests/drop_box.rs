//! Anonymous drop boxes: a letter from someone with no identity, its reply, and
//! what the relay keeps of either.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
use backchannel_client::RelayConnection;
use backchannel_core::drop::{DropAddress, DropLine, ShortDropAddress, DEFAULT_POW_BITS};
use backchannel_core::envelope::{Envelope, ENVELOPE_SIZE};
use backchannel_core::frame::{ErrorCode, Request};
use backchannel_core::pow;
use common::*;

/// A relay, and "desk" with a drop box "tips-line" of `pow_bits` there; returns its address.
fn desk_with_drop_box(root: &std::path::Path, pow_bits: u8) -> (RelayProc, Client, String) {
    let relay = RelayProc::start(&root.join("relay"), &[]);
    let [owner] = people(root, &relay, ["desk"]);
    let address = owner.ok(&["drop", "create", "tips-line", "--pow-bits", &pow_bits.to_string()]);
    (relay, owner, address.trim().to_string())
}

#[test]
fn an_anonymous_letter_and_its_reply_leave_no_plaintext_at_the_relay() {
    let root = tempfile::tempdir().unwrap();
    let relay = RelayProc::start(&root.path().join("relay"), &[]);
    let [owner] = people(root.path(), &relay, ["newsdesk"]);
    let address = owner.ok(&["drop", "create", "tips-line"]);
    assert_eq!(address.lines().count(), 1);
    let address = address.trim().to_string();
    assert!(address.starts_with("bc-drop:"), "{address}");
    // The short address, which fits a business card; the long one names the same box.
    assert!(address.len() <= 120, "{} characters", address.len());
    assert_eq!(owner.ok(&["drop", "address", "tips-line"]).trim(), address);
    let long = owner.ok(&["drop", "address", "tips-line", "--long"]).trim().to_string();
    let parsed = DropAddress::from_text(&long).unwrap();
    assert_eq!(parsed.pow_bits, DEFAULT_POW_BITS);
    assert_eq!(
        DropLine::from_text(&address).unwrap(),
        DropLine::Short(ShortDropAddress::of(&parsed))
    );

    // The source has no identity and no home: only the address.
    let source = Client::new(root.path(), "source");
    let secret_text = "the ledger is in locker 12";
    let attachment = root.path().join("scan.txt");
    std::fs::write(&attachment, b"page one of the ledger, line by line").unwrap();
    let r = source.run(&[
        "drop",
        "send",
        "--direct",
        &address,
        secret_text,
        "--file",
        attachment.to_str().unwrap(),
    ]);
    assert!(r.ok, "{}", r.stderr);
    let receipt = r.stdout.trim().to_string();
    assert!(receipt.starts_with("bc-receipt:"), "{receipt}");
    assert!(!source.home.exists(), "drop send created a home");
    // A second letter, to the long address, without asking anything.
    source.ok(&["drop", "send", "--direct", &long, "a second, shorter note"]);
    assert_eq!(
        source.ok(&["drop", "check", "--direct", &receipt]).trim(),
        "",
        "a reply before any was sent"
    );

    // The owner's client keeps the attachment sealed beside the vault until it is saved.
    owner.ok(&["sync"]);
    let sealed = files(&owner.home.join("files"));
    assert_eq!(sealed.len(), 1, "{sealed:?}");
    assert!(!contains(
        &std::fs::read(&sealed[0]).unwrap(),
        b"page one of the ledger"
    ));

    // The owner reads both; the file is saved where it says.
    let save_to = root.path().join("inbox");
    let read = owner.ok(&[
        "drop",
        "read",
        "tips-line",
        "--json",
        "--save-to",
        save_to.to_str().unwrap(),
    ]);
    let letters: Vec<serde_json::Value> = read.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(letters.len(), 2, "{read}");
    let first = &letters[0];
    assert_eq!(first["text"], secret_text);
    // What the owner learns: what was written, when it came, and nothing else.
    let mut keys: Vec<&str> = first.as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort();
    assert_eq!(keys, ["can_reply", "drop", "file", "id", "received_at", "text"]);
    let saved = first["file"].as_str().unwrap();
    assert!(saved.starts_with(save_to.to_str().unwrap()), "{saved}");
    assert_eq!(std::fs::read(saved).unwrap(), std::fs::read(&attachment).unwrap());
    assert!(files(&owner.home.join("files")).is_empty());
    assert_eq!(letters[1]["text"], "a second, shorter note");
    assert!(owner.ok(&["drop", "read", "tips-line"]).trim().is_empty(), "read twice");

    // The owner answers; only the receipt's holder reads the answer, once: the relay
    // deletes what was shown.
    let id = first["id"].as_str().unwrap();
    owner.ok(&["drop", "reply", "tips-line", id, "received; do not come to the office"]);
    let replies = source.ok(&["drop", "check", "--direct", &receipt]);
    assert_eq!(replies.trim(), "received; do not come to the office");
    let again = source.run(&["drop", "check", "--direct", &receipt]);
    assert!(again.ok, "{}", again.stderr);
    assert_eq!(again.stdout.trim(), "");
    assert!(again.stderr.contains("no new reply"), "{}", again.stderr);
    // More replies than one fetch returns (15), one of them trying to drive the
    // terminal; the receipt comes on standard input, out of the process list.
    for i in 0..20 {
        owner.ok(&["drop", "reply", "tips-line", id, &format!("reply {i}")]);
    }
    owner.ok(&["drop", "reply", "tips-line", id, "line\x1b[2J\nforged"]);
    owner.ok(&["drop", "reply", "tips-line", id, "tail\u{202e}txt.exe"]);
    let r = source.run_with_input(&["drop", "check", "--direct"], &format!("{receipt}\n"));
    assert!(r.ok, "{}", r.stderr);
    let lines: Vec<&str> = r.stdout.lines().collect();
    let expected: Vec<String> = (0..20).map(|i| format!("reply {i}")).collect();
    assert_eq!(lines[..20], expected[..], "{}", r.stdout);
    assert_eq!(
        lines[20..],
        ["line\\u{001b}[2J", "    forged", "tail\\u{202e}txt.exe"],
        "{}",
        r.stdout
    );
    let e = owner.fails(&["drop", "reply", "tips-line", "deadbeef", "to nobody"]);
    assert!(e.contains("no letter"), "{e}");

    // The relay's disk and logs hold none of it in the clear.
    let logs = relay.logs();
    for needle in [
        secret_text.as_bytes(),
        b"page one of the ledger",
        b"do not come to the office",
        b"tips-line",
        b"newsdesk",
    ] {
        for f in files(&relay.data) {
            let bytes = std::fs::read(&f).unwrap();
            assert!(
                !contains(&bytes, needle),
                "{} holds {:?}",
                f.display(),
                String::from_utf8_lossy(needle)
            );
        }
        assert!(
            !contains(logs.as_bytes(), needle),
            "the relay logged {:?}",
            String::from_utf8_lossy(needle)
        );
    }
    assert!(!logs.contains(&receipt[12..40]), "the relay logged the receipt");
}

#[test]
fn a_drop_box_refuses_envelopes_without_their_proof_of_work() {
    let root = tempfile::tempdir().unwrap();
    let (_relay, owner, address) = desk_with_drop_box(root.path(), 12);
    let long = owner.ok(&["drop", "address", "tips-line", "--long"]);
    let to = DropAddress::from_text(&long).unwrap();
    let envelope = Envelope::from_bytes(&[9u8; ENVELOPE_SIZE]).unwrap();
    let challenge = pow::challenge(&to.mailbox.send.digest(), &envelope);
    let solved = pow::solve(&challenge, 12);
    let wrong = (1..).find(|n| !pow::check(&challenge, 12, *n)).unwrap();
    rt().block_on(async {
        let mut c = RelayConnection::connect(&to.mailbox.relay).await.unwrap();
        for nonce in [0, wrong] {
            let e = c
                .request(&Request::Send {
                    send: to.mailbox.send.0,
                    envelope: envelope.clone(),
                    pow: nonce,
                })
                .await
                .unwrap_err();
            assert!(e.is(ErrorCode::WorkRequired), "{e}");
        }
        c.request(&Request::Send {
            send: to.mailbox.send.0,
            envelope: envelope.clone(),
            pow: solved,
        })
        .await
        .unwrap();
    });
    // That one envelope was garbage: the owner is told, and shown nothing.
    let r = owner.run(&["drop", "read", "tips-line", "--json"]);
    assert!(r.ok, "{}", r.stderr);
    assert!(r.stdout.trim().is_empty(), "{}", r.stdout);
    assert!(r.stderr.contains("discarded"), "{}", r.stderr);

    // A damaged address or receipt is refused with a clear error, and nothing is sent.
    let source = Client::new(root.path(), "source");
    let mut damaged = address.trim().to_string();
    damaged.pop();
    let e = source.fails(&["drop", "send", "--direct", &damaged, "hello"]);
    assert!(e.contains("damaged") || e.contains("drop"), "{e}");
    let e = source.fails(&["drop", "check", "--direct", "bc-receipt:aaaa"]);
    assert!(e.contains("damaged") || e.contains("receipt"), "{e}");
    let e = source.fails(&["drop", "send", "--direct", "bc-invite:abc", "hello"]);
    assert!(e.contains("bc-drop:"), "{e}");

    // Without a proxy a source must say --direct: its address must never reach the relay
    // by accident. Nothing is sent, and no home is made.
    for args in [
        vec!["drop", "send", address.trim(), "from my own address?"],
        vec!["drop", "check", "bc-receipt:aaaa"],
    ] {
        let e = source.fails(&args);
        assert!(e.contains("--proxy socks5h://") && e.contains("--direct"), "{e}");
    }
    assert!(!source.home.exists());
}

#[test]
fn a_reply_whose_envelopes_have_not_all_arrived_stays_at_the_relay_until_they_have() {
    use backchannel_core::drop::{seal_reply, Receipt};
    use backchannel_core::envelope::{seal_payload, PayloadKind};
    use rand_core::OsRng;

    let root = tempfile::tempdir().unwrap();
    let (_relay, _owner, address) = desk_with_drop_box(root.path(), 8);
    let source = Client::new(root.path(), "source");
    let receipt = source.ok(&["drop", "send", "--direct", &address, "are you there?"]);
    let parsed = Receipt::from_text(receipt.trim()).unwrap();

    // The longest reply the owner can send, delivered but for its last envelope (as
    // when the owner's connection drops in the middle).
    let text = "y".repeat(backchannel_client::engine::MAX_REPLY_TEXT);
    let sealed = seal_reply(&parsed.key, &text, &mut OsRng);
    let to = &parsed.mailbox.address;
    let envelopes = seal_payload(&to.seal, &to.send, PayloadKind::Reply, &sealed, &mut OsRng).unwrap();
    assert!(envelopes.len() > 2);
    let (last, first) = envelopes.split_last().unwrap();
    let deliver = |envs: &[backchannel_core::envelope::Envelope]| {
        rt().block_on(async {
            let mut c = RelayConnection::connect(&to.relay).await.unwrap();
            for e in envs {
                c.request(&Request::Send {
                    send: to.send.0,
                    envelope: e.clone(),
                    pow: 0,
                })
                .await
                .unwrap();
            }
        })
    };
    deliver(first);
    let r = source.run(&["drop", "check", "--direct", receipt.trim()]);
    assert!(r.ok, "{}", r.stderr);
    assert_eq!(r.stdout, "", "a partial reply was shown");
    // Nothing of it was deleted: once the rest arrives, the whole reply is there.
    deliver(std::slice::from_ref(last));
    let r = source.run(&["drop", "check", "--direct", receipt.trim()]);
    assert!(r.ok, "{}", r.stderr);
    assert_eq!(r.stdout.trim(), text);
    assert_eq!(source.ok(&["drop", "check", "--direct", receipt.trim()]), "");
}

/// A relay that hands over other keys for a short address (its operator changed what it
/// keeps, on disk) is caught by the sender: nothing is sealed to those keys, nothing is sent.
/// The long address, which needs nothing from the relay, still works.
#[test]
fn a_short_address_whose_keys_the_relay_changed_is_refused_and_nothing_is_sent() {
    let root = tempfile::tempdir().unwrap();
    let (mut relay, owner, address) = desk_with_drop_box(root.path(), 8);
    let long = owner.ok(&["drop", "address", "tips-line", "--long"]).trim().to_string();
    let source = Client::new(root.path(), "source");
    source.ok(&["drop", "send", "--direct", &address, "before"]);

    relay.kill9();
    // A byte of the owner's key (the bundle ends with it and the work asked).
    let changed = tamper_with_bundles(&relay.data, |value| {
        let at = value.len() - 100;
        value[at] ^= 0x40;
    });
    assert_eq!(changed, 1, "one drop box, one bundle");
    let relay = RelayProc::start_on(&relay.data.clone(), &format!("127.0.0.1:{}", relay.port), &[]);
    let refused = source.run(&["drop", "send", "--direct", &address, "after"]);
    assert!(!refused.ok);
    assert!(
        refused.stderr.contains("not the ones this short address names"),
        "{}",
        refused.stderr
    );
    source.ok(&["drop", "send", "--direct", &long, "by the long address"]);
    let read = owner.ok(&["drop", "read", "tips-line"]);
    assert!(
        read.contains("before") && read.contains("by the long address"),
        "{read}"
    );
    assert!(!read.contains("after"), "{read}");
    drop(relay);
}

//! End-to-end: relay and clients as separate processes on loopback.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
use common::*;

#[test]
fn three_parties_talk_with_the_right_sender_and_a_removed_member_reads_nothing_after() {
    let root = tempfile::tempdir().unwrap();
    let relay = RelayProc::start(&root.path().join("relay"), &[]);
    let [alice, bob, carol] = people(root.path(), &relay, ["alice", "bob", "carol"]);
    channel_with(&alice, &[&bob, &carol], "talks");

    let members = alice.ok(&["members", "talks", "--json"]);
    assert_eq!(members.lines().count(), 3, "{members}");

    bob.ok(&["send", "talks", "hello from bob"]);
    carol.ok(&["send", "talks", "carol here"]);
    for c in [&alice, &bob, &carol] {
        let t = c.texts("talks");
        assert!(t.contains(&("bob".into(), "hello from bob".into())), "{t:?}");
        assert!(t.contains(&("carol".into(), "carol here".into())), "{t:?}");
        assert_eq!(t.len(), 2, "each message exactly once: {t:?}");
    }
    let m = alice.messages("talks");
    let from_bob = m.iter().find(|m| m["text"] == "hello from bob").unwrap();
    for key in [
        "id",
        "channel",
        "from",
        "from_fingerprint",
        "verified",
        "sent_at",
        "text",
    ] {
        assert!(from_bob.get(key).is_some(), "missing {key} in {from_bob}");
    }
    assert_eq!(from_bob["channel"], "talks");
    assert_eq!(from_bob["verified"], false);

    assert!(alice.ok(&["remove", "talks", "carol"]).contains("removed carol"));
    alice.ok(&["send", "talks", "after carol left"]);
    assert!(bob
        .texts("talks")
        .contains(&("alice".into(), "after carol left".into())));
    let carol_view = carol.ok(&["read", "talks", "--all"]);
    assert!(!carol_view.contains("after carol left"), "{carol_view}");
    assert!(carol_view.contains("removed you"), "{carol_view}");
    assert!(carol.ok(&["channels"]).contains("removed"));
    let e = carol.fails(&["send", "talks", "still here?"]);
    assert!(e.contains("removed"), "{e}");
    assert_eq!(alice.ok(&["members", "talks", "--json"]).lines().count(), 2);
}

#[test]
fn safety_numbers_match_on_both_sides_and_confirming_marks_verified() {
    let root = tempfile::tempdir().unwrap();
    let relay = RelayProc::start(&root.path().join("relay"), &[]);
    let [alice, bob] = people(root.path(), &relay, ["alice", "bob"]);
    channel_with(&alice, &[&bob], "v");
    let a = alice.ok(&["verify", "v", "bob"]);
    let b = bob.ok(&["verify", "v", "alice"]);
    assert_eq!(a, b);
    let groups: Vec<&str> = a.trim().split(' ').collect();
    assert_eq!(groups.len(), 12);
    assert!(groups
        .iter()
        .all(|g| g.len() == 5 && g.chars().all(|c| c.is_ascii_digit())));

    bob.ok(&["send", "v", "before verification"]);
    let m = alice.messages("v");
    assert_eq!(
        m.iter().find(|m| m["text"] == "before verification").unwrap()["verified"],
        false
    );
    alice.ok(&["verify", "v", "bob", "--confirm"]);
    let m = alice.messages("v");
    assert_eq!(
        m.iter().find(|m| m["text"] == "before verification").unwrap()["verified"],
        true
    );
    assert!(alice.ok(&["members", "v"]).contains("bob\t"));
}

#[test]
fn concurrent_commits_do_not_fork_the_channel() {
    let root = tempfile::tempdir().unwrap();
    let relay = RelayProc::start(&root.path().join("relay"), &[]);
    let [alice, bob] = people(root.path(), &relay, ["alice", "bob"]);
    channel_with(&alice, &[&bob], "race");
    for round in 0..3 {
        // Both rotate their keys at the same moment: each is a commit.
        let a = alice.cmd(&["update", "race"]).spawn().unwrap();
        let b = bob.cmd(&["update", "race"]).spawn().unwrap();
        assert!(a.wait_with_output().unwrap().status.success());
        assert!(b.wait_with_output().unwrap().status.success());
        let text_a = format!("alice round {round}");
        let text_b = format!("bob round {round}");
        alice.ok(&["send", "race", &text_a]);
        bob.ok(&["send", "race", &text_b]);
        assert!(bob.texts("race").contains(&("alice".into(), text_a)));
        assert!(alice.texts("race").contains(&("bob".into(), text_b)));
    }
}

#[test]
fn an_acknowledged_message_survives_kill_9_of_the_relay_exactly_once_and_the_pin_stays() {
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("relay");
    let mut relay = RelayProc::start(&data, &[]);
    let [alice, bob] = people(root.path(), &relay, ["alice", "bob"]);
    channel_with(&alice, &[&bob], "durable");
    let first = relay.address.clone();
    assert!(alice.ok(&["send", "durable", "survives the crash"]).contains("sent"));
    relay.kill9();
    let listen = format!("127.0.0.1:{}", relay.port);
    let relay2 = RelayProc::start_on(&data, &listen, &[]);
    assert_eq!(relay2.address, first, "the pin and address must not change on restart");
    let t = bob.texts("durable");
    assert_eq!(t, vec![("alice".to_string(), "survives the crash".to_string())]);
    assert_eq!(bob.texts("durable").len(), 1);
}

#[test]
fn leave_and_close() {
    let root = tempfile::tempdir().unwrap();
    let relay = RelayProc::start(&root.path().join("relay"), &[]);
    let [alice, bob, carol] = people(root.path(), &relay, ["alice", "bob", "carol"]);
    channel_with(&alice, &[&bob, &carol], "ending");
    carol.ok(&["leave", "ending"]);
    assert!(carol.ok(&["channels"]).contains("left"));
    alice.ok(&["sync"]);
    assert_eq!(alice.ok(&["members", "ending", "--json"]).lines().count(), 2);
    bob.ok(&["send", "ending", "without carol"]);
    assert!(alice.texts("ending").contains(&("bob".into(), "without carol".into())));

    alice.ok(&["close", "ending"]);
    bob.ok(&["sync"]);
    assert!(bob.ok(&["channels"]).contains("closed"));
    let e = bob.fails(&["send", "ending", "anyone?"]);
    assert!(e.contains("closed"), "{e}");
    let e = alice.fails(&["send", "ending", "anyone?"]);
    assert!(e.contains("closed"), "{e}");
}

/// The modules of a QR code drawn by `invite --qr` (half blocks, light modules drawn), as a
/// greyscale image of `scale` pixels per module, for a QR decoder to read as a camera would.
fn qr_image(art: &str, scale: usize) -> (usize, usize, Vec<u8>) {
    let rows: Vec<Vec<char>> = art.lines().map(|l| l.chars().collect()).collect();
    let width = rows.iter().map(Vec::len).max().unwrap();
    let (w, h) = (width * scale, rows.len() * 2 * scale);
    let mut pixels = vec![0u8; w * h];
    for (r, row) in rows.iter().enumerate() {
        for c in 0..width {
            // (top light, bottom light)
            let (top, bottom) = match row.get(c).copied().unwrap_or(' ') {
                '█' => (true, true),
                '▀' => (true, false),
                '▄' => (false, true),
                ' ' => (false, false),
                other => panic!("not a half block: {other:?}"),
            };
            for (half, light) in [(0, top), (1, bottom)] {
                for dy in 0..scale {
                    for dx in 0..scale {
                        let (x, y) = (c * scale + dx, (r * 2 + half) * scale + dy);
                        pixels[y * w + x] = if light { 255 } else { 0 };
                    }
                }
            }
        }
    }
    (w, h, pixels)
}

/// Issue 18, point 4: `invite --qr` draws the invite as a QR code that fits an 80-column
/// terminal in at most 40 lines (half blocks: two modules per character cell, one above
/// the other), quiet zone included; a decoder reads the invite back from it (in upper
/// case, the QR code's alphanumeric mode), and joining with what it read works.
#[test]
fn an_invite_drawn_as_a_qr_code_fits_a_terminal_and_reads_back() {
    let root = tempfile::tempdir().unwrap();
    let relay = RelayProc::start(&root.path().join("relay"), &[]);
    let [alice, bob] = people(root.path(), &relay, ["alice", "bob"]);
    alice.ok(&["channel", "new", "room"]);
    let r = alice.run(&["invite", "room", "--qr"]);
    assert!(r.ok, "{}", r.stderr);
    let invite = r.stdout.trim();
    let art = r.stderr.trim_end_matches('\n');
    let lines: Vec<&str> = art.lines().collect();
    let widest = lines.iter().map(|l| l.chars().count()).max().unwrap();
    eprintln!(
        "an invite of {} characters: a QR code of {} lines, {widest} columns",
        invite.len(),
        lines.len()
    );
    assert!(lines.len() <= 40, "{} lines", lines.len());
    assert!(widest <= 80, "{widest} columns");
    // The quiet zone: the first line and the edges are all light (drawn).
    assert!(lines[0].chars().all(|c| c == '█'), "{:?}", lines[0]);

    let (w, h, pixels) = qr_image(art, 4);
    let mut image = rqrr::PreparedImage::prepare_from_greyscale(w, h, |x, y| pixels[y * w + x]);
    let grids = image.detect_grids();
    assert_eq!(grids.len(), 1, "one QR code found");
    let (_, read) = grids[0].decode().unwrap();
    assert_eq!(read, invite.to_uppercase());

    bob.ok(&["join", &read]);
    alice.ok(&["sync"]);
    bob.ok(&["sync", "--wait", "5"]);
    alice.ok(&["send", "room", "read from a screen"]);
    assert_eq!(
        bob.texts("room").into_iter().map(|(_, t)| t).collect::<Vec<_>>(),
        ["read from a screen"]
    );
}

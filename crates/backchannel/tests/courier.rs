//! Courier bundles: messages carried by hand on a file while no relay answers.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
use common::*;

#[test]
fn a_bundle_carried_while_the_relay_is_down_shows_each_message_once_however_it_arrives() {
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("relay");
    let mut relay = RelayProc::start(&data, &[]);
    let [alice, bob] = people(root.path(), &relay, ["alice-ashdown", "bob-bertrand"]);
    channel_with(&alice, &[&bob], "harbour");
    alice.ok(&["send", "harbour", "over the wire"]);
    assert_eq!(bob.texts("harbour").len(), 1);

    // The relay goes away: alice's messages are queued, and she is told so.
    relay.kill9();
    for text in ["carried by hand", "a second one"] {
        let e = alice.fails(&["send", "harbour", text]);
        assert!(e.contains("queued"), "{e}");
    }
    let bundle = root.path().join("harbour.bundle");
    let out = alice.ok(&["courier", "export", "harbour", "--to", bundle.to_str().unwrap()]);
    assert!(out.contains("2 envelope(s)"), "{out}");
    // Exporting never overwrites a file.
    let e = alice.fails(&["courier", "export", "harbour", "--to", bundle.to_str().unwrap()]);
    assert!(e.contains("already exists"), "{e}");

    // What the courier carries: fixed blocks, no plaintext, no names. Every needle is
    // long: a 3-byte one turns up by chance in about one 2-block bundle in 128.
    let bytes = std::fs::read(&bundle).unwrap();
    assert_eq!(bytes.len() % backchannel_core::courier::BLOCK_SIZE, 0);
    for needle in [
        &b"carried by hand"[..],
        b"a second one",
        b"harbour",
        b"alice-ashdown",
        b"bob-bertrand",
        b"127.0.0.1",
    ] {
        assert!(
            !contains(&bytes, needle),
            "the bundle holds {:?}",
            String::from_utf8_lossy(needle)
        );
    }

    // A bundle with one flipped byte is refused whole, and nothing of it is shown.
    for pos in [0, bytes.len() / 2, bytes.len() - 1] {
        let mut bad = bytes.clone();
        bad[pos] ^= 0x01;
        let bad_path = root.path().join(format!("bad-{pos}.bundle"));
        std::fs::write(&bad_path, &bad).unwrap();
        let e = bob.fails(&["courier", "import", bad_path.to_str().unwrap()]);
        assert!(
            e.contains("modified") || e.contains("not addressed"),
            "a flipped byte at {pos}: {e}"
        );
    }
    let e = bob.fails(&["courier", "import", root.path().join("nope").to_str().unwrap()]);
    assert!(e.contains("cannot read"), "{e}");
    let shown = |c: &Client| {
        c.messages("harbour")
            .into_iter()
            .filter(|m| m.get("event").is_none())
            .map(|m| m["text"].as_str().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(shown(&bob), ["over the wire"]);

    // Bob imports it, twice, while the relay is still down.
    let out = bob.ok(&["courier", "import", bundle.to_str().unwrap()]);
    assert!(out.contains("2 new in harbour"), "{out}");
    let again = bob.run(&["courier", "import", bundle.to_str().unwrap()]);
    assert!(again.ok, "{}", again.stderr);
    assert!(again.stdout.contains("imported here before"), "{}", again.stdout);
    assert!(!again.stderr.contains("discarded"), "{}", again.stderr);
    assert_eq!(shown(&bob), ["over the wire", "carried by hand", "a second one"]);
    // Carol, who is not in the channel, can open nothing.
    let carol = Client::new(root.path(), "carol");
    let relay_again = RelayProc::start_on(&data, &format!("127.0.0.1:{}", relay.port), &[]);
    carol.init("carol", &relay_again.address);
    let e = carol.fails(&["courier", "import", bundle.to_str().unwrap()]);
    assert!(e.contains("not addressed"), "{e}");

    // The relay is back: alice's queue goes out, and bob sees nothing twice.
    alice.ok(&["sync"]);
    let synced = bob.run(&["sync"]);
    assert!(synced.ok, "{}", synced.stderr);
    assert!(!synced.stderr.contains("discarded"), "{}", synced.stderr);
    assert_eq!(shown(&bob), ["over the wire", "carried by hand", "a second one"]);
    // And the channel goes on over the relay.
    bob.ok(&["send", "harbour", "got them"]);
    assert!(alice
        .texts("harbour")
        .contains(&("bob-bertrand".into(), "got them".into())));
    // Nothing is waiting any more: no empty bundle is written.
    let e = alice.fails(&[
        "courier",
        "export",
        "harbour",
        "--to",
        root.path().join("empty").to_str().unwrap(),
    ]);
    assert!(e.contains("nothing is waiting"), "{e}");
}

#[test]
fn messages_carried_ahead_of_older_ones_still_at_the_relay_are_all_read() {
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("relay");
    let mut relay = RelayProc::start(&data, &[]);
    let [alice, bob] = people(root.path(), &relay, ["alice", "bob"]);
    channel_with(&alice, &[&bob], "harbour");
    // Bob falls behind: more of alice's messages wait for him at the relay than
    // openmls reads out of order by default (5).
    let early: Vec<String> = (0..12).map(|i| format!("over the wire {i}")).collect();
    for text in &early {
        alice.ok(&["send", "harbour", text]);
    }
    relay.kill9();
    let e = alice.fails(&["send", "harbour", "carried by hand"]);
    assert!(e.contains("queued"), "{e}");
    let bundle = root.path().join("harbour.bundle");
    alice.ok(&["courier", "export", "harbour", "--to", bundle.to_str().unwrap()]);

    // The courier arrives first: bob reads the newest message before the older ones.
    let out = bob.ok(&["courier", "import", bundle.to_str().unwrap()]);
    assert!(out.contains("1 new in harbour"), "{out}");

    // The relay is back: the older messages are read too, none twice, none lost.
    let _relay = RelayProc::start_on(&data, &format!("127.0.0.1:{}", relay.port), &[]);
    alice.ok(&["sync"]);
    let synced = bob.run(&["sync"]);
    assert!(synced.ok, "{}", synced.stderr);
    assert!(!synced.stderr.contains("discarded"), "{}", synced.stderr);
    let mut texts: Vec<String> = bob.texts("harbour").into_iter().map(|(_, text)| text).collect();
    texts.sort();
    let mut expected = early.clone();
    expected.push("carried by hand".into());
    expected.sort();
    assert_eq!(texts, expected);
}

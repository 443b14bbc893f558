//! What a network observer and a relay operator learn: tests that play them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use common::observer::{lengths_histogram, Dir, Observer, Record, APPLICATION_DATA};
use common::*;

/// Clients whose every connection to the relay passes through the observer.
fn observed_people<const N: usize>(
    root: &std::path::Path,
    relay: &RelayProc,
    obs: &Observer,
    names: [&str; N],
) -> [Client; N] {
    let address = via_port(&relay.address, obs.port);
    names.map(|n| {
        let c = Client::new(root, n);
        c.init(n, &address);
        c
    })
}

/// Application-data records after each connection's setup. In TLS 1.3 the
/// server's encrypted handshake and the WebSocket upgrade response are the
/// first two records down, the client's Finished and the upgrade request the
/// first two up; every record after those must carry exactly one frame.
fn after_setup(records: &[Record]) -> Vec<Record> {
    let mut seen: std::collections::HashMap<(usize, bool), usize> = Default::default();
    records
        .iter()
        .filter(|r| r.content_type == APPLICATION_DATA)
        .filter(|r| {
            let n = seen.entry((r.conn, r.dir == Dir::Up)).or_default();
            *n += 1;
            *n > 2
        })
        .cloned()
        .collect()
}

/// The one length of every record in `dir`, or a failure naming the others.
fn one_length(records: &[Record], dir: Dir) -> u16 {
    let h = lengths_histogram(&records.iter().filter(|r| r.dir == dir).cloned().collect::<Vec<_>>());
    assert_eq!(h.len(), 1, "{dir:?}: more than one record length after setup: {h:?}");
    *h.keys().next().unwrap()
}

#[test]
fn short_and_long_messages_give_the_same_tls_record_lengths() {
    let root = tempfile::tempdir().unwrap();
    let relay = RelayProc::start(&root.path().join("relay"), &[]);
    let obs = Observer::start(relay.port);
    let [alice, bob] = observed_people(root.path(), &relay, &obs, ["alice", "bob"]);
    channel_with(&alice, &[&bob], "wire");

    let mut runs = Vec::new();
    for text in ["ok".to_string(), "x".repeat(3000)] {
        obs.clear();
        alice.ok(&["send", "wire", &text]);
        bob.ok(&["sync"]);
        runs.push(after_setup(&obs.records()));
    }
    assert_eq!(bob.texts("wire").len(), 2);
    let (short, long) = (&runs[0], &runs[1]);
    eprintln!("short: {:?}", lengths_histogram(short));
    eprintln!("long: {:?}", lengths_histogram(long));
    // One size per direction (a frame of FRAME_SIZE bytes, plus WebSocket and TLS overhead),
    // the same for both messages, and the same number of records.
    for dir in [Dir::Up, Dir::Down] {
        let len = one_length(short, dir);
        let frame = backchannel_core::frame::FRAME_SIZE;
        assert!(
            usize::from(len) > frame,
            "{dir:?}: {len}-byte records cannot hold a {frame}-byte frame"
        );
        assert_eq!(one_length(long, dir), len, "{dir:?}");
    }
    assert_eq!(
        lengths_histogram(short),
        lengths_histogram(long),
        "a 2-byte and a 3,000-byte message must look the same on the wire"
    );
}

/// Application records in `dir` in `[from, to)`, each connection's setup left out.
fn stream(obs: &Observer, dir: Dir, from: Instant, to: Instant) -> Vec<Record> {
    after_setup(&obs.records())
        .into_iter()
        .filter(|r| r.at >= from && r.at < to && r.dir == dir)
        .collect()
}

/// Issue 16, point 2 under cover: the daemon's paced links serve one compartment (one of
/// alice's mailboxes, or her sending in one channel) per turn, on a fresh connection at each
/// turn of a fixed schedule; the observer sees the same steady stream of one record length
/// whether anyone talks or not.
#[test]
fn with_cover_traffic_the_observer_sees_the_same_steady_stream_whether_or_not_anyone_talks() {
    let root = tempfile::tempdir().unwrap();
    let relay = RelayProc::start(&root.path().join("relay"), &[]);
    let obs = Observer::start(relay.port);
    let [alice] = observed_people(root.path(), &relay, &obs, ["alice"]);
    // Bob reaches the relay directly: every connection the observer sees is alice's.
    let [bob] = people(root.path(), &relay, ["bob"]);
    channel_with(&alice, &[&bob], "cover");

    let daemon_from = Instant::now();
    let mut daemon = DaemonProc::start(&alice, &["--cover", "4/s"]);
    std::thread::sleep(Duration::from_millis(2500));
    // Alice's commands go through her daemon: no connection of their own. The daemon's
    // links connect afresh at each turn, on a schedule: as many connections open in a
    // stretch with commands as in one without.
    let span = Duration::from_secs(3);
    let before = obs.connections();
    std::thread::sleep(span);
    let idle = obs.connections() - before;
    let before = obs.connections();
    let started = Instant::now();
    for _ in 0..3 {
        alice.ok(&["sync"]);
        alice.ok(&["members", "cover"]);
    }
    std::thread::sleep(span.saturating_sub(started.elapsed()));
    let with_commands = obs.connections() - before;
    eprintln!("connections opened in {span:?}: {idle} idle, {with_commands} with six commands");
    assert!(idle >= 3, "the links are replaced at each turn: {idle} in {span:?}");
    // Turns of 6 to 10 ticks open 3 to 6 connections in 3 s; three syncs of their own
    // would open at least two each (a receive link per mailbox, alice's send link).
    assert!(
        with_commands <= idle + 4,
        "commands opened connections of their own: {with_commands} against {idle}"
    );
    // A command that asks for a proxy the daemon is not using is refused, not sent around it.
    let err = alice.fails(&["--proxy", "socks5h://127.0.0.1:9", "channels"]);
    assert!(err.contains("daemon for this home reaches relays directly"), "{err}");

    let window = Duration::from_secs(4);
    // A quiet stretch.
    let quiet_from = Instant::now();
    std::thread::sleep(window);
    let quiet = stream(&obs, Dir::Up, quiet_from, quiet_from + window);

    // A stretch with traffic both ways.
    let busy_from = Instant::now();
    let mut latencies = Vec::new();
    let mut i = 0;
    while busy_from.elapsed() < window - Duration::from_millis(800) {
        let t = Instant::now();
        alice.ok(&["send", "cover", &format!("from alice {i}")]);
        latencies.push(t.elapsed());
        bob.ok(&["send", "cover", &format!("from bob {i}")]);
        i += 1;
    }
    std::thread::sleep(window.saturating_sub(busy_from.elapsed()));
    let busy = stream(&obs, Dir::Up, busy_from, busy_from + window);

    let (q, b) = (quiet.len() as f64, busy.len() as f64);
    eprintln!("records up in {window:?}: quiet {q}, busy {b}; {i} messages each way; alice's send took {latencies:?}");
    assert!(q >= 40.0, "4 send and 8 receive ticks a second: {q} records in 4 s");
    assert!(
        (b - q).abs() <= 0.15 * q,
        "quiet {q} vs busy {b} records: the rate gives the talk away"
    );
    let all: Vec<Record> = quiet.iter().chain(&busy).cloned().collect();
    one_length(&all, Dir::Up);
    one_length(&stream(&obs, Dir::Down, quiet_from, Instant::now()), Dir::Down);

    // Point 7: the links do not open at the same moment (a turn takes 6 to 10 ticks at
    // random, and each link first connects after a random wait), so the opening times of
    // a daemon's connections do not pair them up.
    let mut first: BTreeMap<usize, Instant> = BTreeMap::new();
    for r in obs.records() {
        first.entry(r.conn).or_insert(r.at);
    }
    let opened: Vec<Instant> = first.into_values().filter(|t| *t >= daemon_from).collect();
    let together = opened
        .iter()
        .filter(|t| {
            opened
                .iter()
                .filter(|u| (**t).max(**u) - (**t).min(**u) < Duration::from_millis(20))
                .count()
                > 1
        })
        .count();
    eprintln!(
        "{together} of {} connections opened within 20 ms of another",
        opened.len()
    );
    assert!(opened.len() >= 10, "{} connections", opened.len());
    assert!(
        together * 3 < opened.len(),
        "{together} of {} connections opened within 20 ms of another",
        opened.len()
    );

    // And the conversation happened: every message arrived, once. Alice's daemon reads each
    // of her mailboxes in its own receive turn, so bob's last messages may still be a turn
    // or two away.
    bob.ok(&["sync"]);
    let bob_got: Vec<String> = bob.texts("cover").into_iter().map(|(_, t)| t).collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    let alice_got = loop {
        let got: Vec<String> = alice.texts("cover").into_iter().map(|(_, t)| t).collect();
        if got.iter().any(|t| *t == format!("from bob {}", i - 1)) || Instant::now() > deadline {
            break got;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    for n in 0..i {
        let a = format!("from alice {n}");
        let b = format!("from bob {n}");
        assert_eq!(bob_got.iter().filter(|t| **t == a).count(), 1, "{bob_got:?}");
        assert_eq!(alice_got.iter().filter(|t| **t == b).count(), 1, "{alice_got:?}");
    }
    daemon.stop();
    let log = daemon.stderr.lock().unwrap().clone();
    assert!(!log.contains("warning"), "{log}");
}

/// A member's own mailbox for a channel, as `debug mailbox` prints it.
struct Held {
    receive_id: Vec<u8>,
    send: Vec<u8>,
    seal: Vec<u8>,
}

fn held(c: &Client, channel: &str) -> Held {
    let v: serde_json::Value = serde_json::from_str(&c.ok(&["debug", "mailbox", channel])).unwrap();
    let field = |k: &str| unhex(v[k].as_str().unwrap());
    Held {
        receive_id: field("mailbox"),
        send: field("send"),
        seal: field("seal"),
    }
}

/// Every record value of a redb table in the relay's store, with its key.
fn relay_table(data: &std::path::Path, table: &str) -> Vec<(Vec<u8>, Vec<u8>)> {
    use redb::ReadableTable as _;
    let db = redb::Database::open(data.join("mailboxes.redb")).unwrap();
    let txn = db.begin_read().unwrap();
    let def: redb::TableDefinition<&[u8], &[u8]> = redb::TableDefinition::new(table);
    let t = txn.open_table(def).unwrap();
    t.iter()
        .unwrap()
        .map(|e| {
            let (k, v) = e.unwrap();
            (k.value().to_vec(), v.value().to_vec())
        })
        .collect()
}

#[test]
fn the_relay_learns_no_names_no_content_and_cannot_join_a_send_to_a_receive_by_id() {
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("relay");
    let mut relay = RelayProc::start(&data, &[]);
    let names = [
        "alice-northwind-counsel",
        "bruno-harbor-treasury",
        "chen-delegation-aide",
    ];
    let [alice, bruno, chen] = people(root.path(), &relay, names);
    let channel = "pipeline-acquisition-talks";
    channel_with(&alice, &[&bruno, &chen], channel);
    let texts = [
        "our floor is 41.5 million",
        "the board meets on thursday",
        "counter-offer drafted by legal",
    ];
    let before = held(&bruno, channel);
    alice.ok(&["send", channel, texts[0]]);
    // Bruno rotates his mailbox; the conversation goes on.
    bruno.ok(&["update", channel]);
    let after = held(&bruno, channel);
    bruno.ok(&["send", channel, texts[1]]);
    chen.ok(&["send", channel, texts[2]]);
    for c in [&alice, &bruno, &chen] {
        c.ok(&["sync"]);
    }
    for c in [&alice, &bruno, &chen] {
        let got: Vec<String> = c.texts(channel).into_iter().map(|(_, t)| t).collect();
        assert_eq!(got, texts, "every member sees the whole conversation, in order");
    }

    // Rotation: new receive id, new send capability, new seal key.
    assert_ne!(before.receive_id, after.receive_id);
    assert_ne!(before.send, after.send);
    assert_ne!(before.seal, after.seal);

    let mut secrets: Vec<(String, Vec<u8>)> = Vec::new();
    for n in names {
        secrets.push((format!("name {n}"), n.as_bytes().to_vec()));
    }
    secrets.push(("channel name".into(), channel.as_bytes().to_vec()));
    for t in texts {
        secrets.push((format!("plaintext {t:?}"), t.as_bytes().to_vec()));
    }
    for c in [&alice, &bruno, &chen] {
        let members: Vec<serde_json::Value> = c
            .ok(&["members", channel, "--json"])
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        for m in members {
            let fp = m["fingerprint"].as_str().unwrap().to_string();
            secrets.push((format!("fingerprint {fp}"), fp.into_bytes()));
        }
        let h = held(c, channel);
        secrets.push(("a send capability".into(), h.send.clone()));
        secrets.push(("a send capability in hex".into(), hex(&h.send).into_bytes()));
        secrets.push(("a seal key".into(), h.seal.clone()));
        secrets.push(("a receive id in the log".into(), hex(&h.receive_id).into_bytes()));
    }
    secrets.push(("bruno's old send capability".into(), before.send.clone()));
    // Everything the relay wrote: its data directory, stdout and stderr.
    relay.kill9();
    let mut written: Vec<(String, Vec<u8>)> = files(&data)
        .into_iter()
        .map(|f| (f.display().to_string(), std::fs::read(&f).unwrap()))
        .collect();
    written.push(("relay stderr".into(), relay.logs().into_bytes()));
    for (what, needle) in &secrets {
        for (file, bytes) in &written {
            let hit = if what.contains("in the log") {
                file == "relay stderr" && contains(bytes, needle)
            } else {
                contains(bytes, needle)
            };
            assert!(!hit, "{file} holds {what}");
        }
    }

    // What the relay does hold names one mailbox per record, never another.
    let mailboxes = relay_table(&data, "mailboxes");
    let senders = relay_table(&data, "senders");
    let ids: Vec<Vec<u8>> = mailboxes.iter().map(|(k, _)| k.clone()).collect();
    // A sender record is version 1 || receive id (docs/protocol.md, "Relay record formats").
    let sender_id = |v: &[u8]| -> Vec<u8> {
        match v {
            [1, id @ ..] if id.len() == 32 => id.to_vec(),
            _ => v.to_vec(),
        }
    };
    assert_eq!(ids.len(), 5, "three members, bruno's retired mailbox, the sequencer");
    for (k, v) in mailboxes.iter().chain(&senders) {
        for other in &ids {
            if other != k {
                let whole = [k.as_slice(), v.as_slice()].concat();
                let linked = senders.iter().any(|(sk, sv)| sk == k && &sender_id(sv) == other);
                assert!(linked || !contains(&whole, other), "a record names another mailbox");
            }
        }
    }
    // A send and a receive share no id: the relay keeps SHA-256(send capability) -> receive
    // id, the sender presents the capability, the recipient the receive id.
    for c in [&alice, &bruno, &chen] {
        let h = held(c, channel);
        let digest = backchannel_core::mailbox::SendCapability(h.send.clone().try_into().unwrap()).digest();
        assert_ne!(h.send, h.receive_id);
        assert!(senders
            .iter()
            .any(|(k, v)| k == &digest && sender_id(v) == h.receive_id));
    }
}

#[test]
fn with_a_socks5_proxy_every_connection_goes_through_it_by_name_each_on_its_own_circuit() {
    let root = tempfile::tempdir().unwrap();
    let relay = RelayProc::start(&root.path().join("relay"), &["--advertise", "localhost"]);
    assert!(relay.address.contains("@localhost:"), "{}", relay.address);
    let proxy = common::socks5::Socks5Server::start();
    let alice = Client::new(root.path(), "alice");
    let out = alice.ok(&[
        "--proxy",
        &proxy.url(),
        "init",
        "--name",
        "alice",
        "--relay",
        &relay.address,
    ]);
    assert!(out.contains("through socks5h://"), "{out}");
    let [bob] = people(root.path(), &relay, ["bob"]);
    // No --proxy from here on: init remembered it.
    channel_with(&alice, &[&bob], "tor");
    alice.ok(&["send", "tor", "over the proxy"]);
    bob.ok(&["send", "tor", "and back"]);
    assert_eq!(alice.texts("tor").len(), 2);
    assert_eq!(bob.texts("tor").len(), 2);

    // Every connection of alice's went through the proxy, naming the relay by its host name
    // (socks5h: resolved by the proxy, never locally), each with its own isolation username.
    let targets = proxy.targets();
    assert!(targets.len() >= 4, "{targets:?}");
    assert!(
        targets.iter().all(|(h, p)| h == "localhost" && *p == relay.port),
        "{targets:?}"
    );
    let users = proxy.usernames();
    let mut distinct = users.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), users.len(), "one circuit per connection: {users:?}");

    // Without the proxy alice cannot reach the relay at all: nothing bypasses it.
    drop(proxy);
    let err = alice.fails(&["sync"]);
    assert!(err.contains("proxy"), "{err}");
    // A proxy URL that would resolve names locally is refused.
    let err = alice.fails(&["--proxy", "socks5://127.0.0.1:9050", "sync"]);
    assert!(err.contains("socks5h"), "{err}");
}

#[test]
fn a_delivered_envelope_cannot_be_found_in_the_relay_files_afterwards() {
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("relay");
    let mut relay = RelayProc::start(&data, &[]);
    let [alice, bob] = people(root.path(), &relay, ["alice", "bob"]);
    channel_with(&alice, &[&bob], "shred");
    let receive_id: [u8; 32] = held(&bob, "shred").receive_id.try_into().unwrap();
    alice.ok(&["send", "shred", "burn after reading"]);

    // The operator copies the envelope while it waits for bob (it holds the disk and the keys).
    relay.kill9();
    let stored = stored_envelopes(&data, receive_id);
    assert_eq!(stored.len(), 1);
    let listen = format!("127.0.0.1:{}", relay.port);
    let mut relay = RelayProc::start_on(&data, &listen, &[]);
    assert_eq!(bob.texts("shred"), vec![("alice".into(), "burn after reading".into())]);
    relay.kill9();

    let scan = |when: &str| {
        for f in files(&data) {
            let bytes = std::fs::read(&f).unwrap();
            for e in &stored {
                for window in [&e[..], &e[..32], &e[2000..2032], &e[e.len() - 32..]] {
                    assert!(
                        !contains(&bytes, window),
                        "{when}: {} still holds the envelope",
                        f.display()
                    );
                }
            }
        }
    };
    scan("after the acknowledgement");
    {
        let mut db = redb::Database::open(data.join("mailboxes.redb")).unwrap();
        db.compact().unwrap();
    }
    scan("after compaction");
}

/// Envelopes waiting in one mailbox, read from the relay's store while the relay is stopped.
fn waiting(data: &std::path::Path, receive_id: &[u8]) -> usize {
    stored_envelopes(data, receive_id.try_into().unwrap()).len()
}

#[test]
fn after_a_rotation_the_others_deliver_to_the_new_mailbox() {
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("relay");
    let mut relay = RelayProc::start(&data, &[]);
    let listen = format!("127.0.0.1:{}", relay.port);
    let [alice, bob] = people(root.path(), &relay, ["alice", "bob"]);
    channel_with(&alice, &[&bob], "rot");
    let old = held(&bob, "rot");
    // Sent to the old mailbox, not yet collected when bob rotates.
    alice.ok(&["send", "rot", "before"]);
    bob.ok(&["update", "rot"]);
    let new = held(&bob, "rot");
    assert_ne!(old.receive_id, new.receive_id);
    alice.ok(&["send", "rot", "after"]);

    relay.kill9();
    assert_eq!(
        waiting(&data, &new.receive_id),
        1,
        "alice's second message went to bob's new mailbox"
    );
    let mut relay = RelayProc::start_on(&data, &listen, &[]);
    let got: Vec<String> = bob.texts("rot").into_iter().map(|(_, t)| t).collect();
    assert_eq!(got, ["before", "after"]);
    relay.kill9();
    assert_eq!(waiting(&data, &old.receive_id), 0);
    assert_eq!(waiting(&data, &new.receive_id), 0);
}

/// The extensions of a TLS ClientHello (type, body), from the first record a client sent.
fn client_hello_extensions(opening: &[u8]) -> Vec<(u16, Vec<u8>)> {
    let u16_at = |b: &[u8], i: usize| u16::from_be_bytes([b[i], b[i + 1]]);
    assert_eq!(opening[0], 22, "a handshake record");
    let record_len = usize::from(u16_at(opening, 3));
    let hello = &opening[5..5 + record_len];
    assert_eq!(hello[0], 1, "a ClientHello");
    // type (1) | length (3) | legacy_version (2) | random (32)
    let mut i = 4 + 2 + 32;
    i += 1 + usize::from(hello[i]); // session id
    i += 2 + usize::from(u16_at(hello, i)); // cipher suites
    i += 1 + usize::from(hello[i]); // compression methods
    let end = i + 2 + usize::from(u16_at(hello, i));
    i += 2;
    let mut out = Vec::new();
    while i < end {
        let (kind, len) = (u16_at(hello, i), usize::from(u16_at(hello, i + 2)));
        out.push((kind, hello[i + 4..i + 4 + len].to_vec()));
        i += 4 + len;
    }
    out
}

/// Issue 16, point 5: an observer of the wire sees no name in any ClientHello: no
/// server_name extension, and not the fixed name earlier releases sent, nor a ticket to
/// resume an earlier connection's session (which would link the two); a new relay's
/// certificate carries no fixed name either (its hash is all a client checks); and every
/// link's key exchange is the hybrid X25519MLKEM768, the only group a client offers (the
/// relay refuses a classical one: `tls::tests::the_relay_speaks_only_the_hybrid_post_quantum_key_exchange`).
#[test]
fn no_client_hello_names_the_service() {
    let root = tempfile::tempdir().unwrap();
    let relay = RelayProc::start(&root.path().join("relay"), &[]);
    let obs = Observer::start(relay.port);
    let [alice, bob] = observed_people(root.path(), &relay, &obs, ["alice", "bob"]);
    channel_with(&alice, &[&bob], "quiet");
    alice.ok(&["send", "quiet", "hello"]);
    assert_eq!(bob.texts("quiet").len(), 1);
    let openings = obs.openings();
    assert!(openings.len() >= 2, "{} connections", openings.len());
    for opening in &openings {
        let exts = client_hello_extensions(opening);
        assert!(!exts.is_empty());
        assert!(
            exts.iter().all(|(kind, _)| *kind != 0),
            "a server_name extension: {exts:?}"
        );
        // No resumption: a pre_shared_key (41) would tie this connection to an earlier one.
        assert!(
            exts.iter().all(|(kind, _)| *kind != 41),
            "a pre_shared_key extension: {exts:?}"
        );
        assert!(
            !opening.windows(11).any(|w| w == b"backchannel"),
            "the service's name in a ClientHello"
        );
        // Point 5: the one key exchange offered, and the one share, is X25519MLKEM768.
        let hybrid = backchannel_core::tls::X25519MLKEM768_CODE.to_be_bytes();
        let groups = &exts.iter().find(|(k, _)| *k == 10).expect("supported_groups").1;
        assert_eq!(groups[..], [0, 2, hybrid[0], hybrid[1]], "groups offered: {groups:?}");
        let share = &exts.iter().find(|(k, _)| *k == 51).expect("key_share").1;
        assert_eq!(share[2..4], hybrid, "the one key share");
        // Its 1,184-byte ML-KEM-768 key and 32-byte X25519 key, and nothing after.
        assert_eq!(share.len(), 2 + 4 + 1184 + 32);
    }
    let cert = std::fs::read(root.path().join("relay/relay-cert.der")).unwrap();
    for fixed in [&b"backchannel"[..], b"rcgen"] {
        assert!(
            !cert.windows(fixed.len()).any(|w| w == fixed),
            "the certificate names {fixed:?}"
        );
    }
}

/// Per connection: the ids of our mailboxes it touched, and the digests of the send
/// capabilities it sent into.
type Touched = (BTreeSet<[u8; 32]>, BTreeSet<[u8; 32]>);

/// A relay run in this process that records, per connection, every request: what an
/// operator who modified its relay would see.
struct RecordingRelay {
    address: String,
    log: std::sync::Arc<std::sync::Mutex<Vec<(u64, backchannel_core::frame::Request)>>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RecordingRelay {
    fn start(data: &std::path::Path) -> Self {
        let log: std::sync::Arc<std::sync::Mutex<Vec<(u64, backchannel_core::frame::Request)>>> = Default::default();
        let record = log.clone();
        let relay = backchannel_relay::Relay::open(data.to_path_buf(), backchannel_relay::Limits::default())
            .unwrap()
            .with_recorder(std::sync::Arc::new(move |conn, req| {
                record.lock().unwrap().push((conn, req.clone()));
            }));
        let pin = relay.pin();
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        std_listener.set_nonblocking(true).unwrap();
        let port = std_listener.local_addr().unwrap().port();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            rt().block_on(async move {
                let listener = tokio::net::TcpListener::from_std(std_listener).unwrap();
                relay
                    .serve(listener, async {
                        let _ = stopped.await;
                    })
                    .await;
            })
        });
        let address = backchannel_core::relay_address::RelayAddress {
            pin: pin.0,
            host: "127.0.0.1".into(),
            port,
        }
        .to_string();
        RecordingRelay {
            address,
            log,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// Per connection: our mailboxes it created, opened, acknowledged in or deleted, and
    /// the mailboxes it sent into (by their send capability's digest, as the relay keeps them).
    fn per_connection(&self) -> BTreeMap<u64, Touched> {
        use backchannel_core::frame::Request;
        use backchannel_core::mailbox::SendCapability;
        let mut out: BTreeMap<u64, Touched> = BTreeMap::new();
        for (conn, req) in self.log.lock().unwrap().iter() {
            let (mine, into) = out.entry(*conn).or_default();
            match req {
                Request::Create { mailbox, .. }
                | Request::Open { mailbox, .. }
                | Request::Ack { mailbox, .. }
                | Request::Delete { mailbox } => {
                    mine.insert(mailbox.0);
                }
                Request::Send { send, .. } => {
                    into.insert(SendCapability(*send).digest());
                }
                _ => {}
            }
        }
        out
    }
}

impl Drop for RecordingRelay {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// What `debug mailbox` prints for a member's mailbox in a channel: its id, and the digest
/// of its send capability (how the relay knows the mailbox a send goes into).
fn mailbox_of(c: &Client, channel: &str) -> ([u8; 32], [u8; 32]) {
    let v: serde_json::Value = serde_json::from_str(&c.ok(&["debug", "mailbox", channel])).unwrap();
    let id: [u8; 32] = unhex(v["mailbox"].as_str().unwrap()).try_into().unwrap();
    let send: [u8; 32] = unhex(v["send"].as_str().unwrap()).try_into().unwrap();
    (id, backchannel_core::mailbox::SendCapability(send).digest())
}

/// Alice, bob and carol at the recording relay; bob in "one" (alice's) and "two" (carol's).
fn bob_in_two_channels(root: &std::path::Path, relay: &RecordingRelay) -> [Client; 3] {
    let [alice, bob, carol] = ["alice", "bob", "carol"].map(|n| {
        let c = Client::new(root, n);
        c.init(n, &relay.address);
        c
    });
    for (owner, channel) in [(&alice, "one"), (&carol, "two")] {
        owner.ok(&["channel", "new", channel]);
        let invite = owner.ok(&["invite", channel]);
        bob.ok(&["join", invite.trim()]);
        owner.ok(&["sync"]);
        bob.ok(&["sync", "--wait", "5"]);
    }
    [alice, bob, carol]
}

/// Issue 16, point 2: a relay operator who is a member, holding every capability a member
/// holds, and who records which connection does what, cannot tie two of a member's
/// mailboxes together by their connections. Bob is in two channels (with alice, and with
/// carol) and runs a drop box; everyone sends, reads, updates keys and leaves a letter. No
/// connection of anyone creates, opens, fetches from or deletes two mailboxes, and none
/// sends into two channels.
#[test]
fn no_connection_ties_two_of_a_members_mailboxes() {
    let root = tempfile::tempdir().unwrap();
    let relay = RecordingRelay::start(&root.path().join("relay"));
    let [alice, bob, carol] = bob_in_two_channels(root.path(), &relay);
    let drop = bob.ok(&["drop", "create", "tips"]);
    alice.ok(&["send", "one", "to bob from alice"]);
    carol.ok(&["send", "two", "to bob from carol"]);
    bob.ok(&["send", "one", "hello alice"]);
    bob.ok(&["send", "two", "hello carol"]);
    bob.ok(&["update", "one"]);
    alice.ok(&["drop", "send", "--direct", drop.trim(), "a tip"]);
    bob.ok(&["sync"]);
    assert_eq!(bob.texts("one").len(), 2);
    assert_eq!(bob.texts("two").len(), 2);
    assert_eq!(alice.texts("one").len(), 2);
    assert_eq!(carol.texts("two").len(), 2);
    assert!(bob.ok(&["drop", "read", "tips"]).contains("a tip"));

    let connections = relay.per_connection();
    assert!(connections.len() > 10, "{} connections", connections.len());
    for (conn, (mine, _)) in &connections {
        assert!(mine.len() <= 1, "connection {conn} touched {} mailboxes", mine.len());
    }
    // Bob's sends in "one" go to alice's mailbox there, his sends in "two" to carol's.
    let (_, alice_one) = mailbox_of(&alice, "one");
    let (_, carol_two) = mailbox_of(&carol, "two");
    for (conn, (_, into)) in &connections {
        assert!(
            !(into.contains(&alice_one) && into.contains(&carol_two)),
            "connection {conn} sent into both channels"
        );
    }
}

/// Issue 16, point 2: with a connection per mailbox, a home with 200 channels still syncs
/// within the relay's default per-address limits (64 connections): the mailboxes are
/// fetched in turn, each connection closed before the next opens, and a wait long-polls
/// at most 16 of them at once.
#[test]
fn a_home_with_200_channels_syncs_within_the_default_limits() {
    let root = tempfile::tempdir().unwrap();
    let relay = RelayProc::start(&root.path().join("relay"), &["--stats-interval", "1s"]);
    let [alice, bob] = people(root.path(), &relay, ["alice", "bob"]);
    for i in 0..200 {
        alice.ok(&["channel", "new", &format!("c{i:03}")]);
    }
    let invite = alice.ok(&["invite", "c199"]);
    bob.ok(&["join", invite.trim()]);
    alice.ok(&["sync"]);
    bob.ok(&["sync", "--wait", "5"]);
    bob.ok(&["send", "c199", "found you"]);
    let started = Instant::now();
    alice.ok(&["sync", "--wait", "5"]);
    eprintln!("a sync of 200 channels with one message took {:?}", started.elapsed());
    assert_eq!(alice.texts("c199"), vec![("bob".to_string(), "found you".to_string())]);
    // A wait with nothing to bring long-polls some, and fails nothing.
    alice.ok(&["sync", "--wait", "1"]);
    // No connection was refused for its address, in any of the relay's counts (one more
    // count is logged after the last command).
    std::thread::sleep(Duration::from_millis(1200));
    let logs = relay.logs();
    let refused: Vec<u64> = logs
        .split("refused_per_address=")
        .skip(1)
        .map(|rest| {
            rest.split(|c: char| !c.is_ascii_digit())
                .next()
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect();
    assert!(!refused.is_empty() && refused.iter().all(|n| *n == 0), "{refused:?}");
}

/// Issue 16, point 2, under cover traffic: the daemon's paced receive link serves one of
/// bob's mailboxes per turn, each turn on a fresh connection, so the operator who records
/// every connection finds none that opens two of his mailboxes (his two channels' and his
/// drop box's), while his messages still go and arrive; and what the links send when bob
/// has nothing to send goes into no mailbox.
#[test]
fn under_cover_no_connection_opens_two_of_a_members_mailboxes() {
    let root = tempfile::tempdir().unwrap();
    let relay = RecordingRelay::start(&root.path().join("relay"));
    let [alice, bob, carol] = bob_in_two_channels(root.path(), &relay);
    bob.ok(&["drop", "create", "tips"]);
    let before = relay.per_connection().keys().max().copied().unwrap_or(0);
    let mut daemon = DaemonProc::start(&bob, &["--cover", "8/s"]);
    alice.ok(&["send", "one", "to bob from alice"]);
    carol.ok(&["send", "two", "to bob from carol"]);
    bob.ok(&["send", "one", "hello alice"]);
    bob.ok(&["send", "two", "hello carol"]);
    let deadline = Instant::now() + Duration::from_secs(60);
    while bob.texts("one").len() < 2 || bob.texts("two").len() < 2 {
        assert!(Instant::now() < deadline, "bob's daemon did not bring the messages");
        std::thread::sleep(Duration::from_millis(500));
    }
    alice.ok(&["sync", "--wait", "20"]);
    carol.ok(&["sync", "--wait", "20"]);
    assert_eq!(alice.texts("one").len(), 2);
    assert_eq!(carol.texts("two").len(), 2);
    daemon.stop();
    let connections = relay.per_connection();
    let daemons: Vec<_> = connections.iter().filter(|(conn, _)| **conn > before).collect();
    assert!(daemons.len() > 6, "{} connections", daemons.len());
    for (conn, (mine, _)) in &daemons {
        assert!(mine.len() <= 1, "connection {conn} touched {} mailboxes", mine.len());
    }
    // Point 7: the filler is no send into a mailbox (no cover mailbox ties bob's send turns
    // together): while his daemon ran, sends went into the channels' mailboxes, and nothing
    // else.
    let channels = BTreeSet::from([
        mailbox_of(&alice, "one").1,
        mailbox_of(&bob, "one").1,
        mailbox_of(&bob, "two").1,
        mailbox_of(&carol, "two").1,
    ]);
    let sent_into: BTreeSet<[u8; 32]> = daemons.iter().flat_map(|(_, (_, into))| into.iter().copied()).collect();
    assert_eq!(sent_into, channels, "a send went into a mailbox of no channel");
    let creates = relay
        .log
        .lock()
        .unwrap()
        .iter()
        .filter(|(conn, req)| *conn > before && matches!(req, backchannel_core::frame::Request::Create { .. }))
        .count();
    assert_eq!(creates, 0, "cover traffic made a mailbox");
}

/// An answer's delay as the observer saw it (ms), and whether its request waited for the disk.
type Sample = (f64, bool);

/// What an observer of one connection learns from each answer: the time from the record
/// that carried a request up to the record that carried its answer down. `labels` are the
/// requests in the order the connection sent them; frames are paired up in order (the
/// relay's first frame, its hello, answers nothing).
fn answer_delays(records: &[Record], conn: usize, labels: &[bool]) -> Vec<(f64, bool)> {
    let frames: Vec<&Record> = records.iter().filter(|r| r.conn == conn).collect();
    let up: Vec<&&Record> = frames.iter().filter(|r| r.dir == Dir::Up).collect();
    let down: Vec<&&Record> = frames.iter().filter(|r| r.dir == Dir::Down).skip(1).collect();
    assert_eq!(up.len(), labels.len(), "connection {conn}: one record up per request");
    assert_eq!(
        down.len(),
        labels.len(),
        "connection {conn}: one record down per answer"
    );
    up.iter()
        .zip(&down)
        .zip(labels)
        .map(|((u, d), slow)| (d.at.duration_since(u.at).as_secs_f64() * 1e3, *slow))
        .collect()
}

/// The accuracy on `test` of the best threshold on `train` (either side of it may be the
/// slow class): the observer's classifier of answer delays.
fn threshold_accuracy(train: &[(f64, bool)], test: &[(f64, bool)]) -> f64 {
    let accuracy = |set: &[(f64, bool)], cut: f64, slow_above: bool| {
        set.iter()
            .filter(|(d, slow)| (*d > cut) == (*slow == slow_above))
            .count() as f64
            / set.len() as f64
    };
    let mut best = (0.0, 0.0, true);
    for (cut, _) in train {
        for slow_above in [true, false] {
            let a = accuracy(train, *cut, slow_above);
            if a > best.0 {
                best = (a, *cut, slow_above);
            }
        }
    }
    accuracy(test, best.1, best.2)
}

/// Runs `rounds` of a paced (or not) receive link and send link through the observer:
/// Create, Send, Ping, Fetch, Ack, Fetch; labelled slow (they wait for the store's fsync:
/// Create, Send, Ack) or fast (Ping, Fetch). Returns every answer delay the observer saw.
fn observed_answer_delays(relay: &RelayProc, paced: bool, workers: usize, rounds: usize) -> Vec<(f64, bool)> {
    use backchannel_client::RelayConnection;
    use backchannel_core::envelope::{Envelope, ENVELOPE_SIZE};
    use backchannel_core::frame::Request;
    use backchannel_core::mailbox::MailboxKeys;
    use backchannel_core::relay_address::RelayAddress;
    use rand_core::{OsRng, RngCore};

    let obs = Observer::start(relay.port);
    let address: RelayAddress = via_port(&relay.address, obs.port).parse().unwrap();
    let labels: Vec<(Vec<bool>, Vec<bool>)> = rt().block_on(async {
        let work = (0..workers).map(|_| {
            let address = address.clone();
            async move {
                let mut recv = RelayConnection::connect(&address).await.unwrap();
                let mut send = RelayConnection::connect(&address).await.unwrap();
                let (mut recv_labels, mut send_labels) = (Vec::new(), Vec::new());
                if paced {
                    recv.request(&Request::Paced).await.unwrap();
                    send.request(&Request::Paced).await.unwrap();
                    recv_labels.push(false);
                    send_labels.push(false);
                }
                for _ in 0..rounds {
                    let keys = MailboxKeys::generate(address.clone(), &mut OsRng);
                    let create = Request::create(&keys, 0);
                    recv.request(&create).await.unwrap();
                    let mut bytes = vec![0u8; ENVELOPE_SIZE];
                    OsRng.fill_bytes(&mut bytes);
                    let envelope = Envelope::from_bytes(&bytes).unwrap();
                    let sent = Request::Send {
                        send: keys.address.send.0,
                        envelope,
                        pow: 0,
                    };
                    send.request(&sent).await.unwrap();
                    send.request(&Request::Ping).await.unwrap();
                    let fetch = Request::Fetch { max: 1, wait_ms: 0 };
                    let seq = match recv.request(&fetch).await.unwrap() {
                        backchannel_core::frame::Response::Envelopes(list) => list[0].seq,
                        other => panic!("fetch: {other:?}"),
                    };
                    recv.request(&Request::Ack {
                        mailbox: keys.id(),
                        seq,
                    })
                    .await
                    .unwrap();
                    recv.request(&fetch).await.unwrap();
                    recv_labels.extend([true, false, true, false]);
                    send_labels.extend([true, false]);
                }
                (recv_labels, send_labels)
            }
        });
        futures_util::future::join_all(work).await
    });
    std::thread::sleep(Duration::from_millis(200));
    let records = after_setup(&obs.records());
    // Connections were accepted two per worker, in whatever order their handshakes came:
    // each is matched to its labels by its count of requests.
    let mut delays = Vec::new();
    let mut conns: Vec<usize> = records
        .iter()
        .map(|r| r.conn)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    for (recv_labels, send_labels) in &labels {
        for labels in [recv_labels, send_labels] {
            let at = conns
                .iter()
                .position(|c| records.iter().filter(|r| r.conn == *c && r.dir == Dir::Up).count() == labels.len())
                .expect("a connection with this many requests");
            let conn = conns.remove(at);
            delays.extend(answer_delays(&records, conn, labels));
        }
    }
    delays
}

/// Point 7 of the visitor-log work: `Ack`, `Create` and `Send` wait for the store's fsync,
/// `Fetch` and `Ping` do not. On a paced link the relay answers every request at its
/// answer floor, so an observer who times each answer on the wire, and trains a threshold
/// on half of 1,000 answers of each kind, classifies the other half no better than 55 %.
/// The same observer on connections that did not declare themselves paced does far better
/// (the test would fail if the relay ignored `Paced`).
#[test]
fn on_a_paced_link_an_observer_cannot_tell_what_waited_for_the_disk_by_its_answer_time() {
    let root = tempfile::tempdir().unwrap();
    let relay = RelayProc::start(&root.path().join("relay"), &[]);
    // Half to train on, half to test, drawn at random (the samples alternate in kind).
    let split = |all: &[Sample]| -> (Vec<Sample>, Vec<Sample>) {
        use rand_core::{OsRng, RngCore};
        let mut all = all.to_vec();
        for i in (1..all.len()).rev() {
            all.swap(i, OsRng.next_u32() as usize % (i + 1));
        }
        let test = all.split_off(all.len() / 2);
        (all, test)
    };
    let median = |all: &[(f64, bool)], slow: bool| {
        let mut d: Vec<f64> = all.iter().filter(|s| s.1 == slow).map(|s| s.0).collect();
        d.sort_by(f64::total_cmp);
        d[d.len() / 2]
    };

    // 4 workers × 84 rounds × 3 = 1,008 answers of each kind; the held-out accuracy of a
    // threshold trained on half of them.
    let classify = |paced: bool| -> f64 {
        let samples = observed_answer_delays(&relay, paced, 4, 84);
        let slow = samples.iter().filter(|s| s.1).count();
        assert!(
            slow >= 1000 && samples.len() - slow >= 1000,
            "{slow} of {}",
            samples.len()
        );
        let (train, test) = split(&samples);
        let accuracy = threshold_accuracy(&train, &test);
        eprintln!(
            "{}: median answer {:.2} ms after a request that waited for the disk, {:.2} ms after one that did not; classifier {:.1} %",
            if paced { "paced" } else { "not paced" },
            median(&samples, true),
            median(&samples, false),
            accuracy * 100.0
        );
        accuracy
    };
    let accuracy = classify(true);
    assert!(
        accuracy <= 0.55,
        "the observer tells them apart {:.1} % of the time",
        accuracy * 100.0
    );
    let unpaced = classify(false);
    assert!(
        unpaced > 0.65,
        "without the floor the answer times differ: {:.1} %",
        unpaced * 100.0
    );
}

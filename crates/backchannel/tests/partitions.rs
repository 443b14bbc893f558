//! Partitions, not only crashes (issue 17, point 2): a NATS JetStream cluster of three
//! nodes, relays and clients, each in a network namespace of its own joined by a bridge
//! (`tests/common/partition.rs`), while nftables rules cut nodes off, split the cluster
//! into a minority and a majority, and lose packets, and a proxy delays the routes. No
//! test touches an address outside the namespaces it makes.
//!
//! Checked as Jepsen would: every acknowledged send is shown exactly once after healing
//! (and every queued one once it goes); a send through a relay whose NATS node is in the
//! minority fails clearly or waits, and never reports success; no device shows a message
//! twice; a client shown "sent" never loses that message. What each test measured (the
//! time to a new leader, the longest send, sends acknowledged, messages lost) is printed
//! (`--no-capture`) and recorded in docs/reliability.md, "Partitions".
//!
//! Needs `nats-server` and `nft`, which the tests install when they are missing
//! (`scripts/install-nats.sh`, `scripts/install-nftables.sh`); a test that cannot have
//! them fails.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::assert_exactly_once_in_order;
use common::nats::require_nats;
use common::partition::{Host, NatsNet, Net};
use common::Client;

const ENVELOPES: &str = "BC_ENVELOPES";
const META: &str = "BC_META";

/// What the sends of a test came to.
#[derive(Default)]
struct Ledger {
    /// Texts each sender was told were sent, in order.
    acked: HashMap<String, Vec<String>>,
    /// Texts each sender was told were queued, not delivered.
    queued: HashMap<String, Vec<String>>,
    /// The longest a `send` took, and its text.
    longest: (Duration, String),
}

impl Ledger {
    /// `backchannel send ops TEXT` as `who` (in `clients`): records whether it was
    /// acknowledged ("sent") or queued, which is the only other outcome allowed (a
    /// failure that says the message is queued, not delivered).
    fn send(&mut self, clients: &Host, who: &Client, name: &str, text: &str) -> (bool, Duration) {
        let began = Instant::now();
        let r = clients.run(who, &["send", "ops", text]);
        let took = began.elapsed();
        if took > self.longest.0 {
            self.longest = (took, text.to_string());
        }
        if r.ok {
            assert!(r.stdout.contains("sent"), "a send that succeeds says so: {}", r.stdout);
            self.acked.entry(name.into()).or_default().push(text.into());
        } else {
            assert!(
                r.stderr.contains("queued, not delivered"),
                "a send that is not acknowledged says that the message is queued, not delivered: {}",
                r.stderr
            );
            eprintln!("{text}: queued after {:.1} s: {}", took.as_secs_f64(), r.stderr.trim());
            self.queued.entry(name.into()).or_default().push(text.into());
        }
        (r.ok, took)
    }

    fn count(map: &HashMap<String, Vec<String>>) -> usize {
        map.values().map(Vec::len).sum()
    }

    /// Everything `name` sent, acknowledged or queued.
    fn all(&self, name: &str) -> Vec<String> {
        let mut v: Vec<String> = self
            .acked
            .get(name)
            .into_iter()
            .chain(self.queued.get(name))
            .flatten()
            .cloned()
            .collect();
        v.sort();
        v
    }
}

/// Texts shown, by sender, in the order shown.
type Shown = HashMap<String, Vec<String>>;

/// Texts shown in `ops` by `reader`, by sender, in the order shown, and the warnings.
fn shown(clients: &Host, reader: &Client) -> (HashMap<String, Vec<String>>, Vec<String>) {
    let (texts, warnings) = clients.texts(reader, "ops");
    let mut out: HashMap<String, Vec<String>> = HashMap::new();
    for (from, text) in texts {
        out.entry(from).or_default().push(text);
    }
    (out, warnings)
}

/// Reads as each of `readers` until each shows all of `expected` (sender -> texts), for
/// at most `timeout`; returns what each shows then, and every warning the reads printed.
fn read_until(
    clients: &Host,
    readers: &[(&str, &Client)],
    expected: &[(&str, Vec<String>)],
    timeout: Duration,
) -> (HashMap<String, Shown>, Vec<String>) {
    let deadline = Instant::now() + timeout;
    let mut warnings = Vec::new();
    loop {
        let mut all = HashMap::new();
        let mut done = true;
        for (name, reader) in readers {
            let (seen, said) = shown(clients, reader);
            warnings.extend(said.into_iter().map(|w| format!("{name}: {w}")));
            for (sender, texts) in expected {
                let got = seen.get(*sender).map_or(0, Vec::len);
                done &= got >= texts.len();
            }
            all.insert(name.to_string(), seen);
        }
        if done || Instant::now() > deadline {
            return (all, warnings);
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Nothing shown twice by `who`, whoever sent it.
fn assert_nothing_twice(shown: &HashMap<String, Vec<String>>, who: &str) {
    for (sender, texts) in shown {
        let mut sorted = texts.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(
            sorted.len(),
            texts.len(),
            "{who} was shown one of {sender}'s messages twice: {texts:?}"
        );
    }
}

/// Polls until `nodes` agree on a leader of `stream` among themselves (that sees them
/// current); returns how long after `since` that was, and the leader. Runs beside the
/// sends.
fn time_to_leader(cluster: &NatsNet, nodes: &[usize], stream: &str, since: Instant) -> (Duration, usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(l) = cluster.stream_leader_among(nodes, stream) {
            return (since.elapsed(), l);
        }
        if Instant::now() > deadline {
            cluster.fail(&format!("no leader of {stream} within 60 s of the cut"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The harness itself: hosts reach each other through the switch and nothing else (no
/// route leaves the /24: a connection to any other address fails at once, as
/// unreachable), a cut drops packets both ways (a connection times out), and a heal
/// lets them through again.
#[test]
fn the_network_reaches_only_its_own_hosts_and_cuts_and_heals() {
    let net = Net::new();
    let a = net.host("a", 2);
    let b = net.host("b", 3);
    // A listener in b: python's http.server, run inside b.
    let mut server = b
        .command("python3")
        .args(["-m", "http.server", "--bind", &b.addr, "8080"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while a.connect(&b.addr, 8080, 1.0) != "connected" {
        assert!(Instant::now() < deadline, "a cannot reach b's listener");
        std::thread::sleep(Duration::from_millis(100));
    }
    let routes = String::from_utf8_lossy(&a.output(&["ip", "-4", "route"]).stdout).into_owned();
    assert_eq!(
        routes.trim(),
        format!("10.213.0.0/24 dev eth0 proto kernel scope link src {}", a.addr),
        "a host's only route is the bridge's /24"
    );
    for outside in ["127.0.0.53", "10.0.2.2", "192.168.1.1", "1.1.1.1"] {
        let said = a.connect(outside, 53, 1.0);
        assert!(
            said == "OSError" || said == "ConnectionRefusedError",
            "{outside} from inside: {said}"
        );
    }

    net.cut(&[&a], &[&b]);
    assert_eq!(a.connect(&b.addr, 8080, 1.0), "TimeoutError", "{}", a.rules());
    net.heal();
    assert_eq!(a.connect(&b.addr, 8080, 2.0), "connected", "{}", a.rules());
    net.lose(&[&a, &b], 50);
    assert!(a.rules().contains("numgen random mod 100 < 50"), "{}", a.rules());
    net.heal();
    assert!(!a.rules().contains("drop"), "{}", a.rules());
    let _ = server.kill();
    let _ = server.wait();
}

/// A node cut off from everything, leading both streams and with no relay talking to it:
/// the other two elect new leaders and the sends go on through them, waiting out the
/// election; after the heal the node catches up, and every message (acknowledged or
/// queued) is shown exactly once, in order per sender, on both sides.
#[test]
fn a_node_cut_off_with_the_stream_leaders_loses_and_repeats_nothing() {
    let bin = require_nats();
    let net = Net::new();
    let cluster = NatsNet::start(&net, &bin, false);
    let relay_host = net.host("relay", 21);
    let clients = net.host("clients", 31);
    let homes = net.dir().join("homes");
    // The relay talks to n1 and n2; n3 is the node to be cut off.
    let relay = relay_host.relay(&net.dir().join("relay"), &[cluster.url(0), cluster.url(1)], &[]);
    let alice = Client::new(&homes, "alice");
    let bob = Client::new(&homes, "bob");
    clients.init(&alice, "alice", &[&relay.address]);
    clients.init(&bob, "bob", &[&relay.address]);
    clients.channel_with(&alice, &[&bob], "ops");
    cluster.move_stream_leader(ENVELOPES, 2);
    cluster.move_stream_leader(META, 2);
    eprintln!(
        "n3 leads both streams; the meta leader is {:?}",
        cluster.meta_leader_of(0)
    );
    let _alice_daemon = clients.daemon(&alice);
    let _bob_daemon = clients.daemon(&bob);

    const TOTAL: usize = 24;
    const CUT: usize = 6;
    const HEAL: usize = 16;
    let mut ledger = Ledger::default();
    let mut during = Vec::new();
    let mut elections = Vec::new();
    std::thread::scope(|s| {
        let mut poll = None;
        for i in 0..TOTAL {
            if i == CUT {
                let others: Vec<&Host> = vec![cluster.host(0), cluster.host(1), &relay_host, &clients];
                net.cut(&[cluster.host(2)], &others);
                let since = Instant::now();
                let cluster = &cluster;
                poll =
                    Some(s.spawn(move || {
                        [ENVELOPES, META].map(|stream| time_to_leader(cluster, &[0, 1], stream, since))
                    }));
            }
            if i == HEAL {
                elections.extend(poll.take().unwrap().join().unwrap());
                net.heal();
                let back = cluster.wait_current(2, &[ENVELOPES, META], Duration::from_secs(60));
                eprintln!(
                    "healed: n3 current again on both streams {:.1} s after the heal",
                    back.as_secs_f64()
                );
            }
            let (who, name) = if i % 2 == 0 { (&alice, "alice") } else { (&bob, "bob") };
            let text = format!("m{i:03} from {name}");
            let (ok, took) = ledger.send(&clients, who, name, &text);
            if (CUT..HEAL).contains(&i) {
                during.push((ok, took));
            }
        }
    });
    for (stream, (took, leader)) in [ENVELOPES, META].iter().zip(&elections) {
        eprintln!(
            "{stream}: {} leads {:.1} s after the cut",
            cluster.name(*leader),
            took.as_secs_f64()
        );
    }
    eprintln!(
        "{TOTAL} sends: {} acknowledged, {} queued; during the cut {} of {} acknowledged, taking {:.1?}; the longest send {:.1} s ({})",
        Ledger::count(&ledger.acked),
        Ledger::count(&ledger.queued),
        during.iter().filter(|(ok, _)| *ok).count(),
        during.len(),
        during.iter().map(|(_, t)| *t).collect::<Vec<_>>(),
        ledger.longest.0.as_secs_f64(),
        ledger.longest.1,
    );
    assert!(
        during.iter().any(|(ok, _)| *ok),
        "the majority acknowledged no send while n3 was cut off"
    );

    let expected = [("alice", ledger.all("alice")), ("bob", ledger.all("bob"))];
    let (seen, warnings) = read_until(
        &clients,
        &[("alice", &alice), ("bob", &bob)],
        &expected,
        Duration::from_secs(60),
    );
    for (reader, shown) in &seen {
        for (sender, sent) in &expected {
            let acked = ledger.acked.get(*sender).cloned().unwrap_or_default();
            assert_exactly_once_in_order(shown, sender, &acked, reader);
            assert_exactly_once_in_order(shown, sender, sent, reader);
        }
    }
    eprintln!("messages lost: 0, shown twice: 0; warnings while reading: {warnings:?}");
    drop(relay);
}

/// A split with a relay on each side: relay a on n1 and n2 (the majority), relay b on n3
/// (the minority), which leads both streams when the cluster splits; the clients reach
/// both relays. Alice sent m000 before the split; during it bob reads it through relay a
/// (which acknowledges it there: the majority deletes it), then alice sends through relay
/// b while "bob2", a copy of bob's device made before the split, reads the same mailbox
/// through relay b; bob sends through relay a.
///
/// Checked: no send through relay b is acknowledged during the split (it fails saying the
/// message is queued); the majority acknowledges bob's; after the heal every message is
/// shown exactly once on both sides, alice's queued one included, and bob2 shows nothing
/// twice. Measured: how long the majority took to elect leaders, how long n3 went on
/// calling itself the leader, what each leader says the envelope stream holds after bob's
/// acknowledgement, and whether relay b handed m000 out again (a stale read: NATS answers
/// reads from a leader that has not yet noticed it lost its quorum).
#[test]
fn a_minority_acknowledges_nothing_and_healing_loses_and_repeats_nothing() {
    let bin = require_nats();
    let net = Net::new();
    let cluster = NatsNet::start(&net, &bin, false);
    let site_a = net.host("relay-a", 21);
    let site_b = net.host("relay-b", 22);
    let clients = net.host("clients", 31);
    let homes = net.dir().join("homes");
    let relay_a = site_a.relay(&net.dir().join("relay-a"), &[cluster.url(0), cluster.url(1)], &[]);
    let relay_b = site_b.relay(&net.dir().join("relay-b"), &[cluster.url(2)], &[]);
    let pin = |a: &str| a.split('@').next().unwrap().to_string();
    assert_eq!(pin(&relay_a.address), pin(&relay_b.address), "one cluster, one pin");
    let alice = Client::new(&homes, "alice");
    let bob = Client::new(&homes, "bob");
    clients.init(&alice, "alice", &[&relay_b.address]);
    clients.init(&bob, "bob", &[&relay_a.address]);
    clients.channel_with(&alice, &[&bob], "ops");

    // Acknowledged before the split; bob has not read it yet.
    let mut ledger = Ledger::default();
    assert!(ledger.send(&clients, &alice, "alice", "m000 from alice").0);
    let bob2 = bob.copy_as(&homes, "bob2");
    clients.ok(&bob2, &["config", "set", "relays", &relay_b.address]);
    cluster.move_stream_leader(ENVELOPES, 2);
    cluster.move_stream_leader(META, 2);

    let majority: Vec<&Host> = vec![cluster.host(0), cluster.host(1), &site_a];
    let minority: Vec<&Host> = vec![cluster.host(2), &site_b];
    let mut minority_sends = Vec::new();
    let (elections, stale_leader, bob_read, bob2_read) = std::thread::scope(|s| {
        net.cut(&minority, &majority);
        let split = Instant::now();

        let cluster = &cluster;
        let elections =
            s.spawn(move || [ENVELOPES, META].map(|stream| time_to_leader(cluster, &[0, 1], stream, split)));
        // How long n3 goes on calling itself each stream's leader.
        let stale_leader = s.spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(60);
            let mut until = [None; 2];
            while until.contains(&None) && Instant::now() < deadline {
                for (k, stream) in [ENVELOPES, META].iter().enumerate() {
                    if until[k].is_none() && cluster.stream_leader(2, stream) != Some(2) {
                        until[k] = Some(split.elapsed());
                    }
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            until.map(|u| u.unwrap_or_else(|| split.elapsed()))
        });

        // Bob reads through the majority once it has a leader: m000 arrives and is
        // acknowledged there.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (seen, _) = shown(&clients, &bob);
            if seen
                .get("alice")
                .is_some_and(|t| t.contains(&"m000 from alice".to_string()))
            {
                break;
            }
            assert!(Instant::now() < deadline, "bob never read m000 through the majority");
        }
        let bob_read = split.elapsed();
        // The store itself, asked for the envelope stream's state by the switch: the
        // majority's leader has deleted m000 (bob acknowledged it); does n3, if it still
        // calls itself the leader, answer with a stream that still holds it?
        let majority_leader = cluster.stream_leader_among(&[0, 1], ENVELOPES).ok();
        let store = [majority_leader, Some(2)].map(|i| {
            let i = i?;
            let info = cluster.stream_info(i, ENVELOPES)?;
            Some((
                cluster.name(i).to_string(),
                info["cluster"]["leader"].as_str().unwrap_or("none").to_string(),
                info["state"]["messages"].as_u64()?,
            ))
        });

        // The same mailbox through the minority's relay (bob2), while alice sends through
        // it: does relay b hand m000 out again? Alice's send is never acknowledged.
        let (clients_here, bob2) = (&clients, &bob2);
        let bob2_reads = s.spawn(move || {
            let (seen, warnings) = shown(clients_here, bob2);
            let stale = seen
                .get("alice")
                .is_some_and(|t| t.contains(&"m000 from alice".to_string()));
            (split.elapsed(), stale, warnings)
        });
        let text = "m001 from alice";
        let (ok, took) = ledger.send(&clients, &alice, "alice", text);
        assert!(
            !ok,
            "relay b acknowledged {text} while its NATS node was in the minority\n{}",
            cluster.logs()
        );
        minority_sends.push(took);
        let bob2_read = bob2_reads.join().unwrap();
        // Through the majority's: acknowledged.
        for i in 2..=3 {
            let text = format!("m{i:03} from bob");
            assert!(
                ledger.send(&clients, &bob, "bob", &text).0,
                "the majority did not acknowledge {text}"
            );
        }
        eprintln!("the envelope stream's state, (asked, leader it names, messages): {store:?}");
        (
            elections.join().unwrap(),
            stale_leader.join().unwrap(),
            bob_read,
            bob2_read,
        )
    });
    let failures: Vec<String> = relay_b
        .logs()
        .lines()
        .filter(|l| l.contains("storage failure"))
        .map(|l| l.split_once("ERROR").map_or(l, |(_, rest)| rest).trim().to_string())
        .collect();
    eprintln!("relay b's storage failures during the split: {failures:#?}");

    net.heal();
    let back = cluster.wait_current(2, &[ENVELOPES, META], Duration::from_secs(60));
    for (stream, (took, leader)) in [ENVELOPES, META].iter().zip(&elections) {
        eprintln!(
            "{stream}: {} leads the majority {:.1} s after the split",
            cluster.name(*leader),
            took.as_secs_f64()
        );
    }
    eprintln!(
        "n3 called itself the leader of {ENVELOPES} until {:.1} s and of {META} until {:.1} s after the \
         split; bob read m000 through relay a {:.1} s after it; bob2's read through relay b ended at {:.1} s: \
         m000 handed out again: {}; warnings {:?}",
        stale_leader[0].as_secs_f64(),
        stale_leader[1].as_secs_f64(),
        bob_read.as_secs_f64(),
        bob2_read.0.as_secs_f64(),
        bob2_read.1,
        bob2_read.2
    );
    eprintln!(
        "sends through the minority: refused (queued) after {:.1?}; healed: n3 current again {:.1} s after the heal",
        minority_sends,
        back.as_secs_f64()
    );

    // Alice's next commands send what she queued, once.
    let expected = [("alice", ledger.all("alice")), ("bob", ledger.all("bob"))];
    let (seen, warnings) = read_until(
        &clients,
        &[("alice", &alice), ("bob", &bob)],
        &expected,
        Duration::from_secs(60),
    );
    for (reader, shown) in &seen {
        for (sender, sent) in &expected {
            assert_exactly_once_in_order(shown, sender, sent, reader);
        }
    }
    let (at_bob2, _) = shown(&clients, &bob2);
    assert_nothing_twice(&at_bob2, "bob2");
    eprintln!(
        "{} acknowledged, {} queued then delivered; messages lost: 0; warnings while reading: {warnings:?}",
        Ledger::count(&ledger.acked),
        Ledger::count(&ledger.queued)
    );
    drop((relay_a, relay_b));
}

/// Delay and loss on the cluster's routes: every route goes through a delaying proxy
/// (100 ms each way while the fault lasts) and each node drops 10 % of the packets the
/// others send it (nftables, at random). Sends are still acknowledged, slower; after the
/// heal every message is shown exactly once, in order per sender.
#[test]
fn delay_and_loss_on_the_routes_slow_sends_but_lose_and_repeat_nothing() {
    let bin = require_nats();
    let net = Net::new();
    let cluster = NatsNet::start(&net, &bin, true);
    let relay_host = net.host("relay", 21);
    let clients = net.host("clients", 31);
    let homes = net.dir().join("homes");
    let relay = relay_host.relay(
        &net.dir().join("relay"),
        &[cluster.url(0), cluster.url(1), cluster.url(2)],
        &[],
    );
    let alice = Client::new(&homes, "alice");
    let bob = Client::new(&homes, "bob");
    clients.init(&alice, "alice", &[&relay.address]);
    clients.init(&bob, "bob", &[&relay.address]);
    clients.channel_with(&alice, &[&bob], "ops");
    let _alice_daemon = clients.daemon(&alice);
    let _bob_daemon = clients.daemon(&bob);

    const TOTAL: usize = 30;
    const FAULT: usize = 6;
    const HEAL: usize = 24;
    let mut ledger = Ledger::default();
    let mut took: [Vec<Duration>; 3] = Default::default();
    let mut elections = [0; 2];
    for i in 0..TOTAL {
        if i == FAULT {
            elections[0] = cluster.stream_elections();
            cluster.set_route_delay(Duration::from_millis(100));
            net.lose(&cluster.hosts(), 10);
        }
        if i == HEAL {
            elections[1] = cluster.stream_elections();
            cluster.set_route_delay(Duration::ZERO);
            net.heal();
        }
        let (who, name) = if i % 2 == 0 { (&alice, "alice") } else { (&bob, "bob") };
        let text = format!("m{i:03} from {name}");
        let (ok, t) = ledger.send(&clients, who, name, &text);
        assert!(ok, "{text} was not acknowledged under delay and loss");
        took[usize::from(i >= FAULT) + usize::from(i >= HEAL)].push(t);
    }
    let leader = cluster.stream_leader(0, ENVELOPES);
    let relay_at = (0..3).find(|&i| cluster.connections_named(i, "backchannel-relay") > 0);
    for (phase, t) in ["before", "with 100 ms and 10 % loss", "after"].iter().zip(&took) {
        let mut sorted = t.clone();
        sorted.sort();
        eprintln!(
            "{phase}: {} sends, median {:.0} ms, longest {:.0} ms",
            t.len(),
            sorted[sorted.len() / 2].as_secs_f64() * 1000.0,
            sorted[sorted.len() - 1].as_secs_f64() * 1000.0
        );
    }
    eprintln!(
        "stream leaders elected while the fault lasted: {}; the envelope stream's leader after: {:?}; \
         the relay's node: {:?}",
        elections[1] - elections[0],
        leader.map(|l| cluster.name(l)),
        relay_at.map(|l| cluster.name(l))
    );

    let expected = [("alice", ledger.all("alice")), ("bob", ledger.all("bob"))];
    let (seen, warnings) = read_until(
        &clients,
        &[("alice", &alice), ("bob", &bob)],
        &expected,
        Duration::from_secs(60),
    );
    for (reader, shown) in &seen {
        for (sender, sent) in &expected {
            assert_exactly_once_in_order(shown, sender, sent, reader);
        }
    }
    eprintln!(
        "{TOTAL} sends, {} acknowledged; messages lost: 0; warnings while reading: {warnings:?}",
        Ledger::count(&ledger.acked)
    );
    drop(relay);
}

/// A relay whose own NATS node is cut off (its packets dropped, so its connection is not
/// closed, only silent) reaches the majority through the other nodes it was given
/// (`--nats` three times) soon: the relay pings its node every 2 s, and after two
/// unanswered pings the client moves on. (With the NATS client's default of a ping a
/// minute, three unanswered, the relay acknowledged nothing for 185 s though two nodes
/// with a leader were reachable.)
#[test]
fn a_relay_whose_node_is_cut_off_reaches_the_others_soon() {
    let bin = require_nats();
    let net = Net::new();
    let cluster = NatsNet::start(&net, &bin, false);
    let relay_host = net.host("relay", 21);
    let clients = net.host("clients", 31);
    let homes = net.dir().join("homes");
    let relay = relay_host.relay(
        &net.dir().join("relay"),
        &[cluster.url(0), cluster.url(1), cluster.url(2)],
        &[],
    );
    let alice = Client::new(&homes, "alice");
    let bob = Client::new(&homes, "bob");
    clients.init(&alice, "alice", &[&relay.address]);
    clients.init(&bob, "bob", &[&relay.address]);
    clients.channel_with(&alice, &[&bob], "ops");
    let _alice_daemon = clients.daemon(&alice);
    let at = (0..3)
        .find(|&i| cluster.connections_named(i, "backchannel-relay") > 0)
        .expect("the relay is connected to a node");
    let others: Vec<&Host> = (0..3)
        .filter(|&i| i != at)
        .map(|i| cluster.host(i))
        .chain([&relay_host, &clients])
        .collect();
    net.cut(&[cluster.host(at)], &others);
    let cut = Instant::now();
    let mut ledger = Ledger::default();
    for i in 0.. {
        let text = format!("m{i:03} from alice");
        if ledger.send(&clients, &alice, "alice", &text).0 {
            break;
        }
        assert!(
            cut.elapsed() < Duration::from_secs(60),
            "no send acknowledged within 60 s of cutting off {}, the relay's node",
            cluster.name(at)
        );
    }
    eprintln!(
        "first send acknowledged {:.1} s after the relay's node was cut off",
        cut.elapsed().as_secs_f64()
    );
    net.heal();
    drop(relay);
}

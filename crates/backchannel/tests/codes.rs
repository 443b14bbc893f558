//! Invites by a code read aloud (issue 18, point 1; docs/protocol.md, "Invite codes"):
//! `invite --code` prints `7-orbit-velvet-harbor` and waits; `join CODE` on the other side.
//! The relay is treated as an online guesser: a nameplate is taken once, expires, and one
//! wrong try ends the code on both sides.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Stdio};
use std::thread::JoinHandle;

use backchannel_client::RelayConnection;
use backchannel_core::code::{About, Code, Joiner, Message, Record};
use backchannel_core::envelope::{open_envelope, seal_payload, PayloadKind};
use backchannel_core::frame::{ErrorCode, Request, Response};
use backchannel_core::mailbox::MailboxKeys;
use backchannel_core::relay_address::RelayAddress;
use common::netns::Namespace;
use common::*;
use rand_core::OsRng;

/// An `invite --code` running: its code (the first line), the rest of what it prints.
struct Inviting {
    child: Child,
    code: String,
    stdout: JoinHandle<String>,
    stderr: JoinHandle<String>,
}

fn read_all(mut r: impl Read + Send + 'static) -> JoinHandle<String> {
    std::thread::spawn(move || {
        let mut s = String::new();
        let _ = r.read_to_string(&mut s);
        s
    })
}

impl Inviting {
    fn start(mut cmd: std::process::Command) -> Self {
        let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        let stderr = read_all(child.stderr.take().unwrap());
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut code = String::new();
        out.read_line(&mut code).unwrap();
        let code = code.trim().to_string();
        Inviting {
            child,
            code,
            stdout: read_all(out),
            stderr,
        }
    }

    fn finish(mut self) -> Run {
        let status = self.child.wait().unwrap();
        Run {
            ok: status.success(),
            stdout: self.stdout.join().unwrap(),
            stderr: without_test_kdf_warning(&self.stderr.join().unwrap()),
        }
    }
}

/// `invite CHANNEL --code` by `c`, with `extra` flags.
fn invite_code(c: &Client, channel: &str, extra: &[&str]) -> Inviting {
    let mut args = vec!["invite", channel, "--code"];
    args.extend_from_slice(extra);
    let inviting = Inviting::start(c.cmd(&args));
    assert_code_shape(&inviting.code);
    inviting
}

fn assert_code_shape(code: &str) {
    let parts: Vec<&str> = code.split('-').collect();
    assert_eq!(parts.len(), 4, "a code is a number and three words: {code:?}");
    assert!(parts[0].parse::<u32>().is_ok(), "{code:?}");
    assert!(
        parts[1..].iter().all(|w| w.chars().all(|c| c.is_ascii_lowercase())),
        "{code:?}"
    );
}

/// The two words after `confirmation: ` in what a side printed.
fn confirmation(out: &str) -> String {
    let line = out
        .lines()
        .find_map(|l| l.strip_prefix("confirmation: "))
        .unwrap_or_else(|| panic!("no confirmation in {out:?}"));
    line.split(' ').take(2).collect::<Vec<_>>().join(" ")
}

/// A code typed the forgiving way: upper case, spaces for dashes, four letters per word.
fn sloppily(code: &str) -> String {
    code.split('-')
        .enumerate()
        .map(|(i, p)| match i {
            0 => p.to_string(),
            _ => p.chars().take(4).collect::<String>().to_uppercase(),
        })
        .collect::<Vec<_>>()
        .join("  ")
}

#[test]
fn a_code_read_aloud_invites_once_and_typing_is_forgiving() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let relay = RelayProc::start(&root.join("relay"), &[]);
    let alice = Client::new(root, "alice");
    let alice_fp = init_with_fingerprint(&alice, "alice", &relay.address);
    let bob = Client::new(root, "bob");
    let bob_fp = init_with_fingerprint(&bob, "bob", &relay.address);
    let [carol] = people(root, &relay, ["carol"]);
    alice.ok(&["channel", "new", "talk"]);

    let inviting = invite_code(&alice, "talk", &["--wait", "60"]);
    let code = inviting.code.clone();
    let typed = sloppily(&code);
    assert_ne!(typed, inviting.code);
    let joined = bob.ok(&["join", &typed, "--wait", "20"]);
    let invited = inviting.finish();
    assert!(invited.ok, "invite --code failed: {}", invited.stderr);

    // Both sides show the same two words, and each other's fingerprint.
    assert_eq!(confirmation(&joined), confirmation(&invited.stdout));
    assert!(joined.contains(&format!("inviter: {alice_fp}")), "{joined}");
    assert!(
        invited.stdout.contains(&format!("joiner: bob {bob_fp}")),
        "{}",
        invited.stdout
    );
    assert!(invited.stdout.contains("admitted bob"), "{}", invited.stdout);
    assert!(joined.contains("joined channel talk"), "{joined}");

    // A channel like any other.
    bob.ok(&["send", "talk", "hello from bob"]);
    alice.ok(&["sync"]);
    assert_eq!(
        alice.texts("talk"),
        vec![("bob".to_string(), "hello from bob".to_string())]
    );

    // The code is spent: a second use finds no nameplate, and admits nobody.
    let again = carol.fails(&["join", &code]);
    assert!(again.contains("no such invite code"), "{again}");
    alice.ok(&["sync"]);
    assert!(!member_names(&alice, "talk").contains(&"carol".to_string()));

    // What is typed and is not a code says why.
    let typo = carol.fails(&["join", "7-orbit-velvet"]);
    assert!(typo.contains("a code has a number and 3 words"), "{typo}");
    let unknown = carol.fails(&["join", "7-orbit-velvet-zzzz"]);
    assert!(unknown.contains("is not a word of the code list"), "{unknown}");
}

#[test]
fn a_wrong_code_admits_nobody_leaks_nothing_and_ends_the_code_on_both_sides() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let relay = RelayProc::start(&root.join("relay"), &[]);
    let [alice, bob] = people(root, &relay, ["alice", "bob"]);
    alice.ok(&["channel", "new", "talk"]);

    let inviting = invite_code(&alice, "talk", &["--wait", "60"]);
    let code = inviting.code.clone();
    // One word wrong: another word of the list.
    let mut parts: Vec<String> = code.split('-').map(str::to_string).collect();
    parts[3] = if parts[3] == "zoo" {
        "abandon".into()
    } else {
        "zoo".into()
    };
    let wrong = parts.join("-");
    let refused = bob.fails(&["join", &wrong, "--wait", "5"]);
    assert!(refused.contains("the inviter refused the code"), "{refused}");
    let invited = inviting.finish();
    assert!(!invited.ok);
    assert!(
        invited.stderr.contains("someone tried a wrong code"),
        "{}",
        invited.stderr
    );
    assert!(!invited.stdout.contains("confirmation"), "{}", invited.stdout);

    // Bob got no invite and is in no channel; the right code now finds nothing.
    assert_eq!(bob.ok(&["channels"]).trim(), "");
    let late = bob.fails(&["join", &code]);
    assert!(late.contains("no such invite code"), "{late}");
    alice.ok(&["sync"]);
    assert_eq!(member_names(&alice, "talk"), vec!["alice".to_string()]);
}

#[test]
fn a_code_expires_unused() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let relay = RelayProc::start(&root.join("relay"), &["--nameplate-lifetime", "2s"]);
    let [alice, bob] = people(root, &relay, ["alice", "bob"]);
    alice.ok(&["channel", "new", "talk"]);
    let inviting = invite_code(&alice, "talk", &["--wait", "6"]);
    let code = inviting.code.clone();
    // The relay forgets the nameplate after its lifetime, while the inviter still waits.
    std::thread::sleep(std::time::Duration::from_secs(3));
    let late = bob.fails(&["join", &code]);
    assert!(late.contains("no such invite code"), "{late}");
    assert!(late.contains("has expired"), "{late}");
    let invited = inviting.finish();
    assert!(!invited.ok);
    assert!(
        invited.stderr.contains("nobody used the code within 6 s"),
        "{}",
        invited.stderr
    );
    alice.ok(&["sync"]);
    assert_eq!(member_names(&alice, "talk"), vec!["alice".to_string()]);
}

/// The relay (or anyone who takes the nameplate first) gets one guess: it is detected, the
/// code is spent, and the guesser learns nothing but a refusal.
#[test]
fn a_relay_that_guesses_once_is_detected_and_gets_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let relay = RelayProc::start(&root.join("relay"), &[]);
    let [alice, bob] = people(root, &relay, ["alice", "bob"]);
    alice.ok(&["channel", "new", "talk"]);
    let inviting = invite_code(&alice, "talk", &["--wait", "60"]);
    let code = inviting.code.clone();
    let number: u32 = code.split('-').next().unwrap().parse().unwrap();

    let answer = rt().block_on(async {
        let at: RelayAddress = relay.address.parse().unwrap();
        let mut conn = RelayConnection::connect(&at).await.unwrap();
        let Response::Record(record) = conn.request(&Request::TakeNameplate { number }).await.unwrap() else {
            panic!("no record");
        };
        let record = Record::from_bytes(&record).unwrap();
        let reply = MailboxKeys::generate(at.clone(), &mut OsRng);
        conn.request(&Request::create(&reply, 0)).await.unwrap();
        let guess = Code::random(number, &mut OsRng);
        let about = About {
            identity_key: [7; 32],
            name: "mallory".into(),
            reply: reply.address.clone(),
        };
        let (_, pake, key_message) =
            Joiner::start(&guess, &at.pin, &record.pake, &about.to_bytes(), &mut OsRng).unwrap();
        let hello = Message::Hello {
            pake: pake.try_into().unwrap(),
            key_message,
        };
        let to = &record.rendezvous;
        for envelope in seal_payload(&to.seal, &to.send, PayloadKind::Code, &hello.to_bytes(), &mut OsRng).unwrap() {
            conn.request(&Request::Send {
                send: to.send.0,
                envelope,
                pow: 0,
            })
            .await
            .unwrap();
        }
        // What comes back to the guesser.
        conn.request(&Request::open(&reply, conn.nonce())).await.unwrap();
        for _ in 0..20 {
            let Response::Envelopes(list) = conn.request(&Request::Fetch { max: 8, wait_ms: 1000 }).await.unwrap()
            else {
                panic!("not envelopes");
            };
            if let Some(d) = list.first() {
                let chunk = open_envelope(&reply.address.seal, &reply.address.send, &d.envelope).unwrap();
                return Message::from_bytes(&chunk.data).unwrap();
            }
        }
        panic!("no answer to the guess");
    });
    assert_eq!(
        answer,
        Message::Refused,
        "a wrong guess gets a refusal and nothing else"
    );

    let invited = inviting.finish();
    assert!(!invited.ok);
    assert!(
        invited.stderr.contains("someone tried a wrong code"),
        "{}",
        invited.stderr
    );
    // The real joiner, too late, is told the code is gone rather than let in.
    let late = bob.fails(&["join", &code]);
    assert!(late.contains("no such invite code"), "{late}");
    alice.ok(&["sync"]);
    assert_eq!(member_names(&alice, "talk"), vec!["alice".to_string()]);

    // A nameplate that never was.
    let none = rt().block_on(async {
        let at: RelayAddress = relay.address.parse().unwrap();
        let mut conn = RelayConnection::connect(&at).await.unwrap();
        conn.request(&Request::TakeNameplate { number: 999_999 }).await
    });
    assert!(none.unwrap_err().is(ErrorCode::NoSuchNameplate));
}

/// The inviter on relay B (running a daemon, through which `invite --code` prints its code
/// before it waits); the joiner on relay A names B once with `--relay`, and every message of
/// the exchange goes through A: the joiner's namespace reaches A only, and B's port is a trap.
#[test]
fn a_code_made_on_another_relay_is_used_through_the_joiners_own_relay() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let (a, b) = two_relays(root, &[], &[]);
    let ns = Namespace::with_traps(&root.join("ns"), &[a.port], &[b.port]);
    let alice = Client::new(root, "alice");
    init_with_fingerprint(&alice, "alice", &b.address);
    let bob = Client::new(root, "bob");
    ns.init(&bob, "bob", &a.address);
    alice.ok(&["channel", "new", "talk"]);
    let _daemon = DaemonProc::start(&alice, &[]);

    let inviting = invite_code(&alice, "talk", &["--wait", "90"]);
    let code = inviting.code.clone();
    let joined = ns.ok(&bob, &["join", &code, "--relay", &b.address, "--wait", "30"]);
    let invited = inviting.finish();
    assert!(invited.ok, "{}", invited.stderr);
    assert_eq!(confirmation(&joined), confirmation(&invited.stdout));
    assert!(invited.stdout.contains("admitted bob"), "{}", invited.stdout);
    assert!(joined.contains("joined channel talk"), "{joined}");
    assert_eq!(
        ns.connections(b.port),
        0,
        "the joiner reached the inviter's relay directly"
    );

    ns.ok(&bob, &["send", "talk", "through my own relay"]);
    alice.ok(&["sync", "--wait", "5"]);
    assert!(alice
        .texts("talk")
        .contains(&("bob".to_string(), "through my own relay".to_string())));
    assert_eq!(ns.connections(b.port), 0);
}

/// An invite line names its sealed body at the relay (issue 18, point 3): at most 160
/// characters (`invite::tests` checks it with a 30-character host). A relay that changes
/// what it keeps is caught: the line does not open it, and nobody joins.
#[test]
fn a_short_invite_line_fits_160_characters_and_a_changed_body_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let mut relay = RelayProc::start(&root.join("relay"), &[]);
    let [alice, bob, carol] = people(root, &relay, ["alice", "bob", "carol"]);
    alice.ok(&["channel", "new", "talk"]);
    let line = alice.ok(&["invite", "talk"]).trim().to_string();
    assert!(line.len() <= 160, "{} characters: {line}", line.len());
    bob.ok(&["join", &line]);
    alice.ok(&["sync"]);
    bob.ok(&["sync", "--wait", "5"]);
    assert_eq!(bob.ok(&["channels"]).lines().count(), 1);

    let second = alice.ok(&["invite", "talk"]).trim().to_string();
    relay.kill9();
    let changed = tamper_with_bundles(&relay.data, |value| {
        let last = value.len() - 1;
        value[last] ^= 1;
    });
    assert_eq!(changed, 2, "two invites, two bundles");
    let _relay = RelayProc::start_on(&relay.data.clone(), &format!("127.0.0.1:{}", relay.port), &[]);
    let refused = carol.fails(&["join", &second]);
    assert!(refused.contains("does not open"), "{refused}");
    assert_eq!(carol.ok(&["channels"]).trim(), "");
}

/// `invite --code --approve`: the code exchange ends with both sides' words and
/// fingerprints, and the joiner then waits for approval like any held joiner: `pending`
/// lists them under the fingerprint the inviter was shown, and nothing is sent to them
/// until `admit`, after which they are a member.
#[test]
fn a_code_with_approval_holds_the_joiner_until_admitted() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let relay = RelayProc::start(&root.join("relay"), &[]);
    let alice = Client::new(root, "alice");
    init_with_fingerprint(&alice, "alice", &relay.address);
    let bob = Client::new(root, "bob");
    let bob_fp = init_with_fingerprint(&bob, "bob", &relay.address);
    alice.ok(&["channel", "new", "talk"]);

    let inviting = invite_code(&alice, "talk", &["--approve", "--wait", "60"]);
    // The joiner does not wait to be admitted here (`--wait 0`): its request stays queued.
    let joined = bob.ok(&["join", &inviting.code, "--wait", "0"]);
    let invited = inviting.finish();
    assert!(invited.ok, "invite --code --approve failed: {}", invited.stderr);
    assert_eq!(confirmation(&joined), confirmation(&invited.stdout));
    assert!(
        invited.stdout.contains(&format!("joiner: bob {bob_fp}")),
        "{}",
        invited.stdout
    );
    assert!(
        invited.stderr.contains("they wait for your approval"),
        "{}",
        invited.stderr
    );
    assert!(!invited.stdout.contains("admitted"), "{}", invited.stdout);

    // Held: alice's syncs do not admit bob; `pending` shows him with that fingerprint.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let pending = loop {
        alice.ok(&["sync"]);
        let p = alice.ok(&["pending", "talk"]);
        if p.contains("bob") {
            break p;
        }
        assert!(std::time::Instant::now() < deadline, "bob never waited: {p}");
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    let short: String = bob_fp.split_whitespace().take(2).collect::<Vec<_>>().join(" ");
    assert!(pending.contains(&short), "{pending}");
    assert!(!member_names(&alice, "talk").contains(&"bob".to_string()));
    let early = bob.run(&["send", "talk", "too early"]);
    assert!(!early.ok, "bob is not in the channel before he is admitted");

    // Admitted by the fingerprint alice was shown: a member like any other.
    let fp_hex: String = bob_fp.split_whitespace().take(2).collect();
    alice.ok(&["admit", "talk", &fp_hex]);
    bob.ok(&["sync", "--wait", "5"]);
    bob.ok(&["send", "talk", "admitted by code and approval"]);
    alice.ok(&["sync"]);
    assert_eq!(
        alice.texts("talk"),
        vec![("bob".to_string(), "admitted by code and approval".to_string())]
    );
}

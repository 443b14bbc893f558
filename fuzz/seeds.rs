//! Writes the seed corpora (`seeds/<target>/`) and the MLS, vault and
//! forwarding fixtures (`fixtures/`) with the real encoders: frames of every
//! kind, sealed envelopes, an invite, real MLS messages of a real channel, a
//! real client state and vault, real relay store records, real forwarded
//! requests and answers in their seals, a real relay identity's credential.
//!
//! Run from anywhere: `cargo run --manifest-path fuzz/Cargo.toml --example seeds`.
//! It replaces what it writes; the channel targets must be rebuilt after it
//! (they embed the fixtures).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use backchannel_client::socks::ProxyAddr;
use backchannel_client::state::{
    Approvals, Carried, ChannelState, ChannelStatus, CourierLog, DeferredMls, FileStatus, Files, Inbox, IncomingFile,
    InviteRecord, Log, Outbox, OutboxItem, PartialPayload, PendingJoin, RecentPayload, Segment, SenderTrail, State,
    StoredMessage, Trails, UnsentMessage, Waiting, FORWARD_SETTING, STATE_VERSION,
};
use backchannel_core::channel::{key_package, validate_key_package, Channel, ChannelInfo, Provider, Received, Suite};
use backchannel_core::envelope::{seal_payload, Envelope, PayloadKind, CHUNK_DATA, ENVELOPE_SIZE};
use backchannel_core::forward::{self, ForwardKeys, SESSION_LEN};
use backchannel_core::frame::{
    encode_inner_request, encode_inner_response, encode_request, encode_response, Delivery, ErrorCode, Limits, Request,
    Response, FRAME_SIZE, MAX_BUNDLE, MAX_FETCH, PROTOCOL_VERSION,
};
use backchannel_core::identity::Identity;
use backchannel_core::invite::Invite;
use backchannel_core::mailbox::{MailboxId, MailboxKeys};
use backchannel_core::message::{AppMessage, Body, FileOffer, JoinRequest};
use backchannel_core::vault::{KdfParams, Place, VaultKey};
use backchannel_fuzz::store_input::{self, Input, Op, Record};
use backchannel_fuzz::{relay, seal_key, send_capability, ForwardFixture, MlsFixture, FORWARD_PIN, FORWARD_SEED};
use backchannel_relay::store::{ClaimProof, EmbeddedStore, ProvenWork, ENVELOPE_BODY_FILE, ENVELOPE_KEY_FILE};
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand_core::OsRng;
use redb::{Database, ReadableTable, TableDefinition};
use sha2::{Digest, Sha256};

struct Out {
    root: PathBuf,
    total: usize,
}

impl Out {
    fn seed(&mut self, target: &str, name: &str, bytes: &[u8]) {
        let dir = self.root.join("seeds").join(target);
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join(name), bytes).unwrap();
        self.total += bytes.len();
    }

    fn fixture(&mut self, name: &str, bytes: &[u8]) {
        let dir = self.root.join("fixtures");
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join(name), bytes).unwrap();
        self.total += bytes.len();
    }
}

struct Member {
    id: Identity,
    provider: Provider,
    mailbox: MailboxKeys,
}

fn member(name: &str) -> Member {
    Member {
        id: Identity::generate(name, &mut OsRng).unwrap(),
        provider: Provider::new().unwrap(),
        mailbox: MailboxKeys::generate(relay(), &mut OsRng),
    }
}

/// A copy of `m`'s MLS state, to make several messages for one epoch.
fn fork(m: &Member) -> Provider {
    Provider::from_snapshot(m.provider.snapshot()).unwrap()
}

fn envelope(fill: u8) -> Envelope {
    seal_payload(
        &seal_key(),
        &send_capability(),
        PayloadKind::Mls,
        &[fill; 100],
        &mut OsRng,
    )
    .unwrap()
    .remove(0)
}

/// The plaintext chunk inside a real envelope.
fn chunk_plaintext(env: &Envelope) -> Vec<u8> {
    let b = env.as_bytes();
    let mut aad = b"backchannel/v1/envelope".to_vec();
    aad.extend_from_slice(&send_capability().digest());
    XChaCha20Poly1305::new((&seal_key().0).into())
        .decrypt(
            XNonce::from_slice(&b[..24]),
            Payload {
                msg: &b[24..],
                aad: &aad,
            },
        )
        .unwrap()
}

/// Trailing zeros are implied where a target pads its input; keep the seeds short.
fn trimmed(mut v: Vec<u8>) -> Vec<u8> {
    while v.last() == Some(&0) {
        v.pop();
    }
    v
}

/// What the forwarding seeds share: a relay identity as its hello and its
/// `Forwarder` proof carry it, a request sealed to the fixed forward key, and
/// its answer.
struct Forwarding {
    identity: Vec<u8>,
    credential: Vec<u8>,
    /// A destination relay (its PIN is `identity`'s).
    destination: backchannel_core::relay_address::RelayAddress,
    proof: Request,
    sealed: Vec<u8>,
    sealed_answer: Vec<u8>,
}

/// The `forward` target's fixture (`fixtures/forward.bin`) and seeds; the
/// first byte of a seed picks the part (see `fuzz_targets/forward.rs`, which
/// opens with the same fixed key, [`FORWARD_SEED`], and PIN, [`FORWARD_PIN`]).
fn forwarding(out: &mut Out) -> Forwarding {
    use backchannel_core::relay_identity::{Credential, FORWARD_KEM_XWING};
    use backchannel_relay::tls::TlsIdentity;

    let keys = ForwardKeys::from_seed(FORWARD_SEED).unwrap();
    let session = [0x5e; SESSION_LEN];
    let seal = |req: &Request| forward::seal(keys.public(), &FORWARD_PIN, &session, req).unwrap();
    let inner = |req: &Request| trimmed(encode_inner_request(req).unwrap());
    let mode = |m: u8, parts: &[&[u8]]| [&[m][..], &parts.concat()].concat();
    let claim = Request::ClaimKeyed {
        send: [8; 32],
        epoch: 3,
        key: [9; 32],
        next: [10; 32],
    };
    let send = Request::Send {
        send: [6; 32],
        envelope: envelope(2),
        pow: 0,
    };
    let deposit = Request::Deposit {
        part: 0,
        total: 2,
        bytes: vec![11; COMMIT_BYTES],
    };
    let create = Request::Create {
        mailbox: MailboxId([3; 32]),
        recipient_key: [4; 32],
        send_digest: [5; 32],
        pow_bits: 0,
    };
    let claim_commit = Request::ClaimCommit {
        send: [8; 32],
        epoch: 3,
        key: [9; 32],
        next: [10; 32],
        digest: [12; 32],
    };
    let fetch_commit = Request::FetchCommit {
        send: [8; 32],
        epoch: 3,
        key: [9; 32],
        part: 1,
    };

    // A relay identity, its credential (X-Wing forward key) and its proof as a forwarder.
    let identity = TlsIdentity::generate().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let wire = identity.wire_keys(now).unwrap();
    let nonce = [0x6e; 32];
    let proof = wire.forwarder_proof(&nonce).unwrap();
    let Request::Forwarder {
        scheme, ref signature, ..
    } = proof
    else {
        unreachable!()
    };
    let credential = Credential::from_bytes(&wire.credential).unwrap();
    assert_eq!(credential.forward_kem, FORWARD_KEM_XWING);

    // The fixture: a real seal (its answer key is the one the target's sealed answers are
    // under) and the identity.
    let (fixture_sealed, _) = seal(&claim);
    let fixture = ForwardFixture {
        sealed: fixture_sealed.clone(),
        identity: wire.identity_cert.clone(),
        credential: wire.credential.clone(),
        nonce,
        scheme,
        signature: signature.clone(),
    };
    out.fixture("forward.bin", &fixture.to_bytes());
    let (_, _, answer) = forward::open(&keys, &FORWARD_PIN, &fixture_sealed).unwrap();

    // 0: sealed requests.
    out.seed("forward", "open-claim-keyed", &mode(0, &[&fixture_sealed]));
    let (sealed_send, client) = seal(&send);
    out.seed("forward", "open-send", &mode(0, &[&sealed_send]));
    out.seed("forward", "open-deposit", &mode(0, &[&seal(&deposit).0]));
    // 1: real seals, edited (flags, count, edits of pos (u16) and value).
    let last = (forward::SEALED_LEN - 1) as u16;
    out.seed(
        "forward",
        "tamper-none-send",
        &mode(1, &[&[0, 0], &session, &inner(&send)]),
    );
    out.seed(
        "forward",
        "tamper-xor-last-claim",
        &mode(1, &[&[0, 1], &last.to_be_bytes(), &[1], &session, &inner(&claim)]),
    );
    out.seed(
        "forward",
        "tamper-set-enc-create",
        &mode(
            1,
            &[&[0, 1], &0x8005u16.to_be_bytes(), &[0xff], &session, &inner(&create)],
        ),
    );
    out.seed(
        "forward",
        "tamper-other-pin",
        &mode(1, &[&[1, 0], &session, &inner(&claim_commit)]),
    );
    out.seed(
        "forward",
        "tamper-other-key",
        &mode(1, &[&[2, 0], &session, &inner(&fetch_commit)]),
    );
    out.seed(
        "forward",
        "tamper-drop-byte",
        &mode(1, &[&[4, 0], &session, &inner(&Request::Ping)]),
    );
    // 2: plaintexts (session, inner frame), sealed by the target.
    for (name, req) in [
        ("plaintext-claim-commit", &claim_commit),
        ("plaintext-fetch-commit", &fetch_commit),
        ("plaintext-deposit", &deposit),
    ] {
        out.seed("forward", name, &mode(2, &[&session, &inner(req)]));
    }
    let fetch = encode_request(0, &Request::Fetch { max: 1, wait_ms: 0 });
    out.seed(
        "forward",
        "plaintext-fetch-not-forwarded",
        &mode(2, &[&session, &trimmed(fetch)]),
    );
    // 3: sealed answers under the fixture seal's answer key.
    let conflict = Response::Error {
        code: ErrorCode::EpochConflict,
        detail: 4,
    };
    let commit = Response::Commit {
        total: 2,
        bytes: vec![13; 500],
    };
    for (name, resp) in [
        ("answer-epoch-conflict", &conflict),
        ("answer-commit", &commit),
        ("answer-ok", &Response::Ok),
    ] {
        let sealed = forward::seal_answer(&answer, resp).unwrap();
        out.seed("forward", name, &mode(3, &[&sealed]));
    }
    // 4: real sealed answers, edited.
    let frame = |resp: &Response| trimmed(encode_inner_response(resp));
    out.seed(
        "forward",
        "tamper-answer-none-commit",
        &mode(4, &[&[0, 0], &frame(&commit)]),
    );
    out.seed(
        "forward",
        "tamper-answer-xor-error",
        &mode(4, &[&[0, 1], &5u16.to_be_bytes(), &[0x80], &frame(&conflict)]),
    );
    out.seed(
        "forward",
        "tamper-answer-other-key",
        &mode(4, &[&[2, 0], &frame(&Response::Pong)]),
    );
    let never_forwarded = Response::Identity {
        identity: wire.identity_cert.clone(),
        credential: wire.credential.clone(),
    };
    let never_forwarded = trimmed(encode_response(0, &never_forwarded).remove(0));
    out.seed(
        "forward",
        "tamper-answer-identity",
        &mode(4, &[&[0, 0], &never_forwarded]),
    );
    // 5: answer plaintexts, sealed by the target.
    for (name, resp) in [
        (
            "plaintext-answer-unsealed",
            Response::Error {
                code: ErrorCode::Unsealed,
                detail: 0,
            },
        ),
        ("plaintext-answer-commit", commit.clone()),
    ] {
        out.seed("forward", name, &mode(5, &[&frame(&resp)]));
    }
    // 6: credentials.
    out.seed("forward", "credential", &mode(6, &[&wire.credential]));
    let dummy = Credential {
        tls_cert_digest: [7; 32],
        forward_kem: FORWARD_KEM_XWING,
        forward_key: keys.public().to_vec(),
        not_before: 1_700_000_000,
        not_after: 1_900_000_000,
        scheme: 0x0403,
        signature: vec![0x30; 71],
    };
    out.seed("forward", "credential-dummy", &mode(6, &[&dummy.to_bytes()]));
    // 7: a forwarder's proof: identity (bytes16), scheme, signature (bytes16), nonce.
    let mut w = backchannel_core::codec::Writer::new();
    w.bytes16(&wire.identity_cert)
        .u16(scheme)
        .bytes16(signature)
        .put(&nonce);
    out.seed("forward", "forwarder-proof", &mode(7, &[&w.into_vec()]));

    // The client's side of a seal opens the answer the destination sealed.
    let sealed_answer = {
        let (_, _, relay_key) = forward::open(&keys, &FORWARD_PIN, &sealed_send).unwrap();
        let a = forward::seal_answer(&relay_key, &Response::Ok).unwrap();
        assert_eq!(forward::open_answer(&client, &a), Ok(Response::Ok));
        a
    };
    Forwarding {
        identity: wire.identity_cert.clone(),
        credential: wire.credential.clone(),
        destination: backchannel_core::relay_address::RelayAddress {
            pin: identity.pin().0,
            host: "relay-b.example".into(),
            port: 4433,
        },
        proof,
        sealed: sealed_send,
        sealed_answer,
    }
}

/// Bytes of the deposit in the forwarding seeds.
const COMMIT_BYTES: usize = 300;

fn frames(out: &mut Out, kp: &[u8], fw: &Forwarding) {
    let mailbox = MailboxId([3; 32]);
    let requests = [
        (
            "create",
            Request::Create {
                mailbox,
                recipient_key: [4; 32],
                send_digest: [5; 32],
                pow_bits: 0,
            },
        ),
        (
            "send",
            Request::Send {
                send: [6; 32],
                envelope: envelope(1),
                pow: 0,
            },
        ),
        (
            "open",
            Request::Open {
                mailbox,
                proof: [7; 64],
            },
        ),
        (
            "fetch",
            Request::Fetch {
                max: MAX_FETCH,
                wait_ms: 25_000,
            },
        ),
        ("ack", Request::Ack { mailbox, seq: 42 }),
        ("delete", Request::Delete { mailbox }),
        (
            "claim",
            Request::Claim {
                send: [8; 32],
                epoch: 3,
                token: [9; 32],
            },
        ),
        ("ping", Request::Ping),
        ("paced", Request::Paced),
        (
            "claim-keyed",
            Request::ClaimKeyed {
                send: [8; 32],
                epoch: 3,
                key: [9; 32],
                next: [10; 32],
            },
        ),
        (
            "deposit",
            Request::Deposit {
                part: 1,
                total: 3,
                bytes: vec![11; 300],
            },
        ),
        (
            "claim-commit",
            Request::ClaimCommit {
                send: [8; 32],
                epoch: 3,
                key: [9; 32],
                next: [10; 32],
                digest: [12; 32],
            },
        ),
        (
            "fetch-commit",
            Request::FetchCommit {
                send: [8; 32],
                epoch: 3,
                key: [9; 32],
                part: 2,
            },
        ),
        (
            "forward",
            Request::Forward {
                to: fw.destination.clone(),
                sealed: fw.sealed.clone(),
            },
        ),
        (
            "sealed",
            Request::Sealed {
                sealed: fw.sealed.clone(),
            },
        ),
        (
            "identify",
            Request::Identify {
                relay: fw.destination.clone(),
            },
        ),
        ("forwarder", fw.proof.clone()),
        // Appended, so that the seeds before keep their request ids.
        ("nameplate", Request::Nameplate { record: vec![14; 34] }),
        ("take-nameplate", Request::TakeNameplate { number: 7 }),
        (
            "publish",
            Request::Publish {
                name: [16; 16],
                expires_at: 1_900_000_000,
                bundle: vec![17; MAX_BUNDLE],
            },
        ),
        ("bundle", Request::Bundle { name: [16; 16] }),
    ];
    for (i, (name, req)) in requests.iter().enumerate() {
        out.seed("frame_request", name, &encode_request(i as u32 + 1, req));
        // The forwarded ones also as the frame inside a seal.
        if let Some(inner) = encode_inner_request(req) {
            out.seed("frame_request", &format!("inner-{name}"), &inner);
        }
    }
    let delivery = |seq: u64| Delivery {
        mailbox,
        seq,
        envelope: envelope(seq as u8),
    };
    let responses = [
        (
            "hello",
            Response::Hello {
                version: PROTOCOL_VERSION,
                nonce: [1; 32],
                limits: Limits {
                    max_request_frame: FRAME_SIZE as u32,
                    max_envelopes_per_mailbox: 10_000,
                    max_mailboxes_per_connection: 64,
                },
                identity: fw.identity.clone(),
                credential: fw.credential.clone(),
            },
        ),
        ("ok", Response::Ok),
        ("pong", Response::Pong),
        (
            "commit",
            Response::Commit {
                total: 2,
                bytes: vec![13; 500],
            },
        ),
        (
            "error-epoch",
            Response::Error {
                code: ErrorCode::EpochConflict,
                detail: 7,
            },
        ),
        (
            "error-full",
            Response::Error {
                code: ErrorCode::MailboxFull,
                detail: 0,
            },
        ),
        (
            "error-unreachable",
            Response::Error {
                code: ErrorCode::Unreachable,
                detail: 0,
            },
        ),
        (
            "identity",
            Response::Identity {
                identity: fw.identity.clone(),
                credential: fw.credential.clone(),
            },
        ),
        ("sealed", Response::Sealed(fw.sealed_answer.clone())),
        ("envelopes-none", Response::Envelopes(Vec::new())),
        ("envelopes-one", Response::Envelopes(vec![delivery(1)])),
        ("envelopes-three", Response::Envelopes((1..=3).map(delivery).collect())),
        (
            "envelopes-max",
            Response::Envelopes((1..=MAX_FETCH as u64).map(delivery).collect()),
        ),
        ("nameplate", Response::Nameplate { number: 7 }),
        ("record", Response::Record(vec![14; 34])),
        (
            "error-no-such-nameplate",
            Response::Error {
                code: ErrorCode::NoSuchNameplate,
                detail: 0,
            },
        ),
        ("record-bundle", Response::Record(vec![17; MAX_BUNDLE])),
        (
            "error-no-such-bundle",
            Response::Error {
                code: ErrorCode::NoSuchBundle,
                detail: 0,
            },
        ),
        (
            "error-bundle-taken",
            Response::Error {
                code: ErrorCode::BundleTaken,
                detail: 0,
            },
        ),
    ];
    // By name: appending a response never changes which one an inner seed is.
    let response = |name: &str| &responses.iter().find(|(n, _)| *n == name).unwrap().1;
    for (i, (name, resp)) in responses.iter().enumerate() {
        out.seed("frame_response", name, &encode_response(i as u32, resp).concat());
    }
    // Answers to forwarded requests, as the frame inside their seal.
    for (name, resp) in [
        ("inner-commit", response("commit")),
        ("inner-error-epoch", response("error-epoch")),
        ("inner-record", response("record")),
        ("inner-error-no-such-nameplate", response("error-no-such-nameplate")),
        ("inner-record-bundle", response("record-bundle")),
        ("inner-error-no-such-bundle", response("error-no-such-bundle")),
    ] {
        out.seed("frame_response", name, &encode_inner_response(resp));
    }
    // A hello followed by a fetch answer, as a connection sees them.
    let mut stream = encode_response(0, &responses[0].1).concat();
    stream.extend(encode_response(5, &Response::Envelopes((1..=2).map(delivery).collect())).concat());
    stream.extend(encode_response(6, &Response::Ok).concat());
    out.seed("frame_response", "stream", &stream);

    // Envelopes: mode 0 a real envelope, mode 1 real chunk plaintexts.
    let mut m0 = vec![0u8];
    m0.extend_from_slice(envelope(9).as_bytes());
    out.seed("envelope", "network", &m0);
    for (name, kind, payload) in [
        ("chunk-mls", PayloadKind::Mls, vec![1u8; 300]),
        ("chunk-join", PayloadKind::JoinRequest, kp.to_vec()),
        ("chunk-first-of-two", PayloadKind::Welcome, vec![2u8; CHUNK_DATA + 10]),
    ] {
        let env = seal_payload(&seal_key(), &send_capability(), kind, &payload, &mut OsRng)
            .unwrap()
            .remove(0);
        let mut m1 = vec![1u8];
        m1.extend(chunk_plaintext(&env));
        // Trailing zeros are implied; keep the seeds short.
        while m1.last() == Some(&0) {
            m1.pop();
        }
        out.seed("envelope", name, &m1);
    }
    // Mode 2: chunk descriptions (id, kind, index u16, count u16, last_len u16, fill, quirk).
    let desc = |id: u8, index: u16, count: u16| {
        let mut d = vec![id, 1];
        d.extend_from_slice(&index.to_be_bytes());
        d.extend_from_slice(&count.to_be_bytes());
        d.extend_from_slice(&99u16.to_be_bytes());
        d.extend_from_slice(&[index as u8, 0xff]);
        d
    };
    let mut three = vec![2u8];
    for i in [2, 0, 1] {
        three.extend(desc(7, i, 3));
    }
    out.seed("envelope", "reassemble-three", &three);
    let mut many = vec![2u8];
    for id in 0..70 {
        many.extend(desc(id, 0, 2));
    }
    many.extend(desc(69, 1, 2));
    out.seed("envelope", "reassemble-evict", &many);
}

fn invites(out: &mut Out) {
    let inv = Invite {
        mailbox: MailboxKeys::generate(relay(), &mut OsRng).address.clone(),
        expires_at: 1_900_000_000,
        inviter_key: [0x1d; 32],
        ciphersuite: Suite::PostQuantum.code(),
    };
    let text = inv.to_text();
    out.seed("invite", "line", text.as_bytes());
    let raw = data_encoding::BASE32_NOPAD
        .decode(text["bc-invite:".len()..].to_ascii_uppercase().as_bytes())
        .unwrap();
    out.seed("invite", "body", &raw[..raw.len() - 4]);
    out.seed("mailbox_address", "binary", &inv.mailbox.to_bytes());
    out.seed("mailbox_address", "relay-text", relay().to_string().as_bytes());
    let mut v6 = relay();
    v6.host = "::1".into();
    out.seed("mailbox_address", "relay-text-v6", v6.to_string().as_bytes());
}

/// Drop box seeds for the `drop` target; its first byte picks the part (see
/// `fuzz_targets/drop.rs`). Letters are sealed to the target's fixed owner
/// key (seed `[0xd0; 32]`) for the fixed mailbox, replies under its fixed
/// reply key (`[0x7e; 32]`).
fn drop_boxes(out: &mut Out) {
    use backchannel_core::drop::{
        seal_letter, seal_reply, DropAddress, DropKeys, Letter, LetterFile, Receipt, ReplyKey, DEFAULT_POW_BITS,
    };
    use hpke_rs::{Hpke, Mode};
    use hpke_rs_crypto::types::{AeadAlgorithm, KdfAlgorithm, KemAlgorithm};
    use hpke_rs_libcrux::HpkeLibcrux;

    let mode = |m: u8, b: &[u8]| [&[m][..], b].concat();
    let body = |line: &str, prefix: &str| {
        let raw = data_encoding::BASE32_NOPAD
            .decode(line[prefix.len()..].to_ascii_uppercase().as_bytes())
            .unwrap();
        raw[..raw.len() - 4].to_vec()
    };
    let keys = DropKeys::from_seed([0xd0; 32]).unwrap();
    let address = DropAddress {
        mailbox: backchannel_core::mailbox::MailboxAddress {
            relay: relay(),
            send: send_capability(),
            seal: seal_key(),
        },
        owner_key: keys.public().to_vec(),
        pow_bits: DEFAULT_POW_BITS,
    };
    let text = address.to_text();
    out.seed("drop", "address-line", &mode(0, text.as_bytes()));
    out.seed("drop", "address-body", &mode(1, &body(&text, "bc-drop:")));
    let receipt = Receipt::generate(relay(), &mut OsRng);
    let text = receipt.to_text();
    out.seed("drop", "receipt-line", &mode(0, text.as_bytes()));
    out.seed("drop", "receipt-body", &mode(2, &body(&text, "bc-receipt:")));

    let (secret, _) = Hpke::<HpkeLibcrux>::new(
        Mode::Base,
        KemAlgorithm::XWingDraft06,
        KdfAlgorithm::HkdfSha256,
        AeadAlgorithm::ChaCha20Poly1305,
    )
    .derive_key_pair(&[0xd0; 32])
    .unwrap()
    .into_keys();
    let letters = [
        (
            "letter-text",
            Letter {
                text: "the shipment leaves on Tuesday".into(),
                file: None,
                reply: None,
            },
        ),
        (
            "letter-file-and-reply",
            Letter {
                text: "minutes attached; answer if you can".into(),
                file: Some(LetterFile {
                    name: "minutes.txt".into(),
                    data: b"item 1: ...\nitem 2: ...\n".repeat(20),
                }),
                reply: Some(receipt.reply_to()),
            },
        ),
    ];
    for (name, letter) in letters {
        let sealed = seal_letter(&address, &letter, &mut OsRng).unwrap();
        out.seed("drop", name, &mode(3, &sealed));
        let (enc, ct) = sealed[1..].split_at(1120);
        let plain = Hpke::<HpkeLibcrux>::new(
            Mode::Base,
            KemAlgorithm::XWingDraft06,
            KdfAlgorithm::HkdfSha256,
            AeadAlgorithm::ChaCha20Poly1305,
        )
        .open(
            enc,
            &secret,
            b"backchannel/v1/drop-letter",
            &send_capability().digest(),
            ct,
            None,
            None,
            None,
        )
        .unwrap();
        out.seed("drop", &format!("{name}-plaintext"), &mode(4, &plain));
    }

    let key = ReplyKey([0x7e; 32]);
    for (name, text) in [("reply", "received; the binder is safe"), ("reply-empty", "")] {
        let sealed = seal_reply(&key, text, &mut OsRng);
        out.seed("drop", name, &mode(5, &sealed));
        let plain = XChaCha20Poly1305::new((&key.0).into())
            .decrypt(
                XNonce::from_slice(&sealed[1..25]),
                Payload {
                    msg: &sealed[25..],
                    aad: b"backchannel/v1/drop-reply",
                },
            )
            .unwrap();
        out.seed("drop", &format!("{name}-plaintext"), &mode(6, &plain));
    }
}

/// Real MLS traffic: a three-member channel seen by bob, and the messages
/// of one epoch that bob could receive; a joiner and its welcome.
fn mls(out: &mut Out) -> (Member, Vec<u8>, Vec<u8>) {
    let suite = Suite::PostQuantum;
    let alice = member("alice");
    let bob = member("bob");
    let carol = member("carol");
    let info = ChannelInfo {
        name: "deal-room".into(),
        sequencer: MailboxKeys::generate(relay(), &mut OsRng).address.clone(),
        created_at: 1_700_000_000,
        disappear_after: 0,
        expires_at: 0,
    };
    out.seed("message", "channel-info", &info.to_bytes());
    let timed = ChannelInfo {
        disappear_after: 3_600,
        expires_at: 1_700_086_400,
        ..info.clone()
    };
    out.seed("message", "channel-info-v2", &timed.to_bytes());
    let mut a = Channel::create(&alice.provider, &alice.id, &info, &alice.mailbox.address, suite, false).unwrap();
    let kp_bob = key_package(&bob.provider, &bob.id, &bob.mailbox.address, suite).unwrap();
    let c = a
        .add(
            &alice.provider,
            &alice.id,
            vec![validate_key_package(&alice.provider, &kp_bob).unwrap()],
        )
        .unwrap();
    a.merge_pending(&alice.provider).unwrap();
    let (mut b, _) = Channel::join(&bob.provider, c.welcome.as_ref().unwrap()).unwrap();
    let kp_carol = key_package(&carol.provider, &carol.id, &carol.mailbox.address, suite).unwrap();
    let c = a
        .add(
            &alice.provider,
            &alice.id,
            vec![validate_key_package(&alice.provider, &kp_carol).unwrap()],
        )
        .unwrap();
    a.merge_pending(&alice.provider).unwrap();
    assert!(matches!(
        b.process(&bob.provider, &c.commit).unwrap(),
        Received::Commit { .. }
    ));
    let (mut cc, _) = Channel::join(&carol.provider, c.welcome.as_ref().unwrap()).unwrap();

    // Bob, at this epoch, is the channel_process fixture.
    let fixture = MlsFixture {
        group_id: b.group_id(),
        snapshot: bob.provider.snapshot(),
    };
    out.fixture("channel_process.bin", &fixture.to_bytes());
    let group_id = b.group_id();

    let text = |s: &str| {
        AppMessage {
            id: [0x42; 16],
            sent_at: 1_700_000_123_000,
            body: Body::Text(s.into()),
        }
        .to_bytes()
    };
    let hello = a.encrypt(&alice.provider, &alice.id, &text("hello bob")).unwrap();
    out.seed("channel_process", "app-from-alice", &hello);
    let close = AppMessage {
        id: [0x43; 16],
        sent_at: 1,
        body: Body::Close,
    }
    .to_bytes();
    out.seed("message", "app-text", &text("hello bob"));
    out.seed("message", "app-close", &close);
    let offer = AppMessage {
        id: [0x44; 16],
        sent_at: 1_700_000_000_000,
        body: Body::File(FileOffer {
            file_id: [7; 16],
            name: "ledger.pdf".into(),
            size: 200_000,
            sha256: [8; 32],
            part_size: 65_536,
        }),
    };
    out.seed("message", "app-file-offer", &offer.to_bytes());
    let part = AppMessage {
        id: [0x45; 16],
        sent_at: 1_700_000_000_001,
        body: Body::Part {
            file_id: [7; 16],
            index: 3,
            data: vec![9; 100],
        },
    };
    out.seed("message", "app-file-part", &part.to_bytes());
    let from_carol = cc.encrypt(&carol.provider, &carol.id, &close).unwrap();
    out.seed("channel_process", "app-close-from-carol", &from_carol);
    let leave = cc.leave(&carol.provider, &carol.id).unwrap();
    out.seed("channel_process", "proposal-leave-from-carol", &leave);

    // Commits for the same epoch, each from a fresh copy of alice's state.
    let (update, joiner, welcome) = {
        let p = fork(&alice);
        let mut ch = Channel::load(&p, &group_id).unwrap().unwrap();
        let upd = ch.self_update(&p, &alice.id, None).unwrap();
        let p = fork(&alice);
        let mut ch = Channel::load(&p, &group_id).unwrap().unwrap();
        let rotated = MailboxKeys::generate(relay(), &mut OsRng);
        let rot = ch.self_update(&p, &alice.id, Some(&rotated.address)).unwrap();
        out.seed("channel_process", "commit-rotate-mailbox", &rot.commit);
        let p = fork(&alice);
        let mut ch = Channel::load(&p, &group_id).unwrap().unwrap();
        let rem = ch.remove(&p, &alice.id, &[carol.id.fingerprint()]).unwrap();
        out.seed("channel_process", "commit-remove-carol", &rem.commit);
        let p = fork(&alice);
        let mut ch = Channel::load(&p, &group_id).unwrap().unwrap();
        let rem_bob = ch.remove(&p, &alice.id, &[bob.id.fingerprint()]).unwrap();
        out.seed("channel_process", "commit-remove-bob", &rem_bob.commit);

        let joiner = member("joiner");
        let kp = key_package(&joiner.provider, &joiner.id, &joiner.mailbox.address, suite).unwrap();
        out.fixture(
            "welcome.bin",
            &MlsFixture {
                group_id: Vec::new(),
                snapshot: joiner.provider.snapshot(),
            }
            .to_bytes(),
        );
        let p = fork(&alice);
        let mut ch = Channel::load(&p, &group_id).unwrap().unwrap();
        let add = ch
            .add(&p, &alice.id, vec![validate_key_package(&p, &kp).unwrap()])
            .unwrap();
        out.seed("channel_process", "commit-add-joiner", &add.commit);
        let welcome = add.welcome.unwrap();
        out.seed("welcome", "welcome", &welcome);
        (upd, joiner, welcome)
    };
    out.seed("channel_process", "commit-update", &update.commit);
    // A proposal committed: alice commits carol's leave.
    {
        let p = fork(&alice);
        let mut ch = Channel::load(&p, &group_id).unwrap().unwrap();
        assert!(matches!(ch.process(&p, &leave).unwrap(), Received::Proposal { .. }));
        let c = ch.commit_pending(&p, &alice.id).unwrap();
        out.seed("channel_process", "commit-leave-of-carol", &c.commit);
    }
    // Check the seeds are live against bob's fixture.
    for (name, msg) in [("hello", &hello), ("update", &update.commit)] {
        let p = Provider::from_snapshot(fixture.snapshot.clone()).unwrap();
        let mut ch = Channel::load(&p, &group_id).unwrap().unwrap();
        assert!(ch.process(&p, msg).is_ok(), "seed {name} does not process");
    }
    let (joined, _) = Channel::join(&fork(&joiner), &welcome).unwrap();
    assert_eq!(joined.group_id(), group_id);

    let kp = key_package(&fork(&joiner), &joiner.id, &joiner.mailbox.address, suite).unwrap();
    let join = JoinRequest {
        key_package: kp.clone(),
    }
    .to_bytes();
    out.seed("key_package", "join-request", &join);
    out.seed("key_package", "key-package", &kp);
    out.seed("message", "join-request", &join);
    let trail = backchannel_core::message::Trail {
        count: 7,
        last: [9; 16],
    };
    out.seed("message", "trail", &trail.to_bytes());
    let roles = backchannel_core::roles::Roles::new([1; 32], true).with_admin([2; 32], true);
    out.seed("message", "roles", &roles.to_bytes());
    (bob, group_id, kp)
}

/// Bob's whole client state, and the vault holding it.
fn state(out: &mut Out, bob: &Member, group_id: Vec<u8>) {
    let mut channels = BTreeMap::new();
    channels.insert(
        "deal-room".to_string(),
        ChannelState {
            group_id,
            mailbox: bob.mailbox.clone(),
            mailbox_since: 1_700_000_000,
            retired: Vec::new(),
            sequencer: Some(MailboxKeys::generate(relay(), &mut OsRng)),
            invites: vec![InviteRecord {
                mailbox: MailboxKeys::generate(relay(), &mut OsRng),
                uses_left: 1,
                expires_at: 1_900_000_000,
                admitted: vec![[3; 32]],
            }],
            history: Log {
                folder: "0123456789abcdef0123456789abcdef".into(),
                segments: [Segment {
                    name: 0,
                    count: 3,
                    bytes: 240,
                    oldest_at: 1_700_000_100_000,
                }]
                .into(),
                tail: vec![StoredMessage {
                    id: "42424242424242424242424242424242".into(),
                    from: "alice".into(),
                    from_key: [1; 32],
                    sent_at: 1_700_000_123_000,
                    text: "hello bob".into(),
                    event: None,
                }],
                first: 0,
                read_upto: 4,
                next_name: 1,
            },
            seen: [[0x42; 16]].into(),
            verified: BTreeSet::new(),
            status: ChannelStatus::Active,
            pending: None,
            disappear_after: 3600,
            expires_at: 1_900_000_000,
            trails: Trails {
                sent: 2,
                sent_last: [6; 16],
                read: BTreeMap::from([(
                    [1; 32],
                    SenderTrail {
                        next: 5,
                        last: [7; 16],
                        missing: BTreeSet::from([3]),
                    },
                )]),
                removals: vec![(4, vec!["carol".into()])],
            },
        },
    );
    let s = State {
        version: STATE_VERSION,
        name: "bob".into(),
        identity_secret: *bob.id.secret_bytes(),
        relay: relay(),
        relay_alternates: vec![backchannel_core::relay_address::RelayAddress {
            host: "relay-2.example".into(),
            ..relay()
        }],
        mls: bob.provider.snapshot(),
        channels,
        pending_joins: vec![PendingJoin {
            mailbox: MailboxKeys::generate(relay(), &mut OsRng),
            inviter_key: [2; 32],
            local_name: Some("other".into()),
            expires_at: 1_900_000_000,
        }],
        inbox: Inbox {
            partials: vec![PartialPayload {
                mailbox: bob.mailbox.id().0,
                message_id: [5; 16],
                kind: PayloadKind::Mls,
                count: 2,
                total_len: (CHUNK_DATA + 5) as u32,
                folder: "fedcba9876543210fedcba9876543210".into(),
                have: vec![0b01],
                bytes: CHUNK_DATA as u32,
            }],
            deferred: vec![DeferredMls {
                channel: "deal-room".into(),
                folder: "00112233445566778899aabbccddeeff".into(),
                bytes: 4,
                by_courier: true,
                arrived_at: 1_700_000_500,
            }],
            recent: [RecentPayload {
                digest: [5; 16],
                by_courier: true,
            }]
            .into(),
        },
        outbox: Outbox {
            unsent: vec![UnsentMessage {
                channel: "deal-room".into(),
                id: [9; 16],
                sent_at: 1_700_000_200_000,
                text: "queued".into(),
            }],
            sealed: vec![OutboxItem {
                to: MailboxKeys::generate(relay(), &mut OsRng).address.clone(),
                envelopes: vec![envelope(3).as_bytes().to_vec()],
            }],
        },
        proxy: Some(ProxyAddr {
            host: "127.0.0.1".into(),
            port: 9050,
        }),
        cover: vec![MailboxKeys::generate(relay(), &mut OsRng)],
        doomed: vec![MailboxKeys::generate(relay(), &mut OsRng)],
        courier: CourierLog {
            imported: [[6; 16]].into(),
        },
        drops: BTreeMap::new(),
        files: Files {
            outgoing: Vec::new(),
            incoming: vec![IncomingFile {
                channel: "deal-room".into(),
                from_key: [1; 32],
                message_id: "42424242424242424242424242424242".into(),
                offer: FileOffer {
                    file_id: [7; 16],
                    name: "ledger.pdf".into(),
                    size: 200_000,
                    sha256: [8; 32],
                    part_size: 65_536,
                },
                folder: "00112233445566778899aabbccddeeff".into(),
                received: vec![0b0101],
                count: 2,
                updated_at: 1_700_000_300_000,
                status: FileStatus::Receiving,
            }],
        },
        settings: BTreeMap::from([(FORWARD_SETTING.to_string(), "off".to_string())]),
        approvals: Approvals {
            invites: [[9; 32]].into(),
            waiting: vec![Waiting {
                channel: "deal".into(),
                invite: [9; 32],
                key_package: vec![1, 2, 3],
                name: "carol".into(),
                identity_key: [4; 32],
                since: 1_700_000_400,
            }],
        },
        carried: Carried::default(),
    };
    let bytes = s.encode().unwrap();
    assert!(State::decode(&bytes).is_ok());
    out.seed("client_state", "bob", &bytes);
    let small = State {
        version: STATE_VERSION,
        name: "new".into(),
        identity_secret: [1; 32],
        relay: relay(),
        relay_alternates: Vec::new(),
        mls: Vec::new(),
        channels: BTreeMap::new(),
        pending_joins: Vec::new(),
        inbox: Inbox::default(),
        outbox: Outbox::default(),
        proxy: None,
        cover: Vec::new(),
        doomed: Vec::new(),
        courier: CourierLog::default(),
        drops: BTreeMap::new(),
        files: Files::default(),
        settings: BTreeMap::new(),
        approvals: Approvals::default(),
        carried: Carried::default(),
    };
    let small = small.encode().unwrap();
    out.seed("client_state", "fresh", &small);

    // The vault: the fixture key's blob (small Argon2 parameters so the
    // target can derive it) and the same state in it.
    // (The committed fixture and the seeds without `-format-2` are format 1, as sealed
    // by releases up to b7cd5b1, which the target still reads.)
    let cheap = KdfParams {
        m_cost_kib: 64,
        t_cost: 1,
        lanes: 1,
        test_only: false,
    };
    let key = VaultKey::create(b"fuzz passphrase", cheap, &mut OsRng).unwrap();
    let blob = key.seal(&small, Place::STATE, 3, &mut OsRng);
    out.fixture("vault-seed.bin", &blob);
    out.seed("vault", "fresh-state-format-2", &blob);
    out.seed("vault", "bob-state", &key.seal(&bytes, Place::STATE, 7, &mut OsRng));
    let file = Place::file("0/0");
    out.seed("vault", "file-format-2", &key.seal(b"0123456789", file, 2, &mut OsRng));
    let mut default_params = blob.clone();
    default_params[8..20].copy_from_slice(&[0, 4, 0, 0, 0, 0, 0, 3, 0, 0, 0, 1]);
    out.seed("vault", "default-params-header-format-2", &default_params);
}

const TABLES: [TableDefinition<&[u8], &[u8]>; 4] = [
    TableDefinition::new("mailboxes"),
    TableDefinition::new("senders"),
    TableDefinition::new("envelopes"),
    TableDefinition::new("expiry-counts"),
];

/// Records of a real store, read back from its files.
fn dump(dir: &Path) -> Input {
    let db = loop {
        match Database::open(dir.join("store.redb")) {
            Ok(db) => break db,
            Err(_) => std::thread::sleep(std::time::Duration::from_millis(10)),
        }
    };
    let txn = db.begin_read().unwrap();
    let mut input = Input::default();
    for (table, def) in TABLES.into_iter().enumerate() {
        let t = txn.open_table(def).unwrap();
        for e in t.iter().unwrap() {
            let (k, v) = e.unwrap();
            input.records.push(Record {
                table: table as u8,
                key: k.value().to_vec(),
                value: v.value().to_vec(),
            });
        }
    }
    if let Ok(t) = txn.open_table(TableDefinition::<&str, u32>::new("format")) {
        input.format = t.get("data directory").unwrap().map(|v| v.value());
    }
    let keys = fs::read(dir.join(ENVELOPE_KEY_FILE)).unwrap();
    for (slot, key) in keys.chunks_exact(32).enumerate() {
        if key.iter().any(|b| *b != 0) {
            input.keys.push((slot as u16, key.try_into().unwrap()));
        }
    }
    let bodies = fs::read(dir.join(ENVELOPE_BODY_FILE)).unwrap();
    for (slot, body) in bodies.chunks_exact(ENVELOPE_SIZE + 16).enumerate() {
        input.bodies.push((slot as u16, body.to_vec()));
    }
    input
}

fn store(out: &mut Out) {
    let dir = std::env::temp_dir().join(format!("bc-fuzz-seeds-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    {
        let s = EmbeddedStore::open(&dir.join("store.redb"), 8).unwrap();
        let digest = |b: u8| -> [u8; 32] { Sha256::digest([b; 32]).into() };
        s.create(store_input::id(1), [11; 32], digest(1), 0).unwrap();
        s.create(store_input::id(2), [12; 32], digest(2), 0).unwrap();
        for fill in 0..3 {
            s.send([1; 32], envelope(fill), 2_000_000_000, ProvenWork::NONE)
                .unwrap();
        }
        s.send([2; 32], envelope(9), 1_000, ProvenWork::NONE).unwrap();
        s.ack(store_input::id(1), 2).unwrap();
        s.claim([2; 32], 0, ClaimProof::Token([5; 32]), None).unwrap();
    }
    let mut input = dump(&dir);
    fs::remove_dir_all(&dir).unwrap();
    input.ops = vec![
        Op::Fetch {
            ids: vec![1, 2],
            max: 15,
        },
        Op::Send {
            send: 1,
            fill: 7,
            expires_at: 2_000_000_000,
        },
        Op::Ack { id: 1, seq: 1 },
        Op::Claim {
            send: 2,
            epoch: 1,
            token: 6,
        },
        Op::Claim {
            send: 2,
            epoch: 0,
            token: 5,
        },
        Op::Expire { now: 1_500 },
        Op::Reopen,
        Op::Fetch {
            ids: vec![1, 2],
            max: 15,
        },
        Op::RecipientKey { id: 2 },
        Op::Delete { id: 1 },
        Op::Stats,
    ];
    out.seed("relay_store", "real-store", &input.to_bytes());

    // A record of the format before at-rest encryption (migrated on open).
    let mut legacy = Input::default();
    let rec = input.records.iter().find(|r| r.table == 0).unwrap().clone();
    legacy.records.push(rec.clone());
    let mut key = rec.key.clone();
    key.extend_from_slice(&1u64.to_be_bytes());
    let mut value = 2_000_000_000u64.to_be_bytes().to_vec();
    value.extend_from_slice(envelope(4).as_bytes());
    legacy.records.push(Record { table: 2, key, value });
    legacy.ops = vec![
        Op::Fetch { ids: vec![1], max: 15 },
        Op::Reopen,
        Op::Expire { now: u64::MAX },
    ];
    out.seed("relay_store", "legacy-plaintext-record", &legacy.to_bytes());

    // The network's requests on an empty store.
    let ops = Input {
        ops: vec![
            Op::Create {
                id: 3,
                recipient: 3,
                send: 3,
            },
            Op::Send {
                send: 3,
                fill: 1,
                expires_at: 10,
            },
            Op::Claim {
                send: 3,
                epoch: 0,
                token: 1,
            },
            Op::Fetch { ids: vec![3], max: 1 },
            Op::Ack { id: 3, seq: 1 },
            Op::Expire { now: 11 },
            Op::Delete { id: 3 },
        ],
        ..Input::default()
    };
    out.seed("relay_store", "requests", &ops.to_bytes());

    // Nameplates: made, taken (one expired first), made again after a reopen.
    let plates = Input {
        ops: vec![
            Op::NameplateCreate {
                fill: 1,
                len: 8,
                expires_at: u64::MAX,
            },
            Op::NameplateCreate {
                fill: 2,
                len: 255,
                expires_at: u64::MAX,
            },
            Op::NameplateCreate {
                fill: 4,
                len: 0,
                expires_at: 1000,
            },
            Op::NameplateTake { number: 7, now: 0 },
            Op::Expire { now: 2000 },
            Op::NameplateTake { number: 7, now: 2000 },
            Op::Reopen,
            Op::NameplateCreate {
                fill: 3,
                len: 1,
                expires_at: u64::MAX,
            },
        ],
        ..Input::default()
    };
    out.seed("relay_store", "nameplates", &plates.to_bytes());

    // Bundles: published, fetched, refreshed, refused another, kept across a reopen, expired.
    let bundles = Input {
        ops: vec![
            Op::BundlePublish { name: 1, fill: 1, len: 255, expires_at: 1000, now: 0 },
            Op::BundleGet { name: 1, now: 0 },
            Op::BundlePublish { name: 1, fill: 1, len: 255, expires_at: 5000, now: 10 },
            Op::BundlePublish { name: 1, fill: 2, len: 3, expires_at: 5000, now: 10 },
            Op::BundlePublish { name: 2, fill: 3, len: 0, expires_at: 1000, now: 0 },
            Op::Reopen,
            Op::BundleGet { name: 1, now: 4000 },
            Op::Expire { now: 2000 },
            Op::BundleGet { name: 2, now: 0 },
            Op::BundlePublish { name: 2, fill: 4, len: 1, expires_at: u64::MAX, now: 2000 },
            Op::BundleGet { name: 2, now: 2000 },
        ],
        ..Input::default()
    };
    out.seed("relay_store", "bundles", &bundles.to_bytes());
}

/// Courier bundles for the two mailboxes `fuzz_targets/courier.rs` imports
/// with (the same fixed keys there): mode 0 real bundle files, mode 1 the
/// slot and body plaintexts the target seals itself.
fn courier(out: &mut Out) {
    use backchannel_core::courier::{open_bundle, seal_bundle, Bundle, BundleEntry, VERSION};
    use backchannel_core::mailbox::{MailboxAddress, SealKey, SendCapability};

    let mine = [
        MailboxAddress {
            relay: relay(),
            send: send_capability(),
            seal: seal_key(),
        },
        MailboxAddress {
            relay: relay(),
            send: SendCapability([0xcb; 32]),
            seal: SealKey([0x5f; 32]),
        },
    ];
    let stranger = MailboxKeys::generate(relay(), &mut OsRng).address.clone();
    let bundle = |n: usize, created_at: u64| {
        let entries = (0..n)
            .map(|i| {
                let to = &mine[i % 2];
                BundleEntry {
                    to: to.send.digest(),
                    envelope: seal_payload(&to.seal, &to.send, PayloadKind::Mls, &[i as u8; 200], &mut OsRng)
                        .unwrap()
                        .remove(0),
                }
            })
            .collect();
        Bundle::new(created_at, entries, &mut OsRng)
    };
    let files = [
        ("one-envelope", bundle(1, 1_800_000_000), vec![mine[0].clone()]),
        (
            "second-mailbox-empty",
            bundle(0, 1_800_000_001),
            vec![stranger, mine[1].clone()],
        ),
    ];
    for (name, b, recipients) in files {
        let file = seal_bundle(&b, &recipients, &mut OsRng).unwrap();
        assert_eq!(open_bundle(&file, &mine).unwrap().0, b);
        let mut m0 = vec![0u8];
        m0.extend(file);
        out.seed("courier", name, &m0);
    }
    // Mode 1: slot = version | 4 slots | bundle key | zeros; the body as
    // docs/protocol.md lays it out; trailing zeros are implied.
    for (name, n) in [("plain-empty", 0), ("plain-one", 1), ("plain-seventeen-two-blocks", 17)] {
        let b = bundle(n, 1_800_000_002);
        let mut m1 = vec![1u8, VERSION, 0, 0, 0, 4];
        m1.extend_from_slice(&[0x4b; 32]);
        m1.extend_from_slice(&[0; 11]);
        m1.push(VERSION);
        m1.extend_from_slice(&b.id);
        m1.extend_from_slice(&b.created_at.to_be_bytes());
        m1.extend_from_slice(&(b.entries.len() as u32).to_be_bytes());
        for e in &b.entries {
            m1.extend_from_slice(&e.to);
            m1.extend_from_slice(e.envelope.as_bytes());
        }
        while m1.last() == Some(&0) {
            m1.pop();
        }
        out.seed("courier", name, &m1);
    }
}

/// The `code` target's seeds: typed codes, a nameplate's record, what a joiner says about
/// itself, and each message of the exchange, made by a real exchange.
fn codes(out: &mut Out) {
    use backchannel_core::code::{About, Code, Finished, Inviter, Joiner, Message, Record};
    let pin = [5; 32];
    let code = Code::random(7, &mut OsRng);
    out.seed("code", "typed", &[&[0u8][..], code.text().as_bytes()].concat());
    out.seed("code", "typed-sloppily", &[&[0u8][..], b"7  ORBI velv_harb"].concat());
    let rendezvous = MailboxKeys::generate(relay(), &mut OsRng);
    let reply = MailboxKeys::generate(relay(), &mut OsRng);
    let (inviter, pake) = Inviter::start(&code, &pin, &mut OsRng);
    let record = Record {
        rendezvous: rendezvous.address.clone(),
        pake: pake.clone().try_into().unwrap(),
    };
    out.seed("code", "record", &[&[1u8][..], &record.to_bytes()].concat());
    let about = About {
        identity_key: [4; 32],
        name: "bob".into(),
        reply: reply.address.clone(),
    };
    out.seed("code", "about", &[&[1u8][..], &about.to_bytes()].concat());
    let (_, theirs, key_message) = Joiner::start(&code, &pin, &pake, &about.to_bytes(), &mut OsRng).unwrap();
    let hello = Message::Hello {
        pake: theirs.clone().try_into().unwrap(),
        key_message: key_message.clone(),
    };
    out.seed("code", "hello", &[&[1u8][..], &hello.to_bytes()].concat());
    out.seed("code", "to-inviter", &[&[2u8][..], &theirs, &key_message].concat());
    let Finished { answer, .. } = inviter.finish(&theirs, &key_message, b"bc-invite:x").unwrap();
    out.seed("code", "answer", &[&[1u8][..], &Message::Answer(answer.clone()).to_bytes()].concat());
    out.seed("code", "refused", &[&[1u8][..], &Message::Refused.to_bytes()].concat());
    out.seed("code", "to-joiner", &[&[3u8][..], &pake, &answer].concat());
}

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf();
    // `-- code`: that target's seeds alone, the others left as they are (the MLS ones cannot
    // be made again byte for byte).
    if std::env::args().nth(1).as_deref() == Some("code") {
        let mut out = Out { root, total: 0 };
        codes(&mut out);
        return;
    }
    for d in ["seeds", "fixtures"] {
        let _ = fs::remove_dir_all(root.join(d));
    }
    let mut out = Out { root, total: 0 };
    let (bob, group_id, kp) = mls(&mut out);
    let fw = forwarding(&mut out);
    frames(&mut out, &JoinRequest { key_package: kp }.to_bytes(), &fw);
    invites(&mut out);
    drop_boxes(&mut out);
    state(&mut out, &bob, group_id);
    store(&mut out);
    courier(&mut out);
    codes(&mut out);
    println!(
        "wrote {} bytes of seeds and fixtures under {}",
        out.total,
        out.root.display()
    );
}

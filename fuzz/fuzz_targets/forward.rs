//! Forwarding (docs/protocol.md, "Forwarding"): a sealed request as the
//! destination relay opens it (attacker input from anyone, through any home
//! relay), a sealed answer as the client opens it (attacker input from the
//! home relay), a relay's credential as a client reads it from its home relay
//! (`relay_identity::check_forward`), and a forwarding relay's proof as the
//! destination checks it (`Request::Forwarder`).
//!
//! The input's first byte picks the part (modulo 8):
//! - 0: the rest is a sealed request: [`forward::open`] with the fixed forward
//!   key and PIN never panics; what opens is a [`forwardable`] request, and
//!   sealing it again ([`forward::seal`]) opens to the same session and
//!   request; the answer key it gives seals an answer it opens.
//! - 1: `tamper | session (16) | frame`: a request made from `frame` (cut or
//!   zero-padded to [`INNER_FRAME_SIZE`]: what [`decode_inner_request`] reads
//!   there, or else a `Send` carrying those bytes) is sealed for real, edited
//!   as `tamper` says, and opened: an unedited seal opens to exactly that
//!   session and request, and the answer keys of both sides agree; an edited
//!   one (a byte changed, one dropped or added, another PIN, another relay's
//!   key) never opens.
//! - 2: `session (16) | frame`: the plaintext of a seal, sealed here with HPKE
//!   exactly as docs/protocol.md says (so bytes that [`encode_inner_request`]
//!   never makes get inside a seal): it opens exactly when `frame` (cut or
//!   zero-padded) is an inner request frame, to that session and request, and
//!   the answer key is the HPKE exporter's.
//! - 3: the rest is a sealed answer under the answer key of the fixture's
//!   sealed request: [`forward::open_answer`] never panics, and it opens
//!   exactly when ChaCha20-Poly1305 does (checked here with the key exported
//!   by HPKE) and the frame inside decodes, to that response.
//! - 4: `tamper | frame`: a response made from `frame` (what
//!   [`decode_inner_response`] or [`decode_response`] reads there, or else a
//!   commit's part carrying those bytes) is sealed for real
//!   ([`forward::seal_answer`] with the key of a real seal), edited, and opened
//!   with [`forward::open_answer`]: unedited, it opens to the response (or to
//!   `Error { Malformed, 0 }`, for the kinds never forwarded); edited (or under
//!   another seal's key), never.
//! - 5: the rest is an answer frame's plaintext, sealed here with
//!   ChaCha20-Poly1305 as docs/protocol.md says (as it is, and cut or
//!   zero-padded to [`INNER_FRAME_SIZE`]): it opens exactly when it is an
//!   inner response frame, to that response.
//! - 6: the rest is a credential: what [`Credential::from_bytes`] reads
//!   re-encodes ([`Credential::to_bytes`]) to exactly the input; what
//!   [`check_forward`] accepts (against the fixture's identity, at a time the
//!   fixture's credential is valid) names an X-Wing forward key, is valid then,
//!   and signs the same body as the fixture's credential (no forgery).
//! - 7: `identity (bytes16) | scheme (u16) | signature (bytes16) | nonce (32)`:
//!   a `Forwarder` proof as the destination checks it
//!   ([`verify_signature`] over the label and the nonce, with any certificate)
//!   never panics; with the fixture's identity it verifies only for the
//!   fixture's nonce.
//!
//! `tamper` is `flags (u8) | n (u8) | n % 8 edits of pos (u16) | value (u8)`:
//! an edit sets (`pos` bit 15) or xors the byte at `pos % len`; flags bit 0
//! opens with another PIN, bit 1 with another relay's key (a request) or
//! another seal's answer key (an answer), bit 2 drops the last byte, bit 3
//! appends a zero byte.
//!
//! The fixed keys and the fixture (`fixtures/forward.bin`: a sealed request, a
//! relay identity and its credential and `Forwarder` proof) are the ones
//! `seeds.rs` makes its seeds with.
#![no_main]

use std::sync::OnceLock;

use backchannel_core::codec::Reader;
use backchannel_core::envelope::{Envelope, ENVELOPE_SIZE};
use backchannel_core::forward::{
    self, AnswerKey, ForwardError, ForwardKeys, ANSWER_CONTEXT, ENC_LEN, FORWARDER_LABEL, FORWARD_INFO,
    SEALED_ANSWER_LEN, SEALED_LEN, SESSION_LEN,
};
use backchannel_core::frame::{
    decode_inner_request, decode_inner_response, decode_response, encode_inner_request, encode_inner_response,
    forwardable, ErrorCode, Request, Response, COMMIT_PART, FRAME_SIZE, INNER_FRAME_SIZE,
};
use backchannel_core::relay_address::Pin;
use backchannel_core::relay_identity::{check_forward, verify_signature, Credential, IdentityError, FORWARD_KEM_XWING};
use backchannel_fuzz::{ForwardFixture, FORWARD_PIN, FORWARD_SEED};
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Nonce};
use hpke_rs::{Hpke, HpkePrivateKey, HpkePublicKey, Mode};
use hpke_rs_crypto::types::{AeadAlgorithm, KdfAlgorithm, KemAlgorithm};
use hpke_rs_libcrux::HpkeLibcrux;
use backchannel_fuzz::forwarded_answer_kind;
use libfuzzer_sys::fuzz_target;

/// Seed of another relay's forward key.
const OTHER_SEED: [u8; 32] = [0x0f; 32];
/// Another relay's PIN.
const OTHER_PIN: [u8; 32] = [0x71; 32];

struct Fixed {
    keys: ForwardKeys,
    other: ForwardKeys,
    secret: HpkePrivateKey,
    fixture: ForwardFixture,
    /// The answer key of the fixture's sealed request, as the relay opening it has it ...
    answer: AnswerKey,
    /// ... and as HPKE exports it.
    answer_raw: Vec<u8>,
    /// The answer keys of a real seal: the client's and the relay's.
    client: AnswerKey,
    relay: AnswerKey,
    /// The client's answer key of another seal of the same request.
    other_client: AnswerKey,
    /// The fixture identity's PIN and credential, and a time it is valid at.
    pin: Pin,
    credential: Credential,
    now: u64,
}

fn hpke() -> Hpke<HpkeLibcrux> {
    Hpke::new(
        Mode::Base,
        KemAlgorithm::XWingDraft06,
        KdfAlgorithm::HkdfSha256,
        AeadAlgorithm::ChaCha20Poly1305,
    )
}

fn fixed() -> &'static Fixed {
    static F: OnceLock<Fixed> = OnceLock::new();
    F.get_or_init(|| {
        let keys = ForwardKeys::from_seed(FORWARD_SEED).unwrap();
        let other = ForwardKeys::from_seed(OTHER_SEED).unwrap();
        let (secret, public) = hpke().derive_key_pair(&FORWARD_SEED).unwrap().into_keys();
        assert_eq!(
            public.as_slice(),
            keys.public(),
            "ForwardKeys is not HPKE's DeriveKeyPair"
        );
        let fixture = ForwardFixture::from_bytes(include_bytes!("../fixtures/forward.bin")).unwrap();

        let (_, _, answer) = forward::open(&keys, &FORWARD_PIN, &fixture.sealed).expect("the fixture's seal opens");
        let (enc, _) = fixture.sealed.split_at(ENC_LEN);
        let ctx = hpke()
            .setup_receiver(enc, &secret, FORWARD_INFO, None, None, None)
            .unwrap();
        let answer_raw = ctx.export(ANSWER_CONTEXT, 32).unwrap();
        assert_eq!(
            forward::seal_answer(&answer, &Response::Pong).unwrap(),
            chacha_seal(&answer_raw, &encode_inner_response(&Response::Pong)),
            "the answer key is not HPKE's exporter"
        );

        let session = [0x5e; SESSION_LEN];
        let (sealed, client) = forward::seal(keys.public(), &FORWARD_PIN, &session, &Request::Ping).unwrap();
        let (_, _, relay) = forward::open(&keys, &FORWARD_PIN, &sealed).unwrap();
        let (_, other_client) = forward::seal(keys.public(), &FORWARD_PIN, &session, &Request::Ping).unwrap();

        let pin = Pin::of_certificate(&fixture.identity);
        let credential = Credential::from_bytes(&fixture.credential).unwrap();
        let now = credential.not_before.saturating_add(86_400);
        assert_eq!(
            check_forward(&pin, &fixture.identity, &fixture.credential, now),
            Ok(credential.clone()),
            "the fixture's credential is not accepted"
        );
        assert!(
            verify_signature(
                &fixture.identity,
                fixture.scheme,
                &[FORWARDER_LABEL, &fixture.nonce[..]].concat(),
                &fixture.signature
            ),
            "the fixture's forwarder proof does not verify"
        );
        Fixed {
            keys,
            other,
            secret,
            fixture,
            answer,
            answer_raw,
            client,
            relay,
            other_client,
            pin,
            credential,
            now,
        }
    })
}

fn chacha_seal(key: &[u8], frame: &[u8]) -> Vec<u8> {
    ChaCha20Poly1305::new_from_slice(key)
        .unwrap()
        .encrypt(
            Nonce::from_slice(&[0; 12]),
            Payload {
                msg: frame,
                aad: ANSWER_CONTEXT,
            },
        )
        .unwrap()
}

fn chacha_open(key: &[u8], sealed: &[u8]) -> Option<Vec<u8>> {
    ChaCha20Poly1305::new_from_slice(key)
        .unwrap()
        .decrypt(
            Nonce::from_slice(&[0; 12]),
            Payload {
                msg: sealed,
                aad: ANSWER_CONTEXT,
            },
        )
        .ok()
}

fn sized(data: &[u8], size: usize) -> Vec<u8> {
    let mut f = data[..data.len().min(size)].to_vec();
    f.resize(size, 0);
    f
}

/// Edits to make to a real seal (module docs).
struct Tamper {
    flags: u8,
    edits: Vec<(u16, u8)>,
}

const OTHER_PIN_FLAG: u8 = 1;
const OTHER_KEY_FLAG: u8 = 2;
const DROP_FLAG: u8 = 4;
const APPEND_FLAG: u8 = 8;

impl Tamper {
    fn parse(data: &[u8]) -> (Self, &[u8]) {
        let flags = data.first().copied().unwrap_or(0);
        let n = data.get(1).copied().unwrap_or(0) as usize % 8;
        let mut rest = data.get(2..).unwrap_or(&[]);
        let mut edits = Vec::new();
        for _ in 0..n {
            let [a, b, v, tail @ ..] = rest else {
                break;
            };
            edits.push((u16::from_be_bytes([*a, *b]), *v));
            rest = tail;
        }
        (Self { flags, edits }, rest)
    }

    /// Edits `sealed`; whether the bytes changed.
    fn apply(&self, sealed: &mut Vec<u8>) -> bool {
        let before = sealed.clone();
        for &(pos, v) in &self.edits {
            let at = (pos & 0x7fff) as usize % sealed.len();
            if pos & 0x8000 != 0 {
                sealed[at] = v;
            } else {
                sealed[at] ^= v;
            }
        }
        if self.flags & DROP_FLAG != 0 {
            sealed.pop();
        }
        if self.flags & APPEND_FLAG != 0 {
            sealed.push(0);
        }
        *sealed != before
    }
}

/// Checks that an answer key the relay got from opening a seal and the client's
/// key of that seal agree: one seals, the other opens.
fn keys_agree(relay: &AnswerKey, client: &AnswerKey) {
    let resp = Response::Error {
        code: ErrorCode::EpochConflict,
        detail: 7,
    };
    let sealed = forward::seal_answer(relay, &resp).unwrap();
    assert_eq!(sealed.len(), SEALED_ANSWER_LEN);
    assert_eq!(
        forward::open_answer(client, &sealed),
        Ok(resp),
        "the two sides' answer keys differ"
    );
}

/// 0: a sealed request from anyone.
fn open_raw(sealed: &[u8]) {
    let f = fixed();
    let Ok((session, req, answer)) = forward::open(&f.keys, &FORWARD_PIN, sealed) else {
        return;
    };
    assert_eq!(sealed.len(), SEALED_LEN);
    assert!(forwardable(&req), "a forwarded request opened that is not forwardable");
    assert!(encode_inner_request(&req).is_some());
    let (again, client) = forward::seal(f.keys.public(), &FORWARD_PIN, &session, &req).unwrap();
    let (s2, r2, relay) = forward::open(&f.keys, &FORWARD_PIN, &again).unwrap();
    assert_eq!((s2, &r2), (session, &req), "a re-sealed request opens to another");
    keys_agree(&relay, &client);
    let sealed_answer = forward::seal_answer(&answer, &Response::Ok).unwrap();
    assert_eq!(forward::open_answer(&answer, &sealed_answer), Ok(Response::Ok));
}

/// The request mode 1 seals: what the frame decodes to, or a send carrying it.
fn request_from(frame: &[u8]) -> Request {
    if let Ok(req) = decode_inner_request(frame) {
        return req;
    }
    let mut send = [0u8; 32];
    send.copy_from_slice(&frame[..32]);
    let envelope = Envelope::from_bytes(&frame[32..32 + ENVELOPE_SIZE]).unwrap();
    let mut pow = [0u8; 8];
    pow.copy_from_slice(&frame[32 + ENVELOPE_SIZE..32 + ENVELOPE_SIZE + 8]);
    Request::Send {
        send,
        envelope,
        pow: u64::from_be_bytes(pow),
    }
}

fn session_and_frame(data: &[u8]) -> ([u8; SESSION_LEN], Vec<u8>) {
    let s = sized(data, SESSION_LEN);
    let mut session = [0u8; SESSION_LEN];
    session.copy_from_slice(&s);
    (session, sized(data.get(SESSION_LEN..).unwrap_or(&[]), INNER_FRAME_SIZE))
}

/// 1: a real seal, edited.
fn tamper_request(data: &[u8]) {
    let f = fixed();
    let (tamper, rest) = Tamper::parse(data);
    let (session, frame) = session_and_frame(rest);
    let req = request_from(&frame);
    let (mut sealed, client) = forward::seal(f.keys.public(), &FORWARD_PIN, &session, &req).unwrap();
    assert_eq!(sealed.len(), SEALED_LEN);
    let edited = tamper.apply(&mut sealed);
    let other_pin = tamper.flags & OTHER_PIN_FLAG != 0;
    let other_key = tamper.flags & OTHER_KEY_FLAG != 0;
    let keys = if other_key { &f.other } else { &f.keys };
    let pin = if other_pin { &OTHER_PIN } else { &FORWARD_PIN };
    let opened = forward::open(keys, pin, &sealed);
    if edited || other_pin || other_key {
        assert!(
            matches!(opened, Err(ForwardError::Unsealed | ForwardError::Malformed)),
            "an edited seal, or one opened with another PIN or key, opens: {:?}",
            opened.map(|(s, r, _)| (s, r))
        );
    } else {
        let (s, r, relay) = opened.expect("a real seal does not open");
        assert_eq!((s, &r), (session, &req), "a real seal opens to another request");
        keys_agree(&relay, &client);
    }
}

/// 2: a plaintext sealed here.
fn plaintext_request(data: &[u8]) {
    let f = fixed();
    let (session, frame) = session_and_frame(data);
    let mut plain = session.to_vec();
    plain.extend_from_slice(&frame);
    let (enc, mut ctx) = hpke()
        .setup_sender(
            &HpkePublicKey::new(f.keys.public().to_vec()),
            FORWARD_INFO,
            None,
            None,
            None,
        )
        .unwrap();
    let mut sealed = enc;
    sealed.extend(ctx.seal(&FORWARD_PIN, &plain).unwrap());
    assert_eq!(sealed.len(), SEALED_LEN);
    let answer_raw = ctx.export(ANSWER_CONTEXT, 32).unwrap();
    let expected = decode_inner_request(&frame).ok();
    match forward::open(&f.keys, &FORWARD_PIN, &sealed) {
        Ok((s, r, answer)) => {
            assert_eq!(
                Some(&r),
                expected.as_ref(),
                "a seal opens to what its frame does not decode to"
            );
            assert_eq!(s, session);
            assert_eq!(
                forward::seal_answer(&answer, &Response::Pong).unwrap(),
                chacha_seal(&answer_raw, &encode_inner_response(&Response::Pong)),
                "the answer key is not HPKE's exporter"
            );
        }
        Err(e) => {
            assert_eq!(expected, None, "a seal of a well-formed request does not open");
            assert_eq!(e, ForwardError::Malformed, "a real seal is refused as {e:?}");
        }
    }
    // The HPKE layer as the relay would open it, for the secret key derived here.
    let (enc, ct) = sealed.split_at(ENC_LEN);
    let mut rx = hpke()
        .setup_receiver(enc, &f.secret, FORWARD_INFO, None, None, None)
        .unwrap();
    assert_eq!(rx.open(&FORWARD_PIN, ct).unwrap(), plain);
}

/// 3: a sealed answer from the home relay.
fn open_answer_raw(sealed: &[u8]) {
    let f = fixed();
    let opened = forward::open_answer(&f.answer, sealed);
    let expected = chacha_open(&f.answer_raw, sealed).map(|frame| decode_inner_response(&frame));
    match (&opened, expected) {
        (Ok(resp), Some(Ok(e))) => {
            assert_eq!(resp, &e);
            assert_eq!(sealed.len(), SEALED_ANSWER_LEN);
            let again = forward::seal_answer(&f.answer, resp).unwrap();
            assert_eq!(forward::open_answer(&f.answer, &again).as_ref(), Ok(resp));
        }
        (Err(ForwardError::Unsealed), None) | (Err(ForwardError::Malformed), Some(Err(_))) => {}
        (got, expected) => panic!("open_answer gave {got:?} where the AEAD and the frame say {expected:?}"),
    }
}

/// The response mode 4 seals: what the frame decodes to, or a commit's part carrying it.
fn response_from(frame: &[u8]) -> Response {
    if let Ok(resp) = decode_inner_response(frame) {
        return resp;
    }
    if let Ok(f) = decode_response(&sized(frame, FRAME_SIZE)) {
        return f.response;
    }
    let total = frame[0].clamp(1, 128) as u16;
    let len = (u16::from_be_bytes([frame[1], frame[2]]) as usize % COMMIT_PART) + 1;
    Response::Commit {
        total,
        bytes: frame[3..3 + len].to_vec(),
    }
}

/// 4: a real sealed answer, edited.
fn tamper_answer(data: &[u8]) {
    let f = fixed();
    let (tamper, rest) = Tamper::parse(data);
    let resp = response_from(&sized(rest, INNER_FRAME_SIZE));
    let expected = if forwarded_answer_kind(&resp) {
        resp.clone()
    } else {
        Response::Error {
            code: ErrorCode::Malformed,
            detail: 0,
        }
    };
    let mut sealed = forward::seal_answer(&f.relay, &resp).unwrap();
    assert_eq!(sealed.len(), SEALED_ANSWER_LEN);
    let edited = tamper.apply(&mut sealed);
    let other_key = tamper.flags & OTHER_KEY_FLAG != 0;
    let key = if other_key { &f.other_client } else { &f.client };
    let opened = forward::open_answer(key, &sealed);
    if edited || other_key {
        assert_eq!(
            opened,
            Err(ForwardError::Unsealed),
            "an edited answer, or one under another key, opens"
        );
    } else {
        assert_eq!(opened, Ok(expected), "a real answer opens to another response");
    }
}

/// 5: an answer plaintext sealed here.
fn plaintext_answer(frame: &[u8]) {
    let f = fixed();
    let sealed = chacha_seal(&f.answer_raw, frame);
    let expected = decode_inner_response(frame).ok();
    match forward::open_answer(&f.answer, &sealed) {
        Ok(resp) => assert_eq!(
            Some(resp),
            expected,
            "an answer opens to what its frame does not decode to"
        ),
        Err(e) => {
            assert_eq!(expected, None, "a sealed well-formed answer does not open");
            assert_eq!(e, ForwardError::Malformed, "a real sealed answer is refused as {e:?}");
        }
    }
}

/// 6: a credential passed on by the home relay.
fn credential(data: &[u8]) {
    let f = fixed();
    if let Ok(c) = Credential::from_bytes(data) {
        assert_eq!(c.to_bytes(), data, "a credential re-encodes to other bytes");
    }
    let checked = check_forward(&f.pin, &f.fixture.identity, data, f.now);
    if let Ok(c) = &checked {
        assert_eq!(Credential::from_bytes(data).as_ref(), Ok(c));
        assert_eq!(c.forward_kem, FORWARD_KEM_XWING);
        assert_eq!(c.forward_key.len(), forward::FORWARD_KEY_LEN);
        assert!(c.not_before <= f.now && f.now <= c.not_after);
        assert_eq!(
            c.signed_bytes(),
            f.credential.signed_bytes(),
            "a credential the identity never signed is accepted"
        );
    } else if Credential::from_bytes(data).is_err() {
        assert_eq!(checked, Err(IdentityError::Malformed));
    }
}

/// 7: a forwarding relay's proof, with any certificate.
fn forwarder(data: &[u8]) {
    let f = fixed();
    let mut r = Reader::new(data);
    let (Ok(identity), Ok(scheme), Ok(signature), Ok(nonce)) = (r.bytes16(), r.u16(), r.bytes16(), r.array::<32>())
    else {
        return;
    };
    let message = [FORWARDER_LABEL, &nonce[..]].concat();
    if verify_signature(identity, scheme, &message, signature) && identity == f.fixture.identity.as_slice() {
        assert_eq!(
            nonce, f.fixture.nonce,
            "a forwarder proof the identity never signed verifies"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 8 {
        0 => open_raw(rest),
        1 => tamper_request(rest),
        2 => plaintext_request(rest),
        3 => open_answer_raw(rest),
        4 => tamper_answer(rest),
        5 => {
            plaintext_answer(rest);
            if rest.len() != INNER_FRAME_SIZE {
                plaintext_answer(&sized(rest, INNER_FRAME_SIZE));
            }
        }
        6 => credential(rest),
        _ => forwarder(rest),
    }
});

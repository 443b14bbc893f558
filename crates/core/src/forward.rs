//! Forwarding (docs/protocol.md, "Forwarding"): what a client sends to a mailbox on
//! another relay goes to its own home relay, sealed so that only the destination relay
//! can read it.
//!
//! ```text
//! sealed        = enc (1120) | ciphertext (session (16) | inner request frame (4160) | tag (16))
//! (enc, ctx)    = HPKE base mode (RFC 9180): KEM X-Wing draft-06 (0x647a), KDF HKDF-SHA256,
//!                 AEAD ChaCha20-Poly1305; pkR = the destination's forward key (from its
//!                 credential, `relay_identity::check_forward`), info = "backchannel/v1/forward",
//!                 aad = the destination's PIN
//! answer key    = ctx.export("backchannel/v1/forward-answer", 32)
//! sealed answer = ChaCha20-Poly1305(answer key, nonce 0, aad = "backchannel/v1/forward-answer",
//!                 inner response frame (4160)) (4176)
//! ```
//!
//! Every seal has a fresh encapsulation, so the destination cannot link two forwarded
//! requests of one sender; the answer key is used once. The *session* is a random value the
//! client picks per commit (its deposit and its claim share it; every other request has a
//! fresh one): the destination keeps a commit's deposit per forwarding connection and
//! session, since one forwarding connection carries many users' requests.
//! The home relay sees the destination and the sizes, which are fixed; never the request.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Nonce};
use hpke_rs::{HpkeError, HpkePublicKey};
use zeroize::Zeroizing;

use crate::drop::{hpke, DropKeys};
use crate::frame::{
    decode_inner_request, decode_inner_response, encode_inner_request, encode_inner_response, Request, Response,
    INNER_FRAME_SIZE,
};

/// HPKE `info` of a forwarded request.
pub const FORWARD_INFO: &[u8] = b"backchannel/v1/forward";

/// The exporter context of the answer key, and the answer's associated data.
pub const ANSWER_CONTEXT: &[u8] = b"backchannel/v1/forward-answer";

/// What a forwarding relay's identity key signs, before the destination's hello nonce
/// ([`crate::frame::Request::Forwarder`]).
pub const FORWARDER_LABEL: &[u8] = b"backchannel/v1/forwarder";

/// Length of an X-Wing forward key.
pub const FORWARD_KEY_LEN: usize = crate::drop::OWNER_KEY_LEN;

/// Length of an X-Wing encapsulation.
pub const ENC_LEN: usize = crate::drop::ENC_LEN;

/// Length of a session id.
pub const SESSION_LEN: usize = 16;

const TAG_LEN: usize = 16;

/// Length of a sealed forwarded request.
pub const SEALED_LEN: usize = ENC_LEN + SESSION_LEN + INNER_FRAME_SIZE + TAG_LEN;

/// Length of a sealed answer.
pub const SEALED_ANSWER_LEN: usize = INNER_FRAME_SIZE + TAG_LEN;

/// A forwarded request could not be sealed or opened.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ForwardError {
    /// The request is not one that is forwarded (`frame::forwardable`).
    #[error("this request is not forwarded")]
    NotForwardable,
    /// It does not open with this key: sealed to another key (the relay's before its
    /// restart), or damaged.
    #[error("the forwarded request does not open with this relay's forward key")]
    Unsealed,
    /// It opened, but what is inside is not a forwardable request or answer.
    #[error("the forwarded request or answer is malformed")]
    Malformed,
    /// The forward key is not an X-Wing key.
    #[error("the relay's forward key is not an X-Wing key")]
    BadKey,
    /// The HPKE library failed.
    #[error("a cryptographic operation failed")]
    Crypto,
}

/// A relay's forward key pair (X-Wing), made at each start, in memory only; the seed is
/// zeroized on drop.
pub struct ForwardKeys(DropKeys);

impl std::fmt::Debug for ForwardKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ForwardKeys(..)")
    }
}

impl ForwardKeys {
    /// A fresh key pair.
    pub fn generate() -> Result<Self, ForwardError> {
        DropKeys::generate(&mut rand_core::OsRng)
            .map(Self)
            .map_err(|_| ForwardError::Crypto)
    }

    /// The key pair HPKE's `DeriveKeyPair` makes from `seed` (tests and fuzzing; a relay
    /// uses [`ForwardKeys::generate`]).
    pub fn from_seed(seed: [u8; 32]) -> Result<Self, ForwardError> {
        DropKeys::from_seed(seed).map(Self).map_err(|_| ForwardError::Crypto)
    }

    /// The public key that goes into the relay's credential.
    pub fn public(&self) -> &[u8] {
        self.0.public()
    }
}

/// The key that seals the answer to one forwarded request; zeroized on drop.
pub struct AnswerKey(Zeroizing<Vec<u8>>);

impl std::fmt::Debug for AnswerKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AnswerKey(..)")
    }
}

fn crypto(_: HpkeError) -> ForwardError {
    ForwardError::Crypto
}

/// Seals `req` for the relay whose PIN is `pin` and whose forward key is `key`, in
/// `session`. Returns the sealed request ([`SEALED_LEN`] bytes) and the key of its answer.
pub fn seal(
    key: &[u8],
    pin: &[u8; 32],
    session: &[u8; SESSION_LEN],
    req: &Request,
) -> Result<(Vec<u8>, AnswerKey), ForwardError> {
    if key.len() != FORWARD_KEY_LEN {
        return Err(ForwardError::BadKey);
    }
    let inner = encode_inner_request(req).ok_or(ForwardError::NotForwardable)?;
    let mut plain = Zeroizing::new(Vec::with_capacity(SESSION_LEN + INNER_FRAME_SIZE));
    plain.extend_from_slice(session);
    plain.extend_from_slice(&inner);
    let (enc, mut ctx) = hpke()
        .setup_sender(&HpkePublicKey::new(key.to_vec()), FORWARD_INFO, None, None, None)
        .map_err(crypto)?;
    let ct = ctx.seal(pin, &plain).map_err(crypto)?;
    let answer = AnswerKey(Zeroizing::new(ctx.export(ANSWER_CONTEXT, 32).map_err(crypto)?));
    let mut sealed = Vec::with_capacity(SEALED_LEN);
    sealed.extend_from_slice(&enc);
    sealed.extend_from_slice(&ct);
    if sealed.len() != SEALED_LEN {
        return Err(ForwardError::Crypto);
    }
    Ok((sealed, answer))
}

/// Opens a sealed request (attacker input) with this relay's `keys`; `pin` is this relay's
/// PIN. Returns the session, the request and the key of its answer.
pub fn open(
    keys: &ForwardKeys,
    pin: &[u8; 32],
    sealed: &[u8],
) -> Result<([u8; SESSION_LEN], Request, AnswerKey), ForwardError> {
    if sealed.len() != SEALED_LEN {
        return Err(ForwardError::Malformed);
    }
    let (enc, ct) = sealed.split_at(ENC_LEN);
    let (secret, _) = keys.0.pair().map_err(|_| ForwardError::Crypto)?;
    let mut ctx = hpke()
        .setup_receiver(enc, &secret, FORWARD_INFO, None, None, None)
        .map_err(|_| ForwardError::Unsealed)?;
    let plain = Zeroizing::new(ctx.open(pin, ct).map_err(|_| ForwardError::Unsealed)?);
    let answer = AnswerKey(Zeroizing::new(ctx.export(ANSWER_CONTEXT, 32).map_err(crypto)?));
    let (session, inner) = plain.split_at(SESSION_LEN);
    let session: [u8; SESSION_LEN] = session.try_into().map_err(|_| ForwardError::Malformed)?;
    let req = decode_inner_request(inner).map_err(|_| ForwardError::Malformed)?;
    Ok((session, req, answer))
}

fn cipher(key: &AnswerKey) -> Result<ChaCha20Poly1305, ForwardError> {
    ChaCha20Poly1305::new_from_slice(&key.0).map_err(|_| ForwardError::Crypto)
}

/// Seals the answer to a forwarded request ([`SEALED_ANSWER_LEN`] bytes).
pub fn seal_answer(key: &AnswerKey, resp: &Response) -> Result<Vec<u8>, ForwardError> {
    let frame = encode_inner_response(resp);
    cipher(key)?
        .encrypt(
            Nonce::from_slice(&[0; 12]),
            Payload {
                msg: &frame,
                aad: ANSWER_CONTEXT,
            },
        )
        .map_err(|_| ForwardError::Crypto)
}

/// Opens the answer to a forwarded request (attacker input).
pub fn open_answer(key: &AnswerKey, sealed: &[u8]) -> Result<Response, ForwardError> {
    let frame = cipher(key)?
        .decrypt(
            Nonce::from_slice(&[0; 12]),
            Payload {
                msg: sealed,
                aad: ANSWER_CONTEXT,
            },
        )
        .map_err(|_| ForwardError::Unsealed)?;
    decode_inner_response(&frame).map_err(|_| ForwardError::Malformed)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::frame::ErrorCode;

    #[test]
    fn only_the_destination_opens_a_forwarded_request_and_only_the_sender_its_answer() {
        let keys = ForwardKeys::generate().unwrap();
        let pin = [7u8; 32];
        let session = [3u8; SESSION_LEN];
        let req = Request::ClaimKeyed {
            send: [1; 32],
            epoch: 9,
            key: [2; 32],
            next: [4; 32],
        };
        let (sealed, answer) = seal(keys.public(), &pin, &session, &req).unwrap();
        assert_eq!(sealed.len(), SEALED_LEN);
        let (got_session, got, key) = open(&keys, &pin, &sealed).unwrap();
        assert_eq!((got_session, &got), (session, &req));
        let resp = Response::Error {
            code: ErrorCode::EpochConflict,
            detail: 10,
        };
        let sealed_answer = seal_answer(&key, &resp).unwrap();
        assert_eq!(sealed_answer.len(), SEALED_ANSWER_LEN);
        assert_eq!(open_answer(&answer, &sealed_answer).unwrap(), resp);
        // Another relay's key, another PIN, a flipped bit: nothing opens.
        let other = ForwardKeys::generate().unwrap();
        assert_eq!(open(&other, &pin, &sealed).unwrap_err(), ForwardError::Unsealed);
        assert_eq!(open(&keys, &[8; 32], &sealed).unwrap_err(), ForwardError::Unsealed);
        let mut flipped = sealed.clone();
        flipped[ENC_LEN + 5] ^= 1;
        assert_eq!(open(&keys, &pin, &flipped).unwrap_err(), ForwardError::Unsealed);
        let mut bad_answer = sealed_answer;
        bad_answer[0] ^= 1;
        assert_eq!(open_answer(&answer, &bad_answer).unwrap_err(), ForwardError::Unsealed);
        // Two seals of one request share nothing: fresh encapsulations.
        let (again, _) = seal(keys.public(), &pin, &session, &req).unwrap();
        assert_ne!(again[..ENC_LEN], sealed[..ENC_LEN]);
        // The receive side is never forwarded.
        let fetch = Request::Fetch { max: 1, wait_ms: 0 };
        assert_eq!(
            seal(keys.public(), &pin, &session, &fetch).unwrap_err(),
            ForwardError::NotForwardable
        );
    }
}

//! Envelopes: the only thing a relay stores.
//!
//! An envelope is exactly [`ENVELOPE_SIZE`] bytes:
//!
//! ```text
//! nonce (24) || XChaCha20-Poly1305(seal_key, nonce, aad, chunk (4056)) || tag (16)
//! aad   = "backchannel/v1/envelope" || SHA-256(send capability) (32)
//! chunk = version (1) | kind (1) | message_id (16) | index (u16) | count (u16)
//!         | total_len (u32) | data_len (u16) | data | zero padding to 4056
//! kind  = 1 MLS message | 2 welcome | 3 join request | 4 drop box letter | 5 drop box reply
//! ```
//!
//! A payload longer than [`CHUNK_DATA`] is split into `count` chunks that
//! share a random `message_id`; [`Reassembler`] puts them back together. To
//! the relay every envelope is the same size and indistinguishable from
//! random bytes; binding the mailbox (by the digest of its send capability)
//! into the AEAD stops an envelope being moved from one mailbox to another.

use std::collections::BTreeMap;
use std::fmt;

use rand_core::CryptoRngCore;
use thiserror::Error;

use crate::aead;
use crate::codec::{DecodeError, Reader, Writer};
use crate::mailbox::{SealKey, SendCapability};

/// Size of every envelope on the wire and at rest.
pub const ENVELOPE_SIZE: usize = 4096;
const NONCE_LEN: usize = aead::XNONCE_LEN;
const TAG_LEN: usize = aead::TAG_LEN;
/// Size of the plaintext chunk inside an envelope.
pub const CHUNK_SIZE: usize = ENVELOPE_SIZE - NONCE_LEN - TAG_LEN;
const CHUNK_HEADER: usize = 1 + 1 + 16 + 2 + 2 + 4 + 2;
/// Payload bytes carried per envelope.
pub const CHUNK_DATA: usize = CHUNK_SIZE - CHUNK_HEADER;
/// Largest payload that may be split into envelopes.
pub const MAX_PAYLOAD: usize = 16 * 1024 * 1024;
const CHUNK_VERSION: u8 = 1;
const AAD_CONTEXT: &[u8] = b"backchannel/v1/envelope";

/// One sealed, fixed-size envelope.
#[derive(Clone, PartialEq, Eq)]
pub struct Envelope(Box<[u8; ENVELOPE_SIZE]>);

impl fmt::Debug for Envelope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Envelope(..)")
    }
}

impl Envelope {
    /// Wraps exactly [`ENVELOPE_SIZE`] bytes.
    pub fn from_bytes(b: &[u8]) -> Result<Self, DecodeError> {
        let arr: [u8; ENVELOPE_SIZE] = b.try_into().map_err(|_| DecodeError::Invalid("envelope size"))?;
        Ok(Self(Box::new(arr)))
    }

    /// The bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0[..]
    }
}

/// What a payload is, so the recipient knows how to process it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum PayloadKind {
    /// An MLS message (application, proposal or commit) of a channel.
    Mls,
    /// A welcome into a channel.
    Welcome,
    /// A request to join through an invite.
    JoinRequest,
    /// An anonymous letter to a drop box (see [`crate::drop`]).
    Letter,
    /// A drop box owner's reply to the source of a letter.
    Reply,
    /// A message of an exchange by invite code (`crate::code::Message`).
    Code,
}

impl PayloadKind {
    fn to_u8(self) -> u8 {
        match self {
            PayloadKind::Mls => 1,
            PayloadKind::Welcome => 2,
            PayloadKind::JoinRequest => 3,
            PayloadKind::Letter => 4,
            PayloadKind::Reply => 5,
            PayloadKind::Code => 6,
        }
    }
    fn from_u8(v: u8) -> Result<Self, DecodeError> {
        match v {
            1 => Ok(PayloadKind::Mls),
            2 => Ok(PayloadKind::Welcome),
            3 => Ok(PayloadKind::JoinRequest),
            4 => Ok(PayloadKind::Letter),
            5 => Ok(PayloadKind::Reply),
            6 => Ok(PayloadKind::Code),
            _ => Err(DecodeError::Invalid("payload kind")),
        }
    }
}

/// One decrypted piece of a payload.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Chunk {
    /// Payload kind.
    pub kind: PayloadKind,
    /// Shared by all chunks of one payload.
    pub message_id: [u8; 16],
    /// Position of this chunk.
    pub index: u16,
    /// Number of chunks.
    pub count: u16,
    /// Length of the whole payload.
    pub total_len: u32,
    /// This chunk's bytes.
    pub data: Vec<u8>,
}

/// An envelope could not be opened or a payload not reassembled.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum EnvelopeError {
    /// The payload is larger than [`MAX_PAYLOAD`].
    #[error("the message is too large to send ({0} bytes)")]
    TooLarge(usize),
    /// Authentication failed: wrong key, wrong mailbox, or modified bytes.
    #[error("an envelope failed authentication")]
    Unauthentic,
    /// The decrypted chunk is malformed.
    #[error("an envelope is malformed: {0}")]
    Malformed(#[from] DecodeError),
    /// A chunk disagrees with earlier chunks of the same payload.
    #[error("the pieces of a message do not fit together")]
    Inconsistent,
}

fn aad(mailbox: &SendCapability) -> Vec<u8> {
    let mut a = Vec::with_capacity(AAD_CONTEXT.len() + 32);
    a.extend_from_slice(AAD_CONTEXT);
    a.extend_from_slice(&mailbox.digest());
    a
}

/// Splits `payload` into sealed envelopes for `mailbox`.
pub fn seal_payload(
    key: &SealKey,
    mailbox: &SendCapability,
    kind: PayloadKind,
    payload: &[u8],
    rng: &mut impl CryptoRngCore,
) -> Result<Vec<Envelope>, EnvelopeError> {
    if payload.len() > MAX_PAYLOAD {
        return Err(EnvelopeError::TooLarge(payload.len()));
    }
    let mut message_id = [0u8; 16];
    rng.fill_bytes(&mut message_id);
    let count = payload.len().div_ceil(CHUNK_DATA).max(1);
    let mut out = Vec::with_capacity(count);
    for index in 0..count {
        let start = index * CHUNK_DATA;
        let end = (start + CHUNK_DATA).min(payload.len());
        let chunk = Chunk {
            kind,
            message_id,
            index: index as u16,
            count: count as u16,
            total_len: payload.len() as u32,
            data: payload[start..end].to_vec(),
        };
        out.push(seal_chunk(key, mailbox, &chunk, rng));
    }
    Ok(out)
}

/// Seals one chunk (its data must fit in [`CHUNK_DATA`]).
pub fn seal_chunk(key: &SealKey, mailbox: &SendCapability, chunk: &Chunk, rng: &mut impl CryptoRngCore) -> Envelope {
    let mut w = Writer::with_capacity(CHUNK_HEADER + CHUNK_DATA);
    let n = chunk.data.len().min(CHUNK_DATA);
    w.u8(CHUNK_VERSION)
        .u8(chunk.kind.to_u8())
        .put(&chunk.message_id)
        .u16(chunk.index)
        .u16(chunk.count)
        .u32(chunk.total_len)
        .u16(n as u16)
        .put(&chunk.data[..n]);
    let plain = w.into_vec();
    let mut nonce = [0u8; NONCE_LEN];
    rng.fill_bytes(&mut nonce);
    // nonce | chunk, zero-padded to CHUNK_SIZE and sealed in place | tag
    let mut bytes = Box::new([0u8; ENVELOPE_SIZE]);
    let (head, rest) = bytes.split_at_mut(NONCE_LEN);
    head.copy_from_slice(&nonce);
    let (body, tag_out) = rest.split_at_mut(CHUNK_SIZE);
    body[..plain.len()].copy_from_slice(&plain);
    // Sealing fails only past 2^38 bytes; were it to fail anyway, the envelope is
    // all zeros, which no one can open.
    match aead::xseal_detached(&key.0, &nonce, &aad(mailbox), body) {
        Ok(tag) => tag_out.copy_from_slice(&tag),
        Err(_) => bytes.fill(0),
    }
    Envelope(bytes)
}

/// Opens an envelope that arrived in `mailbox` (attacker input).
pub fn open_envelope(key: &SealKey, mailbox: &SendCapability, env: &Envelope) -> Result<Chunk, EnvelopeError> {
    let (nonce, sealed) = env.0.split_at(NONCE_LEN);
    let nonce: &[u8; NONCE_LEN] = nonce.try_into().map_err(|_| EnvelopeError::Unauthentic)?;
    let mut buf = sealed.to_vec();
    let plain = aead::xopen_in_place(&key.0, nonce, &aad(mailbox), &mut buf).map_err(|_| EnvelopeError::Unauthentic)?;
    decode_chunk(plain)
}

/// Parses a decrypted chunk.
pub fn decode_chunk(plain: &[u8]) -> Result<Chunk, EnvelopeError> {
    let mut r = Reader::new(plain);
    if r.u8()? != CHUNK_VERSION {
        return Err(DecodeError::Invalid("envelope version").into());
    }
    let kind = PayloadKind::from_u8(r.u8()?)?;
    let message_id = r.array()?;
    let index = r.u16()?;
    let count = r.u16()?;
    let total_len = r.u32()?;
    let data_len = r.u16()? as usize;
    if data_len > CHUNK_DATA {
        return Err(DecodeError::Invalid("chunk length").into());
    }
    let data = r.take(data_len)?.to_vec();
    if !r.take_zero_padding() {
        return Err(DecodeError::Invalid("padding").into());
    }
    let expected_count = (total_len as usize).div_ceil(CHUNK_DATA).max(1);
    if count == 0 || index >= count || total_len as usize > MAX_PAYLOAD || expected_count != count as usize {
        return Err(EnvelopeError::Inconsistent);
    }
    let expected_len = if index + 1 == count {
        total_len as usize - index as usize * CHUNK_DATA
    } else {
        CHUNK_DATA
    };
    if data.len() != expected_len {
        return Err(EnvelopeError::Inconsistent);
    }
    Ok(Chunk {
        kind,
        message_id,
        index,
        count,
        total_len,
        data,
    })
}

#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
struct Partial {
    kind: Option<PayloadKind>,
    count: u16,
    total_len: u32,
    chunks: BTreeMap<u16, Vec<u8>>,
}

/// A payload put back together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reassembled {
    /// Its kind.
    pub kind: PayloadKind,
    /// The id shared by its chunks.
    pub message_id: [u8; 16],
    /// The payload.
    pub payload: Vec<u8>,
}

/// Collects chunks until each payload is whole. Serializable so a client can
/// keep partial payloads across runs.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Reassembler {
    partials: BTreeMap<[u8; 16], Partial>,
    /// Bytes held in `partials` (worked out again after a load; not stored).
    #[serde(skip)]
    held: Option<usize>,
}

/// Most payloads held half-assembled at once; beyond it the one with the
/// smallest message id is dropped (ids are random, so it is a random one).
pub const MAX_PARTIALS: usize = 64;

impl Reassembler {
    /// Adds a chunk; returns the payload when its last chunk arrives.
    pub fn push(&mut self, chunk: Chunk) -> Result<Option<Reassembled>, EnvelopeError> {
        self.push_within(chunk, MAX_PAYLOAD)
    }

    /// [`Reassembler::push`], holding at most `max_bytes` of half-assembled payloads: a
    /// payload announced as larger is refused ([`EnvelopeError::TooLarge`]), and to make
    /// room others are dropped as [`MAX_PARTIALS`] drops them (a random one first).
    pub fn push_within(&mut self, chunk: Chunk, max_bytes: usize) -> Result<Option<Reassembled>, EnvelopeError> {
        if chunk.total_len as usize > max_bytes {
            return Err(EnvelopeError::TooLarge(chunk.total_len as usize));
        }
        if chunk.count == 1 {
            return Ok(Some(Reassembled {
                kind: chunk.kind,
                message_id: chunk.message_id,
                payload: chunk.data,
            }));
        }
        let mut held = self.held();
        while held + chunk.data.len() > max_bytes {
            let Some(victim) = self.partials.keys().find(|id| **id != chunk.message_id).copied() else {
                break;
            };
            held -= self.partials.remove(&victim).map_or(0, |p| p.bytes());
        }
        if !self.partials.contains_key(&chunk.message_id) && self.partials.len() >= MAX_PARTIALS {
            if let Some(first) = self.partials.keys().next().copied() {
                held -= self.partials.remove(&first).map_or(0, |p| p.bytes());
            }
        }
        self.held = Some(held);
        let p = self.partials.entry(chunk.message_id).or_default();
        match p.kind {
            None => {
                p.kind = Some(chunk.kind);
                p.count = chunk.count;
                p.total_len = chunk.total_len;
            }
            Some(k) if k != chunk.kind || p.count != chunk.count || p.total_len != chunk.total_len => {
                return Err(EnvelopeError::Inconsistent);
            }
            Some(_) => {}
        }
        let added = chunk.data.len();
        let replaced = p.chunks.insert(chunk.index, chunk.data).map_or(0, |d| d.len());
        self.held = Some(held + added - replaced);
        if p.chunks.len() < p.count as usize {
            return Ok(None);
        }
        let Some(p) = self.partials.remove(&chunk.message_id) else {
            return Ok(None);
        };
        self.held = Some(self.held().saturating_sub(p.bytes()));
        let mut payload = Vec::with_capacity(p.total_len as usize);
        for (_, d) in p.chunks {
            payload.extend_from_slice(&d);
        }
        Ok(Some(Reassembled {
            kind: chunk.kind,
            message_id: chunk.message_id,
            payload,
        }))
    }

    /// Takes every chunk held, emptying the assembler (a client moving half-assembled
    /// payloads to another store).
    pub fn drain(&mut self) -> Vec<Chunk> {
        self.held = Some(0);
        let mut out = Vec::new();
        for (message_id, p) in std::mem::take(&mut self.partials) {
            let Some(kind) = p.kind else {
                continue;
            };
            out.extend(p.chunks.into_iter().map(|(index, data)| Chunk {
                kind,
                message_id,
                index,
                count: p.count,
                total_len: p.total_len,
                data,
            }));
        }
        out
    }

    /// Number of payloads waiting for more chunks.
    pub fn pending(&self) -> usize {
        self.partials.len()
    }

    /// Bytes of the payloads waiting for more chunks.
    pub fn held(&mut self) -> usize {
        *self
            .held
            .get_or_insert_with(|| self.partials.values().map(Partial::bytes).sum())
    }
}

impl Partial {
    fn bytes(&self) -> usize {
        self.chunks.values().map(Vec::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand_core::OsRng;

    fn key() -> (SealKey, SendCapability) {
        (SealKey([3; 32]), SendCapability([4; 32]))
    }

    proptest! {
        #[test]
        fn payloads_round_trip_and_every_envelope_has_one_size(
            payload in proptest::collection::vec(any::<u8>(), 0..20_000),
        ) {
            let (k, m) = key();
            let envs = seal_payload(&k, &m, PayloadKind::Mls, &payload, &mut OsRng)
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            let mut r = Reassembler::default();
            let mut out = None;
            // Deliver in reverse to exercise out-of-order reassembly.
            for e in envs.iter().rev() {
                prop_assert_eq!(e.as_bytes().len(), ENVELOPE_SIZE);
                let c = open_envelope(&k, &m, e).map_err(|e| TestCaseError::fail(e.to_string()))?;
                if let Some(done) = r.push(c).map_err(|e| TestCaseError::fail(e.to_string()))? {
                    out = Some(done.payload);
                }
            }
            prop_assert_eq!(out, Some(payload));
            prop_assert_eq!(r.pending(), 0);
        }

        #[test]
        fn arbitrary_plaintext_chunks_never_panic(b in proptest::collection::vec(any::<u8>(), 0..CHUNK_SIZE + 8)) {
            let _ = decode_chunk(&b);
        }
    }

    /// Half-assembled payloads never hold more than the bound, however many chunks of
    /// never-finished payloads arrive; a payload announced larger is refused; one that
    /// arrives whole in the meantime still comes out.
    #[test]
    #[allow(clippy::panic)]
    fn half_assembled_payloads_stay_within_their_bound() {
        let (k, m) = key();
        let bound = 64 * 1024;
        let mut r = Reassembler::default();
        for i in 0..200u8 {
            let envs = seal_payload(&k, &m, PayloadKind::Mls, &vec![i; 40_000], &mut OsRng).unwrap_or_default();
            for e in envs.iter().take(envs.len() - 1) {
                let c = open_envelope(&k, &m, e).unwrap_or_else(|e| panic!("{e}"));
                assert_eq!(r.push_within(c, bound), Ok(None));
                assert!(r.held() <= bound, "{}", r.held());
            }
        }
        let big = seal_payload(&k, &m, PayloadKind::Mls, &vec![1; bound + 1], &mut OsRng).unwrap_or_default();
        let c = open_envelope(&k, &m, &big[0]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r.push_within(c, bound), Err(EnvelopeError::TooLarge(bound + 1)));
        let whole = seal_payload(&k, &m, PayloadKind::Mls, &[9; 30_000], &mut OsRng).unwrap_or_default();
        let mut out = None;
        for e in &whole {
            let c = open_envelope(&k, &m, e).unwrap_or_else(|e| panic!("{e}"));
            out = r.push_within(c, bound).unwrap_or_else(|e| panic!("{e}")).or(out);
        }
        assert_eq!(out.map(|o| o.payload), Some(vec![9; 30_000]));
        assert!(r.held() <= bound);
    }

    #[test]
    fn a_two_byte_and_a_three_thousand_byte_payload_look_the_same() {
        let (k, m) = key();
        let a = seal_payload(&k, &m, PayloadKind::Mls, b"hi", &mut OsRng).unwrap_or_default();
        let b = seal_payload(&k, &m, PayloadKind::Mls, &[7u8; 3000], &mut OsRng).unwrap_or_default();
        assert_eq!(a.len(), 1);
        assert_eq!(b.len(), 1);
        assert_eq!(a[0].as_bytes().len(), b[0].as_bytes().len());
    }

    #[test]
    fn a_flipped_bit_or_another_mailbox_is_rejected() {
        let (k, m) = key();
        let e = seal_payload(&k, &m, PayloadKind::Mls, b"x", &mut OsRng)
            .unwrap_or_default()
            .remove(0);
        let mut bytes = e.as_bytes().to_vec();
        bytes[100] ^= 1;
        let flipped = Envelope::from_bytes(&bytes).unwrap_or_else(|_| e.clone());
        assert_eq!(open_envelope(&k, &m, &flipped), Err(EnvelopeError::Unauthentic));
        assert_eq!(
            open_envelope(&k, &SendCapability([5; 32]), &e),
            Err(EnvelopeError::Unauthentic)
        );
        assert_eq!(
            open_envelope(&SealKey([9; 32]), &m, &e),
            Err(EnvelopeError::Unauthentic)
        );
    }

    #[test]
    fn every_payload_kind_has_its_own_code() {
        let kinds = [
            PayloadKind::Mls,
            PayloadKind::Welcome,
            PayloadKind::JoinRequest,
            PayloadKind::Letter,
            PayloadKind::Reply,
            PayloadKind::Code,
        ];
        for (i, k) in kinds.into_iter().enumerate() {
            assert_eq!(k.to_u8() as usize, i + 1);
            assert_eq!(PayloadKind::from_u8(k.to_u8()), Ok(k));
        }
        assert!(PayloadKind::from_u8(0).is_err());
        assert!(PayloadKind::from_u8(7).is_err());
    }

    #[test]
    fn oversize_payload_is_refused() {
        let (k, m) = key();
        let big = vec![0u8; MAX_PAYLOAD + 1];
        assert_eq!(
            seal_payload(&k, &m, PayloadKind::Mls, &big, &mut OsRng).map(|v| v.len()),
            Err(EnvelopeError::TooLarge(MAX_PAYLOAD + 1))
        );
    }
}

//! Envelopes as a client opens them, chunks as it parses them, and the
//! reassembler that puts payloads back together.
//!
//! The input's first byte picks the part:
//! - 0: the rest, cut or zero-padded to [`ENVELOPE_SIZE`], is an envelope
//!   from the network: [`open_envelope`] refuses it (mutations cannot carry
//!   a valid tag) or, for a real envelope, returns a well-formed chunk.
//! - 1: the rest is a decrypted chunk: it is sealed here with the fixed key
//!   and opened with [`open_envelope`], which must agree with
//!   [`decode_chunk`]; a chunk that decodes survives
//!   [`seal_chunk`] → [`open_envelope`] unchanged.
//! - 2: the rest is a list of chunk descriptions; each is laid out as a
//!   chunk, parsed with [`decode_chunk`] and, if accepted, pushed into one
//!   [`Reassembler`]. Asserts: it never holds more than [`MAX_PARTIALS`]
//!   payloads, and every payload it returns is `total_len` bytes long and
//!   made of the chunks last pushed for its id.
#![no_main]

use std::collections::HashMap;

use backchannel_core::codec::{Reader, Writer};
use backchannel_core::envelope::{
    decode_chunk, open_envelope, seal_chunk, Envelope, EnvelopeError, Reassembler, CHUNK_DATA, CHUNK_SIZE,
    ENVELOPE_SIZE, MAX_PARTIALS, MAX_PAYLOAD,
};
use backchannel_fuzz::{seal_key, send_capability};
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use libfuzzer_sys::fuzz_target;
use rand_core::OsRng;
use sha2::{Digest, Sha256};

/// Seals raw chunk bytes exactly as `seal_chunk` does (docs/protocol.md),
/// so that bytes the real encoder would never produce reach `open_envelope`.
fn seal_raw(plain: &[u8]) -> Envelope {
    let mut aad = b"backchannel/v1/envelope".to_vec();
    aad.extend_from_slice(&Sha256::digest(send_capability().0));
    let nonce = [0x11u8; 24];
    let ct = XChaCha20Poly1305::new((&seal_key().0).into())
        .encrypt(XNonce::from_slice(&nonce), Payload { msg: plain, aad: &aad })
        .unwrap();
    let mut bytes = nonce.to_vec();
    bytes.extend_from_slice(&ct);
    Envelope::from_bytes(&bytes).unwrap()
}

fn from_network(data: &[u8]) {
    let mut b = data[..data.len().min(ENVELOPE_SIZE)].to_vec();
    b.resize(ENVELOPE_SIZE, 0);
    let env = Envelope::from_bytes(&b).unwrap();
    // Only a real envelope (a seed) opens; whatever opens is a valid chunk.
    if let Ok(c) = open_envelope(&seal_key(), &send_capability(), &env) {
        assert!(c.data.len() <= CHUNK_DATA && (c.total_len as usize) <= MAX_PAYLOAD && c.index < c.count);
    }
}

fn chunk(data: &[u8]) {
    let direct = decode_chunk(data);
    if data.len() <= CHUNK_SIZE {
        let mut plain = data.to_vec();
        plain.resize(CHUNK_SIZE, 0);
        let opened = open_envelope(&seal_key(), &send_capability(), &seal_raw(&plain));
        assert_eq!(opened, decode_chunk(&plain), "open_envelope and decode_chunk disagree");
        if direct.is_ok() {
            assert_eq!(opened, direct, "zero padding changed a chunk");
        }
    }
    if let Ok(c) = direct {
        assert!(c.data.len() <= CHUNK_DATA && (c.total_len as usize) <= MAX_PAYLOAD && c.index < c.count);
        let env = seal_chunk(&seal_key(), &send_capability(), &c, &mut OsRng);
        assert_eq!(open_envelope(&seal_key(), &send_capability(), &env), Ok(c));
    }
}

/// One chunk description: 10 bytes.
fn describe(r: &mut Reader<'_>) -> Option<Vec<u8>> {
    let id = r.u8().ok()? % 80;
    let kind = r.u8().ok()?;
    let index = r.u16().ok()? % 10;
    let count = r.u16().ok()? % 9;
    let last_len = r.u16().ok()?;
    let fill = r.u8().ok()?;
    let quirk = r.u8().ok()?;
    let last_len = (last_len as usize % CHUNK_DATA) + 1;
    let mut total_len = (count.max(1) as usize - 1) * CHUNK_DATA + last_len;
    if count == 0 {
        total_len = last_len;
    }
    let mut data_len = if index + 1 == count { last_len } else { CHUNK_DATA };
    // Now and then a field that disagrees with the rest.
    match quirk {
        0 => total_len = total_len.wrapping_add(CHUNK_DATA),
        1 => data_len = data_len.saturating_sub(1),
        2 => total_len = u32::MAX as usize,
        _ => {}
    }
    let mut w = Writer::with_capacity(CHUNK_SIZE);
    w.u8(1)
        .u8(kind % 4)
        .put(&[id; 16])
        .u16(index)
        .u16(count)
        .u32(total_len as u32)
        .u16(data_len.min(u16::MAX as usize) as u16);
    let mut plain = w.into_vec();
    plain.extend(std::iter::repeat_n(fill, data_len.min(CHUNK_DATA)));
    plain.resize(CHUNK_SIZE, 0);
    Some(plain)
}

fn reassemble(data: &[u8]) {
    let mut r = Reader::new(data);
    let mut asm = Reassembler::default();
    let mut last: HashMap<([u8; 16], u16), Vec<u8>> = HashMap::new();
    while let Some(plain) = describe(&mut r) {
        let Ok(c) = decode_chunk(&plain) else {
            continue;
        };
        let (id, index, count, total_len) = (c.message_id, c.index, c.count, c.total_len);
        if count == 1 {
            // A whole payload in one chunk comes straight back and leaves any
            // partial payload with the same id alone.
            let data = c.data.clone();
            let done = asm.push(c).map(|d| d.map(|d| d.payload));
            assert_eq!(done, Ok(Some(data)), "a one-chunk payload did not come straight back");
            continue;
        }
        let before = last.insert((id, index), c.data.clone());
        match asm.push(c) {
            Ok(Some(done)) => {
                assert_eq!(done.message_id, id);
                assert_eq!(
                    done.payload.len(),
                    total_len as usize,
                    "a payload is not total_len long"
                );
                for (i, piece) in done.payload.chunks(CHUNK_DATA).enumerate() {
                    assert!(i < count as usize);
                    assert_eq!(
                        Some(piece),
                        last.get(&(id, i as u16)).map(|v| &v[..]),
                        "a payload holds a stale chunk"
                    );
                }
            }
            Ok(None) => {}
            Err(e) => {
                assert_eq!(e, EnvelopeError::Inconsistent);
                // Refused: what the reassembler holds for this index is unchanged.
                match before {
                    Some(b) => last.insert((id, index), b),
                    None => last.remove(&(id, index)),
                };
            }
        }
        assert!(asm.pending() <= MAX_PARTIALS, "{} partial payloads held", asm.pending());
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 3 {
        0 => from_network(rest),
        1 => chunk(rest),
        _ => reassemble(rest),
    }
});

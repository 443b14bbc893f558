//! Courier bundles, as `backchannel import` opens them (whoever hands over
//! the file), with two fixed mailboxes as the importer's.
//!
//! The input's first byte picks the part:
//! - 0: the rest is a bundle file for [`open_bundle`]. Asserts: it never
//!   panics; a file over [`MAX_FILE_SIZE`] is `TooLarge`; a bundle that
//!   opens is whole blocks, names one of the two mailboxes, and survives
//!   [`seal_bundle`] → [`open_bundle`] unchanged. (Mutations of the seeds
//!   cannot carry valid tags, so this part mostly reaches the refusals.)
//! - 1: the rest is a slot plaintext (48 bytes, zero-padded) and a body
//!   plaintext: the target seals them itself, as docs/protocol.md lays out,
//!   with a fixed salt, in the first of four slots, for the first mailbox,
//!   and zero-pads the body to whole blocks; so mutations reach the slot's
//!   fields and the body's structure behind the tags. Asserts: the slot
//!   always opens (never `NotForYou`); a slot version other than 1 is
//!   `UnknownVersion`; any other refusal is `Damaged`; what opens came from
//!   a well-formed slot (version 1, 4 slots, zero padding) and re-encodes,
//!   zero-padded, to exactly the body plaintext given (one encoding).
#![no_main]

use backchannel_core::courier::{
    open_bundle, seal_bundle, Bundle, CourierError, BLOCK_SIZE, MAX_ENTRIES, MAX_FILE_SIZE, VERSION,
};
use backchannel_core::mailbox::{MailboxAddress, SealKey, SendCapability};
use backchannel_fuzz::{relay, seal_key, send_capability};
use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use hkdf::Hkdf;
use libfuzzer_sys::fuzz_target;
use rand_core::OsRng;
use sha2::{Digest, Sha256};

const TAG: usize = 16;
const BLOCK_PLAIN: usize = BLOCK_SIZE - TAG;
const SLOT_PLAIN: usize = 48;
const SLOT_SIZE: usize = SLOT_PLAIN + TAG;
const SALT: [u8; 32] = [0x5a; 32];

/// The importer's mailboxes; `seeds.rs` seals its seeds for these.
fn mailboxes() -> [MailboxAddress; 2] {
    [
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
    ]
}

fn hkdf32(salt: Option<&[u8]>, ikm: &[u8], info: &[u8]) -> [u8; 32] {
    let mut okm = [0u8; 32];
    Hkdf::<Sha256>::new(salt, ikm).expand(info, &mut okm).unwrap();
    okm
}

fn nonce(tail: &[u8]) -> XNonce {
    let mut n = [0u8; 24];
    n[24 - tail.len()..].copy_from_slice(tail);
    n.into()
}

/// A one-head-block file: the salt, `slot` sealed for `to` in slot 0, zeros
/// for the other three slots and the padding; then `body` in whole blocks.
fn seal_by_the_spec(to: &MailboxAddress, slot: &[u8; SLOT_PLAIN], body: &[u8]) -> Vec<u8> {
    let blocks = body.len().div_ceil(BLOCK_PLAIN).max(1);
    let mut file = vec![0u8; (1 + blocks) * BLOCK_SIZE];
    file[..32].copy_from_slice(&SALT);
    let slot_key = hkdf32(Some(&SALT), &to.seal.0, b"backchannel/v1/courier-slot");
    let aad = [&b"backchannel/v1/courier-slot"[..], &SALT, &Sha256::digest(to.send.0)].concat();
    let mut s = *slot;
    let tag = XChaCha20Poly1305::new((&slot_key).into())
        .encrypt_in_place_detached(&nonce(&0u32.to_be_bytes()), &aad, &mut s)
        .unwrap();
    file[32..32 + SLOT_PLAIN].copy_from_slice(&s);
    file[32 + SLOT_PLAIN..32 + SLOT_SIZE].copy_from_slice(&tag);
    let hash: [u8; 32] = Sha256::new()
        .chain_update(b"backchannel/v1/courier-header")
        .chain_update(&file[..BLOCK_SIZE])
        .finalize()
        .into();
    let body_key = hkdf32(None, &slot[5..37], b"backchannel/v1/courier-body");
    let cipher = XChaCha20Poly1305::new((&body_key).into());
    for (j, block) in file[BLOCK_SIZE..].chunks_exact_mut(BLOCK_SIZE).enumerate() {
        let b = (1 + j) as u64;
        let (plain, tag_out) = block.split_at_mut(BLOCK_PLAIN);
        let given = body.get(j * BLOCK_PLAIN..).unwrap_or_default();
        let n = given.len().min(BLOCK_PLAIN);
        plain[..n].copy_from_slice(&given[..n]);
        let aad = [
            &b"backchannel/v1/courier-block"[..],
            &hash,
            &b.to_be_bytes(),
            &[u8::from(j + 1 == blocks)],
        ]
        .concat();
        let tag = cipher
            .encrypt_in_place_detached(&nonce(&b.to_be_bytes()), &aad, plain)
            .unwrap();
        tag_out.copy_from_slice(&tag);
    }
    file
}

/// The body plaintext of `b`, as docs/protocol.md lays it out.
fn body_of(b: &Bundle) -> Vec<u8> {
    let mut p = vec![VERSION];
    p.extend_from_slice(&b.id);
    p.extend_from_slice(&b.created_at.to_be_bytes());
    p.extend_from_slice(&(b.entries.len() as u32).to_be_bytes());
    for e in &b.entries {
        p.extend_from_slice(&e.to);
        p.extend_from_slice(e.envelope.as_bytes());
    }
    p
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let mine = mailboxes();
    match mode {
        0 => match open_bundle(rest, &mine) {
            Ok((bundle, which)) => {
                assert!(which < mine.len());
                assert_eq!(rest.len() % BLOCK_SIZE, 0, "a bundle of partial blocks opened");
                assert!(bundle.entries.len() <= MAX_ENTRIES);
                let again = seal_bundle(&bundle, &mine[which..=which], &mut OsRng).unwrap();
                assert_eq!(
                    open_bundle(&again, &mine),
                    Ok((bundle, which)),
                    "a bundle does not survive sealing again"
                );
            }
            Err(e) => {
                assert!(rest.len() <= MAX_FILE_SIZE || e == CourierError::TooLarge);
            }
        },
        1 => {
            let mut slot = [0u8; SLOT_PLAIN];
            let n = rest.len().min(SLOT_PLAIN);
            slot[..n].copy_from_slice(&rest[..n]);
            let body = &rest[n..];
            let file = seal_by_the_spec(&mine[0], &slot, body);
            match open_bundle(&file, &mine) {
                Ok((bundle, which)) => {
                    assert_eq!(which, 0);
                    assert_eq!(slot[..5], [VERSION, 0, 0, 0, 4], "a bad slot header was accepted");
                    assert_eq!(slot[37..], [0; 11], "slot padding was not checked");
                    let mut want = body.to_vec();
                    want.resize(want.len().div_ceil(BLOCK_PLAIN).max(1) * BLOCK_PLAIN, 0);
                    let mut got = body_of(&bundle);
                    got.resize(want.len(), 0);
                    assert!(got == want, "a body opened that does not re-encode to itself");
                }
                Err(CourierError::UnknownVersion) => assert_ne!(slot[0], VERSION),
                Err(e) => {
                    assert_eq!(e, CourierError::Damaged, "a real slot gave {e:?}");
                    assert_eq!(slot[0], VERSION, "slot version {} is not UnknownVersion", slot[0]);
                }
            }
        }
        _ => {}
    }
});

//! Drop boxes: addresses and receipts as `backchannel` parses them from a
//! user (attacker input), letters as the owner opens them and replies as
//! the source opens them (attacker input from anyone holding the address).
//!
//! The input's first byte picks the part:
//! - 0: the rest, as text (UTF-8, lossy), is given to
//!   [`DropAddress::from_text`] and [`Receipt::from_text`], bare and after
//!   each prefix. Asserts: what parses prints to a line that parses to the
//!   same thing.
//! - 1 / 2: the rest is an address / receipt *body* that this target
//!   checksums and base32-encodes itself, so mutations reach the structure
//!   behind the checksum. Asserts: a line that parses prints back to itself;
//!   a line that fails is `Damaged` or `UnknownVersion`.
//! - 3: the rest is a sealed letter for the fixed owner key and drop mailbox:
//!   [`open_letter`] refuses it (mutations cannot carry a valid tag) or
//!   returns a letter that survives [`seal_letter`] → [`open_letter`].
//! - 4: the rest is a letter *plaintext*, sealed here with HPKE exactly as
//!   docs/protocol.md says, so bytes the real encoder would never produce
//!   reach the letter decoder. Asserts: a sealed plaintext opens only if it
//!   is the canonical encoding of the letter it opens to (checked by
//!   sealing that letter and opening the HPKE layer here).
//! - 5: the rest is a sealed reply for the fixed reply key: [`open_reply`]
//!   refuses it or returns text that survives [`seal_reply`] →
//!   [`open_reply`].
//! - 6: the rest is a reply plaintext sealed here with XChaCha20-Poly1305:
//!   it opens only if it is the canonical encoding of the text it opens to.
//! - 7: the rest is the bundle a relay hands over for the fixed address's short form
//!   ([`ShortDropAddress::check`]): taken only if it is exactly that address's bundle.
//!
//! Text and bodies also go through [`DropLine::from_text`] (the short form, version 2):
//! a short address that parses prints back to itself.
//!
//! The fixed keys are the ones `seeds.rs` seals its seeds with.
#![no_main]

use std::sync::OnceLock;

use backchannel_core::codec::Writer;
use backchannel_core::drop::{
    open_letter, open_reply, seal_letter, seal_reply, DropAddress, DropError, DropKeys, DropLine, Receipt, ReplyKey,
    ShortDropAddress, DEFAULT_POW_BITS, DROP_PREFIX, PAD, RECEIPT_PREFIX,
};
use backchannel_core::mailbox::MailboxAddress;
use backchannel_fuzz::{relay, seal_key, send_capability};
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use hpke_rs::{Hpke, HpkePrivateKey, HpkePublicKey, Mode};
use hpke_rs_crypto::types::{AeadAlgorithm, KdfAlgorithm, KemAlgorithm};
use hpke_rs_libcrux::HpkeLibcrux;
use libfuzzer_sys::fuzz_target;
use rand_core::OsRng;
use sha2::{Digest, Sha256};

/// Seed of the fixed owner key (also in `seeds.rs`).
const OWNER_SEED: [u8; 32] = [0xd0; 32];
/// The fixed reply key (also in `seeds.rs`).
const REPLY_KEY: [u8; 32] = [0x7e; 32];
const LETTER_INFO: &[u8] = b"backchannel/v1/drop-letter";
const REPLY_AAD: &[u8] = b"backchannel/v1/drop-reply";

struct Fixed {
    keys: DropKeys,
    secret: HpkePrivateKey,
    address: DropAddress,
}

fn fixed() -> &'static Fixed {
    static F: OnceLock<Fixed> = OnceLock::new();
    F.get_or_init(|| {
        let keys = DropKeys::from_seed(OWNER_SEED).unwrap();
        let (secret, public) = hpke().derive_key_pair(&OWNER_SEED).unwrap().into_keys();
        assert_eq!(public.as_slice(), keys.public(), "DropKeys is not HPKE's DeriveKeyPair");
        let address = DropAddress {
            mailbox: MailboxAddress {
                relay: relay(),
                send: send_capability(),
                seal: seal_key(),
            },
            owner_key: keys.public().to_vec(),
            pow_bits: DEFAULT_POW_BITS,
        };
        Fixed { keys, secret, address }
    })
}

fn hpke() -> Hpke<HpkeLibcrux> {
    Hpke::new(
        Mode::Base,
        KemAlgorithm::XWingDraft06,
        KdfAlgorithm::HkdfSha256,
        AeadAlgorithm::ChaCha20Poly1305,
    )
}

fn digest() -> [u8; 32] {
    send_capability().digest()
}

fn line(prefix: &str, context: &[u8], body: &[u8]) -> String {
    let d = Sha256::new().chain_update(context).chain_update(body).finalize();
    let mut b = body.to_vec();
    b.extend_from_slice(&d[..4]);
    format!(
        "{prefix}{}",
        data_encoding::BASE32_NOPAD.encode(&b).to_ascii_lowercase()
    )
}

fn address_text(s: &str) -> Result<DropAddress, DropError> {
    // Either form, as `drop send` reads it: a short one prints back to itself.
    if let Ok(DropLine::Short(short)) = DropLine::from_text(s) {
        let printed = short.to_text();
        assert_eq!(
            DropLine::from_text(&printed),
            Ok(DropLine::Short(short)),
            "a short address does not round-trip"
        );
    }
    let parsed = DropAddress::from_text(s);
    if let Ok(a) = &parsed {
        let printed = a.to_text();
        assert!(printed.starts_with(DROP_PREFIX) && !printed.contains(char::is_whitespace));
        assert_eq!(
            DropAddress::from_text(&printed).as_ref(),
            Ok(a),
            "an address does not round-trip"
        );
    }
    parsed
}

fn receipt_text(s: &str) -> Result<Receipt, DropError> {
    let parsed = Receipt::from_text(s);
    if let Ok(r) = &parsed {
        let printed = r.to_text();
        assert!(printed.starts_with(RECEIPT_PREFIX) && !printed.contains(char::is_whitespace));
        let back = Receipt::from_text(&printed).expect("a printed receipt does not parse");
        assert_eq!(back.to_text(), printed, "a receipt does not round-trip");
    }
    parsed
}

fn checksummed(printed: Result<String, DropError>, line: &str) {
    match printed {
        Ok(p) => assert_eq!(p, line, "a line prints differently from the line it came from"),
        Err(e) => assert!(
            matches!(e, DropError::Damaged | DropError::UnknownVersion),
            "a checksummed body failed with {e:?}"
        ),
    }
}

/// The HPKE plaintext of a sealed letter for the fixed key.
fn letter_plaintext(sealed: &[u8]) -> Vec<u8> {
    let (enc, ct) = sealed[1..].split_at(1120);
    hpke()
        .open(enc, &fixed().secret, LETTER_INFO, &digest(), ct, None, None, None)
        .expect("a letter sealed here does not open")
}

fn reply_plaintext(text: &str) -> Vec<u8> {
    let mut w = Writer::new();
    w.bytes32(text.as_bytes());
    let mut v = w.into_vec();
    v.resize(v.len().div_ceil(PAD).max(1) * PAD, 0);
    v
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let f = fixed();
    match mode {
        1 => {
            let l = line(DROP_PREFIX, b"backchannel/v1/drop", rest);
            checksummed(address_text(&l).map(|a| a.to_text()), &l);
        }
        2 => {
            let l = line(RECEIPT_PREFIX, b"backchannel/v1/receipt", rest);
            checksummed(receipt_text(&l).map(|r| r.to_text()), &l);
        }
        3 => {
            if let Ok(letter) = open_letter(&f.keys, &digest(), rest) {
                let again = seal_letter(&f.address, &letter, &mut OsRng).expect("an opened letter does not re-seal");
                assert_eq!(open_letter(&f.keys, &digest(), &again).as_ref(), Ok(&letter));
            }
        }
        4 => {
            let pk = HpkePublicKey::new(f.keys.public().to_vec());
            let (enc, ct) = hpke()
                .seal(&pk, LETTER_INFO, &digest(), rest, None, None, None)
                .expect("HPKE seal to the fixed key failed");
            let mut sealed = vec![1u8];
            sealed.extend_from_slice(&enc);
            sealed.extend_from_slice(&ct);
            match open_letter(&f.keys, &digest(), &sealed) {
                Ok(letter) => {
                    let canonical =
                        seal_letter(&f.address, &letter, &mut OsRng).expect("an opened letter does not re-seal");
                    assert_eq!(
                        letter_plaintext(&canonical),
                        rest,
                        "a non-canonical letter was accepted"
                    );
                }
                Err(e) => assert!(
                    !matches!(e, DropError::Unauthentic | DropError::UnknownVersion),
                    "a letter sealed to the right key failed with {e:?}"
                ),
            }
        }
        5 => {
            let key = ReplyKey(REPLY_KEY);
            if let Ok(text) = open_reply(&key, rest) {
                assert_eq!(open_reply(&key, &seal_reply(&key, &text, &mut OsRng)), Ok(text));
            }
        }
        6 => {
            let nonce = [0x11u8; 24];
            let ct = XChaCha20Poly1305::new((&REPLY_KEY).into())
                .encrypt(
                    XNonce::from_slice(&nonce),
                    Payload {
                        msg: rest,
                        aad: REPLY_AAD,
                    },
                )
                .unwrap();
            let mut sealed = vec![1u8];
            sealed.extend_from_slice(&nonce);
            sealed.extend_from_slice(&ct);
            match open_reply(&ReplyKey(REPLY_KEY), &sealed) {
                Ok(text) => assert_eq!(reply_plaintext(&text), rest, "a non-canonical reply was accepted"),
                Err(e) => assert!(
                    !matches!(e, DropError::Unauthentic | DropError::UnknownVersion),
                    "a reply sealed with the right key failed with {e:?}"
                ),
            }
        }
        7 => {
            // What a relay hands over for the fixed address's short form: taken only if it
            // is that address's bundle, byte for byte.
            let short = ShortDropAddress::of(&f.address);
            match short.check(rest) {
                Ok(a) => {
                    assert_eq!(a, f.address, "a bundle checked out as another address");
                    assert_eq!(rest, f.address.bundle().as_slice(), "a bundle not the address's was taken");
                }
                Err(e) => assert!(
                    matches!(e, DropError::BundleMismatch | DropError::Damaged),
                    "a handed-over bundle failed with {e:?}"
                ),
            }
        }
        _ => {
            let s = String::from_utf8_lossy(rest);
            let _ = address_text(&s);
            let _ = address_text(&format!("{DROP_PREFIX}{s}"));
            let _ = receipt_text(&s);
            let _ = receipt_text(&format!("{RECEIPT_PREFIX}{s}"));
        }
    }
});

//! ChaCha20-Poly1305 (RFC 8439) and XChaCha20-Poly1305 (draft-irtf-cfrg-xchacha-03) for
//! the paths every message takes: the MLS messages' AEAD (`crypto_provider`), the
//! envelopes (`envelope`) and the relay's records of version 1 at rest.
//!
//! Both come from AWS-LC (`aws-lc-rs`), whose assembly seals and opens 100 bytes about 7
//! times as fast as RustCrypto's `chacha20poly1305` here and 4 KiB about twice as fast
//! (BENCHMARKS.md, "Per-message cost"). AWS-LC keeps the key in a context it allocates and
//! wipes when it frees it. XChaCha20-Poly1305 is the draft's construction, nothing more:
//! the subkey is HChaCha20 (RustCrypto's `chacha20::hchacha`) of the key and the nonce's
//! first 16 bytes, and ChaCha20-Poly1305 runs under it with the nonce `0^4 || nonce[16..24]`.
//! The output is byte for byte RustCrypto's (tests below, with the RFC's and the draft's
//! vectors), so nothing sealed before changes.
//!
//! [`Cipher::Aes256Gcm`]: AES-256-GCM, also from AWS-LC, for the relay's sealed envelopes in its
//! body file (data directory format 5), each under a key of its own used once. With the
//! AES and carry-less multiply instructions every server processor has, it seals and
//! opens 4 KiB several times as fast as ChaCha20-Poly1305 (BENCHMARKS.md, "Cutting the
//! relay's CPU per envelope").

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, CHACHA20_POLY1305};
use chacha20::cipher::consts::U10;
use thiserror::Error;
use zeroize::{Zeroize, Zeroizing};

/// Key length in bytes.
pub const KEY_LEN: usize = 32;
/// ChaCha20-Poly1305's nonce length.
pub const NONCE_LEN: usize = 12;
/// XChaCha20-Poly1305's nonce length.
pub const XNONCE_LEN: usize = 24;
/// Tag length.
pub const TAG_LEN: usize = 16;

/// Sealing or opening failed: on opening, the bytes, the nonce, the associated data or
/// the key are not the ones sealed; on sealing, the input is too long for one nonce.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[error("authenticated encryption failed")]
pub struct AeadError;

fn key(key: &[u8; KEY_LEN]) -> Result<LessSafeKey, AeadError> {
    Cipher::ChaCha20Poly1305.key(key)
}

/// An AEAD with 32-byte keys, 12-byte nonces and 16-byte tags, on AWS-LC. A (key, nonce)
/// pair must never seal twice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cipher {
    /// ChaCha20-Poly1305 (RFC 8439).
    ChaCha20Poly1305,
    /// AES-256-GCM (NIST SP 800-38D).
    Aes256Gcm,
}

impl Cipher {
    fn key(self, key: &[u8; KEY_LEN]) -> Result<LessSafeKey, AeadError> {
        let algorithm = match self {
            Cipher::ChaCha20Poly1305 => &CHACHA20_POLY1305,
            Cipher::Aes256Gcm => &AES_256_GCM,
        };
        UnboundKey::new(algorithm, key)
            .map(LessSafeKey::new)
            .map_err(|_| AeadError)
    }

    /// Encrypts `in_out` in place and returns the tag.
    pub fn seal_detached(
        self,
        k: &[u8; KEY_LEN],
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        in_out: &mut [u8],
    ) -> Result<[u8; TAG_LEN], AeadError> {
        let tag = self
            .key(k)?
            .seal_in_place_separate_tag(Nonce::assume_unique_for_key(*nonce), Aad::from(aad), in_out)
            .map_err(|_| AeadError)?;
        tag.as_ref().try_into().map_err(|_| AeadError)
    }

    /// Decrypts `in_out` in place if `tag` authenticates it. On failure `in_out` holds
    /// bytes to throw away (neither the ciphertext nor a plaintext).
    pub fn open_detached(
        self,
        k: &[u8; KEY_LEN],
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        in_out: &mut [u8],
        tag: &[u8; TAG_LEN],
    ) -> Result<(), AeadError> {
        self.key(k)?
            .open_in_place_separate_tag(Nonce::assume_unique_for_key(*nonce), Aad::from(aad), tag, in_out)
            .map(|_| ())
            .map_err(|_| AeadError)
    }
}

/// Encrypts `in_out` in place under ChaCha20-Poly1305 and returns the tag.
pub fn seal_detached(
    k: &[u8; KEY_LEN],
    nonce: &[u8; NONCE_LEN],
    aad: &[u8],
    in_out: &mut [u8],
) -> Result<[u8; TAG_LEN], AeadError> {
    Cipher::ChaCha20Poly1305.seal_detached(k, nonce, aad, in_out)
}

/// Decrypts `in_out` in place under ChaCha20-Poly1305 if `tag` authenticates it. On
/// failure `in_out` holds bytes to throw away (neither the ciphertext nor a plaintext).
pub fn open_detached(
    k: &[u8; KEY_LEN],
    nonce: &[u8; NONCE_LEN],
    aad: &[u8],
    in_out: &mut [u8],
    tag: &[u8; TAG_LEN],
) -> Result<(), AeadError> {
    Cipher::ChaCha20Poly1305.open_detached(k, nonce, aad, in_out, tag)
}

/// ChaCha20-Poly1305: `plaintext` sealed, followed by its tag.
pub fn seal(k: &[u8; KEY_LEN], nonce: &[u8; NONCE_LEN], aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, AeadError> {
    let mut out = Vec::with_capacity(plaintext.len() + TAG_LEN);
    out.extend_from_slice(plaintext);
    let tag = seal_detached(k, nonce, aad, &mut out)?;
    out.extend_from_slice(&tag);
    Ok(out)
}

/// ChaCha20-Poly1305: the plaintext of `sealed` (ciphertext followed by its tag).
pub fn open(k: &[u8; KEY_LEN], nonce: &[u8; NONCE_LEN], aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, AeadError> {
    let mut out = sealed.to_vec();
    let plain_len = open_in_place(k, nonce, aad, &mut out)?.len();
    out.truncate(plain_len);
    Ok(out)
}

/// ChaCha20-Poly1305: opens `sealed` (ciphertext followed by its tag) in place and returns
/// the plaintext, at its start. On failure `sealed` holds bytes to throw away.
pub fn open_in_place<'a>(
    k: &[u8; KEY_LEN],
    nonce: &[u8; NONCE_LEN],
    aad: &[u8],
    sealed: &'a mut [u8],
) -> Result<&'a mut [u8], AeadError> {
    if sealed.len() < TAG_LEN {
        return Err(AeadError);
    }
    key(k)?
        .open_in_place(Nonce::assume_unique_for_key(*nonce), Aad::from(aad), sealed)
        .map_err(|_| AeadError)
}

/// XChaCha20-Poly1305's subkey and ChaCha20-Poly1305 nonce for `key` and `nonce`.
fn extended(k: &[u8; KEY_LEN], nonce: &[u8; XNONCE_LEN]) -> (Zeroizing<[u8; KEY_LEN]>, [u8; NONCE_LEN]) {
    let (head, tail) = nonce.split_at(16);
    let mut derived = chacha20::hchacha::<U10>(k.into(), head.into());
    let mut sub = Zeroizing::new([0u8; KEY_LEN]);
    sub.copy_from_slice(&derived);
    derived.as_mut_slice().zeroize();
    let mut n = [0u8; NONCE_LEN];
    n[4..].copy_from_slice(tail);
    (sub, n)
}

/// XChaCha20-Poly1305: encrypts `in_out` in place and returns the tag.
pub fn xseal_detached(
    k: &[u8; KEY_LEN],
    nonce: &[u8; XNONCE_LEN],
    aad: &[u8],
    in_out: &mut [u8],
) -> Result<[u8; TAG_LEN], AeadError> {
    let (sub, n) = extended(k, nonce);
    seal_detached(&sub, &n, aad, in_out)
}

/// XChaCha20-Poly1305: opens `sealed` (ciphertext followed by its tag) in place and
/// returns the plaintext, at its start.
pub fn xopen_in_place<'a>(
    k: &[u8; KEY_LEN],
    nonce: &[u8; XNONCE_LEN],
    aad: &[u8],
    sealed: &'a mut [u8],
) -> Result<&'a mut [u8], AeadError> {
    let (sub, n) = extended(k, nonce);
    open_in_place(&sub, &n, aad, sealed)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use chacha20poly1305::aead::{Aead, KeyInit, Payload};
    use chacha20poly1305::{ChaCha20Poly1305, XChaCha20Poly1305};
    use proptest::prelude::*;

    fn hex(s: &str) -> Vec<u8> {
        data_encoding::HEXLOWER.decode(s.as_bytes()).unwrap()
    }

    const KEY: &str = "808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9f";
    const AAD: &str = "50515253c0c1c2c3c4c5c6c7";
    const PLAINTEXT: &[u8] = b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the future, sunscreen would be it.";

    fn key32() -> [u8; 32] {
        hex(KEY).try_into().unwrap()
    }

    /// RFC 8439, section 2.8.2.
    #[test]
    fn rfc_8439_vector() {
        let nonce: [u8; 12] = hex("070000004041424344454647").try_into().unwrap();
        let sealed = seal(&key32(), &nonce, &hex(AAD), PLAINTEXT).unwrap();
        let expected = [
            "d31a8d34648e60db7b86afbc53ef7ec2a4aded51296e08fea9e2b5a736ee62d63dbea45e8ca9671282fafb69da92728b",
            "1a71de0a9e060b2905d6a5b67ecd3b3692ddbd7f2d778b8c9803aee328091b58fab324e4fad675945585808b4831d7bc",
            "3ff4def08e4b7a9de576d26586cec64b6116",
            "1ae10b594f09e26a7e902ecbd0600691",
        ]
        .concat();
        assert_eq!(sealed, hex(&expected));
        assert_eq!(open(&key32(), &nonce, &hex(AAD), &sealed).unwrap(), PLAINTEXT);
    }

    /// draft-irtf-cfrg-xchacha-03, appendix A.3.1.
    #[test]
    fn xchacha_draft_vector() {
        let nonce: [u8; 24] = hex("404142434445464748494a4b4c4d4e4f5051525354555657")
            .try_into()
            .unwrap();
        let mut buf = PLAINTEXT.to_vec();
        let tag = xseal_detached(&key32(), &nonce, &hex(AAD), &mut buf).unwrap();
        let expected = [
            "bd6d179d3e83d43b9576579493c0e939572a1700252bfaccbed2902c21396cbb731c7f1b0b4aa6440bf3a82f4eda7e39",
            "ae64c6708c54c216cb96b72e1213b4522f8c9ba40db5d945b11b69b982c1bb9e3f3fac2bc369488f76b2383565d3fff9",
            "21f9664c97637da9768812f615c68b13b52e",
        ]
        .concat();
        assert_eq!(buf, hex(&expected));
        assert_eq!(tag.to_vec(), hex("c0875924c1c7987947deafd8780acf49"));
        buf.extend_from_slice(&tag);
        assert_eq!(
            xopen_in_place(&key32(), &nonce, &hex(AAD), &mut buf).unwrap(),
            PLAINTEXT
        );
    }

    /// The GCM specification (McGrew and Viega, 2005), test case 14: AES-256, the
    /// all-zero key and nonce, 16 zero bytes; and every one-bit change refused.
    #[test]
    fn aes256gcm_vector_and_tampering() {
        let (k, n) = ([0u8; 32], [0u8; 12]);
        let mut buf = [0u8; 16];
        let tag = Cipher::Aes256Gcm.seal_detached(&k, &n, b"", &mut buf).unwrap();
        assert_eq!(buf.to_vec(), hex("cea7403d4d606b6e074ec5d3baf39d18"));
        assert_eq!(tag.to_vec(), hex("d0d1c8a799996bf0265b98b5d48ab919"));
        Cipher::Aes256Gcm.open_detached(&k, &n, b"", &mut buf, &tag).unwrap();
        assert_eq!(buf, [0u8; 16]);

        let k = key32();
        let n = [9u8; 12];
        let mut sealed = PLAINTEXT.to_vec();
        let tag = Cipher::Aes256Gcm.seal_detached(&k, &n, b"aad", &mut sealed).unwrap();
        for bit in 0..(sealed.len() + TAG_LEN) * 8 {
            let (mut c, mut t) = (sealed.clone(), tag);
            match bit / 8 {
                i if i < c.len() => c[i] ^= 1 << (bit % 8),
                i => t[i - c.len()] ^= 1 << (bit % 8),
            }
            assert_eq!(
                Cipher::Aes256Gcm.open_detached(&k, &n, b"aad", &mut c, &t),
                Err(AeadError),
                "bit {bit}"
            );
        }
        let mut c = sealed.clone();
        assert!(Cipher::Aes256Gcm.open_detached(&k, &n, b"aaD", &mut c, &tag).is_err());
        let mut c = sealed.clone();
        assert!(Cipher::Aes256Gcm
            .open_detached(&k, &[8; 12], b"aad", &mut c, &tag)
            .is_err());
        // Not ChaCha20-Poly1305 under another name.
        let mut c = sealed.clone();
        assert!(open_detached(&k, &n, b"aad", &mut c, &tag).is_err());
        let mut c = sealed;
        Cipher::Aes256Gcm.open_detached(&k, &n, b"aad", &mut c, &tag).unwrap();
        assert_eq!(c, PLAINTEXT);
    }

    #[test]
    fn short_or_altered_input_is_refused() {
        let k = [3u8; 32];
        let n = [4u8; 12];
        assert_eq!(open(&k, &n, b"", &[0u8; 15]), Err(AeadError));
        let sealed = seal(&k, &n, b"aad", b"text").unwrap();
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 1;
            assert_eq!(open(&k, &n, b"aad", &bad), Err(AeadError));
        }
        assert_eq!(open(&k, &n, b"aaD", &sealed), Err(AeadError));
        assert_eq!(open(&k, &[5u8; 12], b"aad", &sealed), Err(AeadError));
        assert_eq!(open(&[9u8; 32], &n, b"aad", &sealed), Err(AeadError));
        let mut body = sealed[..4].to_vec();
        let tag: [u8; 16] = sealed[4..].try_into().unwrap();
        let mut wrong = tag;
        wrong[0] ^= 1;
        assert_eq!(open_detached(&k, &n, b"aad", &mut body, &wrong), Err(AeadError));
        assert_ne!(body, b"text", "a refused opening leaves no plaintext");
        // What a refused opening leaves is to be thrown away: open the ciphertext again.
        let mut body = sealed[..4].to_vec();
        open_detached(&k, &n, b"aad", &mut body, &tag).unwrap();
        assert_eq!(body, b"text");
    }

    proptest! {
        /// Both constructions seal exactly as RustCrypto's, and open what it seals.
        #[test]
        fn equal_to_rustcrypto(
            k in any::<[u8; 32]>(),
            n in any::<[u8; 24]>(),
            aad in proptest::collection::vec(any::<u8>(), 0..40),
            plain in proptest::collection::vec(any::<u8>(), 0..5000),
        ) {
            let n12: [u8; 12] = n[..12].try_into().unwrap();
            let theirs = ChaCha20Poly1305::new((&k).into())
                .encrypt((&n12).into(), Payload { msg: &plain, aad: &aad })
                .unwrap();
            prop_assert_eq!(&seal(&k, &n12, &aad, &plain).unwrap(), &theirs);
            prop_assert_eq!(open(&k, &n12, &aad, &theirs).unwrap(), plain.clone());

            let theirs = XChaCha20Poly1305::new((&k).into())
                .encrypt((&n).into(), Payload { msg: &plain, aad: &aad })
                .unwrap();
            let mut ours = plain.clone();
            let tag = xseal_detached(&k, &n, &aad, &mut ours).unwrap();
            ours.extend_from_slice(&tag);
            prop_assert_eq!(&ours, &theirs);
            let mut back = theirs.clone();
            prop_assert_eq!(xopen_in_place(&k, &n, &aad, &mut back).unwrap(), &plain[..]);
        }
    }
}

//! The cryptography that openmls uses in a channel: a composite of vetted
//! implementations, chosen per primitive for speed (BENCHMARKS.md,
//! "Per-message cost").
//!
//! | primitive | implementation |
//! |---|---|
//! | Ed25519 sign, verify, key generation | `ed25519-dalek` |
//! | SHA-256, SHA-384, SHA-512 | `sha2` (SHA-NI where the CPU has it) |
//! | HKDF, HMAC over those hashes | `hkdf`, `hmac` over `sha2` |
//! | ChaCha20-Poly1305 (the AEAD of every suite we use) | AWS-LC, through [`crate::aead`] |
//! | HPKE (X-Wing, X25519), AES-GCM | `openmls_libcrux_crypto` |
//! | randomness (`OpenMlsRand`) | the operating system's generator, through `rand_core`'s `OsRng` |
//!
//! [`Crypto`] only delegates: it implements no primitive itself. On every
//! message, openmls verifies one Ed25519 signature, hashes in the secret
//! tree and the sender-data keys (HKDF) and seals or opens with the AEAD;
//! libcrux's portable Ed25519 verification took 70 µs where ed25519-dalek
//! takes 32 µs, its SHA-256, under its HKDF too, ran 6.8 × slower than
//! `sha2`, and its portable ChaCha20 is several times slower than the
//! `chacha20` crate's AVX2 code (the 4 KiB path lost about 10 % to it), which in turn
//! takes about 7 times AWS-LC's time on a short message (its Poly1305 sets up for long
//! ones).
//!
//! **Equivalence.** Signatures, hashes, HKDF, HMAC and ChaCha20-Poly1305 equal libcrux's on
//! the same inputs (the unit tests below sign or seal with one and verify or open with the
//! other, both ways, with the same errors),
//! and the mlswg interop vectors pass through [`Crypto`] for the suites it
//! shares with them (`tests/mls_vectors.rs`). Two deliberate differences:
//! verification accepts exactly what ed25519-dalek's `verify_strict` accepts
//! (computed as dalek's `verify` and the two small-order checks, which spares
//! decompressing `R`: [`verify_strong`] says why the answer is the same, and
//! a unit test compares the two), so it refuses a public key or a signature's
//! `R` of small order. No honest signer produces
//! either. libcrux accepts them: with the identity point as public key, one
//! fixed "signature" verifies for every message (a unit test shows it).
//! And HKDF-Expand with a PRK longer than the hash follows RFC 5869 (HMAC
//! keyed with the whole PRK), where libcrux keeps only the PRK's first hash
//! length of bytes; every secret that MLS expands has exactly the hash's
//! length, so openmls never meets the difference.
//!
//! Verification keeps the last 16 public keys it saw decompressed (public
//! data; a channel's members sign again and again).
//!
//! **Randomness.** openmls draws from [`OpenMlsRand`] for every message it
//! encrypts (the reuse guard) and for every secret it makes. Each draw is read
//! from the operating system (`getrandom(2)` on Linux): 0.4 µs for 4 bytes,
//! where libcrux's HMAC-DRBG took 3.2 µs over its slow SHA-256. Like the DRBG,
//! the kernel's generator cannot be run backwards from its state, and no
//! generator state lives in this process at all (nothing to zeroize, nothing
//! that a fork copies). A user-space ChaCha20 generator would save 0.4 µs
//! more per message but would keep, in memory, a key that reveals every draw
//! since its last seeding. libcrux's own DRBG still serves its HPKE.
//!
//! **Secrets.** A signing seed passed in or generated here is copied only
//! into zeroizing buffers (`Zeroizing`, `SigningKey`, which zeroizes on drop).
//! The trait returns a generated secret key as a plain `Vec`, as libcrux does;
//! openmls takes it from there.

use std::fmt;
use std::sync::{Mutex, OnceLock};

use curve25519_dalek::constants::EIGHT_TORSION;
use ed25519_dalek::{Signature, SignatureError, Signer as _, SigningKey, Verifier as _, VerifyingKey};
use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use openmls::prelude::tls_codec::SecretVLBytes;
use openmls_libcrux_crypto::{CryptoProvider as Libcrux, RandError};
use openmls_traits::crypto::OpenMlsCrypto;
use openmls_traits::random::OpenMlsRand;
use openmls_traits::types::{
    AeadType, Ciphersuite, CryptoError, ExporterSecret, HashType, HpkeCiphertext, HpkeConfig, HpkeKeyPair, KemOutput,
    SignatureScheme,
};
use rand_core::{OsRng, RngCore as _};
use sha2::{Digest as _, Sha256, Sha384, Sha512};
use zeroize::{Zeroize as _, Zeroizing};

use crate::aead;

/// The composite crypto provider of [`crate::channel::Provider`]: Ed25519 in
/// ed25519-dalek, hashes, HKDF and HMAC in sha2, hkdf and hmac, everything
/// else in libcrux.
pub struct Crypto {
    libcrux: Libcrux,
    /// The public keys that verified last, decompressed (a channel's members
    /// sign again and again; decompressing a key costs about 5 µs).
    keys: Mutex<KeyCache>,
}

/// The last [`KEY_CACHE`] public keys seen by [`Crypto::verify_signature`],
/// replaced in turn. Public data only.
#[derive(Default)]
struct KeyCache {
    keys: Vec<([u8; 32], VerifyingKey)>,
    next: usize,
}

/// How many public keys [`KeyCache`] holds.
const KEY_CACHE: usize = 16;

impl KeyCache {
    /// The key `pk`, decompressed; refused if it does not decompress or has small order
    /// (so the cache holds only keys that `verify_strict`'s check of the key passes).
    fn get(&mut self, pk: &[u8; 32]) -> Result<VerifyingKey, CryptoError> {
        if let Some((_, key)) = self.keys.iter().find(|(bytes, _)| bytes == pk) {
            return Ok(*key);
        }
        let key = VerifyingKey::from_bytes(pk).map_err(|_| CryptoError::InvalidSignature)?;
        if key.is_weak() {
            return Err(CryptoError::InvalidSignature);
        }
        if self.keys.len() < KEY_CACHE {
            self.keys.push((*pk, key));
        } else if let Some(slot) = self.keys.get_mut(self.next) {
            *slot = (*pk, key);
        }
        self.next = (self.next + 1) % KEY_CACHE;
        Ok(key)
    }
}

/// ed25519-dalek's `verify_strict` for a public key already known not to have small
/// order (every key of [`KeyCache`]): it accepts exactly the same signatures, without
/// decompressing the signature's `R` (about 4 µs) nor checking the key again for every
/// message (about 0.5 µs).
///
/// `verify_strict` accepts if `R` decompresses, neither `R` nor the public
/// key `A` has small order, `S` is canonical and `[S]B - [k]A` compresses to
/// `R`'s bytes. dalek's `verify` checks the last two, on the same equation
/// (cofactorless). When they hold, `R`'s bytes are the canonical encoding of
/// the point `[S]B - [k]A`, so they decompress, to that point; and that point
/// has small order exactly when its encoding is one of the eight encodings of
/// the points of small order (the canonical encoding is one-to-one). So the
/// check below, after `verify`, leaves the same answer, at the cost of eight
/// comparisons of 32 bytes. The unit tests compare it with `verify_strict` on
/// signatures that only the small-order checks refuse.
fn verify_strong(key: &VerifyingKey, data: &[u8], signature: &Signature) -> Result<(), SignatureError> {
    key.verify(data, signature)?;
    if small_order_encodings().contains(signature.r_bytes()) {
        return Err(SignatureError::new());
    }
    Ok(())
}

/// The canonical encodings of the eight points of small order.
fn small_order_encodings() -> &'static [[u8; 32]; 8] {
    static ENCODINGS: OnceLock<[[u8; 32]; 8]> = OnceLock::new();
    ENCODINGS.get_or_init(|| EIGHT_TORSION.map(|p| p.compress().to_bytes()))
}

/// A ChaCha20-Poly1305 key and nonce of the right lengths; the same length errors as
/// libcrux.
fn chacha<'a>(
    key: &'a [u8],
    nonce: &'a [u8],
) -> Result<(&'a [u8; aead::KEY_LEN], &'a [u8; aead::NONCE_LEN]), CryptoError> {
    match (key.try_into(), nonce.try_into()) {
        (Ok(key), Ok(nonce)) => Ok((key, nonce)),
        _ => Err(CryptoError::InvalidLength),
    }
}

impl fmt::Debug for Crypto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Crypto(..)")
    }
}

impl Crypto {
    /// A provider (libcrux's part seeds its HMAC-DRBG, used by its HPKE, from
    /// the operating system).
    pub fn new() -> Result<Self, CryptoError> {
        Ok(Self {
            libcrux: Libcrux::new()?,
            keys: Mutex::default(),
        })
    }
}

/// Runs `$body` with `$h` the sha2 type of `$hash`.
macro_rules! with_hash {
    ($hash:expr, $h:ident => $body:expr) => {
        match $hash {
            HashType::Sha2_256 => {
                type $h = Sha256;
                $body
            }
            HashType::Sha2_384 => {
                type $h = Sha384;
                $body
            }
            HashType::Sha2_512 => {
                type $h = Sha512;
                $body
            }
        }
    };
}

/// The Ed25519 seed openmls hands over as a signature private key (32 bytes,
/// the form libcrux takes and [`OpenMlsCrypto::signature_key_gen`] returns).
fn signing_key(key: &[u8]) -> Result<SigningKey, CryptoError> {
    let seed: Zeroizing<[u8; 32]> = Zeroizing::new(key.try_into().map_err(|_| CryptoError::InvalidLength)?);
    Ok(SigningKey::from_bytes(&seed))
}

impl OpenMlsCrypto for Crypto {
    fn supports(&self, ciphersuite: Ciphersuite) -> Result<(), CryptoError> {
        self.libcrux.supports(ciphersuite)
    }

    fn supported_ciphersuites(&self) -> Vec<Ciphersuite> {
        self.libcrux.supported_ciphersuites()
    }

    fn hkdf_extract(&self, hash_type: HashType, salt: &[u8], ikm: &[u8]) -> Result<SecretVLBytes, CryptoError> {
        Ok(with_hash!(hash_type, H => {
            let (mut prk, _) = Hkdf::<H>::extract(Some(salt), ikm);
            let out = prk.to_vec();
            prk.as_mut_slice().zeroize();
            out
        })
        .into())
    }

    fn hmac(&self, hash_type: HashType, key: &[u8], message: &[u8]) -> Result<SecretVLBytes, CryptoError> {
        Ok(with_hash!(hash_type, H => {
            // HMAC takes a key of any length.
            let mut mac = <Hmac<H> as Mac>::new_from_slice(key).map_err(|_| CryptoError::InvalidLength)?;
            mac.update(message);
            let mut tag = mac.finalize().into_bytes();
            let out = tag.to_vec();
            tag.as_mut_slice().zeroize();
            out
        })
        .into())
    }

    fn hkdf_expand(
        &self,
        hash_type: HashType,
        prk: &[u8],
        info: &[u8],
        okm_len: usize,
    ) -> Result<SecretVLBytes, CryptoError> {
        // The same errors as libcrux: a short PRK, or more than 255 blocks of output.
        let mut okm = vec![0u8; okm_len];
        with_hash!(hash_type, H => {
            Hkdf::<H>::from_prk(prk)
                .map_err(|_| CryptoError::InvalidLength)?
                .expand(info, &mut okm)
                .map_err(|_| CryptoError::HkdfOutputLengthInvalid)?
        });
        Ok(okm.into())
    }

    fn hash(&self, hash_type: HashType, data: &[u8]) -> Result<Vec<u8>, CryptoError> {
        Ok(with_hash!(hash_type, H => H::digest(data).to_vec()))
    }

    fn aead_encrypt(
        &self,
        alg: AeadType,
        key: &[u8],
        data: &[u8],
        nonce: &[u8],
        aad: &[u8],
    ) -> Result<Vec<u8>, CryptoError> {
        if alg != AeadType::ChaCha20Poly1305 {
            return self.libcrux.aead_encrypt(alg, key, data, nonce, aad);
        }
        let (key, nonce) = chacha(key, nonce)?;
        aead::seal(key, nonce, aad, data).map_err(|_| CryptoError::CryptoLibraryError)
    }

    fn aead_decrypt(
        &self,
        alg: AeadType,
        key: &[u8],
        ct_tag: &[u8],
        nonce: &[u8],
        aad: &[u8],
    ) -> Result<Vec<u8>, CryptoError> {
        if alg != AeadType::ChaCha20Poly1305 {
            return self.libcrux.aead_decrypt(alg, key, ct_tag, nonce, aad);
        }
        let (key, nonce) = chacha(key, nonce)?;
        if ct_tag.len() < aead::TAG_LEN {
            return Err(CryptoError::InvalidLength);
        }
        aead::open(key, nonce, aad, ct_tag).map_err(|_| CryptoError::AeadDecryptionError)
    }

    fn signature_key_gen(&self, alg: SignatureScheme) -> Result<(Vec<u8>, Vec<u8>), CryptoError> {
        if alg != SignatureScheme::ED25519 {
            return Err(CryptoError::UnsupportedSignatureScheme);
        }
        let seed: Zeroizing<[u8; 32]> =
            Zeroizing::new(self.random_array().map_err(|_| CryptoError::InsufficientRandomness)?);
        let key = SigningKey::from_bytes(&seed);
        Ok((seed.to_vec(), key.verifying_key().to_bytes().to_vec()))
    }

    fn verify_signature(
        &self,
        alg: SignatureScheme,
        data: &[u8],
        pk: &[u8],
        signature: &[u8],
    ) -> Result<(), CryptoError> {
        if alg != SignatureScheme::ED25519 {
            return Err(CryptoError::UnsupportedSignatureScheme);
        }
        let pk: &[u8; 32] = pk.try_into().map_err(|_| CryptoError::InvalidLength)?;
        let signature: &[u8; 64] = signature.try_into().map_err(|_| CryptoError::InvalidLength)?;
        // A poisoned lock still guards a usable cache: each change is one assignment.
        let key = self.keys.lock().unwrap_or_else(|e| e.into_inner()).get(pk)?;
        verify_strong(&key, data, &Signature::from_bytes(signature)).map_err(|_| CryptoError::InvalidSignature)
    }

    fn sign(&self, alg: SignatureScheme, data: &[u8], key: &[u8]) -> Result<Vec<u8>, CryptoError> {
        if alg != SignatureScheme::ED25519 {
            return Err(CryptoError::UnsupportedSignatureScheme);
        }
        Ok(signing_key(key)?.sign(data).to_bytes().to_vec())
    }

    fn hpke_seal(
        &self,
        config: HpkeConfig,
        pk_r: &[u8],
        info: &[u8],
        aad: &[u8],
        ptxt: &[u8],
    ) -> Result<HpkeCiphertext, CryptoError> {
        self.libcrux.hpke_seal(config, pk_r, info, aad, ptxt)
    }

    fn hpke_open(
        &self,
        config: HpkeConfig,
        input: &HpkeCiphertext,
        sk_r: &[u8],
        info: &[u8],
        aad: &[u8],
    ) -> Result<Vec<u8>, CryptoError> {
        self.libcrux.hpke_open(config, input, sk_r, info, aad)
    }

    fn hpke_setup_sender_and_export(
        &self,
        config: HpkeConfig,
        pk_r: &[u8],
        info: &[u8],
        exporter_context: &[u8],
        exporter_length: usize,
    ) -> Result<(KemOutput, ExporterSecret), CryptoError> {
        self.libcrux
            .hpke_setup_sender_and_export(config, pk_r, info, exporter_context, exporter_length)
    }

    fn hpke_setup_receiver_and_export(
        &self,
        config: HpkeConfig,
        enc: &[u8],
        sk_r: &[u8],
        info: &[u8],
        exporter_context: &[u8],
        exporter_length: usize,
    ) -> Result<ExporterSecret, CryptoError> {
        self.libcrux
            .hpke_setup_receiver_and_export(config, enc, sk_r, info, exporter_context, exporter_length)
    }

    fn derive_hpke_keypair(&self, config: HpkeConfig, ikm: &[u8]) -> Result<HpkeKeyPair, CryptoError> {
        self.libcrux.derive_hpke_keypair(config, ikm)
    }
}

impl OpenMlsRand for Crypto {
    type Error = RandError;

    fn random_array<const N: usize>(&self) -> Result<[u8; N], Self::Error> {
        let mut out = [0u8; N];
        os_random(&mut out)?;
        Ok(out)
    }

    fn random_vec(&self, len: usize) -> Result<Vec<u8>, Self::Error> {
        let mut out = vec![0u8; len];
        os_random(&mut out)?;
        Ok(out)
    }
}

/// Fills `out` from the operating system's generator (see the module
/// documentation, "Randomness").
fn os_random(out: &mut [u8]) -> Result<(), RandError> {
    OsRng.try_fill_bytes(out).map_err(|_| RandError::UnableToGenerate)
}

/// dalek's `verify_strict` as the provider computes it: the key's check, then
/// [`verify_strong`].
#[cfg(test)]
fn verify_strict_here(key: &VerifyingKey, data: &[u8], signature: &Signature) -> Result<(), SignatureError> {
    if key.is_weak() {
        return Err(SignatureError::new());
    }
    verify_strong(key, data, signature)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use curve25519_dalek::constants::ED25519_BASEPOINT_POINT;
    use curve25519_dalek::{EdwardsPoint, Scalar};

    const SCHEME: SignatureScheme = SignatureScheme::ED25519;

    fn both() -> (Crypto, Libcrux) {
        (Crypto::new().unwrap(), Libcrux::new().unwrap())
    }

    /// Messages of the lengths openmls signs and hashes, and the edges.
    fn messages() -> Vec<Vec<u8>> {
        [0usize, 1, 31, 32, 33, 63, 64, 65, 127, 128, 129, 1000, 4096, 70_000]
            .iter()
            .map(|&n| (0..n).map(|i| (i * 7 + n) as u8).collect())
            .collect()
    }

    #[test]
    fn signatures_equal_libcrux_and_verify_across() {
        let (ours, libcrux) = both();
        for (i, msg) in messages().iter().enumerate() {
            // A key made by each side, so that key generation is checked too.
            for maker in [&ours as &dyn OpenMlsCrypto, &libcrux] {
                let (sk, pk) = maker.signature_key_gen(SCHEME).unwrap();
                assert_eq!(sk.len(), 32);
                assert_eq!(pk.len(), 32);
                // The public key is the one the other side derives from the seed.
                assert_eq!(
                    SigningKey::from_bytes(&sk.clone().try_into().unwrap())
                        .verifying_key()
                        .to_bytes()
                        .to_vec(),
                    pk
                );
                let a = ours.sign(SCHEME, msg, &sk).unwrap();
                let b = libcrux.sign(SCHEME, msg, &sk).unwrap();
                // Ed25519 is deterministic: the same signature, byte for byte.
                assert_eq!(a, b, "message {i}");
                ours.verify_signature(SCHEME, msg, &pk, &b).unwrap();
                libcrux.verify_signature(SCHEME, msg, &pk, &a).unwrap();
                // A changed message, key or signature fails on both sides.
                let mut other = msg.clone();
                other.push(1);
                let mut bad_sig = a.clone();
                bad_sig[i % 64] ^= 0x10;
                let (_, other_pk) = maker.signature_key_gen(SCHEME).unwrap();
                for side in [&ours as &dyn OpenMlsCrypto, &libcrux] {
                    assert!(side.verify_signature(SCHEME, &other, &pk, &a).is_err());
                    assert!(side.verify_signature(SCHEME, msg, &pk, &bad_sig).is_err());
                    assert!(side.verify_signature(SCHEME, msg, &other_pk, &a).is_err());
                }
            }
        }
    }

    #[test]
    fn malformed_keys_and_signatures_fail_on_both_sides() {
        let (ours, libcrux) = both();
        let (sk, pk) = ours.signature_key_gen(SCHEME).unwrap();
        let msg = b"framed content";
        let sig = ours.sign(SCHEME, msg, &sk).unwrap();
        // S + L (the group order): the same signature with a non-canonical
        // scalar, which would make signatures malleable.
        const L: [u8; 32] = [
            0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde, 0x14, 0, 0, 0, 0,
            0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
        ];
        let mut malleated = sig.clone();
        let mut carry = 0u16;
        for (s, l) in malleated[32..].iter_mut().zip(L) {
            let sum = u16::from(*s) + u16::from(l) + carry;
            *s = sum as u8;
            carry = sum >> 8;
        }
        // The identity point as public key, and a small-order R with S = 0.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        let mut small = [0u8; 64];
        small[0] = 1;
        let long_pk = [pk.as_slice(), &[0]].concat();
        let cases: Vec<(&[u8], &[u8])> = vec![
            (&pk, &malleated),
            (&pk[..31], &sig),
            (&pk, &sig[..63]),
            (&long_pk, &sig),
            (&[0xff; 32], &sig),
        ];
        for (n, (pk, sig)) in cases.iter().enumerate() {
            assert!(ours.verify_signature(SCHEME, msg, pk, sig).is_err(), "case {n}, ours");
            assert!(
                libcrux.verify_signature(SCHEME, msg, pk, sig).is_err(),
                "case {n}, libcrux"
            );
        }
        // A deliberate difference (module docs): with the identity point as
        // public key, R = identity and S = 0 satisfy the verification equation for
        // every message. libcrux accepts that "signature"; `verify_strict` does not.
        for m in [msg.as_slice(), b"anything else"] {
            assert!(libcrux.verify_signature(SCHEME, m, &identity, &small).is_ok());
            assert_eq!(
                ours.verify_signature(SCHEME, m, &identity, &small),
                Err(CryptoError::InvalidSignature)
            );
        }
        // Signing needs a 32-byte seed on both sides.
        assert_eq!(ours.sign(SCHEME, msg, &sk[..31]), Err(CryptoError::InvalidLength));
        assert!(libcrux.sign(SCHEME, msg, &sk[..31]).is_err());
        // Only Ed25519.
        for side in [&ours as &dyn OpenMlsCrypto, &libcrux] {
            assert!(side.sign(SignatureScheme::ECDSA_SECP256R1_SHA256, msg, &sk).is_err());
            assert!(side.signature_key_gen(SignatureScheme::ED448).is_err());
        }
    }

    #[test]
    fn hashes_equal_libcrux() {
        let (ours, libcrux) = both();
        for msg in messages() {
            for (alg, len) in [
                (HashType::Sha2_256, 32),
                (HashType::Sha2_384, 48),
                (HashType::Sha2_512, 64),
            ] {
                let a = ours.hash(alg, &msg).unwrap();
                assert_eq!(a.len(), len);
                assert_eq!(a, libcrux.hash(alg, &msg).unwrap(), "{alg:?}, {} bytes", msg.len());
            }
        }
    }

    #[test]
    fn hkdf_and_hmac_equal_libcrux() {
        let (ours, libcrux) = both();
        let inputs = messages();
        for alg in [HashType::Sha2_256, HashType::Sha2_384, HashType::Sha2_512] {
            for (i, a) in inputs.iter().enumerate() {
                let b = &inputs[(i * 5 + 3) % inputs.len()];
                let mac = ours.hmac(alg, a, b).unwrap();
                assert_eq!(
                    mac.as_slice(),
                    libcrux.hmac(alg, a, b).unwrap().as_slice(),
                    "hmac {alg:?} {i}"
                );
                let prk = ours.hkdf_extract(alg, a, b).unwrap();
                assert_eq!(
                    prk.as_slice(),
                    libcrux.hkdf_extract(alg, a, b).unwrap().as_slice(),
                    "extract {alg:?} {i}"
                );
                // A PRK of the hash's length (every secret MLS expands); outputs up to 255 blocks.
                for len in [0, 1, 12, 16, 32, 33, 64, 100, 255 * mac.as_slice().len()] {
                    let x = ours.hkdf_expand(alg, prk.as_slice(), b, len).unwrap();
                    let y = libcrux.hkdf_expand(alg, prk.as_slice(), b, len).unwrap();
                    assert_eq!(x.as_slice(), y.as_slice(), "expand {alg:?} {i} {len}");
                    assert_eq!(x.as_slice().len(), len);
                }
                // A longer PRK: RFC 5869 keys HMAC with all of it, which libcrux's
                // HMAC does and its HKDF-Expand does not (it keeps the first hash
                // length of bytes). The first block is HMAC(PRK, info || 1).
                let long = mac.as_slice().repeat(3);
                let x = ours.hkdf_expand(alg, &long, b, 16).unwrap();
                let t1 = libcrux.hmac(alg, &long, &[b.as_slice(), &[1]].concat()).unwrap();
                assert_eq!(x.as_slice(), &t1.as_slice()[..16], "expand {alg:?} {i}, long PRK");
                // Errors: a PRK shorter than the hash, an output past 255 blocks.
                let too_long = 255 * mac.as_slice().len() + 1;
                assert_eq!(
                    ours.hkdf_expand(alg, &mac.as_slice()[1..], b, 32).err(),
                    Some(CryptoError::InvalidLength)
                );
                assert!(libcrux.hkdf_expand(alg, &mac.as_slice()[1..], b, 32).is_err());
                assert_eq!(
                    ours.hkdf_expand(alg, mac.as_slice(), b, too_long).err(),
                    Some(CryptoError::HkdfOutputLengthInvalid)
                );
                assert!(libcrux.hkdf_expand(alg, mac.as_slice(), b, too_long).is_err());
            }
        }
    }

    /// RFC 5869, appendix A.1.
    #[test]
    fn hkdf_is_rfc_5869s() {
        let ours = Crypto::new().unwrap();
        let hex = |s: &str| data_encoding::HEXLOWER.decode(s.as_bytes()).unwrap();
        let ikm = [0x0b; 22];
        let salt = hex("000102030405060708090a0b0c");
        let info = hex("f0f1f2f3f4f5f6f7f8f9");
        let prk = ours.hkdf_extract(HashType::Sha2_256, &salt, &ikm).unwrap();
        assert_eq!(
            prk.as_slice(),
            hex("077709362c2e32df0ddc3f0dc47bba6390b6c73bb50f9c3122ec844ad7c2b3e5")
        );
        let okm = ours.hkdf_expand(HashType::Sha2_256, prk.as_slice(), &info, 42).unwrap();
        assert_eq!(
            okm.as_slice(),
            hex("3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865")
        );
    }

    #[test]
    fn hash_of_the_empty_string_is_fips_180_4s() {
        let ours = Crypto::new().unwrap();
        let sha256 = ours.hash(HashType::Sha2_256, b"").unwrap();
        assert_eq!(
            data_encoding::HEXLOWER.encode(&sha256),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn the_key_cache_holds_the_last_keys_and_gives_each_its_own() {
        let ours = Crypto::new().unwrap();
        let msg = b"framed content";
        let keys: Vec<(Vec<u8>, Vec<u8>)> = (0..KEY_CACHE + 5)
            .map(|_| ours.signature_key_gen(SCHEME).unwrap())
            .collect();
        let sigs: Vec<Vec<u8>> = keys.iter().map(|(sk, _)| ours.sign(SCHEME, msg, sk).unwrap()).collect();
        // Twice round more keys than the cache holds: every signature verifies
        // under its own key only, whether the key was cached or not.
        for _ in 0..2 {
            for (i, (_, pk)) in keys.iter().enumerate() {
                ours.verify_signature(SCHEME, msg, pk, &sigs[i]).unwrap();
                let other = &sigs[(i + 1) % sigs.len()];
                assert!(ours.verify_signature(SCHEME, msg, pk, other).is_err());
            }
            let cache = ours.keys.lock().unwrap();
            assert_eq!(cache.keys.len(), KEY_CACHE);
        }
        // An invalid key is not cached.
        let before = ours.keys.lock().unwrap().next;
        let bad = (2u8..)
            .map(|y| {
                let mut b = [0; 32];
                b[0] = y;
                b
            })
            .find(|b| VerifyingKey::from_bytes(b).is_err())
            .unwrap();
        assert!(ours.verify_signature(SCHEME, msg, &bad, &sigs[0]).is_err());
        assert_eq!(ours.keys.lock().unwrap().next, before);
    }

    /// A signature on `msg` under `a·B + torsion` whose `R` is the small-order
    /// point `r` (or `None` if `k` does not give it): `S = k·a`, so `[S]B - [k]A`
    /// is `-[k]·torsion`. Cofactorless verification accepts it when that is `r`.
    fn small_order_r_signature(
        a: &Scalar,
        torsion: &EdwardsPoint,
        r: &EdwardsPoint,
        msg: &[u8],
    ) -> Option<([u8; 32], [u8; 64])> {
        let pk = (a * ED25519_BASEPOINT_POINT + torsion).compress().to_bytes();
        let r_bytes = r.compress().to_bytes();
        let mut h = Sha512::new();
        h.update(r_bytes);
        h.update(pk);
        h.update(msg);
        let k = Scalar::from_bytes_mod_order_wide(&h.finalize().into());
        if (-(k * torsion)).compress() != r.compress() {
            return None;
        }
        let mut sig = [0u8; 64];
        sig[..32].copy_from_slice(&r_bytes);
        sig[32..].copy_from_slice((k * a).as_bytes());
        Some((pk, sig))
    }

    #[test]
    fn strict_verification_refuses_what_verify_strict_refuses() {
        let ours = Crypto::new().unwrap();
        let a = Scalar::from_bytes_mod_order([0x37; 32]);
        // For each point of small order as R, a signature that the cofactorless
        // equation accepts (the public key has a torsion part of order 8, so
        // that every one of them can come out).
        for (j, r) in EIGHT_TORSION.iter().enumerate() {
            let (msg, (pk, sig)) = (0u32..)
                .find_map(|n| small_order_r_signature(&a, &EIGHT_TORSION[1], r, &n.to_be_bytes()).map(|ps| (n, ps)))
                .unwrap();
            let msg = msg.to_be_bytes();
            let key = VerifyingKey::from_bytes(&pk).unwrap();
            let signature = Signature::from_bytes(&sig);
            // What it takes: dalek's `verify` accepts it, `verify_strict` does not.
            assert!(!key.is_weak());
            assert!(key.verify(&msg, &signature).is_ok(), "R = torsion point {j}");
            assert!(key.verify_strict(&msg, &signature).is_err());
            assert!(
                verify_strict_here(&key, &msg, &signature).is_err(),
                "R = torsion point {j}"
            );
            assert_eq!(
                ours.verify_signature(SCHEME, &msg, &pk, &sig),
                Err(CryptoError::InvalidSignature)
            );
        }
        // With a public key of small order (and S = 0, R = the identity) the
        // equation holds for every message: both refuse.
        for t in EIGHT_TORSION {
            let pk = t.compress().to_bytes();
            let mut sig = [0u8; 64];
            sig[..32].copy_from_slice(&EdwardsPoint::default().compress().to_bytes());
            let key = VerifyingKey::from_bytes(&pk).unwrap();
            assert!(key.verify_strict(b"m", &Signature::from_bytes(&sig)).is_err());
            assert!(verify_strict_here(&key, b"m", &Signature::from_bytes(&sig)).is_err());
            // The provider's own path: the key cache refuses the key and does not keep it.
            assert_eq!(
                ours.verify_signature(SCHEME, b"m", &pk, &sig),
                Err(CryptoError::InvalidSignature)
            );
            assert!(ours.keys.lock().unwrap().keys.iter().all(|(cached, _)| cached != &pk));
        }
        // Honest signatures and their corruptions: the same answer as
        // `verify_strict`, byte by byte of the signature and with R replaced by
        // each small-order encoding.
        for (i, msg) in messages().iter().enumerate() {
            let sk = SigningKey::from_bytes(&[i as u8 + 1; 32]);
            let key = sk.verifying_key();
            let good = sk.sign(msg).to_bytes();
            let mut cases = vec![good];
            for b in 0..64 {
                let mut bad = good;
                bad[b] ^= 1 << (b % 8);
                cases.push(bad);
            }
            for enc in small_order_encodings() {
                let mut bad = good;
                bad[..32].copy_from_slice(enc);
                cases.push(bad);
            }
            for case in cases {
                let sig = Signature::from_bytes(&case);
                assert_eq!(
                    verify_strict_here(&key, msg, &sig).is_ok(),
                    key.verify_strict(msg, &sig).is_ok(),
                    "message {i}"
                );
                // And through the provider, with the key cached after its first use.
                assert_eq!(
                    ours.verify_signature(SCHEME, msg, key.as_bytes(), &case).is_ok(),
                    key.verify_strict(msg, &sig).is_ok(),
                    "message {i}, through the provider"
                );
            }
            assert!(verify_strict_here(&key, msg, &Signature::from_bytes(&good)).is_ok());
        }
    }

    #[test]
    fn chacha20_poly1305_equals_libcrux_and_opens_across() {
        let (ours, libcrux) = both();
        let alg = AeadType::ChaCha20Poly1305;
        let key = [0x42u8; 32];
        let nonce = [0x24u8; 12];
        for (i, msg) in messages().iter().enumerate() {
            for aad in [&b""[..], b"aad", &msg[..msg.len().min(300)]] {
                let a = ours.aead_encrypt(alg, &key, msg, &nonce, aad).unwrap();
                let b = libcrux.aead_encrypt(alg, &key, msg, &nonce, aad).unwrap();
                assert_eq!(a, b, "message {i}");
                assert_eq!(&ours.aead_decrypt(alg, &key, &b, &nonce, aad).unwrap(), msg);
                assert_eq!(&libcrux.aead_decrypt(alg, &key, &a, &nonce, aad).unwrap(), msg);
                // A changed byte anywhere, or other associated data, fails on both sides.
                let mut bad = a.clone();
                bad[i % a.len()] ^= 1;
                for side in [&ours as &dyn OpenMlsCrypto, &libcrux] {
                    assert_eq!(
                        side.aead_decrypt(alg, &key, &bad, &nonce, aad),
                        Err(CryptoError::AeadDecryptionError)
                    );
                    assert_eq!(
                        side.aead_decrypt(alg, &key, &a, &nonce, b"other"),
                        Err(CryptoError::AeadDecryptionError)
                    );
                }
            }
        }
        // Wrong lengths: the same errors on both sides.
        let ct = ours.aead_encrypt(alg, &key, b"m", &nonce, b"").unwrap();
        for side in [&ours as &dyn OpenMlsCrypto, &libcrux] {
            assert_eq!(
                side.aead_encrypt(alg, &key[..31], b"m", &nonce, b""),
                Err(CryptoError::InvalidLength)
            );
            assert_eq!(
                side.aead_encrypt(alg, &key, b"m", &nonce[..11], b""),
                Err(CryptoError::InvalidLength)
            );
            assert_eq!(
                side.aead_decrypt(alg, &key, &ct, &[0; 13], b""),
                Err(CryptoError::InvalidLength)
            );
            assert_eq!(
                side.aead_decrypt(alg, &key, &ct[..15], &nonce, b""),
                Err(CryptoError::InvalidLength)
            );
            // Only a tag: the empty message.
            let empty = side.aead_encrypt(alg, &key, b"", &nonce, b"").unwrap();
            assert_eq!(empty.len(), 16);
            assert_eq!(side.aead_decrypt(alg, &key, &empty, &nonce, b"").unwrap(), b"");
        }
        // AES-GCM still goes to libcrux, and works.
        let aes = AeadType::Aes128Gcm;
        let ct = ours.aead_encrypt(aes, &key[..16], b"m", &nonce, b"").unwrap();
        assert_eq!(libcrux.aead_decrypt(aes, &key[..16], &ct, &nonce, b"").unwrap(), b"m");
    }

    #[test]
    fn randomness_comes_in_every_length_asked_and_differs_each_time() {
        let ours = Crypto::new().unwrap();
        for len in [0, 1, 4, 32, 100, 70_000] {
            assert_eq!(ours.random_vec(len).unwrap().len(), len);
        }
        let draws: Vec<[u8; 16]> = (0..1000).map(|_| ours.random_array().unwrap()).collect();
        let mut sorted = draws.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), draws.len(), "a 16-byte draw came twice");
        assert_ne!(ours.random_array::<32>().unwrap(), [0; 32]);
        // Every byte value, in 256 KiB, about 1,024 times (standard deviation
        // 32; the bounds are 8 of them away).
        let bytes = ours.random_vec(256 * 1024).unwrap();
        let mut counts = [0u32; 256];
        for b in bytes {
            counts[usize::from(b)] += 1;
        }
        assert!(counts.iter().all(|c| (768..=1280).contains(c)), "{counts:?}");
    }

    #[test]
    fn generated_signing_keys_differ_and_sign() {
        let ours = Crypto::new().unwrap();
        let (sk1, pk1) = ours.signature_key_gen(SCHEME).unwrap();
        let (sk2, pk2) = ours.signature_key_gen(SCHEME).unwrap();
        assert_ne!(sk1, sk2);
        assert_ne!(pk1, pk2);
        let sig = ours.sign(SCHEME, b"m", &sk1).unwrap();
        ours.verify_signature(SCHEME, b"m", &pk1, &sig).unwrap();
        assert!(ours.verify_signature(SCHEME, b"m", &pk2, &sig).is_err());
    }

    #[test]
    fn debug_shows_nothing() {
        assert_eq!(format!("{:?}", Crypto::new().unwrap()), "Crypto(..)");
    }
}

//! The cryptography that openmls uses in a channel: a composite of vetted
//! implementations, chosen per primitive for speed (BENCHMARKS.md,
//! "Per-message cost").
//!
//! | primitive | implementation |
//! |---|---|
//! | Ed25519 sign, verify, key generation | `ed25519-dalek` |
//! | SHA-256, SHA-384, SHA-512 | `sha2` (SHA-NI where the CPU has it) |
//! | HPKE (X-Wing, X25519), AEAD, HKDF, HMAC, randomness | `openmls_libcrux_crypto` |
//!
//! [`Crypto`] only delegates: it implements no primitive itself. On every
//! message, openmls verifies one Ed25519 signature and hashes in the secret
//! tree; libcrux's portable Ed25519 verification took 70 µs where
//! ed25519-dalek takes 32 µs, and its SHA-256 ran 6.8 × slower than `sha2`.
//!
//! **Equivalence.** Signatures and hashes equal libcrux's on the same inputs
//! (the unit tests below sign with one and verify with the other, both ways),
//! and the mlswg interop vectors pass through [`Crypto`] for the suites it
//! shares with them (`tests/mls_vectors.rs`). One deliberate difference:
//! verification is ed25519-dalek's `verify_strict`, which also refuses a
//! public key or a signature's `R` of small order. No honest signer produces
//! either. libcrux accepts them: with the identity point as public key, one
//! fixed "signature" verifies for every message (a unit test shows it).
//!
//! **Secrets.** A signing seed passed in or generated here is copied only
//! into zeroizing buffers (`Zeroizing`, `SigningKey`, which zeroizes on drop).
//! The trait returns a generated secret key as a plain `Vec`, as libcrux does;
//! openmls takes it from there.

use std::fmt;

use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use openmls::prelude::tls_codec::SecretVLBytes;
use openmls_libcrux_crypto::CryptoProvider as Libcrux;
use openmls_traits::crypto::OpenMlsCrypto;
use openmls_traits::random::OpenMlsRand;
use openmls_traits::types::{
    AeadType, Ciphersuite, CryptoError, ExporterSecret, HashType, HpkeCiphertext, HpkeConfig, HpkeKeyPair, KemOutput,
    SignatureScheme,
};
use sha2::{Digest as _, Sha256, Sha384, Sha512};
use zeroize::Zeroizing;

/// The composite crypto provider of [`crate::channel::Provider`]: Ed25519 in
/// ed25519-dalek, hashes in sha2, everything else in libcrux.
pub struct Crypto {
    libcrux: Libcrux,
}

impl fmt::Debug for Crypto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Crypto(..)")
    }
}

impl Crypto {
    /// A provider whose random generator (libcrux's HMAC-DRBG) is seeded from
    /// the operating system.
    pub fn new() -> Result<Self, CryptoError> {
        Ok(Self {
            libcrux: Libcrux::new()?,
        })
    }
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
        self.libcrux.hkdf_extract(hash_type, salt, ikm)
    }

    fn hmac(&self, hash_type: HashType, key: &[u8], message: &[u8]) -> Result<SecretVLBytes, CryptoError> {
        self.libcrux.hmac(hash_type, key, message)
    }

    fn hkdf_expand(
        &self,
        hash_type: HashType,
        prk: &[u8],
        info: &[u8],
        okm_len: usize,
    ) -> Result<SecretVLBytes, CryptoError> {
        self.libcrux.hkdf_expand(hash_type, prk, info, okm_len)
    }

    fn hash(&self, hash_type: HashType, data: &[u8]) -> Result<Vec<u8>, CryptoError> {
        Ok(match hash_type {
            HashType::Sha2_256 => Sha256::digest(data).to_vec(),
            HashType::Sha2_384 => Sha384::digest(data).to_vec(),
            HashType::Sha2_512 => Sha512::digest(data).to_vec(),
        })
    }

    fn aead_encrypt(
        &self,
        alg: AeadType,
        key: &[u8],
        data: &[u8],
        nonce: &[u8],
        aad: &[u8],
    ) -> Result<Vec<u8>, CryptoError> {
        self.libcrux.aead_encrypt(alg, key, data, nonce, aad)
    }

    fn aead_decrypt(
        &self,
        alg: AeadType,
        key: &[u8],
        ct_tag: &[u8],
        nonce: &[u8],
        aad: &[u8],
    ) -> Result<Vec<u8>, CryptoError> {
        self.libcrux.aead_decrypt(alg, key, ct_tag, nonce, aad)
    }

    fn signature_key_gen(&self, alg: SignatureScheme) -> Result<(Vec<u8>, Vec<u8>), CryptoError> {
        if alg != SignatureScheme::ED25519 {
            return Err(CryptoError::UnsupportedSignatureScheme);
        }
        let seed: Zeroizing<[u8; 32]> = Zeroizing::new(
            self.libcrux
                .random_array()
                .map_err(|_| CryptoError::InsufficientRandomness)?,
        );
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
        let key = VerifyingKey::from_bytes(pk).map_err(|_| CryptoError::InvalidSignature)?;
        key.verify_strict(data, &Signature::from_bytes(signature))
            .map_err(|_| CryptoError::InvalidSignature)
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
    type Error = <Libcrux as OpenMlsRand>::Error;

    fn random_array<const N: usize>(&self) -> Result<[u8; N], Self::Error> {
        self.libcrux.random_array()
    }

    fn random_vec(&self, len: usize) -> Result<Vec<u8>, Self::Error> {
        self.libcrux.random_vec(len)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

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
        // The one deliberate difference (module docs): with the identity point as
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
    fn hash_of_the_empty_string_is_fips_180_4s() {
        let ours = Crypto::new().unwrap();
        let sha256 = ours.hash(HashType::Sha2_256, b"").unwrap();
        assert_eq!(
            data_encoding::HEXLOWER.encode(&sha256),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn debug_shows_nothing() {
        assert_eq!(format!("{:?}", Crypto::new().unwrap()), "Crypto(..)");
    }
}

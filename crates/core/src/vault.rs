//! Passphrase-sealed storage for the client's state.
//!
//! ```text
//! blob   = header || XChaCha20-Poly1305(key, nonce, aad = header, state)
//! header = "BCVAULT1" | m_cost_kib (u32) | t_cost (u32) | lanes (u32) | salt (16) | nonce (24)
//! key    = Argon2id(passphrase, salt, m_cost_kib, t_cost, lanes) -> 32 bytes
//! ```
//!
//! A wrong passphrase and a modified file both fail authentication; the
//! caller says which is likelier. The derived key zeroizes on drop.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand_core::CryptoRngCore;
use thiserror::Error;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::codec::{DecodeError, Reader, Writer};

/// The magic and format version: `BCVAULT` then the version as one ASCII digit.
const MAGIC: &[u8; 8] = b"BCVAULT1";
const HEADER_LEN: usize = 8 + 4 + 4 + 4 + 16 + 24;

/// Argon2id cost parameters (OWASP's recommended minimum by default).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KdfParams {
    /// Memory in KiB.
    pub m_cost_kib: u32,
    /// Passes.
    pub t_cost: u32,
    /// Lanes.
    pub lanes: u32,
}

impl Default for KdfParams {
    fn default() -> Self {
        Self {
            m_cost_kib: 19 * 1024,
            t_cost: 2,
            lanes: 1,
        }
    }
}

/// A key derived from a passphrase, with the salt it was derived with.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct VaultKey {
    key: [u8; 32],
    #[zeroize(skip)]
    params: KdfParams,
    #[zeroize(skip)]
    salt: [u8; 16],
}

impl std::fmt::Debug for VaultKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("VaultKey(..)")
    }
}

/// A vault could not be opened.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum VaultError {
    /// Not a vault, or truncated.
    #[error("the file is not a backchannel store or is truncated")]
    NotAVault,
    /// Authentication failed.
    #[error("the passphrase is wrong, or the store was modified")]
    Unauthentic,
    /// The KDF parameters are out of range.
    #[error("the store's key-derivation parameters are invalid")]
    BadParams,
    /// A newer release wrote this file, in a format this one does not know.
    #[error("the file was written by a newer backchannel (format {0}); upgrade backchannel to open it")]
    Newer(char),
}

impl From<DecodeError> for VaultError {
    fn from(_: DecodeError) -> Self {
        VaultError::NotAVault
    }
}

impl VaultKey {
    /// Derives a key for a new vault with a fresh salt.
    pub fn create(passphrase: &[u8], params: KdfParams, rng: &mut impl CryptoRngCore) -> Result<Self, VaultError> {
        let mut salt = [0u8; 16];
        rng.fill_bytes(&mut salt);
        Self::derive(passphrase, params, salt)
    }

    /// Derives the key for an existing vault blob.
    pub fn for_blob(passphrase: &[u8], blob: &[u8]) -> Result<Self, VaultError> {
        let (params, salt) = parse_header(blob)?;
        Self::derive(passphrase, params, salt)
    }

    fn derive(passphrase: &[u8], params: KdfParams, salt: [u8; 16]) -> Result<Self, VaultError> {
        if params.m_cost_kib > 4 * 1024 * 1024 || params.t_cost > 64 || params.lanes == 0 || params.lanes > 16 {
            return Err(VaultError::BadParams);
        }
        let p = argon2::Params::new(params.m_cost_kib, params.t_cost, params.lanes, Some(32))
            .map_err(|_| VaultError::BadParams)?;
        let argon = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, p);
        let mut key = [0u8; 32];
        argon
            .hash_password_into(passphrase, &salt, &mut key)
            .map_err(|_| VaultError::BadParams)?;
        Ok(Self { key, params, salt })
    }

    /// Seals `state` into a vault blob.
    pub fn seal(&self, state: &[u8], rng: &mut impl CryptoRngCore) -> Vec<u8> {
        let mut nonce = [0u8; 24];
        rng.fill_bytes(&mut nonce);
        let mut w = Writer::with_capacity(HEADER_LEN + state.len() + 16);
        w.put(MAGIC)
            .u32(self.params.m_cost_kib)
            .u32(self.params.t_cost)
            .u32(self.params.lanes)
            .put(&self.salt)
            .put(&nonce);
        let header = w.into_vec();
        let cipher = XChaCha20Poly1305::new((&self.key).into());
        // Encrypting an in-memory buffer with a valid key cannot fail.
        let ct = cipher
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: state,
                    aad: &header,
                },
            )
            .unwrap_or_default();
        let mut out = header;
        out.extend_from_slice(&ct);
        out
    }

    /// Opens a vault blob sealed under this key.
    pub fn open(&self, blob: &[u8]) -> Result<Zeroizing<Vec<u8>>, VaultError> {
        if blob.len() < HEADER_LEN + 16 {
            return Err(VaultError::NotAVault);
        }
        let (header, ct) = blob.split_at(HEADER_LEN);
        let (params, salt) = parse_header(blob)?;
        if params != self.params || salt != self.salt {
            return Err(VaultError::Unauthentic);
        }
        let cipher = XChaCha20Poly1305::new((&self.key).into());
        cipher
            .decrypt(
                XNonce::from_slice(&header[HEADER_LEN - 24..]),
                Payload { msg: ct, aad: header },
            )
            .map(Zeroizing::new)
            .map_err(|_| VaultError::Unauthentic)
    }
}

fn parse_header(blob: &[u8]) -> Result<(KdfParams, [u8; 16]), VaultError> {
    let mut r = Reader::new(blob);
    let magic = r.take(8)?;
    if magic != MAGIC {
        return match magic.split_last() {
            Some((&v, rest)) if rest == &MAGIC[..7] && v.is_ascii_digit() && v > MAGIC[7] => {
                Err(VaultError::Newer(char::from(v)))
            }
            _ => Err(VaultError::NotAVault),
        };
    }
    let params = KdfParams {
        m_cost_kib: r.u32()?,
        t_cost: r.u32()?,
        lanes: r.u32()?,
    };
    let salt = r.array()?;
    // The header is read from disk before anything is authenticated: a damaged
    // or planted file must not make us allocate gigabytes or spin for hours.
    if params.m_cost_kib > MAX_M_COST_KIB || params.t_cost > MAX_T_COST || params.lanes > MAX_LANES {
        return Err(VaultError::BadParams);
    }
    Ok((params, salt))
}

/// Largest Argon2 memory cost accepted from a vault header (1 GiB).
const MAX_M_COST_KIB: u32 = 1024 * 1024;
/// Most Argon2 passes accepted from a vault header.
const MAX_T_COST: u32 = 16;
/// Most Argon2 lanes accepted from a vault header.
const MAX_LANES: u32 = 16;

#[cfg(test)]
mod tests {
    use super::*;
    use rand_core::OsRng;

    fn cheap() -> KdfParams {
        KdfParams {
            m_cost_kib: 64,
            t_cost: 1,
            lanes: 1,
        }
    }

    #[test]
    fn round_trip_and_wrong_passphrase() {
        let k = VaultKey::create(b"correct horse", cheap(), &mut OsRng).unwrap_or_else(|_| unreachable!());
        let blob = k.seal(b"state bytes", &mut OsRng);
        assert!(!blob.windows(11).any(|w| w == b"state bytes"));
        let again = VaultKey::for_blob(b"correct horse", &blob).unwrap_or_else(|_| unreachable!());
        assert_eq!(again.open(&blob).map(|v| v.to_vec()), Ok(b"state bytes".to_vec()));
        let wrong = VaultKey::for_blob(b"wrong", &blob).unwrap_or_else(|_| unreachable!());
        assert_eq!(wrong.open(&blob).map(|v| v.to_vec()), Err(VaultError::Unauthentic));
    }

    #[test]
    fn truncation_and_garbage_are_detected() {
        let k = VaultKey::create(b"p", cheap(), &mut OsRng).unwrap_or_else(|_| unreachable!());
        let blob = k.seal(b"state", &mut OsRng);
        assert_eq!(
            k.open(&blob[..blob.len() - 1]).map(|v| v.to_vec()),
            Err(VaultError::Unauthentic)
        );
        assert_eq!(k.open(&blob[..10]).map(|v| v.to_vec()), Err(VaultError::NotAVault));
        assert!(VaultKey::for_blob(b"p", b"not a vault at all, not even close......").is_err());
    }

    #[test]
    fn a_header_asking_for_huge_kdf_costs_is_refused_before_deriving() {
        let k = VaultKey::create(b"p", cheap(), &mut OsRng).unwrap_or_else(|_| unreachable!());
        let mut blob = k.seal(b"state", &mut OsRng);
        blob[8..12].copy_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(VaultKey::for_blob(b"p", &blob).err(), Some(VaultError::BadParams));
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_blobs_never_panic(b in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200)) {
            // Only headers with cheap parameters reach the KDF; others are refused first.
            let _ = parse_header(&b);
            let k = VaultKey::create(b"p", cheap(), &mut OsRng).unwrap_or_else(|_| unreachable!());
            let _ = k.open(&b);
        }
    }

    #[test]
    fn a_vault_of_a_newer_format_says_to_upgrade() {
        let key = VaultKey::create(b"pw", cheap(), &mut OsRng).unwrap_or_else(|_| unreachable!());
        let mut blob = key.seal(b"state", &mut OsRng);
        blob[7] = b'2';
        assert_eq!(VaultKey::for_blob(b"pw", &blob).err(), Some(VaultError::Newer('2')));
        assert!(VaultError::Newer('2').to_string().contains("upgrade backchannel"));
        blob[7] = b'x';
        assert_eq!(VaultKey::for_blob(b"pw", &blob).err(), Some(VaultError::NotAVault));
    }
}

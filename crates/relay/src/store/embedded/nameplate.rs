//! Nameplates in the embedded store: the byte layout of a nameplate's value, and its sealing.
//!
//! A nameplate lives minutes (`--nameplate-lifetime`), so its record is sealed at rest under
//! a key the store makes when it opens and keeps in memory only ([`NameplateKey`]), not
//! under a key of the key file: whatever is left of a record in freed redb pages, after it
//! was taken or expired, is ciphertext under a key that is gone once the relay stops. The
//! price is that nameplates do not outlive the process: the store empties the two tables
//! when it opens (`EmbeddedStore::open`), and a code made before a restart is answered as
//! one that never was. (Keys of the key file would outlive it, but its slots are handed out
//! and recovered by envelope records alone, in every release that reads this format.)
//!
//! Value: `1 | expires_at (u64 BE) | nonce (12) | ChaCha20-Poly1305(record)`, with the
//! table key (the number, u32 BE) and `expires_at` as associated data, so that a value
//! moved to another number, or given a later expiry, does not open.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use rand_core::{OsRng, RngCore};
use zeroize::Zeroizing;

use crate::store::StoreError;

/// The first byte of a nameplate value.
const VERSION: u8 = 1;
const NONCE_LEN: usize = 12;
/// Bytes before the ciphertext.
const HEADER_LEN: usize = 1 + 8 + NONCE_LEN;

/// The key nameplate records are sealed under, for the life of the store.
pub(crate) struct NameplateKey(Zeroizing<[u8; 32]>);

impl NameplateKey {
    /// A fresh random key.
    pub(crate) fn fresh() -> Result<Self, StoreError> {
        let mut key = Zeroizing::new([0u8; 32]);
        OsRng
            .try_fill_bytes(&mut key[..])
            .map_err(|e| StoreError::Randomness(std::sync::Arc::new(e)))?;
        Ok(Self(key))
    }

    fn cipher(&self) -> ChaCha20Poly1305 {
        ChaCha20Poly1305::new(Key::from_slice(&self.0[..]))
    }

    /// The value stored for nameplate `number` holding `record` until `expires_at`.
    pub(crate) fn seal(&self, number: u32, expires_at: u64, record: &[u8]) -> Result<Vec<u8>, StoreError> {
        let mut nonce = [0u8; NONCE_LEN];
        OsRng
            .try_fill_bytes(&mut nonce)
            .map_err(|e| StoreError::Randomness(std::sync::Arc::new(e)))?;
        let aad = aad(number, expires_at);
        let sealed = self
            .cipher()
            .encrypt(Nonce::from_slice(&nonce), Payload { msg: record, aad: &aad })
            // Only a plaintext longer than ChaCha20 allows fails; a record is at most 1 KiB.
            .map_err(|_| StoreError::corrupt("nameplate record to seal"))?;
        let mut v = Vec::with_capacity(HEADER_LEN + sealed.len());
        v.push(VERSION);
        v.extend_from_slice(&expires_at.to_be_bytes());
        v.extend_from_slice(&nonce);
        v.extend_from_slice(&sealed);
        Ok(v)
    }

    /// The record of nameplate `number` from its stored value; `None` if it does not open
    /// (sealed by an earlier run of the store, or damaged).
    pub(crate) fn open(&self, number: u32, value: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
        let expires_at = expires_at(value)?;
        let nonce = value.get(9..HEADER_LEN)?;
        let sealed = value.get(HEADER_LEN..)?;
        let aad = aad(number, expires_at);
        self.cipher()
            .decrypt(Nonce::from_slice(nonce), Payload { msg: sealed, aad: &aad })
            .ok()
            .map(Zeroizing::new)
    }
}

/// When a stored nameplate expires (`None` for a value this code does not read).
pub(crate) fn expires_at(value: &[u8]) -> Option<u64> {
    match value {
        [VERSION, rest @ ..] if rest.len() >= HEADER_LEN - 1 => {
            Some(u64::from_be_bytes(rest.get(..8)?.try_into().ok()?))
        }
        _ => None,
    }
}

/// The table key of nameplate `number`.
pub(crate) fn key(number: u32) -> [u8; 4] {
    number.to_be_bytes()
}

/// The key of nameplate `number` in the expiry index: expiry (u64 BE) || number (u32 BE).
pub(crate) fn expiry_key(expires_at: u64, number: u32) -> [u8; 12] {
    let mut k = [0u8; 12];
    k[..8].copy_from_slice(&expires_at.to_be_bytes());
    k[8..].copy_from_slice(&number.to_be_bytes());
    k
}

fn aad(number: u32, expires_at: u64) -> [u8; 12] {
    let mut a = [0u8; 12];
    a[..4].copy_from_slice(&number.to_be_bytes());
    a[4..].copy_from_slice(&expires_at.to_be_bytes());
    a
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_record_opens_only_under_its_number_expiry_and_key() {
        let key = NameplateKey::fresh().unwrap();
        let v = key.seal(7, 1000, b"spake2 message").unwrap();
        assert_eq!(expires_at(&v), Some(1000));
        assert_eq!(key.open(7, &v).unwrap().as_slice(), b"spake2 message");
        assert!(!v.windows(6).any(|w| w == b"spake2"), "sealed, not in the clear");
        // Moved to another number, or given a later expiry: does not open.
        assert!(key.open(8, &v).is_none());
        let mut later = v.clone();
        later[1..9].copy_from_slice(&2000u64.to_be_bytes());
        assert!(key.open(7, &later).is_none());
        // Another run's key: does not open.
        assert!(NameplateKey::fresh().unwrap().open(7, &v).is_none());
        // Short, empty, or of a newer version: nothing read.
        assert!(key.open(7, &v[..10]).is_none());
        assert_eq!(expires_at(&[]), None);
        let mut newer = v.clone();
        newer[0] = 2;
        assert_eq!(expires_at(&newer), None);
        // An empty record is a record.
        let e = key.seal(1, 5, b"").unwrap();
        assert_eq!(key.open(1, &e).unwrap().len(), 0);
    }
}

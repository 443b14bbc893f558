//! A member's long-term identity: a display name and an Ed25519 key.
//!
//! The key signs the member's MLS leaf and every MLS message it sends, so a
//! message shown as coming from a member was signed by that member's key.
//! The secret half is zeroized on drop and never appears in `Debug`.

use std::fmt;

use ed25519_dalek::{Signer as _, SigningKey};
use openmls_traits::signatures::{Signer, SignerError};
use openmls_traits::types::SignatureScheme;
use rand_core::CryptoRngCore;
use sha2::{Digest, Sha256};

/// Longest display name accepted.
pub const MAX_NAME_LEN: usize = 64;

/// A member's identity key pair and display name.
pub struct Identity {
    name: String,
    key: SigningKey,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("fingerprint", &self.fingerprint())
            .finish_non_exhaustive()
    }
}

/// A display name was not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a name must be 1 to {MAX_NAME_LEN} bytes of printable text")]
pub struct BadName;

/// Checks a display or channel name.
pub fn validate_name(name: &str) -> Result<(), BadName> {
    if name.is_empty() || name.len() > MAX_NAME_LEN || name.chars().any(|c| c.is_control()) {
        return Err(BadName);
    }
    Ok(())
}

impl Identity {
    /// A new identity.
    pub fn generate(name: &str, rng: &mut impl CryptoRngCore) -> Result<Self, BadName> {
        validate_name(name)?;
        Ok(Self {
            name: name.to_string(),
            key: SigningKey::generate(rng),
        })
    }

    /// Rebuilds an identity from stored parts.
    pub fn from_secret(name: String, secret: &[u8; 32]) -> Self {
        Self {
            name,
            key: SigningKey::from_bytes(secret),
        }
    }

    /// The secret key bytes, for the encrypted local store only.
    pub fn secret_bytes(&self) -> zeroize::Zeroizing<[u8; 32]> {
        zeroize::Zeroizing::new(self.key.to_bytes())
    }

    /// Display name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Public identity key.
    pub fn public_key(&self) -> [u8; 32] {
        self.key.verifying_key().to_bytes()
    }

    /// Fingerprint of the public key.
    pub fn fingerprint(&self) -> Fingerprint {
        Fingerprint::of(&self.public_key())
    }
}

impl Signer for Identity {
    fn sign(&self, payload: &[u8]) -> Result<Vec<u8>, SignerError> {
        Ok(self.key.sign(payload).to_bytes().to_vec())
    }

    fn signature_scheme(&self) -> SignatureScheme {
        SignatureScheme::ED25519
    }
}

/// SHA-256 of `"backchannel/v1/fingerprint" || identity public key`; shown as its
/// first 16 bytes in 8 groups of 4 hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct Fingerprint(pub [u8; 32]);

impl Fingerprint {
    /// The fingerprint of a public key.
    pub fn of(public_key: &[u8]) -> Self {
        let mut h = Sha256::new();
        h.update(b"backchannel/v1/fingerprint");
        h.update(public_key);
        Fingerprint(h.finalize().into())
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hex = data_encoding::HEXLOWER.encode(&self.0[..16]);
        let groups: Vec<&str> = (0..8).map(|i| &hex[i * 4..i * 4 + 4]).collect();
        f.write_str(&groups.join(" "))
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_shows_no_secret_and_no_name() {
        let id = Identity::generate("alice-the-source", &mut rand_core::OsRng).unwrap_or_else(|_| unreachable!());
        let dbg = format!("{id:?}");
        assert!(dbg.starts_with("Identity { fingerprint: Fingerprint("), "{dbg}");
        assert!(!dbg.contains("alice"));
        let secret_hex = data_encoding::HEXLOWER.encode(&id.secret_bytes()[..]);
        assert!(!dbg.contains(&secret_hex[..8]));
    }

    #[test]
    fn names_are_validated() {
        assert!(validate_name("").is_err());
        assert!(validate_name("a\nb").is_err());
        assert!(validate_name(&"x".repeat(65)).is_err());
        assert!(validate_name("Ana María").is_ok());
    }
}

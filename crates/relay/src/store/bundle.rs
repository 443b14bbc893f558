//! Bundles (docs/protocol.md, "Bundles"): what a short address names, kept under a
//! client-chosen 16-byte name. The rule of a publish and the stored value's layout are
//! here, once, for both backends.
//!
//! Value (both backends, and the value of the embedded table `bundles`):
//! `expires_at (u64 BE, Unix seconds) | bundle`, in the clear. A bundle is public key
//! material (a drop box's keys) or ciphertext its client sealed (an invite's body), and it
//! must outlive the relay's restarts (a short address is printed and kept for months), so it
//! is neither sealed at rest nor forgotten when the store opens, unlike a nameplate.
//!
//! The same `expires_at | bytes` layout is a nameplate's value in the NATS bucket
//! (`nats.rs`): [`encode_dated`] and [`decode_dated`] write and read both.

use super::StoreError;

/// The stored value: `expires_at (u64 BE) | bytes`.
pub fn encode_dated(expires_at: u64, bytes: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(8 + bytes.len());
    v.extend_from_slice(&expires_at.to_be_bytes());
    v.extend_from_slice(bytes);
    v
}

/// Reads [`encode_dated`]'s layout: the expiry and the bytes; `None` for a value shorter
/// than an expiry (damaged).
pub fn decode_dated(value: &[u8]) -> Option<(u64, &[u8])> {
    let (at, bytes) = value.split_first_chunk::<8>()?;
    Some((u64::from_be_bytes(*at), bytes))
}

/// Whether a bundle expiring at `expires_at` is still held at `now`: kept through its
/// expiry second, as a nameplate is.
pub fn live(expires_at: u64, now: u64) -> bool {
    expires_at >= now
}

/// What a publish of `bundle` until `expires_at` does under a name whose stored value is
/// `stored` (`None`: nothing there): `Ok(expiry)` writes the bundle with that expiry (a new
/// bundle, one replacing an expired or damaged value, or the same bundle published again,
/// which keeps the later of the two expiries); [`StoreError::BundleTaken`] when another
/// bundle is held there at `now`.
pub fn judge(stored: Option<&[u8]>, bundle: &[u8], expires_at: u64, now: u64) -> Result<u64, StoreError> {
    match stored.and_then(decode_dated) {
        Some((at, held)) if live(at, now) => {
            if held == bundle {
                Ok(at.max(expires_at))
            } else {
                Err(StoreError::BundleTaken)
            }
        }
        // Nothing, expired, or shorter than an expiry (damaged): the name is free.
        _ => Ok(expires_at),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_name_is_taken_by_its_live_bundle_and_refreshed_by_the_same() {
        let held = encode_dated(100, b"keys");
        assert_eq!(decode_dated(&held), Some((100, &b"keys"[..])));
        // Free names.
        assert_eq!(judge(None, b"keys", 50, 10), Ok(50));
        assert_eq!(judge(Some(&held), b"other", 500, 101), Ok(500), "expired: free");
        assert_eq!(judge(Some(&[1, 2, 3]), b"other", 500, 10), Ok(500), "damaged: free");
        // Held through its expiry second.
        assert_eq!(judge(Some(&held), b"other", 500, 100), Err(StoreError::BundleTaken));
        assert_eq!(judge(Some(&held), b"keyz", 500, 0), Err(StoreError::BundleTaken));
        assert_eq!(judge(Some(&held), b"", 500, 0), Err(StoreError::BundleTaken));
        // The same again: the later expiry, never an earlier one.
        assert_eq!(judge(Some(&held), b"keys", 500, 10), Ok(500));
        assert_eq!(judge(Some(&held), b"keys", 50, 10), Ok(100));
        // An empty bundle is a bundle.
        assert_eq!(decode_dated(&encode_dated(7, b"")), Some((7, &b""[..])));
        assert_eq!(decode_dated(&[0; 7]), None);
        assert_eq!(
            StoreError::BundleTaken.refusal(),
            Some((backchannel_core::frame::ErrorCode::BundleTaken, 0))
        );
    }
}

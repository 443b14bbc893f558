//! Passphrase-sealed storage for the client's state and the files beside it.
//!
//! ```text
//! blob   = header || XChaCha20-Poly1305(key, nonce, aad = header || place, plain)
//! header = "BCVAULT2" | m_cost_kib (u32) | t_cost (u32) | lanes (u32) | flags (u32)
//!          | salt (16) | generation (u64) | nonce (24)
//! place  = role (u8) | name length (u16) | name
//! key    = Argon2id(passphrase, salt, m_cost_kib, t_cost, lanes) -> 32 bytes
//! ```
//!
//! Every blob is bound to its [`Place`]: what it is (the state, the state's generation
//! witness, a file beside it) and its name, so one blob cannot be passed off as
//! another; and it carries the state's generation when it was written, which the home
//! compares (`backchannel_client::home`) to refuse a blob rolled back alone.
//!
//! Format 1 (`BCVAULT1`, no flags, no generation, aad = header only) is still opened,
//! so that a home written by an earlier release can be read and sealed again in format 2.
//!
//! A wrong passphrase and a modified file both fail authentication; the
//! caller says which is likelier. The derived key zeroizes on drop.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand_core::CryptoRngCore;
use thiserror::Error;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::codec::{DecodeError, Reader, Writer};

/// The magic without its format digit.
const MAGIC_STEM: &[u8; 7] = b"BCVAULT";
/// The format this release writes.
const FORMAT: u8 = b'2';
const HEADER_V1_LEN: usize = 8 + 4 + 4 + 4 + 16 + 24;
const HEADER_LEN: usize = 8 + 4 + 4 + 4 + 4 + 16 + 8 + 24;
/// `flags` bit: the parameters are a test setting, cheap to guess against.
const FLAG_TEST_KDF: u32 = 1;

/// Argon2id cost parameters. The default is calibrated to about one second on a
/// 2-core machine of 2026 (256 MiB, 3 passes: 0.84 s there; BENCHMARKS.md, "The vault's
/// key derivation"), far above the server-side minimum, since an offline attacker
/// who copied the home can spend what they like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KdfParams {
    /// Memory in KiB.
    pub m_cost_kib: u32,
    /// Passes.
    pub t_cost: u32,
    /// Lanes.
    pub lanes: u32,
    /// A test setting: cheap parameters that only a test may ask for. The flag is in
    /// the header, so that every open of such a vault can warn.
    pub test_only: bool,
}

impl Default for KdfParams {
    fn default() -> Self {
        Self {
            m_cost_kib: 256 * 1024,
            t_cost: 3,
            lanes: 1,
            test_only: false,
        }
    }
}

impl KdfParams {
    /// The cheapest parameters, marked as a test setting in the header.
    pub const fn test_only() -> Self {
        Self {
            m_cost_kib: 64,
            t_cost: 1,
            lanes: 1,
            test_only: true,
        }
    }
}

/// What a sealed blob is: bound into its authentication with its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Role {
    /// The client's state.
    State = 1,
    /// The record of the state's latest generation, written after each save.
    Witness = 2,
    /// A file beside the state (a history segment, a received part, an attachment).
    File = 3,
}

/// Where a blob belongs: its role and its name (empty for the state and its witness).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Place<'a> {
    /// What it is.
    pub role: Role,
    /// Its name, for a file its folder and name (`folder/name`).
    pub name: &'a str,
}

impl Place<'_> {
    /// The state.
    pub const STATE: Place<'static> = Place {
        role: Role::State,
        name: "",
    };
    /// The state's generation witness.
    pub const WITNESS: Place<'static> = Place {
        role: Role::Witness,
        name: "",
    };

    /// A file beside the state, named `folder/name`.
    pub fn file(name: &str) -> Place<'_> {
        Place { role: Role::File, name }
    }

    fn encode(&self, header: &[u8]) -> Vec<u8> {
        let name = self.name.as_bytes();
        let mut aad = Vec::with_capacity(header.len() + 3 + name.len());
        aad.extend_from_slice(header);
        aad.push(self.role as u8);
        aad.extend_from_slice(&u16::try_from(name.len()).unwrap_or(u16::MAX).to_be_bytes());
        aad.extend_from_slice(name);
        aad
    }
}

/// An opened blob.
#[derive(Debug)]
pub struct Opened {
    /// What was sealed.
    pub plain: Zeroizing<Vec<u8>>,
    /// The generation it was written at (0 for format 1, which has none).
    pub generation: u64,
    /// Its format: 1 (not bound to a place) or 2.
    pub format: u8,
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

/// A parsed header.
struct Header {
    format: u8,
    params: KdfParams,
    salt: [u8; 16],
    generation: u64,
    len: usize,
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
        let h = parse_header(blob)?;
        Self::derive(passphrase, h.params, h.salt)
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

    /// The parameters the key was derived with.
    pub fn params(&self) -> KdfParams {
        self.params
    }

    /// Seals `plain` for `place`, at the state's `generation`.
    pub fn seal(&self, plain: &[u8], place: Place<'_>, generation: u64, rng: &mut impl CryptoRngCore) -> Vec<u8> {
        let mut nonce = [0u8; 24];
        rng.fill_bytes(&mut nonce);
        let mut w = Writer::with_capacity(HEADER_LEN + plain.len() + 16);
        w.put(MAGIC_STEM)
            .u8(FORMAT)
            .u32(self.params.m_cost_kib)
            .u32(self.params.t_cost)
            .u32(self.params.lanes)
            .u32(if self.params.test_only { FLAG_TEST_KDF } else { 0 })
            .put(&self.salt)
            .u64(generation)
            .put(&nonce);
        let header = w.into_vec();
        let cipher = XChaCha20Poly1305::new((&self.key).into());
        // Encrypting an in-memory buffer with a valid key cannot fail.
        let ct = cipher
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: plain,
                    aad: &place.encode(&header),
                },
            )
            .unwrap_or_default();
        let mut out = header;
        out.extend_from_slice(&ct);
        out
    }

    /// Opens a blob sealed under this key for `place`. A format-1 blob (which names no
    /// place) is opened too, and says so in [`Opened::format`]: the caller decides
    /// whether it may still be one.
    pub fn open(&self, blob: &[u8], place: Place<'_>) -> Result<Opened, VaultError> {
        let h = parse_header(blob)?;
        if blob.len() < h.len + 16 {
            return Err(VaultError::NotAVault);
        }
        if h.params != self.params || h.salt != self.salt {
            return Err(VaultError::Unauthentic);
        }
        let (header, ct) = blob.split_at(h.len);
        let aad = if h.format == 1 {
            header.to_vec()
        } else {
            place.encode(header)
        };
        let cipher = XChaCha20Poly1305::new((&self.key).into());
        let plain = cipher
            .decrypt(
                XNonce::from_slice(&header[h.len - 24..]),
                Payload { msg: ct, aad: &aad },
            )
            .map_err(|_| VaultError::Unauthentic)?;
        Ok(Opened {
            plain: Zeroizing::new(plain),
            generation: h.generation,
            format: h.format,
        })
    }
}

fn parse_header(blob: &[u8]) -> Result<Header, VaultError> {
    let mut r = Reader::new(blob);
    let stem = r.take(7)?;
    let digit = r.u8()?;
    if stem != MAGIC_STEM || !digit.is_ascii_digit() || digit == b'0' {
        return Err(VaultError::NotAVault);
    }
    if digit > FORMAT {
        return Err(VaultError::Newer(char::from(digit)));
    }
    let format = digit - b'0';
    let (m_cost_kib, t_cost, lanes) = (r.u32()?, r.u32()?, r.u32()?);
    let flags = if format >= 2 { r.u32()? } else { 0 };
    if flags & !FLAG_TEST_KDF != 0 {
        return Err(VaultError::BadParams);
    }
    let params = KdfParams {
        m_cost_kib,
        t_cost,
        lanes,
        test_only: flags & FLAG_TEST_KDF != 0,
    };
    let salt = r.array()?;
    let generation = if format >= 2 { r.u64()? } else { 0 };
    let len = if format >= 2 { HEADER_LEN } else { HEADER_V1_LEN };
    // The header is read from disk before anything is authenticated: a damaged
    // or planted file must not make us allocate gigabytes or spin for hours.
    if params.m_cost_kib > MAX_M_COST_KIB || params.t_cost > MAX_T_COST || params.lanes > MAX_LANES {
        return Err(VaultError::BadParams);
    }
    Ok(Header {
        format,
        params,
        salt,
        generation,
        len,
    })
}

/// Whether `blob` is a vault whose parameters are the test setting (read from the
/// header without the passphrase, to warn before deriving).
pub fn is_test_only(blob: &[u8]) -> bool {
    parse_header(blob).is_ok_and(|h| h.params.test_only)
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
            test_only: false,
        }
    }

    fn key(pass: &[u8]) -> VaultKey {
        VaultKey::create(pass, cheap(), &mut OsRng).unwrap_or_else(|_| unreachable!())
    }

    fn plain(r: Result<Opened, VaultError>) -> Result<Vec<u8>, VaultError> {
        r.map(|o| o.plain.to_vec())
    }

    /// A blob as release 94ba14f sealed it: format 1, aad = the header only.
    fn seal_v1(k: &VaultKey, state: &[u8]) -> Vec<u8> {
        let nonce = [7u8; 24];
        let mut w = Writer::with_capacity(HEADER_V1_LEN);
        w.put(b"BCVAULT1")
            .u32(k.params.m_cost_kib)
            .u32(k.params.t_cost)
            .u32(k.params.lanes)
            .put(&k.salt)
            .put(&nonce);
        let mut blob = w.into_vec();
        let cipher = XChaCha20Poly1305::new((&k.key).into());
        let ct = cipher
            .encrypt(XNonce::from_slice(&nonce), Payload { msg: state, aad: &blob })
            .unwrap_or_default();
        blob.extend_from_slice(&ct);
        blob
    }

    #[test]
    fn round_trip_and_wrong_passphrase() {
        let k = key(b"correct horse");
        let blob = k.seal(b"state bytes", Place::STATE, 9, &mut OsRng);
        assert!(!blob.windows(11).any(|w| w == b"state bytes"));
        let again = VaultKey::for_blob(b"correct horse", &blob).unwrap_or_else(|_| unreachable!());
        let opened = again.open(&blob, Place::STATE).unwrap_or_else(|_| unreachable!());
        assert_eq!(
            (opened.plain.to_vec(), opened.generation, opened.format),
            (b"state bytes".to_vec(), 9, 2)
        );
        let wrong = VaultKey::for_blob(b"wrong", &blob).unwrap_or_else(|_| unreachable!());
        assert_eq!(plain(wrong.open(&blob, Place::STATE)), Err(VaultError::Unauthentic));
    }

    /// A blob opens only as what and where it was sealed: a history segment cannot be
    /// passed off as another segment, a part, the state or the witness.
    #[test]
    fn a_blob_is_bound_to_its_role_and_name() {
        let k = key(b"p");
        let blob = k.seal(b"segment", Place::file("history-1/3"), 4, &mut OsRng);
        assert_eq!(
            plain(k.open(&blob, Place::file("history-1/3"))),
            Ok(b"segment".to_vec())
        );
        for other in [
            Place::file("history-1/4"),
            Place::file("history-2/3"),
            Place::file(""),
            Place::STATE,
            Place::WITNESS,
        ] {
            assert_eq!(plain(k.open(&blob, other)), Err(VaultError::Unauthentic), "{other:?}");
        }
        let state = k.seal(b"state", Place::STATE, 4, &mut OsRng);
        assert_eq!(plain(k.open(&state, Place::WITNESS)), Err(VaultError::Unauthentic));
        // The generation is authenticated: changing it in the header breaks the blob.
        let mut moved = blob.clone();
        moved[HEADER_LEN - 24 - 1] ^= 1;
        assert_eq!(
            plain(k.open(&moved, Place::file("history-1/3"))),
            Err(VaultError::Unauthentic)
        );
    }

    /// A format-1 blob (an earlier release's) opens, and says it is one.
    #[test]
    fn a_format_1_blob_still_opens() {
        let k = key(b"p");
        let blob = seal_v1(&k, b"old state");
        let again = VaultKey::for_blob(b"p", &blob).unwrap_or_else(|_| unreachable!());
        let opened = again.open(&blob, Place::STATE).unwrap_or_else(|_| unreachable!());
        assert_eq!(
            (opened.plain.to_vec(), opened.generation, opened.format),
            (b"old state".to_vec(), 0, 1)
        );
        let mut altered = blob.clone();
        altered[20] ^= 1;
        assert!(k.open(&altered, Place::STATE).is_err());
    }

    #[test]
    fn the_test_setting_is_in_the_header() {
        let k = VaultKey::create(b"p", KdfParams::test_only(), &mut OsRng).unwrap_or_else(|_| unreachable!());
        let blob = k.seal(b"s", Place::STATE, 1, &mut OsRng);
        assert!(is_test_only(&blob));
        assert!(!is_test_only(&key(b"p").seal(b"s", Place::STATE, 1, &mut OsRng)));
        // Clearing the flag (to hide the warning) breaks the blob.
        let mut hidden = blob.clone();
        hidden[23] &= !1;
        assert!(!is_test_only(&hidden));
        assert_eq!(plain(k.open(&hidden, Place::STATE)), Err(VaultError::Unauthentic));
        let again = VaultKey::for_blob(b"p", &hidden).unwrap_or_else(|_| unreachable!());
        assert_eq!(plain(again.open(&hidden, Place::STATE)), Err(VaultError::Unauthentic));
    }

    #[test]
    fn truncation_and_garbage_are_detected() {
        let k = key(b"p");
        let blob = k.seal(b"state", Place::STATE, 1, &mut OsRng);
        assert_eq!(
            plain(k.open(&blob[..blob.len() - 1], Place::STATE)),
            Err(VaultError::Unauthentic)
        );
        assert_eq!(plain(k.open(&blob[..10], Place::STATE)), Err(VaultError::NotAVault));
        assert!(VaultKey::for_blob(b"p", b"not a vault at all, not even close......").is_err());
    }

    #[test]
    fn a_header_asking_for_huge_kdf_costs_is_refused_before_deriving() {
        let k = key(b"p");
        for mut blob in [k.seal(b"state", Place::STATE, 1, &mut OsRng), seal_v1(&k, b"state")] {
            blob[8..12].copy_from_slice(&u32::MAX.to_be_bytes());
            assert_eq!(VaultKey::for_blob(b"p", &blob).err(), Some(VaultError::BadParams));
        }
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_blobs_never_panic(b in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200)) {
            // Only headers with cheap parameters reach the KDF; others are refused first.
            let _ = parse_header(&b);
            let _ = key(b"p").open(&b, Place::STATE);
        }
    }

    #[test]
    fn a_vault_of_a_newer_format_says_to_upgrade() {
        let k = key(b"pw");
        let mut blob = k.seal(b"state", Place::STATE, 1, &mut OsRng);
        blob[7] = b'3';
        assert_eq!(VaultKey::for_blob(b"pw", &blob).err(), Some(VaultError::Newer('3')));
        assert!(VaultError::Newer('3').to_string().contains("upgrade backchannel"));
        blob[7] = b'x';
        assert_eq!(VaultKey::for_blob(b"pw", &blob).err(), Some(VaultError::NotAVault));
    }
}

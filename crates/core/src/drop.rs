//! Drop boxes: a public address to which anyone can send an anonymous,
//! sealed letter, with an optional way for the owner to reply.
//!
//! ```text
//! address  = "bc-drop:" || base32(body || checksum)               (lowercase, no padding)
//! body     = version (1) = 1 | drop mailbox address (relay, send capability, seal key)
//!            | owner key (u16 length = 1216 | X-Wing public key) | pow_bits (1, at most 32)
//! checksum = first 4 bytes of SHA-256("backchannel/v1/drop" || body)
//!
//! receipt  = "bc-receipt:" || base32(body || checksum)            (lowercase, no padding)
//! body     = version (1) = 1 | reply mailbox address | receive id (32)
//!            | recipient secret (32) | reply key (32)
//! checksum = first 4 bytes of SHA-256("backchannel/v1/receipt" || body)
//!
//! sealed letter = version (1) = 1 | enc (1120) | ciphertext (letter + 16)
//! (enc, ciphertext) = HPKE base mode, single shot (RFC 9180): KEM X-Wing draft-06 (0x647a),
//!            KDF HKDF-SHA256, AEAD ChaCha20-Poly1305; pkR = owner key,
//!            info = "backchannel/v1/drop-letter", aad = SHA-256(drop mailbox send capability)
//! letter   = text (u32 length, UTF-8, at most 64 KiB)
//!            | file: 0 | 1 name (u16 length, UTF-8, 1..255 bytes) data (u32 length, at most 8 MiB)
//!            | reply: 0 | 1 reply mailbox address | reply key (32)
//!            | zero padding to the next multiple of 256 bytes (fewer than 256)
//!
//! sealed reply = version (1) = 1 | nonce (24) | XChaCha20-Poly1305(reply key, nonce,
//!            aad = "backchannel/v1/drop-reply", reply) (reply + 16)
//! reply    = text (u32 length, UTF-8) | zero padding to the next multiple of 256 bytes
//! ```
//!
//! The owner publishes the address; a source seals a letter to the owner's
//! X-Wing key and delivers it into the drop mailbox like any envelope, so the
//! relay sees a send capability every holder of the address knows and bytes
//! of a padded length, and cannot tell one source from another. The owner
//! learns only what the letter says: it carries no sender key or identity.
//! For a reply the source makes a fresh mailbox and a fresh reply key for
//! each letter and keeps them as a [`Receipt`], so replies link only to that
//! one letter. The letter's AEAD binds the digest of the drop mailbox's send
//! capability, so a letter cannot be moved from one drop box to another
//! that shares the owner key.
//!
//! HPKE's encapsulation draws its randomness from hpke-rs's own OS-seeded
//! generator (as openmls does inside MLS); everything else comes from the
//! caller's RNG.

use std::fmt;

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use hpke_rs::{Hpke, HpkePrivateKey, HpkePublicKey, Mode};
use hpke_rs_crypto::types::{AeadAlgorithm, KdfAlgorithm, KemAlgorithm};
use hpke_rs_libcrux::HpkeLibcrux;
use rand_core::CryptoRngCore;
use sha2::{Digest, Sha256};
use thiserror::Error;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::codec::{DecodeError, Reader, Writer};
use crate::mailbox::{MailboxAddress, MailboxKeys};
// File names follow the channel's rules: one definition of a name safe to write.
pub use crate::message::{valid_file_name, MAX_FILE_NAME};
use crate::relay_address::RelayAddress;

/// Prefix of every drop box address.
pub const DROP_PREFIX: &str = "bc-drop:";
/// Prefix of every receipt.
pub const RECEIPT_PREFIX: &str = "bc-receipt:";
/// Default proof-of-work difficulty a drop box demands per envelope (the
/// relay enforces it).
pub const DEFAULT_POW_BITS: u8 = 20;
/// Highest proof-of-work difficulty an address may demand.
pub const MAX_POW_BITS: u8 = 32;
/// Longest letter text, in bytes.
pub const MAX_LETTER_TEXT: usize = 64 * 1024;
/// Longest file attached to a letter, in bytes.
pub const MAX_LETTER_FILE: usize = 8 * 1024 * 1024;
/// Length of an X-Wing public key (the owner key).
pub const OWNER_KEY_LEN: usize = 1216;
/// Length of an X-Wing encapsulation (the `enc` of a sealed letter).
pub const ENC_LEN: usize = 1120;
/// Letters and replies are padded to a multiple of this many bytes.
pub const PAD: usize = 256;
const TAG_LEN: usize = 16;
const NONCE_LEN: usize = 24;
/// What a sealed letter adds to its padded plaintext: version, enc, tag.
pub const LETTER_OVERHEAD: usize = 1 + ENC_LEN + TAG_LEN;
/// What a sealed reply adds to its padded plaintext: version, nonce, tag.
pub const REPLY_OVERHEAD: usize = 1 + NONCE_LEN + TAG_LEN;

const VERSION: u8 = 1;
const ADDRESS_CONTEXT: &[u8] = b"backchannel/v1/drop";
const RECEIPT_CONTEXT: &[u8] = b"backchannel/v1/receipt";
const LETTER_INFO: &[u8] = b"backchannel/v1/drop-letter";
const REPLY_AAD: &[u8] = b"backchannel/v1/drop-reply";

/// Largest padded letter plaintext: every field at its longest.
const MAX_LETTER_PLAIN: usize = {
    let mailbox = 32 + 2 + 255 + 2 + 32 + 32;
    let n = 4 + MAX_LETTER_TEXT + 1 + 2 + MAX_FILE_NAME + 4 + MAX_LETTER_FILE + 1 + mailbox + 32;
    n.div_ceil(PAD) * PAD
};
/// Largest sealed letter [`open_letter`] accepts.
pub const MAX_SEALED_LETTER: usize = LETTER_OVERHEAD + MAX_LETTER_PLAIN;

/// Something about a drop box address, receipt, letter or reply is wrong.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum DropError {
    /// The text does not start with `bc-drop:`.
    #[error("this is not a drop box address: drop box addresses start with \"bc-drop:\"")]
    NotAnAddress,
    /// The text does not start with `bc-receipt:`.
    #[error("this is not a receipt: receipts start with \"bc-receipt:\"")]
    NotAReceipt,
    /// The text is damaged (bad characters, checksum or structure).
    #[error("the line is damaged; copy the whole line again")]
    Damaged,
    /// A newer version of backchannel made it.
    #[error("it was made by a newer version of backchannel; upgrade to read it")]
    UnknownVersion,
    /// The keys a relay handed over for a short address are not the ones it names.
    #[error(
        "the relay handed over keys that are not the ones this short address names: refused, and nothing \
         was sent (the relay, or someone in between, changed them; ask the owner for the long address)"
    )]
    BundleMismatch,
    /// The letter's text or file is longer than a letter may carry.
    #[error("the letter is too large: it may hold at most 64 KiB of text and a file of at most 8 MiB")]
    TooLarge,
    /// Authentication failed: not sealed for this drop box or reply key, or
    /// modified on the way.
    #[error(
        "the letter or reply failed authentication: it was not sealed for this drop box or reply, \
         or it was modified on the way"
    )]
    Unauthentic,
    /// Opened, but what is inside is not a well-formed letter or reply.
    #[error("the letter or reply is malformed: the software that sent it is broken or hostile")]
    Malformed,
    /// The attached file's name is not a plain file name.
    #[error(
        "the attached file's name must be 1 to 255 bytes without '/', '\\' or control characters, \
         and not \".\" or \"..\"; rename the file and try again"
    )]
    BadFileName,
    /// The HPKE library refused an operation.
    #[error("a cryptographic operation failed: {0}")]
    Crypto(String),
}

pub(crate) fn hpke() -> Hpke<HpkeLibcrux> {
    Hpke::new(
        Mode::Base,
        KemAlgorithm::XWingDraft06,
        KdfAlgorithm::HkdfSha256,
        AeadAlgorithm::ChaCha20Poly1305,
    )
}

/// The owner's X-Wing key pair. The secret is the 32-byte input of HPKE's
/// `DeriveKeyPair`; it is zeroized on drop and is all that is serialized.
#[derive(Clone)]
pub struct DropKeys {
    seed: [u8; 32],
    public: Vec<u8>,
}

impl Drop for DropKeys {
    fn drop(&mut self) {
        self.seed.zeroize();
    }
}

impl fmt::Debug for DropKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DropKeys(..)")
    }
}

impl DropKeys {
    /// A fresh key pair.
    pub fn generate(rng: &mut impl CryptoRngCore) -> Result<Self, DropError> {
        let mut seed = Zeroizing::new([0u8; 32]);
        rng.fill_bytes(&mut seed[..]);
        Self::from_seed(*seed)
    }

    /// The key pair HPKE's `DeriveKeyPair` makes from `seed`. Use
    /// [`DropKeys::generate`] unless a fixed key is needed (tests, fuzzing).
    pub fn from_seed(seed: [u8; 32]) -> Result<Self, DropError> {
        let mut keys = Self {
            seed,
            public: Vec::new(),
        };
        let (_, public) = keys.pair()?;
        if public.as_slice().len() != OWNER_KEY_LEN {
            return Err(DropError::Crypto(
                "X-Wing made a public key of an unexpected length".into(),
            ));
        }
        keys.public = public.as_slice().to_vec();
        Ok(keys)
    }

    /// The public key (X-Wing, [`OWNER_KEY_LEN`] bytes) that goes into the
    /// drop box address.
    pub fn public(&self) -> &[u8] {
        &self.public
    }

    pub(crate) fn pair(&self) -> Result<(HpkePrivateKey, HpkePublicKey), DropError> {
        hpke()
            .derive_key_pair(&self.seed)
            .map(|p| p.into_keys())
            .map_err(|e| DropError::Crypto(e.to_string()))
    }
}

impl serde::Serialize for DropKeys {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_newtype_struct("DropKeys", &self.seed)
    }
}

impl<'de> serde::Deserialize<'de> for DropKeys {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(serde::Deserialize)]
        #[serde(rename = "DropKeys")]
        struct Seed([u8; 32]);
        let mut seed = Seed::deserialize(d)?;
        let keys = DropKeys::from_seed(seed.0).map_err(serde::de::Error::custom);
        seed.0.zeroize();
        keys
    }
}

/// What `drop create` prints: where letters go and how to seal them.
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DropAddress {
    /// The drop mailbox: letters are delivered into it.
    pub mailbox: MailboxAddress,
    /// The owner's X-Wing public key ([`OWNER_KEY_LEN`] bytes).
    pub owner_key: Vec<u8>,
    /// Leading zero bits of proof of work the relay demands per envelope.
    pub pow_bits: u8,
}

impl fmt::Debug for DropAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DropAddress")
            .field("pow_bits", &self.pow_bits)
            .finish_non_exhaustive()
    }
}

fn checksum(context: &[u8], body: &[u8]) -> [u8; 4] {
    let d = Sha256::new().chain_update(context).chain_update(body).finalize();
    [d[0], d[1], d[2], d[3]]
}

fn to_line(prefix: &str, context: &[u8], body: &[u8]) -> String {
    let mut b = Zeroizing::new(Vec::with_capacity(body.len() + 4));
    b.extend_from_slice(body);
    b.extend_from_slice(&checksum(context, body));
    format!(
        "{prefix}{}",
        data_encoding::BASE32_NOPAD.encode(&b).to_ascii_lowercase()
    )
}

/// The checked body of a line; its version byte has been checked too.
fn from_line(text: &str, prefix: &str, context: &[u8], not_it: DropError) -> Result<Zeroizing<Vec<u8>>, DropError> {
    let body = checked_line(text, prefix, context, not_it)?;
    if body[0] != VERSION {
        return Err(DropError::UnknownVersion);
    }
    Ok(body)
}

/// The body of a line whose checksum holds (at least one byte: its version).
fn checked_line(text: &str, prefix: &str, context: &[u8], not_it: DropError) -> Result<Zeroizing<Vec<u8>>, DropError> {
    let text = text.trim();
    let rest = text
        .get(..prefix.len())
        .filter(|p| p.eq_ignore_ascii_case(prefix))
        .and_then(|_| text.get(prefix.len()..))
        .ok_or(not_it)?;
    let bytes = Zeroizing::new(
        data_encoding::BASE32_NOPAD
            .decode(rest.to_ascii_uppercase().as_bytes())
            .map_err(|_| DropError::Damaged)?,
    );
    if bytes.len() < 5 {
        return Err(DropError::Damaged);
    }
    let (body, sum) = bytes.split_at(bytes.len() - 4);
    if checksum(context, body) != sum {
        return Err(DropError::Damaged);
    }
    Ok(Zeroizing::new(body.to_vec()))
}

fn damaged(_: DecodeError) -> DropError {
    DropError::Damaged
}

impl DropAddress {
    /// The one-line text form.
    pub fn to_text(&self) -> String {
        to_line(DROP_PREFIX, ADDRESS_CONTEXT, &self.bundle())
    }

    /// Parses the text form (attacker input).
    pub fn from_text(text: &str) -> Result<Self, DropError> {
        let body = from_line(text, DROP_PREFIX, ADDRESS_CONTEXT, DropError::NotAnAddress)?;
        Self::from_bundle(&body)
    }
}

/// The version byte of a short drop address ([`ShortDropAddress`]).
const SHORT_VERSION: u8 = 2;

/// The name a relay keeps a bundle under (`frame::Request::Publish`) when the name must
/// prove the bundle: the first 16 bytes of SHA-256("backchannel/v1/bundle" || bundle).
pub fn bundle_name(bundle: &[u8]) -> [u8; 16] {
    let d = Sha256::new()
        .chain_update(b"backchannel/v1/bundle")
        .chain_update(bundle)
        .finalize();
    let mut name = [0u8; 16];
    name.copy_from_slice(&d[..16]);
    name
}

impl DropAddress {
    /// What the relay keeps for the short address ([`ShortDropAddress`]): the body of the
    /// long line.
    pub fn bundle(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.u8(VERSION);
        self.mailbox.encode(&mut w);
        w.bytes16(&self.owner_key).u8(self.pow_bits);
        w.into_vec()
    }

    /// Reads a bundle (attacker input: the relay hands it over).
    fn from_bundle(body: &[u8]) -> Result<Self, DropError> {
        if body.first() != Some(&VERSION) {
            return Err(DropError::Damaged);
        }
        let mut r = Reader::new(&body[1..]);
        let mailbox = MailboxAddress::decode(&mut r).map_err(damaged)?;
        let owner_key = r.bytes16().map_err(damaged)?;
        let pow_bits = r.u8().map_err(damaged)?;
        r.finish().map_err(damaged)?;
        if owner_key.len() != OWNER_KEY_LEN || pow_bits > MAX_POW_BITS {
            return Err(DropError::Damaged);
        }
        Ok(Self {
            mailbox,
            owner_key: owner_key.to_vec(),
            pow_bits,
        })
    }
}

/// A drop box address short enough for a business card (at most 120 characters for a
/// host of up to 30): where the relay is, the first 16 bytes of its PIN, and the name of
/// the drop box's keys, which the sender fetches from the relay (`frame::Request::Bundle`)
/// and checks against the name ([`bundle_name`]).
///
/// ```text
/// bc-drop: || base32(body || first 4 bytes of SHA-256("backchannel/v1/drop-address" || body))
/// body = version (1) = 2 | PIN (first 16 bytes) | host (u8 length) | port (u16) | name (16)
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShortDropAddress {
    /// The first 16 bytes of the relay's PIN.
    pub pin_prefix: [u8; 16],
    /// The relay's host.
    pub host: String,
    /// Its port.
    pub port: u16,
    /// The name of the drop box's keys at the relay.
    pub name: [u8; 16],
}

impl ShortDropAddress {
    /// The short address of `address`.
    pub fn of(address: &DropAddress) -> Self {
        let relay = &address.mailbox.relay;
        let mut pin_prefix = [0u8; 16];
        pin_prefix.copy_from_slice(&relay.pin[..16]);
        Self {
            pin_prefix,
            host: relay.host.clone(),
            port: relay.port,
            name: bundle_name(&address.bundle()),
        }
    }

    /// The one-line text form.
    pub fn to_text(&self) -> String {
        let mut w = Writer::new();
        w.u8(SHORT_VERSION).put(&self.pin_prefix);
        crate::relay_address::RelayAddress {
            pin: [0; 32],
            host: self.host.clone(),
            port: self.port,
        }
        .encode_place(&mut w);
        w.put(&self.name);
        to_line(DROP_PREFIX, ADDRESS_CONTEXT, &w.into_vec())
    }

    /// The drop box's address from the bundle the relay handed over (attacker input),
    /// refused unless it is the one this address names, at a relay whose PIN starts as
    /// this address says.
    pub fn check(&self, bundle: &[u8]) -> Result<DropAddress, DropError> {
        if bundle_name(bundle) != self.name {
            return Err(DropError::BundleMismatch);
        }
        let address = DropAddress::from_bundle(bundle)?;
        if address.mailbox.relay.pin[..16] != self.pin_prefix {
            return Err(DropError::BundleMismatch);
        }
        Ok(address)
    }
}

/// A drop box address as a source types it: the long line, or a short one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DropLine {
    /// The whole address (`drop address --long`).
    Full(DropAddress),
    /// A short address: the keys are fetched from the relay.
    Short(ShortDropAddress),
}

impl DropLine {
    /// Parses either form (attacker input).
    pub fn from_text(text: &str) -> Result<Self, DropError> {
        match DropAddress::from_text(text) {
            Err(DropError::UnknownVersion) => {}
            other => return other.map(DropLine::Full),
        }
        let bytes = checked_line(text, DROP_PREFIX, ADDRESS_CONTEXT, DropError::NotAnAddress)?;
        let mut r = Reader::new(&bytes);
        if r.u8().map_err(damaged)? != SHORT_VERSION {
            return Err(DropError::UnknownVersion);
        }
        let pin_prefix = r.array().map_err(damaged)?;
        let (host, port) = crate::relay_address::RelayAddress::decode_place(&mut r).map_err(damaged)?;
        let name = r.array().map_err(damaged)?;
        r.finish().map_err(damaged)?;
        Ok(DropLine::Short(ShortDropAddress {
            pin_prefix,
            host,
            port,
            name,
        }))
    }
}

/// The symmetric key under which the owner seals replies to one letter.
#[derive(Clone, PartialEq, Eq, Zeroize, ZeroizeOnDrop, serde::Serialize, serde::Deserialize)]
pub struct ReplyKey(pub [u8; 32]);

impl fmt::Debug for ReplyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ReplyKey(..)")
    }
}

impl ReplyKey {
    /// A fresh key.
    pub fn generate(rng: &mut impl CryptoRngCore) -> Self {
        let mut k = ReplyKey([0; 32]);
        rng.fill_bytes(&mut k.0);
        k
    }
}

/// Where and how the owner can answer: a fresh mailbox the source made, and
/// a fresh symmetric key.
#[derive(Clone, PartialEq, Eq, Debug, serde::Serialize, serde::Deserialize)]
pub struct ReplyTo {
    /// The reply mailbox (the source holds its keys).
    pub mailbox: MailboxAddress,
    /// Seals the replies.
    pub key: ReplyKey,
}

/// A file attached to a letter.
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LetterFile {
    /// A plain file name (see [`valid_file_name`]).
    pub name: String,
    /// The contents, at most [`MAX_LETTER_FILE`] bytes.
    pub data: Vec<u8>,
}

impl fmt::Debug for LetterFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LetterFile({} bytes)", self.data.len())
    }
}

/// The plaintext of a letter.
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Letter {
    /// What the source writes, at most [`MAX_LETTER_TEXT`] bytes.
    pub text: String,
    /// An attached file.
    pub file: Option<LetterFile>,
    /// How the owner can reply, if the source wants a reply.
    pub reply: Option<ReplyTo>,
}

impl fmt::Debug for Letter {
    // The text and the file name are plaintext: Debug shows sizes only.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Letter")
            .field("text", &format_args!("{} bytes", self.text.len()))
            .field("file", &self.file)
            .field("reply", &self.reply)
            .finish()
    }
}

fn pad(w: &mut Vec<u8>) {
    let n = w.len().div_ceil(PAD).max(1) * PAD;
    w.resize(n, 0);
}

/// Checks the rest of `r` is canonical padding: zeros, fewer than [`PAD`]
/// of them, ending the plaintext at a multiple of [`PAD`].
fn check_padding(total: usize, mut r: Reader<'_>) -> Result<(), DropError> {
    let n = r.remaining();
    if !total.is_multiple_of(PAD) || n >= PAD || !r.take_zero_padding() {
        return Err(DropError::Malformed);
    }
    Ok(())
}

fn encode_letter(letter: &Letter) -> Result<Zeroizing<Vec<u8>>, DropError> {
    if letter.text.len() > MAX_LETTER_TEXT {
        return Err(DropError::TooLarge);
    }
    let mut w = Writer::with_capacity(letter.text.len() + letter.file.as_ref().map_or(0, |f| f.data.len()) + 512);
    w.bytes32(letter.text.as_bytes());
    match &letter.file {
        None => w.u8(0),
        Some(f) => {
            if f.data.len() > MAX_LETTER_FILE {
                return Err(DropError::TooLarge);
            }
            if !valid_file_name(&f.name) {
                return Err(DropError::BadFileName);
            }
            w.u8(1).bytes16(f.name.as_bytes()).bytes32(&f.data)
        }
    };
    match &letter.reply {
        None => w.u8(0),
        Some(to) => {
            w.u8(1);
            to.mailbox.encode(&mut w);
            w.put(&to.key.0)
        }
    };
    let mut plain = Zeroizing::new(w.into_vec());
    pad(&mut plain);
    Ok(plain)
}

fn decode_letter(plain: &[u8]) -> Result<Letter, DropError> {
    let malformed = |_: DecodeError| DropError::Malformed;
    let mut r = Reader::new(plain);
    let n = r.u32().map_err(malformed)? as usize;
    if n > MAX_LETTER_TEXT {
        return Err(DropError::TooLarge);
    }
    let text = String::from_utf8(r.take(n).map_err(malformed)?.to_vec()).map_err(|_| DropError::Malformed)?;
    let file = match r.u8().map_err(malformed)? {
        0 => None,
        1 => {
            let name = r.string16().map_err(malformed)?;
            if !valid_file_name(&name) {
                return Err(DropError::BadFileName);
            }
            let n = r.u32().map_err(malformed)? as usize;
            if n > MAX_LETTER_FILE {
                return Err(DropError::TooLarge);
            }
            Some(LetterFile {
                name,
                data: r.take(n).map_err(malformed)?.to_vec(),
            })
        }
        _ => return Err(DropError::Malformed),
    };
    let reply = match r.u8().map_err(malformed)? {
        0 => None,
        1 => Some(ReplyTo {
            mailbox: MailboxAddress::decode(&mut r).map_err(malformed)?,
            key: ReplyKey(r.array().map_err(malformed)?),
        }),
        _ => return Err(DropError::Malformed),
    };
    check_padding(plain.len(), r)?;
    Ok(Letter { text, file, reply })
}

/// Seals `letter` for the drop box at `to`: HPKE to the owner key, bound to
/// the drop mailbox. The result is the payload of a
/// [`PayloadKind::Letter`](crate::envelope::PayloadKind::Letter) delivered
/// into `to.mailbox`.
///
/// The KEM's randomness comes from hpke-rs's own generator; `rng` is kept in
/// the signature so callers need not change if that becomes injectable.
pub fn seal_letter(to: &DropAddress, letter: &Letter, _rng: &mut impl CryptoRngCore) -> Result<Vec<u8>, DropError> {
    if to.owner_key.len() != OWNER_KEY_LEN {
        return Err(DropError::Crypto("the drop box key has the wrong length".into()));
    }
    let plain = encode_letter(letter)?;
    let (enc, ct) = hpke()
        .seal(
            &HpkePublicKey::new(to.owner_key.clone()),
            LETTER_INFO,
            &to.mailbox.send.digest(),
            &plain,
            None,
            None,
            None,
        )
        .map_err(|e| DropError::Crypto(e.to_string()))?;
    if enc.len() != ENC_LEN {
        return Err(DropError::Crypto(
            "X-Wing made an encapsulation of an unexpected length".into(),
        ));
    }
    let mut out = Vec::with_capacity(1 + enc.len() + ct.len());
    out.push(VERSION);
    out.extend_from_slice(&enc);
    out.extend_from_slice(&ct);
    Ok(out)
}

/// Opens a letter that arrived in the drop mailbox whose send capability
/// has digest `drop_send_digest` (attacker input).
pub fn open_letter(keys: &DropKeys, drop_send_digest: &[u8; 32], sealed: &[u8]) -> Result<Letter, DropError> {
    match sealed.first() {
        None => return Err(DropError::Malformed),
        Some(&VERSION) => {}
        Some(_) => return Err(DropError::UnknownVersion),
    }
    if sealed.len() < LETTER_OVERHEAD + PAD {
        return Err(DropError::Malformed);
    }
    if sealed.len() > MAX_SEALED_LETTER {
        return Err(DropError::TooLarge);
    }
    let (enc, ct) = sealed[1..].split_at(ENC_LEN);
    let (secret, _) = keys.pair()?;
    let plain = Zeroizing::new(
        hpke()
            .open(enc, &secret, LETTER_INFO, drop_send_digest, ct, None, None, None)
            .map_err(|_| DropError::Unauthentic)?,
    );
    decode_letter(&plain)
}

/// What the source keeps to read a reply: the reply mailbox's keys (it can
/// open that mailbox at the relay) and the reply key.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Receipt {
    /// The reply mailbox.
    pub mailbox: MailboxKeys,
    /// Opens the replies.
    pub key: ReplyKey,
}

impl Receipt {
    /// A fresh reply mailbox on `relay` and a fresh reply key, for one letter.
    pub fn generate(relay: RelayAddress, rng: &mut impl CryptoRngCore) -> Self {
        Self {
            mailbox: MailboxKeys::generate(relay, rng),
            key: ReplyKey::generate(rng),
        }
    }

    /// What goes into the letter.
    pub fn reply_to(&self) -> ReplyTo {
        ReplyTo {
            mailbox: self.mailbox.address.clone(),
            key: self.key.clone(),
        }
    }

    /// The one-line text form. It is a secret: whoever holds it reads the
    /// replies.
    pub fn to_text(&self) -> String {
        let mut w = Writer::new();
        w.u8(VERSION);
        self.mailbox.encode(&mut w);
        w.put(&self.key.0);
        let body = Zeroizing::new(w.into_vec());
        to_line(RECEIPT_PREFIX, RECEIPT_CONTEXT, &body)
    }

    /// Parses the text form (attacker input).
    pub fn from_text(text: &str) -> Result<Self, DropError> {
        let body = from_line(text, RECEIPT_PREFIX, RECEIPT_CONTEXT, DropError::NotAReceipt)?;
        let mut r = Reader::new(&body[1..]);
        let mailbox = MailboxKeys::decode(&mut r).map_err(damaged)?;
        let key = ReplyKey(r.array().map_err(damaged)?);
        r.finish().map_err(damaged)?;
        Ok(Self { mailbox, key })
    }
}

/// Seals a reply under the reply key of one letter. The result is the
/// payload of a [`PayloadKind::Reply`](crate::envelope::PayloadKind::Reply)
/// delivered into the letter's reply mailbox.
pub fn seal_reply(key: &ReplyKey, text: &str, rng: &mut impl CryptoRngCore) -> Vec<u8> {
    let mut w = Writer::with_capacity(text.len() + PAD);
    w.bytes32(text.as_bytes());
    let mut plain = Zeroizing::new(w.into_vec());
    pad(&mut plain);
    let mut nonce = [0u8; NONCE_LEN];
    rng.fill_bytes(&mut nonce);
    // Encryption with a valid key and in-memory buffers fails only past
    // 256 GiB; an error would be a bug in the AEAD crate, and the empty
    // ciphertext then fails to open rather than leak anything.
    let ct = XChaCha20Poly1305::new(key.0.as_ref().into())
        .encrypt(
            XNonce::from_slice(&nonce),
            Payload {
                msg: &plain,
                aad: REPLY_AAD,
            },
        )
        .unwrap_or_default();
    let mut out = Vec::with_capacity(1 + NONCE_LEN + ct.len());
    out.push(VERSION);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&ct);
    out
}

/// Opens a reply that arrived in the reply mailbox (attacker input).
pub fn open_reply(key: &ReplyKey, sealed: &[u8]) -> Result<String, DropError> {
    match sealed.first() {
        None => return Err(DropError::Malformed),
        Some(&VERSION) => {}
        Some(_) => return Err(DropError::UnknownVersion),
    }
    if sealed.len() < REPLY_OVERHEAD + PAD {
        return Err(DropError::Malformed);
    }
    let (nonce, ct) = sealed[1..].split_at(NONCE_LEN);
    let plain = Zeroizing::new(
        XChaCha20Poly1305::new(key.0.as_ref().into())
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: ct,
                    aad: REPLY_AAD,
                },
            )
            .map_err(|_| DropError::Unauthentic)?,
    );
    let mut r = Reader::new(&plain);
    let text = r.bytes32().map_err(|_| DropError::Malformed)?;
    let text = String::from_utf8(text.to_vec()).map_err(|_| DropError::Malformed)?;
    check_padding(plain.len(), r)?;
    Ok(text)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::mailbox::{SealKey, SendCapability};
    use proptest::prelude::*;
    use rand_core::OsRng;
    use std::sync::OnceLock;

    /// Two fixed owner key pairs (deriving one costs an ML-KEM key generation).
    fn owner(i: usize) -> &'static DropKeys {
        static KEYS: OnceLock<[DropKeys; 2]> = OnceLock::new();
        &KEYS.get_or_init(|| {
            [
                DropKeys::from_seed([0xd1; 32]).unwrap(),
                DropKeys::from_seed([0xd2; 32]).unwrap(),
            ]
        })[i]
    }

    fn relay(host: &str) -> RelayAddress {
        RelayAddress {
            pin: [7; 32],
            host: host.into(),
            port: 4433,
        }
    }

    fn address(keys: &DropKeys, send: u8) -> DropAddress {
        DropAddress {
            mailbox: MailboxAddress {
                relay: relay("relay.example"),
                send: SendCapability([send; 32]),
                seal: SealKey([0x5e; 32]),
            },
            owner_key: keys.public().to_vec(),
            pow_bits: DEFAULT_POW_BITS,
        }
    }

    /// A short address fits a business card, reads back, and names its keys only.
    #[test]
    fn a_short_address_is_at_most_120_characters_and_names_its_keys_only() {
        let keys = DropKeys::generate(&mut OsRng).unwrap();
        let mut a = address(&keys, 3);
        a.mailbox.relay.host = "relay-01.operations.example.or".into();
        assert_eq!(a.mailbox.relay.host.len(), 30);
        let short = ShortDropAddress::of(&a);
        let text = short.to_text();
        assert!(text.len() <= 120, "{} characters: {text}", text.len());
        assert!(a.to_text().len() > 1000);
        assert_eq!(DropLine::from_text(&text), Ok(DropLine::Short(short.clone())));
        assert_eq!(
            DropLine::from_text(&text.to_uppercase()),
            Ok(DropLine::Short(short.clone()))
        );
        assert_eq!(DropLine::from_text(&a.to_text()), Ok(DropLine::Full(a.clone())));
        assert_eq!(short.check(&a.bundle()), Ok(a.clone()));
        let mut tampered = a.bundle();
        let last = tampered.len() - 40;
        tampered[last] ^= 1;
        assert_eq!(short.check(&tampered), Err(DropError::BundleMismatch));
        // Another drop box's keys, or the same keys at a relay of another PIN.
        assert_eq!(short.check(&address(&keys, 4).bundle()), Err(DropError::BundleMismatch));
        let mut elsewhere = a.clone();
        elsewhere.mailbox.relay.pin[0] ^= 1;
        let lying = ShortDropAddress {
            name: bundle_name(&elsewhere.bundle()),
            ..short.clone()
        };
        assert_eq!(lying.check(&elsewhere.bundle()), Err(DropError::BundleMismatch));
        assert_eq!(DropLine::from_text("bc-drop:aaaa"), Err(DropError::Damaged));
    }

    fn arb_mailbox() -> impl Strategy<Value = MailboxAddress> {
        (any::<[[u8; 32]; 3]>(), "[a-z0-9.]{1,20}", 1u16..).prop_map(|([pin, send, seal], host, port)| MailboxAddress {
            relay: RelayAddress { pin, host, port },
            send: SendCapability(send),
            seal: SealKey(seal),
        })
    }

    fn arb_file_name() -> impl Strategy<Value = String> {
        "[a-zA-Z0-9 ._()-]{1,40}".prop_filter("plain", |n| valid_file_name(n))
    }

    fn arb_letter() -> impl Strategy<Value = Letter> {
        (
            ".{0,300}",
            proptest::option::of((arb_file_name(), proptest::collection::vec(any::<u8>(), 0..3000))),
            proptest::option::of((arb_mailbox(), any::<[u8; 32]>())),
        )
            .prop_map(|(text, file, reply)| Letter {
                text,
                file: file.map(|(name, data)| LetterFile { name, data }),
                reply: reply.map(|(mailbox, key)| ReplyTo {
                    mailbox,
                    key: ReplyKey(key),
                }),
            })
    }

    fn ok<T, E: fmt::Display>(r: Result<T, E>) -> Result<T, TestCaseError> {
        r.map_err(|e| TestCaseError::fail(e.to_string()))
    }

    proptest! {
        #[test]
        fn addresses_round_trip(
            mailbox in arb_mailbox(),
            owner_key in proptest::collection::vec(any::<u8>(), OWNER_KEY_LEN),
            pow_bits in 0..=MAX_POW_BITS,
        ) {
            let a = DropAddress { mailbox, owner_key, pow_bits };
            let text = a.to_text();
            prop_assert!(text.starts_with(DROP_PREFIX));
            prop_assert!(!text.contains(char::is_whitespace));
            prop_assert_eq!(DropAddress::from_text(&text), Ok(a.clone()));
            prop_assert_eq!(DropAddress::from_text(&format!(" {}\n", text.to_ascii_uppercase().replace("BC-DROP:", DROP_PREFIX))), Ok(a));
        }

        #[test]
        fn any_character_change_in_an_address_is_caught(pos in any::<prop::sample::Index>()) {
            let text = address(owner(0), 1).to_text();
            let i = DROP_PREFIX.len() + pos.index(text.len() - DROP_PREFIX.len());
            let mut chars: Vec<char> = text.chars().collect();
            chars[i] = if chars[i] == 'a' { 'b' } else { 'a' };
            let changed: String = chars.into_iter().collect();
            prop_assert!(DropAddress::from_text(&changed).is_err());
        }

        #[test]
        fn receipts_round_trip(host in "[a-z0-9.]{1,20}") {
            let r = Receipt::generate(relay(&host), &mut OsRng);
            let text = r.to_text();
            prop_assert!(text.starts_with(RECEIPT_PREFIX));
            let back = ok(Receipt::from_text(&text))?;
            prop_assert_eq!(&back.mailbox.address, &r.mailbox.address);
            prop_assert_eq!(back.mailbox.id(), r.mailbox.id());
            prop_assert_eq!(back.mailbox.recipient_public(), r.mailbox.recipient_public());
            prop_assert_eq!(&back.key, &r.key);
            prop_assert_eq!(back.reply_to(), r.reply_to());
            prop_assert_eq!(back.to_text(), text);
        }

        #[test]
        fn letters_round_trip(letter in arb_letter(), send in any::<u8>()) {
            let to = address(owner(0), send);
            let sealed = ok(seal_letter(&to, &letter, &mut OsRng))?;
            prop_assert_eq!((sealed.len() - LETTER_OVERHEAD) % PAD, 0);
            let opened = ok(open_letter(owner(0), &to.mailbox.send.digest(), &sealed))?;
            prop_assert_eq!(opened, letter);
        }

        #[test]
        fn any_flipped_bit_in_a_letter_is_rejected(pos in any::<prop::sample::Index>(), bit in 0u8..8) {
            let to = address(owner(0), 1);
            let letter = Letter { text: "the ledger is in the blue binder".into(), file: None, reply: None };
            let mut sealed = ok(seal_letter(&to, &letter, &mut OsRng))?;
            let i = pos.index(sealed.len());
            sealed[i] ^= 1 << bit;
            let r = open_letter(owner(0), &to.mailbox.send.digest(), &sealed);
            if i == 0 {
                prop_assert_eq!(r, Err(DropError::UnknownVersion));
            } else {
                prop_assert_eq!(r, Err(DropError::Unauthentic));
            }
        }

        #[test]
        fn replies_round_trip(text in ".{0,600}", key in any::<[u8; 32]>()) {
            let key = ReplyKey(key);
            let sealed = seal_reply(&key, &text, &mut OsRng);
            prop_assert_eq!((sealed.len() - REPLY_OVERHEAD) % PAD, 0);
            prop_assert_eq!(ok(open_reply(&key, &sealed))?, text);
        }

        #[test]
        fn any_flipped_bit_in_a_reply_is_rejected(pos in any::<prop::sample::Index>(), bit in 0u8..8) {
            let key = ReplyKey([3; 32]);
            let mut sealed = seal_reply(&key, "thank you; write again on Monday", &mut OsRng);
            let i = pos.index(sealed.len());
            sealed[i] ^= 1 << bit;
            prop_assert!(open_reply(&key, &sealed).is_err());
        }

        #[test]
        fn garbage_never_panics(s in ".{0,300}", b in proptest::collection::vec(any::<u8>(), 0..3000)) {
            let _ = DropAddress::from_text(&s);
            let _ = DropAddress::from_text(&format!("{DROP_PREFIX}{s}"));
            let _ = Receipt::from_text(&s);
            let _ = Receipt::from_text(&format!("{RECEIPT_PREFIX}{s}"));
            let _ = decode_letter(&b);
            let _ = open_reply(&ReplyKey([3; 32]), &b);
            let mut v1 = b.clone();
            v1.insert(0, VERSION);
            let _ = open_reply(&ReplyKey([3; 32]), &v1);
            prop_assert!(open_letter(owner(0), &[1; 32], &b).is_err());
            prop_assert!(open_letter(owner(0), &[1; 32], &v1).is_err());
        }
    }

    #[test]
    fn a_letter_opens_only_with_its_key_and_its_drop_box() {
        let to = address(owner(0), 1);
        let letter = Letter {
            text: "meet at nine".into(),
            file: None,
            reply: None,
        };
        let sealed = seal_letter(&to, &letter, &mut OsRng).unwrap();
        let digest = to.mailbox.send.digest();
        assert_eq!(open_letter(owner(0), &digest, &sealed), Ok(letter));
        assert_eq!(open_letter(owner(1), &digest, &sealed), Err(DropError::Unauthentic));
        let other_box = address(owner(0), 2).mailbox.send.digest();
        assert_eq!(open_letter(owner(0), &other_box, &sealed), Err(DropError::Unauthentic));
    }

    #[test]
    fn a_reply_opens_only_with_its_key() {
        let sealed = seal_reply(&ReplyKey([1; 32]), "received", &mut OsRng);
        assert_eq!(open_reply(&ReplyKey([1; 32]), &sealed).as_deref(), Ok("received"));
        assert_eq!(open_reply(&ReplyKey([2; 32]), &sealed), Err(DropError::Unauthentic));
    }

    #[test]
    fn truncated_or_extended_letters_and_replies_are_rejected() {
        let to = address(owner(0), 1);
        let letter = Letter {
            text: "x".into(),
            file: None,
            reply: None,
        };
        let sealed = seal_letter(&to, &letter, &mut OsRng).unwrap();
        let digest = to.mailbox.send.digest();
        for n in [0, 1, ENC_LEN, sealed.len() - 1] {
            assert!(open_letter(owner(0), &digest, &sealed[..n]).is_err(), "cut at {n}");
        }
        let mut longer = sealed.clone();
        longer.push(0);
        assert_eq!(open_letter(owner(0), &digest, &longer), Err(DropError::Unauthentic));
        let reply = seal_reply(&ReplyKey([1; 32]), "x", &mut OsRng);
        for n in [0, 1, NONCE_LEN + 1, reply.len() - 1] {
            assert!(open_reply(&ReplyKey([1; 32]), &reply[..n]).is_err(), "cut at {n}");
        }
    }

    #[test]
    fn close_lengths_look_the_same() {
        let to = address(owner(0), 1);
        let sealed = |text: &str| {
            let letter = Letter {
                text: text.into(),
                file: None,
                reply: None,
            };
            seal_letter(&to, &letter, &mut OsRng).unwrap().len()
        };
        assert_eq!(sealed(""), LETTER_OVERHEAD + PAD);
        assert_eq!(sealed("a"), sealed(&"a".repeat(PAD - 6)));
        assert_eq!(sealed(&"a".repeat(PAD - 5)), LETTER_OVERHEAD + 2 * PAD);
        let reply = |text: &str| seal_reply(&ReplyKey([1; 32]), text, &mut OsRng).len();
        assert_eq!(reply(""), REPLY_OVERHEAD + PAD);
        assert_eq!(reply("a"), reply(&"a".repeat(PAD - 4)));
    }

    #[test]
    fn largest_letter_round_trips_and_larger_is_refused() {
        let to = address(owner(0), 1);
        let r = Receipt::generate(relay(&"h".repeat(255)), &mut OsRng);
        let mut letter = Letter {
            text: "é".repeat(MAX_LETTER_TEXT / 2),
            file: Some(LetterFile {
                name: "n".repeat(MAX_FILE_NAME),
                data: vec![0xaa; MAX_LETTER_FILE],
            }),
            reply: Some(r.reply_to()),
        };
        let sealed = seal_letter(&to, &letter, &mut OsRng).unwrap();
        assert!(sealed.len() <= MAX_SEALED_LETTER);
        assert!(sealed.len() <= crate::envelope::MAX_PAYLOAD);
        assert_eq!(
            open_letter(owner(0), &to.mailbox.send.digest(), &sealed).as_ref(),
            Ok(&letter)
        );
        letter.text.push('a');
        assert_eq!(seal_letter(&to, &letter, &mut OsRng), Err(DropError::TooLarge));
        letter.text.pop();
        if let Some(f) = letter.file.as_mut() {
            f.data.push(0);
        }
        assert_eq!(seal_letter(&to, &letter, &mut OsRng), Err(DropError::TooLarge));
        let mut too_long = vec![VERSION];
        too_long.resize(MAX_SEALED_LETTER + 1, 0);
        assert_eq!(
            open_letter(owner(0), &to.mailbox.send.digest(), &too_long),
            Err(DropError::TooLarge)
        );
    }

    fn plain_with_file_name(name: &str) -> Vec<u8> {
        let mut w = Writer::new();
        w.bytes32(b"hi").u8(1).bytes16(name.as_bytes()).bytes32(b"data").u8(0);
        let mut v = w.into_vec();
        pad(&mut v);
        v
    }

    #[test]
    fn file_names_that_are_paths_are_refused() {
        let to = address(owner(0), 1);
        for name in [
            "",
            ".",
            "..",
            "../etc/passwd",
            "a/b",
            "/abs",
            "a\\b",
            "nul\0byte",
            "line\nbreak",
            "\u{1b}[31mred",
            &"n".repeat(MAX_FILE_NAME + 1),
        ] {
            assert!(!valid_file_name(name), "{name:?}");
            let letter = Letter {
                text: String::new(),
                file: Some(LetterFile {
                    name: name.into(),
                    data: vec![1],
                }),
                reply: None,
            };
            assert_eq!(
                seal_letter(&to, &letter, &mut OsRng),
                Err(DropError::BadFileName),
                "{name:?}"
            );
            assert_eq!(
                decode_letter(&plain_with_file_name(name)),
                Err(DropError::BadFileName),
                "{name:?}"
            );
        }
        for name in ["report.pdf", "a..b", ".hidden", "notes (2).txt", "résumé.odt"] {
            assert!(valid_file_name(name), "{name:?}");
            assert!(decode_letter(&plain_with_file_name(name)).is_ok(), "{name:?}");
        }
    }

    #[test]
    fn only_canonical_letter_plaintexts_decode() {
        let good = plain_with_file_name("a.txt");
        assert!(decode_letter(&good).is_ok());
        let mut nonzero = good.clone();
        *nonzero.last_mut().unwrap() = 1;
        assert_eq!(decode_letter(&nonzero), Err(DropError::Malformed));
        let mut short = good.clone();
        short.pop();
        assert_eq!(decode_letter(&short), Err(DropError::Malformed));
        let mut extra_block = good.clone();
        extra_block.resize(good.len() + PAD, 0);
        assert_eq!(decode_letter(&extra_block), Err(DropError::Malformed));
        let mut bad_tag = good;
        bad_tag[4 + 2] = 2;
        assert_eq!(decode_letter(&bad_tag), Err(DropError::Malformed));
    }

    #[test]
    fn addresses_with_a_wrong_key_length_or_difficulty_are_damaged() {
        let a = address(owner(0), 1);
        let body = |key: &[u8], pow: u8| {
            let mut w = Writer::new();
            w.u8(VERSION);
            a.mailbox.encode(&mut w);
            w.bytes16(key).u8(pow);
            to_line(DROP_PREFIX, ADDRESS_CONTEXT, &w.into_vec())
        };
        assert_eq!(
            DropAddress::from_text(&body(&a.owner_key, 32)).map(|a| a.pow_bits),
            Ok(32)
        );
        assert_eq!(DropAddress::from_text(&body(&a.owner_key, 33)), Err(DropError::Damaged));
        let key = &a.owner_key[..OWNER_KEY_LEN - 1];
        assert_eq!(DropAddress::from_text(&body(key, 20)), Err(DropError::Damaged));
        let mut w = Writer::new();
        w.u8(2).put(b"from the future");
        let v2 = to_line(DROP_PREFIX, ADDRESS_CONTEXT, &w.into_vec());
        assert_eq!(DropAddress::from_text(&v2), Err(DropError::UnknownVersion));
        assert_eq!(DropAddress::from_text("hello"), Err(DropError::NotAnAddress));
        assert_eq!(DropAddress::from_text("bc-drop:zzzz"), Err(DropError::Damaged));
        assert_eq!(
            Receipt::from_text(&a.to_text()).map(|_| ()),
            Err(DropError::NotAReceipt)
        );
        // A receipt's checksum does not pass for an address, or the reverse.
        let receipt = Receipt::generate(relay("r"), &mut OsRng).to_text();
        let swapped = receipt.replace(RECEIPT_PREFIX, DROP_PREFIX);
        assert_eq!(DropAddress::from_text(&swapped), Err(DropError::Damaged));
    }

    #[test]
    fn a_seal_to_a_bad_key_fails_cleanly() {
        let mut to = address(owner(0), 1);
        let letter = Letter {
            text: "x".into(),
            file: None,
            reply: None,
        };
        to.owner_key.truncate(100);
        assert!(matches!(
            seal_letter(&to, &letter, &mut OsRng),
            Err(DropError::Crypto(_))
        ));
        // Right length, but not an ML-KEM key (coefficients out of range).
        to.owner_key = vec![0xff; OWNER_KEY_LEN];
        assert!(matches!(
            seal_letter(&to, &letter, &mut OsRng),
            Err(DropError::Crypto(_))
        ));
    }

    #[test]
    fn sizes() {
        let keys = DropKeys::generate(&mut OsRng).unwrap();
        assert_eq!(keys.public().len(), OWNER_KEY_LEN);
        // pin 32 | host "relay.example" 2 + 13 | port 2 | send 32 | seal 32 = 113;
        // body 1 + 113 + 2 + 1216 + 1 = 1333; + checksum 4 = 1337 bytes = 2140 base32 characters.
        assert_eq!(address(&keys, 1).to_text().len(), DROP_PREFIX.len() + 2140);
        // body 1 + 113 + 32 + 32 + 32 = 210; + 4 = 214 bytes = 343 characters.
        let r = Receipt::generate(relay("relay.example"), &mut OsRng);
        assert_eq!(r.to_text().len(), RECEIPT_PREFIX.len() + 343);
        assert_eq!(LETTER_OVERHEAD, 1137);
        assert_eq!(REPLY_OVERHEAD, 41);
        assert_eq!(MAX_SEALED_LETTER, 8_456_049);
    }

    #[test]
    fn drop_keys_survive_postcard_and_keep_opening_letters() {
        let keys = DropKeys::generate(&mut OsRng).unwrap();
        let bytes = postcard::to_allocvec(&keys).unwrap();
        assert_eq!(bytes.len(), 32);
        let back: DropKeys = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(back.public(), keys.public());
        let to = address(&keys, 9);
        let letter = Letter {
            text: "still here".into(),
            file: None,
            reply: None,
        };
        let sealed = seal_letter(&to, &letter, &mut OsRng).unwrap();
        assert_eq!(open_letter(&back, &to.mailbox.send.digest(), &sealed), Ok(letter));
        assert_eq!(DropKeys::from_seed([0xd1; 32]).unwrap().public(), owner(0).public());
    }

    #[test]
    fn debug_hides_secrets() {
        let keys = owner(0);
        let r = Receipt::generate(relay("relay.example"), &mut OsRng);
        let letter = Letter {
            text: "secret plan".into(),
            file: Some(LetterFile {
                name: "plan.pdf".into(),
                data: vec![1, 2, 3],
            }),
            reply: Some(r.reply_to()),
        };
        let s = format!("{keys:?} {:?} {r:?} {letter:?} {:?}", r.key, address(keys, 1));
        assert_eq!(
            s,
            "DropKeys(..) ReplyKey(..) Receipt { mailbox: MailboxKeys { .. }, key: ReplyKey(..) } \
             Letter { text: 11 bytes, file: Some(LetterFile(3 bytes)), \
             reply: Some(ReplyTo { mailbox: MailboxAddress { .. }, key: ReplyKey(..) }) } \
             DropAddress { pow_bits: 20, .. }"
        );
    }
}

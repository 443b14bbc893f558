//! Invites: one line a person can paste, starting `bc-invite:`.
//!
//! ```text
//! invite = "bc-invite:" || base32(body || checksum)      (lowercase, no padding)
//! body   = version (1) = 2 | mailbox address (relay, send capability, seal key)
//!          | expires_at (u64, Unix seconds) | inviter identity key (32) | ciphersuite (u16)
//! checksum = first 4 bytes of SHA-256("backchannel/v1/invite" || body)
//! ```
//!
//! The mailbox is a fresh one the inviter made for this invite alone; its
//! seal key is the invite secret. Nothing in an invite is a long-term
//! secret: it lets the holder ask to join (the inviter's client admits the
//! request if the invite is unexpired and has uses left) and nothing else.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Nonce};
use hkdf::Hkdf;
use sha2::{Digest, Sha256};
use thiserror::Error;

use crate::codec::{DecodeError, Reader, Writer};
use crate::mailbox::MailboxAddress;
use crate::relay_address::RelayAddress;

/// Prefix of every invite.
pub const PREFIX: &str = "bc-invite:";
const VERSION: u8 = 2;

/// A decoded invite.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Invite {
    /// Where join requests go.
    pub mailbox: MailboxAddress,
    /// When the invite stops being honoured (Unix seconds).
    pub expires_at: u64,
    /// The inviter's identity key: the joiner checks the welcome comes from it.
    pub inviter_key: [u8; 32],
    /// The channel's MLS ciphersuite.
    pub ciphersuite: u16,
}

/// An invite could not be read.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum InviteError {
    /// It does not start with `bc-invite:`.
    #[error(
        "this is not an invite: invites start with \"bc-invite:\", and codes read aloud with their number (like 7-orbit-velvet-harbor)"
    )]
    NotAnInvite,
    /// The text is damaged (bad characters, checksum or structure).
    #[error("the invite is damaged; copy the whole line again or ask for a new invite")]
    Damaged,
    /// A newer version of backchannel made it.
    #[error("the invite was made by a newer version of backchannel; upgrade to use it")]
    UnknownVersion,
    /// What the relay holds for a short invite line does not open with it.
    #[error("the relay handed over an invite that this line does not open: refused (the relay, or someone in between, changed it); ask for a new invite")]
    BundleMismatch,
}

impl From<DecodeError> for InviteError {
    fn from(_: DecodeError) -> Self {
        InviteError::Damaged
    }
}

fn checksum(body: &[u8]) -> [u8; 4] {
    let d = Sha256::new()
        .chain_update(b"backchannel/v1/invite")
        .chain_update(body)
        .finalize();
    [d[0], d[1], d[2], d[3]]
}

/// `body || checksum` as a line.
fn to_line(mut body: Vec<u8>) -> String {
    let sum = checksum(&body);
    body.extend_from_slice(&sum);
    format!(
        "{PREFIX}{}",
        data_encoding::BASE32_NOPAD.encode(&body).to_ascii_lowercase()
    )
}

impl Invite {
    /// The one-line text form.
    pub fn to_text(&self) -> String {
        to_line(self.body())
    }

    /// The body of the long line.
    fn body(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.u8(VERSION);
        self.mailbox.encode(&mut w);
        w.u64(self.expires_at).put(&self.inviter_key).u16(self.ciphersuite);
        w.into_vec()
    }

    /// Reads a long line's body (its version checked).
    fn from_body(body: &[u8]) -> Result<Self, InviteError> {
        let mut r = Reader::new(body);
        if r.u8()? != VERSION {
            return Err(InviteError::UnknownVersion);
        }
        let invite = Invite {
            mailbox: MailboxAddress::decode(&mut r)?,
            expires_at: r.u64()?,
            inviter_key: r.array()?,
            ciphersuite: r.u16()?,
        };
        r.finish()?;
        Ok(invite)
    }

    /// Parses the text form (attacker input), in any case: a QR code carries it in upper
    /// case (its alphanumeric mode, the densest).
    pub fn from_text(text: &str) -> Result<Self, InviteError> {
        Self::from_body(&checked_body(text)?)
    }
}

/// The body of an invite line whose checksum holds.
fn checked_body(text: &str) -> Result<Vec<u8>, InviteError> {
    {
        let text = text.trim();
        let rest = text
            .get(..PREFIX.len())
            .filter(|p| p.eq_ignore_ascii_case(PREFIX))
            .and_then(|_| text.get(PREFIX.len()..))
            .ok_or(InviteError::NotAnInvite)?;
        let bytes = data_encoding::BASE32_NOPAD
            .decode(rest.to_ascii_uppercase().as_bytes())
            .map_err(|_| InviteError::Damaged)?;
        if bytes.len() < 5 {
            return Err(InviteError::Damaged);
        }
        let (body, sum) = bytes.split_at(bytes.len() - 4);
        if checksum(body) != sum {
            return Err(InviteError::Damaged);
        }
        Ok(body.to_vec())
    }
}

/// The version byte of a short invite line ([`ShortInvite`]).
const SHORT_VERSION: u8 = 3;

/// An invite line of at most 160 characters (for a relay host of up to 30): the relay, and
/// a secret from which the name of the invite's sealed body at that relay and its key are
/// derived. The joiner fetches the body (`frame::Request::Bundle`, through its own relay
/// when the inviter's is another) and opens it; the relay holds only the ciphertext, under
/// a name it cannot link to the line without the secret.
///
/// ```text
/// short  = version (1) = 3 | relay PIN (32) | host (u8 length) | port (u16) | secret (16)
/// name   = first 16 bytes of HKDF-SHA256(secret, "backchannel/v1/invite bundle name")
/// key    = HKDF-SHA256(secret, "backchannel/v1/invite bundle key")
/// bundle = ChaCha20-Poly1305(key, nonce 0, long body, aad "backchannel/v1/invite bundle")
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct ShortInvite {
    /// The relay that holds the bundle (the invite mailbox's).
    pub relay: RelayAddress,
    secret: [u8; 16],
}

impl std::fmt::Debug for ShortInvite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShortInvite")
            .field("relay", &self.relay)
            .finish_non_exhaustive()
    }
}

const BUNDLE_AAD: &[u8] = b"backchannel/v1/invite bundle";

impl ShortInvite {
    /// A short line for `invite`, and the bundle to publish under [`ShortInvite::name`].
    pub fn seal(invite: &Invite, rng: &mut impl rand_core::CryptoRngCore) -> Result<(Self, Vec<u8>), InviteError> {
        let mut secret = [0u8; 16];
        rng.fill_bytes(&mut secret);
        let short = Self {
            relay: invite.mailbox.relay.clone(),
            secret,
        };
        let bundle = short
            .cipher()?
            .encrypt(
                Nonce::from_slice(&[0; 12]),
                Payload {
                    msg: &invite.body(),
                    aad: BUNDLE_AAD,
                },
            )
            .map_err(|_| InviteError::Damaged)?;
        Ok((short, bundle))
    }

    fn derive<const N: usize>(&self, info: &[u8]) -> Result<zeroize::Zeroizing<[u8; N]>, InviteError> {
        let mut out = zeroize::Zeroizing::new([0u8; N]);
        Hkdf::<Sha256>::new(None, &self.secret)
            .expand(info, &mut out[..])
            .map_err(|_| InviteError::Damaged)?;
        Ok(out)
    }

    fn cipher(&self) -> Result<ChaCha20Poly1305, InviteError> {
        let key = self.derive::<32>(b"backchannel/v1/invite bundle key")?;
        ChaCha20Poly1305::new_from_slice(&key[..]).map_err(|_| InviteError::Damaged)
    }

    /// The name the bundle is published under.
    pub fn name(&self) -> [u8; 16] {
        self.derive::<16>(b"backchannel/v1/invite bundle name")
            .map(|n| *n)
            .unwrap_or([0; 16])
    }

    /// The invite inside the bundle the relay handed over (attacker input): refused unless
    /// it opens, and names a mailbox at this line's relay.
    pub fn open(&self, bundle: &[u8]) -> Result<Invite, InviteError> {
        let body = self
            .cipher()?
            .decrypt(
                Nonce::from_slice(&[0; 12]),
                Payload {
                    msg: bundle,
                    aad: BUNDLE_AAD,
                },
            )
            .map_err(|_| InviteError::BundleMismatch)?;
        let invite = Invite::from_body(&body).map_err(|_| InviteError::BundleMismatch)?;
        if invite.mailbox.relay.pin != self.relay.pin {
            return Err(InviteError::BundleMismatch);
        }
        Ok(invite)
    }

    /// The one-line text form.
    pub fn to_text(&self) -> String {
        let mut w = Writer::new();
        w.u8(SHORT_VERSION).put(&self.relay.pin);
        self.relay.encode_place(&mut w);
        w.put(&self.secret);
        to_line(w.into_vec())
    }
}

/// An invite as a joiner pastes it: the long line, or a short one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InviteLine {
    /// The whole invite.
    Full(Invite),
    /// A short line: the invite is fetched from the relay.
    Short(ShortInvite),
}

impl InviteLine {
    /// Parses either form (attacker input).
    pub fn from_text(text: &str) -> Result<Self, InviteError> {
        let body = checked_body(text)?;
        match body.first() {
            Some(&SHORT_VERSION) => {
                let mut r = Reader::new(&body[1..]);
                let pin = r.array()?;
                let (host, port) = RelayAddress::decode_place(&mut r)?;
                let secret = r.array()?;
                r.finish()?;
                Ok(InviteLine::Short(ShortInvite {
                    relay: RelayAddress { pin, host, port },
                    secret,
                }))
            }
            _ => Invite::from_body(&body).map(InviteLine::Full),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::mailbox::{SealKey, SendCapability};
    use crate::relay_address::RelayAddress;
    use proptest::prelude::*;

    fn arb_invite() -> impl Strategy<Value = Invite> {
        (
            any::<[u8; 32]>(),
            "[a-z0-9.]{1,20}",
            1u16..,
            any::<[[u8; 32]; 3]>(),
            any::<u64>(),
            any::<u16>(),
        )
            .prop_map(
                |(pin, host, port, [send, seal, inviter_key], expires_at, ciphersuite)| Invite {
                    mailbox: MailboxAddress {
                        relay: RelayAddress { pin, host, port },
                        send: SendCapability(send),
                        seal: SealKey(seal),
                    },
                    expires_at,
                    inviter_key,
                    ciphersuite,
                },
            )
    }

    proptest! {
        /// A short line reads back, opens the bundle sealed with it, and nothing else; with
        /// a host of 30 characters it is at most 160 characters long.
        #[test]
        fn a_short_line_names_and_opens_its_bundle_only(inv in arb_invite(), flip in any::<prop::sample::Index>()) {
            let mut inv = inv;
            inv.mailbox.relay.host = "relay-01.operations.example.org".chars().take(30).collect();
            let (short, bundle) = ShortInvite::seal(&inv, &mut rand_core::OsRng).unwrap();
            let text = short.to_text();
            prop_assert!(text.len() <= 160, "{} characters", text.len());
            prop_assert_eq!(InviteLine::from_text(&text), Ok(InviteLine::Short(short.clone())));
            prop_assert_eq!(InviteLine::from_text(&text.to_uppercase()), Ok(InviteLine::Short(short.clone())));
            prop_assert_eq!(InviteLine::from_text(&inv.to_text()), Ok(InviteLine::Full(inv.clone())));
            prop_assert_eq!(short.open(&bundle), Ok(inv.clone()));
            let mut tampered = bundle.clone();
            let i = flip.index(tampered.len());
            tampered[i] ^= 1;
            prop_assert_eq!(short.open(&tampered), Err(InviteError::BundleMismatch));
            let (other, other_bundle) = ShortInvite::seal(&inv, &mut rand_core::OsRng).unwrap();
            prop_assert_ne!(other.name(), short.name());
            prop_assert_eq!(short.open(&other_bundle), Err(InviteError::BundleMismatch));
            // A bundle for a mailbox at another relay is refused.
            let mut elsewhere = inv.clone();
            elsewhere.mailbox.relay.pin[0] ^= 1;
            let (_, moved) = ShortInvite::seal(&elsewhere, &mut rand_core::OsRng).unwrap();
            prop_assert!(short.open(&moved).is_err());
        }

        #[test]
        fn round_trips(inv in arb_invite()) {
            let text = inv.to_text();
            prop_assert!(text.starts_with(PREFIX));
            prop_assert!(!text.contains(char::is_whitespace));
            prop_assert_eq!(Invite::from_text(&text), Ok(inv));
        }

        #[test]
        fn any_single_character_change_is_caught(inv in arb_invite(), pos in any::<prop::sample::Index>()) {
            let text = inv.to_text();
            let body_start = PREFIX.len();
            let i = body_start + pos.index(text.len() - body_start);
            let mut chars: Vec<char> = text.chars().collect();
            chars[i] = if chars[i] == 'a' { 'b' } else { 'a' };
            let changed: String = chars.into_iter().collect();
            if changed != text {
                prop_assert!(Invite::from_text(&changed).is_err());
            }
        }

        #[test]
        fn garbage_never_panics(s in ".{0,300}") {
            let _ = Invite::from_text(&s);
            let _ = Invite::from_text(&format!("{PREFIX}{s}"));
        }
    }

    #[test]
    fn plain_garbage_is_not_an_invite() {
        assert_eq!(Invite::from_text("hello"), Err(InviteError::NotAnInvite));
        assert_eq!(Invite::from_text("bc-invite:zzzz"), Err(InviteError::Damaged));
    }
}

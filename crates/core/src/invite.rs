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

use sha2::{Digest, Sha256};
use thiserror::Error;

use crate::codec::{DecodeError, Reader, Writer};
use crate::mailbox::MailboxAddress;

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
    #[error("this is not an invite: invites start with \"bc-invite:\"")]
    NotAnInvite,
    /// The text is damaged (bad characters, checksum or structure).
    #[error("the invite is damaged; copy the whole line again or ask for a new invite")]
    Damaged,
    /// A newer version of backchannel made it.
    #[error("the invite was made by a newer version of backchannel; upgrade to use it")]
    UnknownVersion,
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

impl Invite {
    /// The one-line text form.
    pub fn to_text(&self) -> String {
        let mut w = Writer::new();
        w.u8(VERSION);
        self.mailbox.encode(&mut w);
        w.u64(self.expires_at).put(&self.inviter_key).u16(self.ciphersuite);
        let mut body = w.into_vec();
        let sum = checksum(&body);
        body.extend_from_slice(&sum);
        format!(
            "{PREFIX}{}",
            data_encoding::BASE32_NOPAD.encode(&body).to_ascii_lowercase()
        )
    }

    /// Parses the text form (attacker input), in any case: a QR code carries it in upper
    /// case (its alphanumeric mode, the densest).
    pub fn from_text(text: &str) -> Result<Self, InviteError> {
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
}

#[cfg(test)]
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

//! What travels inside a channel's MLS application messages, and the join
//! request that travels through an invite mailbox.
//!
//! ```text
//! app message  = version (1) = 1 | id (16) | sent_at (u64, Unix ms) | kind (1) | body
//!   kind 1 text  : body = text (u32 length, UTF-8)
//!   kind 2 close : body empty (the sender is closing the channel for everyone)
//! join request = version (1) = 1 | key package (u32 length, TLS-encoded MLS KeyPackage)
//! ```

use crate::codec::{DecodeError, Reader, Writer};

/// Longest text message accepted.
pub const MAX_TEXT: usize = 1024 * 1024;

/// The body of an application message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    /// A text message.
    Text(String),
    /// The sender closes the channel for everyone.
    Close,
}

/// An application message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppMessage {
    /// Random id, used to show each message once.
    pub id: [u8; 16],
    /// When the sender wrote it (Unix milliseconds, sender's clock).
    pub sent_at: u64,
    /// What it says.
    pub body: Body,
}

impl AppMessage {
    /// Binary form.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.u8(1).put(&self.id).u64(self.sent_at);
        match &self.body {
            Body::Text(t) => {
                w.u8(1).bytes32(t.as_bytes());
            }
            Body::Close => {
                w.u8(2);
            }
        }
        w.into_vec()
    }

    /// Parses the binary form (input from a verified member, still checked).
    pub fn from_bytes(b: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(b);
        if r.u8()? != 1 {
            return Err(DecodeError::Invalid("message version"));
        }
        let id = r.array()?;
        let sent_at = r.u64()?;
        let body = match r.u8()? {
            1 => {
                let t = r.bytes32()?;
                if t.len() > MAX_TEXT {
                    return Err(DecodeError::Invalid("text length"));
                }
                Body::Text(String::from_utf8(t.to_vec()).map_err(|_| DecodeError::Invalid("text encoding"))?)
            }
            2 => Body::Close,
            _ => return Err(DecodeError::Invalid("message kind")),
        };
        r.finish()?;
        Ok(Self { id, sent_at, body })
    }
}

/// A request to join, sent through an invite's mailbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinRequest {
    /// The joiner's serialized MLS key package.
    pub key_package: Vec<u8>,
}

impl JoinRequest {
    /// Binary form.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.u8(1).bytes32(&self.key_package);
        w.into_vec()
    }

    /// Parses the binary form (attacker input).
    pub fn from_bytes(b: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(b);
        if r.u8()? != 1 {
            return Err(DecodeError::Invalid("join request version"));
        }
        let key_package = r.bytes32()?.to_vec();
        r.finish()?;
        Ok(Self { key_package })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn app_messages_round_trip(id in any::<[u8; 16]>(), sent_at in any::<u64>(), text in proptest::option::of(".{0,200}")) {
            let m = AppMessage { id, sent_at, body: text.map(Body::Text).unwrap_or(Body::Close) };
            prop_assert_eq!(AppMessage::from_bytes(&m.to_bytes()), Ok(m));
        }

        #[test]
        fn join_requests_round_trip(kp in proptest::collection::vec(any::<u8>(), 0..2000)) {
            let j = JoinRequest { key_package: kp };
            prop_assert_eq!(JoinRequest::from_bytes(&j.to_bytes()), Ok(j));
        }

        #[test]
        fn garbage_never_panics(b in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = AppMessage::from_bytes(&b);
            let _ = JoinRequest::from_bytes(&b);
        }
    }
}

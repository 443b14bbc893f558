//! What travels inside a channel's MLS application messages, and the join
//! request that travels through an invite mailbox.
//!
//! ```text
//! app message  = version (1) = 1 | id (16) | sent_at (u64, Unix ms) | kind (1) | body
//!   kind 1 text  : body = text (u32 length, UTF-8)
//!   kind 2 close : body empty (the sender is closing the channel for everyone)
//!   kind 3 file  : body = file id (16) | name (u16 length, UTF-8) | size (u64)
//!                  | SHA-256 of the contents (32) | part size (u32)
//!   kind 4 part  : body = file id (16) | index (u32) | data (u32 length)
//! join request = version (1) = 1 | key package (u32 length, TLS-encoded MLS KeyPackage)
//! trail        = version (1) = 1 | count (u64) | last (16)     (MLS authenticated data)
//! ```

use crate::codec::{DecodeError, Reader, Writer};

/// Longest text message accepted.
pub const MAX_TEXT: usize = 1024 * 1024;
/// Largest file part accepted.
pub const MAX_PART: usize = 1024 * 1024;
/// Largest file that can be offered.
pub const MAX_FILE: u64 = 4 * 1024 * 1024 * 1024;
/// Longest file name.
pub const MAX_FILE_NAME: usize = 255;
/// Most parts a file may be split into (bounds what a receiver tracks per file).
pub const MAX_PARTS: u64 = 1 << 16;

/// A file a member starts sending: what the parts that follow add up to.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FileOffer {
    /// Names the transfer; its parts carry it.
    pub file_id: [u8; 16],
    /// The file's name (no directory: see [`valid_file_name`]).
    pub name: String,
    /// Length in bytes.
    pub size: u64,
    /// SHA-256 of the whole contents, checked once every part is in.
    pub sha256: [u8; 32],
    /// Bytes per part (the last part may be shorter).
    pub part_size: u32,
}

impl FileOffer {
    /// Number of parts.
    pub fn parts(&self) -> u64 {
        self.size.div_ceil(u64::from(self.part_size.max(1)))
    }

    /// The exact length part `index` must have.
    pub fn part_len(&self, index: u64) -> Option<usize> {
        let start = index.checked_mul(u64::from(self.part_size))?;
        if index >= self.parts() {
            return None;
        }
        usize::try_from((self.size - start).min(u64::from(self.part_size))).ok()
    }
}

/// Whether a file name can be written into a folder as it is: 1 to [`MAX_FILE_NAME`]
/// bytes, no `/`, `\\`, NUL or other control characters (no terminal escapes reach a
/// screen), and neither `.` nor `..`. Files in channels and in drop-box letters use it.
pub fn valid_file_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_FILE_NAME
        && name != "."
        && name != ".."
        && !name
            .chars()
            .any(|c| c == '/' || c == '\\' || c.is_control() || is_format_char(c))
}

/// Whether `c` is an invisible formatting character (Unicode general category Cf):
/// bidirectional overrides and isolates, zero-width characters, tags. They can make
/// text show as something other than what it is (`exe.txt` drawn as `txt.exe`), so a
/// file name may not hold them and text output escapes them.
pub fn is_format_char(c: char) -> bool {
    matches!(
        u32::from(c),
        0xAD | 0x600..=0x605
            | 0x61C
            | 0x6DD
            | 0x70F
            | 0x890..=0x891
            | 0x8E2
            | 0x180E
            | 0x200B..=0x200F
            | 0x202A..=0x202E
            | 0x2060..=0x2064
            | 0x2066..=0x206F
            | 0xFEFF
            | 0xFFF9..=0xFFFB
            | 0x110BD
            | 0x110CD
            | 0x13430..=0x1343F
            | 0x1BCA0..=0x1BCA3
            | 0x1D173..=0x1D17A
            | 0xE0001
            | 0xE0020..=0xE007F
    )
}

/// The body of an application message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    /// A text message.
    Text(String),
    /// The sender closes the channel for everyone.
    Close,
    /// The sender starts sending a file.
    File(FileOffer),
    /// One part of a file.
    Part {
        /// The transfer it belongs to.
        file_id: [u8; 16],
        /// Its position.
        index: u32,
        /// Its bytes.
        data: Vec<u8>,
    },
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
            Body::File(f) => {
                w.u8(3)
                    .put(&f.file_id)
                    .bytes16(f.name.as_bytes())
                    .u64(f.size)
                    .put(&f.sha256)
                    .u32(f.part_size);
            }
            Body::Part { file_id, index, data } => {
                w.u8(4).put(file_id).u32(*index).bytes32(data);
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
            3 => {
                let file_id = r.array()?;
                let name = String::from_utf8(r.bytes16()?.to_vec()).map_err(|_| DecodeError::Invalid("file name"))?;
                if !valid_file_name(&name) {
                    return Err(DecodeError::Invalid("file name"));
                }
                let size = r.u64()?;
                let sha256 = r.array()?;
                let part_size = r.u32()?;
                if size > MAX_FILE || part_size == 0 || part_size as usize > MAX_PART {
                    return Err(DecodeError::Invalid("file size"));
                }
                let offer = FileOffer {
                    file_id,
                    name,
                    size,
                    sha256,
                    part_size,
                };
                if offer.parts() > MAX_PARTS {
                    return Err(DecodeError::Invalid("file parts"));
                }
                Body::File(offer)
            }
            4 => {
                let file_id = r.array()?;
                let index = r.u32()?;
                let data = r.bytes32()?;
                if data.len() > MAX_PART {
                    return Err(DecodeError::Invalid("file part length"));
                }
                Body::Part {
                    file_id,
                    index,
                    data: data.to_vec(),
                }
            }
            _ => return Err(DecodeError::Invalid("message kind")),
        };
        r.finish()?;
        Ok(Self { id, sent_at, body })
    }
}

/// What a member's every application message and commit carries in its MLS authenticated
/// data, so that the others can tell that one of its messages is missing or came out of
/// order (docs/protocol.md, "Trails"): how many application messages the sender had sent
/// in the channel before this one, and the [`Trail::digest`] of the last of them. A commit
/// carries it too, so that a sender's last message is missed at its next commit at the
/// latest. MLS authenticates it with the message, so a relay cannot change it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Trail {
    /// Application messages the sender sent in this channel before this one.
    pub count: u64,
    /// The digest of the last of them (zeros before the first).
    pub last: [u8; 16],
}

impl Trail {
    /// Binary form.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.u8(1).u64(self.count).put(&self.last);
        w.into_vec()
    }

    /// Parses the authenticated data of a message (from a verified member, still
    /// checked): `None` for a message without a trail (a client from before trails), or
    /// one this client does not read.
    pub fn from_bytes(b: &[u8]) -> Option<Self> {
        let mut r = Reader::new(b);
        if r.u8().ok()? != 1 {
            return None;
        }
        let count = r.u64().ok()?;
        let last = r.array().ok()?;
        r.finish().ok()?;
        Some(Self { count, last })
    }

    /// What a trail names an application message by: the first 16 bytes of SHA-256 over
    /// a label and the message's plaintext (its random id makes every one distinct).
    pub fn digest(plaintext: &[u8]) -> [u8; 16] {
        use sha2::{Digest, Sha256};
        let d = Sha256::new()
            .chain_update(b"backchannel/v1/trail")
            .chain_update(plaintext)
            .finalize();
        let mut out = [0; 16];
        out.copy_from_slice(&d[..16]);
        out
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
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn file_names_that_leave_the_folder_are_refused() {
        for bad in [
            "",
            ".",
            "..",
            "a/b",
            "..\\x",
            "/etc/passwd",
            "a\nb",
            "invoice\u{202e}fdp.exe",
            "a\u{200b}b",
            &"x".repeat(256),
        ] {
            assert!(!valid_file_name(bad), "{bad:?}");
        }
        for good in ["report.pdf", "a b.txt", "..hidden", "übersicht.odt"] {
            assert!(valid_file_name(good), "{good:?}");
        }
    }

    proptest! {
        #[test]
        fn app_messages_round_trip(id in any::<[u8; 16]>(), sent_at in any::<u64>(), text in proptest::option::of(".{0,200}")) {
            let m = AppMessage { id, sent_at, body: text.map(Body::Text).unwrap_or(Body::Close) };
            prop_assert_eq!(AppMessage::from_bytes(&m.to_bytes()), Ok(m));
        }

        #[test]
        fn file_offers_and_parts_round_trip(
            id in any::<[u8; 16]>(),
            file_id in any::<[u8; 16]>(),
            name in "[a-zA-Z0-9 ._-]{1,40}",
            size in 0..MAX_FILE,
            sha256 in any::<[u8; 32]>(),
            part_size in (MAX_FILE / MAX_PARTS) as u32..=MAX_PART as u32,
            index in any::<u32>(),
            data in proptest::collection::vec(any::<u8>(), 0..3000),
        ) {
            prop_assume!(valid_file_name(&name));
            let offer = AppMessage { id, sent_at: 1, body: Body::File(FileOffer { file_id, name, size, sha256, part_size }) };
            prop_assert_eq!(AppMessage::from_bytes(&offer.to_bytes()), Ok(offer));
            let part = AppMessage { id, sent_at: 2, body: Body::Part { file_id, index, data } };
            prop_assert_eq!(AppMessage::from_bytes(&part.to_bytes()), Ok(part));
        }

        #[test]
        fn parts_add_up_to_the_file(size in 0..(1u64 << 40), part_size in 1..=MAX_PART as u32) {
            let f = FileOffer { file_id: [0; 16], name: "f".into(), size, sha256: [0; 32], part_size };
            let n = f.parts();
            prop_assert!(f.part_len(n).is_none());
            if n > 0 {
                let last = f.part_len(n - 1).unwrap() as u64;
                prop_assert!(last >= 1 && last <= u64::from(part_size));
                prop_assert_eq!((n - 1) * u64::from(part_size) + last, size);
                prop_assert_eq!(f.part_len(0).unwrap() as u64, size.min(u64::from(part_size)));
            }
        }

        #[test]
        fn join_requests_round_trip(kp in proptest::collection::vec(any::<u8>(), 0..2000)) {
            let j = JoinRequest { key_package: kp };
            prop_assert_eq!(JoinRequest::from_bytes(&j.to_bytes()), Ok(j));
        }

        #[test]
        fn trails_round_trip(count in any::<u64>(), last in any::<[u8; 16]>()) {
            let t = Trail { count, last };
            prop_assert_eq!(Trail::from_bytes(&t.to_bytes()), Some(t));
        }

        #[test]
        fn garbage_never_panics(b in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = AppMessage::from_bytes(&b);
            let _ = JoinRequest::from_bytes(&b);
            let _ = Trail::from_bytes(&b);
        }
    }
}

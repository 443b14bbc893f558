//! The byte layouts of the embedded store's records, each with its format version.
//!
//! Every record written by this code starts with a version byte; the layouts are
//! frozen: a change adds a version (and a conversion from the older ones), never
//! edits one. Records written before versions existed (by release 94ba14f and
//! earlier, data directory format 1) had none and are told apart by their lengths,
//! which no versioned record has; they stay readable here and are rewritten in the
//! current layout when the directory is converted ([`super::upgrade`]). A version
//! newer than this code knows is refused with [`StoreError::NewerFormat`].
//!
//! | table | key | value (current, version 1) | older values |
//! |---|---|---|---|
//! | `mailboxes` | receive id (32) | 2 ‖ recipient key (32) ‖ send digest (32) ‖ next seq (u64 BE) ‖ count (u32 BE) ‖ next epoch (u64 BE) ‖ last token or lock (32) ‖ pow bits (1) ‖ flags (1: bit 0, claims locked): 119 bytes | version 1: the same without flags (118, not locked); without the version byte (117), or without it and pow bits (116, read as 0) |
//! | `senders` | SHA-256(send capability) (32) | 1 ‖ receive id (32): 33 bytes | the receive id alone (32) |
//! | `envelopes` | receive id (32) ‖ seq (u64 BE) | 2 ‖ expires at (u64 BE, Unix s) ‖ slot (u64 BE) ‖ the sealed envelope's tag (16): 33 bytes; the sealed envelope (4096, AES-256-GCM) ‖ tag (16) lies in the body file at that slot ([`super::at_rest::ENVELOPE_BODY_FILE`]), and is this record's only if its tag is the record's | version 1 (formats 2 to 4): 1 ‖ expires at ‖ key slot ‖ sealed envelope (ChaCha20-Poly1305) ‖ tag, 4129 bytes; the same without the version byte (4128), or expires at ‖ envelope in the clear (4104) |
//! | `held` | receive id (32) ‖ slot (1) | [`crate::store::HeldCommit::encode`] | none (added with protocol 4) |

use backchannel_core::codec::Reader;
use backchannel_core::envelope::ENVELOPE_SIZE;
use backchannel_core::mailbox::MailboxId;

use crate::store::{Claims, StoreError};

/// The version of every record layout this code writes.
pub(crate) const RECORD_VERSION: u8 = 1;

/// Bytes per key slot (and per at-rest key).
pub(crate) const SLOT_LEN: usize = 32;
/// Poly1305 tag.
pub(crate) const TAG_LEN: usize = backchannel_core::aead::TAG_LEN;

/// A mailbox record body (after the version byte).
const MAILBOX_BODY_LEN: usize = 32 + 32 + 8 + 4 + 8 + 32 + 1;
/// A mailbox record of version 1.
pub(crate) const MAILBOX_RECORD_LEN_V1: usize = 1 + MAILBOX_BODY_LEN;
/// A mailbox record of the current version (2): version 1 and a flags byte.
pub(crate) const MAILBOX_RECORD_LEN: usize = MAILBOX_RECORD_LEN_V1 + 1;
/// The version of the mailbox record layout this code writes (the others are at
/// [`RECORD_VERSION`]).
pub(crate) const MAILBOX_VERSION: u8 = 2;
/// An unversioned mailbox record as release 94ba14f wrote it.
pub(crate) const LEGACY_MAILBOX_LEN: usize = MAILBOX_BODY_LEN;
/// An unversioned mailbox record from before drop boxes, without `pow_bits`.
pub(crate) const LEGACY_MAILBOX_LEN_BEFORE_POW: usize = MAILBOX_BODY_LEN - 1;

/// A sender record of the current version: version || receive id.
pub(crate) const SENDER_RECORD_LEN: usize = 1 + 32;

/// The version of the envelope record layout this code writes: the sealed envelope lies
/// in the body file, the record holds where.
pub(crate) const ENVELOPE_VERSION: u8 = 2;
/// An envelope value of the current version (2): version ‖ expires at ‖ slot ‖ the tag of
/// the sealed envelope in the body file.
pub(crate) const ENVELOPE_RECORD_LEN: usize = 1 + 8 + 8 + TAG_LEN;
/// A sealed envelope: ciphertext (4096) ‖ tag; one slot of the body file.
pub(crate) const SEALED_LEN: usize = ENVELOPE_SIZE + TAG_LEN;
/// Start of the sealed envelope in an envelope value of version 1.
pub(crate) const SEALED_AT: usize = 1 + 8 + 8;
/// An envelope value of version 1 (formats 2 to 4), the sealed envelope inline.
pub(crate) const ENVELOPE_VALUE_LEN_V1: usize = SEALED_AT + SEALED_LEN;
/// An unversioned sealed envelope value as release 94ba14f wrote it.
pub(crate) const LEGACY_SEALED_LEN: usize = 8 + 8 + ENVELOPE_SIZE + TAG_LEN;
/// An unversioned value from before at-rest encryption: expires_at || envelope.
pub(crate) const LEGACY_PLAINTEXT_LEN: usize = 8 + ENVELOPE_SIZE;

/// Reads the version byte of a versioned record: the current one, or an error
/// ([`StoreError::NewerFormat`] for a later one).
fn version(what: &'static str, b: &[u8]) -> Result<(), StoreError> {
    match b.first() {
        Some(&RECORD_VERSION) => Ok(()),
        Some(&v) if v > RECORD_VERSION => Err(StoreError::NewerFormat {
            what,
            found: u32::from(v),
            known: u32::from(RECORD_VERSION),
        }),
        _ => Err(StoreError::corrupt(what)),
    }
}

/// A mailbox record (the value in `mailboxes`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct MailboxRecord {
    pub(crate) recipient: [u8; 32],
    pub(crate) send_digest: [u8; 32],
    pub(crate) next_seq: u64,
    pub(crate) count: u32,
    /// The mailbox's claims, when it is a channel's sequencer.
    pub(crate) claims: Claims,
    pub(crate) pow_bits: u8,
}

impl MailboxRecord {
    /// The record with one envelope fewer.
    pub(crate) fn counted_off(self) -> Self {
        Self {
            count: self.count.saturating_sub(1),
            ..self
        }
    }

    /// Version 2: the version 1 layout and a flags byte (bit 0: the claims are locked).
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(MAILBOX_RECORD_LEN);
        v.push(MAILBOX_VERSION);
        v.extend_from_slice(&self.recipient);
        v.extend_from_slice(&self.send_digest);
        v.extend_from_slice(&self.next_seq.to_be_bytes());
        v.extend_from_slice(&self.count.to_be_bytes());
        v.extend_from_slice(&self.claims.next_epoch.to_be_bytes());
        v.extend_from_slice(&self.claims.last);
        v.push(self.pow_bits);
        v.push(u8::from(self.claims.locked));
        v
    }

    /// Reads versions 2 and 1, and the unversioned layouts of format 1 (locked: no).
    pub(crate) fn decode(b: &[u8]) -> Result<Self, StoreError> {
        const WHAT: &str = "mailbox record";
        let bad = |_| StoreError::corrupt(WHAT);
        let (body, flags) = match (b.len(), b.first()) {
            (LEGACY_MAILBOX_LEN | LEGACY_MAILBOX_LEN_BEFORE_POW, _) => (b, None),
            (MAILBOX_RECORD_LEN_V1, Some(1)) => (&b[1..], None),
            (MAILBOX_RECORD_LEN, Some(&MAILBOX_VERSION)) => (&b[1..MAILBOX_RECORD_LEN - 1], b.last().copied()),
            (_, Some(&v)) if v > MAILBOX_VERSION => {
                return Err(StoreError::NewerFormat {
                    what: WHAT,
                    found: u32::from(v),
                    known: u32::from(MAILBOX_VERSION),
                })
            }
            _ => return Err(StoreError::corrupt(WHAT)),
        };
        let locked = match flags {
            None | Some(0) => false,
            Some(1) => true,
            Some(_) => return Err(StoreError::corrupt(WHAT)),
        };
        let mut r = Reader::new(body);
        let rec = Self {
            recipient: r.array().map_err(bad)?,
            send_digest: r.array().map_err(bad)?,
            next_seq: r.u64().map_err(bad)?,
            count: r.u32().map_err(bad)?,
            claims: Claims {
                next_epoch: r.u64().map_err(bad)?,
                last: r.array().map_err(bad)?,
                locked,
            },
            pow_bits: if r.remaining() == 0 { 0 } else { r.u8().map_err(bad)? },
        };
        r.finish().map_err(bad)?;
        Ok(rec)
    }
}

pub(crate) fn encode_sender(id: &MailboxId) -> [u8; SENDER_RECORD_LEN] {
    let mut v = [0u8; SENDER_RECORD_LEN];
    v[0] = RECORD_VERSION;
    v[1..].copy_from_slice(&id.0);
    v
}

/// A sender record of any layout.
pub(crate) fn decode_sender(b: &[u8]) -> Result<MailboxId, StoreError> {
    const WHAT: &str = "sender record";
    let id = match b.len() {
        32 => b,
        _ => {
            version(WHAT, b)?;
            &b[1..]
        }
    };
    id.try_into().map(MailboxId).map_err(|_| StoreError::corrupt(WHAT))
}

/// An envelope value, read without opening it.
#[derive(Debug, Clone, Copy)]
pub(crate) enum EnvelopeValue<'a> {
    /// Sealed at rest under the key in `slot`, the ciphertext and tag in the body file at
    /// the same slot (version 2). `tag` is the sealed envelope's: a body file slot holds
    /// this record's envelope only if its tag is this one (a slot is reused once freed).
    Apart {
        expires_at: u64,
        slot: u64,
        tag: &'a [u8; TAG_LEN],
    },
    /// Sealed at rest under the key in `slot`: the envelope's ciphertext and tag, inline
    /// (version 1, or unversioned).
    Sealed {
        expires_at: u64,
        slot: u64,
        /// Ciphertext (4096) || tag (16).
        sealed: &'a [u8],
        /// Written by release 94ba14f or earlier, without a version byte.
        legacy: bool,
    },
    /// Stored in the clear by a relay before at-rest encryption (converted on open).
    Plaintext { expires_at: u64, envelope: &'a [u8] },
}

fn be64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_be_bytes(a)
}

impl<'a> EnvelopeValue<'a> {
    /// Any layout: the current one, or an unversioned one of release 94ba14f or earlier.
    pub(crate) fn parse(v: &'a [u8]) -> Result<Self, StoreError> {
        const WHAT: &str = "envelope record";
        match v.len() {
            LEGACY_PLAINTEXT_LEN => Ok(EnvelopeValue::Plaintext {
                expires_at: be64(v),
                envelope: &v[8..],
            }),
            LEGACY_SEALED_LEN => Ok(EnvelopeValue::Sealed {
                expires_at: be64(v),
                slot: be64(&v[8..]),
                sealed: &v[16..],
                legacy: true,
            }),
            ENVELOPE_RECORD_LEN if v[0] == ENVELOPE_VERSION => Ok(EnvelopeValue::Apart {
                expires_at: be64(&v[1..]),
                slot: be64(&v[9..]),
                tag: v[17..].try_into().map_err(|_| StoreError::corrupt(WHAT))?,
            }),
            ENVELOPE_VALUE_LEN_V1 if v[0] == RECORD_VERSION => Ok(EnvelopeValue::Sealed {
                expires_at: be64(&v[1..]),
                slot: be64(&v[9..]),
                sealed: &v[SEALED_AT..],
                legacy: false,
            }),
            _ => match v.first() {
                Some(&found) if found > ENVELOPE_VERSION => Err(StoreError::NewerFormat {
                    what: WHAT,
                    found: u32::from(found),
                    known: u32::from(ENVELOPE_VERSION),
                }),
                _ => Err(StoreError::corrupt(WHAT)),
            },
        }
    }

    /// When it expires.
    pub(crate) fn expires_at(&self) -> u64 {
        match self {
            EnvelopeValue::Apart { expires_at, .. }
            | EnvelopeValue::Sealed { expires_at, .. }
            | EnvelopeValue::Plaintext { expires_at, .. } => *expires_at,
        }
    }

    /// Its key slot, if sealed.
    pub(crate) fn slot(&self) -> Option<u64> {
        match self {
            EnvelopeValue::Apart { slot, .. } | EnvelopeValue::Sealed { slot, .. } => Some(*slot),
            EnvelopeValue::Plaintext { .. } => None,
        }
    }
}

/// An envelope value of the current layout (version 2): its sealed envelope, whose tag is
/// `tag`, lies in the body file at `slot`.
pub(crate) fn encode_envelope_record(expires_at: u64, slot: u64, tag: &[u8; TAG_LEN]) -> [u8; ENVELOPE_RECORD_LEN] {
    let mut value = [0u8; ENVELOPE_RECORD_LEN];
    value[0] = ENVELOPE_VERSION;
    value[1..9].copy_from_slice(&expires_at.to_be_bytes());
    value[9..17].copy_from_slice(&slot.to_be_bytes());
    value[17..].copy_from_slice(tag);
    value
}

/// An envelope value of version 1 around `sealed` (ciphertext || tag), inline: what the
/// conversion of format 1 writes, and formats 2 to 4 wrote.
pub(crate) fn encode_envelope_value_v1(expires_at: u64, slot: u64, sealed: &[u8]) -> Vec<u8> {
    let mut value = Vec::with_capacity(ENVELOPE_VALUE_LEN_V1);
    value.push(RECORD_VERSION);
    value.extend_from_slice(&expires_at.to_be_bytes());
    value.extend_from_slice(&slot.to_be_bytes());
    value.extend_from_slice(sealed);
    value
}

/// The redb key of an envelope record, also its associated data at rest.
pub(crate) fn record_key(id: &MailboxId, seq: u64) -> [u8; 40] {
    let mut k = [0u8; 40];
    k[..32].copy_from_slice(&id.0);
    k[32..].copy_from_slice(&seq.to_be_bytes());
    k
}

/// The mailbox an envelope record's key names (`None` for a damaged, short key).
pub(crate) fn record_mailbox(key: &[u8]) -> Option<MailboxId> {
    key.get(..32).and_then(|b| <[u8; 32]>::try_from(b).ok()).map(MailboxId)
}

/// The sequence number an envelope record's key names.
pub(crate) fn record_seq(key: &[u8; 40]) -> u64 {
    be64(&key[32..])
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]
    use super::*;

    fn record() -> MailboxRecord {
        MailboxRecord {
            recipient: [3; 32],
            send_digest: [4; 32],
            next_seq: 7,
            count: 2,
            claims: Claims {
                next_epoch: 9,
                last: [5; 32],
                locked: true,
            },
            pow_bits: 12,
        }
    }

    /// The current layouts are pinned byte for byte: changing one must add a version.
    #[test]
    fn the_current_layouts_are_frozen() {
        let rec = record().encode();
        assert_eq!(rec.len(), MAILBOX_RECORD_LEN);
        assert_eq!(rec[0], 2, "the version comes first");
        assert_eq!(&rec[1..33], &[3; 32]);
        assert_eq!(&rec[65..73], &7u64.to_be_bytes());
        assert_eq!(&rec[77..85], &9u64.to_be_bytes());
        assert_eq!(rec[117], 12);
        assert_eq!(rec[118], 1, "claims locked");
        assert_eq!(
            encode_sender(&MailboxId([8; 32]))[..],
            [&[1u8][..], &[8; 32]].concat()[..]
        );
        let v = encode_envelope_record(500, 3, &[4; 16]);
        assert_eq!(v.len(), 33);
        assert_eq!(
            (v[0], &v[1..9], &v[9..17], &v[17..]),
            (2, &500u64.to_be_bytes()[..], &3u64.to_be_bytes()[..], &[4u8; 16][..])
        );
        match EnvelopeValue::parse(&v).unwrap() {
            EnvelopeValue::Apart { expires_at, slot, tag } => assert_eq!((expires_at, slot, tag), (500, 3, &[4; 16])),
            other => panic!("apart: {other:?}"),
        }
        // Version 1, which formats 2 to 4 wrote and the conversion of format 1 writes.
        let sealed = [6u8; ENVELOPE_SIZE + TAG_LEN];
        let v = encode_envelope_value_v1(500, 3, &sealed);
        assert_eq!(v.len(), ENVELOPE_VALUE_LEN_V1);
        assert_eq!(
            (v[0], &v[1..9], &v[9..17]),
            (1, &500u64.to_be_bytes()[..], &3u64.to_be_bytes()[..])
        );
        match EnvelopeValue::parse(&v).unwrap() {
            EnvelopeValue::Sealed {
                expires_at,
                slot,
                sealed: s,
                legacy,
            } => assert_eq!((expires_at, slot, s, legacy), (500, 3, &sealed[..], false)),
            other => panic!("sealed: {other:?}"),
        }
        // Each version only at its own length.
        let mut short = v[..ENVELOPE_RECORD_LEN].to_vec();
        assert!(matches!(EnvelopeValue::parse(&short), Err(StoreError::Corrupt { .. })));
        short[0] = 2;
        assert!(EnvelopeValue::parse(&short).is_ok());
        let mut long = v.clone();
        long[0] = 2;
        assert!(matches!(EnvelopeValue::parse(&long), Err(StoreError::Corrupt { .. })));
    }

    /// Mailbox records of version 1 (release e46e4e4) read, with unlocked claims.
    #[test]
    fn version_1_mailbox_records_read_unlocked() {
        let mut v1 = record().encode();
        v1.pop();
        v1[0] = 1;
        let rec = MailboxRecord::decode(&v1).unwrap();
        assert_eq!((rec.next_seq, rec.pow_bits), (7, 12));
        assert_eq!(
            rec.claims,
            Claims {
                next_epoch: 9,
                last: [5; 32],
                locked: false
            }
        );
        let mut bad_flags = record().encode();
        bad_flags[118] = 2;
        assert!(MailboxRecord::decode(&bad_flags).is_err());
    }

    /// Records of release 94ba14f (no version byte) still read.
    #[test]
    fn unversioned_records_of_release_94ba14f_read() {
        let current = record().encode();
        let legacy = &current[1..current.len() - 1];
        let rec = MailboxRecord::decode(legacy).unwrap();
        assert_eq!((rec.recipient, rec.next_seq, rec.pow_bits), ([3; 32], 7, 12));
        let before_pow = MailboxRecord::decode(&legacy[..LEGACY_MAILBOX_LEN_BEFORE_POW]).unwrap();
        assert_eq!((before_pow.count, before_pow.pow_bits), (2, 0));
        assert_eq!(decode_sender(&[8; 32]).unwrap(), MailboxId([8; 32]));
        let mut old = 500u64.to_be_bytes().to_vec();
        old.extend_from_slice(&3u64.to_be_bytes());
        old.extend_from_slice(&[6u8; ENVELOPE_SIZE + TAG_LEN]);
        let v = EnvelopeValue::parse(&old).unwrap();
        assert_eq!((v.expires_at(), v.slot()), (500, Some(3)));
    }

    /// A version this code does not know is refused as newer, and says to upgrade.
    #[test]
    fn a_newer_record_version_is_refused() {
        let mut rec = record().encode();
        rec[0] = 3;
        let e = MailboxRecord::decode(&rec).unwrap_err();
        assert_eq!(
            e,
            StoreError::NewerFormat {
                what: "mailbox record",
                found: 3,
                known: 2
            }
        );
        assert!(e.to_string().contains("upgrade backchannel"), "{e}");
        for mut v in [
            encode_envelope_record(1, 1, &[0; 16]).to_vec(),
            encode_envelope_value_v1(1, 1, &[0; ENVELOPE_SIZE + TAG_LEN]),
        ] {
            v[0] = 9;
            assert!(matches!(
                EnvelopeValue::parse(&v),
                Err(StoreError::NewerFormat { found: 9, known: 2, .. })
            ));
        }
        assert!(matches!(
            decode_sender(&[[7u8].as_slice(), &[0; 32]].concat()),
            Err(StoreError::NewerFormat { found: 7, .. })
        ));
        // Version 0 and wrong lengths are corrupt, not newer.
        rec[0] = 0;
        assert_eq!(
            MailboxRecord::decode(&rec).unwrap_err(),
            StoreError::corrupt("mailbox record")
        );
    }
}

//! Shared pieces of the fuzz targets and of the `seeds` binary: fixed keys,
//! the MLS fixtures the channel targets start from, and the small input
//! formats of the structured targets.
//!
//! MLS state cannot be rebuilt deterministically (openmls draws its own
//! randomness), so the `seeds` binary builds the channels once and writes
//! them to `fixtures/`; the targets embed those files, and the seeds in
//! `seeds/channel_process` and `seeds/welcome` are messages of exactly
//! those channels. A crash input therefore reproduces on any machine.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use backchannel_core::codec::{DecodeError, Reader, Writer};
use backchannel_core::mailbox::{MailboxId, SealKey, SendCapability};
use backchannel_core::relay_address::RelayAddress;
use sha2::{Digest, Sha256};

/// The seal key every envelope target opens with.
pub fn seal_key() -> SealKey {
    SealKey([0x5e; 32])
}

/// The mailbox (by its send capability) every envelope target opens for.
pub fn send_capability() -> SendCapability {
    SendCapability([0xca; 32])
}

/// A relay address for fixtures.
pub fn relay() -> RelayAddress {
    RelayAddress {
        pin: [7; 32],
        host: "relay.example".into(),
        port: 4433,
    }
}

/// The kinds of response a forwarded request's answer may be (the model the `forward` and
/// `frame_response` targets check the inner decoders against): one list, so that a new kind
/// is added to the model once.
pub fn forwarded_answer_kind(r: &backchannel_core::frame::Response) -> bool {
    use backchannel_core::frame::Response;
    matches!(
        r,
        Response::Ok | Response::Pong | Response::Error { .. } | Response::Commit { .. } | Response::Record(_)
    )
}

/// The invite checksum, as `docs/protocol.md` defines it, so a target can
/// reach the invite's structure past the checksum.
pub fn invite_checksum(body: &[u8]) -> [u8; 4] {
    let d = Sha256::new()
        .chain_update(b"backchannel/v1/invite")
        .chain_update(body)
        .finalize();
    [d[0], d[1], d[2], d[3]]
}

/// A member's MLS state as a fixture: the provider's storage, the group id
/// (empty for a joiner that has no group yet).
pub struct MlsFixture {
    /// Group id.
    pub group_id: Vec<u8>,
    /// `Provider::snapshot` of the member.
    pub snapshot: Vec<(Vec<u8>, Vec<u8>)>,
}

impl MlsFixture {
    /// Binary form: group id, entry count, then each key and value.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.bytes32(&self.group_id).u32(self.snapshot.len() as u32);
        for (k, v) in &self.snapshot {
            w.bytes32(k).bytes32(v);
        }
        w.into_vec()
    }

    /// Reads the binary form.
    pub fn from_bytes(b: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(b);
        let group_id = r.bytes32()?.to_vec();
        let n = r.u32()?;
        let mut snapshot = Vec::new();
        for _ in 0..n {
            snapshot.push((r.bytes32()?.to_vec(), r.bytes32()?.to_vec()));
        }
        r.finish()?;
        Ok(Self { group_id, snapshot })
    }
}

/// Seed of the forward key pair (`ForwardKeys::from_seed`) the `forward`
/// target opens sealed requests with.
pub const FORWARD_SEED: [u8; 32] = [0xf0; 32];

/// The PIN (`aad` of a forwarded request's seal) of the relay the `forward`
/// target plays.
pub const FORWARD_PIN: [u8; 32] = [0x70; 32];

/// What the `forward` target starts from (`fixtures/forward.bin`, made by
/// `seeds.rs`): a relay identity cannot be made deterministically (rcgen and
/// the signing key draw their own randomness), and an answer key is exported
/// from one particular seal.
pub struct ForwardFixture {
    /// A request sealed to [`FORWARD_SEED`]'s key for [`FORWARD_PIN`]: opening
    /// it gives the answer key the target's sealed answers are under.
    pub sealed: Vec<u8>,
    /// A relay's identity certificate (DER; SHA-256 of it is its PIN).
    pub identity: Vec<u8>,
    /// That identity's credential, as its hello carries it (X-Wing forward key).
    pub credential: Vec<u8>,
    /// A destination's hello nonce ...
    pub nonce: [u8; 32],
    /// ... and the identity's `Forwarder` proof for it: scheme and signature.
    pub scheme: u16,
    /// The signature over `forward::FORWARDER_LABEL` and `nonce`.
    pub signature: Vec<u8>,
}

impl ForwardFixture {
    /// Binary form: each field in order, variable ones with a u32 length.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.bytes32(&self.sealed)
            .bytes32(&self.identity)
            .bytes32(&self.credential)
            .put(&self.nonce)
            .u16(self.scheme)
            .bytes32(&self.signature);
        w.into_vec()
    }

    /// Reads the binary form.
    pub fn from_bytes(b: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(b);
        let f = Self {
            sealed: r.bytes32()?.to_vec(),
            identity: r.bytes32()?.to_vec(),
            credential: r.bytes32()?.to_vec(),
            nonce: r.array()?,
            scheme: r.u16()?,
            signature: r.bytes32()?.to_vec(),
        };
        r.finish()?;
        Ok(f)
    }
}

/// The relay store target's input: records written into a fresh redb file,
/// key file and body file, then operations on the store opened over them.
///
/// ```text
/// input  = item*
/// item   = 0x01 table (u8: 0 mailboxes, 1 senders, 2 envelopes, 3 expiry-counts) key (bytes16) value (bytes16)
///        | 0x02 slot (u16) key (32)                      -- a key in the key file
///        | 0x03 len (u16)                                -- key file length (truncates or extends)
///        | 0x04 slot (u16) body (bytes16)                -- bytes at a slot of the body file
///        | 0x05 format (u32)                             -- the data directory's format version
///        | 0x10 id (u8) recipient (u8) send (u8)         -- create
///        | 0x11 send (u8) fill (u8) expires_at (u64)     -- send
///        | 0x12 n (u8) id (u8)*n max (u8)                -- fetch
///        | 0x13 id (u8) seq (u64)                        -- ack
///        | 0x14 id (u8)                                  -- delete
///        | 0x15 send (u8) epoch (u64) token (u8)         -- claim
///        | 0x16 now (u64)                                -- expire
///        | 0x17 id (u8)                                  -- recipient key
///        | 0x18                                          -- stats
///        | 0x19                                          -- close and reopen
///        | 0x1a fill (u8) len (u8) expires_at (u64)      -- make a nameplate
///        | 0x1b number (u32) now (u64)                   -- take a nameplate
///        | 0x1c name (u8) fill (u8) len (u8) expires_at (u64) now (u64) -- publish a bundle
///        | 0x1d name (u8) now (u64)                      -- fetch a bundle
/// ```
/// A byte `b` names mailbox id `[b; 32]`, send capability `[b; 32]`,
/// recipient key `[b; 32]` or token `[b; 32]`.
pub mod store_input {
    use super::*;

    /// A raw record for one of the store's tables.
    #[derive(Debug, Clone)]
    pub struct Record {
        /// 0 mailboxes, 1 senders, 2 envelopes, 3 expiry-counts.
        pub table: u8,
        /// Raw key.
        pub key: Vec<u8>,
        /// Raw value.
        pub value: Vec<u8>,
    }

    /// One operation on the opened store.
    #[derive(Debug, Clone)]
    #[allow(missing_docs)]
    pub enum Op {
        Create { id: u8, recipient: u8, send: u8 },
        Send { send: u8, fill: u8, expires_at: u64 },
        Fetch { ids: Vec<u8>, max: u8 },
        Ack { id: u8, seq: u64 },
        Delete { id: u8 },
        Claim { send: u8, epoch: u64, token: u8 },
        Expire { now: u64 },
        RecipientKey { id: u8 },
        Stats,
        Reopen,
        /// A nameplate holding `len` × 4 bytes of `fill` (at most 1,020: under the frame's
        /// bound of 1,024, as decoding would have it).
        NameplateCreate { fill: u8, len: u8, expires_at: u64 },
        NameplateTake { number: u32, now: u64 },
        /// A bundle of `len` × 8 bytes of `fill` (at most 2,040: under the frame's bound of
        /// 2,048) under the name `[name; 16]`, published at `now`.
        BundlePublish { name: u8, fill: u8, len: u8, expires_at: u64, now: u64 },
        BundleGet { name: u8, now: u64 },
    }

    /// A whole input.
    #[derive(Debug, Clone, Default)]
    pub struct Input {
        /// Records written before the store opens.
        pub records: Vec<Record>,
        /// Key file slots written before the store opens.
        pub keys: Vec<(u16, [u8; 32])>,
        /// Key file length, if set.
        pub key_file_len: Option<u16>,
        /// Body file slots written before the store opens: the slot and its bytes (a
        /// whole slot is 4,112 bytes; fewer leave the rest as it was).
        pub bodies: Vec<(u16, Vec<u8>)>,
        /// The data directory's format version, written into the `format` table if set
        /// (without one, a directory with tables reads as format 1).
        pub format: Option<u32>,
        /// Operations, in order.
        pub ops: Vec<Op>,
    }

    /// Most records and operations taken from one input (keeps each run short).
    pub const MAX_ITEMS: usize = 64;

    impl Input {
        /// Parses as much of `b` as is well formed.
        pub fn parse(b: &[u8]) -> Self {
            let mut r = Reader::new(b);
            let mut out = Input::default();
            while out.records.len() + out.keys.len() + out.bodies.len() + out.ops.len() < MAX_ITEMS {
                if Self::item(&mut r, &mut out).is_err() {
                    break;
                }
            }
            out
        }

        fn item(r: &mut Reader<'_>, out: &mut Input) -> Result<(), DecodeError> {
            match r.u8()? {
                0x01 => out.records.push(Record {
                    table: r.u8()? % 4,
                    key: r.bytes16()?.to_vec(),
                    value: r.bytes16()?.to_vec(),
                }),
                0x02 => out.keys.push((r.u16()?, r.array()?)),
                0x03 => out.key_file_len = Some(r.u16()?),
                0x04 => out.bodies.push((r.u16()?, r.bytes16()?.to_vec())),
                0x05 => out.format = Some(r.u32()?),
                0x10 => out.ops.push(Op::Create {
                    id: r.u8()?,
                    recipient: r.u8()?,
                    send: r.u8()?,
                }),
                0x11 => out.ops.push(Op::Send {
                    send: r.u8()?,
                    fill: r.u8()?,
                    expires_at: r.u64()?,
                }),
                0x12 => {
                    let n = r.u8()? as usize;
                    let ids = r.take(n)?.to_vec();
                    out.ops.push(Op::Fetch { ids, max: r.u8()? });
                }
                0x13 => out.ops.push(Op::Ack {
                    id: r.u8()?,
                    seq: r.u64()?,
                }),
                0x14 => out.ops.push(Op::Delete { id: r.u8()? }),
                0x15 => out.ops.push(Op::Claim {
                    send: r.u8()?,
                    epoch: r.u64()?,
                    token: r.u8()?,
                }),
                0x16 => out.ops.push(Op::Expire { now: r.u64()? }),
                0x17 => out.ops.push(Op::RecipientKey { id: r.u8()? }),
                0x18 => out.ops.push(Op::Stats),
                0x19 => out.ops.push(Op::Reopen),
                0x1a => out.ops.push(Op::NameplateCreate {
                    fill: r.u8()?,
                    len: r.u8()?,
                    expires_at: r.u64()?,
                }),
                0x1b => out.ops.push(Op::NameplateTake {
                    number: r.u32()?,
                    now: r.u64()?,
                }),
                0x1c => out.ops.push(Op::BundlePublish {
                    name: r.u8()?,
                    fill: r.u8()?,
                    len: r.u8()?,
                    expires_at: r.u64()?,
                    now: r.u64()?,
                }),
                0x1d => out.ops.push(Op::BundleGet {
                    name: r.u8()?,
                    now: r.u64()?,
                }),
                _ => return Err(DecodeError::Invalid("item")),
            }
            Ok(())
        }

        /// The binary form (for the seeds).
        pub fn to_bytes(&self) -> Vec<u8> {
            let mut w = Writer::new();
            for rec in &self.records {
                w.u8(0x01).u8(rec.table).bytes16(&rec.key).bytes16(&rec.value);
            }
            for (slot, key) in &self.keys {
                w.u8(0x02).u16(*slot).put(key);
            }
            if let Some(len) = self.key_file_len {
                w.u8(0x03).u16(len);
            }
            for (slot, body) in &self.bodies {
                w.u8(0x04).u16(*slot).bytes16(body);
            }
            if let Some(format) = self.format {
                w.u8(0x05).u32(format);
            }
            for op in &self.ops {
                match op {
                    Op::Create { id, recipient, send } => w.u8(0x10).u8(*id).u8(*recipient).u8(*send),
                    Op::Send { send, fill, expires_at } => w.u8(0x11).u8(*send).u8(*fill).u64(*expires_at),
                    Op::Fetch { ids, max } => w.u8(0x12).u8(ids.len() as u8).put(ids).u8(*max),
                    Op::Ack { id, seq } => w.u8(0x13).u8(*id).u64(*seq),
                    Op::Delete { id } => w.u8(0x14).u8(*id),
                    Op::Claim { send, epoch, token } => w.u8(0x15).u8(*send).u64(*epoch).u8(*token),
                    Op::Expire { now } => w.u8(0x16).u64(*now),
                    Op::RecipientKey { id } => w.u8(0x17).u8(*id),
                    Op::Stats => w.u8(0x18),
                    Op::Reopen => w.u8(0x19),
                    Op::NameplateCreate { fill, len, expires_at } => w.u8(0x1a).u8(*fill).u8(*len).u64(*expires_at),
                    Op::NameplateTake { number, now } => w.u8(0x1b).u32(*number).u64(*now),
                    Op::BundlePublish { name, fill, len, expires_at, now } => {
                        w.u8(0x1c).u8(*name).u8(*fill).u8(*len).u64(*expires_at).u64(*now)
                    }
                    Op::BundleGet { name, now } => w.u8(0x1d).u8(*name).u64(*now),
                };
            }
            w.into_vec()
        }
    }

    /// Mailbox id named by a byte.
    pub fn id(b: u8) -> MailboxId {
        MailboxId([b; 32])
    }
}

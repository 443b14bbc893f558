//! Frames exchanged between a client and a relay over a WebSocket, one frame
//! per binary WebSocket message.
//!
//! Every frame, in both directions and of every kind, is exactly
//! [`FRAME_SIZE`] bytes: a one-byte tag, a four-byte request id, the body,
//! then zeros. A network observer therefore learns nothing from frame
//! lengths about what a frame is or how long the message inside it was.
//! The relay speaks first, with [`Response::Hello`] (request id 0) carrying
//! the per-connection nonce that mailbox-open proofs sign. Each request gets
//! one response with the same request id, except a fetch, whose envelopes
//! come one per frame (the last one says so); requests may be pipelined.
//! Byte-exact layouts are in `docs/protocol.md`.

use thiserror::Error;

use crate::codec::{DecodeError, Reader, Writer};
use crate::envelope::{Envelope, ENVELOPE_SIZE};
use crate::forward::{SEALED_ANSWER_LEN, SEALED_LEN};
use crate::mailbox::{MailboxId, MailboxKeys};
use crate::pow::MAX_POW_BITS;
use crate::relay_address::RelayAddress;

/// Protocol version spoken by this build.
///
/// How the two sides learn each other's version (docs/protocol.md, "Versions"): the
/// relay's first frame, [`Response::Hello`], begins with a prefix that every version
/// keeps (tag 0x81, request id, version), which [`hello_version`] reads without
/// decoding the rest; the client compares it with its own and, if they differ, tells
/// the user which side to upgrade. A request the relay cannot parse (as a newer
/// client's new request would be) is answered [`ErrorCode::Malformed`] with the
/// relay's version as the detail (0 from relays before this rule), in the error
/// frame's layout, which every version keeps too.
///
/// Version 3: a sequencer never claimed takes a keyed claim of any epoch as its first
/// (a channel's sequencer moves at removals), which a relay of version 2 refuses; so a
/// client of version 3 must not talk to one.
///
/// Version 4: a claim carries its commit ([`Request::Deposit`], [`Request::ClaimCommit`]),
/// which the sequencer holds for the members who lost the epoch or missed the commit
/// ([`Request::FetchCommit`]).
///
/// Version 5: a connection may declare itself paced ([`Request::Paced`]); the relay then
/// answers each of its requests no sooner than a fixed delay after it arrived, so that an
/// observer of a paced link cannot tell an `Ack` or `Create` (which wait for the store's
/// fsync) from a `Fetch` or a `Ping` by the answer's delay. And the hello carries the
/// relay's identity certificate and its credential for the TLS certificate of the
/// connection (`relay_identity`): the PIN is the identity's, and the TLS key is fresh at
/// every start of the relay.
///
/// Version 6: forwarding (`crate::forward`, docs/protocol.md, "Forwarding"). A client sends
/// what it sends to a mailbox on another relay to its own home relay, sealed to the
/// destination relay's forward key ([`Request::Forward`]); the home relay passes it on
/// ([`Request::Sealed`]) and hands back the sealed answer ([`Response::Sealed`]). Every frame
/// grows from [`INNER_FRAME_SIZE`] (4,160 bytes, which a forwarded request still is inside
/// its seal) to [`FRAME_SIZE`] (5,632 bytes) to hold the seal's X-Wing encapsulation.
pub const PROTOCOL_VERSION: u8 = 6;

pub use crate::relay_identity::{MAX_CREDENTIAL, MAX_IDENTITY_CERT};

/// The tag of [`Response::Hello`], frozen in every version.
const HELLO_TAG: u8 = 0x81;

/// The protocol version a relay announces in its first frame, read from the prefix
/// that every protocol version keeps: tag 0x81, request id (4), version (1). `None`
/// if the frame is not a hello. The rest of the frame is not looked at, so a hello
/// of any version, longer or laid out otherwise, gives its version.
pub fn hello_version(frame: &[u8]) -> Option<u8> {
    match frame {
        [HELLO_TAG, _, _, _, _, version, ..] => Some(*version),
        _ => None,
    }
}

/// The relay's identity certificate and credential from a hello of version 5 or later, read
/// from the prefix that those versions keep: tag, request id, version, nonce (32), the three
/// limits (u32 each), then the two fields. A client checks the relay's identity with them
/// before it believes what the hello says of the relay's version (a relay of another version
/// is otherwise told apart before its hello is parsed). `None` if the frame has no such
/// prefix.
pub fn hello_identity(frame: &[u8]) -> Option<(Vec<u8>, Vec<u8>)> {
    if hello_version(frame)? < 5 {
        return None;
    }
    let mut r = Reader::new(frame.get(1 + 4 + 1 + 32 + 12..)?);
    let identity = bounded(r.bytes16().ok()?, MAX_IDENTITY_CERT).ok()?;
    let credential = bounded(r.bytes16().ok()?, MAX_CREDENTIAL).ok()?;
    Some((identity, credential))
}

/// The size of every frame on the wire, in both directions: the largest frame (a
/// [`Request::Forward`]: the destination's address, at most 291 bytes, and a sealed inner
/// frame, [`crate::forward::SEALED_LEN`]) rounded up to a multiple of 64.
pub const FRAME_SIZE: usize = 5632;

/// The size of a forwarded request's frame, and of its answer's, inside their seals
/// (`crate::forward`): the largest such frame (a send: its capability, envelope and proof
/// of work) rounded up to a multiple of 64. It was the size of every frame before protocol 6.
pub const INNER_FRAME_SIZE: usize = 4160;

/// Most envelopes the relay returns for one fetch.
pub const MAX_FETCH: u16 = 15;

/// Bytes of a commit in one [`Request::Deposit`] or [`Response::Commit`] frame.
pub const COMMIT_PART: usize = 4096;

/// Most parts of one deposited commit: a commit of at most 512 KiB.
pub const MAX_COMMIT_PARTS: u16 = 128;

/// How long a deposit may take, from its first part to the claim that names it
/// (docs/protocol.md, "Claims"): a deposit not claimed by then lapses, and a claim
/// without its whole deposit is refused, so no claim is ever granted without its commit.
pub const DEPOSIT_LAPSE: std::time::Duration = std::time::Duration::from_secs(60);

/// How many of a sequencer's latest epochs keep their winning commits for
/// [`Request::FetchCommit`] (docs/protocol.md, "Claims").
pub const KEPT_COMMITS: u64 = 16;

/// The digest a [`Request::ClaimCommit`] names: SHA-256 of the deposited commit.
pub fn commit_digest(commit: &[u8]) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    Sha256::new()
        .chain_update(b"backchannel/v1/commit")
        .chain_update(commit)
        .finalize()
        .into()
}

/// Flag on an envelope frame: it carries a delivery.
const HAS_DELIVERY: u8 = 0x01;
/// Flag on an envelope frame: more frames answer the same fetch.
const MORE: u8 = 0x02;

/// A request from a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// Create a mailbox with a recipient key and the digest of its send capability.
    Create {
        /// New mailbox id.
        mailbox: MailboxId,
        /// Ed25519 public key that may open it.
        recipient_key: [u8; 32],
        /// SHA-256 of the send capability.
        send_digest: [u8; 32],
        /// Proof of work each send must carry, in bits ([`crate::pow`]): 0
        /// for an ordinary mailbox, more for a drop box; at most
        /// [`MAX_POW_BITS`].
        pow_bits: u8,
    },
    /// Deliver one envelope. The send capability is the sender's only name
    /// for the mailbox.
    Send {
        /// Send capability.
        send: [u8; 32],
        /// The sealed envelope.
        envelope: Envelope,
        /// Proof-of-work nonce for this envelope and mailbox
        /// ([`crate::pow::solve`]); 0 when the mailbox demands none.
        pow: u64,
    },
    /// Prove possession of the recipient key for this connection.
    Open {
        /// Mailbox to open.
        mailbox: MailboxId,
        /// Ed25519 signature over the open context, the connection nonce and the id.
        proof: [u8; 64],
    },
    /// Fetch envelopes from the mailboxes opened on this connection, waiting
    /// up to `wait_ms` for one to arrive if none is there. The answer is one
    /// frame per envelope, or one empty frame.
    Fetch {
        /// At most this many (capped at [`MAX_FETCH`]).
        max: u16,
        /// Long-poll time in milliseconds (capped by the relay).
        wait_ms: u32,
    },
    /// Acknowledge (and so delete) one envelope of an opened mailbox.
    Ack {
        /// Mailbox.
        mailbox: MailboxId,
        /// Sequence number from the delivery.
        seq: u64,
    },
    /// Delete an opened mailbox and everything in it.
    Delete {
        /// Mailbox.
        mailbox: MailboxId,
    },
    /// Claim `epoch` of a sequencer mailbox: granted to exactly one token per
    /// epoch, in order; repeating a granted claim with the same token is granted again.
    Claim {
        /// The sequencer mailbox's send capability.
        send: [u8; 32],
        /// The epoch being claimed.
        epoch: u64,
        /// Identifies the claimant's commit.
        token: [u8; 32],
    },
    /// Keep-alive.
    Ping,
    /// Claim `epoch` of a sequencer mailbox with the epoch's claim key: granted when
    /// the key opens the lock the previous epoch's winner left ([`claim_lock`]), or
    /// when the sequencer has no lock yet; the grant leaves `next` as the lock of the
    /// following epoch. Repeating a granted claim with the same `next` is granted again.
    /// A sequencer with a lock refuses a [`Request::Claim`] (docs/protocol.md, "Claims").
    ClaimKeyed {
        /// The sequencer mailbox's send capability.
        send: [u8; 32],
        /// The epoch being claimed.
        epoch: u64,
        /// The claim key of `epoch` (an MLS exporter secret of that epoch).
        key: [u8; 32],
        /// The lock of `epoch + 1`: [`claim_lock`] of that epoch's claim key.
        next: [u8; 32],
    },
    /// One part of a commit about to be claimed, kept by the relay for this connection
    /// only: part 0 starts a new deposit, the others follow in order.
    Deposit {
        /// This part's index.
        part: u16,
        /// How many parts the commit has (1 to [`MAX_COMMIT_PARTS`]).
        total: u16,
        /// At most [`COMMIT_PART`] bytes.
        bytes: Vec<u8>,
    },
    /// A [`Request::ClaimKeyed`] that carries its commit: granted only when this
    /// connection's deposit is whole and its [`commit_digest`] is `digest`; the
    /// sequencer then holds the commit with the grant, for [`Request::FetchCommit`].
    ClaimCommit {
        /// The sequencer mailbox's send capability.
        send: [u8; 32],
        /// The epoch being claimed.
        epoch: u64,
        /// The claim key of `epoch`.
        key: [u8; 32],
        /// The lock of `epoch + 1`.
        next: [u8; 32],
        /// The deposited commit's digest.
        digest: [u8; 32],
    },
    /// One part of the commit that won `epoch` at a sequencer, for a member of that
    /// epoch (who shows its claim key): answered [`Response::Commit`]; `EpochConflict`
    /// (detail: the next epoch) when the sequencer holds no commit of `epoch`.
    FetchCommit {
        /// The sequencer mailbox's send capability.
        send: [u8; 32],
        /// The epoch whose winning commit is asked for.
        epoch: u64,
        /// The claim key of `epoch`.
        key: [u8; 32],
        /// Which part.
        part: u16,
    },
    /// This connection is a paced link (cover traffic): answer each of its requests, this
    /// one included, no sooner than the relay's answer floor after it arrived (or when it is
    /// done, if later). Answered [`Response::Ok`].
    Paced,
    /// To the client's home relay: pass `sealed` on to the relay at `to` as a
    /// [`Request::Sealed`], and answer with its answer ([`Response::Sealed`], or an error of
    /// the home relay's own, [`ErrorCode::Unreachable`] when the destination cannot be
    /// reached). `sealed` is a forwarded request sealed to `to`'s forward key
    /// (`crate::forward::seal`), exactly [`crate::forward::SEALED_LEN`] bytes.
    Forward {
        /// The destination relay.
        to: RelayAddress,
        /// The sealed request.
        sealed: Vec<u8>,
    },
    /// From a forwarding relay: open `sealed` with this relay's forward key and execute
    /// the request inside; answered [`Response::Sealed`] (or `Unsealed` when it does not
    /// open).
    Sealed {
        /// The sealed request ([`crate::forward::SEALED_LEN`] bytes).
        sealed: Vec<u8>,
    },
    /// To the client's home relay: the identity certificate and credential of the relay at
    /// `relay`, as that relay presented them to the home relay (the client checks them
    /// against the PIN, `relay_identity::check_forward`). Answered [`Response::Identity`].
    Identify {
        /// The relay whose identity is asked for.
        relay: RelayAddress,
    },
    /// From a forwarding relay, first on its connection: its identity certificate and its
    /// identity key's signature over [`crate::forward::FORWARDER_LABEL`] and this
    /// connection's hello nonce. The relay then counts the connection's requests against
    /// that forwarder's budget rather than a client's. Answered [`Response::Ok`].
    Forwarder {
        /// The forwarding relay's identity certificate (DER).
        identity: Vec<u8>,
        /// The TLS 1.3 signature scheme of `signature`.
        scheme: u16,
        /// The signature.
        signature: Vec<u8>,
    },
    /// Allocate a nameplate (an invite code's number, `crate::code`) holding `record` (at
    /// most [`MAX_NAMEPLATE_RECORD`] bytes) for the relay's nameplate lifetime. Answered
    /// [`Response::Nameplate`] with the number the relay chose. Spoken with one's own relay
    /// only; nameplates cannot be listed.
    Nameplate {
        /// What the one who takes the nameplate gets.
        record: Vec<u8>,
    },
    /// Take the nameplate `number`: answered [`Response::Record`] with its record, and the
    /// nameplate is gone (a nameplate is taken once); [`ErrorCode::NoSuchNameplate`] when it
    /// was taken, has expired or never was.
    TakeNameplate {
        /// The nameplate's number.
        number: u32,
    },
    /// Keep `bundle` (at most [`MAX_BUNDLE`] bytes) under `name` until `expires_at` (Unix
    /// seconds; the relay keeps it no longer than its bundle lifetime): what a short address
    /// names (`crate::drop::ShortDropAddress`, a short invite line), the key material too
    /// long to print. Answered `Ok`; publishing the same bundle under the same name again
    /// keeps it longer; another bundle under a name in use is refused
    /// [`ErrorCode::BundleTaken`]. Spoken with one's own relay only.
    Publish {
        /// The name the short address carries.
        name: [u8; 16],
        /// Keep it until then.
        expires_at: u64,
        /// The bundle.
        bundle: Vec<u8>,
    },
    /// The bundle published under `name`: answered [`Response::Record`], or
    /// [`ErrorCode::NoSuchBundle`]. The bundle is not taken: every holder of the short
    /// address fetches it.
    Bundle {
        /// Its name.
        name: [u8; 16],
    },
}

/// Longest bundle a relay keeps ([`Request::Publish`]).
pub const MAX_BUNDLE: usize = 2048;

/// Longest record a nameplate holds.
pub const MAX_NAMEPLATE_RECORD: usize = 1024;

impl Request {
    /// The `Create` of the mailbox `keys` holds, with `pow_bits` of work asked of each send
    /// (0: an ordinary mailbox).
    pub fn create(keys: &MailboxKeys, pow_bits: u8) -> Self {
        Request::Create {
            mailbox: keys.id(),
            recipient_key: keys.recipient_public(),
            send_digest: keys.address.send.digest(),
            pow_bits,
        }
    }

    /// The `Open` of the mailbox `keys` holds, on the connection whose hello gave `nonce`.
    pub fn open(keys: &MailboxKeys, nonce: &[u8; 32]) -> Self {
        Request::Open {
            mailbox: keys.id(),
            proof: keys.open_proof(nonce),
        }
    }
}

/// Whether a request may be forwarded to another relay (sealed inside a
/// [`Request::Forward`]): the requests that name a mailbox by its send capability, a
/// `Create` (a channel's new sequencer, made by the member who removes someone, on the
/// sequencer's relay), a `TakeNameplate` (an invite code made at the inviter's relay), a
/// `Bundle` (what a short invite line names), and `Ping`. The receive side (and a `Nameplate`'s allocation) (`Open`, `Fetch`, `Ack`, `Delete`) is
/// only ever spoken with one's own relay.
pub fn forwardable(req: &Request) -> bool {
    matches!(
        req,
        Request::Create { .. }
            | Request::Send { .. }
            | Request::Claim { .. }
            | Request::ClaimKeyed { .. }
            | Request::Deposit { .. }
            | Request::ClaimCommit { .. }
            | Request::FetchCommit { .. }
            | Request::TakeNameplate { .. }
            | Request::Bundle { .. }
            | Request::Ping
    )
}

/// The lock that a claim key opens: what the relay keeps of the next epoch's claim key.
pub fn claim_lock(key: &[u8; 32]) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    Sha256::new()
        .chain_update(b"backchannel/v1/claim-lock")
        .chain_update(key)
        .finalize()
        .into()
}

/// The `detail` of the `Malformed` answer to a [`Request::Claim`] on a sequencer that
/// has a lock: the protocol version that claims there need, so that a client of
/// version 2 tells its user to upgrade.
pub const KEYED_CLAIMS_VERSION: u64 = 3;

/// Why the relay refused a request. Codes are stable on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum ErrorCode {
    /// The frame could not be parsed. `Response::Error.detail` holds the relay's
    /// protocol version (0 from relays before that rule).
    #[error("the relay could not parse a request (client and relay versions may differ)")]
    Malformed,
    /// The frame was longer than [`FRAME_SIZE`] (a shorter one is [`ErrorCode::Malformed`]).
    #[error("a request was not the size the relay accepts")]
    FrameTooLarge,
    /// No such mailbox, or a wrong send capability (deliberately the same answer).
    #[error("the mailbox does not exist at this relay, or the capability is wrong")]
    NoSuchMailbox,
    /// The mailbox id is already taken.
    #[error("a mailbox with this id already exists")]
    MailboxExists,
    /// The open proof did not verify.
    #[error("the proof of mailbox ownership did not verify")]
    BadProof,
    /// The mailbox has not been opened on this connection.
    #[error("the mailbox has not been opened on this connection")]
    NotOpened,
    /// The mailbox holds its maximum number of envelopes.
    #[error("the recipient's mailbox is full; it must collect its messages first")]
    MailboxFull,
    /// This connection has created or opened its maximum number of mailboxes.
    #[error("too many mailboxes on one connection")]
    TooManyMailboxes,
    /// The relay has its maximum number of connections.
    #[error("the relay has too many connections; try again later")]
    TooManyConnections,
    /// The claimed epoch is not the next one; `Response::Error.detail` holds the next epoch.
    #[error("another member changed the channel first")]
    EpochConflict,
    /// The relay's storage failed.
    #[error("the relay's storage is unavailable; try again later")]
    Storage,
    /// This connection sent requests faster than the relay allows; the request was not
    /// executed. `Response::Error.detail` holds the milliseconds until the next one is accepted.
    #[error("requests were sent faster than the relay allows; wait a moment and try again")]
    RateLimited,
    /// The relay holds its maximum number of envelopes in all mailboxes together.
    #[error("the relay is full; try again later or ask its operator for more space")]
    RelayFull,
    /// The mailbox is a drop box and the send's proof of work is missing or
    /// does not solve the puzzle for this envelope and mailbox.
    #[error(
        "the drop box refused the letter: its proof of work is missing or wrong (the sender's backchannel must compute it; upgrade it)"
    )]
    WorkRequired,
    /// A [`Request::ClaimCommit`] without this connection's whole deposit of that commit
    /// (never sent, incomplete, lapsed, or another one).
    #[error("the relay does not have the whole change that the claim names; it will be sent again")]
    NoDeposit,
    /// A forwarded request could not be passed on: the home relay could not reach the
    /// destination relay, or it did not prove the identity its address pins.
    #[error("your relay could not reach the other relay; the message stays queued")]
    Unreachable,
    /// A [`Request::Sealed`] that this relay's forward key does not open (sealed to a key
    /// of before its last restart, or damaged): nothing was executed.
    #[error("the other relay could not open a forwarded request; it will be sent again")]
    Unsealed,
    /// A [`Request::TakeNameplate`] of a nameplate that was taken, has expired or never was.
    #[error("no such invite code at this relay: it was used, has expired, or was never made there")]
    NoSuchNameplate,
    /// A [`Request::Bundle`] of a name under which nothing is published (expired, or never).
    #[error("the relay holds nothing under this short address: it has expired or was never published there")]
    NoSuchBundle,
    /// A [`Request::Publish`] of another bundle under a name in use.
    #[error("another bundle is published under this name")]
    BundleTaken,
}

impl ErrorCode {
    fn to_u16(self) -> u16 {
        match self {
            ErrorCode::Malformed => 1,
            ErrorCode::FrameTooLarge => 2,
            ErrorCode::NoSuchMailbox => 3,
            ErrorCode::MailboxExists => 4,
            ErrorCode::BadProof => 5,
            ErrorCode::NotOpened => 6,
            ErrorCode::MailboxFull => 7,
            ErrorCode::TooManyMailboxes => 8,
            ErrorCode::TooManyConnections => 9,
            ErrorCode::EpochConflict => 10,
            ErrorCode::Storage => 11,
            ErrorCode::RateLimited => 12,
            ErrorCode::RelayFull => 13,
            ErrorCode::WorkRequired => 14,
            ErrorCode::NoDeposit => 15,
            ErrorCode::Unreachable => 16,
            ErrorCode::Unsealed => 17,
            ErrorCode::NoSuchNameplate => 18,
            ErrorCode::NoSuchBundle => 19,
            ErrorCode::BundleTaken => 20,
        }
    }

    fn from_u16(v: u16) -> Result<Self, DecodeError> {
        Ok(match v {
            1 => ErrorCode::Malformed,
            2 => ErrorCode::FrameTooLarge,
            3 => ErrorCode::NoSuchMailbox,
            4 => ErrorCode::MailboxExists,
            5 => ErrorCode::BadProof,
            6 => ErrorCode::NotOpened,
            7 => ErrorCode::MailboxFull,
            8 => ErrorCode::TooManyMailboxes,
            9 => ErrorCode::TooManyConnections,
            10 => ErrorCode::EpochConflict,
            11 => ErrorCode::Storage,
            12 => ErrorCode::RateLimited,
            13 => ErrorCode::RelayFull,
            14 => ErrorCode::WorkRequired,
            15 => ErrorCode::NoDeposit,
            16 => ErrorCode::Unreachable,
            17 => ErrorCode::Unsealed,
            18 => ErrorCode::NoSuchNameplate,
            19 => ErrorCode::NoSuchBundle,
            20 => ErrorCode::BundleTaken,
            _ => return Err(DecodeError::Invalid("error code")),
        })
    }
}

/// Limits a relay announces in its hello.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest request frame accepted.
    pub max_request_frame: u32,
    /// Most envelopes one mailbox holds.
    pub max_envelopes_per_mailbox: u32,
    /// Most mailboxes one connection may create or open.
    pub max_mailboxes_per_connection: u32,
}

/// One stored envelope handed to its recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The mailbox it sits in.
    pub mailbox: MailboxId,
    /// Its sequence number in that mailbox (increasing).
    pub seq: u64,
    /// The sealed bytes.
    pub envelope: Envelope,
}

/// A response from the relay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    /// First frame on every connection.
    Hello {
        /// Protocol version.
        version: u8,
        /// Nonce that open proofs on this connection sign.
        nonce: [u8; 32],
        /// The relay's limits.
        limits: Limits,
        /// The relay's identity certificate (DER): SHA-256 of it is the PIN
        /// (`relay_identity`; at most [`MAX_IDENTITY_CERT`] bytes).
        identity: Vec<u8>,
        /// The identity's credential for this relay's TLS certificate
        /// (`relay_identity::Credential`; at most [`MAX_CREDENTIAL`] bytes).
        credential: Vec<u8>,
    },
    /// The request succeeded.
    Ok,
    /// Envelopes for a fetch (possibly none).
    Envelopes(Vec<Delivery>),
    /// The request failed.
    Error {
        /// Why.
        code: ErrorCode,
        /// Code-specific detail (the next epoch for [`ErrorCode::EpochConflict`]).
        detail: u64,
    },
    /// Answer to [`Request::Ping`].
    Pong,
    /// One part of a held commit ([`Request::FetchCommit`]).
    Commit {
        /// How many parts the commit has.
        total: u16,
        /// This part: at most [`COMMIT_PART`] bytes.
        bytes: Vec<u8>,
    },
    /// Answer to [`Request::Identify`].
    Identity {
        /// The relay's identity certificate (at most [`MAX_IDENTITY_CERT`] bytes).
        identity: Vec<u8>,
        /// Its credential (at most [`MAX_CREDENTIAL`] bytes).
        credential: Vec<u8>,
    },
    /// The destination relay's answer to a forwarded request, sealed for the client
    /// (`crate::forward::open_answer`; [`crate::forward::SEALED_ANSWER_LEN`] bytes).
    Sealed(Vec<u8>),
    /// Answer to [`Request::Nameplate`]: the number allocated.
    Nameplate {
        /// From 1 to [`crate::code::MAX_NAMEPLATE`].
        number: u32,
    },
    /// Answer to [`Request::TakeNameplate`] (the nameplate's record, at most
    /// [`MAX_NAMEPLATE_RECORD`] bytes) and to [`Request::Bundle`] (the bundle, at most
    /// [`MAX_BUNDLE`] bytes).
    Record(Vec<u8>),
}

/// A frame could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum FrameError {
    /// Larger than the limit for its direction.
    #[error("frame of {0} bytes exceeds the limit")]
    TooLarge(usize),
    /// Not a valid frame.
    #[error("malformed frame: {0}")]
    Malformed(#[from] DecodeError),
}

/// Pads a frame body to `size` ([`FRAME_SIZE`], or [`INNER_FRAME_SIZE`] inside a seal).
fn padded(w: Writer, size: usize) -> Vec<u8> {
    let mut v = w.into_vec();
    debug_assert!(v.len() <= size);
    v.resize(size, 0);
    v
}

/// A field of at most `max` bytes.
fn bounded(bytes: &[u8], max: usize) -> Result<Vec<u8>, DecodeError> {
    if bytes.len() > max {
        return Err(DecodeError::Invalid("field length"));
    }
    Ok(bytes.to_vec())
}

/// Checks the frame's size (`size`), then after `parse` that only zero padding is left.
fn strict<T>(
    frame: &[u8],
    size: usize,
    parse: impl FnOnce(&mut Reader<'_>) -> Result<T, DecodeError>,
) -> Result<T, FrameError> {
    if frame.len() > size {
        return Err(FrameError::TooLarge(frame.len()));
    }
    if frame.len() < size {
        return Err(DecodeError::Invalid("frame size").into());
    }
    let mut r = Reader::new(frame);
    let out = parse(&mut r)?;
    if !r.take_zero_padding() {
        return Err(DecodeError::Invalid("frame padding").into());
    }
    Ok(out)
}

/// Encodes a request with its id as one frame of [`FRAME_SIZE`] bytes.
pub fn encode_request(id: u32, req: &Request) -> Vec<u8> {
    padded(request_body(id, req), FRAME_SIZE)
}

/// Encodes a forwarded request as the frame of [`INNER_FRAME_SIZE`] bytes that its seal
/// holds (request id 0); `None` for a request that is not [`forwardable`].
pub fn encode_inner_request(req: &Request) -> Option<Vec<u8>> {
    forwardable(req).then(|| padded(request_body(0, req), INNER_FRAME_SIZE))
}

/// Decodes the request inside a seal (attacker input): a [`forwardable`] request in a
/// frame of [`INNER_FRAME_SIZE`] bytes.
pub fn decode_inner_request(frame: &[u8]) -> Result<Request, FrameError> {
    let (id, req) = strict(frame, INNER_FRAME_SIZE, parse_request)?;
    // One encoding per request: inside a seal the request id is always 0.
    if id != 0 || !forwardable(&req) {
        return Err(DecodeError::Invalid("forwarded request").into());
    }
    Ok(req)
}

fn request_body(id: u32, req: &Request) -> Writer {
    let mut w = Writer::with_capacity(FRAME_SIZE);
    match req {
        Request::Create {
            mailbox,
            recipient_key,
            send_digest,
            pow_bits,
        } => {
            w.u8(0x01)
                .u32(id)
                .put(&mailbox.0)
                .put(recipient_key)
                .put(send_digest)
                .u8(*pow_bits);
        }
        Request::Send { send, envelope, pow } => {
            w.u8(0x02).u32(id).put(send).put(envelope.as_bytes()).u64(*pow);
        }
        Request::Open { mailbox, proof } => {
            w.u8(0x03).u32(id).put(&mailbox.0).put(proof);
        }
        Request::Fetch { max, wait_ms } => {
            w.u8(0x04).u32(id).u16(*max).u32(*wait_ms);
        }
        Request::Ack { mailbox, seq } => {
            w.u8(0x05).u32(id).put(&mailbox.0).u64(*seq);
        }
        Request::Delete { mailbox } => {
            w.u8(0x06).u32(id).put(&mailbox.0);
        }
        Request::Claim { send, epoch, token } => {
            w.u8(0x07).u32(id).put(send).u64(*epoch).put(token);
        }
        Request::Ping => {
            w.u8(0x08).u32(id);
        }
        Request::ClaimKeyed { send, epoch, key, next } => {
            w.u8(0x09).u32(id).put(send).u64(*epoch).put(key).put(next);
        }
        Request::Deposit { part, total, bytes } => {
            w.u8(0x0a)
                .u32(id)
                .u16(*part)
                .u16(*total)
                .bytes16(&bytes[..bytes.len().min(COMMIT_PART)]);
        }
        Request::ClaimCommit {
            send,
            epoch,
            key,
            next,
            digest,
        } => {
            w.u8(0x0b).u32(id).put(send).u64(*epoch).put(key).put(next).put(digest);
        }
        Request::FetchCommit { send, epoch, key, part } => {
            w.u8(0x0c).u32(id).put(send).u64(*epoch).put(key).u16(*part);
        }
        Request::Paced => {
            w.u8(0x0d).u32(id);
        }
        Request::Forward { to, sealed } => {
            w.u8(0x0e).u32(id);
            to.encode(&mut w);
            w.put(&sealed[..sealed.len().min(SEALED_LEN)]);
        }
        Request::Sealed { sealed } => {
            w.u8(0x0f).u32(id).put(&sealed[..sealed.len().min(SEALED_LEN)]);
        }
        Request::Identify { relay } => {
            w.u8(0x10).u32(id);
            relay.encode(&mut w);
        }
        Request::Forwarder {
            identity,
            scheme,
            signature,
        } => {
            let identity = identity.get(..MAX_IDENTITY_CERT).unwrap_or(identity);
            let signature = signature.get(..MAX_SIGNATURE).unwrap_or(signature);
            w.u8(0x11).u32(id).bytes16(identity).u16(*scheme).bytes16(signature);
        }
        Request::Nameplate { record } => {
            w.u8(0x12)
                .u32(id)
                .bytes16(&record[..record.len().min(MAX_NAMEPLATE_RECORD)]);
        }
        Request::TakeNameplate { number } => {
            w.u8(0x13).u32(id).u32(*number);
        }
        Request::Publish {
            name,
            expires_at,
            bundle,
        } => {
            w.u8(0x14)
                .u32(id)
                .put(name)
                .u64(*expires_at)
                .bytes16(&bundle[..bundle.len().min(MAX_BUNDLE)]);
        }
        Request::Bundle { name } => {
            w.u8(0x15).u32(id).put(name);
        }
    }
    w
}

/// Longest signature a [`Request::Forwarder`] carries.
pub const MAX_SIGNATURE: usize = 512;

/// Decodes a request frame from a client (attacker input).
pub fn decode_request(frame: &[u8]) -> Result<(u32, Request), FrameError> {
    strict(frame, FRAME_SIZE, parse_request)
}

fn parse_request(r: &mut Reader<'_>) -> Result<(u32, Request), DecodeError> {
    {
        let tag = r.u8()?;
        let id = r.u32()?;
        let req = match tag {
            0x01 => Request::Create {
                mailbox: MailboxId(r.array()?),
                recipient_key: r.array()?,
                send_digest: r.array()?,
                pow_bits: match r.u8()? {
                    bits if bits <= MAX_POW_BITS => bits,
                    _ => return Err(DecodeError::Invalid("proof-of-work difficulty")),
                },
            },
            0x02 => Request::Send {
                send: r.array()?,
                envelope: Envelope::from_bytes(r.take(ENVELOPE_SIZE)?)?,
                pow: r.u64()?,
            },
            0x03 => Request::Open {
                mailbox: MailboxId(r.array()?),
                proof: r.array()?,
            },
            0x04 => Request::Fetch {
                max: r.u16()?,
                wait_ms: r.u32()?,
            },
            0x05 => Request::Ack {
                mailbox: MailboxId(r.array()?),
                seq: r.u64()?,
            },
            0x06 => Request::Delete {
                mailbox: MailboxId(r.array()?),
            },
            0x07 => Request::Claim {
                send: r.array()?,
                epoch: r.u64()?,
                token: r.array()?,
            },
            0x08 => Request::Ping,
            0x09 => Request::ClaimKeyed {
                send: r.array()?,
                epoch: r.u64()?,
                key: r.array()?,
                next: r.array()?,
            },
            0x0a => {
                let part = r.u16()?;
                let total = r.u16()?;
                let bytes = r.bytes16()?;
                if total == 0 || total > MAX_COMMIT_PARTS || part >= total {
                    return Err(DecodeError::Invalid("commit part"));
                }
                if bytes.is_empty() || bytes.len() > COMMIT_PART {
                    return Err(DecodeError::Invalid("commit part size"));
                }
                Request::Deposit {
                    part,
                    total,
                    bytes: bytes.to_vec(),
                }
            }
            0x0b => Request::ClaimCommit {
                send: r.array()?,
                epoch: r.u64()?,
                key: r.array()?,
                next: r.array()?,
                digest: r.array()?,
            },
            0x0c => Request::FetchCommit {
                send: r.array()?,
                epoch: r.u64()?,
                key: r.array()?,
                part: r.u16()?,
            },
            0x0d => Request::Paced,
            0x0e => Request::Forward {
                to: RelayAddress::decode(r)?,
                sealed: r.take(SEALED_LEN)?.to_vec(),
            },
            0x0f => Request::Sealed {
                sealed: r.take(SEALED_LEN)?.to_vec(),
            },
            0x10 => Request::Identify {
                relay: RelayAddress::decode(r)?,
            },
            0x11 => Request::Forwarder {
                identity: bounded(r.bytes16()?, MAX_IDENTITY_CERT)?,
                scheme: r.u16()?,
                signature: bounded(r.bytes16()?, MAX_SIGNATURE)?,
            },
            0x12 => Request::Nameplate {
                record: bounded(r.bytes16()?, MAX_NAMEPLATE_RECORD)?,
            },
            0x13 => Request::TakeNameplate { number: r.u32()? },
            0x14 => Request::Publish {
                name: r.array()?,
                expires_at: r.u64()?,
                bundle: bounded(r.bytes16()?, MAX_BUNDLE)?,
            },
            0x15 => Request::Bundle { name: r.array()? },
            _ => return Err(DecodeError::Invalid("request tag")),
        };
        Ok((id, req))
    }
}

/// Encodes a response with the id of the request it answers: one frame,
/// or for [`Response::Envelopes`] one frame per envelope (at most
/// [`MAX_FETCH`]) and one empty frame when there are none.
pub fn encode_response(id: u32, resp: &Response) -> Vec<Vec<u8>> {
    if let Some(w) = single_response(id, resp) {
        return vec![padded(w, FRAME_SIZE)];
    }
    let Response::Envelopes(list) = resp else {
        return Vec::new();
    };
    let list = &list[..list.len().min(MAX_FETCH as usize)];
    if list.is_empty() {
        let mut w = Writer::with_capacity(FRAME_SIZE);
        w.u8(0x83).u32(id).u8(0);
        return vec![padded(w, FRAME_SIZE)];
    }
    list.iter()
        .enumerate()
        .map(|(i, d)| {
            let more = if i + 1 < list.len() { MORE } else { 0 };
            let mut w = Writer::with_capacity(FRAME_SIZE);
            w.u8(0x83)
                .u32(id)
                .u8(HAS_DELIVERY | more)
                .put(&d.mailbox.0)
                .u64(d.seq)
                .put(d.envelope.as_bytes());
            padded(w, FRAME_SIZE)
        })
        .collect()
}

/// Encodes the answer to a forwarded request as the frame of [`INNER_FRAME_SIZE`] bytes
/// that its seal holds: an answer of one frame (a forwarded request is never a fetch;
/// envelopes are answered `Malformed`).
pub fn encode_inner_response(resp: &Response) -> Vec<u8> {
    let w = single_response(0, resp)
        .filter(|_| {
            !matches!(
                resp,
                Response::Sealed(_) | Response::Identity { .. } | Response::Hello { .. } | Response::Nameplate { .. }
            )
        })
        .unwrap_or_else(|| {
            let mut w = Writer::new();
            w.u8(0x84).u32(0).u16(ErrorCode::Malformed.to_u16()).u64(0);
            w
        });
    padded(w, INNER_FRAME_SIZE)
}

/// Decodes the answer inside a seal (attacker input): one frame of [`INNER_FRAME_SIZE`]
/// bytes, `Ok`, `Pong`, an error, a commit's part or a nameplate's record.
pub fn decode_inner_response(frame: &[u8]) -> Result<Response, FrameError> {
    let f = strict(frame, INNER_FRAME_SIZE, parse_response)?;
    if f.id != 0 {
        return Err(DecodeError::Invalid("forwarded answer id").into());
    }
    match f.response {
        r
        @ (Response::Ok | Response::Pong | Response::Error { .. } | Response::Commit { .. } | Response::Record(_)) => {
            Ok(r)
        }
        _ => Err(DecodeError::Invalid("forwarded answer").into()),
    }
}

/// The body of a response that is one frame; `None` for envelopes.
fn single_response(id: u32, resp: &Response) -> Option<Writer> {
    let mut w = Writer::with_capacity(FRAME_SIZE);
    match resp {
        Response::Hello {
            version,
            nonce,
            limits,
            identity,
            credential,
        } => {
            let identity = identity.get(..MAX_IDENTITY_CERT).unwrap_or(identity);
            let credential = credential.get(..MAX_CREDENTIAL).unwrap_or(credential);
            w.u8(HELLO_TAG)
                .u32(id)
                .u8(*version)
                .put(nonce)
                .u32(limits.max_request_frame)
                .u32(limits.max_envelopes_per_mailbox)
                .u32(limits.max_mailboxes_per_connection)
                .bytes16(identity)
                .bytes16(credential);
        }
        Response::Ok => {
            w.u8(0x82).u32(id);
        }
        Response::Envelopes(_) => return None,
        Response::Error { code, detail } => {
            w.u8(0x84).u32(id).u16(code.to_u16()).u64(*detail);
        }
        Response::Pong => {
            w.u8(0x85).u32(id);
        }
        Response::Commit { total, bytes } => {
            w.u8(0x86)
                .u32(id)
                .u16(*total)
                .bytes16(&bytes[..bytes.len().min(COMMIT_PART)]);
        }
        Response::Identity { identity, credential } => {
            let identity = identity.get(..MAX_IDENTITY_CERT).unwrap_or(identity);
            let credential = credential.get(..MAX_CREDENTIAL).unwrap_or(credential);
            w.u8(0x87).u32(id).bytes16(identity).bytes16(credential);
        }
        Response::Sealed(sealed) => {
            w.u8(0x88).u32(id).put(&sealed[..sealed.len().min(SEALED_ANSWER_LEN)]);
        }
        Response::Nameplate { number } => {
            w.u8(0x89).u32(id).u32(*number);
        }
        Response::Record(record) => {
            w.u8(0x8a).u32(id).bytes16(&record[..record.len().min(MAX_BUNDLE)]);
        }
    }
    Some(w)
}

/// One decoded response frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseFrame {
    /// The request it answers.
    pub id: u32,
    /// The response, or for an envelope frame, its zero or one envelope.
    pub response: Response,
    /// More envelope frames answer the same request.
    pub more: bool,
}

/// Decodes one response frame from a relay (attacker input for the client).
pub fn decode_response(frame: &[u8]) -> Result<ResponseFrame, FrameError> {
    strict(frame, FRAME_SIZE, parse_response)
}

fn parse_response(r: &mut Reader<'_>) -> Result<ResponseFrame, DecodeError> {
    {
        let tag = r.u8()?;
        let id = r.u32()?;
        let mut more = false;
        let response = match tag {
            HELLO_TAG => Response::Hello {
                version: r.u8()?,
                nonce: r.array()?,
                limits: Limits {
                    max_request_frame: r.u32()?,
                    max_envelopes_per_mailbox: r.u32()?,
                    max_mailboxes_per_connection: r.u32()?,
                },
                identity: bounded(r.bytes16()?, MAX_IDENTITY_CERT)?,
                credential: bounded(r.bytes16()?, MAX_CREDENTIAL)?,
            },
            0x82 => Response::Ok,
            0x83 => {
                let flags = r.u8()?;
                if flags & !(HAS_DELIVERY | MORE) != 0 || flags == MORE {
                    return Err(DecodeError::Invalid("envelope flags"));
                }
                more = flags & MORE != 0;
                let mut list = Vec::new();
                if flags & HAS_DELIVERY != 0 {
                    list.push(Delivery {
                        mailbox: MailboxId(r.array()?),
                        seq: r.u64()?,
                        envelope: Envelope::from_bytes(r.take(ENVELOPE_SIZE)?)?,
                    });
                }
                Response::Envelopes(list)
            }
            0x84 => Response::Error {
                code: ErrorCode::from_u16(r.u16()?)?,
                detail: r.u64()?,
            },
            0x85 => Response::Pong,
            0x86 => {
                let total = r.u16()?;
                let bytes = r.bytes16()?;
                if total == 0 || total > MAX_COMMIT_PARTS || bytes.is_empty() || bytes.len() > COMMIT_PART {
                    return Err(DecodeError::Invalid("commit part"));
                }
                Response::Commit {
                    total,
                    bytes: bytes.to_vec(),
                }
            }
            0x87 => Response::Identity {
                identity: bounded(r.bytes16()?, MAX_IDENTITY_CERT)?,
                credential: bounded(r.bytes16()?, MAX_CREDENTIAL)?,
            },
            0x88 => Response::Sealed(r.take(SEALED_ANSWER_LEN)?.to_vec()),
            0x89 => Response::Nameplate { number: r.u32()? },
            0x8a => Response::Record(bounded(r.bytes16()?, MAX_BUNDLE)?),
            _ => return Err(DecodeError::Invalid("response tag")),
        };
        Ok(ResponseFrame { id, response, more })
    }
}

/// Collects the frames of one response: envelope frames are joined until
/// the one without the "more" flag. Returns `None` while more are expected.
#[derive(Debug, Default)]
pub struct ResponseAssembler {
    pending: Option<(u32, Vec<Delivery>)>,
}

impl ResponseAssembler {
    /// Adds a frame; returns the complete response when it is.
    pub fn push(&mut self, frame: ResponseFrame) -> Result<Option<(u32, Response)>, FrameError> {
        let ResponseFrame { id, response, more } = frame;
        let Response::Envelopes(list) = response else {
            if self.pending.is_some() {
                return Err(DecodeError::Invalid("interleaved response").into());
            }
            return Ok(Some((id, response)));
        };
        let mut acc = match self.pending.take() {
            Some((pid, acc)) if pid == id => acc,
            Some(_) => return Err(DecodeError::Invalid("interleaved response").into()),
            None => Vec::new(),
        };
        acc.extend(list);
        if acc.len() > MAX_FETCH as usize {
            return Err(DecodeError::Invalid("envelope count").into());
        }
        if more {
            self.pending = Some((id, acc));
            Ok(None)
        } else {
            Ok(Some((id, Response::Envelopes(acc))))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn arb_id() -> impl Strategy<Value = MailboxId> {
        any::<[u8; 32]>().prop_map(MailboxId)
    }

    fn arb_envelope() -> impl Strategy<Value = Envelope> {
        (any::<u8>(), any::<u64>()).prop_map(|(b, n)| {
            let mut v = vec![b; ENVELOPE_SIZE];
            v[..8].copy_from_slice(&n.to_be_bytes());
            Envelope::from_bytes(&v).unwrap_or_else(|_| unreachable!())
        })
    }

    fn arb_request() -> impl Strategy<Value = Request> {
        prop_oneof![
            (arb_id(), any::<[u8; 32]>(), any::<[u8; 32]>(), 0..=MAX_POW_BITS).prop_map(
                |(mailbox, recipient_key, send_digest, pow_bits)| Request::Create {
                    mailbox,
                    recipient_key,
                    send_digest,
                    pow_bits,
                }
            ),
            (any::<[u8; 32]>(), arb_envelope(), any::<u64>()).prop_map(|(send, envelope, pow)| Request::Send {
                send,
                envelope,
                pow
            }),
            (arb_id(), proptest::collection::vec(any::<u8>(), 64)).prop_map(|(mailbox, p)| {
                let mut proof = [0u8; 64];
                proof.copy_from_slice(&p);
                Request::Open { mailbox, proof }
            }),
            (any::<u16>(), any::<u32>()).prop_map(|(max, wait_ms)| Request::Fetch { max, wait_ms }),
            (arb_id(), any::<u64>()).prop_map(|(mailbox, seq)| Request::Ack { mailbox, seq }),
            arb_id().prop_map(|mailbox| Request::Delete { mailbox }),
            (any::<[u8; 32]>(), any::<u64>(), any::<[u8; 32]>()).prop_map(|(send, epoch, token)| Request::Claim {
                send,
                epoch,
                token
            }),
            Just(Request::Ping),
            Just(Request::Paced),
            (any::<[u8; 32]>(), any::<u64>(), any::<[u8; 32]>(), any::<[u8; 32]>())
                .prop_map(|(send, epoch, key, next)| Request::ClaimKeyed { send, epoch, key, next }),
            (
                1..=MAX_COMMIT_PARTS,
                any::<u16>(),
                proptest::collection::vec(any::<u8>(), 1..=COMMIT_PART)
            )
                .prop_map(|(total, part, bytes)| Request::Deposit {
                    part: part % total,
                    total,
                    bytes,
                }),
            (
                any::<[u8; 32]>(),
                any::<u64>(),
                any::<[u8; 32]>(),
                any::<[u8; 32]>(),
                any::<[u8; 32]>()
            )
                .prop_map(|(send, epoch, key, next, digest)| Request::ClaimCommit {
                    send,
                    epoch,
                    key,
                    next,
                    digest,
                }),
            (any::<[u8; 32]>(), any::<u64>(), any::<[u8; 32]>(), any::<u16>())
                .prop_map(|(send, epoch, key, part)| Request::FetchCommit { send, epoch, key, part }),
            proptest::collection::vec(any::<u8>(), 0..=MAX_NAMEPLATE_RECORD)
                .prop_map(|record| Request::Nameplate { record }),
            any::<u32>().prop_map(|number| Request::TakeNameplate { number }),
            (
                any::<[u8; 16]>(),
                any::<u64>(),
                proptest::collection::vec(any::<u8>(), 0..=MAX_BUNDLE)
            )
                .prop_map(|(name, expires_at, bundle)| Request::Publish {
                    name,
                    expires_at,
                    bundle
                }),
            any::<[u8; 16]>().prop_map(|name| Request::Bundle { name }),
        ]
    }

    fn arb_response() -> impl Strategy<Value = Response> {
        prop_oneof![
            (
                any::<[u8; 32]>(),
                any::<(u32, u32, u32)>(),
                proptest::collection::vec(any::<u8>(), 0..=MAX_IDENTITY_CERT),
                proptest::collection::vec(any::<u8>(), 0..=MAX_CREDENTIAL)
            )
                .prop_map(|(nonce, (a, b, c), identity, credential)| Response::Hello {
                    version: PROTOCOL_VERSION,
                    nonce,
                    limits: Limits {
                        max_request_frame: a,
                        max_envelopes_per_mailbox: b,
                        max_mailboxes_per_connection: c
                    },
                    identity,
                    credential,
                }),
            Just(Response::Ok),
            Just(Response::Pong),
            proptest::collection::vec((arb_id(), any::<u64>(), arb_envelope()), 0..=MAX_FETCH as usize).prop_map(|v| {
                Response::Envelopes(
                    v.into_iter()
                        .map(|(mailbox, seq, envelope)| Delivery { mailbox, seq, envelope })
                        .collect(),
                )
            }),
            (
                1..=MAX_COMMIT_PARTS,
                proptest::collection::vec(any::<u8>(), 1..=COMMIT_PART)
            )
                .prop_map(|(total, bytes)| Response::Commit { total, bytes }),
            any::<u32>().prop_map(|number| Response::Nameplate { number }),
            proptest::collection::vec(any::<u8>(), 0..=MAX_BUNDLE).prop_map(Response::Record),
            (1u16..=20, any::<u64>()).prop_map(|(c, detail)| Response::Error {
                code: ErrorCode::from_u16(c).unwrap_or(ErrorCode::Malformed),
                detail
            }),
        ]
    }

    fn reassemble(frames: Vec<Vec<u8>>) -> Result<(u32, Response), FrameError> {
        let mut asm = ResponseAssembler::default();
        let n = frames.len();
        for (i, f) in frames.into_iter().enumerate() {
            if let Some(done) = asm.push(decode_response(&f)?)? {
                assert_eq!(i + 1, n, "complete before the last frame");
                return Ok(done);
            }
        }
        Err(DecodeError::Truncated.into())
    }

    proptest! {
        #[test]
        fn requests_round_trip_at_one_size(id in any::<u32>(), req in arb_request()) {
            let bytes = encode_request(id, &req);
            prop_assert_eq!(bytes.len(), FRAME_SIZE);
            prop_assert_eq!(decode_request(&bytes), Ok((id, req)));
        }

        #[test]
        fn responses_round_trip_at_one_size(id in any::<u32>(), resp in arb_response()) {
            let frames = encode_response(id, &resp);
            prop_assert!(frames.iter().all(|f| f.len() == FRAME_SIZE));
            prop_assert_eq!(reassemble(frames), Ok((id, resp)));
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..9000)) {
            let _ = decode_request(&bytes);
            let _ = decode_response(&bytes);
        }

        #[test]
        fn arbitrary_full_size_frames_never_panic(head in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut f = head;
            f.resize(FRAME_SIZE, 0);
            let _ = decode_request(&f);
            if let Ok(frame) = decode_response(&f) {
                let _ = ResponseAssembler::default().push(frame);
            }
        }

        #[test]
        fn truncation_or_nonzero_padding_is_an_error(id in any::<u32>(), req in arb_request(), cut in 1usize..64) {
            let bytes = encode_request(id, &req);
            prop_assert!(decode_request(&bytes[..bytes.len() - cut]).is_err());
            let mut dirty = bytes.clone();
            dirty[FRAME_SIZE - 1] = 1;
            prop_assert!(decode_request(&dirty).is_err());
        }
    }

    /// The prefix every version keeps: a hello of this version gives its version, and
    /// so does one of any other version, longer or laid out otherwise after the prefix.
    #[test]
    fn the_hello_prefix_gives_the_version_of_any_relay() {
        let hello = encode_response(
            0,
            &Response::Hello {
                version: PROTOCOL_VERSION,
                nonce: [7; 32],
                limits: Limits {
                    max_request_frame: 1,
                    max_envelopes_per_mailbox: 2,
                    max_mailboxes_per_connection: 3,
                },
                identity: vec![1; 400],
                credential: vec![2; 200],
            },
        );
        assert_eq!(hello_version(&hello[0]), Some(PROTOCOL_VERSION));
        // Bytes 0..6 are frozen: tag 0x81, request id, version.
        assert_eq!(&hello[0][..6], &[0x81, 0, 0, 0, 0, PROTOCOL_VERSION]);
        let mut future = vec![0x81, 0, 0, 0, 0, 9];
        future.extend_from_slice(&[0xff; 9000]);
        assert_eq!(hello_version(&future), Some(9));
        assert!(decode_response(&future).is_err(), "a later layout does not decode");
        assert_eq!(hello_version(&encode_response(0, &Response::Ok)[0]), None);
        assert_eq!(hello_version(&[0x81, 0, 0]), None);
    }

    #[test]
    fn oversize_request_is_rejected_before_parsing() {
        let big = vec![0x08u8; FRAME_SIZE + 1];
        assert_eq!(decode_request(&big), Err(FrameError::TooLarge(FRAME_SIZE + 1)));
    }

    #[test]
    fn a_ping_and_a_send_are_the_same_size() {
        let ping = encode_request(1, &Request::Ping);
        let send = encode_request(
            2,
            &Request::Send {
                send: [1; 32],
                envelope: Envelope::from_bytes(&[9; ENVELOPE_SIZE]).unwrap_or_else(|_| unreachable!()),
                pow: u64::MAX,
            },
        );
        assert_eq!(ping.len(), send.len());
        let ok = encode_response(1, &Response::Ok);
        let none = encode_response(2, &Response::Envelopes(Vec::new()));
        assert_eq!((ok.len(), ok[0].len()), (1, FRAME_SIZE));
        assert_eq!((none.len(), none[0].len()), (1, FRAME_SIZE));
    }

    /// The proof-of-work fields sit where a frame of the earlier layout had
    /// zero padding: such a frame reads as an ordinary mailbox and no nonce.
    #[test]
    fn pow_fields_fill_former_padding_and_are_bounded() {
        let envelope = Envelope::from_bytes(&[9; ENVELOPE_SIZE]).unwrap_or_else(|_| unreachable!());
        // The largest request fits: tag, id, capability, envelope, nonce.
        const { assert!(1 + 4 + 32 + ENVELOPE_SIZE + 8 <= FRAME_SIZE) };
        let mut old_send = vec![0x02, 0, 0, 0, 5];
        old_send.extend_from_slice(&[1; 32]);
        old_send.extend_from_slice(envelope.as_bytes());
        old_send.resize(FRAME_SIZE, 0);
        let send = Request::Send {
            send: [1; 32],
            envelope: envelope.clone(),
            pow: 0,
        };
        assert_eq!(decode_request(&old_send), Ok((5, send.clone())));
        assert_eq!(encode_request(5, &send), old_send);
        let solved = encode_request(
            5,
            &Request::Send {
                send: [1; 32],
                envelope,
                pow: 0x0102_0304_0506_0708,
            },
        );
        assert_eq!(&solved[4133..4141], &[1, 2, 3, 4, 5, 6, 7, 8]);

        let mut old_create = vec![0x01, 0, 0, 0, 6];
        old_create.extend_from_slice(&[2; 96]);
        old_create.resize(FRAME_SIZE, 0);
        let create = |pow_bits| Request::Create {
            mailbox: MailboxId([2; 32]),
            recipient_key: [2; 32],
            send_digest: [2; 32],
            pow_bits,
        };
        assert_eq!(decode_request(&old_create), Ok((6, create(0))));
        let mut drop_box = old_create.clone();
        drop_box[101] = MAX_POW_BITS;
        assert_eq!(decode_request(&drop_box), Ok((6, create(MAX_POW_BITS))));
        assert_eq!(encode_request(6, &create(MAX_POW_BITS)), drop_box);
        drop_box[101] = MAX_POW_BITS + 1;
        assert!(matches!(decode_request(&drop_box), Err(FrameError::Malformed(_))));
        drop_box[101] = u8::MAX;
        assert!(matches!(decode_request(&drop_box), Err(FrameError::Malformed(_))));

        let refused = encode_response(
            7,
            &Response::Error {
                code: ErrorCode::WorkRequired,
                detail: 0,
            },
        );
        assert_eq!(&refused[0][5..7], &[0, 14]);
        assert_eq!(
            decode_response(&refused[0]).map(|f| f.response),
            Ok(Response::Error {
                code: ErrorCode::WorkRequired,
                detail: 0
            })
        );
    }

    #[test]
    fn interleaved_or_overlong_envelope_streams_are_refused() {
        let d = Delivery {
            mailbox: MailboxId([1; 32]),
            seq: 1,
            envelope: Envelope::from_bytes(&[9; ENVELOPE_SIZE]).unwrap_or_else(|_| unreachable!()),
        };
        let two = encode_response(7, &Response::Envelopes(vec![d.clone(), d.clone()]));
        let mut asm = ResponseAssembler::default();
        assert_eq!(
            asm.push(decode_response(&two[0]).unwrap_or_else(|_| unreachable!())),
            Ok(None)
        );
        let other = encode_response(8, &Response::Ok);
        assert!(asm
            .push(decode_response(&other[0]).unwrap_or_else(|_| unreachable!()))
            .is_err());
        // A relay that never ends the stream is cut off at MAX_FETCH.
        let mut asm = ResponseAssembler::default();
        let mut refused = false;
        for _ in 0..=MAX_FETCH {
            match asm.push(decode_response(&two[0]).unwrap_or_else(|_| unreachable!())) {
                Ok(None) => {}
                Ok(Some(_)) => unreachable!(),
                Err(_) => refused = true,
            }
        }
        assert!(refused);
    }
}

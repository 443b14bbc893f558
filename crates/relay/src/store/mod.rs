//! Mailbox storage: one async trait, [`MailboxStore`], and its two backends:
//! [`EmbeddedStore`] (redb on the relay's disk, the default) and [`NatsStore`]
//! (a NATS JetStream cluster shared by many relays). The relay holds a [`Backend`],
//! the one of the two it was started with.
//!
//! - `embedded/`: the redb backend: `mod.rs` the store and its reads, `record.rs` the
//!   byte layouts of its records and their format versions, `at_rest.rs` the
//!   per-envelope keys (key file, sealing, slot book, recovery), `writer.rs` the
//!   writer and zeroing threads (group commit), `upgrade.rs` the data directory's
//!   format version and the conversion of older layouts.
//! - `nats.rs`: the JetStream backend.
//! - `bundle.rs`: what both backends share of bundles (the rule of a publish, the value's
//!   layout).
//!
//! Proof of work is checked before the store is called ([`backchannel_core::pow::prove`],
//! in the request's task); the store takes the checked [`ProvenWork`] and compares it
//! with the mailbox's difficulty in the same step that stores the envelope.

use std::future::Future;
use std::sync::Arc;

use backchannel_core::envelope::Envelope;
use backchannel_core::frame::{claim_lock, Delivery, ErrorCode, KEYED_CLAIMS_VERSION};
use backchannel_core::mailbox::MailboxId;
pub use backchannel_core::pow::ProvenWork;

pub mod bundle;
pub mod embedded;
pub mod nats;

pub use embedded::{EmbeddedStore, ENVELOPE_BODY_FILE, ENVELOPE_KEY_FILE};
pub use nats::{NatsConfig, NatsError, NatsStore};

/// A storage operation failed or was refused.
///
/// The first variants are answers to the request (the client is told them); the
/// others are failures of the store itself. Their messages are fixed text (a
/// description of what was being done, and numbers at most), never a backend's own
/// words, which can hold mailbox ids or NATS subjects: the message is what the relay
/// logs. The backend's error is kept as the [`source`](std::error::Error::source).
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// Unknown mailbox or wrong capability.
    #[error("no such mailbox")]
    NoSuchMailbox,
    /// The id is taken.
    #[error("mailbox exists")]
    MailboxExists,
    /// The mailbox is at its limit.
    #[error("mailbox full")]
    MailboxFull,
    /// The store holds its limit of envelopes, all mailboxes together.
    #[error("relay full")]
    RelayFull,
    /// The claimed epoch is not the next; holds the next epoch.
    #[error("epoch conflict")]
    EpochConflict(u64),
    /// A claim without a key, at a sequencer whose claims need one (its client is older
    /// than the channel's other members).
    #[error("claim without a key")]
    ClaimNeedsKey,
    /// The mailbox demands proof of work and the send does not provide it (see
    /// [`backchannel_core::pow`]).
    #[error("proof of work required")]
    WorkRequired,
    /// Another bundle is held under the name published ([`MailboxStore::bundle_publish`]).
    #[error("bundle name taken")]
    BundleTaken,
    /// The embedded database failed.
    #[error("the relay's database failed while {doing}; check the disk of the --data directory")]
    Database {
        /// What the store was doing.
        doing: &'static str,
        /// redb's error.
        #[source]
        source: Arc<redb::Error>,
    },
    /// Another relay process has the data directory open.
    #[error("the relay's data directory is in use by another relay process; stop that one first")]
    InUse,
    /// The file of envelope keys, or of sealed envelopes, could not be read or written.
    #[error("the relay's envelope files failed while {doing}; check the disk of the --data directory")]
    KeyFile {
        /// What the store was doing.
        doing: &'static str,
        /// The OS error.
        #[source]
        source: Arc<std::io::Error>,
    },
    /// A stored record does not decode or open.
    #[error("a stored {what} is corrupt")]
    Corrupt {
        /// Which kind of record.
        what: &'static str,
    },
    /// The data was written by a newer backchannel, in a format this one does not know.
    /// Nothing was changed.
    #[error(
        "this relay data directory was written by a newer backchannel ({what} format {found}, this relay reads up to {known}); upgrade backchannel"
    )]
    NewerFormat {
        /// Which record or file.
        what: &'static str,
        /// The version found.
        found: u32,
        /// The newest version this build reads.
        known: u32,
    },
    /// The operating system had no randomness for an envelope key.
    #[error("the system's random number generator failed")]
    Randomness(#[source] Arc<rand_core::Error>),
    /// The embedded store could not start its writer thread.
    #[error("the relay's store could not start its writer thread; the system may be out of threads or memory")]
    Thread(#[source] Arc<std::io::Error>),
    /// The embedded store's writer thread is gone (the store is closing).
    #[error("the relay's store is closing")]
    Closed,
    /// The NATS cluster failed or did not answer.
    #[error("the NATS cluster failed while {doing}")]
    Nats {
        /// What the store was doing.
        doing: &'static str,
        /// What went wrong.
        #[source]
        source: Arc<NatsError>,
    },
}

/// Equal when the same thing went wrong while doing the same thing (sources aside).
impl PartialEq for StoreError {
    fn eq(&self, other: &Self) -> bool {
        use StoreError::*;
        match (self, other) {
            (EpochConflict(a), EpochConflict(b)) => a == b,
            (Database { doing: a, .. }, Database { doing: b, .. })
            | (KeyFile { doing: a, .. }, KeyFile { doing: b, .. })
            | (Nats { doing: a, .. }, Nats { doing: b, .. })
            | (Corrupt { what: a }, Corrupt { what: b }) => a == b,
            (
                NewerFormat { what, found, known },
                NewerFormat {
                    what: w,
                    found: f,
                    known: k,
                },
            ) => (what, found, known) == (w, f, k),
            _ => std::mem::discriminant(self) == std::mem::discriminant(other),
        }
    }
}

impl Eq for StoreError {}

impl StoreError {
    /// Whether this is a failure of the store rather than an answer to the request.
    pub fn is_failure(&self) -> bool {
        self.refusal().is_none()
    }

    /// The code and detail a client is answered when the store refused its request;
    /// `None` for a failure of the store (answered `Storage`, and logged).
    pub fn refusal(&self) -> Option<(ErrorCode, u64)> {
        Some(match self {
            StoreError::NoSuchMailbox => (ErrorCode::NoSuchMailbox, 0),
            StoreError::MailboxExists => (ErrorCode::MailboxExists, 0),
            StoreError::MailboxFull => (ErrorCode::MailboxFull, 0),
            StoreError::RelayFull => (ErrorCode::RelayFull, 0),
            StoreError::EpochConflict(next) => (ErrorCode::EpochConflict, *next),
            // Answered like a request of a newer protocol, so that the older client
            // tells its user to upgrade.
            StoreError::ClaimNeedsKey => (ErrorCode::Malformed, KEYED_CLAIMS_VERSION),
            StoreError::WorkRequired => (ErrorCode::WorkRequired, 0),
            StoreError::BundleTaken => (ErrorCode::BundleTaken, 0),
            _ => return None,
        })
    }

    pub(crate) fn database<E: Into<redb::Error>>(doing: &'static str) -> impl FnOnce(E) -> StoreError {
        move |e| StoreError::Database {
            doing,
            source: Arc::new(e.into()),
        }
    }

    pub(crate) fn key_file(doing: &'static str) -> impl FnOnce(std::io::Error) -> StoreError {
        move |e| StoreError::KeyFile {
            doing,
            source: Arc::new(e),
        }
    }

    pub(crate) fn corrupt(what: &'static str) -> StoreError {
        StoreError::Corrupt { what }
    }
}

/// How many envelopes the store holds at most.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    /// In one mailbox.
    pub per_mailbox: u32,
    /// In all mailboxes together.
    pub total: u64,
}

/// Counts for the relay's log.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Mailboxes.
    pub mailboxes: u64,
    /// Stored envelopes.
    pub envelopes: u64,
}

/// Storage for mailboxes and their envelopes. Every method is async and may be
/// awaited on the executor: a backend that must block (redb reads) does so on the
/// blocking pool, save for short reads (the embedded store's fetch of at most 15
/// envelopes), one that must wait (the embedded writer, the NATS cluster) waits
/// without a thread.
///
/// The methods return `impl Future + Send` rather than being `async fn`, so that the
/// relay's tasks, which are spawned, can await them. The trait is therefore not
/// dyn-compatible: the relay holds a [`Backend`], an enum of the two stores.
pub trait MailboxStore: Send + Sync + 'static {
    /// Creates a mailbox under its receive id and the digest of its send
    /// capability. A mailbox with `pow_bits` > 0 (a drop box; at most
    /// [`backchannel_core::pow::MAX_POW_BITS`], as frame decoding enforces) accepts
    /// only sends that prove that much work.
    fn create(
        &self,
        id: MailboxId,
        recipient_key: [u8; 32],
        send_digest: [u8; 32],
        pow_bits: u8,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Stores an envelope durably in the mailbox whose send capability is
    /// `send`; returns that mailbox's receive id and the envelope's sequence number.
    /// `work` is what the send's nonce was checked to prove for this envelope and
    /// mailbox ([`backchannel_core::pow::prove`]); if the mailbox demands more,
    /// refuses with [`StoreError::WorkRequired`] and stores nothing.
    fn send(
        &self,
        send: [u8; 32],
        envelope: Envelope,
        expires_at: u64,
        work: ProvenWork,
    ) -> impl Future<Output = Result<(MailboxId, u64), StoreError>> + Send;
    /// The recipient key of a mailbox.
    fn recipient_key(&self, id: MailboxId) -> impl Future<Output = Result<Option<[u8; 32]>, StoreError>> + Send;
    /// Up to `max` oldest envelopes from these mailboxes.
    fn fetch(&self, ids: &[MailboxId], max: usize) -> impl Future<Output = Result<Vec<Delivery>, StoreError>> + Send;
    /// Deletes one envelope (absent is fine).
    fn ack(&self, id: MailboxId, seq: u64) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Deletes a mailbox and its envelopes.
    fn delete(&self, id: MailboxId) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Claims an epoch of the sequencer mailbox whose send capability is `send`
    /// (by [`Claims::judge`]). A keyed claim that carries its `commit` leaves it held
    /// with the grant, in the same write ([`HeldCommit`]); any other grant drops the
    /// commit held before.
    fn claim(
        &self,
        send: [u8; 32],
        epoch: u64,
        proof: ClaimProof,
        commit: Option<Arc<[u8]>>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// The commit that won `epoch` at the sequencer whose send capability is `send`, for
    /// a member of that epoch who shows its claim `key` (by [`HeldCommit::judge_fetch`]).
    fn held_commit(
        &self,
        send: [u8; 32],
        epoch: u64,
        key: [u8; 32],
    ) -> impl Future<Output = Result<Arc<[u8]>, StoreError>> + Send;
    /// Deletes envelopes whose expiry is before `now`, and the nameplates and bundles expired
    /// by then; returns how many envelopes.
    fn expire(&self, now: u64) -> impl Future<Output = Result<u64, StoreError>> + Send;
    /// Allocates a nameplate holding `record` (at most
    /// [`backchannel_core::frame::MAX_NAMEPLATE_RECORD`] bytes, as frame decoding enforces)
    /// until `expires_at` (Unix seconds); returns its number, from 1 to
    /// [`backchannel_core::code::MAX_NAMEPLATE`], one no other nameplate holds, picked at
    /// random, short ones first ([`nameplate_candidates`]). Refused with
    /// [`StoreError::RelayFull`] when no free number was found.
    fn nameplate_create(
        &self,
        record: Vec<u8>,
        expires_at: u64,
    ) -> impl Future<Output = Result<u32, StoreError>> + Send;
    /// Takes the nameplate `number`: its record, and the nameplate is gone, for one caller
    /// only however many race (relays sharing a cluster included). `None` if there is no
    /// such nameplate, or it expired before `now` (then it is removed).
    fn nameplate_take(&self, number: u32, now: u64)
        -> impl Future<Output = Result<Option<Vec<u8>>, StoreError>> + Send;
    /// Keeps `bundle` (at most [`backchannel_core::frame::MAX_BUNDLE`] bytes, as frame
    /// decoding enforces) under `name` until `expires_at` (Unix seconds), by
    /// [`bundle::judge`]: a name that holds nothing at `now` takes it; the same bundle
    /// published again is kept until the later of the two expiries; another bundle under a
    /// name held at `now` is refused with [`StoreError::BundleTaken`], and nothing is written
    /// (relays sharing a cluster included: of racing publishes of different bundles, one
    /// wins). Refused with [`StoreError::RelayFull`] when the store holds its bound of
    /// bundles. Bundles outlive restarts.
    fn bundle_publish(
        &self,
        name: [u8; 16],
        bundle: Vec<u8>,
        expires_at: u64,
        now: u64,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// The bundle under `name`, which stays (every holder of a short address fetches it);
    /// `None` if there is none, or it expired before `now`.
    fn bundle_get(&self, name: [u8; 16], now: u64) -> impl Future<Output = Result<Option<Vec<u8>>, StoreError>> + Send;
    /// Marks these mailboxes (those that exist) used at `now` (Unix seconds): their
    /// recipient opened them. Creating a mailbox and a granted claim mark it too.
    fn touch(&self, ids: &[MailboxId], now: u64) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Deletes the mailboxes last used before `before` (Unix seconds), with everything
    /// in them; returns how many.
    fn expire_idle(&self, before: u64) -> impl Future<Output = Result<u64, StoreError>> + Send;
    /// Counts.
    fn stats(&self) -> impl Future<Output = Result<Stats, StoreError>> + Send;
    /// Whether the store takes writes now (`/readyz`): for the embedded store, that it
    /// answers; for a cluster, that a write reaches a quorum.
    fn ready(&self) -> impl Future<Output = Result<(), StoreError>> + Send {
        async { self.stats().await.map(|_| ()) }
    }
    /// Passes on deliveries made through other relays sharing this store (their
    /// mailbox ids) so long-polls here wake at once. A store only this relay uses
    /// has none: the relay announces its own deliveries. Call inside the runtime.
    fn forward_deliveries(&self, _notify: tokio::sync::broadcast::Sender<MailboxId>) {}
}

/// What a claim shows a sequencer.
#[derive(Clone, Copy)]
pub enum ClaimProof {
    /// A claim of a client from before claim keys: the claimant's commit token. Only a
    /// sequencer without a lock accepts it.
    Token([u8; 32]),
    /// The epoch's claim key, and the lock it leaves for the next epoch
    /// ([`backchannel_core::frame::Request::ClaimKeyed`]).
    Key {
        /// The claim key of the epoch claimed.
        key: [u8; 32],
        /// The lock of the epoch after it.
        next: [u8; 32],
    },
}

impl std::fmt::Debug for ClaimProof {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ClaimProof::Token(_) => "ClaimProof::Token(..)",
            ClaimProof::Key { .. } => "ClaimProof::Key(..)",
        })
    }
}

/// A sequencer's claims, as each backend stores them: the rule of a claim is here, once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claims {
    /// The epoch the next claim must name.
    pub next_epoch: u64,
    /// The last grant's token (a claim without a key) or the lock of `next_epoch`.
    pub last: [u8; 32],
    /// Whether `last` is a lock: claims need the key that opens it.
    pub locked: bool,
}

/// A commit a sequencer holds with the grant of its epoch (protocol 4), for the latest
/// [`HeldCommit::KEPT`] epochs: a member who lost that epoch, or whose copy of the commit was
/// withheld or lost (its committer's device died before sending it), reads it there, so a
/// claim is never worth anything without its commit (docs/protocol.md, "Claims").
#[derive(Clone, PartialEq, Eq)]
pub struct HeldCommit {
    /// The epoch the commit won.
    pub epoch: u64,
    /// The lock the winning claim opened: [`claim_lock`] of the epoch's claim key, which
    /// a fetch must show.
    pub opened: [u8; 32],
    /// The commit, as the committer sent it to every member.
    pub bytes: Arc<[u8]>,
}

impl std::fmt::Debug for HeldCommit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HeldCommit(epoch {}, {} bytes)", self.epoch, self.bytes.len())
    }
}

impl HeldCommit {
    /// The first byte of an encoded held commit.
    const VERSION: u8 = 1;

    /// How many of a sequencer's latest epochs keep their commits: epoch *e*'s is kept in
    /// slot *e* mod `KEPT` ([`HeldCommit::slot`]), until epoch *e* + `KEPT` replaces it.
    pub const KEPT: u64 = backchannel_core::frame::KEPT_COMMITS;

    /// The slot where epoch `epoch`'s commit is kept.
    pub fn slot(epoch: u64) -> u8 {
        (epoch % Self::KEPT) as u8
    }

    /// What a grant of `epoch` by `proof` leaves held, if it carries a commit.
    pub fn of_grant(epoch: u64, proof: &ClaimProof, commit: Option<Arc<[u8]>>) -> Option<HeldCommit> {
        match (proof, commit) {
            (ClaimProof::Key { key, .. }, Some(bytes)) => Some(HeldCommit {
                epoch,
                opened: claim_lock(key),
                bytes,
            }),
            _ => None,
        }
    }

    /// What a fetch of `epoch` with `key` is answered, at a sequencer whose claims are
    /// `claims` and that holds `held` in the epoch's slot: the commit that won that epoch,
    /// only to a member of the epoch. A wrong key is answered as a wrong capability, like a
    /// wrong claim; no commit of that epoch (not granted yet, granted without one, or its
    /// slot taken by a later epoch) is an epoch conflict that names the next epoch.
    pub fn judge_fetch(
        claims: &Claims,
        held: Option<&HeldCommit>,
        epoch: u64,
        key: &[u8; 32],
    ) -> Result<Arc<[u8]>, StoreError> {
        use subtle::ConstantTimeEq;
        match held {
            Some(h) if h.epoch == epoch && claims.locked && epoch < claims.next_epoch => {
                if bool::from(claim_lock(key).ct_eq(&h.opened)) {
                    Ok(h.bytes.clone())
                } else {
                    Err(StoreError::NoSuchMailbox)
                }
            }
            _ => Err(StoreError::EpochConflict(claims.next_epoch)),
        }
    }

    /// `1 | epoch (u64 BE) | opened (32) | commit (the rest)`.
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(41 + self.bytes.len());
        v.push(Self::VERSION);
        v.extend_from_slice(&self.epoch.to_be_bytes());
        v.extend_from_slice(&self.opened);
        v.extend_from_slice(&self.bytes);
        v
    }

    /// Reads [`HeldCommit::encode`]'s layout.
    pub fn decode(v: &[u8]) -> Result<HeldCommit, StoreError> {
        const WHAT: &str = "held commit";
        match v {
            [Self::VERSION, rest @ ..] if rest.len() > 40 => {
                let (epoch, rest) = rest.split_at(8);
                let (opened, bytes) = rest.split_at(32);
                Ok(HeldCommit {
                    epoch: u64::from_be_bytes(epoch.try_into().map_err(|_| StoreError::corrupt(WHAT))?),
                    opened: opened.try_into().map_err(|_| StoreError::corrupt(WHAT))?,
                    bytes: Arc::from(bytes),
                })
            }
            [version, ..] if *version > Self::VERSION => Err(StoreError::NewerFormat {
                what: WHAT,
                found: u32::from(*version),
                known: u32::from(Self::VERSION),
            }),
            _ => Err(StoreError::corrupt(WHAT)),
        }
    }
}

impl ClaimProof {
    /// The claim a request makes: its epoch and proof, or `None` for another request.
    pub fn of(req: &backchannel_core::frame::Request) -> Option<([u8; 32], u64, ClaimProof)> {
        use backchannel_core::frame::Request;
        match req {
            Request::Claim { send, epoch, token } => Some((*send, *epoch, ClaimProof::Token(*token))),
            Request::ClaimKeyed { send, epoch, key, next }
            | Request::ClaimCommit {
                send, epoch, key, next, ..
            } => Some((*send, *epoch, ClaimProof::Key { key: *key, next: *next })),
            _ => None,
        }
    }
}

impl Claims {
    /// No claim makes the next epoch this or more.
    pub const EPOCH_LIMIT: u64 = 1 << 63;

    /// A sequencer nobody has claimed yet.
    pub const NEW: Claims = Claims {
        next_epoch: 0,
        last: [0; 32],
        locked: false,
    };

    /// What a claim of `epoch` with `proof` does (a keyed claim is the first of any epoch
    /// at a sequencer never claimed): `Ok(Some(claims))` grants it and the
    /// sequencer's claims become `claims`; `Ok(None)` grants it again (a claimant
    /// repeating its granted claim); `Err` refuses it. A key that does not open the
    /// lock is answered as a wrong capability: it comes from someone who is not a
    /// member of the epoch (a removed member, or a fork).
    pub fn judge(&self, epoch: u64, proof: &ClaimProof) -> Result<Option<Claims>, StoreError> {
        use subtle::ConstantTimeEq;
        let eq = |a: &[u8; 32], b: &[u8; 32]| bool::from(a.ct_eq(b));
        // Epochs come from the network: u64::MAX must not overflow, and no epoch reaches
        // bit 63 (a backend may keep a flag there).
        let following = epoch.checked_add(1).filter(|f| *f < Claims::EPOCH_LIMIT);
        match proof {
            ClaimProof::Token(_) if self.locked => Err(StoreError::ClaimNeedsKey),
            ClaimProof::Token(token) => match following {
                Some(next_epoch) if epoch == self.next_epoch => Ok(Some(Claims {
                    next_epoch,
                    last: *token,
                    locked: false,
                })),
                _ if following == Some(self.next_epoch) && eq(token, &self.last) => Ok(None),
                _ => Err(StoreError::EpochConflict(self.next_epoch)),
            },
            // A sequencer nobody has claimed yet takes a keyed claim of any epoch as its
            // first: a channel's sequencer moved to a fresh mailbox (when someone is
            // removed) carries on from the epoch the channel is at.
            ClaimProof::Key { key, next } => match following {
                Some(next_epoch) if epoch == self.next_epoch || *self == Claims::NEW => {
                    if self.locked && !eq(&claim_lock(key), &self.last) {
                        return Err(StoreError::NoSuchMailbox);
                    }
                    Ok(Some(Claims {
                        next_epoch,
                        last: *next,
                        locked: true,
                    }))
                }
                _ if self.locked && following == Some(self.next_epoch) && eq(next, &self.last) => Ok(None),
                _ => Err(StoreError::EpochConflict(self.next_epoch)),
            },
        }
    }
}

/// The ranges a nameplate's number is drawn from, shortest first: a code is read aloud,
/// so a relay with few nameplates out hands out three digits.
pub const NAMEPLATE_RANGES: [u32; 4] = [999, 9_999, 99_999, backchannel_core::code::MAX_NAMEPLATE];

/// Random tries in each of [`NAMEPLATE_RANGES`] before the next.
pub const NAMEPLATE_TRIES: usize = 4;

/// The numbers a store tries, in order, for a new nameplate: [`NAMEPLATE_TRIES`] drawn
/// uniformly from 1 to each of [`NAMEPLATE_RANGES`] in turn (a range whose numbers are
/// mostly taken is soon passed over for the next). The first free one is the nameplate's.
pub fn nameplate_candidates(rng: &mut impl rand_core::RngCore) -> Result<Vec<u32>, StoreError> {
    NAMEPLATE_RANGES
        .iter()
        .flat_map(|top| std::iter::repeat_n(*top, NAMEPLATE_TRIES))
        .map(|top| uniform_below(rng, top).map(|n| n + 1))
        .collect()
}

/// A number in `0..n` (`n` > 0), uniformly (rejection sampling: no modulo bias).
fn uniform_below(rng: &mut impl rand_core::RngCore, n: u32) -> Result<u32, StoreError> {
    let n = u64::from(n.max(1));
    // The largest multiple of n up to 2^32: draws at or above it are drawn again.
    let zone = (1u64 << 32) - (1u64 << 32) % n;
    loop {
        let mut b = [0u8; 4];
        rng.try_fill_bytes(&mut b)
            .map_err(|e| StoreError::Randomness(Arc::new(e)))?;
        let x = u64::from(u32::from_be_bytes(b));
        if x < zone {
            // Below n, which is a u32.
            return Ok((x % n) as u32);
        }
    }
}

/// The store a relay runs on: one of the two backends.
///
/// An enum rather than `dyn MailboxStore` (not dyn-compatible with `impl Future`
/// methods) or a type parameter on `Relay` (which would spread through the server's
/// types for two known backends).
#[derive(Debug)]
pub enum Backend {
    /// redb on this relay's disk.
    Embedded(EmbeddedStore),
    /// A NATS JetStream cluster (boxed: its client is large).
    Nats(Box<NatsStore>),
}

macro_rules! each {
    ($self:ident, $s:ident => $e:expr) => {
        match $self {
            Backend::Embedded($s) => $e,
            Backend::Nats(boxed) => {
                let $s: &NatsStore = boxed;
                $e
            }
        }
    };
}

impl MailboxStore for Backend {
    async fn create(
        &self,
        id: MailboxId,
        recipient_key: [u8; 32],
        send_digest: [u8; 32],
        pow_bits: u8,
    ) -> Result<(), StoreError> {
        each!(self, s => MailboxStore::create(s, id, recipient_key, send_digest, pow_bits).await)
    }

    async fn send(
        &self,
        send: [u8; 32],
        envelope: Envelope,
        expires_at: u64,
        work: ProvenWork,
    ) -> Result<(MailboxId, u64), StoreError> {
        each!(self, s => MailboxStore::send(s, send, envelope, expires_at, work).await)
    }

    async fn recipient_key(&self, id: MailboxId) -> Result<Option<[u8; 32]>, StoreError> {
        each!(self, s => MailboxStore::recipient_key(s, id).await)
    }

    async fn fetch(&self, ids: &[MailboxId], max: usize) -> Result<Vec<Delivery>, StoreError> {
        each!(self, s => MailboxStore::fetch(s, ids, max).await)
    }

    async fn ack(&self, id: MailboxId, seq: u64) -> Result<(), StoreError> {
        each!(self, s => MailboxStore::ack(s, id, seq).await)
    }

    async fn delete(&self, id: MailboxId) -> Result<(), StoreError> {
        each!(self, s => MailboxStore::delete(s, id).await)
    }

    async fn claim(
        &self,
        send: [u8; 32],
        epoch: u64,
        proof: ClaimProof,
        commit: Option<Arc<[u8]>>,
    ) -> Result<(), StoreError> {
        each!(self, s => MailboxStore::claim(s, send, epoch, proof, commit).await)
    }

    async fn held_commit(&self, send: [u8; 32], epoch: u64, key: [u8; 32]) -> Result<Arc<[u8]>, StoreError> {
        each!(self, s => MailboxStore::held_commit(s, send, epoch, key).await)
    }

    async fn expire(&self, now: u64) -> Result<u64, StoreError> {
        each!(self, s => MailboxStore::expire(s, now).await)
    }

    async fn touch(&self, ids: &[MailboxId], now: u64) -> Result<(), StoreError> {
        each!(self, s => MailboxStore::touch(s, ids, now).await)
    }

    async fn nameplate_create(&self, record: Vec<u8>, expires_at: u64) -> Result<u32, StoreError> {
        each!(self, s => MailboxStore::nameplate_create(s, record, expires_at).await)
    }

    async fn nameplate_take(&self, number: u32, now: u64) -> Result<Option<Vec<u8>>, StoreError> {
        each!(self, s => MailboxStore::nameplate_take(s, number, now).await)
    }

    async fn bundle_publish(
        &self,
        name: [u8; 16],
        bundle: Vec<u8>,
        expires_at: u64,
        now: u64,
    ) -> Result<(), StoreError> {
        each!(self, s => MailboxStore::bundle_publish(s, name, bundle, expires_at, now).await)
    }

    async fn bundle_get(&self, name: [u8; 16], now: u64) -> Result<Option<Vec<u8>>, StoreError> {
        each!(self, s => MailboxStore::bundle_get(s, name, now).await)
    }

    async fn expire_idle(&self, before: u64) -> Result<u64, StoreError> {
        each!(self, s => MailboxStore::expire_idle(s, before).await)
    }

    async fn stats(&self) -> Result<Stats, StoreError> {
        each!(self, s => MailboxStore::stats(s).await)
    }

    async fn ready(&self) -> Result<(), StoreError> {
        each!(self, s => MailboxStore::ready(s).await)
    }

    fn forward_deliveries(&self, notify: tokio::sync::broadcast::Sender<MailboxId>) {
        each!(self, s => s.forward_deliveries(notify))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the relay logs of a failure is its message: fixed text, whatever the
    /// backend said (kept as the source, which is never logged).
    #[test]
    fn a_failures_message_is_fixed_text_and_the_backends_words_only_its_source() {
        let words = format!("bc.env.{} at 10.0.0.7:4222", "ab".repeat(32));
        let nats = StoreError::Nats {
            doing: "storing an envelope",
            source: Arc::new(NatsError::Client(words.clone().into())),
        };
        assert_eq!(nats.to_string(), "the NATS cluster failed while storing an envelope");
        let io = StoreError::key_file("reading a key")(std::io::Error::other(words.clone()));
        for e in [&nats, &io] {
            assert!(!e.to_string().contains(&words), "{e}");
            assert!(e.is_failure());
            let mut chain = String::new();
            let mut cause = std::error::Error::source(e);
            while let Some(c) = cause {
                chain.push_str(&c.to_string());
                cause = c.source();
            }
            assert!(chain.contains(&words), "the cause is kept: {chain}");
        }
        assert!(!StoreError::MailboxFull.is_failure());
    }

    #[test]
    #[allow(clippy::unwrap_used)]
    fn nameplate_numbers_are_short_first_and_always_in_range() {
        use rand_core::OsRng;
        for _ in 0..200 {
            let c = nameplate_candidates(&mut OsRng).unwrap();
            assert_eq!(c.len(), NAMEPLATE_RANGES.len() * NAMEPLATE_TRIES);
            for (i, n) in c.iter().enumerate() {
                let top = NAMEPLATE_RANGES[i / NAMEPLATE_TRIES];
                assert!((1..=top).contains(n), "{n} out of 1..={top}");
            }
        }
        // Every number of a small range comes up (uniform, not stuck on a few).
        let mut seen = [false; 10];
        for _ in 0..2000 {
            seen[uniform_below(&mut OsRng, 10).unwrap() as usize] = true;
        }
        assert!(seen.iter().all(|s| *s));
    }
}

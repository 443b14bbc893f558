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
//!
//! Proof of work is checked before the store is called ([`backchannel_core::pow::prove`],
//! in the request's task); the store takes the checked [`ProvenWork`] and compares it
//! with the mailbox's difficulty in the same step that stores the envelope.

use std::future::Future;
use std::sync::Arc;

use backchannel_core::envelope::Envelope;
use backchannel_core::frame::{Delivery, ErrorCode};
use backchannel_core::mailbox::MailboxId;
pub use backchannel_core::pow::ProvenWork;

pub mod embedded;
pub mod nats;

pub use embedded::{EmbeddedStore, ENVELOPE_KEY_FILE};
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
    /// The mailbox demands proof of work and the send does not provide it (see
    /// [`backchannel_core::pow`]).
    #[error("proof of work required")]
    WorkRequired,
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
    /// The file of envelope keys could not be read or written.
    #[error("the relay's envelope key file failed while {doing}; check the disk of the --data directory")]
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
            StoreError::WorkRequired => (ErrorCode::WorkRequired, 0),
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
/// blocking pool, one that must wait (the embedded writer, the NATS cluster) waits
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
    /// Claims an epoch of the sequencer mailbox whose send capability is `send`.
    fn claim(&self, send: [u8; 32], epoch: u64, token: [u8; 32])
        -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Deletes envelopes whose expiry is before `now`; returns how many.
    fn expire(&self, now: u64) -> impl Future<Output = Result<u64, StoreError>> + Send;
    /// Counts.
    fn stats(&self) -> impl Future<Output = Result<Stats, StoreError>> + Send;
    /// Passes on deliveries made through other relays sharing this store (their
    /// mailbox ids) so long-polls here wake at once. A store only this relay uses
    /// has none: the relay announces its own deliveries. Call inside the runtime.
    fn forward_deliveries(&self, _notify: tokio::sync::broadcast::Sender<MailboxId>) {}
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

    async fn claim(&self, send: [u8; 32], epoch: u64, token: [u8; 32]) -> Result<(), StoreError> {
        each!(self, s => MailboxStore::claim(s, send, epoch, token).await)
    }

    async fn expire(&self, now: u64) -> Result<u64, StoreError> {
        each!(self, s => MailboxStore::expire(s, now).await)
    }

    async fn stats(&self) -> Result<Stats, StoreError> {
        each!(self, s => MailboxStore::stats(s).await)
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
}

//! Mailbox storage: one trait, and the embedded backend on redb.
//!
//! Every write goes through a single writer thread that batches whatever is
//! pending into one redb transaction (group commit) with two-phase commit,
//! as redb recommends for attacker-chosen bytes. A caller's write returns
//! only after the transaction holding it is durable on disk.
//!
//! # Nothing left behind: one key per envelope, destroyed with it
//!
//! redb is copy-on-write: a removed value's bytes can survive in freed pages
//! of the redb file long after the envelope was acknowledged, deleted or
//! expired, and neither deletion nor compaction promises to scrub them. So
//! the redb file never holds an envelope in the clear, nor a key to one:
//!
//! - Each envelope is sealed at rest with ChaCha20-Poly1305 under a fresh
//!   random 32-byte key used for that envelope only, with the record's key,
//!   receive id (32) || seq (u64 BE), as associated data (a record moved to
//!   another mailbox or position does not open). The redb value is
//!   expires_at (u64 BE) || slot (u64 BE) || ciphertext (4096 + 16-byte tag).
//! - The keys live in [`KEY_FILE`] next to the redb file: an array of 32-byte
//!   slots, one per stored envelope, written in place with positioned writes;
//!   a slot that no envelope uses holds zeros.
//! - The writer keeps this order for each batch: allocate slots for new
//!   envelopes, write their keys and `fdatasync` the key file, then commit the
//!   redb transaction, so a committed envelope always has its key on disk.
//!   For acknowledged, deleted and expired envelopes it commits first, then
//!   overwrites their slots with zeros and `fdatasync`s, and only then makes
//!   the slots reusable, so a slot is never handed out before its zeroing is
//!   durable (a second thread does the zeroing, so the next batch's commit does not
//!   wait for it). A send is answered once its commit is durable; an ack, delete
//!   or expiry once its zeros are too. Once a key's zeros are on
//!   disk, whatever is left of the envelope in freed redb pages is ciphertext
//!   under a key that no longer exists.
//! - On open, every slot that no record refers to is zeroed (after a crash
//!   between a commit and the zeroing, or between writing a key and a commit
//!   that never happened), and records of the earlier plaintext format are
//!   sealed the same way (their old bytes may remain in freed pages).
//! - A record whose key does not open it is reported as a storage error.
//!
//! The key file grows by at most one slot per envelope stored at the same
//! time; it is never shrunk.
//!
//! ## What this does not do
//!
//! - It protects envelopes after they are gone, not while they are stored:
//!   the keys sit next to the ciphertext, so whoever reads the data directory
//!   reads every envelope still held (they are end-to-end sealed anyway).
//! - Zeroing a slot destroys the key only if the overwrite reaches the same
//!   physical block. On copy-on-write or log-structured file systems (btrfs,
//!   ZFS, bcachefs, F2FS), under snapshots or backups of the directory, with
//!   ext4's `data=journal`, and on SSDs or SD cards whose flash translation
//!   layer remaps writes (wear levelling), the old block can survive until the
//!   device reuses or trims it. An attacker with a raw image of such a device
//!   can then try every 32-byte string it finds against each ciphertext left
//!   in freed redb pages (cheap: one Poly1305 check per candidate) and recover
//!   those envelopes as they were delivered: sealed end to end, so it learns
//!   what a relay operator saw at the time (which mailbox, which sequence
//!   number, the sealed bytes), not their content. Keep the data directory on
//!   a file system that overwrites in place, or on full-disk encryption whose
//!   key is destroyed with the machine.
//! - Keys and envelopes pass through the relay's memory; key buffers are
//!   zeroized after use, but swap or a hibernation image are out of reach here.

use std::collections::{BTreeSet, HashSet};
use std::fs::{File, OpenOptions};
use std::io;
use std::ops::Bound;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::sync::mpsc;
use std::sync::Arc;

use backchannel_core::envelope::{Envelope, ENVELOPE_SIZE};
use backchannel_core::frame::Delivery;
use backchannel_core::mailbox::MailboxId;
use backchannel_core::pow;
use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce, Tag};
use rand_core::{OsRng, RngCore};
use redb::{Database, ReadableTable, ReadableTableMetadata, TableDefinition};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

/// receive id (32) -> mailbox record.
const MAILBOXES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("mailboxes");
/// SHA-256(send capability) (32) -> receive id (32). Senders name a mailbox
/// only by its send capability; the relay keeps just the digest, so its
/// disk alone does not let anyone deliver.
const SENDERS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("senders");
/// id (32) || seq (u64 BE) -> expires_at (u64 BE, Unix s) || slot (u64 BE) ||
/// ChaCha20-Poly1305(key in `slot`, envelope (4096)) with the record key as
/// associated data.
const ENVELOPES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("envelopes");

/// The file of per-envelope keys, in the directory of the redb file.
pub const KEY_FILE: &str = "envelope-keys.bin";

/// redb's page cache.
const CACHE_BYTES: usize = 64 * 1024 * 1024;

/// Most writes committed in one transaction.
const MAX_BATCH: usize = 512;

/// Bytes per key slot.
const SLOT_LEN: usize = 32;
/// Poly1305 tag.
const TAG_LEN: usize = 16;
/// Start of the sealed envelope in a record value.
const SEALED_AT: usize = 8 + 8;
/// A record value: expires_at || slot || sealed envelope || tag.
const VALUE_LEN: usize = SEALED_AT + ENVELOPE_SIZE + TAG_LEN;
/// A record value of the format before at-rest encryption: expires_at || envelope.
const PLAINTEXT_VALUE_LEN: usize = 8 + ENVELOPE_SIZE;

/// One envelope's at-rest key.
type EnvelopeKey = Zeroizing<[u8; SLOT_LEN]>;

fn ct_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.ct_eq(b).into()
}

/// A storage operation failed or was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
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
    /// The mailbox demands proof of work and the send's nonce does not
    /// provide it (see [`backchannel_core::pow`]).
    #[error("proof of work required")]
    WorkRequired,
    /// The disk or database failed.
    #[error("storage failure: {0}")]
    Storage(String),
}

fn storage<E: std::fmt::Display>(e: E) -> StoreError {
    StoreError::Storage(e.to_string())
}

fn key_file_error(doing: &str, e: io::Error) -> StoreError {
    StoreError::Storage(format!("{doing} in {KEY_FILE}: {e}"))
}

fn corrupt_envelope() -> StoreError {
    StoreError::Storage("corrupt envelope record".into())
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

/// A store operation under way.
pub type StoreFuture<T> = std::pin::Pin<Box<dyn std::future::Future<Output = Result<T, StoreError>> + Send>>;

/// Runs a blocking store call on the blocking pool.
pub(crate) fn off_executor<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> StoreFuture<T> {
    Box::pin(async move {
        tokio::task::spawn_blocking(f)
            .await
            .unwrap_or_else(|_| Err(StoreError::Storage("store task failed".into())))
    })
}

/// Storage for mailboxes and their envelopes. Methods block; call them off
/// the async executor. The `*_async` forms are for the executor: by default they run
/// the blocking form on the blocking pool; a store that can wait without a thread
/// overrides them.
pub trait MailboxStore: Send + Sync + 'static {
    /// Creates a mailbox under its receive id and the digest of its send
    /// capability. A mailbox with `pow_bits` > 0 (a drop box; at most
    /// [`pow::MAX_POW_BITS`], as frame decoding enforces) accepts only sends
    /// whose nonce proves that much work.
    fn create(
        &self,
        id: MailboxId,
        recipient_key: [u8; 32],
        send_digest: [u8; 32],
        pow_bits: u8,
    ) -> Result<(), StoreError>;
    /// Stores an envelope durably in the mailbox whose send capability is
    /// `send`; returns that mailbox's receive id and the envelope's sequence number.
    /// `work` is the bits of work the send's nonce proves for this envelope and
    /// mailbox, computed by the caller ([`proof`]); if the mailbox demands more,
    /// refuses with [`StoreError::WorkRequired`] and stores nothing.
    fn send(
        &self,
        send: [u8; 32],
        envelope: Envelope,
        expires_at: u64,
        work: u32,
    ) -> Result<(MailboxId, u64), StoreError>;
    /// The recipient key of a mailbox.
    fn recipient_key(&self, id: MailboxId) -> Result<Option<[u8; 32]>, StoreError>;
    /// Up to `max` oldest envelopes from these mailboxes.
    fn fetch(&self, ids: &[MailboxId], max: usize) -> Result<Vec<Delivery>, StoreError>;
    /// Deletes one envelope (absent is fine).
    fn ack(&self, id: MailboxId, seq: u64) -> Result<(), StoreError>;
    /// Deletes a mailbox and its envelopes.
    fn delete(&self, id: MailboxId) -> Result<(), StoreError>;
    /// Claims an epoch of the sequencer mailbox whose send capability is `send`.
    fn claim(&self, send: [u8; 32], epoch: u64, token: [u8; 32]) -> Result<(), StoreError>;
    /// Deletes envelopes whose expiry is before `now`; returns how many.
    fn expire(&self, now: u64) -> Result<u64, StoreError>;
    /// Counts.
    fn stats(&self) -> Result<Stats, StoreError>;
    /// Passes on deliveries made through other relays sharing this store (their
    /// mailbox ids) so long-polls here wake at once. A store only this relay uses
    /// has none: the relay announces its own deliveries.
    fn forward_deliveries(&self, _notify: tokio::sync::broadcast::Sender<MailboxId>) {}
    /// [`MailboxStore::send`] for the executor.
    fn send_async(
        self: Arc<Self>,
        send: [u8; 32],
        envelope: Envelope,
        expires_at: u64,
        work: u32,
    ) -> StoreFuture<(MailboxId, u64)> {
        off_executor(move || self.send(send, envelope, expires_at, work))
    }
    /// [`MailboxStore::ack`] for the executor.
    fn ack_async(self: Arc<Self>, id: MailboxId, seq: u64) -> StoreFuture<()> {
        off_executor(move || self.ack(id, seq))
    }
    /// [`MailboxStore::claim`] for the executor.
    fn claim_async(self: Arc<Self>, send: [u8; 32], epoch: u64, token: [u8; 32]) -> StoreFuture<()> {
        off_executor(move || self.claim(send, epoch, token))
    }
}

/// A mailbox record (the value in `MAILBOXES`): recipient key (32) ||
/// send digest (32) || next seq (u64 BE) || count (u32 BE) || next epoch
/// (u64 BE) || last token (32) || pow bits (1). Records written before drop
/// boxes lack the last byte and read as `pow_bits` 0; each is rewritten in the
/// longer form the next time it changes. The two lengths tell the forms apart,
/// so no format version is needed.
#[derive(Debug, Clone, Copy)]
struct MailboxRecord {
    recipient: [u8; 32],
    send_digest: [u8; 32],
    next_seq: u64,
    count: u32,
    next_epoch: u64,
    last_token: [u8; 32],
    pow_bits: u8,
}

/// A record of the format before drop boxes, without `pow_bits`.
const RECORD_LEN_BEFORE_POW: usize = 32 + 32 + 8 + 4 + 8 + 32;
const RECORD_LEN: usize = RECORD_LEN_BEFORE_POW + 1;

impl MailboxRecord {
    fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(RECORD_LEN);
        v.extend_from_slice(&self.recipient);
        v.extend_from_slice(&self.send_digest);
        v.extend_from_slice(&self.next_seq.to_be_bytes());
        v.extend_from_slice(&self.count.to_be_bytes());
        v.extend_from_slice(&self.next_epoch.to_be_bytes());
        v.extend_from_slice(&self.last_token);
        v.push(self.pow_bits);
        v
    }

    fn decode(b: &[u8]) -> Result<Self, StoreError> {
        let mut r = backchannel_core::codec::Reader::new(b);
        let bad = |_| StoreError::Storage("corrupt mailbox record".into());
        let rec = Self {
            recipient: r.array().map_err(bad)?,
            send_digest: r.array().map_err(bad)?,
            next_seq: r.u64().map_err(bad)?,
            count: r.u32().map_err(bad)?,
            next_epoch: r.u64().map_err(bad)?,
            last_token: r.array().map_err(bad)?,
            pow_bits: if r.remaining() == 0 { 0 } else { r.u8().map_err(bad)? },
        };
        r.finish().map_err(bad)?;
        Ok(rec)
    }
}

/// The challenge a send answers ([`pow::challenge`]) and the bits of work `nonce`
/// proves for it ([`pow::work`]); `None` for the nonce 0, which every send to an
/// ordinary mailbox carries, without hashing anything.
///
/// It is computed by the caller (`server.rs`, once per send, for the store and for the
/// replay memory), before the write is queued, not by the writer thread: the writer
/// commits every write of the relay one batch after another, and two SHA-256 (over 4 KiB
/// and 40 bytes, a few microseconds) for each of up to `MAX_BATCH` sends would lengthen
/// every batch and so every send's wait. Callers run in parallel on the executor and the
/// blocking pool. The writer then only compares the work with the mailbox's `pow_bits`,
/// in the same transaction that looks the mailbox up and stores the envelope, so a
/// mailbox deleted and re-created with another difficulty in between cannot slip an
/// envelope past its check.
pub fn proof(send: &[u8; 32], envelope: &Envelope, nonce: u64) -> Option<([u8; 32], u32)> {
    if nonce == 0 {
        return None;
    }
    let digest: [u8; 32] = Sha256::digest(send).into();
    let challenge = pow::challenge(&digest, envelope);
    Some((challenge, pow::work(&challenge, nonce)))
}

/// The redb key of an envelope record, also its associated data at rest.
fn record_key(id: &MailboxId, seq: u64) -> [u8; 40] {
    let mut k = [0u8; 40];
    k[..32].copy_from_slice(&id.0);
    k[32..].copy_from_slice(&seq.to_be_bytes());
    k
}

fn fresh_key() -> Result<EnvelopeKey, StoreError> {
    let mut key = Zeroizing::new([0u8; SLOT_LEN]);
    OsRng
        .try_fill_bytes(&mut key[..])
        .map_err(|e| StoreError::Storage(format!("no randomness for an envelope key: {e}")))?;
    Ok(key)
}

/// The all-zero nonce: each key seals exactly one envelope, exactly once (a
/// rewrite, as in the migration of old records, takes a new key), so no
/// (key, nonce) pair ever repeats.
fn nonce() -> Nonce {
    Nonce::default()
}

/// Builds a record value: `plaintext` (an envelope's 4096 bytes) sealed under
/// `key` with the record key `aad`.
fn seal_record(
    key: &EnvelopeKey,
    aad: &[u8; 40],
    expires_at: u64,
    slot: u64,
    plaintext: &[u8],
) -> Result<Vec<u8>, StoreError> {
    let mut value = Vec::with_capacity(VALUE_LEN);
    value.extend_from_slice(&expires_at.to_be_bytes());
    value.extend_from_slice(&slot.to_be_bytes());
    value.extend_from_slice(plaintext);
    let tag = ChaCha20Poly1305::new(Key::from_slice(&key[..]))
        .encrypt_in_place_detached(&nonce(), aad, &mut value[SEALED_AT..])
        .map_err(|_| StoreError::Storage("sealing an envelope at rest failed".into()))?;
    value.extend_from_slice(&tag);
    Ok(value)
}

/// The key slot of a record value, if it has the sealed format.
fn record_slot(value: &[u8]) -> Option<u64> {
    if value.len() != VALUE_LEN {
        return None;
    }
    let mut slot = [0u8; 8];
    slot.copy_from_slice(&value[8..SEALED_AT]);
    Some(u64::from_be_bytes(slot))
}

/// Why a stored envelope did not open.
enum Unopened {
    /// The key file could not be read.
    Disk(io::Error),
    /// The slot holds no key that opens the record (destroyed, reused or corrupt).
    WrongKey,
}

/// Opens a record value (of [`VALUE_LEN`] bytes) with the key in its slot.
fn open_record(keys: &KeyFile, aad: &[u8; 40], value: &[u8]) -> Result<Envelope, Unopened> {
    let slot = record_slot(value).ok_or(Unopened::WrongKey)?;
    let key = keys.read(slot).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof | io::ErrorKind::InvalidInput => Unopened::WrongKey,
        _ => Unopened::Disk(e),
    })?;
    let (sealed, tag) = value[SEALED_AT..].split_at(ENVELOPE_SIZE);
    let mut plain = sealed.to_vec();
    ChaCha20Poly1305::new(Key::from_slice(&key[..]))
        .decrypt_in_place_detached(&nonce(), aad, &mut plain, Tag::from_slice(tag))
        .map_err(|_| Unopened::WrongKey)?;
    Envelope::from_slice(&plain).map_err(|_| Unopened::WrongKey)
}

fn slot_offset(slot: u64) -> io::Result<u64> {
    slot.checked_mul(SLOT_LEN as u64)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "key slot out of range"))
}

/// The key file: an array of 32-byte slots, overwritten in place.
#[derive(Debug)]
struct KeyFile {
    file: File,
}

impl KeyFile {
    fn open(dir: &Path) -> io::Result<Self> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(dir.join(KEY_FILE))?;
        // The file's directory entry must be durable before a commit relies on a key in it.
        File::open(dir)?.sync_all()?;
        Ok(Self { file })
    }

    fn read(&self, slot: u64) -> io::Result<EnvelopeKey> {
        let mut key = Zeroizing::new([0u8; SLOT_LEN]);
        self.file.read_exact_at(&mut key[..], slot_offset(slot)?)?;
        Ok(key)
    }

    /// Writes 32 bytes into each slot, one positioned write per run of
    /// neighbouring slots.
    fn write(&self, mut slots: Vec<(u64, &[u8; SLOT_LEN])>) -> io::Result<()> {
        slots.sort_unstable_by_key(|(slot, _)| *slot);
        slots.dedup_by_key(|(slot, _)| *slot);
        // Sized once: growing would leave unzeroized copies of keys behind.
        let mut run = Zeroizing::new(Vec::with_capacity(slots.len() * SLOT_LEN));
        let mut start = 0;
        for (slot, bytes) in slots {
            if !run.is_empty() && start + (run.len() / SLOT_LEN) as u64 != slot {
                self.file.write_all_at(&run, slot_offset(start)?)?;
                run.clear();
            }
            if run.is_empty() {
                start = slot;
            }
            run.extend_from_slice(bytes);
        }
        if !run.is_empty() {
            self.file.write_all_at(&run, slot_offset(start)?)?;
        }
        Ok(())
    }

    fn write_keys(&self, keys: &[(u64, EnvelopeKey)]) -> io::Result<()> {
        self.write(keys.iter().map(|(slot, key)| (*slot, &**key)).collect())
    }

    fn zero(&self, slots: &[u64]) -> io::Result<()> {
        const ZERO: [u8; SLOT_LEN] = [0; SLOT_LEN];
        self.write(slots.iter().map(|slot| (*slot, &ZERO)).collect())
    }

    fn sync(&self) -> io::Result<()> {
        self.file.sync_data()
    }
}

/// The writer's ledger of key slots.
#[derive(Debug)]
struct SlotBook {
    /// Slots whose zeros are durable (or that lie past the end of the file).
    free: BTreeSet<u64>,
    /// The first slot never handed out.
    next: u64,
    /// Slots that no committed record uses but whose zeroing is not yet durable.
    to_zero: Vec<u64>,
}

impl SlotBook {
    fn take(&mut self) -> u64 {
        self.free.pop_first().unwrap_or_else(|| {
            let slot = self.next;
            self.next = self.next.saturating_add(1);
            slot
        })
    }
}

/// What one batch does to the key file.
#[derive(Default)]
struct BatchSlots {
    /// Slots taken for new envelopes, with their keys.
    new: Vec<(u64, EnvelopeKey)>,
    /// Slots of the envelopes the batch deletes.
    freed: Vec<u64>,
}

enum Write {
    Create {
        id: MailboxId,
        recipient: [u8; 32],
        send_digest: [u8; 32],
        pow_bits: u8,
    },
    Send {
        send: [u8; 32],
        envelope: Envelope,
        expires_at: u64,
        /// The bits of work the send's nonce proves ([`proof`]).
        work: u32,
    },
    Ack {
        id: MailboxId,
        seq: u64,
    },
    Delete {
        id: MailboxId,
    },
    Claim {
        send: [u8; 32],
        epoch: u64,
        token: [u8; 32],
    },
    Expire {
        now: u64,
    },
}

/// What a write answers: the receive id it touched (for sends) and a number.
type Answer = Result<(MailboxId, u64), StoreError>;
/// Where the writer thread sends a write's answer: to a blocked thread, or to a future.
enum Reply {
    Blocking(mpsc::SyncSender<Answer>),
    Future(tokio::sync::oneshot::Sender<Answer>),
}

impl Reply {
    fn send(self, answer: Answer) {
        // A caller that stopped waiting does not need its answer.
        let _ = match self {
            Reply::Blocking(tx) => tx.send(answer).map_err(|_| ()),
            Reply::Future(tx) => tx.send(answer).map_err(|_| ()),
        };
    }
}

/// The embedded, crash-safe store (redb), with each envelope sealed under a
/// key of its own in [`KEY_FILE`] (see the module documentation).
pub struct EmbeddedStore {
    db: Arc<Database>,
    keys: Arc<KeyFile>,
    /// `None` only while dropping.
    writes: Option<mpsc::Sender<(Write, Reply)>>,
    writer: Option<std::thread::JoinHandle<()>>,
}

impl Drop for EmbeddedStore {
    fn drop(&mut self) {
        // Close the queue and wait for the writer, so the database is closed
        // cleanly (no repair scan at the next start) before the store is gone.
        self.writes = None;
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
    }
}

impl std::fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EmbeddedStore")
    }
}

impl EmbeddedStore {
    /// Opens (or creates) the store at `path` and its key file [`KEY_FILE`] in
    /// the same directory. redb recovers from a crash on open; then every key
    /// slot no record uses is zeroed.
    pub fn open(path: &Path, max_envelopes_per_mailbox: u32) -> Result<Self, StoreError> {
        Self::open_with_quota(
            path,
            Quota {
                per_mailbox: max_envelopes_per_mailbox,
                total: u64::MAX,
            },
        )
    }

    /// [`EmbeddedStore::open`] with a quota on all mailboxes together as well: a send
    /// beyond `quota.total` stored envelopes is refused with [`StoreError::RelayFull`].
    pub fn open_with_quota(path: &Path, quota: Quota) -> Result<Self, StoreError> {
        // redb locks its file: a second store on the same path fails here,
        // before it touches the key file.
        // An explicit page cache: redb's default (about 1 GiB) would let memory
        // grow with the stored data whatever the connection limits.
        let db = Arc::new(
            Database::builder()
                .set_cache_size(CACHE_BYTES)
                .create(path)
                .map_err(storage)?,
        );
        {
            let txn = db.begin_write().map_err(storage)?;
            txn.open_table(MAILBOXES).map_err(storage)?;
            txn.open_table(ENVELOPES).map_err(storage)?;
            txn.open_table(SENDERS).map_err(storage)?;
            txn.commit().map_err(storage)?;
        }
        let dir = match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        };
        let keys = Arc::new(KeyFile::open(dir).map_err(|e| key_file_error("opening", e))?);
        let (mut book, plaintext) = recover_slots(&db, &keys)?;
        if plaintext {
            seal_plaintext_records(&db, &keys, &mut book)?;
        }
        let (tx, rx) = mpsc::channel::<(Write, Reply)>();
        let writer_db = db.clone();
        let writer_keys = keys.clone();
        let writer = std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || writer(writer_db, writer_keys, book, rx, quota))
            .map_err(storage)?;
        Ok(Self {
            db,
            keys,
            writes: Some(tx),
            writer: Some(writer),
        })
    }

    fn write(&self, w: Write) -> Answer {
        let (tx, rx) = mpsc::sync_channel(1);
        self.queue(w, Reply::Blocking(tx))?;
        rx.recv().map_err(|_| StoreError::Storage("writer stopped".into()))?
    }

    /// Queues a write for the writer thread, in call order.
    fn queue(&self, w: Write, reply: Reply) -> Result<(), StoreError> {
        self.writes
            .as_ref()
            .ok_or_else(|| StoreError::Storage("writer stopped".into()))?
            .send((w, reply))
            .map_err(|_| StoreError::Storage("writer stopped".into()))
    }

    /// Queues a write and returns a future of its answer: no thread waits meanwhile.
    fn submitted(&self, w: Write) -> StoreFuture<(MailboxId, u64)> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let queued = self.queue(w, Reply::Future(tx));
        Box::pin(async move {
            queued?;
            rx.await.map_err(|_| StoreError::Storage("writer stopped".into()))?
        })
    }

    /// Whether the record under `key` still holds exactly `value`.
    fn still_stored(&self, key: &[u8; 40], value: &[u8]) -> Result<bool, StoreError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let envs = txn.open_table(ENVELOPES).map_err(storage)?;
        Ok(envs
            .get(&key[..])
            .map_err(storage)?
            .is_some_and(|now| now.value() == value))
    }

    /// The at-rest key of a stored envelope, as the key file holds it now.
    #[cfg(test)]
    fn key_of(&self, id: MailboxId, seq: u64) -> Option<[u8; SLOT_LEN]> {
        let txn = self.db.begin_read().ok()?;
        let envs = txn.open_table(ENVELOPES).ok()?;
        let slot = record_slot(envs.get(&record_key(&id, seq)[..]).ok()??.value())?;
        self.keys.read(slot).ok().map(|k| *k)
    }
}

/// Zeroes every slot of the key file that no record uses and returns the
/// ledger, and whether records of the plaintext format remain. Cleans up
/// after a crash between a commit and the zeroing of the slots it freed, or
/// between writing keys and a commit that never happened.
fn recover_slots(db: &Database, keys: &KeyFile) -> Result<(SlotBook, bool), StoreError> {
    let len = keys.file.metadata().map_err(|e| key_file_error("measuring", e))?.len();
    let span = len.div_ceil(SLOT_LEN as u64);
    let mut used = HashSet::new();
    let mut plaintext = false;
    // Records whose slot lies past the end of the key file (a damaged or planted
    // data directory) have no key: they can never be read, and handing out or
    // zeroing slots up to theirs would grow the key file without bound.
    let mut keyless = Vec::new();
    {
        let txn = db.begin_read().map_err(storage)?;
        let envs = txn.open_table(ENVELOPES).map_err(storage)?;
        for entry in envs.iter().map_err(storage)? {
            let (k, v) = entry.map_err(storage)?;
            let v = v.value();
            match record_slot(v) {
                Some(slot) if slot >= span => keyless.push(k.value().to_vec()),
                Some(slot) => {
                    used.insert(slot);
                }
                None => plaintext |= v.len() == PLAINTEXT_VALUE_LEN,
            }
        }
    }
    if !keyless.is_empty() {
        tracing::warn!(
            count = keyless.len(),
            "removed stored envelopes whose key is missing from {KEY_FILE}"
        );
        remove_records(db, &keyless)?;
    }
    let mut book = SlotBook {
        free: BTreeSet::new(),
        next: span,
        to_zero: Vec::new(),
    };
    let mut dirty = Vec::new();
    // Read in chunks of 2048 slots; bytes past the end of the file read as zeros.
    const CHUNK: u64 = 2048;
    let mut buf = Zeroizing::new(vec![0u8; CHUNK as usize * SLOT_LEN]);
    let mut first = 0;
    while first < span {
        let n = CHUNK.min(span - first);
        let chunk = &mut buf[..n as usize * SLOT_LEN];
        chunk.fill(0);
        let at = slot_offset(first).map_err(|e| key_file_error("reading", e))?;
        let mut filled = 0;
        while filled < chunk.len() {
            match keys.file.read_at(&mut chunk[filled..], at + filled as u64) {
                Ok(0) => break,
                Ok(read) => filled += read,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(key_file_error("reading", e)),
            }
        }
        for (i, bytes) in chunk.chunks_exact(SLOT_LEN).enumerate() {
            let slot = first + i as u64;
            if !used.contains(&slot) {
                book.free.insert(slot);
                // A torn last slot is rewritten whole.
                let torn = len % SLOT_LEN as u64 != 0 && slot + 1 == span;
                if torn || bytes.iter().any(|b| *b != 0) {
                    dirty.push(slot);
                }
            }
        }
        first += n;
    }
    if !dirty.is_empty() {
        keys.zero(&dirty)
            .and_then(|()| keys.sync())
            .map_err(|e| key_file_error("zeroing unused slots", e))?;
    }
    Ok((book, plaintext))
}

/// Removes envelope records by key and counts them off their mailboxes.
fn remove_records(db: &Database, record_keys: &[Vec<u8>]) -> Result<(), StoreError> {
    let mut txn = db.begin_write().map_err(storage)?;
    txn.set_two_phase_commit(true);
    {
        let mut envs = txn.open_table(ENVELOPES).map_err(storage)?;
        let mut boxes = txn.open_table(MAILBOXES).map_err(storage)?;
        for k in record_keys {
            envs.remove(&k[..]).map_err(storage)?;
            let Some(id) = record_mailbox(k) else {
                continue;
            };
            count_off(&mut boxes, &id)?;
        }
    }
    txn.commit().map_err(storage)
}

/// Seals, in batches, the records written before at-rest encryption
/// (expires_at || envelope). Their old bytes may remain in freed pages.
fn seal_plaintext_records(db: &Database, keys: &KeyFile, book: &mut SlotBook) -> Result<(), StoreError> {
    let mut after: Option<Vec<u8>> = None;
    let mut sealed = 0u64;
    loop {
        let mut txn = db.begin_write().map_err(storage)?;
        txn.set_two_phase_commit(true);
        let mut new: Vec<(u64, EnvelopeKey)> = Vec::new();
        let more = {
            let mut envs = txn.open_table(ENVELOPES).map_err(storage)?;
            let mut old = Vec::new();
            let from = after.as_deref().map_or(Bound::Unbounded, Bound::Excluded);
            for entry in envs.range::<&[u8]>((from, Bound::Unbounded)).map_err(storage)? {
                let (k, v) = entry.map_err(storage)?;
                if v.value().len() == PLAINTEXT_VALUE_LEN {
                    old.push((k.value().to_vec(), v.value().to_vec()));
                    if old.len() == MAX_BATCH {
                        break;
                    }
                }
            }
            for (k, v) in &old {
                let aad: [u8; 40] = k[..].try_into().map_err(|_| corrupt_envelope())?;
                let mut expires_at = [0u8; 8];
                expires_at.copy_from_slice(&v[..8]);
                let key = fresh_key()?;
                let slot = book.take();
                let value = seal_record(&key, &aad, u64::from_be_bytes(expires_at), slot, &v[8..]);
                new.push((slot, key));
                envs.insert(&k[..], &value?[..]).map_err(storage)?;
            }
            after = old.last().map(|(k, _)| k.clone());
            old.len() == MAX_BATCH
        };
        if new.is_empty() {
            break;
        }
        keys.write_keys(&new)
            .and_then(|()| keys.sync())
            .map_err(|e| key_file_error("writing envelope keys", e))?;
        txn.commit().map_err(storage)?;
        sealed += new.len() as u64;
        if !more {
            break;
        }
    }
    if sealed > 0 {
        tracing::info!(sealed, "sealed stored envelopes of the earlier format at rest");
    }
    Ok(())
}

fn writer(db: Arc<Database>, keys: Arc<KeyFile>, mut book: SlotBook, rx: mpsc::Receiver<(Write, Reply)>, max: Quota) {
    // Zeroing freed keys runs on a thread of its own, so the next batch's commit does
    // not wait for it. It hands the slots back once their zeros are durable.
    let (zero_tx, zero_rx) = mpsc::channel::<Zeroing>();
    let (back_tx, back_rx) = mpsc::channel::<Zeroed>();
    let zeroer_keys = keys.clone();
    let zeroer = std::thread::Builder::new()
        .name("store-zeroer".into())
        .spawn(move || zeroer(&zeroer_keys, zero_rx, back_tx));
    let zeroer = zeroer.ok();
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(w) => batch.push(w),
                Err(_) => break,
            }
        }
        while let Ok(back) = back_rx.try_recv() {
            match back {
                Zeroed::Free(slots) => book.free.extend(slots),
                Zeroed::Failed(slots) => book.to_zero.extend(slots),
            }
        }
        let (writes, replies): (Vec<Write>, Vec<Reply>) = batch.into_iter().unzip();
        match apply_batch(&db, &keys, &mut book, &writes, max) {
            Ok((results, shreds)) => {
                // Writes that deleted nothing are answered now: their effect is
                // committed. Deletions are answered once the keys they freed are zeroed.
                let mut waiting = Vec::new();
                for ((reply, r), shred) in replies.into_iter().zip(results).zip(shreds) {
                    if shred {
                        waiting.push((reply, r));
                    } else {
                        reply.send(r);
                    }
                }
                let job = Zeroing {
                    slots: std::mem::take(&mut book.to_zero),
                    replies: waiting,
                };
                if job.slots.is_empty() && job.replies.is_empty() {
                    continue;
                }
                if let Err(mpsc::SendError(job)) = zero_tx.send(job) {
                    // No zeroer thread: zero here.
                    let mut book_slots = job.slots;
                    let done = zero_slots(&keys, &book_slots);
                    for (reply, r) in job.replies {
                        reply.send(done.clone().and(r));
                    }
                    match done {
                        Ok(()) => book.free.extend(book_slots.drain(..)),
                        Err(_) => book.to_zero.append(&mut book_slots),
                    }
                }
            }
            Err(e) => {
                for reply in replies {
                    reply.send(Err(e.clone()));
                }
            }
        }
    }
    drop(zero_tx);
    if let Some(z) = zeroer {
        let _ = z.join();
    }
}

/// Key slots to zero, and the answers of the deletions that freed them.
struct Zeroing {
    slots: Vec<u64>,
    replies: Vec<(Reply, Answer)>,
}

/// Slots handed back by the zeroer.
enum Zeroed {
    /// Zeros durable: free to reuse.
    Free(Vec<u64>),
    /// Zeroing failed: still to zero.
    Failed(Vec<u64>),
}

fn zeroer(keys: &KeyFile, jobs: mpsc::Receiver<Zeroing>, back: mpsc::Sender<Zeroed>) {
    while let Ok(job) = jobs.recv() {
        let done = zero_slots(keys, &job.slots);
        for (reply, r) in job.replies {
            reply.send(done.clone().and(r));
        }
        let _ = back.send(match done {
            Ok(()) => Zeroed::Free(job.slots),
            Err(_) => Zeroed::Failed(job.slots),
        });
    }
}

/// Zeroes key slots durably. The deletions that freed them are committed; if this
/// fails, a later batch or the next open zeroes them.
fn zero_slots(keys: &KeyFile, slots: &[u64]) -> Result<(), StoreError> {
    if slots.is_empty() {
        return Ok(());
    }
    keys.zero(slots)
        .and_then(|()| keys.sync())
        .map_err(|e| key_file_error("destroying the keys of deleted envelopes", e))
}

/// Applies a batch: new keys durable, then the commit. Returns each write's answer
/// and whether it deleted envelopes (whose keys the zeroer thread then destroys).
fn apply_batch(
    db: &Database,
    keys: &KeyFile,
    book: &mut SlotBook,
    batch: &[Write],
    max: Quota,
) -> Result<(Vec<Answer>, Vec<bool>), StoreError> {
    let mut slots = BatchSlots::default();
    let mut txn = db.begin_write().map_err(storage)?;
    txn.set_two_phase_commit(true);
    let (results, shreds) = match stage(&txn, book, &mut slots, batch, max) {
        Ok(staged) => staged,
        Err(e) => {
            // The transaction is dropped, so aborted, and no key was written.
            book.free.extend(slots.new.iter().map(|(slot, _)| *slot));
            return Err(e);
        }
    };
    if !slots.new.is_empty() {
        if let Err(e) = keys.write_keys(&slots.new).and_then(|()| keys.sync()) {
            // Never committed: zero these along with the next batch's freed slots.
            book.to_zero.extend(slots.new.iter().map(|(slot, _)| *slot));
            return Err(key_file_error("writing envelope keys", e));
        }
    }
    // A failed commit may still have reached the disk, so its new slots stay
    // out of the ledger (neither free nor to zero); the next open sorts them out.
    txn.commit().map_err(storage)?;
    drop(slots.new);
    book.to_zero.append(&mut slots.freed);
    Ok((results, shreds))
}

/// Applies each write of a batch to the open transaction; returns the
/// answers and, for each write, whether it deleted envelopes.
fn stage(
    txn: &redb::WriteTransaction,
    book: &mut SlotBook,
    slots: &mut BatchSlots,
    batch: &[Write],
    max: Quota,
) -> Result<(Vec<Answer>, Vec<bool>), StoreError> {
    let mut boxes = txn.open_table(MAILBOXES).map_err(storage)?;
    let mut envs = txn.open_table(ENVELOPES).map_err(storage)?;
    let mut senders = txn.open_table(SENDERS).map_err(storage)?;
    let mut tables = Tables {
        boxes: &mut boxes,
        envs: &mut envs,
        senders: &mut senders,
        book,
        slots,
    };
    let mut results = Vec::with_capacity(batch.len());
    let mut shreds = Vec::with_capacity(batch.len());
    for w in batch {
        let freed = tables.slots.freed.len();
        results.push(apply(&mut tables, w, max)?);
        shreds.push(tables.slots.freed.len() > freed);
    }
    Ok((results, shreds))
}

type Table<'t> = redb::Table<'t, &'static [u8], &'static [u8]>;

/// One envelope fewer in a mailbox (gone already is fine).
fn count_off(boxes: &mut Table<'_>, id: &MailboxId) -> Result<(), StoreError> {
    if let Some(rec) = get_record(boxes, id)? {
        let rec = MailboxRecord {
            count: rec.count.saturating_sub(1),
            ..rec
        };
        boxes.insert(&id.0[..], &rec.encode()[..]).map_err(storage)?;
    }
    Ok(())
}

/// The mailbox an envelope record's key names (`None` for a damaged, short key).
fn record_mailbox(key: &[u8]) -> Option<MailboxId> {
    key.get(..32).and_then(|b| <[u8; 32]>::try_from(b).ok()).map(MailboxId)
}

fn get_record(boxes: &Table<'_>, id: &MailboxId) -> Result<Option<MailboxRecord>, StoreError> {
    match boxes.get(&id.0[..]).map_err(storage)? {
        Some(v) => Ok(Some(MailboxRecord::decode(v.value())?)),
        None => Ok(None),
    }
}

fn sender(senders: &Table<'_>, send: &[u8; 32]) -> Result<Option<MailboxId>, StoreError> {
    let digest: [u8; 32] = Sha256::digest(send).into();
    match senders.get(&digest[..]).map_err(storage)? {
        Some(v) => {
            let id: [u8; 32] = v
                .value()
                .try_into()
                .map_err(|_| StoreError::Storage("corrupt sender record".into()))?;
            Ok(Some(MailboxId(id)))
        }
        None => Ok(None),
    }
}

struct Tables<'a, 't> {
    boxes: &'a mut Table<'t>,
    envs: &'a mut Table<'t>,
    senders: &'a mut Table<'t>,
    book: &'a mut SlotBook,
    slots: &'a mut BatchSlots,
}

/// Applies one write. The outer `Result` is a storage failure that aborts the
/// batch; the inner one is this operation's own answer (a refused operation
/// writes nothing).
fn apply(t: &mut Tables<'_, '_>, w: &Write, max: Quota) -> Result<Answer, StoreError> {
    let Tables {
        boxes,
        envs,
        senders,
        book,
        slots,
    } = t;
    const NONE: MailboxId = MailboxId([0; 32]);
    Ok(match w {
        Write::Create {
            id,
            recipient,
            send_digest,
            pow_bits,
        } => {
            if get_record(boxes, id)?.is_some() || senders.get(&send_digest[..]).map_err(storage)?.is_some() {
                Err(StoreError::MailboxExists)
            } else {
                let rec = MailboxRecord {
                    recipient: *recipient,
                    send_digest: *send_digest,
                    next_seq: 1,
                    count: 0,
                    next_epoch: 0,
                    last_token: [0; 32],
                    pow_bits: *pow_bits,
                };
                boxes.insert(&id.0[..], &rec.encode()[..]).map_err(storage)?;
                senders.insert(&send_digest[..], &id.0[..]).map_err(storage)?;
                Ok((*id, 0))
            }
        }
        Write::Send {
            send,
            envelope,
            expires_at,
            work,
        } => match sender(senders, send)?
            .map(|id| get_record(boxes, &id).map(|r| (id, r)))
            .transpose()?
        {
            Some((id, Some(rec))) => {
                let id = &id;
                // Checked first: a send without its work learns nothing else.
                if u32::from(rec.pow_bits) > *work {
                    Err(StoreError::WorkRequired)
                // A record at the last sequence number (only a damaged or planted
                // store has one) is full rather than wrapping around.
                } else if rec.count >= max.per_mailbox || rec.next_seq == u64::MAX {
                    Err(StoreError::MailboxFull)
                } else if envs.len().map_err(storage)? >= max.total {
                    // O(1): redb keeps each table's length in its root.
                    Err(StoreError::RelayFull)
                } else {
                    let seq = rec.next_seq;
                    let rk = record_key(id, seq);
                    let key = fresh_key()?;
                    let slot = book.take();
                    let value = seal_record(&key, &rk, *expires_at, slot, envelope.as_bytes());
                    slots.new.push((slot, key));
                    envs.insert(&rk[..], &value?[..]).map_err(storage)?;
                    let rec = MailboxRecord {
                        next_seq: seq + 1,
                        count: rec.count + 1,
                        ..rec
                    };
                    boxes.insert(&id.0[..], &rec.encode()[..]).map_err(storage)?;
                    Ok((*id, seq))
                }
            }
            _ => Err(StoreError::NoSuchMailbox),
        },
        Write::Ack { id, seq } => {
            let removed = envs
                .remove(&record_key(id, *seq)[..])
                .map_err(storage)?
                .map(|v| record_slot(v.value()));
            if let Some(slot) = removed {
                slots.freed.extend(slot);
                count_off(boxes, id)?;
            }
            Ok((*id, 0))
        }
        Write::Delete { id } => {
            let start = record_key(id, 0);
            let end = record_key(id, u64::MAX);
            let keys: Vec<Vec<u8>> = envs
                .range(&start[..]..=&end[..])
                .map_err(storage)?
                .filter_map(|e| e.ok().map(|(k, _)| k.value().to_vec()))
                .collect();
            for k in &keys {
                if let Some(v) = envs.remove(&k[..]).map_err(storage)? {
                    slots.freed.extend(record_slot(v.value()));
                }
            }
            if let Some(rec) = get_record(boxes, id)? {
                senders.remove(&rec.send_digest[..]).map_err(storage)?;
            }
            boxes.remove(&id.0[..]).map_err(storage)?;
            Ok((*id, keys.len() as u64))
        }
        Write::Claim { send, epoch, token } => match sender(senders, send)?
            .map(|id| get_record(boxes, &id).map(|r| (id, r)))
            .transpose()?
        {
            Some((id, Some(rec))) => {
                let id = &id;
                // Epochs come from the network: u64::MAX must not overflow.
                let following = epoch.checked_add(1);
                if let (true, Some(next_epoch)) = (*epoch == rec.next_epoch, following) {
                    let rec = MailboxRecord {
                        next_epoch,
                        last_token: *token,
                        ..rec
                    };
                    boxes.insert(&id.0[..], &rec.encode()[..]).map_err(storage)?;
                    Ok((*id, *epoch))
                } else if following == Some(rec.next_epoch) && ct_eq(token, &rec.last_token) {
                    Ok((*id, *epoch))
                } else {
                    Err(StoreError::EpochConflict(rec.next_epoch))
                }
            }
            _ => Err(StoreError::NoSuchMailbox),
        },
        Write::Expire { now } => {
            let mut expired = Vec::new();
            for entry in envs.iter().map_err(storage)? {
                let (k, v) = entry.map_err(storage)?;
                let v = v.value();
                if v.len() >= 8 {
                    let mut t = [0u8; 8];
                    t.copy_from_slice(&v[..8]);
                    if u64::from_be_bytes(t) <= *now {
                        expired.push((k.value().to_vec(), record_slot(v)));
                    }
                }
            }
            for (k, slot) in &expired {
                envs.remove(&k[..]).map_err(storage)?;
                slots.freed.extend(*slot);
                // A record with a short key (a damaged store) is removed, nothing else.
                let Some(id) = record_mailbox(k) else {
                    continue;
                };
                count_off(boxes, &id)?;
            }
            Ok((NONE, expired.len() as u64))
        }
    })
}

impl MailboxStore for EmbeddedStore {
    fn create(
        &self,
        id: MailboxId,
        recipient: [u8; 32],
        send_digest: [u8; 32],
        pow_bits: u8,
    ) -> Result<(), StoreError> {
        self.write(Write::Create {
            id,
            recipient,
            send_digest,
            pow_bits,
        })
        .map(|_| ())
    }

    fn send(
        &self,
        send: [u8; 32],
        envelope: Envelope,
        expires_at: u64,
        work: u32,
    ) -> Result<(MailboxId, u64), StoreError> {
        self.write(Write::Send {
            send,
            envelope,
            expires_at,
            work,
        })
    }

    fn recipient_key(&self, id: MailboxId) -> Result<Option<[u8; 32]>, StoreError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let boxes = txn.open_table(MAILBOXES).map_err(storage)?;
        match boxes.get(&id.0[..]).map_err(storage)? {
            Some(v) => Ok(Some(MailboxRecord::decode(v.value())?.recipient)),
            None => Ok(None),
        }
    }

    fn fetch(&self, ids: &[MailboxId], max: usize) -> Result<Vec<Delivery>, StoreError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let envs = txn.open_table(ENVELOPES).map_err(storage)?;
        let mut out = Vec::new();
        for id in ids {
            if out.len() >= max {
                break;
            }
            let start = record_key(id, 0);
            let end = record_key(id, u64::MAX);
            for entry in envs.range(&start[..]..=&end[..]).map_err(storage)? {
                if out.len() >= max {
                    break;
                }
                let (k, v) = entry.map_err(storage)?;
                let (k, v) = (k.value(), v.value());
                let rk: [u8; 40] = k.try_into().map_err(|_| corrupt_envelope())?;
                if v.len() != VALUE_LEN {
                    return Err(corrupt_envelope());
                }
                match open_record(&self.keys, &rk, v) {
                    Ok(envelope) => {
                        let mut seq = [0u8; 8];
                        seq.copy_from_slice(&rk[32..]);
                        out.push(Delivery {
                            mailbox: *id,
                            seq: u64::from_be_bytes(seq),
                            envelope,
                        });
                    }
                    Err(Unopened::Disk(e)) => return Err(key_file_error("reading a key", e)),
                    // This read snapshot may predate an ack, delete or expiry
                    // whose key is destroyed by now (and its slot may already
                    // hold a newer envelope's key): then the envelope is gone
                    // and is skipped. If it is still stored, its key is bad.
                    Err(Unopened::WrongKey) => {
                        if self.still_stored(&rk, v)? {
                            return Err(corrupt_envelope());
                        }
                    }
                }
            }
        }
        Ok(out)
    }

    fn ack(&self, id: MailboxId, seq: u64) -> Result<(), StoreError> {
        self.write(Write::Ack { id, seq }).map(|_| ())
    }

    fn delete(&self, id: MailboxId) -> Result<(), StoreError> {
        self.write(Write::Delete { id }).map(|_| ())
    }

    fn claim(&self, send: [u8; 32], epoch: u64, token: [u8; 32]) -> Result<(), StoreError> {
        self.write(Write::Claim { send, epoch, token }).map(|_| ())
    }

    fn expire(&self, now: u64) -> Result<u64, StoreError> {
        self.write(Write::Expire { now }).map(|(_, n)| n)
    }

    // The writer thread answers through a oneshot: these queue the write and wait
    // without holding a thread, so a connection's pipelined writes share one batch.
    fn send_async(
        self: Arc<Self>,
        send: [u8; 32],
        envelope: Envelope,
        expires_at: u64,
        work: u32,
    ) -> StoreFuture<(MailboxId, u64)> {
        self.submitted(Write::Send {
            send,
            envelope,
            expires_at,
            work,
        })
    }

    fn ack_async(self: Arc<Self>, id: MailboxId, seq: u64) -> StoreFuture<()> {
        let answer = self.submitted(Write::Ack { id, seq });
        Box::pin(async move { answer.await.map(|_| ()) })
    }

    fn claim_async(self: Arc<Self>, send: [u8; 32], epoch: u64, token: [u8; 32]) -> StoreFuture<()> {
        let answer = self.submitted(Write::Claim { send, epoch, token });
        Box::pin(async move { answer.await.map(|_| ()) })
    }

    fn stats(&self) -> Result<Stats, StoreError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let boxes = txn.open_table(MAILBOXES).map_err(storage)?;
        let envs = txn.open_table(ENVELOPES).map_err(storage)?;
        Ok(Stats {
            mailboxes: boxes.len().map_err(storage)?,
            envelopes: envs.len().map_err(storage)?,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn env(b: u8) -> Envelope {
        Envelope::from_slice(&[b; ENVELOPE_SIZE]).unwrap()
    }

    fn open(dir: &Path, max: u32) -> EmbeddedStore {
        EmbeddedStore::open(&dir.join("m.redb"), max).unwrap()
    }

    /// The work a send proves, as `server.rs` hands it to the store.
    fn proven_work(send: &[u8; 32], envelope: &Envelope, nonce: u64) -> u32 {
        proof(send, envelope, nonce).map_or(0, |(_, work)| work)
    }

    #[test]
    fn send_fetch_ack_and_limits() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(dir.path(), 2);
        let id = MailboxId([1; 32]);
        let cap = [2u8; 32];
        let digest: [u8; 32] = Sha256::digest(cap).into();
        s.create(id, [3; 32], digest, 0).unwrap();
        assert_eq!(s.create(id, [3; 32], digest, 0), Err(StoreError::MailboxExists));
        assert_eq!(
            s.create(MailboxId([7; 32]), [3; 32], digest, 0),
            Err(StoreError::MailboxExists)
        );
        assert_eq!(s.send([9; 32], env(1), u64::MAX, 0), Err(StoreError::NoSuchMailbox));
        assert_eq!(s.send(id.0, env(1), u64::MAX, 0), Err(StoreError::NoSuchMailbox));
        let (to, a) = s.send(cap, env(1), u64::MAX, 0).unwrap();
        assert_eq!(to, id);
        let (_, b) = s.send(cap, env(2), u64::MAX, 0).unwrap();
        assert!(b > a);
        assert_eq!(s.send(cap, env(3), u64::MAX, 0), Err(StoreError::MailboxFull));
        let got = s.fetch(&[id], 10).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].envelope, env(1));
        s.ack(id, a).unwrap();
        assert_eq!(s.fetch(&[id], 10).unwrap().len(), 1);
        s.send(cap, env(4), u64::MAX, 0).unwrap();
        s.delete(id).unwrap();
        assert_eq!(s.stats().unwrap(), Stats::default());
        assert_eq!(s.send(cap, env(5), u64::MAX, 0), Err(StoreError::NoSuchMailbox));
    }

    #[test]
    fn the_total_quota_counts_every_mailbox_and_sends_in_the_same_batch() {
        let dir = tempfile::tempdir().unwrap();
        let quota = Quota {
            per_mailbox: 100,
            total: 3,
        };
        let s = Arc::new(EmbeddedStore::open_with_quota(&dir.path().join("m.redb"), quota).unwrap());
        let caps: Vec<[u8; 32]> = (0..2u8).map(|i| [10 + i; 32]).collect();
        for (i, cap) in caps.iter().enumerate() {
            s.create(MailboxId([i as u8; 32]), [3; 32], Sha256::digest(cap).into(), 0)
                .unwrap();
        }
        // Concurrent sends land in one batch: the count inside the transaction holds.
        let sends: Vec<_> = (0..8u8)
            .map(|i| {
                let (s, cap) = (s.clone(), caps[usize::from(i % 2)]);
                std::thread::spawn(move || s.send(cap, env(i), u64::MAX, 0))
            })
            .collect();
        let results: Vec<_> = sends.into_iter().map(|t| t.join().unwrap()).collect();
        assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 3, "{results:?}");
        assert!(results.iter().all(|r| r.is_ok() || *r == Err(StoreError::RelayFull)));
        // An acknowledgement makes room again.
        let (id, seq) = results.iter().find_map(|r| r.clone().ok()).unwrap();
        s.ack(id, seq).unwrap();
        s.send(caps[0], env(9), u64::MAX, 0).unwrap();
        assert_eq!(s.send(caps[1], env(10), u64::MAX, 0), Err(StoreError::RelayFull));
    }

    #[test]
    fn claims_are_granted_once_per_epoch_and_idempotent_per_token() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(dir.path(), 10);
        let id = MailboxId([1; 32]);
        let cap = [2u8; 32];
        s.create(id, [3; 32], Sha256::digest(cap).into(), 0).unwrap();
        s.claim(cap, 0, [7; 32]).unwrap();
        s.claim(cap, 0, [7; 32]).unwrap();
        assert_eq!(s.claim(cap, 0, [8; 32]), Err(StoreError::EpochConflict(1)));
        assert_eq!(s.claim(cap, 5, [8; 32]), Err(StoreError::EpochConflict(1)));
        s.claim(cap, 1, [8; 32]).unwrap();
        assert_eq!(s.claim([0; 32], 2, [8; 32]), Err(StoreError::NoSuchMailbox));
        // The last epoch number from the network neither panics the writer nor wraps.
        assert_eq!(s.claim(cap, u64::MAX, [9; 32]), Err(StoreError::EpochConflict(2)));
        s.claim(cap, 2, [8; 32]).unwrap();
    }

    #[test]
    fn expiry_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let id = MailboxId([1; 32]);
        let cap = [2u8; 32];
        {
            let s = open(dir.path(), 10);
            s.create(id, [3; 32], Sha256::digest(cap).into(), 0).unwrap();
            s.send(cap, env(1), 100, 0).unwrap();
            s.send(cap, env(2), 300, 0).unwrap();
        }
        // Give the previous writer thread time to drop its handle on the file.
        std::thread::sleep(std::time::Duration::from_millis(100));
        let s = open(dir.path(), 10);
        assert_eq!(s.expire(200).unwrap(), 1);
        let left = s.fetch(&[id], 10).unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].envelope, env(2));
    }

    /// An envelope of random bytes: every 32-byte window of it is distinctive.
    fn random_env() -> Envelope {
        let mut b = vec![0u8; ENVELOPE_SIZE];
        OsRng.fill_bytes(&mut b);
        Envelope::from_slice(&b).unwrap()
    }

    /// The index of a needle (each at least 2 bytes) found in `haystack`.
    /// Filters on the first two bytes, so that it stays fast without optimization.
    fn find_any(haystack: &[u8], needles: &[&[u8]]) -> Option<usize> {
        let two = |b: &[u8]| usize::from(u16::from_be_bytes([b[0], b[1]]));
        let mut starts = vec![false; 1 << 16];
        for n in needles {
            starts[two(n)] = true;
        }
        (0..haystack.len().saturating_sub(1))
            .filter(|at| starts[two(&haystack[*at..])])
            .find_map(|at| needles.iter().position(|n| haystack[at..].starts_with(n)))
    }

    fn contains(haystack: &[u8], needle: &[u8]) -> bool {
        find_any(haystack, &[needle]).is_some()
    }

    /// Every file in `dir`, by name, with its raw bytes.
    fn raw_files(dir: &Path) -> Vec<(String, Vec<u8>)> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(dir).unwrap() {
            let entry = entry.unwrap();
            if entry.file_type().unwrap().is_file() {
                out.push((
                    entry.file_name().to_string_lossy().into_owned(),
                    std::fs::read(entry.path()).unwrap(),
                ));
            }
        }
        assert!(
            out.iter().any(|(name, _)| name == KEY_FILE),
            "{KEY_FILE} is next to the redb file"
        );
        out
    }

    /// Neither the envelopes (whole, their first 32 bytes, 32 bytes from the
    /// middle, their last 32 bytes) nor the keys appear in any file of `dir`.
    fn assert_nothing_recoverable(dir: &Path, envelopes: &[Envelope], keys: &[[u8; 32]]) {
        let mid = ENVELOPE_SIZE / 2 + 7;
        let mut needles: Vec<(&str, &[u8])> = Vec::new();
        for e in envelopes {
            let e = e.as_bytes();
            needles.push(("a whole envelope", e));
            needles.push(("an envelope's first 32 bytes", &e[..32]));
            needles.push(("32 bytes from an envelope's middle", &e[mid..mid + 32]));
            needles.push(("an envelope's last 32 bytes", &e[ENVELOPE_SIZE - 32..]));
        }
        for k in keys {
            needles.push(("an envelope key", k));
        }
        let bare: Vec<&[u8]> = needles.iter().map(|(_, n)| *n).collect();
        for (name, bytes) in raw_files(dir) {
            let found = find_any(&bytes, &bare);
            assert!(
                found.is_none(),
                "{} is recoverable from {name}",
                found.map_or("", |i| needles[i].0)
            );
        }
    }

    /// Closes the store, then compacts its redb file the way an operator
    /// could (compaction moves live pages and releases freed ones).
    fn close_and_compact(s: EmbeddedStore, dir: &Path) {
        drop(s);
        std::thread::sleep(std::time::Duration::from_millis(100));
        let mut db = Database::open(dir.join("m.redb")).unwrap();
        db.compact().unwrap();
        drop(db);
    }

    /// A mailbox (id [1; 32], send capability [2; 32]) of random envelopes.
    struct Stored {
        store: EmbeddedStore,
        id: MailboxId,
        seqs: Vec<u64>,
        envelopes: Vec<Envelope>,
        /// Each envelope's at-rest key, read before it is destroyed.
        keys: Vec<[u8; 32]>,
    }

    /// Stores `n` random envelopes in a new mailbox and checks that each
    /// fetches back intact.
    fn stored(dir: &Path, n: usize, expires_at: u64) -> Stored {
        let store = open(dir, 100);
        let id = MailboxId([1; 32]);
        let cap = [2u8; 32];
        store.create(id, [3; 32], Sha256::digest(cap).into(), 0).unwrap();
        let envelopes: Vec<Envelope> = (0..n).map(|_| random_env()).collect();
        let seqs: Vec<u64> = envelopes
            .iter()
            .map(|e| store.send(cap, e.clone(), expires_at, 0).unwrap().1)
            .collect();
        let got = store.fetch(&[id], 100).unwrap();
        assert_eq!(got.len(), n);
        for ((d, seq), e) in got.iter().zip(&seqs).zip(&envelopes) {
            assert_eq!((d.mailbox, d.seq, &d.envelope), (id, *seq, e));
        }
        let keys: Vec<[u8; 32]> = seqs.iter().map(|seq| store.key_of(id, *seq).unwrap()).collect();
        assert!(keys.iter().all(|k| *k != [0; 32]));
        Stored {
            store,
            id,
            seqs,
            envelopes,
            keys,
        }
    }

    #[test]
    fn acknowledged_envelopes_leave_no_recoverable_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let t = stored(dir.path(), 6, u64::MAX);
        for seq in &t.seqs {
            t.store.ack(t.id, *seq).unwrap();
        }
        assert_eq!(t.store.stats().unwrap().envelopes, 0);
        assert_nothing_recoverable(dir.path(), &t.envelopes, &t.keys);
        close_and_compact(t.store, dir.path());
        assert_nothing_recoverable(dir.path(), &t.envelopes, &t.keys);
    }

    #[test]
    fn deleted_mailboxes_leave_no_recoverable_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let t = stored(dir.path(), 6, u64::MAX);
        t.store.delete(t.id).unwrap();
        assert_eq!(t.store.stats().unwrap(), Stats::default());
        assert_nothing_recoverable(dir.path(), &t.envelopes, &t.keys);
        close_and_compact(t.store, dir.path());
        assert_nothing_recoverable(dir.path(), &t.envelopes, &t.keys);
    }

    #[test]
    fn expired_envelopes_leave_no_recoverable_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let t = stored(dir.path(), 6, 100);
        // One envelope that outlives the sweep stays readable.
        let kept = random_env();
        let (_, kept_seq) = t.store.send([2; 32], kept.clone(), 300, 0).unwrap();
        assert_eq!(t.store.expire(200).unwrap(), 6);
        let left = t.store.fetch(&[t.id], 100).unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!((left[0].seq, &left[0].envelope), (kept_seq, &kept));
        assert_nothing_recoverable(dir.path(), &t.envelopes, &t.keys);
        close_and_compact(t.store, dir.path());
        assert_nothing_recoverable(dir.path(), &t.envelopes, &t.keys);
    }

    #[test]
    fn stored_envelopes_are_encrypted_at_rest_and_their_keys_never_reach_redb() {
        let dir = tempfile::tempdir().unwrap();
        let t = stored(dir.path(), 4, u64::MAX);
        for (name, bytes) in raw_files(dir.path()) {
            for e in &t.envelopes {
                assert!(!contains(&bytes, &e.as_bytes()[..32]), "plaintext in {name}");
                assert!(!contains(&bytes, &e.as_bytes()[2000..2032]), "plaintext in {name}");
            }
            for k in &t.keys {
                assert_eq!(contains(&bytes, k), name == KEY_FILE, "a key in {name}");
            }
        }
    }

    #[test]
    fn keys_of_uncommitted_envelopes_are_zeroed_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let id = MailboxId([1; 32]);
        let cap = [2u8; 32];
        let first = random_env();
        let key_path = dir.path().join(KEY_FILE);
        {
            let s = open(dir.path(), 10);
            s.create(id, [3; 32], Sha256::digest(cap).into(), 0).unwrap();
            s.send(cap, first.clone(), u64::MAX, 0).unwrap();
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
        assert_eq!(std::fs::metadata(&key_path).unwrap().len(), 32);
        // A crash after the keys of a batch were written and before its
        // commit: slot 2 holds a key that no record uses (and a torn slot 3).
        let orphan = [0xab; 32];
        {
            let f = OpenOptions::new().write(true).open(&key_path).unwrap();
            f.write_all_at(&orphan, 64).unwrap();
            f.write_all_at(&[0xcd; 5], 96).unwrap();
        }
        let s = open(dir.path(), 10);
        let raw = std::fs::read(&key_path).unwrap();
        assert_eq!(raw.len(), 4 * 32);
        assert!(raw[32..].iter().all(|b| *b == 0), "unused slots are zeroed");
        assert_ne!(raw[..32], [0; 32], "the stored envelope keeps its key");
        let got = s.fetch(&[id], 10).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].envelope, first);
        let second = random_env();
        let (_, seq) = s.send(cap, second.clone(), u64::MAX, 0).unwrap();
        assert_eq!(s.fetch(&[id], 10).unwrap()[1].envelope, second);
        assert_eq!(
            std::fs::metadata(&key_path).unwrap().len(),
            4 * 32,
            "a zeroed slot is reused"
        );
        s.ack(id, seq).unwrap();
        assert_eq!(s.fetch(&[id], 10).unwrap().len(), 1);
    }

    #[test]
    fn a_record_whose_key_is_bad_is_a_storage_error() {
        let dir = tempfile::tempdir().unwrap();
        let id = MailboxId([1; 32]);
        let cap = [2u8; 32];
        let seq;
        {
            let s = open(dir.path(), 10);
            s.create(id, [3; 32], Sha256::digest(cap).into(), 0).unwrap();
            seq = s.send(cap, env(1), u64::MAX, 0).unwrap().1;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
        let f = OpenOptions::new().write(true).open(dir.path().join(KEY_FILE)).unwrap();
        f.write_all_at(&[0x55; 32], 0).unwrap();
        drop(f);
        let s = open(dir.path(), 10);
        assert_eq!(
            s.fetch(&[id], 10),
            Err(StoreError::Storage("corrupt envelope record".into()))
        );
        // The record can still be removed, and its slot is zeroed.
        s.ack(id, seq).unwrap();
        assert_eq!(s.fetch(&[id], 10).unwrap(), vec![]);
        assert!(std::fs::read(dir.path().join(KEY_FILE))
            .unwrap()
            .iter()
            .all(|b| *b == 0));
    }

    #[test]
    fn a_record_whose_slot_is_far_past_the_key_file_is_removed_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let id = MailboxId([1; 32]);
        let cap = [2u8; 32];
        {
            let s = open(dir.path(), 10);
            s.create(id, [3; 32], Sha256::digest(cap).into(), 0).unwrap();
            s.send(cap, env(1), u64::MAX, 0).unwrap();
        }
        // A damaged or planted data directory: the record names slot 2^36.
        {
            let db = Database::open(dir.path().join("m.redb")).unwrap();
            let txn = db.begin_write().unwrap();
            {
                let mut envs = txn.open_table(ENVELOPES).unwrap();
                let (k, mut v) = {
                    let (k, v) = envs.first().unwrap().unwrap();
                    (k.value().to_vec(), v.value().to_vec())
                };
                v[8..16].copy_from_slice(&(1u64 << 36).to_be_bytes());
                envs.insert(&k[..], &v[..]).unwrap();
            }
            txn.commit().unwrap();
        }
        let s = open(dir.path(), 10);
        // The keyless record is gone (it could never be read) and its mailbox is usable.
        assert_eq!(s.fetch(&[id], 10).unwrap(), vec![]);
        s.send(cap, env(2), u64::MAX, 0).unwrap();
        assert_eq!(s.fetch(&[id], 10).unwrap().len(), 1);
        // The key file did not grow towards the far slot.
        assert!(std::fs::metadata(dir.path().join(KEY_FILE)).unwrap().len() <= 2 * 32);
    }

    #[test]
    fn the_key_file_grows_only_with_envelopes_stored_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(dir.path(), 100);
        let id = MailboxId([1; 32]);
        let cap = [2u8; 32];
        s.create(id, [3; 32], Sha256::digest(cap).into(), 0).unwrap();
        for _ in 0..5 {
            let seqs: Vec<u64> = (0..3).map(|i| s.send(cap, env(i), u64::MAX, 0).unwrap().1).collect();
            for seq in seqs {
                s.ack(id, seq).unwrap();
            }
        }
        assert_eq!(std::fs::metadata(dir.path().join(KEY_FILE)).unwrap().len(), 3 * 32);
    }

    #[test]
    fn fetches_racing_acks_skip_gone_envelopes_without_errors() {
        let dir = tempfile::tempdir().unwrap();
        let s = Arc::new(open(dir.path(), 100));
        let (slow, slow_cap) = (MailboxId([1; 32]), [2u8; 32]);
        let (busy, busy_cap) = (MailboxId([4; 32]), [5u8; 32]);
        s.create(slow, [3; 32], Sha256::digest(slow_cap).into(), 0).unwrap();
        s.create(busy, [3; 32], Sha256::digest(busy_cap).into(), 0).unwrap();
        // A fetch opens these first, which gives the writer time to destroy
        // the key of a `busy` envelope that the fetch's snapshot still holds.
        for _ in 0..40 {
            s.send(slow_cap, env(6), u64::MAX, 0).unwrap();
        }
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let reader = {
            let (s, done) = (s.clone(), done.clone());
            std::thread::spawn(move || {
                let mut fetched = 0;
                while !done.load(std::sync::atomic::Ordering::Relaxed) {
                    for d in s.fetch(&[slow, busy], 100).unwrap() {
                        assert_eq!(d.envelope, env(if d.mailbox == slow { 6 } else { 7 }));
                        fetched += usize::from(d.mailbox == busy);
                    }
                }
                fetched
            })
        };
        // Every envelope is acknowledged right after it is stored, so its
        // slot is zeroed and reused while a fetch may still see its record.
        for _ in 0..300 {
            let (_, seq) = s.send(busy_cap, env(7), u64::MAX, 0).unwrap();
            s.ack(busy, seq).unwrap();
        }
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        reader.join().unwrap();
    }

    #[test]
    fn records_stored_in_the_clear_by_an_older_relay_are_sealed_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let id = MailboxId([1; 32]);
        let cap = [2u8; 32];
        let old = random_env();
        {
            let s = open(dir.path(), 10);
            s.create(id, [3; 32], Sha256::digest(cap).into(), 0).unwrap();
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
        {
            let db = Database::open(dir.path().join("m.redb")).unwrap();
            let txn = db.begin_write().unwrap();
            {
                let mut boxes = txn.open_table(MAILBOXES).unwrap();
                let rec = MailboxRecord::decode(boxes.get(&id.0[..]).unwrap().unwrap().value()).unwrap();
                let rec = MailboxRecord {
                    next_seq: 2,
                    count: 1,
                    ..rec
                };
                boxes.insert(&id.0[..], &rec.encode()[..]).unwrap();
                let mut envs = txn.open_table(ENVELOPES).unwrap();
                let mut value = 500u64.to_be_bytes().to_vec();
                value.extend_from_slice(old.as_bytes());
                envs.insert(&record_key(&id, 1)[..], &value[..]).unwrap();
            }
            txn.commit().unwrap();
        }
        let s = open(dir.path(), 10);
        let got = s.fetch(&[id], 10).unwrap();
        assert_eq!((got.len(), got[0].seq, &got[0].envelope), (1, 1, &old));
        assert!(s.key_of(id, 1).is_some());
        assert_eq!(s.expire(400).unwrap(), 0, "the expiry is kept");
        let (_, seq) = s.send(cap, env(2), u64::MAX, 0).unwrap();
        assert_eq!(seq, 2);
        assert_eq!(s.expire(500).unwrap(), 1);
        assert_eq!(s.fetch(&[id], 10).unwrap().len(), 1);
    }

    /// A drop box (a mailbox with a difficulty) takes only envelopes whose nonce
    /// solves the puzzle for that envelope and that mailbox; a refused send stores
    /// nothing. An ordinary mailbox takes any nonce, 0 included.
    #[test]
    fn a_drop_box_takes_only_envelopes_with_their_proof_of_work() {
        let dir = tempfile::tempdir().unwrap();
        let s = Arc::new(open(dir.path(), 10));
        let bits = 10;
        let (drop_box, drop_cap) = (MailboxId([1; 32]), [2u8; 32]);
        let (other_box, other_cap) = (MailboxId([4; 32]), [5u8; 32]);
        let (plain, plain_cap) = (MailboxId([6; 32]), [7u8; 32]);
        let digest = |cap: [u8; 32]| -> [u8; 32] { Sha256::digest(cap).into() };
        s.create(drop_box, [3; 32], digest(drop_cap), bits).unwrap();
        s.create(other_box, [3; 32], digest(other_cap), bits).unwrap();
        s.create(plain, [3; 32], digest(plain_cap), 0).unwrap();
        let solved = |cap, e: &Envelope| pow::solve(&pow::challenge(&digest(cap), e), bits);
        let nonce = solved(drop_cap, &env(1));
        assert!(nonce > 0);

        // Missing, wrong, for another envelope, for another mailbox: refused.
        let wrong = (1..).find(|n| !pow::check(&pow::challenge(&digest(drop_cap), &env(1)), bits, *n));
        let for_env2 = solved(drop_cap, &env(2));
        assert!(!pow::check(&pow::challenge(&digest(drop_cap), &env(1)), bits, for_env2));
        let for_other_box = solved(other_cap, &env(1));
        assert!(!pow::check(
            &pow::challenge(&digest(drop_cap), &env(1)),
            bits,
            for_other_box
        ));
        for bad in [0, wrong.unwrap(), for_env2, for_other_box] {
            assert_eq!(
                s.send(drop_cap, env(1), u64::MAX, proven_work(&drop_cap, &env(1), bad)),
                Err(StoreError::WorkRequired),
                "nonce {bad}"
            );
        }
        // The nonce for the other mailbox works there, not here.
        assert!(s
            .send(
                other_cap,
                env(1),
                u64::MAX,
                proven_work(&other_cap, &env(1), for_other_box)
            )
            .is_ok());
        // The async path refuses too.
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        assert_eq!(
            rt.block_on(s.clone().send_async(drop_cap, env(1), u64::MAX, 0)),
            Err(StoreError::WorkRequired)
        );
        assert_eq!(
            s.fetch(&[drop_box], 10).unwrap(),
            Vec::new(),
            "a refused send stored something"
        );
        assert_eq!(s.stats().unwrap().envelopes, 1);

        // The solved nonce is accepted, by both paths.
        let (to, seq) = s
            .send(drop_cap, env(1), u64::MAX, proven_work(&drop_cap, &env(1), nonce))
            .unwrap();
        assert_eq!(to, drop_box);
        let (_, seq2) = rt
            .block_on(
                s.clone()
                    .send_async(drop_cap, env(2), u64::MAX, proven_work(&drop_cap, &env(2), for_env2)),
            )
            .unwrap();
        let got = s.fetch(&[drop_box], 10).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!((got[0].seq, &got[0].envelope), (seq, &env(1)));
        assert_eq!((got[1].seq, &got[1].envelope), (seq2, &env(2)));

        // An ordinary mailbox: no work needed, any nonce accepted.
        s.send(plain_cap, env(1), u64::MAX, 0).unwrap();
        s.send(plain_cap, env(2), u64::MAX, proven_work(&plain_cap, &env(2), 12345))
            .unwrap();
        rt.block_on(s.clone().send_async(plain_cap, env(3), u64::MAX, 0))
            .unwrap();
        assert_eq!(s.fetch(&[plain], 10).unwrap().len(), 3);
    }

    /// The difficulty survives a restart, and mailbox records written before
    /// drop boxes (without the difficulty byte) read as ordinary mailboxes.
    #[test]
    fn the_difficulty_is_stored_and_old_records_are_ordinary_mailboxes() {
        let dir = tempfile::tempdir().unwrap();
        let (drop_box, drop_cap) = (MailboxId([1; 32]), [2u8; 32]);
        let (old, old_cap) = (MailboxId([4; 32]), [5u8; 32]);
        {
            let s = open(dir.path(), 10);
            s.create(drop_box, [3; 32], Sha256::digest(drop_cap).into(), 8).unwrap();
            s.create(old, [3; 32], Sha256::digest(old_cap).into(), 0).unwrap();
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
        {
            let db = Database::open(dir.path().join("m.redb")).unwrap();
            let txn = db.begin_write().unwrap();
            {
                let mut boxes = txn.open_table(MAILBOXES).unwrap();
                let mut value = boxes.get(&old.0[..]).unwrap().unwrap().value().to_vec();
                assert_eq!(value.len(), RECORD_LEN);
                value.truncate(RECORD_LEN_BEFORE_POW);
                boxes.insert(&old.0[..], &value[..]).unwrap();
            }
            txn.commit().unwrap();
        }
        let s = open(dir.path(), 10);
        assert_eq!(s.send(drop_cap, env(1), u64::MAX, 0), Err(StoreError::WorkRequired));
        let nonce = pow::solve(&pow::challenge(&Sha256::digest(drop_cap).into(), &env(1)), 8);
        s.send(drop_cap, env(1), u64::MAX, proven_work(&drop_cap, &env(1), nonce))
            .unwrap();
        s.send(old_cap, env(1), u64::MAX, 0).unwrap();
        assert_eq!(s.recipient_key(old).unwrap(), Some([3; 32]));
        assert_eq!(s.fetch(&[old], 10).unwrap().len(), 1);
        // A record of any other length is corrupt.
        assert!(MailboxRecord::decode(&[0; RECORD_LEN + 1]).is_err());
        assert!(MailboxRecord::decode(&[0; RECORD_LEN_BEFORE_POW - 1]).is_err());
    }
}

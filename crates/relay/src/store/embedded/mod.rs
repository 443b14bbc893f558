//! The embedded store: mailboxes and envelopes in redb, on the relay's disk.
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
//! - Each envelope is sealed at rest with AES-256-GCM (ChaCha20-Poly1305 in records of
//!   version 1) under a fresh random 32-byte key used for that envelope only, once, with
//!   the all-zero nonce and the record's key,
//!   receive id (32) || seq (u64 BE), as associated data (a record moved to
//!   another mailbox or position does not open). The redb value is
//!   version (2) || expires_at (u64 BE) || slot (u64 BE) || the sealed envelope's tag
//!   (16): 33 bytes. The tag ties the record to its body: a fetch reading from an older
//!   snapshot while the slot is freed and used again finds another tag and skips it.
//! - The keys live in [`ENVELOPE_KEY_FILE`] next to the redb file: an array of 32-byte
//!   slots, one per stored envelope, written in place with positioned writes;
//!   a slot that no envelope uses holds zeros.
//! - The sealed envelopes (ciphertext, 4096 bytes, and tag) live in [`ENVELOPE_BODY_FILE`],
//!   next to it: slot `n` of 4,112 bytes holds the envelope whose key is in slot `n`.
//!   A body slot is never zeroed, only overwritten when its slot is handed out again:
//!   once its key's zeros are durable, it is ciphertext under a key that no longer
//!   exists, as a freed redb page is. (Until data directory format 5 the sealed envelope
//!   was in the redb value, record version 1; those records still read as they are.)
//!   A 4 KiB value does not fit a redb page: each envelope cost a B-tree leaf of its
//!   own, written on send and rewritten on ack, about a third of the relay's CPU per
//!   envelope (BENCHMARKS.md, "Cutting the relay's CPU per envelope").
//! - The writer keeps this order for each batch: allocate slots for new
//!   envelopes, write their keys and sealed envelopes and `fdatasync` the key and
//!   body files, then commit the redb transaction, so a committed envelope always has
//!   its key and its body on disk.
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
//!   that never happened), a record whose key or body lies past the end of its
//!   file is removed (it could never be read), and records of the earlier plaintext format are
//!   sealed the same way (their old bytes may remain in freed pages;
//!   [`upgrade`]).
//! - A record whose key does not open it is reported as a storage error.
//!
//! The key and body files grow by at most one slot per envelope stored at the same
//! time; they are never shrunk (the body file to 4,112 bytes per slot: 4 GiB for a
//! million envelopes held at once, as redb's file would have grown).
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

//!
//! # Where the parts are
//!
//! - [`record`]: the byte layouts of the records and their format versions.
//! - [`at_rest`]: the key and body files, sealing and opening, the slot ledger, and the
//!   recovery of slots on open.
//! - [`writer`]: the writer thread (group commit) and the zeroing thread.
//! - [`nameplate`]: the layout and sealing of nameplates (invite codes' numbers), whose
//!   records are sealed under a key held in memory only.
//! - bundles (what short addresses name) are kept in the clear and outlive restarts, in
//!   [`BUNDLES`] (its layout is a contract: see there) with [`BUNDLE_EXPIRY`]; the rule of a
//!   publish and the value's layout are [`crate::store::bundle`]'s, shared with NATS.
//! - [`upgrade`]: the data directory's format version and the conversion of older
//!   layouts (a newer one is refused and nothing is rewritten).
//! - here: [`EmbeddedStore`], its reads, and [`MailboxStore`] over it.

use std::collections::HashMap;
use std::path::Path;
use std::sync::mpsc;
use std::sync::Arc;

use backchannel_core::envelope::Envelope;
use backchannel_core::frame::Delivery;
use backchannel_core::mailbox::MailboxId;
use backchannel_core::pow::ProvenWork;
use redb::{Database, ReadableTable, ReadableTableMetadata, TableDefinition};

use crate::store::{ClaimProof, Claims, HeldCommit, MailboxStore, Quota, Stats, StoreError};

mod at_rest;
mod nameplate;
mod record;
mod upgrade;
mod writer;

pub use at_rest::{ENVELOPE_BODY_FILE, ENVELOPE_KEY_FILE};
pub use upgrade::FORMAT;

use at_rest::{open_apart, open_sealed, BodyFile, KeyFile, Unopened};
use backchannel_core::aead::Cipher;
use record::{record_key, record_seq, EnvelopeValue, MailboxRecord};
use writer::{Answer, Done, Reply, Write};
use zeroize::Zeroizing;

/// receive id (32) -> mailbox record ([`record`]).
const MAILBOXES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("mailboxes");
/// SHA-256(send capability) (32) -> sender record: the receive id ([`record`]).
/// Senders name a mailbox only by its send capability; the relay keeps just the
/// digest, so its disk alone does not let anyone deliver.
const SENDERS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("senders");
/// id (32) || seq (u64 BE) -> envelope record ([`record`]): its expiry, its key
/// slot and the envelope sealed under the key in that slot, with the record key as
/// associated data.
const ENVELOPES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("envelopes");
/// receive id (32) || slot (1) -> a commit a sequencer holds with the grant of its epoch, in
/// the epoch's slot ([`crate::store::HeldCommit::encode`], [`HeldCommit::slot`]). Added in data directory format 2 without a
/// change of format: a directory without the table holds no commit, and a relay of an
/// earlier release never opens it.
const HELD: TableDefinition<&[u8], &[u8]> = TableDefinition::new("held");

/// expiry (u64 BE, Unix seconds) || receive id (32) -> how many of the mailbox's envelopes
/// expire at that second (u32 BE, never zero: the entry goes when it would be). A sweep
/// reads only the entries due, then takes that many expired envelopes from each due
/// mailbox, oldest first: its cost is what has expired, whatever the store holds. A count
/// rather than an entry per envelope (table `expiry` of formats 3 to 5) because the writer
/// changes each count once per batch, not once per send and once per ack (BENCHMARKS.md,
/// "Cutting the relay's CPU per envelope"); it says no more than the records it counts.
/// Added in data directory format 6 (`upgrade::index_expiries` builds it for an older
/// directory, and writing format 6 retires the table `expiry`).
const EXPIRY: TableDefinition<&[u8], &[u8]> = TableDefinition::new("expiry-counts");

/// receive id (32) -> when the mailbox was last used (u64 BE, Unix seconds): made, opened
/// by its recipient (at most once a day: `server`), or claimed at. Added in data
/// directory format 4 (`upgrade::index_touches` dates every mailbox of an older directory
/// at the upgrade).
const TOUCHED: TableDefinition<&[u8], &[u8]> = TableDefinition::new("touched");

/// last used (u64 BE) || receive id (32) -> nothing: the mailboxes by when they were last
/// used, so that the idle sweep reads only the mailboxes that have been idle too long.
/// Format 4, with [`TOUCHED`].
const IDLE: TableDefinition<&[u8], &[u8]> = TableDefinition::new("idle");

/// number (u32 BE) -> a nameplate: its expiry and its record, sealed under a key that lives
/// in memory only ([`nameplate`]). Added within data directory format 4, without a change of
/// format, as [`HELD`] was: the table is made by the first write that needs it (a directory
/// without it holds no nameplate), and a relay of an earlier release never opens it. Nor
/// would its content mean anything to one: nameplates are sealed under a key that dies with
/// the process, and the store empties this table and [`NAMEPLATE_EXPIRY`] when it opens. So
/// a directory goes back and forth between this release and the one before without a
/// conversion.
const NAMEPLATES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("nameplates");

/// expiry (u64 BE) || number (u32 BE) -> nothing: the nameplates by when they expire, for
/// the sweep. With [`NAMEPLATES`], under the same terms.
const NAMEPLATE_EXPIRY: TableDefinition<&[u8], &[u8]> = TableDefinition::new("nameplate_expiry");

/// name (16) -> a bundle: `expires_at (u64 BE, Unix seconds) | bundle`, in the clear
/// ([`crate::store::bundle::encode_dated`]). This table's name, its types (key `[u8; 16]`,
/// value `&[u8]`) and the value's layout are a contract: tests outside this crate open the
/// redb file of a stopped relay and change a bundle there, to play a relay that hands over
/// tampered keys. A bundle is public key material (a drop box's keys) or ciphertext its
/// client sealed (an invite's body), and a short address is printed and kept for months: so,
/// unlike a nameplate, it is not sealed at rest, and it outlives restarts (the store never
/// empties this table when it opens). Added within data directory format 4, without a change
/// of format, as [`NAMEPLATES`] was: the table is made by the first write, a directory
/// without it holds no bundle, and a relay of an earlier release never opens it (nor sweeps
/// it: bundles expired meanwhile are swept once this release runs again), so a directory
/// goes back and forth between this release and the one before without a conversion.
pub(crate) const BUNDLES: TableDefinition<[u8; 16], &[u8]> = TableDefinition::new("bundles");

/// expiry (u64 BE) || name (16) -> nothing: the bundles by when they expire, for the sweep.
/// With [`BUNDLES`], under the same terms.
const BUNDLE_EXPIRY: TableDefinition<&[u8], &[u8]> = TableDefinition::new("bundle_expiry");

/// The key of a bundle in [`BUNDLE_EXPIRY`].
fn bundle_expiry_key(expires_at: u64, name: &[u8; 16]) -> [u8; 24] {
    let mut k = [0u8; 24];
    k[..8].copy_from_slice(&expires_at.to_be_bytes());
    k[8..].copy_from_slice(name);
    k
}

/// The key of a mailbox in [`IDLE`].
fn idle_key(at: u64, id: &MailboxId) -> [u8; 40] {
    let mut k = [0u8; 40];
    k[..8].copy_from_slice(&at.to_be_bytes());
    k[8..].copy_from_slice(&id.0);
    k
}

/// The key of mailbox `id`'s count of envelopes expiring at `expires_at` in [`EXPIRY`].
fn expiry_key(expires_at: u64, id: &MailboxId) -> [u8; 40] {
    let mut k = [0u8; 40];
    k[..8].copy_from_slice(&expires_at.to_be_bytes());
    k[8..].copy_from_slice(&id.0);
    k
}

/// A count in [`EXPIRY`] (a damaged one counts one: the sweep then looks for one envelope).
fn expiry_count(value: &[u8]) -> u64 {
    <[u8; 4]>::try_from(value).map_or(1, |c| u64::from(u32::from_be_bytes(c)))
}

/// The expiry index ([`EXPIRY`]), its counts changed through a tally: each count changed
/// is written once, at [`Expiries::flush`], however many envelopes changed it. The writer
/// keeps one for a batch; the upgrade, one for each batch of records it counts.
struct Expiries<'a, 't> {
    table: &'a mut Table<'t>,
    /// What is to be added to each count.
    changes: HashMap<[u8; 40], i64>,
}

impl<'a, 't> Expiries<'a, 't> {
    fn new(table: &'a mut Table<'t>) -> Self {
        Self {
            table,
            changes: HashMap::new(),
        }
    }

    /// One more envelope of mailbox `id` expiring at `at`.
    fn add(&mut self, at: u64, id: &MailboxId) {
        *self.changes.entry(expiry_key(at, id)).or_insert(0) += 1;
    }

    /// One fewer.
    fn remove(&mut self, at: u64, id: &MailboxId) {
        *self.changes.entry(expiry_key(at, id)).or_insert(0) -= 1;
    }

    /// Writes the counts changed since the last flush.
    fn flush(&mut self) -> Result<(), StoreError> {
        for (key, change) in self.changes.drain() {
            if change != 0 {
                add_expiring(self.table, &key, change)?;
            }
        }
        Ok(())
    }
}

/// Adds `delta` to the count under `key` in [`EXPIRY`]; a count that reaches zero (or less,
/// in a damaged store) is removed.
fn add_expiring(expiry: &mut Table<'_>, key: &[u8; 40], delta: i64) -> Result<(), StoreError> {
    const DOING: &str = "counting envelopes by expiry";
    let was = expiry
        .get(&key[..])
        .map_err(StoreError::database(DOING))?
        .map_or(0, |v| expiry_count(v.value()));
    let now = i64::try_from(was).unwrap_or(i64::MAX).saturating_add(delta);
    if now <= 0 {
        expiry.remove(&key[..]).map_err(StoreError::database(DOING))?;
    } else {
        let now = u32::try_from(now).unwrap_or(u32::MAX);
        expiry
            .insert(&key[..], &now.to_be_bytes()[..])
            .map_err(StoreError::database(DOING))?;
    }
    Ok(())
}

/// redb's page cache.
const CACHE_BYTES: usize = 64 * 1024 * 1024;

/// Most writes committed in one transaction.
const MAX_BATCH: usize = 512;

type Table<'t> = redb::Table<'t, &'static [u8], &'static [u8]>;

/// The mailbox a send capability leads to, from the `senders` table (read or written).
fn sender(
    senders: &impl ReadableTable<&'static [u8], &'static [u8]>,
    send: &[u8; 32],
) -> Result<Option<MailboxId>, StoreError> {
    use sha2::Digest as _;
    let digest: [u8; 32] = sha2::Sha256::digest(send).into();
    match senders
        .get(&digest[..])
        .map_err(StoreError::database("looking up a send capability"))?
    {
        Some(v) => Ok(Some(record::decode_sender(v.value())?)),
        None => Ok(None),
    }
}

/// Where the commit of `epoch` at sequencer `id` is kept.
fn held_key(id: &MailboxId, epoch: u64) -> [u8; 33] {
    let mut k = [0u8; 33];
    k[..32].copy_from_slice(&id.0);
    k[32] = HeldCommit::slot(epoch);
    k
}

/// One envelope fewer in a mailbox (gone already is fine).
fn count_off(boxes: &mut Table<'_>, id: &MailboxId) -> Result<(), StoreError> {
    if let Some(rec) = get_record(boxes, id)? {
        let rec = rec.counted_off();
        boxes
            .insert(&id.0[..], &rec.encode()[..])
            .map_err(StoreError::database("counting off a deleted envelope"))?;
    }
    Ok(())
}

fn get_record(boxes: &Table<'_>, id: &MailboxId) -> Result<Option<MailboxRecord>, StoreError> {
    match boxes
        .get(&id.0[..])
        .map_err(StoreError::database("reading a mailbox record"))?
    {
        Some(v) => Ok(Some(MailboxRecord::decode(v.value())?)),
        None => Ok(None),
    }
}

/// Empties the nameplate tables (what an earlier run left: sealed under its key, which is gone).
fn forget_nameplates(db: &Database) -> Result<(), StoreError> {
    const DOING: &str = "forgetting the nameplates of the last run";
    let txn = db.begin_write().map_err(StoreError::database(DOING))?;
    txn.delete_table(NAMEPLATES).map_err(StoreError::database(DOING))?;
    txn.delete_table(NAMEPLATE_EXPIRY)
        .map_err(StoreError::database(DOING))?;
    txn.commit().map_err(StoreError::database(DOING))
}

/// The embedded, crash-safe store (redb), with each envelope sealed under a
/// key of its own in [`ENVELOPE_KEY_FILE`] (see the module documentation).
///
/// Its [`MailboxStore`] methods are for the executor. The inherent methods of the
/// same names block until done, for tools and tests that run off the executor.
pub struct EmbeddedStore {
    reader: Reader,
    /// `None` only while dropping.
    writes: Option<mpsc::Sender<(Write, Reply)>>,
    writer: Option<std::thread::JoinHandle<()>>,
}

/// What reads need: the database, the key file and the body file (cheap to clone onto
/// the blocking pool, for the reads that go there).
#[derive(Clone)]
struct Reader {
    db: Arc<Database>,
    keys: Arc<KeyFile>,
    bodies: Arc<BodyFile>,
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
    /// Opens (or creates) the store at `path` and its key and body files
    /// ([`ENVELOPE_KEY_FILE`], [`ENVELOPE_BODY_FILE`]) in the same directory. redb recovers from a crash on open; a data directory of an
    /// older format is converted ([`upgrade`]), one of a newer format refused
    /// ([`StoreError::NewerFormat`]) before anything is written; then every key
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
        let db = Database::builder()
            .set_cache_size(CACHE_BYTES)
            .create(path)
            .map_err(|e| match e {
                redb::DatabaseError::DatabaseAlreadyOpen => StoreError::InUse,
                e => StoreError::database("opening the database")(e),
            })?;
        let db = Arc::new(db);
        // Nothing is written before the format is known to be one this code reads.
        let found = upgrade::check(&db)?;
        if let upgrade::Found::New = found {
            upgrade::create(&db)?;
        }
        let dir = match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        };
        let keys = Arc::new(KeyFile::open(dir).map_err(StoreError::key_file("opening the key file"))?);
        let bodies = Arc::new(BodyFile::open(dir).map_err(StoreError::key_file("opening the body file"))?);
        let (mut book, records) = at_rest::recover_slots(&db, &keys, &bodies)?;
        if records.legacy {
            upgrade::convert_envelopes(&db, &keys, &mut book)?;
        }
        if let upgrade::Found::Format1 = found {
            upgrade::finish_format1(&db)?;
        }
        match found {
            upgrade::Found::Format1 | upgrade::Found::Older(..=3) => {
                upgrade::index_expiries(&db, None)?;
                upgrade::index_touches(&db, writer::now_secs())?;
            }
            // Formats 4 and 5 have the mailboxes' dates; format 4 needs nothing for the
            // body file (`upgrade`).
            upgrade::Found::Older(_) => upgrade::index_expiries(&db, Some(upgrade::FORMAT))?,
            upgrade::Found::New | upgrade::Found::Current => {}
        }
        // Nameplates of an earlier run are sealed under a key gone with it ([`nameplate`]).
        forget_nameplates(&db)?;
        let nameplate_key = nameplate::NameplateKey::fresh()?;
        let (tx, rx) = mpsc::channel::<(Write, Reply)>();
        let writer_db = db.clone();
        let writer_keys = keys.clone();
        let writer_bodies = bodies.clone();
        let writer = std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || writer::writer(writer_db, writer_keys, writer_bodies, book, rx, quota, nameplate_key))
            .map_err(|e| StoreError::Thread(Arc::new(e)))?;
        Ok(Self {
            reader: Reader { db, keys, bodies },
            writes: Some(tx),
            writer: Some(writer),
        })
    }

    /// Queues a write for the writer thread, in call order.
    fn queue(&self, w: Write, reply: Reply) -> Result<(), StoreError> {
        self.writes
            .as_ref()
            .ok_or(StoreError::Closed)?
            .send((w, reply))
            .map_err(|_| StoreError::Closed)
    }

    /// Queues a write and waits for its answer, blocking the thread.
    fn write(&self, w: Write) -> Answer {
        let (tx, rx) = mpsc::sync_channel(1);
        self.queue(w, Reply::Blocking(tx))?;
        rx.recv().map_err(|_| StoreError::Closed)?
    }

    /// Queues a write and waits for its answer without holding a thread, so a
    /// connection's pipelined writes share one batch.
    async fn submit(&self, w: Write) -> Answer {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.queue(w, Reply::Future(tx))?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Runs a read on the blocking pool (redb reads block on the disk).
    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Reader) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let reader = self.reader.clone();
        tokio::task::spawn_blocking(move || f(&reader))
            .await
            .unwrap_or(Err(StoreError::Closed))
    }

    /// Creates a mailbox, blocking ([`MailboxStore::create`]).
    pub fn create(
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

    /// Stores an envelope, blocking ([`MailboxStore::send`]).
    pub fn send(
        &self,
        send: [u8; 32],
        envelope: Envelope,
        expires_at: u64,
        work: ProvenWork,
    ) -> Result<(MailboxId, u64), StoreError> {
        self.write(Write::Send {
            send,
            envelope,
            expires_at,
            work,
        })
        .map(Done::pair)
    }

    /// A mailbox's recipient key, blocking ([`MailboxStore::recipient_key`]).
    pub fn recipient_key(&self, id: MailboxId) -> Result<Option<[u8; 32]>, StoreError> {
        self.reader.recipient_key(id)
    }

    /// The oldest envelopes of these mailboxes, blocking ([`MailboxStore::fetch`]).
    pub fn fetch(&self, ids: &[MailboxId], max: usize) -> Result<Vec<Delivery>, StoreError> {
        self.reader.fetch(ids, max)
    }

    /// Deletes one envelope, blocking ([`MailboxStore::ack`]).
    pub fn ack(&self, id: MailboxId, seq: u64) -> Result<(), StoreError> {
        self.write(Write::Ack { id, seq }).map(|_| ())
    }

    /// Deletes a mailbox, blocking ([`MailboxStore::delete`]).
    pub fn delete(&self, id: MailboxId) -> Result<(), StoreError> {
        self.write(Write::Delete { id }).map(|_| ())
    }

    /// Claims an epoch, blocking ([`MailboxStore::claim`]).
    pub fn claim(
        &self,
        send: [u8; 32],
        epoch: u64,
        proof: ClaimProof,
        commit: Option<Arc<[u8]>>,
    ) -> Result<(), StoreError> {
        self.write(Write::Claim {
            send,
            epoch,
            proof,
            commit,
        })
        .map(|_| ())
    }

    /// The commit held for `epoch`, blocking ([`MailboxStore::held_commit`]).
    pub fn held_commit(&self, send: [u8; 32], epoch: u64, key: [u8; 32]) -> Result<Arc<[u8]>, StoreError> {
        self.reader.held_commit(send, epoch, &key)
    }

    /// Deletes expired envelopes, nameplates and bundles, blocking ([`MailboxStore::expire`]).
    pub fn expire(&self, now: u64) -> Result<u64, StoreError> {
        self.write(Write::Expire { now }).map(Done::count)
    }

    /// Allocates a nameplate, blocking ([`MailboxStore::nameplate_create`]).
    pub fn nameplate_create(&self, record: Vec<u8>, expires_at: u64) -> Result<u32, StoreError> {
        let candidates = crate::store::nameplate_candidates(&mut rand_core::OsRng)?;
        self.write(Write::NameplateCreate {
            record: Zeroizing::new(record),
            expires_at,
            candidates,
        })
        .map(Done::number)
    }

    /// Takes a nameplate, blocking ([`MailboxStore::nameplate_take`]).
    pub fn nameplate_take(&self, number: u32, now: u64) -> Result<Option<Vec<u8>>, StoreError> {
        self.write(Write::NameplateTake { number, now }).map(Done::record)
    }

    /// Publishes a bundle, blocking ([`MailboxStore::bundle_publish`]).
    pub fn bundle_publish(&self, name: [u8; 16], bundle: Vec<u8>, expires_at: u64, now: u64) -> Result<(), StoreError> {
        self.write(Write::BundlePublish {
            name,
            bundle,
            expires_at,
            now,
        })
        .map(|_| ())
    }

    /// The bundle under `name`, blocking ([`MailboxStore::bundle_get`]).
    pub fn bundle_get(&self, name: [u8; 16], now: u64) -> Result<Option<Vec<u8>>, StoreError> {
        self.reader.bundle_get(name, now)
    }

    /// Marks mailboxes used at `now`, blocking ([`MailboxStore::touch`]).
    pub fn touch(&self, ids: &[MailboxId], now: u64) -> Result<(), StoreError> {
        self.write(Write::Touch { ids: ids.to_vec(), now }).map(|_| ())
    }

    /// Deletes the mailboxes last used before `before`, blocking
    /// ([`MailboxStore::expire_idle`]).
    pub fn expire_idle(&self, before: u64) -> Result<u64, StoreError> {
        self.write(Write::ExpireIdle { before }).map(Done::count)
    }

    /// Counts, blocking ([`MailboxStore::stats`]).
    pub fn stats(&self) -> Result<Stats, StoreError> {
        self.reader.stats()
    }

    /// The at-rest key of a stored envelope, as the key file holds it now.
    #[cfg(test)]
    fn key_of(&self, id: MailboxId, seq: u64) -> Option<[u8; 32]> {
        let txn = self.reader.db.begin_read().ok()?;
        let envs = txn.open_table(ENVELOPES).ok()?;
        let slot = EnvelopeValue::parse(envs.get(&record_key(&id, seq)[..]).ok()??.value())
            .ok()?
            .slot()?;
        self.reader.keys.read(slot).ok().map(|k| *k)
    }
}

impl Reader {
    /// Whether the record under `key` still holds exactly `value`.
    fn still_stored(&self, key: &[u8; 40], value: &[u8]) -> Result<bool, StoreError> {
        const DOING: &str = "fetching envelopes";
        let txn = self.db.begin_read().map_err(StoreError::database(DOING))?;
        let envs = txn.open_table(ENVELOPES).map_err(StoreError::database(DOING))?;
        Ok(envs
            .get(&key[..])
            .map_err(StoreError::database(DOING))?
            .is_some_and(|now| now.value() == value))
    }

    fn recipient_key(&self, id: MailboxId) -> Result<Option<[u8; 32]>, StoreError> {
        const DOING: &str = "reading a mailbox record";
        let txn = self.db.begin_read().map_err(StoreError::database(DOING))?;
        let boxes = txn.open_table(MAILBOXES).map_err(StoreError::database(DOING))?;
        match boxes.get(&id.0[..]).map_err(StoreError::database(DOING))? {
            Some(v) => Ok(Some(MailboxRecord::decode(v.value())?.recipient)),
            None => Ok(None),
        }
    }

    fn fetch(&self, ids: &[MailboxId], max: usize) -> Result<Vec<Delivery>, StoreError> {
        const DOING: &str = "fetching envelopes";
        let corrupt = || StoreError::corrupt("envelope record");
        let txn = self.db.begin_read().map_err(StoreError::database(DOING))?;
        let envs = txn.open_table(ENVELOPES).map_err(StoreError::database(DOING))?;
        let mut out = Vec::new();
        for id in ids {
            if out.len() >= max {
                break;
            }
            let start = record_key(id, 0);
            let end = record_key(id, u64::MAX);
            for entry in envs.range(&start[..]..=&end[..]).map_err(StoreError::database(DOING))? {
                if out.len() >= max {
                    break;
                }
                let (k, v) = entry.map_err(StoreError::database(DOING))?;
                let (k, v) = (k.value(), v.value());
                let rk: [u8; 40] = k.try_into().map_err(|_| corrupt())?;
                let opened = match EnvelopeValue::parse(v)? {
                    EnvelopeValue::Apart { slot, tag, .. } => open_apart(&self.keys, &self.bodies, &rk, slot, tag),
                    EnvelopeValue::Sealed { slot, sealed, .. } => {
                        open_sealed(Cipher::ChaCha20Poly1305, &self.keys, &rk, slot, sealed)
                    }
                    // Records in the clear are sealed on open; one here is corrupt.
                    EnvelopeValue::Plaintext { .. } => return Err(corrupt()),
                };
                match opened {
                    Ok(envelope) => out.push(Delivery {
                        mailbox: *id,
                        seq: record_seq(&rk),
                        envelope,
                    }),
                    Err(Unopened::Disk(e)) => {
                        return Err(StoreError::key_file("reading a key or a sealed envelope")(e))
                    }
                    // This read snapshot may predate an ack, delete or expiry
                    // whose key is destroyed by now (and its slot may already
                    // hold a newer envelope's key): then the envelope is gone
                    // and is skipped. If it is still stored, its key is bad.
                    Err(Unopened::WrongKey) => {
                        if self.still_stored(&rk, v)? {
                            return Err(corrupt());
                        }
                    }
                }
            }
        }
        Ok(out)
    }

    fn held_commit(&self, send: [u8; 32], epoch: u64, key: &[u8; 32]) -> Result<Arc<[u8]>, StoreError> {
        const DOING: &str = "reading a held commit";
        let txn = self.db.begin_read().map_err(StoreError::database(DOING))?;
        let senders = txn.open_table(SENDERS).map_err(StoreError::database(DOING))?;
        let Some(id) = sender(&senders, &send)? else {
            return Err(StoreError::NoSuchMailbox);
        };
        let boxes = txn.open_table(MAILBOXES).map_err(StoreError::database(DOING))?;
        let claims: Claims = match boxes.get(&id.0[..]).map_err(StoreError::database(DOING))? {
            Some(v) => MailboxRecord::decode(v.value())?.claims,
            None => return Err(StoreError::NoSuchMailbox),
        };
        let held = match txn.open_table(HELD) {
            Ok(t) => t
                .get(&held_key(&id, epoch)[..])
                .map_err(StoreError::database(DOING))?
                .map(|v| HeldCommit::decode(v.value()))
                .transpose()?,
            Err(redb::TableError::TableDoesNotExist(_)) => None,
            Err(e) => return Err(StoreError::database(DOING)(e)),
        };
        HeldCommit::judge_fetch(&claims, held.as_ref(), epoch, key)
    }

    fn bundle_get(&self, name: [u8; 16], now: u64) -> Result<Option<Vec<u8>>, StoreError> {
        use crate::store::bundle::{decode_dated, live};
        const DOING: &str = "reading a bundle";
        let txn = self.db.begin_read().map_err(StoreError::database(DOING))?;
        let bundles = match txn.open_table(BUNDLES) {
            Ok(t) => t,
            // Made by the first write: none yet, no bundle.
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(StoreError::database(DOING)(e)),
        };
        let value = bundles.get(name).map_err(StoreError::database(DOING))?;
        // Expired (the sweep has not run yet) or damaged: none.
        Ok(value.and_then(|v| {
            decode_dated(v.value())
                .filter(|(at, _)| live(*at, now))
                .map(|(_, bundle)| bundle.to_vec())
        }))
    }

    fn stats(&self) -> Result<Stats, StoreError> {
        const DOING: &str = "counting";
        let txn = self.db.begin_read().map_err(StoreError::database(DOING))?;
        let boxes = txn.open_table(MAILBOXES).map_err(StoreError::database(DOING))?;
        let envs = txn.open_table(ENVELOPES).map_err(StoreError::database(DOING))?;
        Ok(Stats {
            mailboxes: boxes.len().map_err(StoreError::database(DOING))?,
            envelopes: envs.len().map_err(StoreError::database(DOING))?,
        })
    }
}

impl MailboxStore for EmbeddedStore {
    async fn create(
        &self,
        id: MailboxId,
        recipient: [u8; 32],
        send_digest: [u8; 32],
        pow_bits: u8,
    ) -> Result<(), StoreError> {
        self.submit(Write::Create {
            id,
            recipient,
            send_digest,
            pow_bits,
        })
        .await
        .map(|_| ())
    }

    async fn send(
        &self,
        send: [u8; 32],
        envelope: Envelope,
        expires_at: u64,
        work: ProvenWork,
    ) -> Result<(MailboxId, u64), StoreError> {
        self.submit(Write::Send {
            send,
            envelope,
            expires_at,
            work,
        })
        .await
        .map(Done::pair)
    }

    async fn recipient_key(&self, id: MailboxId) -> Result<Option<[u8; 32]>, StoreError> {
        self.read(move |r| r.recipient_key(id)).await
    }

    async fn fetch(&self, ids: &[MailboxId], max: usize) -> Result<Vec<Delivery>, StoreError> {
        // On the connection's task, not the blocking pool: a fetch reads at most
        // `MAX_FETCH` (15) envelopes, from redb's cache and the page cache, and opens them
        // (about 25 µs in all), while handing it to a pool thread and back cost about 4 µs
        // of the relay's CPU per envelope (BENCHMARKS.md, "Cutting the relay's CPU per
        // envelope"). A fetch of envelopes no longer in the page cache blocks this worker
        // for its disk reads (a key and a body for each envelope, and redb's pages).
        self.reader.fetch(ids, max)
    }

    async fn ack(&self, id: MailboxId, seq: u64) -> Result<(), StoreError> {
        self.submit(Write::Ack { id, seq }).await.map(|_| ())
    }

    async fn delete(&self, id: MailboxId) -> Result<(), StoreError> {
        self.submit(Write::Delete { id }).await.map(|_| ())
    }

    async fn claim(
        &self,
        send: [u8; 32],
        epoch: u64,
        proof: ClaimProof,
        commit: Option<Arc<[u8]>>,
    ) -> Result<(), StoreError> {
        self.submit(Write::Claim {
            send,
            epoch,
            proof,
            commit,
        })
        .await
        .map(|_| ())
    }

    async fn held_commit(&self, send: [u8; 32], epoch: u64, key: [u8; 32]) -> Result<Arc<[u8]>, StoreError> {
        self.read(move |r| r.held_commit(send, epoch, &key)).await
    }

    async fn expire(&self, now: u64) -> Result<u64, StoreError> {
        self.submit(Write::Expire { now }).await.map(Done::count)
    }

    async fn touch(&self, ids: &[MailboxId], now: u64) -> Result<(), StoreError> {
        self.submit(Write::Touch { ids: ids.to_vec(), now }).await.map(|_| ())
    }

    async fn expire_idle(&self, before: u64) -> Result<u64, StoreError> {
        self.submit(Write::ExpireIdle { before }).await.map(Done::count)
    }

    async fn nameplate_create(&self, record: Vec<u8>, expires_at: u64) -> Result<u32, StoreError> {
        let candidates = crate::store::nameplate_candidates(&mut rand_core::OsRng)?;
        self.submit(Write::NameplateCreate {
            record: Zeroizing::new(record),
            expires_at,
            candidates,
        })
        .await
        .map(Done::number)
    }

    async fn nameplate_take(&self, number: u32, now: u64) -> Result<Option<Vec<u8>>, StoreError> {
        self.submit(Write::NameplateTake { number, now })
            .await
            .map(Done::record)
    }

    async fn bundle_publish(
        &self,
        name: [u8; 16],
        bundle: Vec<u8>,
        expires_at: u64,
        now: u64,
    ) -> Result<(), StoreError> {
        self.submit(Write::BundlePublish {
            name,
            bundle,
            expires_at,
            now,
        })
        .await
        .map(|_| ())
    }

    async fn bundle_get(&self, name: [u8; 16], now: u64) -> Result<Option<Vec<u8>>, StoreError> {
        self.read(move |r| r.bundle_get(name, now)).await
    }

    async fn stats(&self) -> Result<Stats, StoreError> {
        self.read(Reader::stats).await
    }
}

#[cfg(test)]
mod tests;

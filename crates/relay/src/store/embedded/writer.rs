//! The writer thread (group commit) and the zeroing thread.
//!
//! Every write goes through the single writer thread, which batches whatever is
//! pending into one redb transaction with two-phase commit, as redb recommends for
//! attacker-chosen bytes. For each batch: allocate slots for new envelopes, write
//! their keys and sealed envelopes and `fdatasync` the key and body files, then
//! commit; answer the writes
//! that deleted nothing; hand the slots the batch freed to the zeroing thread,
//! which overwrites them with zeros, `fdatasync`s, answers the deletions and only
//! then gives the slots back for reuse.

use std::collections::{BTreeMap, HashMap};
use std::sync::mpsc;
use std::sync::Arc;

use backchannel_core::aead::Cipher;
use backchannel_core::envelope::{Envelope, ENVELOPE_SIZE};
use backchannel_core::mailbox::MailboxId;
use backchannel_core::pow::ProvenWork;
use redb::{Database, ReadableTable, ReadableTableMetadata};
use zeroize::Zeroizing;

use super::at_rest::{fresh_key, seal, zero_slots, BodyFile, EnvelopeKey, KeyFile, SlotBook};
use super::nameplate::{self, NameplateKey};
use super::record::{encode_envelope_record, encode_sender, record_key, EnvelopeValue, MailboxRecord, TAG_LEN};
use super::{
    bundle_expiry_key, expiry_count, expiry_key, get_record, held_key, idle_key, sender, Expiries, Table, BUNDLES,
    BUNDLE_EXPIRY, ENVELOPES, EXPIRY, HELD, IDLE, MAILBOXES, MAX_BATCH, NAMEPLATES, NAMEPLATE_EXPIRY, SENDERS, TOUCHED,
};
use crate::store::bundle::{self, decode_dated, encode_dated};
use crate::store::{ClaimProof, Claims, HeldCommit, Quota, StoreError};

/// What one batch does to the key and body files.
#[derive(Default)]
struct BatchSlots {
    /// Slots taken for new envelopes, with their keys.
    new: Vec<(u64, EnvelopeKey)>,
    /// The same slots, with the sealed envelopes.
    bodies: Vec<(u64, Vec<u8>)>,
    /// Slots of the envelopes the batch deletes.
    freed: Vec<u64>,
}

pub(crate) enum Write {
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
        /// The work the send's nonce was checked to prove.
        work: ProvenWork,
    },
    Ack {
        id: MailboxId,
        seq: u64,
    },
    Delete {
        id: MailboxId,
    },
    /// Marks these mailboxes (those that exist) used at `now`.
    Touch {
        ids: Vec<MailboxId>,
        now: u64,
    },
    /// Deletes the mailboxes last used before `before`, with their envelopes.
    ExpireIdle {
        before: u64,
    },
    Claim {
        send: [u8; 32],
        epoch: u64,
        proof: ClaimProof,
        /// The commit the claim carries, held with the grant.
        commit: Option<Arc<[u8]>>,
    },
    /// Deletes expired envelopes, nameplates and bundles.
    Expire {
        now: u64,
    },
    /// Allocates a nameplate under the first of `candidates` that is free (or, if none is,
    /// any free number).
    NameplateCreate {
        record: Zeroizing<Vec<u8>>,
        expires_at: u64,
        candidates: Vec<u32>,
    },
    /// Takes a nameplate.
    NameplateTake {
        number: u32,
        now: u64,
    },
    /// Publishes a bundle (by [`bundle::judge`]).
    BundlePublish {
        name: [u8; 16],
        bundle: Vec<u8>,
        expires_at: u64,
        now: u64,
    },
}

/// What a write did.
pub(crate) enum Done {
    /// The receive id it touched (for sends) and a number (a sequence number, a count, a
    /// nameplate's number).
    Mailbox(MailboxId, u64),
    /// A taken nameplate's record, or none.
    Record(Option<Zeroizing<Vec<u8>>>),
}

impl Done {
    pub(crate) fn pair(self) -> (MailboxId, u64) {
        match self {
            Done::Mailbox(id, n) => (id, n),
            Done::Record(_) => (MailboxId([0; 32]), 0),
        }
    }

    pub(crate) fn count(self) -> u64 {
        self.pair().1
    }

    /// A nameplate's number (always one: the write that answers this made it).
    pub(crate) fn number(self) -> u32 {
        u32::try_from(self.count()).unwrap_or(0)
    }

    pub(crate) fn record(self) -> Option<Vec<u8>> {
        match self {
            // The copy handed on is the caller's to protect; this one is zeroized here.
            Done::Record(r) => r.map(|r| r.to_vec()),
            Done::Mailbox(..) => None,
        }
    }
}

/// What a write answers.
pub(crate) type Answer = Result<Done, StoreError>;

/// Where the writer thread sends a write's answer: to a blocked thread, or to a future.
pub(crate) enum Reply {
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

pub(crate) fn writer(
    db: Arc<Database>,
    keys: Arc<KeyFile>,
    bodies: Arc<BodyFile>,
    mut book: SlotBook,
    rx: mpsc::Receiver<(Write, Reply)>,
    max: Quota,
    nameplates: NameplateKey,
) {
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
        match apply_batch(&db, (&*keys, &*bodies), &mut book, &writes, max, &nameplates) {
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

/// What a batch's transaction was doing, for its errors.
const COMMITTING: &str = "committing a batch of writes";

/// Applies a batch: new keys and sealed envelopes durable, then the commit. Returns each
/// write's answer and whether it deleted envelopes (whose keys the zeroer thread then
/// destroys).
fn apply_batch(
    db: &Database,
    (keys, bodies): (&KeyFile, &BodyFile),
    book: &mut SlotBook,
    batch: &[Write],
    max: Quota,
    nameplates: &NameplateKey,
) -> Result<(Vec<Answer>, Vec<bool>), StoreError> {
    let mut slots = BatchSlots::default();
    let mut txn = db.begin_write().map_err(StoreError::database(COMMITTING))?;
    txn.set_two_phase_commit(true);
    let (results, shreds) = match stage(&txn, book, &mut slots, batch, max, nameplates) {
        Ok(staged) => staged,
        Err(e) => {
            // The transaction is dropped, so aborted, and no key was written.
            book.free.extend(slots.new.iter().map(|(slot, _)| *slot));
            return Err(e);
        }
    };
    if !slots.new.is_empty() {
        let written = keys
            .write_keys(&slots.new)
            .and_then(|()| bodies.write(&slots.bodies))
            .and_then(|()| keys.sync())
            .and_then(|()| bodies.sync());
        if let Err(e) = written {
            // Never committed: zero these along with the next batch's freed slots.
            book.to_zero.extend(slots.new.iter().map(|(slot, _)| *slot));
            return Err(StoreError::key_file("writing envelope keys and bodies")(e));
        }
    }
    // A failed commit may still have reached the disk, so its new slots stay
    // out of the ledger (neither free nor to zero); the next open sorts them out.
    txn.commit().map_err(StoreError::database(COMMITTING))?;
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
    nameplate_key: &NameplateKey,
) -> Result<(Vec<Answer>, Vec<bool>), StoreError> {
    let mut boxes = txn.open_table(MAILBOXES).map_err(StoreError::database(COMMITTING))?;
    let mut envs = txn.open_table(ENVELOPES).map_err(StoreError::database(COMMITTING))?;
    let mut expiry = txn.open_table(EXPIRY).map_err(StoreError::database(COMMITTING))?;
    let mut senders = txn.open_table(SENDERS).map_err(StoreError::database(COMMITTING))?;
    let mut held = txn.open_table(HELD).map_err(StoreError::database(COMMITTING))?;
    let mut touched = txn.open_table(TOUCHED).map_err(StoreError::database(COMMITTING))?;
    let mut idle = txn.open_table(IDLE).map_err(StoreError::database(COMMITTING))?;
    let mut plates = txn.open_table(NAMEPLATES).map_err(StoreError::database(COMMITTING))?;
    let mut plate_expiry = txn
        .open_table(NAMEPLATE_EXPIRY)
        .map_err(StoreError::database(COMMITTING))?;
    let mut bundles = txn.open_table(BUNDLES).map_err(StoreError::database(COMMITTING))?;
    let mut bundle_expiry = txn
        .open_table(BUNDLE_EXPIRY)
        .map_err(StoreError::database(COMMITTING))?;
    let mut tables = Tables {
        boxes: Boxes {
            table: &mut boxes,
            cached: HashMap::new(),
        },
        envs: &mut envs,
        expiry: Expiries::new(&mut expiry),
        senders: &mut senders,
        held: &mut held,
        used: Used {
            touched: &mut touched,
            idle: &mut idle,
        },
        nameplates: Nameplates {
            plates: &mut plates,
            expiry: &mut plate_expiry,
            key: nameplate_key,
        },
        bundles: Bundles {
            bundles: &mut bundles,
            expiry: &mut bundle_expiry,
        },
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
    tables.boxes.flush()?;
    tables.expiry.flush()?;
    Ok((results, shreds))
}

/// Most bytes of held commits the store keeps, all sequencers together (a sequencer
/// keeps at most [`HeldCommit::KEPT`] commits of 512 KiB). Smaller in this crate's tests,
/// which fill it.
#[cfg(not(test))]
pub(crate) const HELD_BYTES: u64 = 256 * 1024 * 1024;
#[cfg(test)]
pub(crate) const HELD_BYTES: u64 = 4 * 1024 * 1024;

/// The `held` table's key for the bytes it holds in all (shorter than any commit's key).
const HELD_TOTAL: &[u8] = b"total";

fn held_total(held: &Table<'_>) -> Result<u64, StoreError> {
    const DOING: &str = "counting held commits";
    Ok(held
        .get(HELD_TOTAL)
        .map_err(StoreError::database(DOING))?
        .and_then(|v| <[u8; 8]>::try_from(v.value()).ok())
        .map_or(0, u64::from_be_bytes))
}

fn set_held_total(held: &mut Table<'_>, total: u64) -> Result<(), StoreError> {
    held.insert(HELD_TOTAL, &total.to_be_bytes()[..])
        .map_err(StoreError::database("counting held commits"))?;
    Ok(())
}

/// The mailbox records ([`super::MAILBOXES`]), read and written through a cache that
/// lasts one batch: a record the batch changes is written to redb once, when the batch is
/// staged ([`Boxes::flush`]), however many of its writes changed it (each send and each
/// ack does). Deletions go to redb at once.
struct Boxes<'a, 't> {
    table: &'a mut Table<'t>,
    /// Records read or written in this batch, and whether they changed.
    cached: HashMap<MailboxId, (MailboxRecord, bool)>,
}

impl Boxes<'_, '_> {
    fn get(&mut self, id: &MailboxId) -> Result<Option<MailboxRecord>, StoreError> {
        if let Some((rec, _)) = self.cached.get(id) {
            return Ok(Some(*rec));
        }
        let rec = get_record(self.table, id)?;
        if let Some(rec) = rec {
            self.cached.insert(*id, (rec, false));
        }
        Ok(rec)
    }

    fn put(&mut self, id: &MailboxId, rec: MailboxRecord) {
        self.cached.insert(*id, (rec, true));
    }

    fn remove(&mut self, id: &MailboxId, doing: &'static str) -> Result<(), StoreError> {
        self.cached.remove(id);
        self.table.remove(&id.0[..]).map_err(StoreError::database(doing))?;
        Ok(())
    }

    /// One envelope fewer in mailbox `id` (if it still exists).
    fn count_off(&mut self, id: &MailboxId) -> Result<(), StoreError> {
        if let Some(rec) = self.get(id)? {
            self.put(id, rec.counted_off());
        }
        Ok(())
    }

    /// Writes the records this batch changed.
    fn flush(&mut self) -> Result<(), StoreError> {
        for (id, (rec, changed)) in self.cached.drain() {
            if changed {
                self.table
                    .insert(&id.0[..], &rec.encode()[..])
                    .map_err(StoreError::database(COMMITTING))?;
            }
        }
        Ok(())
    }
}

struct Tables<'a, 't> {
    boxes: Boxes<'a, 't>,
    envs: &'a mut Table<'t>,
    expiry: Expiries<'a, 't>,
    senders: &'a mut Table<'t>,
    held: &'a mut Table<'t>,
    used: Used<'a, 't>,
    nameplates: Nameplates<'a, 't>,
    bundles: Bundles<'a, 't>,
    book: &'a mut SlotBook,
    slots: &'a mut BatchSlots,
}

/// The entries of an expiry index of nameplates or bundles, `index`, up to `end`
/// (inclusive), read before any is removed: what a sweep has to look at, not everything
/// the store holds.
fn due(index: &Table<'_>, end: &[u8], doing: &'static str) -> Result<Vec<Vec<u8>>, StoreError> {
    index
        .range::<&[u8]>(..=end)
        .map_err(StoreError::database(doing))?
        .map(|e| e.map(|(k, _)| k.value().to_vec()))
        .collect::<Result<_, _>>()
        .map_err(StoreError::database(doing))
}

/// Most bundles the store keeps (about 2 GiB of them at the largest). Smaller in this
/// crate's tests, which fill it.
#[cfg(not(test))]
pub(crate) const MAX_BUNDLES: u64 = 1 << 20;
#[cfg(test)]
pub(crate) const MAX_BUNDLES: u64 = 16;

/// The bundles ([`super::BUNDLES`]) and their expiry index ([`super::BUNDLE_EXPIRY`]).
struct Bundles<'a, 't> {
    bundles: &'a mut redb::Table<'t, [u8; 16], &'static [u8]>,
    expiry: &'a mut Table<'t>,
}

impl Bundles<'_, '_> {
    fn publish(&mut self, name: &[u8; 16], bundle: &[u8], expires_at: u64, now: u64) -> Result<Answer, StoreError> {
        const DOING: &str = "publishing a bundle";
        let stored = self
            .bundles
            .get(name)
            .map_err(StoreError::database(DOING))?
            .map(|v| v.value().to_vec());
        let at = match bundle::judge(stored.as_deref(), bundle, expires_at, now) {
            Ok(at) => at,
            Err(refused) => return Ok(Err(refused)),
        };
        // O(1): redb keeps each table's length in its root.
        if stored.is_none() && self.bundles.len().map_err(StoreError::database(DOING))? >= MAX_BUNDLES {
            return Ok(Err(StoreError::RelayFull));
        }
        if let Some((before, _)) = stored.as_deref().and_then(decode_dated) {
            self.expiry
                .remove(&bundle_expiry_key(before, name)[..])
                .map_err(StoreError::database(DOING))?;
        }
        self.bundles
            .insert(name, &encode_dated(at, bundle)[..])
            .map_err(StoreError::database(DOING))?;
        self.expiry
            .insert(&bundle_expiry_key(at, name)[..], &[][..])
            .map_err(StoreError::database(DOING))?;
        Ok(Ok(Done::Mailbox(MailboxId([0; 32]), 0)))
    }

    /// Removes the bundles expired before `now`; returns how many.
    fn expire(&mut self, now: u64) -> Result<u64, StoreError> {
        const DOING: &str = "deleting expired bundles";
        let Some(end) = now.checked_sub(1) else {
            return Ok(0);
        };
        let mut gone = 0;
        for k in &due(self.expiry, &bundle_expiry_key(end, &[0xff; 16]), DOING)? {
            self.expiry.remove(&k[..]).map_err(StoreError::database(DOING))?;
            let Some(name) = k.get(8..).and_then(|n| <[u8; 16]>::try_from(n).ok()) else {
                continue;
            };
            // Only if the bundle there is the one that expired (not one refreshed since).
            let expired = self
                .bundles
                .get(&name)
                .map_err(StoreError::database(DOING))?
                .map(|v| decode_dated(v.value()).is_none_or(|(at, _)| !bundle::live(at, now)));
            if expired == Some(true) {
                self.bundles.remove(&name).map_err(StoreError::database(DOING))?;
                gone += 1;
            }
        }
        Ok(gone)
    }
}

/// The nameplates ([`super::NAMEPLATES`]), their expiry index
/// ([`super::NAMEPLATE_EXPIRY`]) and the key their records are sealed under.
struct Nameplates<'a, 't> {
    plates: &'a mut Table<'t>,
    expiry: &'a mut Table<'t>,
    key: &'a NameplateKey,
}

impl Nameplates<'_, '_> {
    /// Whether `number` is free: no nameplate, or one expired before `now`.
    fn free(&self, number: u32, now: u64) -> Result<bool, StoreError> {
        Ok(
            match self
                .plates
                .get(&nameplate::key(number)[..])
                .map_err(StoreError::database("allocating a nameplate"))?
            {
                None => true,
                Some(v) => nameplate::expires_at(v.value()).is_none_or(|at| at < now),
            },
        )
    }

    /// A free number when none of the candidates was: the first after `from` (wrapping
    /// around), by a walk of the table's keys in order; `None` if every number is taken.
    fn any_free(&self, from: u32) -> Result<Option<u32>, StoreError> {
        const DOING: &str = "looking for a free nameplate";
        let max = backchannel_core::code::MAX_NAMEPLATE;
        let from = from.clamp(1, max);
        for (start, end) in [(from, max), (1, from)] {
            let mut next = start;
            for entry in self
                .plates
                .range(&nameplate::key(start)[..]..=&nameplate::key(end)[..])
                .map_err(StoreError::database(DOING))?
            {
                let (k, _) = entry.map_err(StoreError::database(DOING))?;
                let taken = <[u8; 4]>::try_from(k.value()).map(u32::from_be_bytes).unwrap_or(0);
                if taken > next {
                    return Ok(Some(next));
                }
                next = next.max(taken.saturating_add(1));
            }
            if next <= end {
                return Ok(Some(next));
            }
        }
        Ok(None)
    }

    /// Removes nameplate `number` (and its index entry); returns its value.
    fn remove(&mut self, number: u32, doing: &'static str) -> Result<Option<Vec<u8>>, StoreError> {
        let value = self
            .plates
            .remove(&nameplate::key(number)[..])
            .map_err(StoreError::database(doing))?
            .map(|v| v.value().to_vec());
        if let Some(at) = value.as_deref().and_then(nameplate::expires_at) {
            self.expiry
                .remove(&nameplate::expiry_key(at, number)[..])
                .map_err(StoreError::database(doing))?;
        }
        Ok(value)
    }

    fn create(&mut self, record: &[u8], expires_at: u64, candidates: &[u32], now: u64) -> Result<Answer, StoreError> {
        const DOING: &str = "allocating a nameplate";
        let mut chosen = None;
        for n in candidates {
            if self.free(*n, now)? {
                chosen = Some(*n);
                break;
            }
        }
        let chosen = match chosen {
            Some(n) => Some(n),
            None => self.any_free(candidates.last().copied().unwrap_or(1))?,
        };
        let Some(number) = chosen else {
            return Ok(Err(StoreError::RelayFull));
        };
        // An expired one in its place goes first.
        self.remove(number, DOING)?;
        let value = self.key.seal(number, expires_at, record)?;
        self.plates
            .insert(&nameplate::key(number)[..], &value[..])
            .map_err(StoreError::database(DOING))?;
        self.expiry
            .insert(&nameplate::expiry_key(expires_at, number)[..], &[][..])
            .map_err(StoreError::database(DOING))?;
        Ok(Ok(Done::Mailbox(MailboxId([0; 32]), u64::from(number))))
    }

    fn take(&mut self, number: u32, now: u64) -> Result<Answer, StoreError> {
        let Some(value) = self.remove(number, "taking a nameplate")? else {
            return Ok(Ok(Done::Record(None)));
        };
        let live = nameplate::expires_at(&value).is_some_and(|at| at >= now);
        // One that does not open (damaged) is gone as if it had expired.
        Ok(Ok(Done::Record(live.then(|| self.key.open(number, &value)).flatten())))
    }

    /// Removes the nameplates expired before `now`; returns how many.
    fn expire(&mut self, now: u64) -> Result<u64, StoreError> {
        const DOING: &str = "deleting expired nameplates";
        let Some(end) = now.checked_sub(1) else {
            return Ok(0);
        };
        let mut gone = 0;
        for k in &due(self.expiry, &nameplate::expiry_key(end, u32::MAX), DOING)? {
            self.expiry.remove(&k[..]).map_err(StoreError::database(DOING))?;
            let Some(number) = k.get(8..12).and_then(|n| <[u8; 4]>::try_from(n).ok()) else {
                continue;
            };
            let number = u32::from_be_bytes(number);
            // Only if the nameplate there is the one that expired (not one made since).
            let current = self
                .plates
                .get(&nameplate::key(number)[..])
                .map_err(StoreError::database(DOING))?
                .map(|v| nameplate::expires_at(v.value()));
            if let Some(at) = current {
                if at.is_none_or(|at| at < now) {
                    self.remove(number, DOING)?;
                    gone += 1;
                }
            }
        }
        Ok(gone)
    }
}

/// When each mailbox was last used ([`super::TOUCHED`]) and its index ([`super::IDLE`]).
struct Used<'a, 't> {
    touched: &'a mut Table<'t>,
    idle: &'a mut Table<'t>,
}

impl Used<'_, '_> {
    /// Marks `id` used at `now` (never earlier than it was).
    fn touch(&mut self, id: &MailboxId, now: u64) -> Result<(), StoreError> {
        const DOING: &str = "marking a mailbox used";
        let before = self.forget(id)?;
        let at = before.map_or(now, |b| b.max(now));
        self.touched
            .insert(&id.0[..], &at.to_be_bytes()[..])
            .map_err(StoreError::database(DOING))?;
        self.idle
            .insert(&idle_key(at, id)[..], &[][..])
            .map_err(StoreError::database(DOING))?;
        Ok(())
    }

    /// Removes `id`'s entries; returns when it was last used.
    fn forget(&mut self, id: &MailboxId) -> Result<Option<u64>, StoreError> {
        const DOING: &str = "forgetting when a mailbox was used";
        let before = self
            .touched
            .remove(&id.0[..])
            .map_err(StoreError::database(DOING))?
            .and_then(|v| <[u8; 8]>::try_from(v.value()).ok())
            .map(u64::from_be_bytes);
        if let Some(b) = before {
            self.idle
                .remove(&idle_key(b, id)[..])
                .map_err(StoreError::database(DOING))?;
        }
        Ok(before)
    }
}

/// Unix seconds now.
pub(crate) fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Deletes mailbox `id`, its envelopes, its sender record, its held commits and when it was
/// used; returns how many envelopes went.
fn delete_mailbox(t: &mut Tables<'_, '_>, id: &MailboxId, doing: &'static str) -> Result<u64, StoreError> {
    let start = record_key(id, 0);
    let end = record_key(id, u64::MAX);
    let keys: Vec<Vec<u8>> = t
        .envs
        .range(&start[..]..=&end[..])
        .map_err(StoreError::database(doing))?
        .filter_map(|e| e.ok().map(|(k, _)| k.value().to_vec()))
        .collect();
    for k in &keys {
        let removed = t
            .envs
            .remove(&k[..])
            .map_err(StoreError::database(doing))?
            .map(|v| Removed::of(v.value()));
        if let Some(removed) = removed {
            removed.uncount(&mut t.expiry, id);
            t.slots.freed.extend(removed.slot);
        }
    }
    if let Some(rec) = t.boxes.get(id)? {
        t.senders
            .remove(&rec.send_digest[..])
            .map_err(StoreError::database(doing))?;
    }
    t.boxes.remove(id, doing)?;
    t.used.forget(id)?;
    let mut freed = 0u64;
    for epoch in 0..HeldCommit::KEPT {
        if let Some(v) = t
            .held
            .remove(&held_key(id, epoch)[..])
            .map_err(StoreError::database(doing))?
        {
            freed += v.value().len() as u64;
        }
    }
    if freed > 0 {
        let total = held_total(t.held)?;
        set_held_total(t.held, total.saturating_sub(freed))?;
    }
    Ok(keys.len() as u64)
}

/// What is needed of an envelope value being removed: its expiry (none for a corrupt one,
/// which the expiry index does not count) and its key slot (none for one in the clear).
struct Removed {
    expires_at: Option<u64>,
    slot: Option<u64>,
}

impl Removed {
    fn of(value: &[u8]) -> Self {
        let parsed = EnvelopeValue::parse(value).ok();
        Self {
            expires_at: parsed.map(|v| v.expires_at()),
            slot: parsed.and_then(|v| v.slot()),
        }
    }

    /// Counts the envelope off the expiry index (mailbox `id`'s).
    fn uncount(&self, expiry: &mut Expiries<'_, '_>, id: &MailboxId) {
        if let Some(at) = self.expires_at {
            expiry.remove(at, id);
        }
    }
}

/// Deletes the envelopes expired at `now`; returns how many. Only the index's counts due by
/// `now` are read, then, in each mailbox they name, its envelopes oldest first until as many
/// expired ones are found as the counts say: the sweep's cost is what has expired, not what
/// the store holds. A mailbox's envelopes expire in the order they came, unless the
/// envelope lifetime was shortened or the clock stepped back; then the walk goes on past
/// those not yet expired.
fn sweep_envelopes(
    envs: &mut Table<'_>,
    expiry: &mut Expiries<'_, '_>,
    boxes: &mut Boxes<'_, '_>,
    slots: &mut BatchSlots,
    now: u64,
) -> Result<u64, StoreError> {
    const DOING: &str = "deleting expired envelopes";
    // The counts as this batch left them.
    expiry.flush()?;
    let end = expiry_key(now, &MailboxId([0xff; 32]));
    let mut owed: BTreeMap<MailboxId, u64> = BTreeMap::new();
    let mut due = Vec::new();
    for entry in expiry
        .table
        .range::<&[u8]>(..=&end[..])
        .map_err(StoreError::database(DOING))?
    {
        let (k, v) = entry.map_err(StoreError::database(DOING))?;
        let k = k.value().to_vec();
        // An entry of another shape (a damaged store) is removed, nothing else.
        if let Some(id) = k.get(8..).and_then(|id| <[u8; 32]>::try_from(id).ok()) {
            *owed.entry(MailboxId(id)).or_default() += expiry_count(v.value());
        }
        due.push(k);
    }
    for k in &due {
        expiry.table.remove(&k[..]).map_err(StoreError::database(DOING))?;
    }
    let mut expired = 0u64;
    for (id, mut owed) in owed {
        let mut gone = Vec::new();
        for entry in envs
            .range(&record_key(&id, 0)[..]..=&record_key(&id, u64::MAX)[..])
            .map_err(StoreError::database(DOING))?
        {
            if owed == 0 {
                break;
            }
            let (k, v) = entry.map_err(StoreError::database(DOING))?;
            // A record that does not parse is left for the reads to report.
            if let Ok(value) = EnvelopeValue::parse(v.value()) {
                if value.expires_at() <= now {
                    gone.push((k.value().to_vec(), value.slot()));
                    owed -= 1;
                }
            }
        }
        for (k, slot) in gone {
            envs.remove(&k[..]).map_err(StoreError::database(DOING))?;
            slots.freed.extend(slot);
            boxes.count_off(&id)?;
            expired += 1;
        }
    }
    Ok(expired)
}

/// Applies one write. The outer `Result` is a storage failure that aborts the
/// batch; the inner one is this operation's own answer (a refused operation
/// writes nothing).
fn apply(t: &mut Tables<'_, '_>, w: &Write, max: Quota) -> Result<Answer, StoreError> {
    const NONE: MailboxId = MailboxId([0; 32]);
    match w {
        Write::Delete { id } => return Ok(Ok(Done::Mailbox(*id, delete_mailbox(t, id, "deleting a mailbox")?))),
        Write::NameplateCreate {
            record,
            expires_at,
            candidates,
        } => return t.nameplates.create(record, *expires_at, candidates, now_secs()),
        Write::NameplateTake { number, now } => return t.nameplates.take(*number, *now),
        Write::BundlePublish {
            name,
            bundle,
            expires_at,
            now,
        } => return t.bundles.publish(name, bundle, *expires_at, *now),
        Write::ExpireIdle { before } => {
            const DOING: &str = "deleting idle mailboxes";
            let end = idle_key(*before, &MailboxId([0; 32]));
            let due: Vec<Vec<u8>> = t
                .used
                .idle
                .range::<&[u8]>(..&end[..])
                .map_err(StoreError::database(DOING))?
                .map(|e| e.map(|(k, _)| k.value().to_vec()))
                .collect::<Result<_, _>>()
                .map_err(StoreError::database(DOING))?;
            let mut gone = 0u64;
            for k in &due {
                let Ok(id) = <[u8; 32]>::try_from(k.get(8..).unwrap_or_default()) else {
                    t.used.idle.remove(&k[..]).map_err(StoreError::database(DOING))?;
                    continue;
                };
                delete_mailbox(t, &MailboxId(id), DOING)?;
                // An entry its mailbox no longer names (a damaged store) goes too.
                t.used.idle.remove(&k[..]).map_err(StoreError::database(DOING))?;
                gone += 1;
            }
            return Ok(Ok(Done::Mailbox(NONE, gone)));
        }
        Write::Touch { ids, now } => {
            let mut n = 0;
            for id in ids {
                if t.boxes.get(id)?.is_some() {
                    t.used.touch(id, *now)?;
                    n += 1;
                }
            }
            return Ok(Ok(Done::Mailbox(NONE, n)));
        }
        _ => {}
    }
    let Tables {
        boxes,
        envs,
        expiry,
        senders,
        held,
        used,
        nameplates,
        bundles,
        book,
        slots,
    } = t;
    let answer = match w {
        Write::Create {
            id,
            recipient,
            send_digest,
            pow_bits,
        } => {
            const DOING: &str = "creating a mailbox";
            if boxes.get(id)?.is_some()
                || senders
                    .get(&send_digest[..])
                    .map_err(StoreError::database(DOING))?
                    .is_some()
            {
                Err(StoreError::MailboxExists)
            } else {
                let rec = MailboxRecord {
                    recipient: *recipient,
                    send_digest: *send_digest,
                    next_seq: 1,
                    count: 0,
                    claims: Claims::NEW,
                    pow_bits: *pow_bits,
                };
                boxes.put(id, rec);
                senders
                    .insert(&send_digest[..], &encode_sender(id)[..])
                    .map_err(StoreError::database(DOING))?;
                used.touch(id, now_secs())?;
                Ok((*id, 0))
            }
        }
        Write::Send {
            send,
            envelope,
            expires_at,
            work,
        } => match sender(&**senders, send)?
            .map(|id| boxes.get(&id).map(|r| (id, r)))
            .transpose()?
        {
            Some((id, Some(rec))) => {
                const DOING: &str = "storing an envelope";
                let id = &id;
                // Checked first: a send without its work learns nothing else.
                if !work.meets(rec.pow_bits) {
                    Err(StoreError::WorkRequired)
                // A record at the last sequence number (only a damaged or planted
                // store has one) is full rather than wrapping around.
                } else if rec.count >= max.per_mailbox || rec.next_seq == u64::MAX {
                    Err(StoreError::MailboxFull)
                } else if envs.len().map_err(StoreError::database(DOING))? >= max.total {
                    // O(1): redb keeps each table's length in its root.
                    Err(StoreError::RelayFull)
                } else {
                    let seq = rec.next_seq;
                    let rk = record_key(id, seq);
                    let key = fresh_key()?;
                    let sealed = seal(Cipher::Aes256Gcm, &key, &rk, envelope.as_bytes())?;
                    let tag: [u8; TAG_LEN] = sealed
                        .get(ENVELOPE_SIZE..)
                        .and_then(|t| t.try_into().ok())
                        .ok_or_else(|| StoreError::corrupt("envelope to seal"))?;
                    let slot = book.take();
                    slots.new.push((slot, key));
                    slots.bodies.push((slot, sealed));
                    envs.insert(&rk[..], &encode_envelope_record(*expires_at, slot, &tag)[..])
                        .map_err(StoreError::database(DOING))?;
                    expiry.add(*expires_at, id);
                    let rec = MailboxRecord {
                        next_seq: seq + 1,
                        count: rec.count + 1,
                        ..rec
                    };
                    boxes.put(id, rec);
                    Ok((*id, seq))
                }
            }
            _ => Err(StoreError::NoSuchMailbox),
        },
        Write::Ack { id, seq } => {
            const DOING: &str = "deleting an acknowledged envelope";
            let rk = record_key(id, *seq);
            // Only the removed value's expiry and slot are needed, not a copy of its 4 KiB.
            let removed = envs
                .remove(&rk[..])
                .map_err(StoreError::database(DOING))?
                .map(|v| Removed::of(v.value()));
            if let Some(removed) = removed {
                removed.uncount(expiry, id);
                slots.freed.extend(removed.slot);
                boxes.count_off(id)?;
            }
            Ok((*id, 0))
        }
        Write::Claim {
            send,
            epoch,
            proof,
            commit,
        } => match sender(&**senders, send)?
            .map(|id| boxes.get(&id).map(|r| (id, r)))
            .transpose()?
        {
            // A refusal is this write's answer, not the batch's failure.
            Some((id, Some(rec))) => match rec.claims.judge(*epoch, proof) {
                Ok(Some(claims)) => {
                    const DOING: &str = "granting a claim";
                    let kept = HeldCommit::of_grant(*epoch, proof, commit.clone()).map(|h| h.encode());
                    let key = held_key(&id, *epoch);
                    let replaced = held
                        .get(&key[..])
                        .map_err(StoreError::database(DOING))?
                        .map_or(0, |v| v.value().len() as u64);
                    let total = held_total(held)?;
                    let after = total.saturating_sub(replaced) + kept.as_ref().map_or(0, |k| k.len() as u64);
                    // Held commits are bounded relay-wide, like envelopes: past the bound a
                    // claim that brings one is refused, and nothing is written.
                    if kept.is_some() && after > HELD_BYTES {
                        return Ok(Err(StoreError::RelayFull));
                    }
                    let rec = MailboxRecord { claims, ..rec };
                    boxes.put(&id, rec);
                    used.touch(&id, now_secs())?;
                    // The grant and its commit in one transaction: never one without the other.
                    if let Some(k) = kept {
                        held.insert(&key[..], &k[..]).map_err(StoreError::database(DOING))?;
                        set_held_total(held, after)?;
                    }
                    Ok((id, *epoch))
                }
                Ok(None) => Ok((id, *epoch)),
                Err(refused) => Err(refused),
            },
            _ => Err(StoreError::NoSuchMailbox),
        },
        Write::Delete { .. }
        | Write::ExpireIdle { .. }
        | Write::Touch { .. }
        | Write::NameplateCreate { .. }
        | Write::NameplateTake { .. }
        | Write::BundlePublish { .. } => Ok((NONE, 0)),
        Write::Expire { now } => {
            let expired = sweep_envelopes(envs, expiry, boxes, slots, *now)?;
            // Nameplates and bundles too (not counted with the envelopes).
            nameplates.expire(*now)?;
            bundles.expire(*now)?;
            Ok((NONE, expired))
        }
    };
    Ok(answer.map(|(id, n)| Done::Mailbox(id, n)))
}

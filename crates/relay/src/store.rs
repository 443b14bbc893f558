//! Mailbox storage: one trait, and the embedded backend on redb.
//!
//! Every write goes through a single writer thread that batches whatever is
//! pending into one redb transaction (group commit) with two-phase commit,
//! as redb recommends for attacker-chosen bytes. A caller's write returns
//! only after the transaction holding it is durable on disk.

use std::path::Path;
use std::sync::mpsc;
use std::sync::Arc;

use backchannel_core::envelope::{Envelope, ENVELOPE_SIZE};
use backchannel_core::frame::Delivery;
use backchannel_core::mailbox::MailboxId;
use redb::{Database, ReadableTable, ReadableTableMetadata, TableDefinition};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// receive id (32) -> mailbox record.
const MAILBOXES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("mailboxes");
/// SHA-256(send capability) (32) -> receive id (32). Senders name a mailbox
/// only by its send capability; the relay keeps just the digest, so its
/// disk alone does not let anyone deliver.
const SENDERS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("senders");
/// id (32) || seq (u64 BE) -> expires_at (u64 BE, Unix s) || envelope (4096).
const ENVELOPES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("envelopes");

/// Most writes committed in one transaction.
const MAX_BATCH: usize = 512;

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
    /// The claimed epoch is not the next; holds the next epoch.
    #[error("epoch conflict")]
    EpochConflict(u64),
    /// The disk or database failed.
    #[error("storage failure: {0}")]
    Storage(String),
}

fn storage<E: std::fmt::Display>(e: E) -> StoreError {
    StoreError::Storage(e.to_string())
}

/// Counts for the relay's log.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Mailboxes.
    pub mailboxes: u64,
    /// Stored envelopes.
    pub envelopes: u64,
}

/// Storage for mailboxes and their envelopes. Methods block; call them off
/// the async executor.
pub trait MailboxStore: Send + Sync + 'static {
    /// Creates a mailbox under its receive id and the digest of its send capability.
    fn create(&self, id: MailboxId, recipient_key: [u8; 32], send_digest: [u8; 32]) -> Result<(), StoreError>;
    /// Stores an envelope durably in the mailbox whose send capability is
    /// `send`; returns that mailbox's receive id and the envelope's sequence number.
    fn send(&self, send: [u8; 32], envelope: Envelope, expires_at: u64) -> Result<(MailboxId, u64), StoreError>;
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
}

#[derive(Debug, Clone, Copy)]
struct MailboxRecord {
    recipient: [u8; 32],
    send_digest: [u8; 32],
    next_seq: u64,
    count: u32,
    next_epoch: u64,
    last_token: [u8; 32],
}

const RECORD_LEN: usize = 32 + 32 + 8 + 4 + 8 + 32;

impl MailboxRecord {
    fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(RECORD_LEN);
        v.extend_from_slice(&self.recipient);
        v.extend_from_slice(&self.send_digest);
        v.extend_from_slice(&self.next_seq.to_be_bytes());
        v.extend_from_slice(&self.count.to_be_bytes());
        v.extend_from_slice(&self.next_epoch.to_be_bytes());
        v.extend_from_slice(&self.last_token);
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
        };
        r.finish().map_err(bad)?;
        Ok(rec)
    }
}

fn envelope_key(id: &MailboxId, seq: u64) -> [u8; 40] {
    let mut k = [0u8; 40];
    k[..32].copy_from_slice(&id.0);
    k[32..].copy_from_slice(&seq.to_be_bytes());
    k
}

enum Write {
    Create {
        id: MailboxId,
        recipient: [u8; 32],
        send_digest: [u8; 32],
    },
    Send {
        send: [u8; 32],
        envelope: Envelope,
        expires_at: u64,
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
type Reply = mpsc::SyncSender<Answer>;

/// The embedded, crash-safe store (redb).
pub struct EmbeddedStore {
    db: Arc<Database>,
    writes: mpsc::Sender<(Write, Reply)>,
}

impl std::fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EmbeddedStore")
    }
}

impl EmbeddedStore {
    /// Opens (or creates) the store at `path`; redb recovers from a crash on open.
    pub fn open(path: &Path, max_envelopes_per_mailbox: u32) -> Result<Self, StoreError> {
        let db = Arc::new(Database::create(path).map_err(storage)?);
        {
            let txn = db.begin_write().map_err(storage)?;
            txn.open_table(MAILBOXES).map_err(storage)?;
            txn.open_table(ENVELOPES).map_err(storage)?;
            txn.open_table(SENDERS).map_err(storage)?;
            txn.commit().map_err(storage)?;
        }
        let (tx, rx) = mpsc::channel::<(Write, Reply)>();
        let writer_db = db.clone();
        let max = max_envelopes_per_mailbox;
        std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || writer(writer_db, rx, max))
            .map_err(storage)?;
        Ok(Self { db, writes: tx })
    }

    fn write(&self, w: Write) -> Answer {
        let (tx, rx) = mpsc::sync_channel(1);
        self.writes
            .send((w, tx))
            .map_err(|_| StoreError::Storage("writer stopped".into()))?;
        rx.recv().map_err(|_| StoreError::Storage("writer stopped".into()))?
    }
}

fn writer(db: Arc<Database>, rx: mpsc::Receiver<(Write, Reply)>, max: u32) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(w) => batch.push(w),
                Err(_) => break,
            }
        }
        let results = apply_batch(&db, &batch, max);
        match results {
            Ok(results) => {
                for ((_, reply), r) in batch.into_iter().zip(results) {
                    let _ = reply.send(r);
                }
            }
            Err(e) => {
                for (_, reply) in batch {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
    }
}

fn apply_batch(db: &Database, batch: &[(Write, Reply)], max: u32) -> Result<Vec<Answer>, StoreError> {
    let mut txn = db.begin_write().map_err(storage)?;
    txn.set_two_phase_commit(true);
    let mut results = Vec::with_capacity(batch.len());
    {
        let mut boxes = txn.open_table(MAILBOXES).map_err(storage)?;
        let mut envs = txn.open_table(ENVELOPES).map_err(storage)?;
        let mut senders = txn.open_table(SENDERS).map_err(storage)?;
        let mut tables = Tables {
            boxes: &mut boxes,
            envs: &mut envs,
            senders: &mut senders,
        };
        for (w, _) in batch {
            results.push(apply(&mut tables, w, max)?);
        }
    }
    txn.commit().map_err(storage)?;
    Ok(results)
}

type Table<'t> = redb::Table<'t, &'static [u8], &'static [u8]>;

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
}

/// Applies one write. The outer `Result` is a storage failure that aborts the
/// batch; the inner one is this operation's own answer (a refused operation
/// writes nothing).
fn apply(t: &mut Tables<'_, '_>, w: &Write, max: u32) -> Result<Answer, StoreError> {
    let Tables { boxes, envs, senders } = t;
    const NONE: MailboxId = MailboxId([0; 32]);
    Ok(match w {
        Write::Create {
            id,
            recipient,
            send_digest,
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
        } => match sender(senders, send)?.map(|id| get_record(boxes, &id).map(|r| (id, r))).transpose()? {
            Some((id, Some(rec))) => {
                let id = &id;
                if rec.count >= max {
                    Err(StoreError::MailboxFull)
                } else {
                    let seq = rec.next_seq;
                    let mut value = Vec::with_capacity(8 + ENVELOPE_SIZE);
                    value.extend_from_slice(&expires_at.to_be_bytes());
                    value.extend_from_slice(envelope.as_bytes());
                    envs.insert(&envelope_key(id, seq)[..], &value[..]).map_err(storage)?;
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
            let removed = envs.remove(&envelope_key(id, *seq)[..]).map_err(storage)?.is_some();
            if removed {
                if let Some(rec) = get_record(boxes, id)? {
                    let rec = MailboxRecord {
                        count: rec.count.saturating_sub(1),
                        ..rec
                    };
                    boxes.insert(&id.0[..], &rec.encode()[..]).map_err(storage)?;
                }
            }
            Ok((*id, 0))
        }
        Write::Delete { id } => {
            let start = envelope_key(id, 0);
            let end = envelope_key(id, u64::MAX);
            let keys: Vec<Vec<u8>> = envs
                .range(&start[..]..=&end[..])
                .map_err(storage)?
                .filter_map(|e| e.ok().map(|(k, _)| k.value().to_vec()))
                .collect();
            for k in &keys {
                envs.remove(&k[..]).map_err(storage)?;
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
                if *epoch == rec.next_epoch {
                    let rec = MailboxRecord {
                        next_epoch: epoch + 1,
                        last_token: *token,
                        ..rec
                    };
                    boxes.insert(&id.0[..], &rec.encode()[..]).map_err(storage)?;
                    Ok((*id, *epoch))
                } else if epoch + 1 == rec.next_epoch && ct_eq(token, &rec.last_token) {
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
                        expired.push(k.value().to_vec());
                    }
                }
            }
            for k in &expired {
                envs.remove(&k[..]).map_err(storage)?;
                let mut id = [0u8; 32];
                id.copy_from_slice(&k[..32]);
                let id = MailboxId(id);
                if let Some(rec) = get_record(boxes, &id)? {
                    let rec = MailboxRecord {
                        count: rec.count.saturating_sub(1),
                        ..rec
                    };
                    boxes.insert(&id.0[..], &rec.encode()[..]).map_err(storage)?;
                }
            }
            Ok((NONE, expired.len() as u64))
        }
    })
}

impl MailboxStore for EmbeddedStore {
    fn create(&self, id: MailboxId, recipient: [u8; 32], send_digest: [u8; 32]) -> Result<(), StoreError> {
        self.write(Write::Create {
            id,
            recipient,
            send_digest,
        })
        .map(|_| ())
    }

    fn send(&self, send: [u8; 32], envelope: Envelope, expires_at: u64) -> Result<(MailboxId, u64), StoreError> {
        self.write(Write::Send {
            send,
            envelope,
            expires_at,
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
            let start = envelope_key(id, 0);
            let end = envelope_key(id, u64::MAX);
            for entry in envs.range(&start[..]..=&end[..]).map_err(storage)? {
                if out.len() >= max {
                    break;
                }
                let (k, v) = entry.map_err(storage)?;
                let (k, v) = (k.value(), v.value());
                if k.len() != 40 || v.len() != 8 + ENVELOPE_SIZE {
                    return Err(StoreError::Storage("corrupt envelope record".into()));
                }
                let mut seq = [0u8; 8];
                seq.copy_from_slice(&k[32..]);
                out.push(Delivery {
                    mailbox: *id,
                    seq: u64::from_be_bytes(seq),
                    envelope: Envelope::from_slice(&v[8..]).map_err(storage)?,
                });
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

    #[test]
    fn send_fetch_ack_and_limits() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(dir.path(), 2);
        let id = MailboxId([1; 32]);
        let cap = [2u8; 32];
        let digest: [u8; 32] = Sha256::digest(cap).into();
        s.create(id, [3; 32], digest).unwrap();
        assert_eq!(s.create(id, [3; 32], digest), Err(StoreError::MailboxExists));
        assert_eq!(s.create(MailboxId([7; 32]), [3; 32], digest), Err(StoreError::MailboxExists));
        assert_eq!(s.send([9; 32], env(1), u64::MAX), Err(StoreError::NoSuchMailbox));
        assert_eq!(s.send(id.0, env(1), u64::MAX), Err(StoreError::NoSuchMailbox));
        let (to, a) = s.send(cap, env(1), u64::MAX).unwrap();
        assert_eq!(to, id);
        let (_, b) = s.send(cap, env(2), u64::MAX).unwrap();
        assert!(b > a);
        assert_eq!(s.send(cap, env(3), u64::MAX), Err(StoreError::MailboxFull));
        let got = s.fetch(&[id], 10).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].envelope, env(1));
        s.ack(id, a).unwrap();
        assert_eq!(s.fetch(&[id], 10).unwrap().len(), 1);
        s.send(cap, env(4), u64::MAX).unwrap();
        s.delete(id).unwrap();
        assert_eq!(s.stats().unwrap(), Stats::default());
        assert_eq!(s.send(cap, env(5), u64::MAX), Err(StoreError::NoSuchMailbox));
    }

    #[test]
    fn claims_are_granted_once_per_epoch_and_idempotent_per_token() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(dir.path(), 10);
        let id = MailboxId([1; 32]);
        let cap = [2u8; 32];
        s.create(id, [3; 32], Sha256::digest(cap).into()).unwrap();
        s.claim(cap, 0, [7; 32]).unwrap();
        s.claim(cap, 0, [7; 32]).unwrap();
        assert_eq!(s.claim(cap, 0, [8; 32]), Err(StoreError::EpochConflict(1)));
        assert_eq!(s.claim(cap, 5, [8; 32]), Err(StoreError::EpochConflict(1)));
        s.claim(cap, 1, [8; 32]).unwrap();
        assert_eq!(s.claim([0; 32], 2, [8; 32]), Err(StoreError::NoSuchMailbox));
    }

    #[test]
    fn expiry_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let id = MailboxId([1; 32]);
        let cap = [2u8; 32];
        {
            let s = open(dir.path(), 10);
            s.create(id, [3; 32], Sha256::digest(cap).into()).unwrap();
            s.send(cap, env(1), 100).unwrap();
            s.send(cap, env(2), 300).unwrap();
        }
        // Give the previous writer thread time to drop its handle on the file.
        std::thread::sleep(std::time::Duration::from_millis(100));
        let s = open(dir.path(), 10);
        assert_eq!(s.expire(200).unwrap(), 1);
        let left = s.fetch(&[id], 10).unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].envelope, env(2));
    }
}

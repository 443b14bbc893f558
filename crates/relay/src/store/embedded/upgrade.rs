//! The data directory's format version, and the conversion of older layouts.
//!
//! Format 6 (this code) is format 5 with the expiry index ([`super::EXPIRY`]) counting a
//! mailbox's envelopes per expiry second instead of holding an entry per envelope:
//! [`index_expiries`] counts them again for a directory of format 3, 4 or 5.
//! Format 5 is format 4 with envelope records of version 2, whose sealed
//! envelope lies in the body file ([`super::at_rest::ENVELOPE_BODY_FILE`]) rather than in
//! redb; records of version 1 read as they are, so a directory of format 4 needs nothing
//! converted for it, and a release of format 4 refuses a directory of
//! format 5 whole instead of its new records one by one.
//! Format 4 is format 3 with when each mailbox was last used
//! ([`super::TOUCHED`], indexed in [`super::IDLE`]), which [`index_touches`] builds for an
//! older directory, dating every mailbox at the upgrade. Format 3 is format 2 with the
//! expiry index ([`super::EXPIRY`]), which [`index_expiries`] builds for a directory of
//! format 2 (and of format 1, once converted).
//! A data directory of format 2 holds the version in the redb table
//! `format` (key `"data directory"`, a u32) and writes every record with a version
//! byte ([`super::record`]). Format 1 is what release 94ba14f and earlier wrote: no
//! `format` table, unversioned records told apart by their length, envelopes sealed
//! at rest (or, before that, in the clear). The key file has had one layout, an
//! array of 32-byte slots, in every format.
//!
//! On open, before anything in the directory is written (the key file included):
//! - a format newer than [`FORMAT`] is refused with [`StoreError::NewerFormat`]
//!   ("… upgrade backchannel"), and nothing is changed;
//! - format 1 is converted: every record is rewritten in a versioned layout (envelopes
//!   in version 1, inline; one stored in the clear is sealed under a new key), in batches, then the
//!   version is written. A crash midway leaves records of both layouts, which read
//!   alike, and the next open finishes the conversion.

use std::ops::Bound;

use redb::{Database, ReadableTable, TableDefinition};

use super::at_rest::{fresh_key, seal, EnvelopeKey, KeyFile, SlotBook};
use super::record::{
    decode_sender, encode_envelope_value_v1, encode_sender, record_mailbox, EnvelopeValue, MailboxRecord,
};
use super::{idle_key, Expiries, ENVELOPES, EXPIRY, IDLE, MAILBOXES, MAX_BATCH, SENDERS, TOUCHED};
use crate::store::StoreError;
use backchannel_core::aead::Cipher;
use backchannel_core::mailbox::MailboxId;

/// The data directory format this code writes. Format 3 added the expiry index
/// ([`super::EXPIRY`]), format 4 when each mailbox was last used ([`super::TOUCHED`]),
/// format 5 the body file, format 6 the expiry index's counts.
pub const FORMAT: u32 = 6;

/// The expiry index of formats 3 to 5 (expires_at || record key -> nothing, an entry per
/// envelope), retired in the transaction that writes the current format, so that a
/// directory whose upgrade stopped midway still holds the index its own format reads.
const RETIRED_EXPIRY: TableDefinition<&[u8], &[u8]> = TableDefinition::new("expiry");

/// The table of format versions.
const FORMATS: TableDefinition<&str, u32> = TableDefinition::new("format");
/// The key of the data directory's version in [`FORMATS`].
const DIRECTORY: &str = "data directory";

/// What an opened database holds.
pub(crate) enum Found {
    /// Nothing yet: a new data directory.
    New,
    /// Format 1 (no version written): to convert.
    Format1,
    /// Format 2 to 5: versioned records, without the expiry index (2), without when
    /// each mailbox was used (3), without the body file (4), or with an expiry index entry
    /// per envelope (3 to 5).
    Older(u32),
    /// The current format.
    Current,
}

/// Reads the data directory's format, refusing a newer one. Writes nothing.
pub(crate) fn check(db: &Database) -> Result<Found, StoreError> {
    const DOING: &str = "reading the data directory's format version";
    let txn = db.begin_read().map_err(StoreError::database(DOING))?;
    match txn.open_table(FORMATS) {
        Ok(t) => match t.get(DIRECTORY).map_err(StoreError::database(DOING))? {
            Some(v) if v.value() > FORMAT => Err(StoreError::NewerFormat {
                what: "data directory",
                found: v.value(),
                known: FORMAT,
            }),
            Some(v) if v.value() < FORMAT => Ok(Found::Older(v.value())),
            Some(_) => Ok(Found::Current),
            None => Ok(Found::Format1),
        },
        Err(redb::TableError::TableDoesNotExist(_)) => {
            // Format 1 had the three tables and no `format` table.
            Ok(match txn.open_table(MAILBOXES) {
                Ok(_) => Found::Format1,
                Err(redb::TableError::TableDoesNotExist(_)) => Found::New,
                Err(e) => return Err(StoreError::database(DOING)(e)),
            })
        }
        Err(e) => Err(StoreError::database(DOING)(e)),
    }
}

/// Creates the tables of a new data directory and writes its format.
pub(crate) fn create(db: &Database) -> Result<(), StoreError> {
    const DOING: &str = "creating the store's tables";
    let txn = db.begin_write().map_err(StoreError::database(DOING))?;
    txn.open_table(MAILBOXES).map_err(StoreError::database(DOING))?;
    txn.open_table(ENVELOPES).map_err(StoreError::database(DOING))?;
    txn.open_table(SENDERS).map_err(StoreError::database(DOING))?;
    txn.open_table(EXPIRY).map_err(StoreError::database(DOING))?;
    txn.open_table(TOUCHED).map_err(StoreError::database(DOING))?;
    txn.open_table(IDLE).map_err(StoreError::database(DOING))?;
    txn.open_table(FORMATS)
        .map_err(StoreError::database(DOING))?
        .insert(DIRECTORY, FORMAT)
        .map_err(StoreError::database(DOING))?;
    txn.commit().map_err(StoreError::database(DOING))
}

/// Rewrites every envelope record of an unversioned layout in version 1, in
/// batches: a sealed one keeps its key and ciphertext and gains the version byte;
/// one in the clear is sealed under a new key (its old bytes may remain in freed
/// pages). Returns how many were converted.
pub(crate) fn convert_envelopes(db: &Database, keys: &KeyFile, book: &mut SlotBook) -> Result<u64, StoreError> {
    const DOING: &str = "converting envelope records to the current format";
    let mut after: Option<Vec<u8>> = None;
    let mut converted = 0u64;
    let mut sealed = 0u64;
    loop {
        let mut txn = db.begin_write().map_err(StoreError::database(DOING))?;
        txn.set_two_phase_commit(true);
        let mut new: Vec<(u64, EnvelopeKey)> = Vec::new();
        let (more, done) = {
            let mut envs = txn.open_table(ENVELOPES).map_err(StoreError::database(DOING))?;
            let mut old = Vec::new();
            let from = after.as_deref().map_or(Bound::Unbounded, Bound::Excluded);
            for entry in envs
                .range::<&[u8]>((from, Bound::Unbounded))
                .map_err(StoreError::database(DOING))?
            {
                let (k, v) = entry.map_err(StoreError::database(DOING))?;
                let legacy = matches!(
                    EnvelopeValue::parse(v.value()),
                    Ok(EnvelopeValue::Plaintext { .. } | EnvelopeValue::Sealed { legacy: true, .. })
                );
                if legacy {
                    old.push((k.value().to_vec(), v.value().to_vec()));
                    if old.len() == MAX_BATCH {
                        break;
                    }
                }
            }
            for (k, v) in &old {
                let Ok(aad) = <[u8; 40]>::try_from(&k[..]) else {
                    // A damaged key: left for the reads to report.
                    continue;
                };
                let value = match EnvelopeValue::parse(v)? {
                    // Only unversioned records were picked, so no record of version 2.
                    EnvelopeValue::Apart { .. } => continue,
                    EnvelopeValue::Sealed {
                        expires_at,
                        slot,
                        sealed,
                        ..
                    } => encode_envelope_value_v1(expires_at, slot, sealed),
                    EnvelopeValue::Plaintext { expires_at, envelope } => {
                        let key = fresh_key()?;
                        let slot = book.take();
                        let value = encode_envelope_value_v1(
                            expires_at,
                            slot,
                            &seal(Cipher::ChaCha20Poly1305, &key, &aad, envelope)?,
                        );
                        new.push((slot, key));
                        sealed += 1;
                        value
                    }
                };
                envs.insert(&k[..], &value[..]).map_err(StoreError::database(DOING))?;
            }
            after = old.last().map(|(k, _)| k.clone());
            (old.len() == MAX_BATCH, old.len() as u64)
        };
        if done == 0 {
            break;
        }
        if !new.is_empty() {
            keys.write_keys(&new)
                .and_then(|()| keys.sync())
                .map_err(StoreError::key_file("writing envelope keys"))?;
        }
        txn.commit().map_err(StoreError::database(DOING))?;
        converted += done;
        if !more {
            break;
        }
    }
    if sealed > 0 {
        tracing::info!(sealed, "sealed stored envelopes of the earlier format at rest");
    }
    Ok(converted)
}

/// Rewrites the mailbox and sender records of format 1 in the current layout and
/// writes the data directory's format. Run after [`convert_envelopes`].
pub(crate) fn finish_format1(db: &Database) -> Result<(), StoreError> {
    const DOING: &str = "converting mailbox records to the current format";
    let mut txn = db.begin_write().map_err(StoreError::database(DOING))?;
    txn.set_two_phase_commit(true);
    {
        let mut boxes = txn.open_table(MAILBOXES).map_err(StoreError::database(DOING))?;
        let mut rewrite = Vec::new();
        for entry in boxes.iter().map_err(StoreError::database(DOING))? {
            let (k, v) = entry.map_err(StoreError::database(DOING))?;
            // A corrupt record stays as it is, reported when it is read.
            if let Ok(rec) = MailboxRecord::decode(v.value()) {
                rewrite.push((k.value().to_vec(), rec.encode()));
            }
        }
        for (k, v) in rewrite {
            boxes.insert(&k[..], &v[..]).map_err(StoreError::database(DOING))?;
        }
        let mut senders = txn.open_table(SENDERS).map_err(StoreError::database(DOING))?;
        let mut rewrite = Vec::new();
        for entry in senders.iter().map_err(StoreError::database(DOING))? {
            let (k, v) = entry.map_err(StoreError::database(DOING))?;
            if let Ok(id) = decode_sender(v.value()) {
                rewrite.push((k.value().to_vec(), encode_sender(&id)));
            }
        }
        for (k, v) in rewrite {
            senders.insert(&k[..], &v[..]).map_err(StoreError::database(DOING))?;
        }
        txn.open_table(FORMATS)
            .map_err(StoreError::database(DOING))?
            .insert(DIRECTORY, 2)
            .map_err(StoreError::database(DOING))?;
    }
    txn.commit().map_err(StoreError::database(DOING))?;
    tracing::info!(format = 2, "converted the data directory's records");
    Ok(())
}

/// Counts every envelope in the expiry index ([`super::EXPIRY`]), in batches, then writes
/// `format` if given (formats 4 and 5 to the current one; formats 1 to 3 are dated by
/// [`index_touches`] next, which writes it). The index of formats 3 to 5 is another table,
/// kept until the current format is written. The counts are built from nothing each time:
/// a crash midway leaves the version as it was, the older index whole and part of the
/// counts, and a release before the counts may have opened the directory since and removed
/// envelopes without counting them off.
pub(crate) fn index_expiries(db: &Database, format: Option<u32>) -> Result<(), StoreError> {
    const DOING: &str = "indexing envelopes by expiry";
    let indexed = rebuild(db, &[EXPIRY], ENVELOPES, format, DOING, |txn, batch| {
        let mut index = txn.open_table(EXPIRY).map_err(StoreError::database(DOING))?;
        let mut counts = Expiries::new(&mut index);
        let mut n = 0;
        for (k, v) in batch {
            // A record that does not parse, or whose key is short, is left for the reads to
            // report; it has no expiry to index.
            if let (Ok(value), Some(id)) = (EnvelopeValue::parse(v), record_mailbox(k)) {
                counts.add(value.expires_at(), &id);
                n += 1;
            }
        }
        counts.flush()?;
        Ok(n)
    })?;
    tracing::info!(envelopes = indexed, "counted the envelopes by expiry");
    Ok(())
}

/// Dates every mailbox at `now` (when each was last used is not known from before format
/// 4: each gets the whole idle lifetime from then), in batches, then writes the current
/// format (run after [`index_expiries`]; formats 5 and 6 add nothing more to convert). A
/// crash midway leaves the format as it was, and the next open starts again.
pub(crate) fn index_touches(db: &Database, now: u64) -> Result<(), StoreError> {
    const DOING: &str = "dating every mailbox";
    let dated = rebuild(db, &[TOUCHED, IDLE], MAILBOXES, Some(FORMAT), DOING, |txn, batch| {
        let mut touched = txn.open_table(TOUCHED).map_err(StoreError::database(DOING))?;
        let mut idle = txn.open_table(IDLE).map_err(StoreError::database(DOING))?;
        let mut n = 0;
        for (k, _) in batch {
            // A damaged key is left for the reads to report.
            if let Ok(id) = <[u8; 32]>::try_from(&k[..]) {
                touched
                    .insert(&id[..], &now.to_be_bytes()[..])
                    .map_err(StoreError::database(DOING))?;
                idle.insert(&idle_key(now, &MailboxId(id))[..], &[][..])
                    .map_err(StoreError::database(DOING))?;
                n += 1;
            }
        }
        Ok(n)
    })?;
    tracing::info!(
        format = FORMAT,
        mailboxes = dated,
        "dated every mailbox for the idle sweep"
    );
    Ok(())
}

/// Builds `built` (emptied first) from every record of `source`: `each` gets the records in
/// batches of [`MAX_BATCH`], each batch in a write transaction of its own, and says how many
/// it took; the last transaction also writes `format`, if given, and with the current one
/// retires the tables older formats had ([`RETIRED_EXPIRY`]). Returns the records taken.
/// Built from nothing each time, so a crash midway (the format not yet written) is finished
/// by the next open.
fn rebuild(
    db: &Database,
    built: &[TableDefinition<&[u8], &[u8]>],
    source: TableDefinition<&[u8], &[u8]>,
    format: Option<u32>,
    doing: &'static str,
    mut each: impl FnMut(&redb::WriteTransaction, &[(Vec<u8>, Vec<u8>)]) -> Result<u64, StoreError>,
) -> Result<u64, StoreError> {
    {
        let txn = db.begin_write().map_err(StoreError::database(doing))?;
        for table in built {
            txn.delete_table(*table).map_err(StoreError::database(doing))?;
        }
        txn.commit().map_err(StoreError::database(doing))?;
    }
    let mut after: Option<Vec<u8>> = None;
    let mut taken = 0u64;
    loop {
        let mut txn = db.begin_write().map_err(StoreError::database(doing))?;
        txn.set_two_phase_commit(true);
        let batch: Vec<(Vec<u8>, Vec<u8>)> = {
            let records = txn.open_table(source).map_err(StoreError::database(doing))?;
            let from = after.as_deref().map_or(Bound::Unbounded, Bound::Excluded);
            let mut batch = Vec::new();
            for entry in records
                .range::<&[u8]>((from, Bound::Unbounded))
                .map_err(StoreError::database(doing))?
            {
                let (k, v) = entry.map_err(StoreError::database(doing))?;
                batch.push((k.value().to_vec(), v.value().to_vec()));
                if batch.len() == MAX_BATCH {
                    break;
                }
            }
            batch
        };
        taken += each(&txn, &batch)?;
        let more = batch.len() == MAX_BATCH;
        after = batch.last().map(|(k, _)| k.clone());
        if let (false, Some(format)) = (more, format) {
            txn.open_table(FORMATS)
                .map_err(StoreError::database(doing))?
                .insert(DIRECTORY, format)
                .map_err(StoreError::database(doing))?;
            if format == FORMAT {
                txn.delete_table(RETIRED_EXPIRY).map_err(StoreError::database(doing))?;
            }
        }
        txn.commit().map_err(StoreError::database(doing))?;
        if !more {
            return Ok(taken);
        }
    }
}

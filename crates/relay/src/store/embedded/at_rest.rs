//! Envelopes sealed at rest, each under a key of its own, kept in the key file
//! ([`ENVELOPE_KEY_FILE`]) and destroyed with the envelope (the module documentation of
//! [`super`] explains why and what this does not do); the sealed envelopes themselves
//! in the body file ([`ENVELOPE_BODY_FILE`]), at the same slot as their key.

use std::collections::{BTreeSet, HashSet};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::sync::Arc;

use backchannel_core::aead::{self, Cipher};
use backchannel_core::envelope::{Envelope, ENVELOPE_SIZE};
use rand_core::{OsRng, RngCore};
use redb::{Database, ReadableTable};
use zeroize::Zeroizing;

use super::record::{EnvelopeValue, SEALED_LEN, SLOT_LEN};
use super::{count_off, Expiries, ENVELOPES, EXPIRY, MAILBOXES};
use crate::store::StoreError;

/// The file of per-envelope keys, in the directory of the redb file: an array of
/// 32-byte slots, one per stored envelope, written in place with positioned writes;
/// a slot that no envelope uses holds zeros. Its layout belongs to the data
/// directory's format version (`super::upgrade`).
pub const ENVELOPE_KEY_FILE: &str = "envelope-keys.bin";

/// The file of sealed envelopes, in the directory of the redb file: an array of slots of
/// 4,112 bytes (AES-256-GCM ciphertext ‖ tag), slot `n` holding the envelope whose key is in slot `n`
/// of [`ENVELOPE_KEY_FILE`]. A slot is overwritten when it is handed out again, never
/// zeroed: once its key's zeros are durable, what is left there is ciphertext under a key
/// that no longer exists, as in redb's freed pages. Added by data directory format 5.
pub const ENVELOPE_BODY_FILE: &str = "envelope-bodies.bin";

/// One envelope's at-rest key.
pub(crate) type EnvelopeKey = Zeroizing<[u8; SLOT_LEN]>;

pub(crate) fn fresh_key() -> Result<EnvelopeKey, StoreError> {
    let mut key = Zeroizing::new([0u8; SLOT_LEN]);
    OsRng
        .try_fill_bytes(&mut key[..])
        .map_err(|e| StoreError::Randomness(Arc::new(e)))?;
    Ok(key)
}

/// The all-zero nonce: each key seals exactly one envelope, exactly once (a
/// rewrite, as in the conversion of plaintext records, takes a new key), so no
/// (key, nonce) pair ever repeats.
const NONCE: [u8; aead::NONCE_LEN] = [0; aead::NONCE_LEN];

/// Seals `plaintext` (an envelope's 4096 bytes) under `key` with the record key
/// `aad`: ciphertext || tag. The cipher goes with the record's version: AES-256-GCM for
/// version 2 (the body file; on every envelope's path, and several times as fast on 4 KiB
/// with the AES instructions), ChaCha20-Poly1305 for version 1 and unversioned records.
pub(crate) fn seal(cipher: Cipher, key: &EnvelopeKey, aad: &[u8; 40], plaintext: &[u8]) -> Result<Vec<u8>, StoreError> {
    let mut sealed = Vec::with_capacity(plaintext.len() + super::record::TAG_LEN);
    sealed.extend_from_slice(plaintext);
    // Only a plaintext longer than one nonce allows fails, and an envelope is not.
    let tag = cipher
        .seal_detached(key, &NONCE, aad, &mut sealed)
        .map_err(|_| StoreError::corrupt("envelope to seal"))?;
    sealed.extend_from_slice(&tag);
    Ok(sealed)
}

/// Why a stored envelope did not open.
pub(crate) enum Unopened {
    /// The key file could not be read.
    Disk(io::Error),
    /// The slot holds no key that opens the record (destroyed, reused or corrupt).
    WrongKey,
}

/// Opens a sealed envelope value with the key in its slot.
pub(crate) fn open_sealed(
    cipher: Cipher,
    keys: &KeyFile,
    aad: &[u8; 40],
    slot: u64,
    sealed: &[u8],
) -> Result<Envelope, Unopened> {
    if sealed.len() != ENVELOPE_SIZE + super::record::TAG_LEN {
        return Err(Unopened::WrongKey);
    }
    let key = keys.read(slot).map_err(unopened)?;
    let (sealed, tag) = sealed.split_at(ENVELOPE_SIZE);
    let tag: &[u8; aead::TAG_LEN] = tag.try_into().map_err(|_| Unopened::WrongKey)?;
    let mut plain = sealed.to_vec();
    cipher
        .open_detached(&key, &NONCE, aad, &mut plain, tag)
        .map_err(|_| Unopened::WrongKey)?;
    Envelope::from_bytes(&plain).map_err(|_| Unopened::WrongKey)
}

/// A file of fixed-size slots, each overwritten in place with positioned writes.
#[derive(Debug)]
struct SlotFile {
    file: File,
    /// Bytes per slot.
    len: usize,
}

impl SlotFile {
    fn open(dir: &Path, name: &str, len: usize) -> io::Result<Self> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(dir.join(name))?;
        // The file's directory entry must be durable before a commit relies on a slot in it.
        File::open(dir)?.sync_all()?;
        Ok(Self { file, len })
    }

    fn offset(&self, slot: u64) -> io::Result<u64> {
        slot.checked_mul(self.len as u64)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "slot out of range"))
    }

    /// Slot `slot`, whole ([`io::ErrorKind::UnexpectedEof`] past the end of the file).
    fn read_into(&self, slot: u64, buf: &mut [u8]) -> io::Result<()> {
        self.file.read_exact_at(buf, self.offset(slot)?)
    }

    /// Writes each slot's bytes (`len` each), one positioned write per run of
    /// neighbouring slots.
    fn write(&self, mut slots: Vec<(u64, &[u8])>) -> io::Result<()> {
        slots.sort_unstable_by_key(|(slot, _)| *slot);
        slots.dedup_by_key(|(slot, _)| *slot);
        // Sized once: growing would leave unzeroized copies of keys behind.
        let mut run = Zeroizing::new(Vec::with_capacity(slots.len() * self.len));
        let mut start = 0;
        for (slot, bytes) in slots {
            if bytes.len() != self.len {
                return Err(io::Error::new(io::ErrorKind::InvalidInput, "slot of the wrong size"));
            }
            if !run.is_empty() && start + (run.len() / self.len) as u64 != slot {
                self.file.write_all_at(&run, self.offset(start)?)?;
                run.clear();
            }
            if run.is_empty() {
                start = slot;
            }
            run.extend_from_slice(bytes);
        }
        if !run.is_empty() {
            self.file.write_all_at(&run, self.offset(start)?)?;
        }
        Ok(())
    }

    /// How many whole slots the file holds (a torn last one left out).
    fn whole_slots(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len() / self.len as u64)
    }

    fn sync(&self) -> io::Result<()> {
        self.file.sync_data()
    }
}

/// The key file: an array of 32-byte slots, overwritten in place.
#[derive(Debug)]
pub(crate) struct KeyFile(SlotFile);

impl KeyFile {
    pub(crate) fn open(dir: &Path) -> io::Result<Self> {
        SlotFile::open(dir, ENVELOPE_KEY_FILE, SLOT_LEN).map(Self)
    }

    pub(crate) fn read(&self, slot: u64) -> io::Result<EnvelopeKey> {
        let mut key = Zeroizing::new([0u8; SLOT_LEN]);
        self.0.read_into(slot, &mut key[..])?;
        Ok(key)
    }

    pub(crate) fn write_keys(&self, keys: &[(u64, EnvelopeKey)]) -> io::Result<()> {
        self.0.write(keys.iter().map(|(slot, key)| (*slot, &key[..])).collect())
    }

    pub(crate) fn zero(&self, slots: &[u64]) -> io::Result<()> {
        const ZERO: [u8; SLOT_LEN] = [0; SLOT_LEN];
        self.0.write(slots.iter().map(|slot| (*slot, &ZERO[..])).collect())
    }

    pub(crate) fn sync(&self) -> io::Result<()> {
        self.0.sync()
    }
}

/// The body file: an array of sealed envelopes ([`SEALED_LEN`] bytes), overwritten in place.
#[derive(Debug)]
pub(crate) struct BodyFile(SlotFile);

impl BodyFile {
    pub(crate) fn open(dir: &Path) -> io::Result<Self> {
        SlotFile::open(dir, ENVELOPE_BODY_FILE, SEALED_LEN).map(Self)
    }

    /// The sealed envelope in `slot`.
    pub(crate) fn read(&self, slot: u64) -> io::Result<Vec<u8>> {
        let mut sealed = vec![0u8; SEALED_LEN];
        self.0.read_into(slot, &mut sealed)?;
        Ok(sealed)
    }

    pub(crate) fn write(&self, bodies: &[(u64, Vec<u8>)]) -> io::Result<()> {
        self.0.write(bodies.iter().map(|(slot, b)| (*slot, &b[..])).collect())
    }

    pub(crate) fn sync(&self) -> io::Result<()> {
        self.0.sync()
    }
}

/// Reads the sealed envelope of a record of version 2 from the body file, and opens it
/// with the key in its slot. The body is the record's only if its tag is the record's
/// `tag`: a slot freed and handed out again holds another envelope (which could even
/// open, were its mailbox made again under the same id with the same sequence number).
pub(crate) fn open_apart(
    keys: &KeyFile,
    bodies: &BodyFile,
    aad: &[u8; 40],
    slot: u64,
    tag: &[u8; aead::TAG_LEN],
) -> Result<Envelope, Unopened> {
    let sealed = bodies.read(slot).map_err(unopened)?;
    if sealed.get(ENVELOPE_SIZE..) != Some(&tag[..]) {
        return Err(Unopened::WrongKey);
    }
    open_sealed(Cipher::Aes256Gcm, keys, aad, slot, &sealed)
}

/// A read past the end of a slot file, or at a slot no offset reaches, finds no envelope.
fn unopened(e: io::Error) -> Unopened {
    match e.kind() {
        io::ErrorKind::UnexpectedEof | io::ErrorKind::InvalidInput => Unopened::WrongKey,
        _ => Unopened::Disk(e),
    }
}

/// The writer's ledger of key slots.
#[derive(Debug)]
pub(crate) struct SlotBook {
    /// Slots whose zeros are durable (or that lie past the end of the file).
    pub(crate) free: BTreeSet<u64>,
    /// The first slot never handed out.
    pub(crate) next: u64,
    /// Slots that no committed record uses but whose zeroing is not yet durable.
    pub(crate) to_zero: Vec<u64>,
}

impl SlotBook {
    pub(crate) fn take(&mut self) -> u64 {
        self.free.pop_first().unwrap_or_else(|| {
            let slot = self.next;
            self.next = self.next.saturating_add(1);
            slot
        })
    }
}

/// Zeroes key slots durably. The deletions that freed them are committed; if this
/// fails, a later batch or the next open zeroes them.
pub(crate) fn zero_slots(keys: &KeyFile, slots: &[u64]) -> Result<(), StoreError> {
    if slots.is_empty() {
        return Ok(());
    }
    keys.zero(slots)
        .and_then(|()| keys.sync())
        .map_err(StoreError::key_file("destroying the keys of deleted envelopes"))
}

/// What [`recover_slots`] found among the envelope records.
pub(crate) struct Found {
    /// Records in an older layout (without a version byte, or in the clear).
    pub(crate) legacy: bool,
}

/// Zeroes every slot of the key file that no record uses and returns the
/// ledger, and whether records of an older layout remain. Cleans up
/// after a crash between a commit and the zeroing of the slots it freed, or
/// between writing keys and a commit that never happened.
pub(crate) fn recover_slots(db: &Database, keys: &KeyFile, bodies: &BodyFile) -> Result<(SlotBook, Found), StoreError> {
    const READING: &str = "reading envelope records to recover key slots";
    let len = keys
        .0
        .file
        .metadata()
        .map_err(StoreError::key_file("measuring the key file"))?
        .len();
    let span = len.div_ceil(SLOT_LEN as u64);
    let body_span = bodies
        .0
        .whole_slots()
        .map_err(StoreError::key_file("measuring the body file"))?;
    let mut used = HashSet::new();
    let mut found = Found { legacy: false };
    // Records whose slot lies past the end of the key file, or whose sealed envelope lies
    // past the end of the body file (a damaged or planted data directory), have no key or
    // no envelope: they can never be read, and handing out or zeroing slots up to theirs
    // would grow the key file without bound.
    let mut keyless = Vec::new();
    {
        let txn = db.begin_read().map_err(StoreError::database(READING))?;
        let envs = txn.open_table(ENVELOPES).map_err(StoreError::database(READING))?;
        for entry in envs.iter().map_err(StoreError::database(READING))? {
            let (k, v) = entry.map_err(StoreError::database(READING))?;
            // A record of a newer version refuses the whole directory, before
            // anything is written.
            let value = match EnvelopeValue::parse(v.value()) {
                Ok(value) => value,
                Err(e @ StoreError::NewerFormat { .. }) => return Err(e),
                // Corrupt records are reported when read.
                Err(_) => continue,
            };
            match value {
                EnvelopeValue::Apart { slot, .. } => {
                    if slot >= span || slot >= body_span {
                        keyless.push(k.value().to_vec());
                    } else {
                        used.insert(slot);
                    }
                }
                EnvelopeValue::Sealed { slot, legacy, .. } => {
                    found.legacy |= legacy;
                    if slot >= span {
                        keyless.push(k.value().to_vec());
                    } else {
                        used.insert(slot);
                    }
                }
                EnvelopeValue::Plaintext { .. } => found.legacy = true,
            }
        }
    }
    if !keyless.is_empty() {
        tracing::warn!(
            count = keyless.len(),
            "removed stored envelopes whose key is missing from {ENVELOPE_KEY_FILE} or whose body is missing from {ENVELOPE_BODY_FILE}"
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
        let at = keys
            .0
            .offset(first)
            .map_err(StoreError::key_file("reading the key file"))?;
        let mut filled = 0;
        while filled < chunk.len() {
            match keys.0.file.read_at(&mut chunk[filled..], at + filled as u64) {
                Ok(0) => break,
                Ok(read) => filled += read,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(StoreError::key_file("reading the key file")(e)),
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
            .map_err(StoreError::key_file("zeroing unused key slots"))?;
    }
    Ok((book, found))
}

/// Removes envelope records by key and counts them off their mailboxes.
fn remove_records(db: &Database, record_keys: &[Vec<u8>]) -> Result<(), StoreError> {
    const DOING: &str = "removing envelope records without a key";
    let mut txn = db.begin_write().map_err(StoreError::database(DOING))?;
    txn.set_two_phase_commit(true);
    {
        let mut envs = txn.open_table(ENVELOPES).map_err(StoreError::database(DOING))?;
        let mut boxes = txn.open_table(MAILBOXES).map_err(StoreError::database(DOING))?;
        let mut index = txn.open_table(EXPIRY).map_err(StoreError::database(DOING))?;
        let mut expiry = Expiries::new(&mut index);
        for k in record_keys {
            let removed = envs
                .remove(&k[..])
                .map_err(StoreError::database(DOING))?
                .map(|v| v.value().to_vec());
            // A record with a short key (a damaged store) is removed, nothing else.
            let Some(id) = super::record::record_mailbox(k) else {
                continue;
            };
            if let Some(Ok(value)) = removed.as_deref().map(EnvelopeValue::parse) {
                expiry.remove(value.expires_at(), &id);
            }
            count_off(&mut boxes, &id)?;
        }
        expiry.flush()?;
    }
    txn.commit().map_err(StoreError::database(DOING))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// Sealed envelopes written to the body file at their keys' slots open from there;
    /// a slot between runs, or past the end, holds no envelope.
    #[test]
    fn envelopes_apart_open_from_their_slot_and_nowhere_else() {
        let dir = tempfile::tempdir().unwrap();
        let keys = KeyFile::open(dir.path()).unwrap();
        let bodies = BodyFile::open(dir.path()).unwrap();
        let mut new = Vec::new();
        let mut sealed = Vec::new();
        let mut plain = Vec::new();
        for (i, slot) in [3u64, 0, 1].into_iter().enumerate() {
            let key = fresh_key().unwrap();
            let aad = [slot as u8; 40];
            let mut envelope = vec![0u8; ENVELOPE_SIZE];
            OsRng.fill_bytes(&mut envelope);
            envelope[0] = i as u8;
            sealed.push((slot, seal(Cipher::Aes256Gcm, &key, &aad, &envelope).unwrap()));
            new.push((slot, key));
            plain.push((slot, Envelope::from_bytes(&envelope).unwrap()));
        }
        keys.write_keys(&new).unwrap();
        bodies.write(&sealed).unwrap();
        assert_eq!(
            std::fs::metadata(dir.path().join(ENVELOPE_BODY_FILE)).unwrap().len(),
            4 * SEALED_LEN as u64
        );
        let tag_of = |slot: u64| -> [u8; 16] {
            let (_, s) = sealed.iter().find(|(n, _)| *n == slot).unwrap();
            s[ENVELOPE_SIZE..].try_into().unwrap()
        };
        for (slot, envelope) in &plain {
            let tag = tag_of(*slot);
            let opened = open_apart(&keys, &bodies, &[*slot as u8; 40], *slot, &tag);
            assert!(matches!(opened, Ok(ref e) if e == envelope), "slot {slot}");
            // Under another record's key (associated data), it does not open.
            let moved = open_apart(&keys, &bodies, &[9; 40], *slot, &tag);
            assert!(matches!(moved, Err(Unopened::WrongKey)));
            // Nor for a record whose envelope had another tag (a slot used again).
            let other = open_apart(&keys, &bodies, &[*slot as u8; 40], *slot, &[0; 16]);
            assert!(matches!(other, Err(Unopened::WrongKey)));
        }
        for slot in [2, 4, u64::MAX] {
            assert!(matches!(
                open_apart(&keys, &bodies, &[slot as u8; 40], slot, &[0; 16]),
                Err(Unopened::WrongKey)
            ));
        }
        // A body of the wrong size is refused, and nothing is written.
        assert!(bodies.write(&[(5, vec![1; 10])]).is_err());
        assert_eq!(bodies.0.whole_slots().unwrap(), 4);
        // Sealed under the other cipher, it does not open as a body.
        let key = fresh_key().unwrap();
        let chacha = seal(Cipher::ChaCha20Poly1305, &key, &[7; 40], &[1u8; ENVELOPE_SIZE]).unwrap();
        keys.write_keys(&[(7, key)]).unwrap();
        bodies.write(&[(7, chacha.clone())]).unwrap();
        let tag: [u8; 16] = chacha[ENVELOPE_SIZE..].try_into().unwrap();
        assert!(matches!(
            open_apart(&keys, &bodies, &[7; 40], 7, &tag),
            Err(Unopened::WrongKey)
        ));
        assert!(open_sealed(Cipher::ChaCha20Poly1305, &keys, &[7; 40], 7, &chacha).is_ok());
    }
}

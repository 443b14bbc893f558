//! Lists that grow with what others send, kept mostly beside the vault: a channel's
//! history and a drop box's letters ([`Log`]).
//!
//! The vault is encrypted and rewritten whole at every save, so nothing that another
//! member, a drop box's sender or a relay can make grow may live in it unbounded. A log
//! keeps its newest entries in the vault (its `tail`, at most [`TAIL_BYTES`] once
//! [`Log::push`] returns) and the older ones in sealed segments in the [`Blobs`], each up
//! to [`SEGMENT_BYTES`]. Past the log's cap, its oldest segment is dropped, and the
//! caller says so in the log.
//!
//! Crash safety: a segment is written before the vault that counts its entries. A segment
//! file holding more entries than its [`Segment::count`] (the vault was not saved after
//! the write) is read only up to that count, and the next write replaces it.

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::Blobs;
use crate::state::{LetterRecord, Log, Segment, StoredMessage};
use crate::{ClientError, Damage};

/// The most encoded bytes a log keeps in the vault once a push returns.
pub const TAIL_BYTES: usize = 8 * 1024;

/// A segment takes entries until it holds this many encoded bytes (one larger entry
/// makes a segment of its own).
pub const SEGMENT_BYTES: usize = 256 * 1024;

/// The most bytes of sealed segments a channel's history keeps; past it the oldest
/// segment is dropped (4 MiB in this crate's tests, so that they reach it quickly).
pub const HISTORY_BYTES: u64 = if cfg!(test) { 4 } else { 64 } * 1024 * 1024;

/// The most bytes of sealed segments a drop box's letters keep.
pub const LETTER_BYTES: u64 = 64 * 1024 * 1024;

/// Format of a segment file: this byte, then the postcard encoding of its entries.
const SEGMENT_FORMAT: u8 = 1;

/// What a log holds: something dated, to find what disappears.
pub trait Entry: Serialize + DeserializeOwned + Clone {
    /// When it was sent or received (Unix ms).
    fn at_ms(&self) -> u64;
}

impl Entry for StoredMessage {
    fn at_ms(&self) -> u64 {
        self.sent_at
    }
}

impl Entry for LetterRecord {
    fn at_ms(&self) -> u64 {
        self.received_at.saturating_mul(1000)
    }
}

fn encoded_len<T: Serialize>(entries: &[T]) -> usize {
    postcard::experimental::serialized_size(entries).unwrap_or(usize::MAX)
}

impl<T: Entry> Log<T> {
    /// When its newest entry is dated (ms; 0 when empty): the tail's last, or else a
    /// lower bound, the newest segment's oldest date (read without opening it).
    pub fn last_at(&self) -> u64 {
        self.tail
            .last()
            .map(Entry::at_ms)
            .or_else(|| self.segments.back().map(|s| s.oldest_at))
            .unwrap_or(0)
    }

    /// Number the next entry will get.
    pub fn end(&self) -> u64 {
        self.first + self.segments.iter().map(|s| u64::from(s.count)).sum::<u64>() + self.tail.len() as u64
    }

    /// Entries kept.
    pub fn len(&self) -> u64 {
        self.end() - self.first
    }

    /// Whether nothing is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Entries not yet shown.
    pub fn unread(&self) -> u64 {
        self.end().saturating_sub(self.read_upto.max(self.first))
    }

    /// Bytes of the sealed segments.
    pub fn sealed_bytes(&self) -> u64 {
        self.segments.iter().map(|s| u64::from(s.bytes)).sum()
    }

    /// Marks everything as shown.
    pub fn mark_read(&mut self) {
        self.read_upto = self.end();
    }

    /// Adds an entry; moves the tail into a segment once it is larger than
    /// [`TAIL_BYTES`], and drops the oldest segments past `cap` bytes. Returns how many
    /// entries were dropped, and those of them that could be read (for the caller to
    /// delete what they point at). Should the segment not be written (a full disk), the
    /// entries stay in the tail, and the next push tries again.
    pub fn push(&mut self, entry: T, blobs: &mut dyn Blobs, cap: u64) -> (u64, Vec<T>) {
        self.tail.push(entry);
        if encoded_len(&self.tail) <= TAIL_BYTES || self.seal_tail(blobs).is_err() {
            return (0, Vec::new());
        }
        let mut dropped = (0, Vec::new());
        while self.segments.len() > 1 && self.sealed_bytes() > cap {
            let Some(s) = self.segments.pop_front() else {
                break;
            };
            if let Ok(entries) = self.load(&s, blobs) {
                dropped.1.extend(entries);
            }
            blobs.delete(&self.folder, &s.name.to_string());
            self.first += u64::from(s.count);
            dropped.0 += u64::from(s.count);
        }
        dropped
    }

    /// Writes the tail into the last segment, if it has room, and new ones of at most
    /// [`SEGMENT_BYTES`] each (an entry larger than that gets one of its own), and empties
    /// it. What could not be written stays in the tail.
    fn seal_tail(&mut self, blobs: &mut dyn Blobs) -> Result<(), ClientError> {
        let tail = std::mem::take(&mut self.tail);
        let mut groups: Vec<&[T]> = Vec::new();
        let (mut start, mut size) = (0, 0);
        for (i, e) in tail.iter().enumerate() {
            let n = encoded_len(std::slice::from_ref(e));
            if i > start && size + n > SEGMENT_BYTES {
                groups.push(&tail[start..i]);
                (start, size) = (i, 0);
            }
            size += n;
        }
        groups.push(&tail[start..]);
        let mut sealed = 0;
        for group in groups {
            if let Err(e) = self.seal(blobs, group) {
                self.tail = tail[sealed..].to_vec();
                return Err(e);
            }
            sealed += group.len();
        }
        Ok(())
    }

    /// Writes `group` into the last segment if it fits there (the file grows; what the
    /// saved vault counts of it stays as it was), or into a new segment.
    fn seal(&mut self, blobs: &mut dyn Blobs, group: &[T]) -> Result<(), ClientError> {
        let bytes = encoded_len(group);
        let (mut entries, name, extend) = match self.segments.back() {
            Some(s) if s.bytes as usize + bytes <= SEGMENT_BYTES => (self.load(s, blobs)?, s.name, true),
            _ => (Vec::new(), self.next_name, false),
        };
        entries.extend(group.iter().cloned());
        let segment = self.write(blobs, name, &entries)?;
        if extend {
            self.segments.pop_back();
        } else {
            self.next_name += 1;
        }
        self.segments.push_back(segment);
        Ok(())
    }

    /// Writes `entries` in place of segment `i` under a new name, and deletes the old file
    /// (the store deletes it once the vault that counts the new one is saved).
    fn rewrite(&mut self, blobs: &mut dyn Blobs, i: usize, entries: &[T]) -> Result<(), ClientError> {
        let Some(old) = self.segments.get(i).copied() else {
            return Ok(());
        };
        let segment = self.write(blobs, self.next_name, entries)?;
        self.next_name += 1;
        self.segments[i] = segment;
        blobs.delete(&self.folder, &old.name.to_string());
        Ok(())
    }

    /// Writes `entries` as segment `name`.
    fn write(&self, blobs: &mut dyn Blobs, name: u64, entries: &[T]) -> Result<Segment, ClientError> {
        let mut bytes = vec![SEGMENT_FORMAT];
        bytes.extend(postcard::to_stdvec(entries).map_err(|e| ClientError::Corrupt(Damage::Unencodable(e)))?);
        blobs.write(&self.folder, &name.to_string(), &bytes)?;
        Ok(Segment {
            name,
            count: u32::try_from(entries.len()).unwrap_or(u32::MAX),
            bytes: u32::try_from(bytes.len() - 1).unwrap_or(u32::MAX),
            oldest_at: entries.iter().map(Entry::at_ms).min().unwrap_or(0),
        })
    }

    /// Reads the entries of a segment.
    fn load(&self, s: &Segment, blobs: &dyn Blobs) -> Result<Vec<T>, ClientError> {
        let bytes = blobs.read(&self.folder, &s.name.to_string())?;
        let Some((&SEGMENT_FORMAT, body)) = bytes.split_first() else {
            return Err(ClientError::Corrupt(Damage::SealedPart));
        };
        let mut entries: Vec<T> = postcard::from_bytes(body).map_err(|_| ClientError::Corrupt(Damage::SealedPart))?;
        if entries.len() < s.count as usize {
            return Err(ClientError::Corrupt(Damage::SealedPart));
        }
        entries.truncate(s.count as usize);
        Ok(entries)
    }

    /// The entries numbered `from` and after (from the oldest kept if `from` is older).
    pub fn entries_from(&self, from: u64, blobs: &dyn Blobs) -> Result<Vec<T>, ClientError> {
        let mut out = Vec::new();
        let mut at = self.first;
        for s in &self.segments {
            let next = at + u64::from(s.count);
            if next > from {
                let skip = from.saturating_sub(at) as usize;
                out.extend(self.load(s, blobs)?.into_iter().skip(skip));
            }
            at = next;
        }
        let skip = from.saturating_sub(at) as usize;
        out.extend(self.tail.iter().skip(skip).cloned());
        Ok(out)
    }

    /// The entries not yet shown.
    pub fn unread_entries(&self, blobs: &dyn Blobs) -> Result<Vec<T>, ClientError> {
        self.entries_from(self.read_upto, blobs)
    }

    /// The newest entry matching `pred`.
    pub fn find(&self, blobs: &dyn Blobs, pred: impl Fn(&T) -> bool) -> Result<Option<T>, ClientError> {
        if let Some(e) = self.tail.iter().rev().find(|e| pred(e)) {
            return Ok(Some(e.clone()));
        }
        for s in self.segments.iter().rev() {
            if let Some(e) = self.load(s, blobs)?.into_iter().rev().find(|e| pred(e)) {
                return Ok(Some(e));
            }
        }
        Ok(None)
    }

    /// Changes the newest entry matching `pred` with `change`; returns whether one matched.
    pub fn update(
        &mut self,
        blobs: &mut dyn Blobs,
        pred: impl Fn(&T) -> bool,
        change: impl FnOnce(&mut T),
    ) -> Result<bool, ClientError> {
        if let Some(e) = self.tail.iter_mut().rev().find(|e| pred(e)) {
            change(e);
            return Ok(true);
        }
        for i in (0..self.segments.len()).rev() {
            let s = self.segments[i];
            let mut entries = self.load(&s, blobs)?;
            if let Some(e) = entries.iter_mut().rev().find(|e| pred(e)) {
                change(e);
                self.rewrite(blobs, i, &entries)?;
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Removes the entries dated at or before `cutoff_ms` (disappearing messages) and
    /// returns them. Only segments holding such an entry are read; one that cannot be
    /// read or rewritten now is left as it is (tried again at the next call), and the
    /// others, and the tail, are done all the same.
    pub fn expire(&mut self, cutoff_ms: u64, blobs: &mut dyn Blobs) -> Vec<T> {
        let mut gone = Vec::new();
        // Numbers count from `first` as before the removal; those shown move down by the
        // shown ones removed.
        let mut at = self.first;
        let mut read_gone = 0;
        let mut i = 0;
        while i < self.segments.len() {
            let s = self.segments[i];
            let start = at;
            at += u64::from(s.count);
            if s.oldest_at > cutoff_ms {
                i += 1;
                continue;
            }
            let Ok(entries) = self.load(&s, blobs) else {
                i += 1;
                continue;
            };
            let (keep, out): (Vec<T>, Vec<(usize, T)>) = {
                let mut keep = Vec::new();
                let mut out = Vec::new();
                for (n, e) in entries.into_iter().enumerate() {
                    if e.at_ms() > cutoff_ms {
                        keep.push(e);
                    } else {
                        out.push((n, e));
                    }
                }
                (keep, out)
            };
            if keep.is_empty() {
                blobs.delete(&self.folder, &s.name.to_string());
                self.segments.remove(i);
            } else if self.rewrite(blobs, i, &keep).is_ok() {
                i += 1;
            } else {
                i += 1;
                continue;
            }
            for (n, e) in out {
                if start + (n as u64) < self.read_upto {
                    read_gone += 1;
                }
                gone.push(e);
            }
        }
        let mut n = at;
        let read_upto = self.read_upto;
        self.tail.retain(|e| {
            let keep = e.at_ms() > cutoff_ms;
            if !keep {
                if n < read_upto {
                    read_gone += 1;
                }
                gone.push(e.clone());
            }
            n += 1;
            keep
        });
        self.read_upto = self.read_upto.saturating_sub(read_gone);
        gone
    }

    /// Forgets everything, deleting the segments (later ones go to a new folder).
    pub fn clear(&mut self, blobs: &mut dyn Blobs) {
        blobs.remove(&self.folder);
        self.folder = crate::state::random_folder();
        self.segments.clear();
        self.tail.clear();
        self.first = 0;
        self.read_upto = 0;
    }

    /// Moves an oversized tail (a log converted from an earlier layout) into segments.
    /// Nothing is dropped: an earlier layout had no cap.
    pub fn seal_oversized_tail(&mut self, blobs: &mut dyn Blobs) {
        if encoded_len(&self.tail) > TAIL_BYTES {
            let _ = self.seal_tail(blobs);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::sim::SimBlobs as Mem;
    use crate::state::EventKind;

    fn message(i: u64, size: usize) -> StoredMessage {
        StoredMessage {
            id: format!("m{i}"),
            from: "mallory".into(),
            from_key: [7; 32],
            sent_at: i * 1000,
            text: "x".repeat(size),
            event: None,
        }
    }

    fn texts(v: &[StoredMessage]) -> Vec<String> {
        v.iter().map(|m| m.id.clone()).collect()
    }

    #[test]
    fn the_vault_keeps_only_the_tail_and_every_entry_reads_back_in_order() {
        let mut blobs = Mem::default();
        let mut log: Log<StoredMessage> = Log::new();
        for i in 0..2000 {
            assert_eq!(log.push(message(i, 300), &mut blobs, HISTORY_BYTES).0, 0);
            assert!(encoded_len(&log.tail) <= TAIL_BYTES);
        }
        assert_eq!(log.len(), 2000);
        assert!(log.segments.len() > 1, "{:?}", log.segments);
        let all = log.entries_from(0, &blobs).unwrap();
        assert_eq!(texts(&all), (0..2000).map(|i| format!("m{i}")).collect::<Vec<_>>());
        assert_eq!(log.unread(), 2000);
        let unread = log.entries_from(1500, &blobs).unwrap();
        assert_eq!(unread.first().unwrap().id, "m1500");
        assert_eq!(unread.len(), 500);
        log.mark_read();
        assert_eq!(log.unread(), 0);
        assert!(log.unread_entries(&blobs).unwrap().is_empty());
        // The vault's share stays small.
        assert!(postcard::to_stdvec(&log).unwrap().len() < TAIL_BYTES + 4096);
    }

    #[test]
    fn past_its_cap_the_oldest_segments_go_and_the_caller_is_told() {
        let mut blobs = Mem::default();
        let mut log: Log<StoredMessage> = Log::new();
        let cap = 1024 * 1024;
        let mut dropped = 0;
        let mut first_dropped = None;
        for i in 0..400 {
            let (n, entries) = log.push(message(i, 10_000), &mut blobs, cap);
            assert_eq!(n, entries.len() as u64);
            first_dropped = first_dropped.or(entries.first().map(|m| m.id.clone()));
            dropped += n;
        }
        assert_eq!(first_dropped.as_deref(), Some("m0"));
        assert!(dropped > 0);
        assert!(log.sealed_bytes() <= cap, "{}", log.sealed_bytes());
        let stored = blobs.bytes();
        assert!(stored <= cap + SEGMENT_BYTES as u64, "{stored}");
        assert_eq!(log.first, dropped);
        let all = log.entries_from(0, &blobs).unwrap();
        assert_eq!(all.len() as u64, 400 - dropped);
        assert_eq!(all.last().unwrap().id, "m399");
        assert_eq!(all.first().unwrap().id, format!("m{dropped}"));
    }

    #[test]
    fn a_segment_written_before_a_crash_is_read_only_as_far_as_the_vault_counted() {
        let mut blobs = Mem::default();
        let mut log: Log<StoredMessage> = Log::new();
        for i in 0..40 {
            log.push(message(i, 300), &mut blobs, HISTORY_BYTES);
        }
        let saved = log.clone();
        // More pushes write the segment again; the vault is not saved (a crash).
        for i in 40..80 {
            log.push(message(i, 300), &mut blobs, HISTORY_BYTES);
        }
        let mut log = saved;
        let all = log.entries_from(0, &blobs).unwrap();
        assert_eq!(texts(&all), (0..40).map(|i| format!("m{i}")).collect::<Vec<_>>());
        for i in 100..140 {
            log.push(message(i, 300), &mut blobs, HISTORY_BYTES);
        }
        let all = log.entries_from(0, &blobs).unwrap();
        let want: Vec<String> = (0..40).chain(100..140).map(|i| format!("m{i}")).collect();
        assert_eq!(texts(&all), want);
    }

    #[test]
    fn expiry_reads_only_what_may_disappear_and_keeps_the_read_mark() {
        let mut blobs = Mem::default();
        let mut log: Log<StoredMessage> = Log::new();
        for i in 0..300 {
            log.push(message(i, 300), &mut blobs, HISTORY_BYTES);
        }
        log.read_upto = 250;
        let gone = log.expire(99_000, &mut blobs);
        assert_eq!(gone.len(), 100);
        assert_eq!(log.len(), 200);
        assert_eq!(log.unread(), 50);
        assert_eq!(log.unread_entries(&blobs).unwrap().first().unwrap().id, "m250");
        let all = log.entries_from(0, &blobs).unwrap();
        assert_eq!(all.first().unwrap().id, "m100");
        // Everything goes.
        log.expire(u64::MAX, &mut blobs);
        assert!(log.is_empty());
        assert_eq!(log.unread(), 0);
        assert!(blobs.0.lock().unwrap().is_empty(), "segments left behind");
    }

    #[test]
    fn an_entry_in_a_segment_is_found_and_changed() {
        let mut blobs = Mem::default();
        let mut log: Log<StoredMessage> = Log::new();
        for i in 0..300 {
            log.push(message(i, 300), &mut blobs, HISTORY_BYTES);
        }
        assert!(log
            .update(&mut blobs, |m| m.id == "m3", |m| m.event = Some(EventKind::Missing))
            .unwrap());
        let found = log.find(&blobs, |m| m.id == "m3").unwrap().unwrap();
        assert_eq!(found.event, Some(EventKind::Missing));
        assert!(!log.update(&mut blobs, |m| m.id == "none", |_| {}).unwrap());
        assert_eq!(log.len(), 300);
        log.clear(&mut blobs);
        assert!(blobs.0.lock().unwrap().is_empty());
    }

    /// What a rewrite or a cap replaces is deleted only after the vault that no longer
    /// counts it is saved: a crash before that save leaves the saved log whole.
    #[test]
    fn a_crash_before_the_save_leaves_the_saved_log_readable() {
        use crate::session::SealedStore;
        let blobs = Mem::default();
        let mut store = SealedStore::new(Box::new(blobs.clone()));
        let mut log: Log<StoredMessage> = Log::new();
        for i in 0..300 {
            log.push(message(i, 300), &mut store, HISTORY_BYTES);
        }
        store.settle();
        let saved = log.clone();
        // Messages disappear, one is changed, the cap drops the oldest: then a crash.
        assert_eq!(log.expire(99_000, &mut store).len(), 100);
        log.update(&mut store, |m| m.id == "m150", |m| m.text = "changed".into())
            .unwrap();
        let dropped: u64 = (300..1100)
            .map(|i| log.push(message(i, 300), &mut store, 64 * 1024).0)
            .sum();
        assert!(dropped > 0);
        let all = saved.entries_from(0, &blobs).unwrap();
        assert_eq!(all.len(), 300);
        assert_eq!(all[150].text, "x".repeat(300));
        // Saved, then settled: the new log reads, and nothing it no longer counts is left.
        store.settle();
        let now = log.entries_from(0, &blobs).unwrap();
        assert_eq!(now.len() as u64, log.len());
        assert!(now.iter().any(|m| m.text == "changed") || log.first > 150);
        let files = blobs.0.lock().unwrap().len();
        assert_eq!(files, log.segments.len(), "files left behind");
    }

    #[test]
    fn a_damaged_segment_is_an_error_not_a_panic() {
        let mut blobs = Mem::default();
        let mut log: Log<StoredMessage> = Log::new();
        for i in 0..100 {
            log.push(message(i, 300), &mut blobs, HISTORY_BYTES);
        }
        for v in blobs.0.lock().unwrap().values_mut() {
            v.truncate(v.len() / 2);
        }
        assert!(matches!(
            log.entries_from(0, &blobs),
            Err(ClientError::Corrupt(Damage::SealedPart))
        ));
    }
}

//! Files in a channel: an offer (name, size, SHA-256), then the contents in parts,
//! each an MLS application message of its own.
//!
//! The sender keeps a record of the transfer ([`OutgoingFile`]) that the driver saves
//! after each few parts are in the outbox, so an interrupted transfer resumes at the
//! next part. The receiver keeps each part sealed in the [`Blobs`](super::Blobs) (never
//! inside the vault, which is rewritten at every save), checks the whole file's
//! SHA-256 once every part is in, and the driver writes the file where the user asks.

use std::path::{Path, PathBuf};
use std::time::Duration;

use backchannel_core::envelope::PayloadKind;
use backchannel_core::message::{AppMessage, Body, FileOffer};
use sha2::{Digest, Sha256};

use super::Blobs;
use super::{hex, random_id, Effect, Session};
use crate::state::{ChannelStatus, FileStatus, IncomingFile, OutgoingFile, StoredMessage};
use crate::ClientError;

/// Bytes per part: 64 envelopes, and a part's MLS message is small enough to be
/// reassembled and saved without strain.
pub const PART_SIZE: u32 = 64 * 1024;

/// Parts encrypted between two saves (and two flushes) for one recipient: 1 MiB, a
/// resume redoes at most that. Divided by the number of recipients.
pub const PARTS_PER_SAVE: usize = 16;

/// Files one channel may be receiving at once (each holds sealed parts on disk).
pub const MAX_INCOMING_PER_CHANNEL: usize = 16;

/// Records of received files one channel keeps, whatever their state (each costs the
/// vault a few hundred bytes, and a member can offer empty files as fast as it sends):
/// past it, the oldest saved or damaged one is forgotten, else the oldest unsaved one,
/// with a warning.
pub const MAX_FILES_PER_CHANNEL: usize = 64;

/// A file with no new part for this long is given up when another needs its place.
pub const STALLED_AFTER: Duration = Duration::from_secs(7 * 24 * 3600);

/// A file as `read` shows it.
#[derive(Debug, Clone)]
pub struct FileView {
    /// Its name.
    pub name: String,
    /// Its size.
    pub size: u64,
    /// SHA-256, hex.
    pub sha256: String,
    /// Where it stands.
    pub status: FileStatus,
    /// Parts received and in all.
    pub parts: (u64, u64),
    /// Where it was saved.
    pub saved_to: Option<String>,
}

/// The size as a person reads it.
pub fn show_size(n: u64) -> String {
    const MIB: f64 = 1024.0 * 1024.0;
    if n >= 1024 * 1024 {
        format!("{:.1} MiB", n as f64 / MIB)
    } else if n >= 1024 {
        format!("{:.1} KiB", n as f64 / 1024.0)
    } else {
        format!("{n} bytes")
    }
}

/// The history line of a file message.
pub fn offer_text(offer: &FileOffer) -> String {
    format!("sent a file: {} ({})", offer.name, show_size(offer.size))
}

pub(crate) use crate::state::random_folder;

/// Why the next message of a file transfer cannot be sealed now.
#[derive(Debug)]
pub enum FileBlocked {
    /// A change to the channel is waiting to be committed (MLS takes no message then).
    ProposalsWaiting,
}

impl Session {
    /// Where the record of a transfer of `path` to `name` is, if one is under way.
    fn outgoing_index(&self, name: &str, path: &Path) -> Option<usize> {
        self.state
            .files
            .outgoing
            .iter()
            .position(|o| o.channel == name && o.path == path)
    }

    /// The record of a transfer of `path` to `name`, if one is under way.
    pub fn outgoing_file(&self, name: &str, path: &Path) -> Option<&OutgoingFile> {
        self.outgoing_index(name, path).map(|i| &self.state.files.outgoing[i])
    }

    /// Starts sending a file (or finds the interrupted transfer of the same file, unless
    /// its contents changed since). Returns the transfer's record.
    pub fn start_file(
        &mut self,
        name: &str,
        path: PathBuf,
        file_name: String,
        size: u64,
        sha256: [u8; 32],
    ) -> Result<OutgoingFile, ClientError> {
        self.active(name)?;
        if let Some(i) = self.outgoing_index(name, &path) {
            if self.state.files.outgoing[i].offer.sha256 == sha256 {
                return Ok(self.state.files.outgoing[i].clone());
            }
            // The file changed since: its parts so far belong to other contents.
            self.state.files.outgoing.remove(i);
            self.warn(
                Some(name),
                format!("{file_name} changed since its interrupted transfer; it is sent again from the start"),
            );
        }
        let job = OutgoingFile {
            channel: name.to_string(),
            path,
            offer: FileOffer {
                file_id: random_id(),
                name: file_name,
                size,
                sha256,
                part_size: PART_SIZE,
            },
            offer_id: random_id(),
            sent_at: self.now_ms(),
            offered: false,
            next_part: 0,
        };
        self.state.files.outgoing.push(job.clone());
        self.save();
        Ok(job)
    }

    /// Seals the next message of the transfer of `path` into the outbox: the offer,
    /// or (with its bytes in `part`) the part `next_part`. Returns how many parts go
    /// between two saves with this many recipients.
    pub fn seal_file_message(
        &mut self,
        name: &str,
        path: &Path,
        part: Option<Vec<u8>>,
    ) -> Result<Result<usize, FileBlocked>, ClientError> {
        let Some(job) = self.outgoing_file(name, path).cloned() else {
            return Ok(Ok(1));
        };
        let body = match part {
            None => Body::File(job.offer.clone()),
            Some(data) => Body::Part {
                file_id: job.offer.file_id,
                index: job.next_part as u32,
                data,
            },
        };
        let mut group = self.load_group(name)?;
        if group.has_pending_proposals() {
            return Ok(Err(FileBlocked::ProposalsWaiting));
        }
        let id = if job.offered { random_id() } else { job.offer_id };
        let msg = AppMessage {
            id,
            sent_at: if job.offered { self.now_ms() } else { job.sent_at },
            body,
        };
        let ct = self.seal_app(name, &mut group, &msg)?;
        let recipients = self.others(&group);
        group.keep(&self.provider);
        // The outbox is saved with the vault: with more recipients, fewer parts per save
        // keep what one save writes near 1 MiB.
        let per_save = (PARTS_PER_SAVE / recipients.len().max(1)).max(1);
        for to in recipients {
            self.enqueue(&to, PayloadKind::Mls, &ct)?;
        }
        let me = self.identity.public_key();
        let my_name = self.identity.name().to_string();
        if let Some(o) = self
            .outgoing_index(name, path)
            .and_then(|i| self.state.files.outgoing.get_mut(i))
        {
            if o.offered {
                o.next_part += 1;
            } else {
                o.offered = true;
                if let Some(ch) = self.state.channels.get_mut(name) {
                    ch.see(job.offer_id);
                    let own = StoredMessage {
                        id: hex(&job.offer_id),
                        from: my_name,
                        from_key: me,
                        sent_at: job.sent_at,
                        text: offer_text(&job.offer),
                        event: None,
                    };
                    self.record(name, own);
                    if let Some(ch) = self.state.channels.get_mut(name) {
                        ch.history.mark_read();
                    }
                }
            }
        }
        Ok(Ok(per_save))
    }

    /// The transfer of `path` is over: every part reached the relay.
    pub fn finish_file(&mut self, name: &str, path: &Path) {
        if let Some(i) = self.outgoing_index(name, path) {
            self.state.files.outgoing.remove(i);
        }
        self.save();
    }

    /// A member offers a file: its parts will follow.
    pub(crate) fn receive_offer(&mut self, channel: &str, from: [u8; 32], message_id: String, offer: FileOffer) {
        let receiving = self
            .state
            .files
            .incoming
            .iter()
            .filter(|f| f.channel == channel && f.status == FileStatus::Receiving)
            .count();
        if receiving >= MAX_INCOMING_PER_CHANNEL && !self.give_up_stalled(channel) {
            self.warn(
                Some(channel),
                format!("refused the file {}: too many files are arriving at once", offer.name),
            );
            return;
        }
        self.make_room_for_a_file(channel, &from);
        let parts = offer.parts();
        let status = if parts == 0 {
            FileStatus::Complete
        } else {
            FileStatus::Receiving
        };
        let now = self.now_ms();
        self.state.files.incoming.push(IncomingFile {
            channel: channel.to_string(),
            from_key: from,
            message_id,
            received: vec![0; parts.div_ceil(8) as usize],
            count: 0,
            folder: random_folder(),
            offer,
            status,
            updated_at: now,
        });
    }

    /// Keeps `channel`'s file records below [`MAX_FILES_PER_CHANNEL`] before `from` offers
    /// another: a saved or damaged record goes first, then the oldest unsaved file of `from`
    /// itself (so a member who floods offers deletes its own), then anyone's.
    fn make_room_for_a_file(&mut self, channel: &str, from: &[u8; 32]) {
        loop {
            let files = &self.state.files.incoming;
            if files.iter().filter(|f| f.channel == channel).count() < MAX_FILES_PER_CHANNEL {
                return;
            }
            let oldest =
                |pick: &dyn Fn(&IncomingFile) -> bool| files.iter().position(|f| f.channel == channel && pick(f));
            let pos = oldest(&|f| matches!(f.status, FileStatus::Saved(_) | FileStatus::Damaged))
                .or_else(|| oldest(&|f| f.status == FileStatus::Complete && f.from_key == *from))
                .or_else(|| oldest(&|f| f.status == FileStatus::Complete));
            let Some(pos) = pos else {
                return;
            };
            let f = self.state.files.incoming.remove(pos);
            self.blobs.remove(&f.folder);
            if f.status == FileStatus::Complete {
                self.warn(
                    Some(channel),
                    format!(
                        "deleted the unsaved file {} to make room: this device keeps at most \
                         {MAX_FILES_PER_CHANNEL} files per channel (`read --save-to` saves them)",
                        f.offer.name
                    ),
                );
            }
        }
    }

    /// Makes room for another file in `channel` by giving up on the transfer that has
    /// waited longest for its next part, if that is more than [`STALLED_AFTER`].
    fn give_up_stalled(&mut self, channel: &str) -> bool {
        let now = self.now_ms();
        let Some(pos) = self
            .state
            .files
            .incoming
            .iter()
            .enumerate()
            .filter(|(_, f)| f.channel == channel && f.status == FileStatus::Receiving)
            .min_by_key(|(_, f)| f.updated_at)
            .filter(|(_, f)| now.saturating_sub(f.updated_at) > STALLED_AFTER.as_millis() as u64)
            .map(|(i, _)| i)
        else {
            return false;
        };
        let name = self.state.files.incoming[pos].offer.name.clone();
        self.discard_incoming(pos);
        self.warn(
            Some(channel),
            format!("gave up on {name}: no part of it arrived for a week; ask for it again"),
        );
        true
    }

    /// Marks a received file damaged and deletes its sealed parts.
    fn discard_incoming(&mut self, pos: usize) {
        let f = &mut self.state.files.incoming[pos];
        f.status = FileStatus::Damaged;
        f.received = Vec::new();
        let folder = f.folder.clone();
        self.blobs.remove(&folder);
    }

    /// One part of a file arrives.
    pub(crate) fn receive_part(&mut self, channel: &str, from: [u8; 32], file_id: [u8; 16], index: u32, data: &[u8]) {
        let Some(pos) = self.state.files.incoming.iter().position(|f| {
            f.channel == channel
                && f.from_key == from
                && f.offer.file_id == file_id
                && f.status == FileStatus::Receiving
        }) else {
            // Parts of a file given up (damaged, or refused) keep coming: one word per file.
            let known = self
                .state
                .files
                .incoming
                .iter()
                .any(|f| f.channel == channel && f.from_key == from && f.offer.file_id == file_id);
            if !known && self.stray_files.insert(file_id) {
                self.warn(Some(channel), "discarded parts of a file that was never offered");
            }
            return;
        };
        let f = &self.state.files.incoming[pos];
        let index = u64::from(index);
        if f.offer.part_len(index) != Some(data.len()) {
            self.warn(Some(channel), format!("discarded a malformed part of {}", f.offer.name));
            return;
        }
        let (byte, bit) = ((index / 8) as usize, 1u8 << (index % 8));
        if f.received[byte] & bit != 0 {
            return;
        }
        let folder = f.folder.clone();
        if let Err(e) = self.blobs.write(&folder, &index.to_string(), data) {
            // The part is gone for good (MLS reads each message once): the file cannot
            // complete, so it is given up now rather than left waiting.
            let name = f.offer.name.clone();
            self.discard_incoming(pos);
            self.warn(
                Some(channel),
                format!("could not store part of {name} ({e}); it was discarded, ask for it again"),
            );
            return;
        }
        let now = self.now_ms();
        let f = &mut self.state.files.incoming[pos];
        f.received[byte] |= bit;
        f.count += 1;
        f.updated_at = now;
        if f.count == f.offer.parts() {
            let ok = self
                .file_digest(pos)
                .is_ok_and(|d| d == self.state.files.incoming[pos].offer.sha256);
            let f = &mut self.state.files.incoming[pos];
            if ok {
                f.status = FileStatus::Complete;
                f.received = Vec::new();
            } else {
                let name = f.offer.name.clone();
                self.discard_incoming(pos);
                self.warn(
                    Some(channel),
                    format!("{name} arrived damaged (its SHA-256 does not match) and was discarded; ask for it again"),
                );
            }
        }
    }

    /// SHA-256 of a received file, from its sealed parts.
    fn file_digest(&self, pos: usize) -> Result<[u8; 32], ClientError> {
        let f = &self.state.files.incoming[pos];
        let mut h = Sha256::new();
        for i in 0..f.offer.parts() {
            h.update(&self.blobs.read(&f.folder, &i.to_string())?[..]);
        }
        Ok(h.finalize().into())
    }

    /// The file a message of `channel` offered, if it is one.
    pub fn file_view(&self, channel: &str, message_id: &str) -> Option<FileView> {
        let f = self
            .state
            .files
            .incoming
            .iter()
            .find(|f| f.channel == channel && f.message_id == message_id)?;
        let saved_to = match &f.status {
            FileStatus::Saved(p) => Some(p.clone()),
            _ => None,
        };
        Some(FileView {
            name: f.offer.name.clone(),
            size: f.offer.size,
            sha256: hex(&f.offer.sha256),
            status: f.status.clone(),
            parts: (f.count, f.offer.parts()),
            saved_to,
        })
    }

    /// The received file record a message of `channel` offered.
    pub(crate) fn incoming_file(&self, channel: &str, message_id: &str) -> Option<(usize, IncomingFile)> {
        self.state
            .files
            .incoming
            .iter()
            .position(|f| f.channel == channel && f.message_id == message_id)
            .map(|i| (i, self.state.files.incoming[i].clone()))
    }

    /// A received file was written out at `path`: recorded (and saved) before its
    /// sealed copy goes, so a crash in between leaves parts to prune, never a file
    /// marked complete whose parts are gone.
    pub(crate) fn file_saved(&mut self, pos: usize, path: &Path) {
        if let Some(f) = self.state.files.incoming.get_mut(pos) {
            f.status = FileStatus::Saved(path.display().to_string());
            f.received = Vec::new();
        }
        self.save();
    }

    /// Message ids of the files of `channel` that arrived completely and are not saved yet.
    pub fn unsaved_files(&self, channel: &str) -> Vec<String> {
        self.state
            .files
            .incoming
            .iter()
            .filter(|f| f.channel == channel && f.status == FileStatus::Complete)
            .map(|f| f.message_id.clone())
            .collect()
    }

    /// Forgets received files whose message is gone (its id is in `disappeared`, or the
    /// channel was closed), deleting their sealed parts.
    pub(crate) fn prune_files(&mut self, disappeared: &[String]) {
        let channels = &self.state.channels;
        let (keep, gone): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.state.files.incoming)
                .into_iter()
                .partition(|f| {
                    channels
                        .get(&f.channel)
                        .is_some_and(|c| c.status != ChannelStatus::Closed && !disappeared.contains(&f.message_id))
                });
        self.state.files.incoming = keep;
        for f in gone {
            self.blobs.remove(&f.folder);
            // A copy saved from a channel with a lifetime goes with its message: what the
            // channel promises to forget is not kept beside it (best effort: the user may
            // have moved or deleted it already).
            let lifetime = self
                .state
                .channels
                .get(&f.channel)
                .is_some_and(|c| c.disappear_after != 0 || c.expires_at != 0);
            if let (true, FileStatus::Saved(path)) = (lifetime, f.status) {
                self.push(Effect::DeleteSaved(path));
            }
        }
        let channels = &self.state.channels;
        self.state.files.outgoing.retain(|o| {
            channels
                .get(&o.channel)
                .is_some_and(|c| c.status == ChannelStatus::Active)
        });
    }
}

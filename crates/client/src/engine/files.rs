//! Files in a channel: an offer (name, size, SHA-256), then the contents in parts,
//! each an MLS application message of its own.
//!
//! Sending keeps a record of the transfer in the state and saves it after each part
//! is in the outbox, so a transfer that is interrupted (the process killed, the relay
//! gone) resumes at the next part when the same `send --file` runs again. Receiving
//! writes each part, sealed under the vault key, beside the vault (never inside it:
//! the vault is rewritten at every save), checks the whole file's SHA-256 once every
//! part is in, and `read` writes the file into a folder the user chose.

use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

use backchannel_core::envelope::PayloadKind;
use backchannel_core::message::{valid_file_name, AppMessage, Body, FileOffer, MAX_FILE};
use rand_core::{OsRng, RngCore};
use sha2::{Digest, Sha256};

use super::{hex, now_ms, protocol, Engine};
use crate::state::{ChannelStatus, FileStatus, IncomingFile, OutgoingFile, StoredMessage};
use crate::ClientError;

/// Bytes per part: 64 envelopes, and a part's MLS message is small enough to be
/// reassembled and saved without strain.
pub const PART_SIZE: u32 = 64 * 1024;

/// Parts encrypted between two saves (and two flushes) for one recipient: 1 MiB, a
/// resume redoes at most that. Divided by the number of recipients.
const PARTS_PER_SAVE: usize = 16;

/// Files one channel may be receiving at once (each holds sealed parts on disk).
const MAX_INCOMING_PER_CHANNEL: usize = 16;

/// A file with no new part for this long is given up when another needs its place.
const STALLED_AFTER: Duration = Duration::from_secs(7 * 24 * 3600);

/// How long a sender waits for a full mailbox to be drained before it pauses.
const FULL_MAILBOX_PATIENCE: Duration = Duration::from_secs(120);

/// What `send --file` reports as it goes.
#[derive(Debug, Clone, Copy)]
pub enum FileProgress {
    /// The transfer starts (`done` > 0 when it resumes an interrupted one).
    Start {
        /// Bytes in the file.
        total: u64,
        /// Bytes already sent.
        done: u64,
    },
    /// Bytes handed to the relay so far.
    Sent(u64),
    /// The recipient's mailbox is full: waiting for them to fetch.
    Waiting,
}

/// A file as `read` shows it.
#[derive(Debug, Clone)]
pub struct FileView {
    /// Its name.
    pub name: String,
    /// Its size.
    pub size: u64,
    /// SHA-256, hex.
    pub sha256: String,
    /// "receiving", "complete", "damaged" or "saved".
    pub status: &'static str,
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

fn hash_file(path: &Path) -> Result<[u8; 32], ClientError> {
    let mut f = std::fs::File::open(path).map_err(|e| ClientError::io("reading the file to send", e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f
            .read(&mut buf)
            .map_err(|e| ClientError::io("reading the file to send", e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().into())
}

/// A fresh folder name under the home's `files/` for something received and kept
/// sealed (a file's parts, a letter's attachment): random, so it names nothing.
pub(super) fn random_folder() -> String {
    let mut folder = [0u8; 16];
    OsRng.fill_bytes(&mut folder);
    hex(&folder)
}

fn paused(done: u64, total: u64, why: impl std::fmt::Display) -> ClientError {
    let pct = (done * 100).checked_div(total).unwrap_or(100);
    ClientError::Paused(format!("{pct}% sent so far: {why}"))
}

impl Engine {
    /// Sends a file to a channel, or resumes an interrupted transfer of the same file.
    pub async fn send_file(
        &mut self,
        name: &str,
        path: &Path,
        progress: &mut dyn FnMut(FileProgress),
    ) -> Result<(), ClientError> {
        self.active(name)?;
        let path = std::fs::canonicalize(path)
            .map_err(|e| ClientError::Usage(format!("cannot read {}: {e}", path.display())))?;
        let meta = std::fs::metadata(&path).map_err(|e| ClientError::io("reading the file to send", e))?;
        if !meta.is_file() {
            return Err(ClientError::Usage(format!("{} is not a file", path.display())));
        }
        if meta.len() > MAX_FILE {
            return Err(ClientError::Usage(format!(
                "{} is larger than backchannel sends ({})",
                path.display(),
                show_size(MAX_FILE)
            )));
        }
        let file_name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .filter(|n| valid_file_name(n))
            .ok_or_else(|| ClientError::Usage(format!("{} has no usable file name", path.display())))?;
        let sha256 = hash_file(&path)?;
        let pos = self
            .state
            .outgoing_files
            .iter()
            .position(|o| o.channel == name && o.path == path);
        if let Some(i) = pos {
            if self.state.outgoing_files[i].offer.sha256 != sha256 {
                // The file changed since: its parts so far belong to other contents.
                self.state.outgoing_files.remove(i);
                self.warn(
                    Some(name),
                    format!("{file_name} changed since its interrupted transfer; it is sent again from the start"),
                );
            }
        }
        let index = match self
            .state
            .outgoing_files
            .iter()
            .position(|o| o.channel == name && o.path == path)
        {
            Some(i) => i,
            None => {
                let mut file_id = [0u8; 16];
                let mut offer_id = [0u8; 16];
                OsRng.fill_bytes(&mut file_id);
                OsRng.fill_bytes(&mut offer_id);
                self.state.outgoing_files.push(OutgoingFile {
                    channel: name.to_string(),
                    path: path.clone(),
                    offer: FileOffer {
                        file_id,
                        name: file_name,
                        size: meta.len(),
                        sha256,
                        part_size: PART_SIZE,
                    },
                    offer_id,
                    sent_at: now_ms(),
                    offered: false,
                    next_part: 0,
                });
                self.save()?;
                self.state.outgoing_files.len() - 1
            }
        };
        let job = self.state.outgoing_files[index].clone();
        let total = job.offer.size;
        let part_bytes = |p: u64| (p * u64::from(job.offer.part_size)).min(total);
        progress(FileProgress::Start {
            total,
            done: part_bytes(job.next_part),
        });
        if let Err(e) = self.refresh().await {
            return Err(paused(part_bytes(job.next_part), total, e));
        }
        self.active(name)?;
        let mut file = std::fs::File::open(&path).map_err(|e| ClientError::io("reading the file to send", e))?;
        let parts = job.offer.parts();
        let mut buf = Vec::new();
        let mut unsaved = 0;
        loop {
            let Some(job) = self
                .state
                .outgoing_files
                .iter()
                .find(|o| o.channel == name && o.path == path)
                .cloned()
            else {
                return Ok(());
            };
            let body = if !job.offered {
                Body::File(job.offer.clone())
            } else if job.next_part < parts {
                let len = job.offer.part_len(job.next_part).unwrap_or(0);
                buf.resize(len, 0);
                file.seek(SeekFrom::Start(job.next_part * u64::from(job.offer.part_size)))
                    .and_then(|_| file.read_exact(&mut buf))
                    .map_err(|e| ClientError::io("reading the file to send", e))?;
                Body::Part {
                    file_id: job.offer.file_id,
                    index: job.next_part as u32,
                    data: std::mem::take(&mut buf),
                }
            } else {
                // Every part is in the outbox: the transfer is over once it has gone.
                self.flush_file_parts(job.next_part, total, progress).await?;
                self.state
                    .outgoing_files
                    .retain(|o| !(o.channel == name && o.path == path));
                self.save()?;
                return Ok(());
            };
            let mut group = self.load_group(name)?;
            if group.has_pending_proposals() {
                return Err(paused(
                    part_bytes(job.next_part),
                    total,
                    "a change to the channel is waiting to be committed",
                ));
            }
            let mut id = job.offer_id;
            if job.offered {
                OsRng.fill_bytes(&mut id);
            }
            let msg = AppMessage {
                id,
                sent_at: if job.offered { now_ms() } else { job.sent_at },
                body,
            };
            let ct = group
                .encrypt(&self.provider, &self.identity, &msg.to_bytes())
                .map_err(protocol)?;
            if let Body::Part { data, .. } = msg.body {
                buf = data;
            }
            let recipients = self.others(&group);
            // The outbox is saved with the vault: with more recipients, fewer parts per save
            // keep what one save writes near 1 MiB.
            let per_save = (PARTS_PER_SAVE / recipients.len().max(1)).max(1);
            for to in recipients {
                self.enqueue(&to, PayloadKind::Mls, &ct)?;
            }
            let me = self.identity.public_key();
            let my_name = self.identity.name().to_string();
            if let Some(o) = self
                .state
                .outgoing_files
                .iter_mut()
                .find(|o| o.channel == name && o.path == path)
            {
                if o.offered {
                    o.next_part += 1;
                } else {
                    o.offered = true;
                    if let Some(ch) = self.state.channels.get_mut(name) {
                        ch.seen.insert(job.offer_id);
                        ch.messages.push(StoredMessage {
                            id: hex(&job.offer_id),
                            from: my_name,
                            from_key: me,
                            sent_at: job.sent_at,
                            text: offer_text(&job.offer),
                            event: None,
                        });
                        ch.read_upto = ch.messages.len();
                    }
                }
            }
            // Durable before the relay sees them: a crash from here on resumes after these
            // parts (one before would encrypt them again, as nothing of them was kept).
            let next = if job.offered { job.next_part + 1 } else { 0 };
            unsaved += 1;
            // The offer goes alone: parts pipelined with it could reach the relay first.
            if !job.offered || unsaved >= per_save || next >= parts {
                self.save()?;
                self.flush_file_parts(next, total, progress).await?;
                unsaved = 0;
            }
        }
    }

    /// Sends the outbox, waiting a while for a full mailbox to drain.
    async fn flush_file_parts(
        &mut self,
        next_part: u64,
        total: u64,
        progress: &mut dyn FnMut(FileProgress),
    ) -> Result<(), ClientError> {
        let sent = (next_part * u64::from(PART_SIZE)).min(total);
        let started = tokio::time::Instant::now();
        let mut pause = Duration::from_millis(200);
        loop {
            self.undelivered = None;
            self.mailbox_full = false;
            let left = self.flush_outbox().await?;
            if left == 0 {
                progress(FileProgress::Sent(sent));
                return Ok(());
            }
            let why = self
                .undelivered
                .take()
                .unwrap_or_else(|| "the relay could not be reached".into());
            if !self.mailbox_full || started.elapsed() >= FULL_MAILBOX_PATIENCE {
                return Err(paused(sent.saturating_sub(u64::from(PART_SIZE)), total, why));
            }
            progress(FileProgress::Waiting);
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(5));
        }
    }

    /// A member offers a file: its parts will follow.
    pub(super) fn receive_offer(&mut self, channel: &str, from: [u8; 32], message_id: String, offer: FileOffer) {
        let receiving = self
            .state
            .incoming_files
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
        let parts = offer.parts();
        let status = if parts == 0 {
            FileStatus::Complete
        } else {
            FileStatus::Receiving
        };
        self.state.incoming_files.push(IncomingFile {
            channel: channel.to_string(),
            from_key: from,
            message_id,
            received: vec![0; parts.div_ceil(8) as usize],
            count: 0,
            folder: random_folder(),
            offer,
            status,
            updated_at: now_ms(),
        });
    }

    /// Makes room for another file in `channel` by giving up on the transfer that has
    /// waited longest for its next part, if that is more than [`STALLED_AFTER`].
    fn give_up_stalled(&mut self, channel: &str) -> bool {
        let now = now_ms();
        let Some(pos) = self
            .state
            .incoming_files
            .iter()
            .enumerate()
            .filter(|(_, f)| f.channel == channel && f.status == FileStatus::Receiving)
            .min_by_key(|(_, f)| f.updated_at)
            .filter(|(_, f)| now.saturating_sub(f.updated_at) > STALLED_AFTER.as_millis() as u64)
            .map(|(i, _)| i)
        else {
            return false;
        };
        let name = self.state.incoming_files[pos].offer.name.clone();
        self.discard_incoming(pos);
        self.warn(
            Some(channel),
            format!("gave up on {name}: no part of it arrived for a week; ask for it again"),
        );
        true
    }

    /// Marks a received file damaged and deletes its sealed parts.
    fn discard_incoming(&mut self, pos: usize) {
        let f = &mut self.state.incoming_files[pos];
        f.status = FileStatus::Damaged;
        let folder = f.folder.clone();
        self.home.remove_sealed(&folder);
    }

    /// One part of a file arrives.
    pub(super) fn receive_part(&mut self, channel: &str, from: [u8; 32], file_id: [u8; 16], index: u32, data: &[u8]) {
        let Some(pos) = self.state.incoming_files.iter().position(|f| {
            f.channel == channel
                && f.from_key == from
                && f.offer.file_id == file_id
                && f.status == FileStatus::Receiving
        }) else {
            // Parts of a file given up (damaged, or refused) keep coming: one word per file.
            let known = self
                .state
                .incoming_files
                .iter()
                .any(|f| f.channel == channel && f.from_key == from && f.offer.file_id == file_id);
            if !known && self.stray_files.insert(file_id) {
                self.warn(Some(channel), "discarded parts of a file that was never offered");
            }
            return;
        };
        let f = &self.state.incoming_files[pos];
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
        if let Err(e) = self.home.write_sealed(&folder, &index.to_string(), data) {
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
        let f = &mut self.state.incoming_files[pos];
        f.received[byte] |= bit;
        f.count += 1;
        f.updated_at = now_ms();
        if f.count == f.offer.parts() {
            let ok = self
                .file_digest(pos)
                .is_ok_and(|d| d == self.state.incoming_files[pos].offer.sha256);
            let f = &mut self.state.incoming_files[pos];
            if ok {
                f.status = FileStatus::Complete;
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
        let f = &self.state.incoming_files[pos];
        let mut h = Sha256::new();
        for i in 0..f.offer.parts() {
            h.update(&self.home.read_sealed(&f.folder, &i.to_string())?[..]);
        }
        Ok(h.finalize().into())
    }

    /// The file a message of `channel` offered, if it is one.
    pub fn file_view(&self, channel: &str, message_id: &str) -> Option<FileView> {
        let f = self
            .state
            .incoming_files
            .iter()
            .find(|f| f.channel == channel && f.message_id == message_id)?;
        let (status, saved_to) = match &f.status {
            FileStatus::Receiving => ("receiving", None),
            FileStatus::Complete => ("complete", None),
            FileStatus::Damaged => ("damaged", None),
            FileStatus::Saved(p) => ("saved", Some(p.clone())),
        };
        Some(FileView {
            name: f.offer.name.clone(),
            size: f.offer.size,
            sha256: hex(&f.offer.sha256),
            status,
            parts: (f.count, f.offer.parts()),
            saved_to,
        })
    }

    /// Writes a completely received file into `dir` (created if needed), checking its
    /// SHA-256 again as it is written, then deletes its sealed parts. Returns where it is.
    pub fn save_received_file(&mut self, channel: &str, message_id: &str, dir: &Path) -> Result<PathBuf, ClientError> {
        let pos = self
            .state
            .incoming_files
            .iter()
            .position(|f| f.channel == channel && f.message_id == message_id)
            .ok_or_else(|| ClientError::Usage("that message carries no file".into()))?;
        let f = self.state.incoming_files[pos].clone();
        if let FileStatus::Saved(p) = &f.status {
            return Ok(PathBuf::from(p));
        }
        if f.status != FileStatus::Complete {
            return Err(ClientError::Usage(format!(
                "{} has not arrived completely",
                f.offer.name
            )));
        }
        let cannot = |e: std::io::Error| ClientError::Usage(format!("cannot save a file in {}: {e}", dir.display()));
        std::fs::create_dir_all(dir).map_err(cannot)?;
        let mut path = dir.join(&f.offer.name);
        let mut n = 2;
        while path.exists() {
            path = dir.join(format!("{n}-{}", f.offer.name));
            n += 1;
        }
        let tmp = dir.join(format!(".{}.part", f.folder));
        let mut out = std::fs::File::create(&tmp).map_err(cannot)?;
        let mut h = Sha256::new();
        for i in 0..f.offer.parts() {
            let part = self.home.read_sealed(&f.folder, &i.to_string())?;
            h.update(&part[..]);
            out.write_all(&part).map_err(cannot)?;
        }
        out.sync_all().map_err(cannot)?;
        if <[u8; 32]>::from(h.finalize()) != f.offer.sha256 {
            let _ = std::fs::remove_file(&tmp);
            return Err(ClientError::Corrupt(format!(
                "{} changed on disk after it arrived",
                f.offer.name
            )));
        }
        std::fs::rename(&tmp, &path).map_err(cannot)?;
        // Recorded before the sealed copy goes: a crash in between leaves parts to
        // prune, never a file marked complete whose parts are gone.
        self.state.incoming_files[pos].status = FileStatus::Saved(path.display().to_string());
        self.save()?;
        self.home.remove_sealed(&f.folder);
        Ok(path)
    }

    /// Message ids of the files of `channel` that arrived completely and are not saved yet.
    pub fn unsaved_files(&self, channel: &str) -> Vec<String> {
        self.state
            .incoming_files
            .iter()
            .filter(|f| f.channel == channel && f.status == FileStatus::Complete)
            .map(|f| f.message_id.clone())
            .collect()
    }

    /// Forgets received files whose message is gone (disappeared, or the channel was
    /// closed), deleting their sealed parts.
    pub(super) fn prune_files(&mut self) {
        let channels = &self.state.channels;
        let (keep, gone): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.state.incoming_files)
                .into_iter()
                .partition(|f| {
                    channels.get(&f.channel).is_some_and(|c| {
                        c.status != ChannelStatus::Closed && c.messages.iter().any(|m| m.id == f.message_id)
                    })
                });
        self.state.incoming_files = keep;
        for f in gone {
            self.home.remove_sealed(&f.folder);
        }
        let channels = &self.state.channels;
        self.state.outgoing_files.retain(|o| {
            channels
                .get(&o.channel)
                .is_some_and(|c| c.status == ChannelStatus::Active)
        });
    }
}

/// The history line of a file message.
pub fn offer_text(offer: &FileOffer) -> String {
    format!("sent a file: {} ({})", offer.name, show_size(offer.size))
}

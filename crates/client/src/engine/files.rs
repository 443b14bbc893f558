//! Driving file transfers: reading the file to send part by part, pacing the flushes
//! against a full mailbox, and writing a received file where the user asks. What goes
//! into each message and what a received part changes is in `session::files`.

use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

use backchannel_core::message::{valid_file_name, MAX_FILE};
use sha2::{Digest, Sha256};

use super::Engine;
use crate::session::files::{show_size, FileBlocked, FileView};
use crate::session::Blobs;
use crate::state::FileStatus;
use crate::{ClientError, Damage, Holdup};

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

fn paused(done: u64, total: u64, why: Holdup) -> ClientError {
    let percent = (done * 100).checked_div(total).unwrap_or(100);
    ClientError::Paused { percent, why }
}

impl Engine {
    /// Sends a file to a channel, or resumes an interrupted transfer of the same file.
    pub async fn send_file(
        &mut self,
        name: &str,
        path: &Path,
        progress: &mut dyn FnMut(FileProgress),
    ) -> Result<(), ClientError> {
        self.tick();
        self.session.active(name)?;
        let path = std::fs::canonicalize(path).map_err(ClientError::path("read", path))?;
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
        let job = self
            .session
            .start_file(name, path.clone(), file_name, meta.len(), sha256)?;
        self.perform_local()?;
        let total = job.offer.size;
        let part_bytes = |p: u64| (p * u64::from(job.offer.part_size)).min(total);
        progress(FileProgress::Start {
            total,
            done: part_bytes(job.next_part),
        });
        if let Err(e) = self.refresh().await {
            return Err(paused(part_bytes(job.next_part), total, Holdup::Sync(Box::new(e))));
        }
        self.session.active(name)?;
        let mut file = std::fs::File::open(&path).map_err(|e| ClientError::io("reading the file to send", e))?;
        let parts = job.offer.parts();
        let mut unsaved = 0;
        loop {
            let Some(job) = self.session.outgoing_file(name, &path).cloned() else {
                return Ok(());
            };
            let part = if !job.offered {
                None
            } else if job.next_part < parts {
                let len = job.offer.part_len(job.next_part).unwrap_or(0);
                let mut buf = vec![0u8; len];
                file.seek(SeekFrom::Start(job.next_part * u64::from(job.offer.part_size)))
                    .and_then(|_| file.read_exact(&mut buf))
                    .map_err(|e| ClientError::io("reading the file to send", e))?;
                Some(buf)
            } else {
                // Every part is in the outbox: the transfer is over once it has gone.
                self.flush_file_parts(job.next_part, total, progress).await?;
                self.session.finish_file(name, &path);
                self.perform_local()?;
                return Ok(());
            };
            self.tick();
            let per_save = match self.session.seal_file_message(name, &path, part)? {
                Ok(n) => n,
                Err(FileBlocked::ProposalsWaiting) => {
                    return Err(paused(part_bytes(job.next_part), total, Holdup::ProposalsWaiting))
                }
            };
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
        let sent = (next_part * u64::from(crate::session::files::PART_SIZE)).min(total);
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
            let why = self.undelivered.take().map_or(Holdup::Unreachable, Holdup::Relay);
            if !self.mailbox_full || started.elapsed() >= FULL_MAILBOX_PATIENCE {
                return Err(paused(
                    sent.saturating_sub(u64::from(crate::session::files::PART_SIZE)),
                    total,
                    why,
                ));
            }
            progress(FileProgress::Waiting);
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(5));
        }
    }

    /// The file a message of `channel` offered, if it is one.
    pub fn file_view(&self, channel: &str, message_id: &str) -> Option<FileView> {
        self.session.file_view(channel, message_id)
    }

    /// Message ids of the files of `channel` that arrived completely and are not saved yet.
    pub fn unsaved_files(&self, channel: &str) -> Vec<String> {
        self.session.unsaved_files(channel)
    }

    /// Writes a completely received file into `dir` (created if needed), checking its
    /// SHA-256 again as it is written, then deletes its sealed parts. Returns where it is.
    pub fn save_received_file(&mut self, channel: &str, message_id: &str, dir: &Path) -> Result<PathBuf, ClientError> {
        let (pos, f) = self
            .session
            .incoming_file(channel, message_id)
            .ok_or_else(|| ClientError::Usage("that message carries no file".into()))?;
        if let FileStatus::Saved(p) = &f.status {
            return Ok(PathBuf::from(p));
        }
        if f.status != FileStatus::Complete {
            return Err(ClientError::Usage(format!(
                "{} has not arrived completely",
                f.offer.name
            )));
        }
        let cannot = ClientError::path("save a file in", dir);
        // Received files are for this user alone: 0600 in folders made 0700.
        crate::home::private_dir(dir).map_err(cannot)?;
        let mut path = dir.join(&f.offer.name);
        let mut n = 2;
        while path.exists() {
            path = dir.join(format!("{n}-{}", f.offer.name));
            n += 1;
        }
        let tmp = dir.join(format!(".{}.part", f.folder));
        let mut out = crate::home::private_file(&tmp).map_err(cannot)?;
        let mut h = Sha256::new();
        for i in 0..f.offer.parts() {
            let part = self.session.blobs.read(&f.folder, &i.to_string())?;
            h.update(&part[..]);
            out.write_all(&part).map_err(cannot)?;
        }
        out.sync_all().map_err(cannot)?;
        if <[u8; 32]>::from(h.finalize()) != f.offer.sha256 {
            let _ = std::fs::remove_file(&tmp);
            return Err(ClientError::Corrupt(Damage::FileChanged(f.offer.name.clone())));
        }
        std::fs::rename(&tmp, &path).map_err(cannot)?;
        // Recorded before the sealed copy goes: a crash in between leaves parts to
        // prune, never a file marked complete whose parts are gone.
        self.session.file_saved(pos, &path);
        // Deleted once the state that no longer points at it is saved.
        self.session.blobs.remove(&f.folder);
        self.perform_local()?;
        Ok(path)
    }
}

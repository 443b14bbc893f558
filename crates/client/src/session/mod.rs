//! The client's protocol logic, without I/O: no tokio, no sockets, no files.
//!
//! A [`Session`] owns the client's state (channels, outbox, inbox, lifecycle, files
//! received, drop boxes) and the MLS provider. The driver ([`crate::engine::Engine`])
//! tells it the time, hands it what arrived (a fetched or carried envelope, a relay's
//! answer) and performs what it asks for: the requests it plans (each names the relay
//! it goes to) and the [`Effect`]s it queues (save the state, delete mailboxes, show a
//! warning or an event). Bulk data received (a file's parts, a letter's attachment)
//! goes through the [`Blobs`] trait, so tests keep it in memory.
//!
//! Its parts, each with the state it owns:
//! - [`inbox`]: opening, reassembly, de-duplication, deferral of messages for a later
//!   epoch, reading through MLS;
//! - [`commit`]: staging a commit, the outcome of its epoch claim;
//! - [`outbox`]: unsent messages → sealed envelopes in the newest epoch → delivered;
//! - [`lifecycle`]: disappearing messages, expiry, the end of a channel, invites and
//!   mailboxes that are due to go or to rotate;
//! - [`files`], [`courier`], [`drop_box`]: files in parts, courier bundles, drop boxes.
//!
//! **Architecture invariant:** the driver performs effects in the order they were
//! queued, and sends no request the session planned after an [`Effect::Save`] before
//! that save is durable.

use std::collections::{HashSet, VecDeque};

use backchannel_core::channel::{Channel, Provider};
use backchannel_core::identity::{Fingerprint, Identity};
use backchannel_core::mailbox::{MailboxAddress, MailboxId, MailboxKeys};
use backchannel_core::relay_address::RelayAddress;
use rand_core::{OsRng, RngCore};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::state::{ChannelState, ChannelStatus, EventKind, State, StoredMessage};
use crate::ClientError;
use log::HISTORY_BYTES;

pub mod approval;
pub mod commit;
pub mod courier;
pub mod drop_box;
pub mod files;
pub mod inbox;
pub mod invite;
pub mod lifecycle;
pub mod log;
pub mod outbox;
pub mod partials;
pub mod roles;
pub mod sync;
pub mod trail;
pub mod views;

pub use commit::CommitOp;
pub use inbox::Via;

/// Lower-case hex, for ids shown to the user and kept in the history.
pub fn hex(b: &[u8]) -> String {
    data_encoding::HEXLOWER.encode(b)
}

/// What the client keeps of a payload to recognize it again: the first 16 bytes of its
/// SHA-256 ([`State::recent_payloads`], a drop box's `seen` letters).
pub(crate) fn payload_digest(payload: &[u8]) -> [u8; 16] {
    let full: [u8; 32] = Sha256::digest(payload).into();
    let mut digest = [0u8; 16];
    digest.copy_from_slice(&full[..16]);
    digest
}

/// A fresh random id.
pub fn random_id<const N: usize>() -> [u8; N] {
    let mut id = [0u8; N];
    OsRng.fill_bytes(&mut id);
    id
}

/// Where bulk data received is kept, sealed, beside the vault: a file's parts, a
/// letter's attachment (never inside the vault, which is rewritten at every save).
/// The home directory implements it on disk; tests keep it in memory.
pub trait Blobs: Send {
    /// Writes `plain` durably as `name` in `folder` (replacing it).
    fn write(&mut self, folder: &str, name: &str, plain: &[u8]) -> Result<(), ClientError>;
    /// Reads what [`Blobs::write`] wrote.
    fn read(&self, folder: &str, name: &str) -> Result<Zeroizing<Vec<u8>>, ClientError>;
    /// Deletes `folder` and everything in it (absent is fine).
    fn remove(&mut self, folder: &str);
    /// Deletes `name` in `folder` (absent is fine).
    fn delete(&mut self, folder: &str, name: &str);
    /// The folders there are.
    fn folders(&self) -> Vec<String>;
    /// The files in `folder`.
    fn names(&self, folder: &str) -> Vec<String>;
}

/// The session's sealed store: writes and reads reach the [`Blobs`] at once; deletions
/// wait until the vault that no longer points at what they delete is saved
/// ([`SealedStore::settle`], which the driver calls after each save). So a crash never
/// leaves a saved vault pointing at a deleted chunk, segment or message.
pub struct SealedStore {
    inner: Box<dyn Blobs>,
    /// Folders (and files in them) to delete after the next save.
    pending: Vec<(String, Option<String>)>,
}

impl SealedStore {
    /// Over `inner`, nothing waiting.
    pub fn new(inner: Box<dyn Blobs>) -> Self {
        Self {
            inner,
            pending: Vec::new(),
        }
    }

    /// Deletes what waited for the save that just happened.
    pub fn settle(&mut self) {
        for (folder, name) in self.pending.drain(..) {
            match name {
                Some(name) => self.inner.delete(&folder, &name),
                None => self.inner.remove(&folder),
            }
        }
    }
}

impl Blobs for SealedStore {
    fn write(&mut self, folder: &str, name: &str, plain: &[u8]) -> Result<(), ClientError> {
        self.inner.write(folder, name, plain)
    }

    fn read(&self, folder: &str, name: &str) -> Result<Zeroizing<Vec<u8>>, ClientError> {
        self.inner.read(folder, name)
    }

    fn remove(&mut self, folder: &str) {
        self.pending.push((folder.to_string(), None));
    }

    fn delete(&mut self, folder: &str, name: &str) {
        self.pending.push((folder.to_string(), Some(name.to_string())));
    }

    fn folders(&self) -> Vec<String> {
        self.inner.folders()
    }

    fn names(&self, folder: &str) -> Vec<String> {
        self.inner.names(folder)
    }
}

/// Something the user should know that is not an error.
#[derive(Debug, Clone)]
pub struct Warning {
    /// Channel concerned, if any.
    pub channel: Option<String>,
    /// What happened.
    pub text: String,
}

/// A rejection event's text without its count, and the count (1 when none is written).
fn rejection_count(text: &str) -> (&str, u64) {
    if let Some((base, tail)) = text.rsplit_once(" (") {
        if let Some(n) = tail.strip_suffix(" times)").and_then(|n| n.parse::<u64>().ok()) {
            return (base, n);
        }
    }
    (text, 1)
}

/// What the session asks its driver to do, in order.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Effect {
    /// Persist the state now ([`Session::encode`]): what follows may reach the network.
    Save,
    /// Delete the mailboxes queued in the state's `doomed` list at their relays.
    DeleteDoomed,
    /// Tell the user.
    Warn(Warning),
    /// Delete this file outside the home (a copy of a received file that `read` saved,
    /// whose message a channel's lifetime took away); best effort.
    DeleteSaved(String),
    /// A message or an event was added to a channel's history.
    Show {
        /// The channel.
        channel: String,
        /// What it was.
        kind: Option<EventKind>,
    },
}

/// Which mailbox an envelope came to, and so what it may carry.
#[derive(Clone, Debug)]
pub enum Role {
    /// A channel's mailbox (current or retired): MLS messages.
    Channel(String),
    /// A drop box's mailbox: letters.
    Drop(String),
    /// An invite's mailbox in a channel: join requests.
    Invite(String, MailboxId),
    /// Our mailbox of a join waiting for its welcome.
    Join(MailboxId),
}

/// The client's protocol state machine. See the module documentation.
pub struct Session {
    pub(crate) state: State,
    pub(crate) provider: Provider,
    pub(crate) identity: Identity,
    pub(crate) blobs: SealedStore,
    /// The current time (Unix ms), as the driver last said.
    now_ms: u64,
    effects: VecDeque<Effect>,
    /// Join requests read, to be admitted by the next commit.
    pub(crate) admissions: Vec<approval::Admission>,
    /// Channels in which a message from a later epoch waits for the commit it follows:
    /// nothing is sealed there until it arrives. Worked out again at every
    /// [`Session::retry_deferred`], so it needs no place in the saved state.
    pub(crate) behind: std::collections::BTreeSet<String>,
    /// [`Session::behind`] before the retry in progress (so it does not warn again).
    was_behind: std::collections::BTreeSet<String>,
    /// Files whose stray parts were already reported (one warning per file, not per part).
    pub(crate) stray_files: HashSet<[u8; 16]>,
    /// Chunks of half-assembled payloads not yet sealed beside the vault, by folder: the
    /// next [`Session::encode`] seals them before the state that counts them is saved.
    pub(crate) unsealed: std::collections::BTreeMap<String, std::collections::BTreeMap<u16, Vec<u8>>>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Session(..)")
    }
}

impl Session {
    /// A session over a state decoded from the home (or made by `init`).
    pub fn new(mut state: State, blobs: Box<dyn Blobs>, now_ms: u64) -> Result<Self, ClientError> {
        let provider = Provider::from_snapshot(std::mem::take(&mut state.mls)).map_err(ClientError::protocol)?;
        let identity = Identity::from_secret(state.name.clone(), &state.identity_secret);
        let mut session = Self {
            state,
            provider,
            identity,
            blobs: SealedStore::new(blobs),
            now_ms,
            effects: VecDeque::new(),
            admissions: Vec::new(),
            behind: Default::default(),
            was_behind: Default::default(),
            stray_files: HashSet::new(),
            unsealed: Default::default(),
        };
        session.take_carried();
        Ok(session)
    }

    /// Seals beside the vault what a state converted from an earlier layout still holds
    /// in it (half-assembled payloads, deferred messages, long histories), then asks for
    /// a save, so the conversion is done once.
    fn take_carried(&mut self) {
        let carried = std::mem::take(&mut self.state.carried);
        if !carried.upgraded {
            return;
        }
        for (mailbox, chunk) in carried.chunks {
            // Whole payloads were never kept; what an earlier layout held fits the bound.
            let _ = self.assemble(mailbox, chunk, backchannel_core::envelope::MAX_PAYLOAD);
        }
        for (channel, payload, by_courier, arrived_at) in carried.deferred {
            self.keep_deferred(&channel, &payload, by_courier, arrived_at);
        }
        for ch in self.state.channels.values_mut() {
            ch.history.seal_oversized_tail(&mut self.blobs);
        }
        for d in self.state.drops.values_mut() {
            d.letters.seal_oversized_tail(&mut self.blobs);
        }
        self.save();
    }

    /// Decodes a session from the bytes of an [`Effect::Save`] (a restart).
    pub fn decode(bytes: &[u8], blobs: Box<dyn Blobs>, now_ms: u64) -> Result<Self, ClientError> {
        Self::new(State::decode(bytes)?, blobs, now_ms)
    }

    /// The state as it is persisted (the MLS storage included). The chunks it counts are
    /// sealed beside it first.
    pub fn encode(&mut self) -> Result<Zeroizing<Vec<u8>>, ClientError> {
        self.seal_chunks();
        self.state.mls = self.provider.snapshot();
        let r = self.state.encode();
        self.state.mls = Vec::new();
        r.map(Zeroizing::new)
    }

    /// Tells the session the time (Unix ms). Time never goes back here.
    pub fn set_now(&mut self, now_ms: u64) {
        self.now_ms = self.now_ms.max(now_ms);
    }

    /// The current time (Unix ms).
    pub fn now_ms(&self) -> u64 {
        self.now_ms
    }

    /// The current time (Unix s).
    pub fn now_s(&self) -> u64 {
        self.now_ms / 1000
    }

    /// The next effect to perform, oldest first.
    pub fn poll_effect(&mut self) -> Option<Effect> {
        self.effects.pop_front()
    }

    /// Asks the driver to save before anything else goes out (consecutive saves are one).
    pub(crate) fn save(&mut self) {
        if !matches!(self.effects.back(), Some(Effect::Save)) {
            self.effects.push_back(Effect::Save);
        }
    }

    pub(crate) fn push(&mut self, effect: Effect) {
        self.effects.push_back(effect);
    }

    /// Our identity.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// Our fingerprint.
    pub fn fingerprint(&self) -> Fingerprint {
        self.identity.fingerprint()
    }

    /// The state (read-only).
    pub fn state(&self) -> &State {
        &self.state
    }

    /// The MLS provider.
    pub fn provider(&self) -> &Provider {
        &self.provider
    }

    /// Records a rejected input: an event in the channel's history and a warning. The
    /// same rejection again, while its event is still unread, is counted in that event
    /// rather than stored once more: a relay replaying one bad envelope cannot grow the
    /// history (and the vault) by an event each time.
    pub(crate) fn warn(&mut self, channel: Option<&str>, text: impl Into<String>) {
        let text = text.into();
        if let Some(name) = channel {
            if !self.count_again(name, &text) {
                self.event(name, EventKind::Rejected, text.clone());
            }
        }
        self.tell(channel, text);
    }

    /// Tells the user now, without an event in the channel's history (the caller adds
    /// its own).
    pub(crate) fn tell(&mut self, channel: Option<&str>, text: impl Into<String>) {
        self.push(Effect::Warn(Warning {
            channel: channel.map(str::to_string),
            text: text.into(),
        }));
    }

    /// Counts `text` in the channel's last event if that is the same unread rejection.
    fn count_again(&mut self, channel: &str, text: &str) -> bool {
        let now = self.now_ms;
        let Some(ch) = self.state.channels.get_mut(channel) else {
            return false;
        };
        // Only the newest entry, and only while it is unread and in the vault.
        let unread = ch.history.unread() > 0;
        let Some(last) = ch.history.tail.last_mut().filter(|_| unread) else {
            return false;
        };
        if last.event != Some(EventKind::Rejected) {
            return false;
        }
        let (base, times) = rejection_count(&last.text);
        if base != text {
            return false;
        }
        last.text = format!("{text} ({} times)", times.saturating_add(1));
        last.sent_at = now;
        true
    }

    /// Adds an event to a channel's history.
    pub(crate) fn event(&mut self, channel: &str, kind: EventKind, text: String) {
        let id = format!("event-{}", hex(&random_id::<8>()));
        self.event_with_id(channel, kind, id, [0; 32], text);
    }

    /// Adds an event with this id, about the member whose identity key is `about`.
    pub(crate) fn event_with_id(&mut self, channel: &str, kind: EventKind, id: String, about: [u8; 32], text: String) {
        let now = self.now_ms;
        let event = StoredMessage {
            id,
            from: String::new(),
            from_key: about,
            sent_at: now,
            text,
            event: Some(kind),
        };
        if self.record(channel, event) {
            self.push(Effect::Show {
                channel: channel.to_string(),
                kind: Some(kind),
            });
        }
    }

    /// Adds a message or an event to a channel's history, whose older part is sealed
    /// beside the vault; when its cap made room by deleting the oldest messages, an
    /// event says so. Returns whether the channel exists.
    pub(crate) fn record(&mut self, channel: &str, entry: StoredMessage) -> bool {
        let now = self.now_ms;
        let Some(ch) = self.state.channels.get_mut(channel) else {
            return false;
        };
        let (dropped, gone) = ch.history.push(entry, &mut self.blobs, HISTORY_BYTES);
        if dropped > 0 {
            let note = StoredMessage {
                id: format!("event-{}", hex(&random_id::<8>())),
                from: String::new(),
                from_key: [0; 32],
                sent_at: now,
                text: format!(
                    "deleted the {dropped} oldest messages: this device keeps at most {} MiB of a channel's history",
                    HISTORY_BYTES / (1024 * 1024)
                ),
                event: Some(EventKind::Trimmed),
            };
            ch.history.push(note, &mut self.blobs, HISTORY_BYTES);
            let ids: Vec<String> = gone.into_iter().map(|m| m.id).collect();
            self.prune_files(&ids);
        }
        true
    }

    /// Which links reach `relay`. Our own relay (its pin) is reached only through the
    /// addresses given at `init`, whatever address a mailbox names: another member
    /// cannot steer our connections to a host of theirs that forwards to our relay. Any
    /// other relay is reached at the address given.
    pub fn link_key(&self, relay: &RelayAddress) -> RelayAddress {
        if relay.pin == self.state.relay.pin {
            self.state.relay.clone()
        } else {
            relay.clone()
        }
    }

    /// Where a new mailbox of ours goes: on our own relay when what others send us may come
    /// through theirs (forwarding, docs/protocol.md, "Where mailboxes live"), otherwise on
    /// `without` (the relay of the channel or of the mailbox it replaces, as before).
    pub fn place_for_ours(&self, without: RelayAddress) -> RelayAddress {
        if self.state.forwards() {
            self.state.relay.clone()
        } else {
            without
        }
    }

    /// A channel by local name.
    pub(crate) fn channel(&self, name: &str) -> Result<&ChannelState, ClientError> {
        self.state
            .channels
            .get(name)
            .ok_or_else(|| ClientError::UnknownChannel(name.to_string()))
    }

    pub(crate) fn is_active(&self, name: &str) -> bool {
        self.state
            .channels
            .get(name)
            .is_some_and(|c| c.status == ChannelStatus::Active)
    }

    /// A channel we are still a member of.
    pub(crate) fn active(&self, name: &str) -> Result<&ChannelState, ClientError> {
        let ch = self.channel(name)?;
        if ch.status != ChannelStatus::Active {
            return Err(ClientError::ChannelInactive(name.to_string(), ch.status.word()));
        }
        Ok(ch)
    }

    /// The MLS group of a channel.
    pub(crate) fn load_group(&self, name: &str) -> Result<Channel, ClientError> {
        let ch = self.channel(name)?;
        Channel::load(&self.provider, &ch.group_id)
            .map_err(ClientError::protocol)?
            .ok_or_else(|| ClientError::ChannelInactive(name.to_string(), "gone"))
    }

    /// The receiving mailboxes of the other members of a group.
    pub(crate) fn others(&self, group: &Channel) -> Vec<MailboxAddress> {
        let me = self.identity.public_key();
        group
            .members()
            .into_iter()
            .filter(|m| m.identity_key != me)
            .filter_map(|m| m.mailbox)
            .collect()
    }

    /// Every mailbox we read, with what it is for.
    pub fn mailboxes(&self) -> Vec<(MailboxKeys, Role)> {
        let mut out = Vec::new();
        for (name, ch) in &self.state.channels {
            if ch.status == ChannelStatus::Active {
                out.push((ch.mailbox.clone(), Role::Channel(name.clone())));
                for r in &ch.retired {
                    out.push((r.keys.clone(), Role::Channel(name.clone())));
                }
                for inv in &ch.invites {
                    out.push((inv.mailbox.clone(), Role::Invite(name.clone(), inv.mailbox.id())));
                }
            }
        }
        for pj in &self.state.pending_joins {
            out.push((pj.mailbox.clone(), Role::Join(pj.mailbox.id())));
        }
        for (name, d) in &self.state.drops {
            out.push((d.mailbox.clone(), Role::Drop(name.clone())));
        }
        out
    }

    /// Every folder beside the vault that the state points at.
    fn folders_in_use(&self) -> HashSet<&str> {
        let s = &self.state;
        let mut used: HashSet<&str> = HashSet::new();
        used.extend(s.files.incoming.iter().map(|f| f.folder.as_str()));
        used.extend(s.inbox.deferred.iter().map(|d| d.folder.as_str()));
        used.extend(s.inbox.partials.iter().map(|p| p.folder.as_str()));
        used.extend(self.log_segments().map(|(folder, _)| folder));
        used.extend(s.drops.values().flat_map(|d| d.attachments.iter().map(String::as_str)));
        used
    }

    /// Every log's folder (channels' histories, drop boxes' letters) with its segments.
    fn log_segments(&self) -> impl Iterator<Item = (&str, &VecDeque<crate::state::Segment>)> {
        let s = &self.state;
        s.channels
            .values()
            .map(|c| (c.history.folder.as_str(), &c.history.segments))
            .chain(
                s.drops
                    .values()
                    .map(|d| (d.letters.folder.as_str(), &d.letters.segments)),
            )
    }

    /// Deletes the folders beside the vault that the state does not point at (left by a
    /// crash between a write and the save that would have counted it), and the files in
    /// its logs' and payloads' folders that it does not count. Only for a state that is the
    /// one saved: the deletions happen at the store's next `settle`. Returns how many.
    pub fn collect_orphans(&mut self) -> usize {
        let orphans: Vec<String> = {
            let used = self.folders_in_use();
            self.blobs
                .folders()
                .into_iter()
                .filter(|f| !used.contains(f.as_str()))
                .collect()
        };
        for f in &orphans {
            self.blobs.remove(f);
        }
        // Within folders in use: files a save allowed to delete before a crash did (a
        // segment replaced, holding messages that had disappeared; a chunk of a payload
        // given up), and unfinished writes.
        let mut strays: Vec<(String, String)> = Vec::new();
        let logs: Vec<(&str, Vec<u64>)> = self
            .log_segments()
            .map(|(folder, segments)| (folder, segments.iter().map(|s| s.name).collect()))
            .collect();
        for (folder, kept) in logs {
            for name in self.blobs.names(folder) {
                if !name.parse::<u64>().is_ok_and(|n| kept.contains(&n)) {
                    strays.push((folder.to_string(), name));
                }
            }
        }
        for p in &self.state.inbox.partials {
            for name in self.blobs.names(&p.folder) {
                let counted = name
                    .parse::<u16>()
                    .is_ok_and(|i| p.have.get(usize::from(i / 8)).is_some_and(|b| b & (1 << (i % 8)) != 0));
                if !counted {
                    strays.push((p.folder.clone(), name));
                }
            }
        }
        for f in &self.state.files.incoming {
            for name in self.blobs.names(&f.folder) {
                if name.ends_with(".tmp") {
                    strays.push((f.folder.clone(), name));
                }
            }
        }
        for (folder, name) in &strays {
            self.blobs.delete(folder, name);
        }
        orphans.len() + strays.len()
    }

    /// Messages and events ever added in all channels (to count what a pass brought:
    /// it does not fall when the history's cap deletes old messages).
    pub fn history_len(&self) -> usize {
        self.state.channels.values().map(|c| c.history.end() as usize).sum()
    }
}

#[cfg(test)]
#[allow(clippy::panic)]
mod tests {
    /// The architecture invariant, checked on the source: no module of the session
    /// reaches for the runtime, the file system, the network or the clock.
    #[test]
    fn the_session_does_no_io() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/session");
        let mut read = 0;
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.map(|e| e.path()).unwrap_or_default();
            let Ok(text) = std::fs::read_to_string(&path) else {
                continue;
            };
            read += 1;
            // Up to the first test module (tests may do what they like; this one names
            // what it looks for).
            let text = text.split("#[cfg(test)]").next().unwrap_or_default();
            let code: String = text
                .lines()
                .filter(|l| !l.trim_start().starts_with("//"))
                .collect::<Vec<_>>()
                .join("\n");
            for banned in [
                "tokio",
                "std::fs",
                "std::net",
                "SystemTime",
                "Instant::now",
                "std::thread",
            ] {
                assert!(!code.contains(banned), "{} uses {banned}", path.display());
            }
        }
        assert!(read >= 10, "read {read} files of the session");
    }
}

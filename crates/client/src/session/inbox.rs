//! What arrives: envelopes opened and reassembled, payloads de-duplicated, MLS
//! messages read or kept for a later epoch, welcomes and join requests taken.

use backchannel_core::channel::{validate_key_package, Channel, Received, Rejection};
use backchannel_core::envelope::{open_envelope, Envelope, PayloadKind, MAX_PAYLOAD};
use backchannel_core::mailbox::{MailboxId, MailboxKeys};
use backchannel_core::message::{AppMessage, Body, JoinRequest};
use backchannel_core::roles::Act;

use super::partials::Assembled;
use super::Blobs;
use super::{files, hex, payload_digest, Effect, Role, Session};
use crate::state::{random_folder, ChannelState, ChannelStatus, DeferredMls, EventKind, RecentPayload, StoredMessage};

/// Most MLS messages kept per channel while they wait for their epoch (their bytes are
/// sealed beside the vault; the vault keeps about 80 bytes for each).
pub const MAX_DEFERRED: usize = 256;

/// How long an MLS message waits for its epoch (seconds) before it is dropped: as long
/// as a retired mailbox is read, by which time the commit it follows has arrived or never will.
pub const DEFERRED_LIFETIME: u64 = super::lifecycle::RETIRED_GRACE.as_secs();

/// Most bytes of half-assembled payloads kept per channel mailbox: three times the largest
/// message a member sends (a 1 MiB text or file part, in MLS), so that a member or ex-member
/// who holds the mailbox's keys cannot fill the vault with payloads it never finishes. Other
/// mailboxes (invites, joins, drop boxes) keep up to [`MAX_PAYLOAD`], the largest payload.
pub const CHANNEL_PARTIAL_BYTES: usize = 4 * 1024 * 1024;

/// Most bytes of MLS messages kept per channel while they wait for their epoch (sealed
/// beside the vault).
pub const DEFERRED_BYTES: usize = 8 * 1024 * 1024;

/// Channel payloads remembered to recognize one carried both by hand and by a relay.
pub const RECENT_PAYLOADS: usize = 4096;

/// How an envelope reached us.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Via {
    /// Fetched from a relay.
    Relay,
    /// Imported from a courier bundle.
    Courier,
    /// Read from the channel's sequencer, which holds the commit that won an epoch.
    Sequencer,
}

/// Why an MLS message was not taken.
enum Rejected {
    /// It belongs to a later epoch: keep it for when that commit arrives.
    Later,
    /// It will never be readable; the text says why.
    Now(String),
}

impl Session {
    /// Takes one envelope that arrived in mailbox `keys` (whose purpose is `role`).
    /// Whatever happens is recorded in the state and the effects; nothing fails.
    pub fn receive(&mut self, keys: &MailboxKeys, role: &Role, env: &Envelope, via: Via) {
        let channel_name = match role {
            Role::Channel(n) | Role::Invite(n, _) => Some(n.clone()),
            Role::Join(_) | Role::Drop(_) => None,
        };
        let chunk = match open_envelope(&keys.address.seal, &keys.address.send, env) {
            Ok(c) => c,
            Err(_) => {
                self.warn(
                    channel_name.as_deref(),
                    "discarded an envelope that failed authentication (forged or corrupted)",
                );
                return;
            }
        };
        let bound = match role {
            Role::Channel(_) => CHANNEL_PARTIAL_BYTES,
            Role::Invite(..) | Role::Join(_) | Role::Drop(_) => MAX_PAYLOAD,
        };
        let whole = match self.assemble(keys.id().0, chunk, bound) {
            Assembled::Whole(w) => w,
            Assembled::Waiting => return,
            Assembled::TooLarge => {
                self.warn(
                    channel_name.as_deref(),
                    "discarded a message larger than this mailbox takes",
                );
                return;
            }
            Assembled::Malformed => {
                self.warn(channel_name.as_deref(), "discarded a malformed message");
                return;
            }
        };
        match (role, whole.kind) {
            (Role::Channel(name), PayloadKind::Mls) => match self.read_channel_payload(name, &whole.payload, via) {
                Ok(()) => {}
                Err(Rejected::Later) => self.defer(name, whole.payload, via),
                Err(Rejected::Now(text)) => self.warn(Some(name), text),
            },
            (Role::Invite(name, invite_id), PayloadKind::JoinRequest) => {
                let kp = JoinRequest::from_bytes(&whole.payload).ok().and_then(|j| {
                    validate_key_package(&self.provider, &j.key_package)
                        .ok()
                        .map(|kp| (kp, j.key_package))
                });
                match kp {
                    Some((kp, raw)) => self.admissions.push(super::approval::Admission {
                        channel: name.clone(),
                        invite: *invite_id,
                        kp,
                        raw,
                        approved: false,
                    }),
                    None => self.warn(Some(name), "refused an invalid join request"),
                }
            }
            (Role::Join(id), PayloadKind::Welcome) => self.accept_welcome(*id, &whole.payload),
            (Role::Drop(name), PayloadKind::Letter) => self.receive_letter(name, keys, &whole.payload),
            _ => self.warn(channel_name.as_deref(), "discarded a message of an unexpected kind"),
        }
    }

    /// Reads a commit fetched from the channel's sequencer ([`Via::Sequencer`]).
    /// Returns whether it was refused.
    pub(crate) fn read_fetched(&mut self, name: &str, commit: &[u8]) -> bool {
        match self.read_channel_payload(name, commit, Via::Sequencer) {
            Ok(()) | Err(Rejected::Later) => false,
            Err(Rejected::Now(text)) => {
                self.warn(
                    Some(name),
                    format!("{text} (the change that won the channel's state at the relay)"),
                );
                true
            }
        }
    }

    /// Reads one channel payload through MLS, unless it is the second copy of a message
    /// carried both by courier and by relay (from either path, or both waiting in
    /// `deferred`): that one is skipped without a word.
    fn read_channel_payload(&mut self, name: &str, payload: &[u8], via: Via) -> Result<(), Rejected> {
        let digest = payload_digest(payload);
        if self.carried_twice(&digest, via) {
            return Ok(());
        }
        self.process_mls(name, payload)?;
        self.remember_payload(digest, via);
        Ok(())
    }

    /// Whether this channel payload was already processed and one of its two copies
    /// came by courier: the copy that arrives second is the same message, not a replay,
    /// and is skipped without a word. Relay-only repeats still go to MLS, which reports
    /// them as replays.
    fn carried_twice(&self, digest: &[u8; 16], via: Via) -> bool {
        self.state
            .inbox
            .recent
            .iter()
            .any(|p| &p.digest == digest && (p.by_courier || via != Via::Relay))
    }

    /// Remembers a channel payload once MLS has read it (not before: a copy that
    /// failed, or waits for a later epoch, must not hide the other copy).
    fn remember_payload(&mut self, digest: [u8; 16], via: Via) {
        if self.state.inbox.recent.len() >= RECENT_PAYLOADS {
            self.state.inbox.recent.pop_front();
        }
        self.state.inbox.recent.push_back(RecentPayload {
            digest,
            // Set for a copy that did not come through the mailbox (a courier's, or the
            // sequencer's); the field keeps its name in the saved state.
            by_courier: via != Via::Relay,
        });
    }

    /// Keeps an MLS message from a later epoch for when its commit arrives.
    fn defer(&mut self, name: &str, payload: Vec<u8>, via: Via) {
        // The epoch in a message's header is not authenticated: bound what it can make us
        // keep, in number and in bytes; the oldest goes first.
        loop {
            let (count, bytes) = self
                .state
                .inbox
                .deferred
                .iter()
                .filter(|d| d.channel == name)
                .fold((0, 0), |(n, b), d| (n + 1, b + d.bytes as usize));
            if count == 0 || (count < MAX_DEFERRED && bytes + payload.len() <= DEFERRED_BYTES) {
                break;
            }
            let Some(pos) = self.state.inbox.deferred.iter().position(|d| d.channel == name) else {
                break;
            };
            let gone = self.state.inbox.deferred.remove(pos);
            self.blobs.remove(&gone.folder);
            self.warn(
                Some(name),
                "dropped the oldest message waiting for a change to the channel: too many were waiting",
            );
        }
        let arrived_at = self.now_s();
        self.keep_deferred(name, &payload, via != Via::Relay, arrived_at);
    }

    /// Seals a deferred MLS message beside the vault and notes it in `deferred`.
    pub(crate) fn keep_deferred(&mut self, name: &str, payload: &[u8], by_courier: bool, arrived_at: u64) {
        let folder = random_folder();
        if let Err(e) = self.blobs.write(&folder, "0", payload) {
            self.blobs.remove(&folder);
            self.warn(
                Some(name),
                format!("could not keep a message that waits for a change to the channel: {e}"),
            );
            return;
        }
        self.state.inbox.deferred.push(DeferredMls {
            channel: name.to_string(),
            folder,
            bytes: u32::try_from(payload.len()).unwrap_or(u32::MAX),
            // Set for a copy that did not come through the mailbox (a courier's, or the
            // sequencer's); the field keeps its name in the saved state.
            by_courier,
            arrived_at,
        });
    }

    /// A message from a later epoch arrived in `name`: this device missed a change to the
    /// channel (a relay may be withholding it). Said at once, and nothing is sealed in
    /// that channel until the change arrives.
    fn mark_behind(&mut self, name: &str) {
        if self.behind.insert(name.to_string()) && !self.was_behind.contains(name) {
            self.warn(
                Some(name),
                "this device is behind: a message arrived from a later state of the channel than it \
                 has; nothing is sent here until the change it follows arrives",
            );
        }
    }

    /// Whether `name` waits for a change that a later message showed this device missed.
    pub fn is_behind(&self, name: &str) -> bool {
        self.behind.contains(name)
    }

    /// The channels that wait for a change a later message showed this device missed.
    pub fn behind_channels(&self) -> Vec<String> {
        self.behind.iter().cloned().collect()
    }

    /// Channel `name`'s epoch, as this device has it.
    pub fn epoch(&self, name: &str) -> Option<u64> {
        let group = self.load_group(name).ok()?;
        let epoch = group.epoch();
        group.keep(&self.provider);
        Some(epoch)
    }

    /// Retries the messages kept for a later epoch, until no more can be read.
    /// Returns whether any was read or dropped (the driver then saves). Works out
    /// again which channels are behind.
    pub fn retry_deferred(&mut self) -> bool {
        self.was_behind = std::mem::take(&mut self.behind);
        let changed = self.retry_deferred_inner();
        self.was_behind.clear();
        changed
    }

    fn retry_deferred_inner(&mut self) -> bool {
        let mut changed = false;
        loop {
            let mut progress = false;
            let waiting = std::mem::take(&mut self.state.inbox.deferred);
            let mut keep = Vec::new();
            let now = self.now_s();
            for d in waiting {
                if !self.is_active(&d.channel) {
                    progress = true;
                    self.blobs.remove(&d.folder);
                    continue;
                }
                if now.saturating_sub(d.arrived_at) > DEFERRED_LIFETIME {
                    progress = true;
                    self.blobs.remove(&d.folder);
                    self.warn(
                        Some(&d.channel),
                        "dropped a message that waited too long for a change to the channel that never arrived",
                    );
                    continue;
                }
                let payload = match self.blobs.read(&d.folder, "0") {
                    Ok(p) => p,
                    Err(e) => {
                        progress = true;
                        self.blobs.remove(&d.folder);
                        self.warn(
                            Some(&d.channel),
                            format!("lost a message that waited for a change to the channel: {e}"),
                        );
                        continue;
                    }
                };
                let via = if d.by_courier { Via::Courier } else { Via::Relay };
                match self.read_channel_payload(&d.channel, &payload, via) {
                    Ok(()) => {
                        progress = true;
                        self.blobs.remove(&d.folder);
                    }
                    Err(Rejected::Later) => keep.push(d),
                    Err(Rejected::Now(text)) => {
                        progress = true;
                        self.blobs.remove(&d.folder);
                        self.warn(Some(&d.channel), text);
                    }
                }
            }
            // Anything deferred while retrying (none expected) is kept too.
            keep.append(&mut self.state.inbox.deferred);
            self.state.inbox.deferred = keep;
            changed |= progress;
            if !progress || self.state.inbox.deferred.is_empty() {
                return changed;
            }
        }
    }

    /// Processes one MLS message.
    fn process_mls(&mut self, name: &str, payload: &[u8]) -> Result<(), Rejected> {
        let Ok(mut group) = self.load_group(name) else {
            return Ok(());
        };
        let result = self.process_mls_in(name, &mut group, payload);
        // Kept only if it still holds what the store holds (not after a failure, nor
        // after the channel was wiped).
        group.keep(&self.provider);
        result
    }

    fn process_mls_in(&mut self, name: &str, group: &mut Channel, payload: &[u8]) -> Result<(), Rejected> {
        let roles_before = group.roles();
        let received = match group.process(&self.provider, payload) {
            Ok(r) => r,
            // A message from a later epoch, or carried ahead of its sender's earlier ones
            // (a courier): kept until what it follows has been read.
            Err(Rejection::FutureEpoch(_)) => {
                self.mark_behind(name);
                return Err(Rejected::Later);
            }
            Err(Rejection::TooFarAhead) => return Err(Rejected::Later),
            Err(rej) => return Err(Rejected::Now(format!("discarded a message: {rej}"))),
        };
        let now = self.now_ms();
        match received {
            Received::Application {
                sender,
                plaintext,
                epoch,
                trail,
            } => {
                // What the sender's trail says goes before the message (a gap); whether a
                // removed member could read it goes after.
                self.read_trail(name, &sender, trail, &plaintext);
                let msg = match AppMessage::from_bytes(&plaintext) {
                    Ok(m) => m,
                    Err(_) => {
                        self.warn(
                            Some(name),
                            format!("discarded a malformed message from {}", sender.name),
                        );
                        return Ok(());
                    }
                };
                let Some(ch) = self.state.channels.get_mut(name) else {
                    return Ok(());
                };
                // A part's id is never shown or answered: parts are told apart by their
                // file and index (receive_part), and so stay out of the replay filter.
                if !matches!(msg.body, Body::Part { .. }) && !ch.see(msg.id) {
                    self.warn(Some(name), "discarded a replayed message");
                    return Ok(());
                }
                // A sender's clock ahead of ours cannot keep a disappearing message longer.
                let sent_at = msg.sent_at.min(now);
                match msg.body {
                    Body::Text(text) => {
                        self.record(
                            name,
                            StoredMessage {
                                id: hex(&msg.id),
                                from: sender.name.clone(),
                                from_key: sender.identity_key,
                                sent_at,
                                text,
                                event: None,
                            },
                        );
                        self.shown(name);
                    }
                    Body::Close if !group.allows(&sender.identity_key, Act::Close) => {
                        self.warn(
                            Some(name),
                            format!(
                                "refused {}'s closing of the channel: only an admin may close it",
                                sender.name
                            ),
                        );
                    }
                    Body::Close => {
                        self.wipe(name, ChannelStatus::Closed);
                        self.event(name, EventKind::Closed, format!("{} closed the channel", sender.name));
                    }
                    Body::File(offer) => {
                        let id = hex(&msg.id);
                        self.record(
                            name,
                            StoredMessage {
                                id: id.clone(),
                                from: sender.name.clone(),
                                from_key: sender.identity_key,
                                sent_at,
                                text: files::offer_text(&offer),
                                event: None,
                            },
                        );
                        self.shown(name);
                        self.receive_offer(name, sender.identity_key, id, offer);
                    }
                    Body::Part { file_id, index, data } => {
                        self.receive_part(name, sender.identity_key, file_id, index, &data);
                    }
                }
                self.flag_sealed_before_removal(name, &sender, epoch);
            }
            Received::Commit {
                committer,
                added,
                removed,
                self_removed,
                trail,
            } => {
                if let Some(c) = &committer {
                    self.read_commit_trail(name, c, trail);
                }
                let gone: Vec<_> = removed.iter().map(|(m, _)| m.clone()).collect();
                self.trails_after_commit(name, &added, &gone, group.epoch());
                self.sequencer_moved(name, group);
                let committer_key = committer.as_ref().map(|c| c.identity_key);
                let by = committer.map(|c| c.name).unwrap_or_else(|| "a member".into());
                self.roles_changed(name, roles_before, group, &by);
                for m in added {
                    self.event(name, EventKind::Joined, format!("{by} added {}", m.name));
                }
                let me = self.identity.public_key();
                let mut removed_me_by = None;
                for (m, proposer) in removed {
                    // Events name who asked for the removal, not only who committed it.
                    let text = |whom: &str| match &proposer {
                        Some(p) if p.identity_key == m.identity_key => format!("{} left", m.name),
                        Some(p) if Some(p.identity_key) != committer_key => {
                            format!("{} removed {whom} (committed by {by})", p.name)
                        }
                        _ => format!("{by} removed {whom}"),
                    };
                    if m.identity_key == me {
                        removed_me_by = Some(text("you from the channel"));
                    } else {
                        self.event(name, EventKind::Removed, text(&m.name));
                    }
                }
                if self_removed {
                    let text = removed_me_by.unwrap_or_else(|| format!("{by} removed you from the channel"));
                    self.event(name, EventKind::Removed, text);
                    self.wipe(name, ChannelStatus::Removed);
                }
            }
            Received::Proposal { sender, trail } => {
                if let Some(p) = &sender {
                    self.read_commit_trail(name, p, trail);
                }
            }
        }
        Ok(())
    }

    fn shown(&mut self, channel: &str) {
        self.push(Effect::Show {
            channel: channel.to_string(),
            kind: None,
        });
    }

    /// A welcome to a channel we asked to join.
    fn accept_welcome(&mut self, join_id: MailboxId, payload: &[u8]) {
        let Some(pos) = self.state.pending_joins.iter().position(|p| p.mailbox.id() == join_id) else {
            return;
        };
        let (group, sender) = match Channel::join(&self.provider, payload) {
            Ok(x) => x,
            Err(_) => {
                self.warn(None, "discarded an invalid welcome");
                return;
            }
        };
        let pj = self.state.pending_joins.remove(pos);
        if sender.identity_key != pj.inviter_key {
            self.warn(None, "discarded a welcome that did not come from the inviter");
            let _ = group.delete(&self.provider);
            self.state.pending_joins.push(pj);
            return;
        }
        let Ok(info) = group.info() else {
            self.warn(None, "discarded a welcome without the channel's description");
            let _ = group.delete(&self.provider);
            self.state.pending_joins.push(pj);
            return;
        };
        let base = pj.local_name.clone().unwrap_or(info.name);
        let mut local = base.clone();
        let mut n = 2;
        while self.state.channels.contains_key(&local) {
            local = format!("{base}-{n}");
            n += 1;
        }
        let now_s = self.now_s();
        self.state.channels.insert(
            local.clone(),
            ChannelState::new(
                group.group_id(),
                pj.mailbox.clone(),
                None,
                info.disappear_after,
                info.expires_at,
                now_s,
            ),
        );
        self.event(
            &local,
            EventKind::Joined,
            format!("you joined; {} admitted you", sender.name),
        );
    }
}

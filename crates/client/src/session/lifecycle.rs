//! How long things last: disappearing messages, a channel's expiry, the end of a
//! channel, invites used up or expired, retired mailboxes whose grace is over, and
//! mailboxes old enough to rotate.

use std::time::Duration;

use backchannel_core::channel::Channel;
use backchannel_core::mailbox::MailboxKeys;

use backchannel_core::envelope::PayloadKind;
use backchannel_core::message::{AppMessage, Body};

use super::Blobs;
use super::{random_id, Effect, Session};
use crate::state::{ChannelStatus, EventKind};
use crate::ClientError;

/// How long a rotated-out mailbox is still read before it is deleted.
pub const RETIRED_GRACE: Duration = Duration::from_secs(2 * 86_400);

/// How long after its invite expired a join request still waits for its welcome.
pub const JOIN_GRACE: Duration = Duration::from_secs(86_400);

/// A channel mailbox older than this is rotated (with a key update) at the next sync.
pub const ROTATE_AFTER: Duration = Duration::from_secs(7 * 86_400);

impl Session {
    /// Asks the other members of `name` to remove us (a leave proposal in the outbox).
    /// The driver sends it, then [`Session::wipe`]s the channel with `Left`.
    pub fn queue_leave(&mut self, name: &str) -> Result<(), ClientError> {
        self.active(name)?;
        self.may_leave(name)?;
        let mut group = self.load_group(name)?;
        let others = self.others(&group);
        if !others.is_empty() {
            // The proposal counts our messages, so a withheld last one is missed.
            self.trail_commit(name, &mut group)?;
            let proposal = group
                .leave(&self.provider, &self.identity)
                .map_err(ClientError::protocol)?;
            for to in &others {
                self.enqueue(to, PayloadKind::Mls, &proposal)?;
            }
            self.save();
        }
        Ok(())
    }

    /// Proposes the removal of the member with fingerprint `who` in `name` to every other
    /// member: for whoever commits next (an admin's removal whose commit kept losing).
    pub fn propose_removal(
        &mut self,
        name: &str,
        who: &backchannel_core::identity::Fingerprint,
    ) -> Result<(), ClientError> {
        self.active(name)?;
        self.may(name, backchannel_core::roles::Act::RemoveOther, "remove members")?;
        let mut group = self.load_group(name)?;
        let others = self.others(&group);
        let proposals = group
            .propose_removal(&self.provider, &self.identity, std::slice::from_ref(who))
            .map_err(ClientError::protocol)?;
        for p in &proposals {
            for to in &others {
                self.enqueue(to, PayloadKind::Mls, p)?;
            }
        }
        self.save();
        Ok(())
    }

    /// Tells every other member of `name` that the channel is closed (a close message
    /// in the outbox). The driver sends it, then [`Session::wipe`]s the channel with
    /// `Closed`.
    pub fn queue_close(&mut self, name: &str) -> Result<(), ClientError> {
        self.active(name)?;
        self.may(name, backchannel_core::roles::Act::Close, "close the channel")?;
        let mut group = self.load_group(name)?;
        let msg = AppMessage {
            id: random_id(),
            sent_at: self.now_ms(),
            body: Body::Close,
        };
        let ct = self.seal_app(name, &mut group, &msg)?;
        for to in self.others(&group) {
            self.enqueue(&to, PayloadKind::Mls, &ct)?;
        }
        self.save();
        Ok(())
    }

    /// Ends a channel here and asks the driver to delete its mailboxes at the relays.
    pub(crate) fn wipe(&mut self, name: &str, status: ChannelStatus) {
        self.end_channel(name, status);
        self.push(Effect::DeleteDoomed);
    }

    /// Ends a channel on this device without the network: deletes its MLS keys, queues
    /// its mailboxes for deletion at the relays, and marks it with `status`. A closed
    /// channel also loses its history: only a tombstone with its name stays, so that a
    /// later send says the channel was closed.
    pub(crate) fn end_channel(&mut self, name: &str, status: ChannelStatus) {
        let Some(ch) = self.state.channels.get_mut(name) else {
            return;
        };
        ch.status = status;
        self.state.approvals.waiting.retain(|w| w.channel != name);
        let staged = ch.pending.take().and_then(|p| p.new_mailbox);
        let sequencer = ch.sequencer.take();
        let mut doomed: Vec<MailboxKeys> = vec![ch.mailbox.clone()];
        doomed.extend(ch.invites.drain(..).map(|i| i.mailbox));
        doomed.extend(ch.retired.drain(..).map(|r| r.keys));
        doomed.extend(staged);
        if status == ChannelStatus::Closed {
            // The sequencer goes only when nobody can commit any more.
            doomed.extend(sequencer);
            ch.history.clear(&mut self.blobs);
            ch.seen.clear();
            ch.verified.clear();
        }
        let gid = ch.group_id.clone();
        if let Ok(Some(group)) = Channel::load(&self.provider, &gid) {
            let _ = group.delete(&self.provider);
        }
        let blobs = &mut self.blobs;
        self.state.inbox.deferred.retain(|d| {
            let gone = d.channel == name;
            if gone {
                blobs.remove(&d.folder);
            }
            !gone
        });
        if status == ChannelStatus::Closed {
            self.prune_files(&[]);
        }
        for k in &doomed {
            self.forget_partials(k.id().0);
        }
        self.state.doomed.extend(doomed);
    }

    /// Applies the channels' lifetimes: deletes messages older than their channel's
    /// disappearing time, and ends channels whose expiry has passed. Returns whether
    /// anything changed (and then asks for a save).
    pub fn apply_lifecycle(&mut self) -> bool {
        let now = self.now_s();
        let mut changed = false;
        let mut expired = Vec::new();
        let mut disappeared = Vec::new();
        for (name, ch) in self.state.channels.iter_mut() {
            // Whatever the channel's status: a member removed (or gone) before the end
            // loses the history at the end too, as the others do.
            if ch.status != ChannelStatus::Closed && ch.expires_at != 0 && ch.expires_at <= now {
                expired.push(name.clone());
            }
            if ch.disappear_after == 0 {
                continue;
            }
            // Kept: sent in the last `disappear_after` seconds (whole seconds, as before).
            let cutoff_ms = (now.saturating_sub(ch.disappear_after) + 1).saturating_mul(1000) - 1;
            // A segment that cannot be read now is tried again at the next pass.
            let gone = ch.history.expire(cutoff_ms, &mut self.blobs);
            changed |= !gone.is_empty();
            disappeared.extend(gone.into_iter().map(|m| m.id));
        }
        for name in expired {
            self.end_channel(&name, ChannelStatus::Closed);
            self.event(&name, EventKind::Closed, "the channel expired and was closed".into());
            changed = true;
        }
        if changed {
            self.prune_files(&disappeared);
            self.save();
        }
        changed
    }

    /// Queues for deletion the invite mailboxes that expired or were used up.
    /// Also gives up the join requests that were never answered ([`JOIN_GRACE`] after
    /// their invite expired): their mailbox is deleted and the key package forgotten.
    pub fn expire_invites(&mut self) {
        let now = self.now_s();
        let mut dead = Vec::new();
        for ch in self.state.channels.values_mut() {
            let (keep, gone): (Vec<_>, Vec<_>) = ch
                .invites
                .drain(..)
                .partition(|i| i.uses_left > 0 && i.expires_at > now);
            ch.invites = keep;
            dead.extend(gone.into_iter().map(|i| i.mailbox));
        }
        // Joiners still waiting for approval of an invite that ended wait no more: their
        // invite no longer admits anyone.
        let live: std::collections::BTreeSet<[u8; 32]> = self
            .state
            .channels
            .values()
            .flat_map(|ch| ch.invites.iter().map(|i| i.mailbox.id().0))
            .collect();
        self.state.approvals.invites.retain(|id| live.contains(id));
        let (still, ended): (Vec<_>, Vec<_>) = std::mem::take(&mut self.state.approvals.waiting)
            .into_iter()
            .partition(|w| live.contains(&w.invite));
        self.state.approvals.waiting = still;
        for w in &ended {
            self.warn(
                Some(&w.channel),
                format!(
                    "{} no longer waits for approval: the invite they came by expired or was used up",
                    w.name
                ),
            );
        }
        if !ended.is_empty() {
            self.save();
        }
        // A join request nobody answered: its mailbox and key package go once the invite
        // has expired and the inviter had a while to send a welcome it admitted before.
        let (waiting, lapsed): (Vec<_>, Vec<_>) = std::mem::take(&mut self.state.pending_joins)
            .into_iter()
            .partition(|pj| pj.expires_at.saturating_add(JOIN_GRACE.as_secs()) > now);
        self.state.pending_joins = waiting;
        if !lapsed.is_empty() {
            for _ in &lapsed {
                self.warn(
                    None,
                    "gave up waiting to be admitted: the invite expired without an answer; ask for a new one",
                );
            }
            dead.extend(lapsed.into_iter().map(|pj| pj.mailbox));
            if self.state.pending_joins.is_empty() {
                self.provider.forget_key_packages();
            }
            self.save();
        }
        if !dead.is_empty() {
            self.state.doomed.extend(dead);
            self.push(Effect::DeleteDoomed);
        }
    }

    /// Queues for deletion the rotated-out mailboxes whose grace period is over. Only
    /// call it once a fetch came back empty: nothing is left in them.
    pub fn expire_retired(&mut self) {
        let now = self.now_s();
        let mut gone = Vec::new();
        for ch in self.state.channels.values_mut() {
            let (old, keep): (Vec<_>, Vec<_>) = ch.retired.drain(..).partition(|r| r.until <= now);
            ch.retired = keep;
            gone.extend(old.into_iter().map(|r| r.keys));
        }
        for k in &gone {
            self.forget_partials(k.id().0);
        }
        self.state.doomed.extend(gone);
        self.push(Effect::DeleteDoomed);
    }

    /// The channels whose mailbox is older than [`ROTATE_AFTER`] (and no commit is staged).
    pub fn rotations_due(&self) -> Vec<String> {
        let now = self.now_s();
        self.state
            .channels
            .iter()
            .filter(|(_, c)| c.status == ChannelStatus::Active && c.pending.is_none())
            .filter(|(_, c)| c.mailbox_since.saturating_add(ROTATE_AFTER.as_secs()) <= now)
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// Whether the rotation due in `name` was made due by a removal (which sets the
    /// mailbox's age to 0, `Session::trails_after_commit`) rather than by age.
    pub fn rotation_follows_removal(&self, name: &str) -> bool {
        self.channel(name).is_ok_and(|c| c.mailbox_since == 0)
    }

    /// The channels with proposals waiting for a commit.
    pub fn proposals_waiting(&self) -> Vec<String> {
        self.state
            .channels
            .iter()
            .filter(|(_, c)| c.status == ChannelStatus::Active)
            .map(|(n, _)| n.clone())
            .filter(|n| self.load_group(n).map(|g| g.has_pending_proposals()).unwrap_or(false))
            .collect()
    }

    /// The mailboxes queued for deletion (the driver deletes them, then calls
    /// [`Session::doomed_kept`] with those it could not).
    pub fn take_doomed(&mut self) -> Vec<MailboxKeys> {
        std::mem::take(&mut self.state.doomed)
    }

    /// Puts back the doomed mailboxes whose relay could not be asked (tried again later).
    pub fn doomed_kept(&mut self, keep: Vec<MailboxKeys>) {
        self.state.doomed.extend(keep);
    }
}

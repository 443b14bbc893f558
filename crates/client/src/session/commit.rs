//! Changes to a channel's membership and keys. A commit is staged (and saved) before
//! its epoch is claimed at the channel's sequencer mailbox; the claim's answer decides:
//! won, the commit is merged and sent to every member (and its welcome to joiners);
//! lost, it is discarded and tried again on top of the winner's. A staged commit
//! survives a crash between the claim and the fan-out: the next sync claims again
//! with the same keys, which the relay grants again. A claim shows the current epoch's
//! claim key and leaves the lock of the next, and carries the commit, which the
//! sequencer holds with the grant: a member who lost the epoch, or whose copy of the
//! commit is missing, reads it there (docs/protocol.md, "Claims"). A commit that moves
//! the sequencer claims the new one first, so that it is locked before anyone but the
//! committer knows it.

use backchannel_core::channel::{Channel, ClaimKeys, MemberInfo, ValidKeyPackage};
use backchannel_core::envelope::PayloadKind;
use backchannel_core::frame::{commit_digest, Request, COMMIT_PART, MAX_COMMIT_PARTS};
use backchannel_core::identity::Fingerprint;
use backchannel_core::mailbox::MailboxKeys;
use backchannel_core::relay_address::RelayAddress;
use backchannel_core::roles::{Act, Roles};

use super::lifecycle::RETIRED_GRACE;
use super::Session;
use crate::state::{ChannelStatus, PendingCommit, RetiredMailbox};
use crate::ClientError;

/// How many times a commit that lost its epoch is retried.
pub const COMMIT_ATTEMPTS: usize = 8;

/// What a commit does.
#[derive(Clone)]
pub enum CommitOp {
    /// Adds members (from their validated key packages).
    Add(Vec<ValidKeyPackage>),
    /// Removes members.
    Remove(Vec<Fingerprint>),
    /// Commits the proposals waiting (a member's leave).
    Proposals,
    /// Our own key update, announcing a fresh receiving mailbox (the driver makes it
    /// at the channel's relay and passes it to [`Session::stage_commit`]).
    SelfUpdate,
    /// New roles for the channel (an admin made or unmade).
    Roles(Roles),
    /// The sequencer moves to a fresh mailbox on its relay (an admin's weekly move; the
    /// driver makes the mailbox, [`Session::fresh_mailbox_for`]).
    MoveSequencer,
}

/// A staged commit's claim: the requests, and the relay of the sequencer they go to.
#[derive(Debug, Clone)]
pub struct Claim {
    /// The sequencer's relay.
    pub relay: RelayAddress,
    /// In order: for a commit that moves the sequencer, the deposit and claim that lock
    /// the new one; then the commit's parts and the claim at the channel's sequencer,
    /// whose answer is the claim's.
    pub requests: Vec<Request>,
}

/// The largest commit a sequencer holds, and so the largest this client makes.
const MAX_COMMIT: usize = COMMIT_PART * MAX_COMMIT_PARTS as usize;

/// The requests that deposit `commit` at the sequencer whose send capability is `send`
/// and claim `epoch` with it ([`Session::stage_commit`] makes no larger commit than
/// [`MAX_COMMIT`]).
fn claim_carrying(send: [u8; 32], epoch: u64, keys: &ClaimKeys, commit: &[u8]) -> Vec<Request> {
    let parts: Vec<&[u8]> = commit.chunks(COMMIT_PART).collect();
    let total = u16::try_from(parts.len()).unwrap_or(u16::MAX);
    let mut requests: Vec<Request> = (0..total)
        .zip(parts)
        .map(|(part, bytes)| Request::Deposit {
            part,
            total,
            bytes: bytes.to_vec(),
        })
        .collect();
    requests.push(Request::ClaimCommit {
        send,
        epoch,
        key: keys.key,
        next: keys.next,
        digest: commit_digest(commit),
    });
    requests
}

/// A commit staged and saved, whose claim is still to be sent. Only
/// [`Session::stage_commit`] and [`Session::staged_commits`] make one, and
/// [`Session::claim_answered`] consumes it: a claim's answer can only be given for a
/// commit that was durably staged first.
#[derive(Debug)]
#[must_use = "a staged commit holds its epoch until its claim is answered"]
pub struct Staged {
    channel: String,
    claim: Claim,
}

impl Staged {
    /// The channel's local name.
    pub fn channel(&self) -> &str {
        &self.channel
    }

    /// The claim to send to the channel's sequencer.
    pub fn claim(&self) -> &Claim {
        &self.claim
    }
}

/// Where a channel's sequencer holds the commit that won the member's current epoch, and
/// the claim key that shows the member may read it.
pub struct HeldCommitSource {
    /// The sequencer's relay.
    pub relay: RelayAddress,
    send: [u8; 32],
    /// The epoch whose winning commit is read.
    pub epoch: u64,
    key: [u8; 32],
}

impl HeldCommitSource {
    /// The request for part `part` of the commit.
    pub fn fetch(&self, part: u16) -> Request {
        Request::FetchCommit {
            send: self.send,
            epoch: self.epoch,
            key: self.key,
            part,
        }
    }
}

impl Drop for HeldCommitSource {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.key);
    }
}

/// What the sequencer answered to a claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClaimAnswer {
    /// The epoch is ours.
    Granted,
    /// Another member's commit holds the epoch.
    Conflict,
}

/// What became of a staged commit after its claim.
#[derive(Debug)]
pub enum CommitOutcome {
    /// Merged and queued for every member; the channel's name.
    Done,
    /// Lost the epoch; a mailbox made for it that must now be deleted, if any.
    Lost(Option<MailboxKeys>),
}

impl Session {
    /// Who moves channel `name` past a commit that won its epoch at the sequencer and that
    /// the members refuse: its first admin in the tree's order (its first member, in a
    /// channel made before roles). One member only, so that two honest admins never move
    /// the channel to two sequencers at once, which would split it (docs/protocol.md,
    /// "Moving past a refused commit").
    pub fn recoverer(&self, name: &str) -> Option<MemberInfo> {
        let group = self.load_group(name).ok()?;
        group
            .members()
            .into_iter()
            .find(|m| group.allows(&m.identity_key, Act::ChangeChannel))
    }

    /// The relay of channel `name`'s sequencer, where a new one is made.
    pub fn sequencer_relay(&self, name: &str) -> Option<RelayAddress> {
        Some(self.load_group(name).ok()?.info().ok()?.sequencer.relay)
    }

    /// Channel `name` moved past a refused winner with our commit: said in its history.
    pub fn recovered(&mut self, name: &str) {
        // An event of the refusal it answers (its kind is `rejected`): no new kind, so that
        // the state's layout stays the one an earlier release of layout 8 reads.
        self.warn(
            Some(name),
            "you moved the channel to a new sequencer: the change that had won its state at the \
             relay was one this device refused (a member's garbage, or a change against the \
             channel's rules)",
        );
    }

    /// The commit that moves channel `name` past a refused winner on the way to `op`:
    /// `op` itself when it can carry the move of the sequencer (a removal, the proposals
    /// waiting, the move itself), else a move alone, after which `op` is made as usual.
    pub fn recovery_step(&self, name: &str, op: &CommitOp) -> Result<CommitOp, ClientError> {
        let group = self.load_group(name)?;
        Ok(match op {
            CommitOp::Remove(_) | CommitOp::MoveSequencer => op.clone(),
            CommitOp::Proposals if group.has_pending_proposals() => op.clone(),
            _ => CommitOp::MoveSequencer,
        })
    }

    /// Where the driver must make a fresh mailbox for `op` in `name` before staging it, if
    /// anywhere: our own new mailbox for a key update (on our own relay, or without
    /// forwarding at the relay of the one it replaces: [`Session::place_for_ours`]), and the channel's new sequencer for a commit that removes someone (at the
    /// sequencer's relay: the removed member knew the old one).
    pub fn fresh_mailbox_for(&self, name: &str, op: &CommitOp) -> Result<Option<RelayAddress>, ClientError> {
        let group = self.load_group(name)?;
        let sequencer = || -> Result<Option<RelayAddress>, ClientError> {
            Ok(Some(group.info().map_err(ClientError::protocol)?.sequencer.relay))
        };
        match op {
            CommitOp::SelfUpdate => Ok(Some(
                self.place_for_ours(self.channel(name)?.mailbox.address.relay.clone()),
            )),
            CommitOp::Remove(_) | CommitOp::MoveSequencer => sequencer(),
            CommitOp::Proposals if group.has_pending_removals() => sequencer(),
            CommitOp::Proposals | CommitOp::Add(_) | CommitOp::Roles(_) => Ok(None),
        }
    }

    /// Stages `op` in channel `name`: the commit (and welcome) is kept, with who
    /// receives it, and saved before its claim. `fresh` is the mailbox the driver made for
    /// it ([`Session::fresh_mailbox_for`]): the new mailbox a [`CommitOp::SelfUpdate`]
    /// announces, or the new sequencer a commit that removes someone moves to. Returns the claim to send, or `None` when
    /// there is nothing to commit (the members are already in, or gone).
    ///
    /// With `recovery`, the commit moves the sequencer to `fresh` and is claimed there
    /// only: the old sequencer's epoch was won by a commit this device refused
    /// ([`Session::recovery_step`]).
    pub fn stage_commit(
        &mut self,
        name: &str,
        op: &CommitOp,
        fresh: Option<MailboxKeys>,
        recovery: bool,
    ) -> Result<Option<Staged>, ClientError> {
        self.active(name)?;
        let mut group = self.load_group(name)?;
        let recipients = self.others(&group);
        let mut new_mailbox = None;
        // The commit counts our messages, so a withheld last one is missed (session::trail).
        self.trail_commit(name, &mut group)?;
        let (out, joiners) = match op {
            CommitOp::Add(kps) => {
                let current: Vec<[u8; 32]> = group.members().iter().map(|m| m.identity_key).collect();
                let fresh: Vec<ValidKeyPackage> = kps
                    .iter()
                    .filter(|k| !current.contains(&k.member.identity_key))
                    .cloned()
                    .collect();
                if fresh.is_empty() {
                    return Ok(None);
                }
                let joiners = fresh.iter().filter_map(|k| k.member.mailbox.clone()).collect();
                let out = group
                    .add(&self.provider, &self.identity, fresh)
                    .map_err(ClientError::protocol)?;
                (out, joiners)
            }
            CommitOp::Remove(fps) => {
                let present: Vec<Fingerprint> = group
                    .members()
                    .iter()
                    .map(|m| m.fingerprint)
                    .filter(|f| fps.contains(f))
                    .collect();
                if present.is_empty() {
                    return Ok(None);
                }
                let out = match &fresh {
                    Some(seq) => group.remove_moving_sequencer(&self.provider, &self.identity, &present, &seq.address),
                    None => group.remove(&self.provider, &self.identity, &present),
                }
                .map_err(ClientError::protocol)?;
                new_mailbox = fresh;
                (out, Vec::new())
            }
            CommitOp::Proposals => {
                if !group.has_pending_proposals() {
                    return Ok(None);
                }
                let out = match &fresh {
                    Some(seq) => group.move_sequencer(&self.provider, &self.identity, &seq.address),
                    None => group.commit_pending(&self.provider, &self.identity),
                }
                .map_err(ClientError::protocol)?;
                new_mailbox = fresh;
                (out, Vec::new())
            }
            CommitOp::MoveSequencer => {
                let Some(seq) = &fresh else {
                    return Ok(None);
                };
                let out = group
                    .move_sequencer(&self.provider, &self.identity, &seq.address)
                    .map_err(ClientError::protocol)?;
                new_mailbox = fresh;
                (out, Vec::new())
            }
            CommitOp::Roles(roles) => {
                if group.roles().as_ref() == Some(roles) {
                    return Ok(None);
                }
                let out = group
                    .set_roles(&self.provider, &self.identity, roles)
                    .map_err(ClientError::protocol)?;
                (out, Vec::new())
            }
            CommitOp::SelfUpdate => {
                // A fresh mailbox: ids and send capability rotate too.
                let out = group
                    .self_update(&self.provider, &self.identity, fresh.as_ref().map(|f| &f.address))
                    .map_err(ClientError::protocol)?;
                new_mailbox = fresh;
                (out, Vec::new())
            }
        };
        if out.commit.len() > MAX_COMMIT {
            let _ = group.discard_pending(&self.provider);
            return Err(ClientError::Usage(format!(
                "this change is too large for one commit ({} KiB; the relay holds at most {} KiB): \
                 add fewer members at once",
                out.commit.len() / 1024,
                MAX_COMMIT / 1024
            )));
        }
        let pending = PendingCommit {
            new_mailbox,
            epoch: out.epoch,
            token: out.token(),
            commit: out.commit.clone(),
            welcome: out.welcome.clone(),
            recipients,
            joiners,
        };
        if let Some(ch) = self.state.channels.get_mut(name) {
            ch.pending = Some(pending);
        }
        self.save();
        self.staged(name, recovery)
    }

    /// The commit staged in `name`, if one is; with `recovery`, claimed at the new
    /// sequencer it moves to, and only there.
    fn staged(&self, name: &str, recovery: bool) -> Result<Option<Staged>, ClientError> {
        let Some(pending) = &self.channel(name)?.pending else {
            return Ok(None);
        };
        let group = self.load_group(name)?;
        let seq = group.info().map_err(ClientError::protocol)?.sequencer;
        // The epoch's claim key proves membership of it, so a removed member's old
        // device cannot hold the channel's next epoch (docs/protocol.md, "Claims").
        let Some(keys) = group.claim_keys(&self.provider).map_err(ClientError::protocol)? else {
            // No staged commit in the group: nothing it could claim a lock for.
            return Ok(None);
        };
        let mut requests = Vec::new();
        // A new sequencer (on the same relay: the channel's rules refuse another) is
        // locked to the next epoch's members first: the removed member reads the commit
        // that names it, and a sequencer never claimed takes the first keyed claim.
        let next = group.staged_sequencer().filter(|n| n.relay == seq.relay);
        if let Some(next) = &next {
            requests.extend(claim_carrying(next.send.0, pending.epoch, &keys, &pending.commit));
        }
        // A recovery skips the old sequencer, whose epoch a refused commit holds: the new
        // one's claim, the first it takes, is the claim's answer.
        if !(recovery && next.is_some()) {
            requests.extend(claim_carrying(seq.send.0, pending.epoch, &keys, &pending.commit));
        }
        Ok(Some(Staged {
            channel: name.to_string(),
            claim: Claim {
                relay: seq.relay.clone(),
                requests,
            },
        }))
    }

    /// The commits staged in the state (a crash came between a claim and its fan-out),
    /// to claim again with the same keys.
    pub fn staged_commits(&self) -> Vec<Staged> {
        self.state
            .channels
            .iter()
            .filter(|(_, c)| c.pending.is_some() && c.status == ChannelStatus::Active)
            .filter_map(|(n, _)| self.staged(n, false).ok().flatten())
            .collect()
    }

    /// The sequencer answered the claim of a staged commit.
    pub fn claim_answered(&mut self, staged: Staged, answer: ClaimAnswer) -> Result<CommitOutcome, ClientError> {
        let name = staged.channel.as_str();
        let Some(pending) = self.channel(name)?.pending.clone() else {
            return Ok(CommitOutcome::Done);
        };
        let mut group = self.load_group(name)?;
        match answer {
            ClaimAnswer::Granted => {
                let before = group.members();
                let roles_before = group.roles();
                group.merge_pending(&self.provider).map_err(ClientError::protocol)?;
                let after = group.members();
                let me = self.identity.public_key();
                let gone: Vec<_> = before
                    .iter()
                    .filter(|m| m.identity_key != me && !after.iter().any(|a| a.identity_key == m.identity_key))
                    .cloned()
                    .collect();
                let added: Vec<_> = after
                    .iter()
                    .filter(|m| !before.iter().any(|b| b.identity_key == m.identity_key))
                    .cloned()
                    .collect();
                self.trails_after_commit(name, &added, &gone, group.epoch());
                self.roles_changed(name, roles_before, &group, "you");
                for to in &pending.recipients {
                    self.enqueue(to, PayloadKind::Mls, &pending.commit)?;
                }
                if let Some(w) = &pending.welcome {
                    for to in &pending.joiners {
                        self.enqueue(to, PayloadKind::Welcome, w)?;
                    }
                }
                let now = self.now_s();
                let sequencer = group.info().ok().map(|i| i.sequencer);
                if let Some(ch) = self.state.channels.get_mut(name) {
                    ch.pending = None;
                    if let Some(fresh) = pending
                        .new_mailbox
                        .clone()
                        .filter(|f| Some(&f.address) == sequencer.as_ref())
                    {
                        // The commit moved the sequencer to the mailbox made for it: ours to
                        // delete when the channel closes. The old one, if ours, is kept as long
                        // as a retired mailbox, for the commits it holds (a member who missed
                        // one reads it there), then deleted.
                        if let Some(old) = ch.sequencer.replace(fresh) {
                            ch.retired.push(RetiredMailbox {
                                keys: old,
                                until: now.saturating_add(RETIRED_GRACE.as_secs()),
                            });
                        }
                    } else if let Some(fresh) = pending.new_mailbox.clone() {
                        let old = std::mem::replace(&mut ch.mailbox, fresh);
                        ch.mailbox_since = now;
                        ch.retired.push(RetiredMailbox {
                            keys: old,
                            until: now.saturating_add(RETIRED_GRACE.as_secs()),
                        });
                    }
                }
                self.save();
                if !group.is_active() {
                    self.wipe(name, ChannelStatus::Removed);
                }
                Ok(CommitOutcome::Done)
            }
            ClaimAnswer::Conflict => {
                let _ = group.discard_pending(&self.provider);
                if let Some(ch) = self.state.channels.get_mut(name) {
                    ch.pending = None;
                }
                self.save();
                Ok(CommitOutcome::Lost(pending.new_mailbox))
            }
        }
    }

    /// Where to read the commit that won the current epoch of channel `name` (after a
    /// lost claim, or when the channel is behind).
    pub fn held_commit_source(&self, name: &str) -> Option<HeldCommitSource> {
        let group = self.load_group(name).ok()?;
        let seq = group.info().ok()?.sequencer;
        Some(HeldCommitSource {
            relay: seq.relay,
            send: seq.send.0,
            epoch: group.epoch(),
            key: group.claim_key(&self.provider).ok()?,
        })
    }

    /// Reads a commit fetched from channel `name`'s sequencer as if it had come in the
    /// mailbox (through MLS and every check); its copy in the mailbox, when it comes, is
    /// then skipped without a word.
    /// Returns whether this device refused it.
    pub fn read_held_commit(&mut self, name: &str, commit: &[u8]) -> bool {
        let refused = self.read_fetched(name, commit);
        self.save();
        refused
    }

    /// A mailbox made for a commit that lost could not be deleted now: a later sync does.
    pub fn doom(&mut self, keys: MailboxKeys) {
        self.state.doomed.push(keys);
        self.save();
    }

    /// Join requests read since the last call, per channel, that an invite still
    /// honours (each takes one of its uses); refusals become warnings. A request from
    /// someone already in the channel, or a second one from the same person (a relay
    /// replaying the envelope), is dropped without taking a use; so is one from someone
    /// the invite admitted before (replayed after they were removed), with a warning. One
    /// whose invite or channel asks for approval waits in `State::approvals` instead
    /// (`session::approval`), unless `admit` approved it.
    pub fn take_admissions(&mut self) -> Vec<(String, Vec<ValidKeyPackage>)> {
        let requests = std::mem::take(&mut self.admissions);
        let now = self.now_s();
        let mut per_channel: std::collections::BTreeMap<String, Vec<ValidKeyPackage>> = Default::default();
        let mut present: std::collections::BTreeMap<String, Vec<[u8; 32]>> = Default::default();
        for super::approval::Admission {
            channel: name,
            invite: invite_id,
            kp,
            raw,
            approved,
        } in requests
        {
            if !present.contains_key(&name) {
                let Ok(group) = self.load_group(&name) else {
                    continue;
                };
                present.insert(name.clone(), group.members().iter().map(|m| m.identity_key).collect());
            }
            let seen = present.entry(name.clone()).or_default();
            if seen.contains(&kp.member.identity_key) {
                continue;
            }
            // Admitting is adding: a member who is no longer allowed to (an admin no
            // more) does not admit what its invites bring.
            let (may_add, channel_approves) = match self.load_group(&name) {
                Ok(g) => (
                    g.allows(&self.identity.public_key(), Act::Add),
                    g.roles().is_some_and(|r| r.approve),
                ),
                Err(_) => (false, false),
            };
            let Some(ch) = self.state.channels.get_mut(&name) else {
                continue;
            };
            let Some(inv) = ch.invites.iter_mut().find(|i| i.mailbox.id() == invite_id) else {
                continue;
            };
            if !may_add {
                self.warn(
                    Some(&name),
                    format!("refused {}: only an admin may admit members here", kp.member.name),
                );
                continue;
            }
            // An invite admits a person once: the same request again is a replay (by a
            // relay, after that person left or was removed), not a new wish to join.
            if inv.admitted.contains(&kp.member.identity_key) {
                self.warn(
                    Some(&name),
                    format!(
                        "refused {}: the invite had already admitted them once (a repeated join request)",
                        kp.member.name
                    ),
                );
                continue;
            }
            if inv.expires_at <= now {
                self.warn(
                    Some(&name),
                    format!("refused {}: the invite had expired", kp.member.name),
                );
                continue;
            }
            if inv.uses_left == 0 {
                self.warn(
                    Some(&name),
                    format!("refused {}: the invite was used up", kp.member.name),
                );
                continue;
            }
            // Approval: the joiner waits for `admit` (or `refuse`); nothing is used yet.
            if !approved && (channel_approves || self.state.approvals.invites.contains(&invite_id.0)) {
                let waiting = &mut self.state.approvals.waiting;
                if !waiting
                    .iter()
                    .any(|w| w.channel == name && w.identity_key == kp.member.identity_key)
                {
                    waiting.push(crate::state::Waiting {
                        channel: name.clone(),
                        invite: invite_id.0,
                        key_package: raw,
                        name: kp.member.name.clone(),
                        identity_key: kp.member.identity_key,
                        since: now,
                    });
                    self.warn(
                        Some(&name),
                        format!(
                            "{} ({}) asks to join and waits for approval: `backchannel admit {name} {}` or `backchannel refuse {name} {}`",
                            kp.member.name, kp.member.fingerprint, kp.member.fingerprint, kp.member.fingerprint
                        ),
                    );
                }
                continue;
            }
            inv.uses_left -= 1;
            inv.admitted.push(kp.member.identity_key);
            if approved {
                let key = kp.member.identity_key;
                self.state
                    .approvals
                    .waiting
                    .retain(|w| !(w.channel == name && w.identity_key == key));
            }
            seen.push(kp.member.identity_key);
            per_channel.entry(name).or_default().push(kp);
        }
        per_channel.into_iter().collect()
    }
}

impl Session {
    /// After a commit read here: if it moved the channel's sequencer and we held the old
    /// one (we made it), that one is retired: deleted at its relay after [`RETIRED_GRACE`].
    pub(crate) fn sequencer_moved(&mut self, name: &str, group: &Channel) {
        let Ok(info) = group.info() else {
            return;
        };
        let now = self.now_s();
        let Some(ch) = self.state.channels.get_mut(name) else {
            return;
        };
        if ch.sequencer.as_ref().is_some_and(|s| s.address != info.sequencer) {
            // Kept as long as a retired mailbox, for the commits it holds, then deleted.
            if let Some(old) = ch.sequencer.take() {
                ch.retired.push(RetiredMailbox {
                    keys: old,
                    until: now.saturating_add(RETIRED_GRACE.as_secs()),
                });
            }
        }
    }
}

//! Trails: what tells a member that one of another member's messages is missing, came
//! out of order, or was sealed before a removal that member has seen (docs/protocol.md,
//! "Trails"). Every application message and commit sealed here carries this member's
//! [`Trail`] (how many messages it sent before, and the digest of the last) in its MLS
//! authenticated data; reading another member's, the session keeps a [`SenderTrail`] per
//! sender and says what does not add up.
//!
//! A relay can withhold, drop or reorder envelopes, not change what MLS authenticates:
//! - a message whose count is past the next one expected shows that those between are
//!   missing ("a message from bob is missing"), until they arrive;
//! - a sender's last messages are missed at its next commit (a weekly key update at
//!   the latest), whose trail counts them;
//! - a message sealed in an epoch before a removal read here is flagged: the removed
//!   member could read it (a relay withheld the removal from its sender).

use std::collections::BTreeSet;

use backchannel_core::channel::{Channel, MemberInfo};
use backchannel_core::message::{AppMessage, Trail};

use super::{hex, Session};
use crate::state::{EventKind, SenderTrail, StoredMessage};
use crate::ClientError;

/// Most missing messages tracked per sender (the latest); a larger gap is still reported
/// with its size.
pub const MAX_MISSING: usize = 256;

/// Removals remembered per channel to flag messages sealed before them.
pub const REMOVALS_KEPT: usize = 16;

/// "a message" or "3 messages".
fn messages(n: u64) -> String {
    if n == 1 {
        "a message".into()
    } else {
        format!("{n} messages")
    }
}

/// The id of the event that reports the gap `[from, to)` in a sender's trail.
fn gap_id(sender: &[u8; 32], from: u64, to: u64) -> String {
    format!("missing-{}-{from}-{to}", hex(&sender[..8]))
}

impl Session {
    /// The trail the next message or commit sealed in `name` carries.
    fn outgoing_trail(&self, name: &str) -> Result<Trail, ClientError> {
        let t = &self.channel(name)?.trails;
        Ok(Trail {
            count: t.sent,
            last: t.sent_last,
        })
    }

    /// Sets our trail on the commit about to be made in `name`.
    pub(super) fn trail_commit(&self, name: &str, group: &mut Channel) -> Result<(), ClientError> {
        group.set_trail(&self.outgoing_trail(name)?);
        Ok(())
    }

    /// Seals an application message in `name` with our trail, and counts it. The caller
    /// saves the state with the sealed message (the count and the outbox go together).
    pub(super) fn seal_app(
        &mut self,
        name: &str,
        group: &mut Channel,
        msg: &AppMessage,
    ) -> Result<Vec<u8>, ClientError> {
        let bytes = msg.to_bytes();
        group.set_trail(&self.outgoing_trail(name)?);
        let ct = group
            .encrypt(&self.provider, &self.identity, &bytes)
            .map_err(ClientError::protocol)?;
        if let Some(ch) = self.state.channels.get_mut(name) {
            ch.trails.sent = ch.trails.sent.saturating_add(1);
            ch.trails.sent_last = Trail::digest(&bytes);
        }
        Ok(ct)
    }

    /// Reads the trail of an application message from `sender` (already accepted by
    /// MLS and the replay filter): reports a gap before it, its arrival when it fills
    /// one, and a count or digest that does not follow (a copied device).
    pub(super) fn read_trail(&mut self, name: &str, sender: &MemberInfo, trail: Option<Trail>, plaintext: &[u8]) {
        let Some(t) = trail else {
            return;
        };
        let key = sender.identity_key;
        let Some(ch) = self.state.channels.get_mut(name) else {
            return;
        };
        // The first message read from a sender starts its trail here (we may have joined
        // after its earlier ones).
        let log = ch.trails.read.entry(key).or_insert_with(|| SenderTrail {
            next: t.count,
            last: t.last,
            missing: BTreeSet::new(),
        });
        let digest = Trail::digest(plaintext);
        if t.count == log.next {
            let forked = t.last != log.last;
            log.next = t.count.saturating_add(1);
            log.last = digest;
            if forked {
                self.warn(
                    Some(name),
                    format!(
                        "a message from {} does not follow the one before it: their device may have been copied",
                        sender.name
                    ),
                );
            }
        } else if t.count > log.next {
            let (from, to) = (log.next, t.count);
            track_missing(&mut log.missing, from, to);
            log.next = t.count.saturating_add(1);
            log.last = digest;
            self.report_gap(name, sender, from, to);
        } else if log.missing.remove(&t.count) {
            self.gap_filled(name, sender, t.count);
        } else {
            self.warn(
                Some(name),
                format!(
                    "a message from {} repeats the number of an earlier one: their device may have been copied",
                    sender.name
                ),
            );
        }
    }

    /// Reads the trail of a commit by `committer`: it counts the messages the committer
    /// had sent, so the last ones withheld are missed here now.
    pub(super) fn read_commit_trail(&mut self, name: &str, committer: &MemberInfo, trail: Option<Trail>) {
        let Some(t) = trail else {
            return;
        };
        let Some(ch) = self.state.channels.get_mut(name) else {
            return;
        };
        let log = ch
            .trails
            .read
            .entry(committer.identity_key)
            .or_insert_with(|| SenderTrail {
                next: t.count,
                last: t.last,
                missing: BTreeSet::new(),
            });
        if t.count > log.next {
            let (from, to) = (log.next, t.count);
            track_missing(&mut log.missing, from, to);
            log.next = t.count;
            log.last = t.last;
            self.report_gap(name, committer, from, to);
        }
    }

    /// A commit read or made here changed who is in `name`: a member who joins starts a
    /// new trail, one who left ends theirs, and a removal is remembered from `epoch` on
    /// (the first epoch without them) and makes our mailbox due to rotate.
    pub(super) fn trails_after_commit(&mut self, name: &str, added: &[MemberInfo], removed: &[MemberInfo], epoch: u64) {
        let Some(ch) = self.state.channels.get_mut(name) else {
            return;
        };
        for m in added.iter().chain(removed) {
            ch.trails.read.remove(&m.identity_key);
        }
        if !removed.is_empty() {
            // The removed member knew our mailbox's send capability: it is rotated at the
            // next sync, so what it could send to us dies with its membership (the old one
            // is read for RETIRED_GRACE more, then deleted).
            ch.mailbox_since = 0;
            let removals = &mut ch.trails.removals;
            if removals.len() >= REMOVALS_KEPT {
                removals.remove(0);
            }
            removals.push((epoch, removed.iter().map(|m| m.name.clone()).collect()));
        }
    }

    /// Flags a message from `sender` sealed in `epoch` if a removal read here came
    /// after that epoch: the removed member could read it.
    pub(super) fn flag_sealed_before_removal(&mut self, name: &str, sender: &MemberInfo, epoch: u64) {
        let Some(ch) = self.state.channels.get(name) else {
            return;
        };
        let mut who: Vec<String> = Vec::new();
        for (since, names) in &ch.trails.removals {
            if epoch < *since {
                who.extend(names.iter().filter(|n| !who.contains(n)).cloned().collect::<Vec<_>>());
            }
        }
        if who.is_empty() {
            return;
        }
        let (names, verb) = match who.len() {
            1 => (who.join(""), "was"),
            _ => (who.join(", "), "were"),
        };
        self.event(
            name,
            EventKind::Exposed,
            format!(
                "{} sealed the message above before {names} {verb} removed: {names} could read it",
                sender.name
            ),
        );
    }

    /// Adds the event for messages `[from, to)` of `sender` that have not arrived.
    fn report_gap(&mut self, name: &str, sender: &MemberInfo, from: u64, to: u64) {
        let n = to.saturating_sub(from);
        let (verb, text) = if n == 1 {
            ("is", messages(1))
        } else {
            ("are", messages(n))
        };
        self.event_with_id(
            name,
            EventKind::Missing,
            gap_id(&sender.identity_key, from, to),
            sender.identity_key,
            format!("{text} from {} {verb} missing", sender.name),
        );
        self.tell(
            Some(name),
            format!(
                "{text} from {} {verb} missing: a relay may be withholding it",
                sender.name
            ),
        );
    }

    /// Message `count` of `sender` arrived after a later one: once every message of its
    /// gap is in, the gap's event says so.
    fn gap_filled(&mut self, name: &str, sender: &MemberInfo, count: u64) {
        let prefix = format!("missing-{}-", hex(&sender.identity_key[..8]));
        let Some(ch) = self.state.channels.get_mut(name) else {
            return;
        };
        let Some(log) = ch.trails.read.get(&sender.identity_key) else {
            return;
        };
        let range_of = |m: &StoredMessage| {
            let r = m.id.strip_prefix(&prefix)?;
            let (a, b) = r.split_once('-')?;
            Some(a.parse::<u64>().ok()?..b.parse::<u64>().ok()?)
        };
        let filled = |m: &StoredMessage| {
            m.event == Some(EventKind::Missing)
                && range_of(m).is_some_and(|r| r.contains(&count) && !log.missing.iter().any(|c| r.contains(c)))
        };
        let said = |m: &mut StoredMessage| {
            let n = range_of(m).map_or(1, |r| r.end - r.start);
            m.text = if n == 1 {
                format!(
                    "the message from {} that was missing arrived, out of order",
                    sender.name
                )
            } else {
                format!(
                    "the {n} messages from {} that were missing arrived, out of order",
                    sender.name
                )
            };
        };
        // The gap's event may be sealed away by now (a message carried by hand can come
        // days later): the log finds it there. If it cannot be read now, the event keeps
        // its first text.
        let _ = ch.history.update(&mut self.blobs, filled, said);
    }
}

/// Records counts `[from, to)` as missing, keeping the latest [`MAX_MISSING`].
fn track_missing(missing: &mut BTreeSet<u64>, from: u64, to: u64) {
    let start = from.max(to.saturating_sub(MAX_MISSING as u64));
    missing.extend(start..to);
    while missing.len() > MAX_MISSING {
        missing.pop_first();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sender's trail can claim any count (it comes from a member, maybe a hostile one):
    /// what a reader keeps of a gap stays bounded, and is the latest counts.
    #[test]
    fn a_huge_gap_keeps_only_the_latest_missing_counts() {
        let mut missing = BTreeSet::new();
        track_missing(&mut missing, 3, 5);
        assert_eq!(missing.iter().copied().collect::<Vec<_>>(), [3, 4]);
        track_missing(&mut missing, 6, u64::MAX);
        assert_eq!(missing.len(), MAX_MISSING);
        assert_eq!(missing.last(), Some(&(u64::MAX - 1)));
        assert!(!missing.contains(&3));
    }
}

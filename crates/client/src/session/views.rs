//! What the user is shown: a channel's messages, the channels, the members, a
//! safety number. Reading marks messages read; confirming a safety number marks a
//! member verified.

use backchannel_core::channel::MemberInfo;
use backchannel_core::identity::Fingerprint;
use backchannel_core::safety_number::safety_number;

use super::files::FileView;
use super::Session;
use crate::state::{ChannelStatus, StoredMessage};
use crate::ClientError;

/// A member as `members` shows it.
#[derive(Debug, Clone)]
pub struct MemberView {
    /// Display name.
    pub name: String,
    /// Fingerprint.
    pub fingerprint: Fingerprint,
    /// Identity key.
    pub identity_key: [u8; 32],
    /// Verified by this member.
    pub verified: bool,
    /// This is us.
    pub you: bool,
    /// An admin of the channel (every member is, in a channel made before roles).
    pub admin: bool,
    /// The relay the member's mailbox lives on (where messages to them go).
    pub relay: Option<backchannel_core::relay_address::RelayAddress>,
}

/// A channel as `channels` shows it.
#[derive(Debug, Clone)]
pub struct ChannelSummary {
    /// Local name.
    pub name: String,
    /// Status.
    pub status: ChannelStatus,
    /// Members (0 when not active).
    pub members: usize,
    /// Unread messages.
    pub unread: usize,
    /// Messages disappear this many seconds after they were sent (0: never).
    pub disappear_after: u64,
    /// The channel closes on its own at this time (Unix s; 0: never).
    pub expires_at: u64,
    /// When its newest message or event was sent (Unix ms; 0 for none), to show the most
    /// recent channel first. From the history's tail, or else (all of it sealed) a lower
    /// bound: its newest segment's oldest date.
    pub last_at: u64,
}

/// A message as `read` shows it.
#[derive(Debug, Clone)]
pub struct MessageView {
    /// Channel.
    pub channel: String,
    /// The stored message or event.
    pub message: StoredMessage,
    /// Whether its sender is verified.
    pub verified: bool,
    /// Fingerprint of the sender.
    pub from_fingerprint: Fingerprint,
    /// The file it offers, for a file received in the channel.
    pub file: Option<FileView>,
}

impl Session {
    /// The entries of `name`'s history from position `from` on (0: all that are kept), and
    /// the positions the history now spans (its oldest kept entry's to the one after its
    /// last): what a view that stays open appends, marking nothing read and writing
    /// nothing. A start past what the view shows means entries went (disappearing messages).
    pub fn history_from(&self, name: &str, from: u64) -> Result<(Vec<MessageView>, std::ops::Range<u64>), ClientError> {
        let ch = self.channel(name)?;
        let entries = ch.history.entries_from(from, &self.blobs)?;
        let views = entries.into_iter().map(|m| self.message_view(name, m)).collect();
        let end = ch.history.end();
        Ok((views, end.saturating_sub(ch.history.len())..end))
    }

    /// A stored message of channel `name` as it is shown: a sender is verified only if it
    /// is us or a member we verified, and an event never is.
    fn message_view(&self, name: &str, m: StoredMessage) -> MessageView {
        let me = self.identity.public_key();
        let verified = m.event.is_none()
            && (m.from_key == me || self.channel(name).is_ok_and(|ch| ch.verified.contains(&m.from_key)));
        MessageView {
            channel: name.to_string(),
            verified,
            from_fingerprint: Fingerprint::of(&m.from_key),
            file: self.file_view(name, &m.id),
            message: m,
        }
    }

    /// Messages of a channel: unread ones, or all.
    pub fn read(&mut self, name: &str, all: bool) -> Result<Vec<MessageView>, ClientError> {
        let ch = self.channel(name)?;
        let entries = if all {
            ch.history.entries_from(0, &self.blobs)?
        } else {
            ch.history.unread_entries(&self.blobs)?
        };
        let out: Vec<MessageView> = entries.into_iter().map(|m| self.message_view(name, m)).collect();
        if !out.is_empty() {
            if let Some(ch) = self.state.channels.get_mut(name) {
                ch.history.mark_read();
            }
            self.save();
        }
        Ok(out)
    }

    /// Our channels.
    pub fn channels(&self) -> Vec<ChannelSummary> {
        self.state
            .channels
            .iter()
            .map(|(name, ch)| ChannelSummary {
                name: name.clone(),
                status: ch.status,
                members: if ch.status == ChannelStatus::Active {
                    self.load_group(name).map(|g| g.members().len()).unwrap_or(0)
                } else {
                    0
                },
                unread: ch.history.unread() as usize,
                disappear_after: ch.disappear_after,
                expires_at: if ch.status == ChannelStatus::Active {
                    ch.expires_at
                } else {
                    0
                },
                last_at: ch.history.last_at(),
            })
            .collect()
    }

    /// Members of a channel.
    pub fn members(&self, name: &str) -> Result<Vec<MemberView>, ClientError> {
        let ch = self.active(name)?;
        let me = self.identity.public_key();
        let group = self.load_group(name)?;
        let roles = group.roles();
        Ok(group
            .members()
            .into_iter()
            .map(|m| MemberView {
                admin: roles.as_ref().is_none_or(|r| r.is_admin(&m.identity_key)),
                relay: m.mailbox.as_ref().map(|a| a.relay.clone()),
                verified: m.identity_key == me || ch.verified.contains(&m.identity_key),
                you: m.identity_key == me,
                name: m.name,
                fingerprint: m.fingerprint,
                identity_key: m.identity_key,
            })
            .collect())
    }

    pub(crate) fn find_member(&self, name: &str, who: &str) -> Result<MemberInfo, ClientError> {
        let group = self.load_group(name)?;
        let needle: String = who
            .chars()
            .filter(|c| !c.is_whitespace())
            .collect::<String>()
            .to_lowercase();
        let matches: Vec<MemberInfo> = group
            .members()
            .into_iter()
            .filter(|m| {
                m.name == who || (needle.len() >= 4 && m.fingerprint.to_string().replace(' ', "").starts_with(&needle))
            })
            .collect();
        match matches.len() {
            0 => Err(ClientError::UnknownMember(name.to_string(), who.to_string())),
            1 => Ok(matches
                .into_iter()
                .next()
                .ok_or_else(|| ClientError::UnknownMember(name.into(), who.into()))?),
            _ => Err(ClientError::AmbiguousMember(name.to_string(), who.to_string())),
        }
    }

    /// The channel's epoch and channel code, which every member in that epoch sees alike.
    pub fn channel_code(&self, name: &str) -> Result<(u64, String), ClientError> {
        self.active(name)?;
        let group = self.load_group(name)?;
        Ok((group.epoch(), group.channel_code()))
    }

    /// The safety number with a member; with `confirm`, marks them verified.
    pub fn verify(&mut self, name: &str, who: &str, confirm: bool) -> Result<(String, MemberView), ClientError> {
        self.active(name)?;
        let m = self.find_member(name, who)?;
        let number = safety_number(&self.identity.public_key(), &m.identity_key);
        if confirm {
            if let Some(ch) = self.state.channels.get_mut(name) {
                ch.verified.insert(m.identity_key);
            }
            self.save();
        }
        let verified = self.channel(name)?.verified.contains(&m.identity_key);
        let admin = self
            .load_group(name)?
            .roles()
            .is_none_or(|r| r.is_admin(&m.identity_key));
        Ok((
            number,
            MemberView {
                name: m.name,
                fingerprint: m.fingerprint,
                identity_key: m.identity_key,
                verified,
                you: m.identity_key == self.identity.public_key(),
                admin,
                relay: m.mailbox.map(|a| a.relay),
            },
        ))
    }
}

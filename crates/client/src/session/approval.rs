//! Approval of joiners (`invite --approve`, `channel new --approve`; docs/protocol.md,
//! "Approval"): a join request that an invite honours waits in [`State::approvals`] until
//! someone the channel's roles allow to add members admits it (`admit`) or refuses it
//! (`refuse`). Until then it takes none of the invite's uses.
//!
//! [`State::approvals`]: crate::state::State::approvals

use backchannel_core::channel::{validate_key_package, ValidKeyPackage};
use backchannel_core::identity::Fingerprint;
use backchannel_core::mailbox::MailboxId;
use backchannel_core::roles::Act;

use super::Session;
use crate::state::Waiting;
use crate::ClientError;

/// A join request read, on its way to [`Session::take_admissions`].
pub(crate) struct Admission {
    /// The channel's local name.
    pub channel: String,
    /// The invite mailbox it came to.
    pub invite: MailboxId,
    /// The validated key package.
    pub kp: ValidKeyPackage,
    /// Its bytes, kept if the joiner must wait.
    pub raw: Vec<u8>,
    /// Admitted by `admit`: it waits no more.
    pub approved: bool,
}

/// A joiner waiting, as `pending` shows it.
#[derive(Debug, Clone)]
pub struct WaitingView {
    /// The name it chose (from the network: escape it).
    pub name: String,
    /// Its fingerprint.
    pub fingerprint: Fingerprint,
    /// When its request arrived (Unix seconds).
    pub since: u64,
}

impl Session {
    /// Joiners of the invite whose mailbox is `invite` will wait for approval.
    pub fn require_approval(&mut self, invite: MailboxId) {
        self.state.approvals.invites.insert(invite.0);
        self.save();
    }

    /// The joiners waiting to join `channel`, oldest first.
    pub fn waiting(&self, channel: &str) -> Result<Vec<WaitingView>, ClientError> {
        self.active(channel)?;
        Ok(self
            .state
            .approvals
            .waiting
            .iter()
            .filter(|w| w.channel == channel)
            .map(|w| WaitingView {
                name: w.name.clone(),
                fingerprint: Fingerprint::of(&w.identity_key),
                since: w.since,
            })
            .collect())
    }

    /// Admits the joiner `who` (a name, or the start of a fingerprint) waiting to join
    /// `channel`: its request goes to the next admission, as if no approval were asked (it
    /// leaves the waiting list there, once the invite still honours it). Returns its name
    /// and identity key.
    pub fn approve(&mut self, channel: &str, who: &str) -> Result<(String, [u8; 32]), ClientError> {
        self.may(channel, Act::Add, "admit")?;
        let i = self.find_waiting(channel, who)?;
        let w = self.state.approvals.waiting[i].clone();
        let kp = validate_key_package(&self.provider, &w.key_package).map_err(ClientError::protocol)?;
        self.admissions.push(Admission {
            channel: w.channel,
            invite: MailboxId(w.invite),
            kp,
            raw: w.key_package,
            approved: true,
        });
        Ok((w.name, w.identity_key))
    }

    /// Refuses the joiner `who` waiting to join `channel`; returns its name. It is not
    /// told: its request goes unanswered, and its client gives up a day after the invite
    /// expires.
    pub fn refuse(&mut self, channel: &str, who: &str) -> Result<String, ClientError> {
        self.may(channel, Act::Add, "refuse joiners")?;
        let i = self.find_waiting(channel, who)?;
        let w = self.state.approvals.waiting.remove(i);
        self.save();
        Ok(w.name)
    }

    /// The one waiting joiner of `channel` that `who` names (its place in the list): its
    /// name, unless that name is also another waiting joiner's or a member's, or the start
    /// of its fingerprint (hex, spaces ignored).
    fn find_waiting(&self, channel: &str, who: &str) -> Result<usize, ClientError> {
        self.active(channel)?;
        let prefix: String = who
            .chars()
            .filter(|c| !c.is_whitespace())
            .collect::<String>()
            .to_ascii_lowercase();
        let fingerprint_of = |w: &Waiting| Fingerprint::of(&w.identity_key).to_string().replace(' ', "");
        let waiting: Vec<usize> = (0..self.state.approvals.waiting.len())
            .filter(|&i| self.state.approvals.waiting[i].channel == channel)
            .collect();
        let by_name: Vec<usize> = waiting
            .iter()
            .copied()
            .filter(|&i| self.state.approvals.waiting[i].name == who)
            .collect();
        let member_named = self.members(channel)?.iter().any(|m| m.name == who);
        let chosen = match by_name.as_slice() {
            [one] if !member_named => *one,
            [] => {
                let by_fp: Vec<usize> = if prefix.len() >= 4 && prefix.chars().all(|c| c.is_ascii_hexdigit()) {
                    waiting
                        .iter()
                        .copied()
                        .filter(|&i| fingerprint_of(&self.state.approvals.waiting[i]).starts_with(&prefix))
                        .collect()
                } else {
                    Vec::new()
                };
                match by_fp.as_slice() {
                    [one] => *one,
                    [] => {
                        return Err(ClientError::Usage(format!(
                            "nobody called \"{who}\" waits to join {channel}; `backchannel pending {channel}` lists who does"
                        )))
                    }
                    _ => {
                        return Err(ClientError::Usage(format!(
                            "\"{who}\" is the start of more than one waiting joiner's fingerprint; give more of it"
                        )))
                    }
                }
            }
            _ => {
                return Err(ClientError::Usage(format!(
                    "\"{who}\" names more than one person (waiting to join {channel}, or already in it); give the fingerprint that `backchannel pending {channel}` shows instead"
                )))
            }
        };
        Ok(chosen)
    }
}

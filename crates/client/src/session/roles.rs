//! Roles in a channel (docs/protocol.md, "Roles"; the rule is `backchannel_core::roles`):
//! what this member may do, checked before it makes a change the others would refuse,
//! and the events a change of roles leaves in the history.

use backchannel_core::channel::{Channel, MemberInfo};
use backchannel_core::roles::{Act, Roles};

use super::Session;
use crate::state::EventKind;
use crate::ClientError;

impl Session {
    /// Whether we may do `act` in `name`; the error says who may when we may not.
    pub(crate) fn may(&self, name: &str, act: Act, what: &str) -> Result<(), ClientError> {
        let group = self.load_group(name)?;
        if group.allows(&self.identity.public_key(), act) {
            return Ok(());
        }
        Err(ClientError::NotAllowed {
            channel: name.to_string(),
            what: what.to_string(),
        })
    }

    /// The roles `name` would have with `who` made an admin (or, with `revoke`, no longer
    /// one); `None` when nothing would change. Refused unless we are an admin, and for
    /// the last admin's own revocation.
    pub(crate) fn roles_with(&self, name: &str, who: &MemberInfo, revoke: bool) -> Result<Option<Roles>, ClientError> {
        self.may(name, Act::ChangeChannel, "make or unmake admins")?;
        let group = self.load_group(name)?;
        let Some(roles) = group.roles() else {
            return Err(ClientError::Usage(format!(
                "\"{name}\" was made by an earlier release and has no roles: every member may do everything"
            )));
        };
        if roles.is_admin(&who.identity_key) != revoke {
            return Ok(None);
        }
        let next = roles.with_admin(who.identity_key, !revoke);
        if !admins_among(&next, &group.members()) {
            return Err(ClientError::Usage(format!(
                "{} is the last admin of \"{name}\": make another member an admin first",
                who.name
            )));
        }
        Ok(Some(next))
    }

    /// Leaving `name` is refused to its last admin while others stay: nobody could then
    /// remove, invite or close. They name another admin first, or close the channel.
    pub(crate) fn may_leave(&self, name: &str) -> Result<(), ClientError> {
        let group = self.load_group(name)?;
        let Some(roles) = group.roles() else {
            return Ok(());
        };
        let me = self.identity.public_key();
        let others: Vec<MemberInfo> = group.members().into_iter().filter(|m| m.identity_key != me).collect();
        if others.is_empty() || !roles.is_admin(&me) || admins_among(&roles, &others) {
            return Ok(());
        }
        Err(ClientError::Usage(format!(
            "you are the last admin of \"{name}\": make another member an admin first \
             (`backchannel admin {name} MEMBER`), or close the channel for everyone (`backchannel close {name}`)"
        )))
    }

    /// Events for the roles a commit changed in `name` (read or made here), by `by`.
    pub(crate) fn roles_changed(&mut self, name: &str, before: Option<Roles>, group: &Channel, by: &str) {
        let (Some(before), Some(after)) = (before, group.roles()) else {
            return;
        };
        if before == after {
            return;
        }
        let me = self.identity.public_key();
        for m in group.members() {
            let whom = if m.identity_key == me {
                "you".to_string()
            } else {
                m.name.clone()
            };
            match (before.is_admin(&m.identity_key), after.is_admin(&m.identity_key)) {
                (false, true) => self.event(name, EventKind::Role, format!("{by} made {whom} an admin")),
                (true, false) => {
                    let text = if m.identity_key == me {
                        format!("{by} revoked your admin role")
                    } else {
                        format!("{by} revoked {whom}'s admin role")
                    };
                    self.event(name, EventKind::Role, text)
                }
                _ => {}
            }
        }
    }
}

/// Whether one of `members` is an admin under `roles`.
fn admins_among(roles: &Roles, members: &[MemberInfo]) -> bool {
    members.iter().any(|m| roles.is_admin(&m.identity_key))
}

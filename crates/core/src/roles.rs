//! Roles in a channel: who may do what (docs/protocol.md, "Roles").
//!
//! A channel made by this release carries its roles in a group-context extension
//! ([`ROLES_EXTENSION`]): the identity keys of its admins, and whether members who are not
//! admins may invite. Admins may invite and admit, remove others, close the channel, change
//! it and make or unmake admins; every member may leave and update its own keys. The rule is
//! [`Roles::allows`], checked by every member on every proposal and commit it reads
//! (`Channel::process`) and by the client before it makes one. A channel made before roles
//! has no such extension: [`Roles::allows`] is given `None`, and every member may do
//! everything, as before.
//!
//! ```text
//! roles = version (1) = 1 | flags (1: bit 0 = members may invite, bit 1 = joiners wait
//!         for approval) | count (u16)
//!       | admin identity keys (32 each, ascending, no repeats, at least one)
//! ```
//!
//! Bit 1 (`channel new --approve`) came after the first release of roles: a client from
//! before it refuses a channel that sets it (an unknown flag), so only a channel made with
//! `--approve` needs every member on a release that knows it.

use crate::codec::{DecodeError, Reader, Writer};

/// Group-context extension type of a channel's roles.
pub const ROLES_EXTENSION: u16 = 0xff0d;

/// Most admins a channel lists (bounds what a hostile commit can make members parse).
pub const MAX_ADMINS: usize = 1024;

/// Who may do what in a channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Roles {
    /// Identity keys of the admins (ascending, distinct).
    admins: Vec<[u8; 32]>,
    /// Members who are not admins may invite (and admit whom their invites bring).
    pub members_invite: bool,
    /// Whoever an invite brings waits until the inviter admits it (`pending`, `admit`,
    /// `refuse`), whatever the invite says.
    pub approve: bool,
}

/// What a proposal or commit does, as the roles see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Act {
    /// Add a member (and so invite: an invite's joiner is added by its inviter).
    Add,
    /// Remove another member.
    RemoveOther,
    /// Remove oneself.
    Leave,
    /// Update one's own keys (and mailbox).
    Update,
    /// Change the channel's group context: its roles, or anything else it holds.
    ChangeChannel,
    /// Close the channel for everyone.
    Close,
    /// Anything else MLS allows (pre-shared keys, re-initialization, external joins),
    /// which backchannel never makes.
    Other,
}

impl Roles {
    /// The roles of a new channel: its creator is the one admin.
    pub fn new(creator: [u8; 32], members_invite: bool) -> Self {
        Self {
            admins: vec![creator],
            members_invite,
            approve: false,
        }
    }

    /// These roles, with joiners waiting for approval or not.
    pub fn with_approval(self, approve: bool) -> Self {
        Self { approve, ..self }
    }

    /// The admins' identity keys, ascending.
    pub fn admins(&self) -> &[[u8; 32]] {
        &self.admins
    }

    /// Whether `key` is an admin's.
    pub fn is_admin(&self, key: &[u8; 32]) -> bool {
        self.admins.binary_search(key).is_ok()
    }

    /// These roles with `key` made an admin (`true`) or no longer one.
    pub fn with_admin(&self, key: [u8; 32], admin: bool) -> Self {
        let mut admins = self.admins.clone();
        match (admins.binary_search(&key), admin) {
            (Err(at), true) => admins.insert(at, key),
            (Ok(at), false) => {
                admins.remove(at);
            }
            _ => {}
        }
        Self {
            admins,
            members_invite: self.members_invite,
            approve: self.approve,
        }
    }

    /// Whether the member whose identity key is `who` may do `act` in a channel with
    /// `roles` (`None`: a channel from before roles, where everyone may do everything MLS
    /// allows backchannel to make).
    pub fn allows(roles: Option<&Roles>, who: &[u8; 32], act: Act) -> bool {
        match (roles, act) {
            (_, Act::Other) => false,
            (_, Act::Leave | Act::Update) => true,
            (None, _) => true,
            (Some(r), Act::Add) => r.members_invite || r.is_admin(who),
            (Some(r), Act::RemoveOther | Act::ChangeChannel | Act::Close) => r.is_admin(who),
        }
    }

    /// Binary form.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut w = Writer::new();
        let flags = u8::from(self.members_invite) | (u8::from(self.approve) << 1);
        w.u8(1).u8(flags).u16(self.admins.len() as u16);
        for a in &self.admins {
            w.put(a);
        }
        w.into_vec()
    }

    /// Parses the binary form (from a commit or a welcome: attacker input). One encoding
    /// per value: admins ascending without repeats, at least one, no unknown flag.
    pub fn from_bytes(b: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(b);
        if r.u8()? != 1 {
            return Err(DecodeError::Invalid("roles version"));
        }
        let flags = r.u8()?;
        if flags > 3 {
            return Err(DecodeError::Invalid("roles flags"));
        }
        let count = usize::from(r.u16()?);
        if count == 0 || count > MAX_ADMINS {
            return Err(DecodeError::Invalid("roles admin count"));
        }
        let mut admins: Vec<[u8; 32]> = Vec::with_capacity(count);
        for _ in 0..count {
            let key: [u8; 32] = r.array()?;
            if admins.last().is_some_and(|last| *last >= key) {
                return Err(DecodeError::Invalid("roles admin order"));
            }
            admins.push(key);
        }
        r.finish()?;
        Ok(Self {
            admins,
            members_invite: flags & 1 != 0,
            approve: flags & 2 != 0,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn admins_may_do_everything_members_only_leave_update_and_invite_where_allowed() {
        let (ada, bob) = ([1; 32], [2; 32]);
        let roles = Roles::new(ada, false);
        for act in [
            Act::Add,
            Act::RemoveOther,
            Act::Leave,
            Act::Update,
            Act::ChangeChannel,
            Act::Close,
        ] {
            assert!(Roles::allows(Some(&roles), &ada, act), "{act:?}");
            assert!(Roles::allows(None, &bob, act), "{act:?} before roles");
        }
        for act in [Act::Add, Act::RemoveOther, Act::ChangeChannel, Act::Close] {
            assert!(!Roles::allows(Some(&roles), &bob, act), "{act:?}");
        }
        for act in [Act::Leave, Act::Update] {
            assert!(Roles::allows(Some(&roles), &bob, act), "{act:?}");
        }
        let open = Roles::new(ada, true);
        assert!(Roles::allows(Some(&open), &bob, Act::Add));
        assert!(!Roles::allows(Some(&open), &bob, Act::RemoveOther));
        assert!(!Roles::allows(Some(&roles), &ada, Act::Other));
        assert!(!Roles::allows(None, &ada, Act::Other));
        let both = roles.with_admin(bob, true);
        assert!(both.is_admin(&bob) && both.is_admin(&ada));
        assert_eq!(both.with_admin(bob, false), roles);
    }

    proptest! {
        #[test]
        fn roles_round_trip(keys in proptest::collection::btree_set(any::<[u8; 32]>(), 1..20), open in any::<bool>(), approve in any::<bool>()) {
            let mut keys = keys.into_iter();
            let mut roles = Roles::new(keys.next().unwrap(), open).with_approval(approve);
            for k in keys {
                roles = roles.with_admin(k, true);
            }
            prop_assert_eq!(Roles::from_bytes(&roles.to_bytes()), Ok(roles));
        }

        #[test]
        fn garbage_never_panics_and_what_decodes_has_one_encoding(b in proptest::collection::vec(any::<u8>(), 0..200)) {
            if let Ok(r) = Roles::from_bytes(&b) {
                prop_assert_eq!(r.to_bytes(), b);
            }
        }
    }
}

//! Invites: the inviter's record of one (a mailbox where join requests arrive), and
//! the joiner's side (a join request sealed to the invite's mailbox, then a welcome
//! awaited in a mailbox of our own).

use backchannel_core::channel::{key_package, Suite};
use backchannel_core::envelope::{seal_payload, PayloadKind};
use backchannel_core::frame::Request;
use backchannel_core::identity::validate_name;
use backchannel_core::invite::Invite;
use backchannel_core::mailbox::MailboxKeys;
use backchannel_core::message::JoinRequest;
use backchannel_core::relay_address::RelayAddress;
use rand_core::OsRng;

use super::Session;
use crate::state::{InviteRecord, PendingJoin};
use crate::{ClientError, InviteProblem};

/// An invite read and checked, before our mailbox for it exists.
#[derive(Debug)]
pub struct Redeeming {
    invite: Invite,
    suite: Suite,
    local_name: Option<String>,
}

impl Redeeming {
    /// The relay where our mailbox for the channel goes (the invite's).
    pub fn relay(&self) -> &RelayAddress {
        &self.invite.mailbox.relay
    }
}

impl Session {
    /// Where an invite to `name` must be made: on our own relay (forwarding), or without it
    /// at the relay of the channel's sequencer ([`Session::place_for_ours`]).
    pub fn invite_relay(&self, name: &str) -> Result<RelayAddress, ClientError> {
        self.active(name)?;
        self.may(name, backchannel_core::roles::Act::Add, "invite")?;
        let group = self.load_group(name)?;
        Ok(self.place_for_ours(group.info().map_err(ClientError::protocol)?.sequencer.relay))
    }

    /// Records an invite to `name` whose mailbox the relay has made; returns its text.
    pub fn add_invite(
        &mut self,
        name: &str,
        mailbox: MailboxKeys,
        uses: u32,
        ttl_s: u64,
    ) -> Result<String, ClientError> {
        let group = self.load_group(name)?;
        let suite = group.suite().unwrap_or_default();
        let expires_at = self.now_s().saturating_add(ttl_s);
        let invite = Invite {
            mailbox: mailbox.address.clone(),
            expires_at,
            inviter_key: self.identity.public_key(),
            ciphersuite: suite.code(),
        };
        if let Some(ch) = self.state.channels.get_mut(name) {
            ch.invites.push(InviteRecord {
                mailbox,
                uses_left: uses,
                expires_at,
                admitted: Vec::new(),
            });
        }
        self.save();
        Ok(invite.to_text())
    }

    /// Reads and checks an invite to redeem (nothing is kept yet).
    pub fn redeem(&self, text: &str, local_name: Option<String>) -> Result<Redeeming, ClientError> {
        let invite = Invite::from_text(text).map_err(InviteProblem::from)?;
        if invite.expires_at <= self.now_s() {
            return Err(InviteProblem::Expired.into());
        }
        let Some(suite) = Suite::from_code(invite.ciphersuite) else {
            return Err(InviteProblem::UnknownSuite.into());
        };
        if let Some(n) = &local_name {
            validate_name(n).map_err(|e| ClientError::Usage(format!("channel {e}")))?;
            if self.state.channels.contains_key(n) {
                return Err(ClientError::ChannelExists(n.clone()));
            }
        }
        Ok(Redeeming {
            invite,
            suite,
            local_name,
        })
    }

    /// The join request for an invite, to be received in `mailbox`: the requests that
    /// carry it to the invite's mailbox (at [`Redeeming::relay`]).
    pub fn join_request(&self, r: &Redeeming, mailbox: &MailboxKeys) -> Result<Vec<Request>, ClientError> {
        let kp =
            key_package(&self.provider, &self.identity, &mailbox.address, r.suite).map_err(ClientError::protocol)?;
        let request = JoinRequest { key_package: kp }.to_bytes();
        let to = &r.invite.mailbox;
        let envs = seal_payload(&to.seal, &to.send, PayloadKind::JoinRequest, &request, &mut OsRng)
            .map_err(ClientError::protocol)?;
        Ok(envs
            .into_iter()
            .map(|envelope| Request::Send {
                send: to.send.0,
                pow: 0,
                envelope,
            })
            .collect())
    }

    /// The join request reached the inviter's relay: wait for the welcome in `mailbox`.
    pub fn join_sent(&mut self, r: Redeeming, mailbox: MailboxKeys) {
        self.state.pending_joins.push(PendingJoin {
            mailbox,
            inviter_key: r.invite.inviter_key,
            local_name: r.local_name,
            expires_at: r.invite.expires_at,
        });
        self.save();
    }

    /// Our channels' local names.
    pub fn channel_names(&self) -> Vec<String> {
        self.state.channels.keys().cloned().collect()
    }
}

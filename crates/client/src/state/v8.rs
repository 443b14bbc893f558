//! Layout 8 of the client state (written by releases up to commit b7cd5b1), frozen.
//!
//! Only the state itself changed since: layout 9 added its settings
//! ([`super::State::settings`], the first being `forward`), which a converted state starts
//! without (forwarding on). Every other type is the current one, unchanged since layout 8
//! (the fixture tests in `crates/backchannel/tests/formats.rs` fail if one does).

use std::collections::BTreeMap;

use backchannel_core::mailbox::MailboxKeys;
use backchannel_core::relay_address::RelayAddress;
use serde::Deserialize;

use super::{ChannelState, CourierLog, DropBox, Files, Inbox, Outbox, PendingJoin};
use crate::socks::ProxyAddr;

#[derive(Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
pub(super) struct State {
    pub(super) version: u32,
    pub(super) name: String,
    pub(super) identity_secret: [u8; 32],
    pub(super) relay: RelayAddress,
    pub(super) relay_alternates: Vec<RelayAddress>,
    pub(super) proxy: Option<ProxyAddr>,
    pub(super) cover: Vec<MailboxKeys>,
    pub(super) mls: Vec<(Vec<u8>, Vec<u8>)>,
    pub(super) channels: BTreeMap<String, ChannelState>,
    pub(super) pending_joins: Vec<PendingJoin>,
    pub(super) inbox: Inbox,
    pub(super) outbox: Outbox,
    pub(super) doomed: Vec<MailboxKeys>,
    pub(super) courier: CourierLog,
    pub(super) drops: BTreeMap<String, DropBox>,
    pub(super) files: Files,
}

impl Drop for State {
    fn drop(&mut self) {
        super::zeroize_secrets(&mut self.identity_secret, &mut self.mls);
    }
}

/// Layout 8 to the current one: everything kept, no settings.
pub(super) fn upgrade(mut s: State) -> super::State {
    let _ = s.version;
    super::State {
        version: super::STATE_VERSION,
        name: std::mem::take(&mut s.name),
        identity_secret: s.identity_secret,
        relay: s.relay.clone(),
        relay_alternates: std::mem::take(&mut s.relay_alternates),
        proxy: s.proxy.take(),
        cover: std::mem::take(&mut s.cover),
        mls: std::mem::take(&mut s.mls),
        channels: std::mem::take(&mut s.channels),
        pending_joins: std::mem::take(&mut s.pending_joins),
        inbox: std::mem::take(&mut s.inbox),
        outbox: std::mem::take(&mut s.outbox),
        doomed: std::mem::take(&mut s.doomed),
        courier: std::mem::take(&mut s.courier),
        drops: std::mem::take(&mut s.drops),
        files: std::mem::take(&mut s.files),
        settings: BTreeMap::new(),
        approvals: super::Approvals::default(),
        carried: super::Carried {
            upgraded: true,
            ..Default::default()
        },
    }
}

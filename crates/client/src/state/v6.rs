//! Layout 6 of the client state (written by releases up to commit 8ae7932), frozen.
//!
//! Only the types whose layout changed since are copied here; the others are the
//! current types, whose layout has not changed since layout 6 (the fixture tests in
//! `crates/backchannel/tests/formats.rs` fail if one does). Layout 7 added each
//! channel's [`super::Trails`], the identities an invite admitted
//! ([`super::InviteRecord::admitted`]), and when a deferred message arrived
//! ([`super::DeferredMls::arrived_at`]).

use std::collections::{BTreeMap, BTreeSet};

use backchannel_core::mailbox::MailboxKeys;
use backchannel_core::relay_address::RelayAddress;
use serde::Deserialize;

use super::v7::{self, DropBox};
use super::{
    ChannelStatus, CourierLog, Files, Outbox, PendingCommit, PendingJoin, RecentPayload, RetiredMailbox, StoredMessage,
};
use crate::socks::ProxyAddr;
use backchannel_core::envelope::Reassembler;
use std::collections::VecDeque;

#[derive(Deserialize)]
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

#[derive(Deserialize)]
pub(super) struct Inbox {
    pub(super) reassembly: BTreeMap<[u8; 32], Reassembler>,
    pub(super) deferred: Vec<DeferredMls>,
    pub(super) recent: VecDeque<RecentPayload>,
}

#[derive(Deserialize)]
pub(super) struct DeferredMls {
    pub(super) channel: String,
    pub(super) payload: Vec<u8>,
    pub(super) by_courier: bool,
}

#[derive(Deserialize)]
pub(super) struct InviteRecord {
    pub(super) mailbox: MailboxKeys,
    pub(super) uses_left: u32,
    pub(super) expires_at: u64,
}

#[derive(Deserialize)]
pub(super) struct ChannelState {
    pub(super) group_id: Vec<u8>,
    pub(super) mailbox: MailboxKeys,
    pub(super) mailbox_since: u64,
    pub(super) retired: Vec<RetiredMailbox>,
    pub(super) sequencer: Option<MailboxKeys>,
    pub(super) invites: Vec<InviteRecord>,
    pub(super) messages: Vec<StoredMessage>,
    pub(super) read_upto: usize,
    pub(super) seen: BTreeSet<[u8; 16]>,
    pub(super) verified: BTreeSet<[u8; 32]>,
    pub(super) status: ChannelStatus,
    pub(super) pending: Option<PendingCommit>,
    pub(super) disappear_after: u64,
    pub(super) expires_at: u64,
}

impl From<ChannelState> for v7::ChannelState {
    fn from(c: ChannelState) -> Self {
        Self {
            group_id: c.group_id,
            mailbox: c.mailbox,
            mailbox_since: c.mailbox_since,
            retired: c.retired,
            sequencer: c.sequencer,
            invites: c
                .invites
                .into_iter()
                .map(|i| super::InviteRecord {
                    mailbox: i.mailbox,
                    uses_left: i.uses_left,
                    expires_at: i.expires_at,
                    // Who an invite admitted before layout 7 is not known: the members
                    // present are refused anyway (`take_admissions`).
                    admitted: Vec::new(),
                })
                .collect(),
            messages: c.messages,
            read_upto: c.read_upto,
            seen: c.seen,
            verified: c.verified,
            status: c.status,
            pending: c.pending,
            disappear_after: c.disappear_after,
            expires_at: c.expires_at,
            // Trails start with the first message read from each sender.
            trails: super::Trails::default(),
        }
    }
}

/// Converts a layout-6 state to layout 7; `now` (Unix s) dates the messages it had deferred.
pub(super) fn upgrade(mut s: State, now: u64) -> v7::State {
    let _ = s.version;
    v7::State {
        version: 7,
        name: std::mem::take(&mut s.name),
        identity_secret: s.identity_secret,
        relay: s.relay.clone(),
        relay_alternates: std::mem::take(&mut s.relay_alternates),
        proxy: s.proxy.take(),
        cover: std::mem::take(&mut s.cover),
        mls: std::mem::take(&mut s.mls),
        channels: std::mem::take(&mut s.channels)
            .into_iter()
            .map(|(n, c)| (n, c.into()))
            .collect(),
        pending_joins: std::mem::take(&mut s.pending_joins),
        inbox: v7::Inbox {
            reassembly: std::mem::take(&mut s.inbox.reassembly),
            deferred: std::mem::take(&mut s.inbox.deferred)
                .into_iter()
                .map(|d| v7::DeferredMls {
                    channel: d.channel,
                    payload: d.payload,
                    by_courier: d.by_courier,
                    arrived_at: now,
                })
                .collect(),
            recent: std::mem::take(&mut s.inbox.recent),
        },
        outbox: std::mem::take(&mut s.outbox),
        doomed: std::mem::take(&mut s.doomed),
        courier: std::mem::take(&mut s.courier),
        drops: std::mem::take(&mut s.drops),
        files: std::mem::take(&mut s.files),
    }
}

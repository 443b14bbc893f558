//! Layout 5 of the client state (written by releases up to commit 94ba14f), frozen.
//!
//! Only the types whose layout changed since are copied here; the others are the
//! current types, whose layout has not changed since layout 5 (the fixture test in
//! `crates/backchannel/tests/formats.rs` fails if one does). Layout 6 changed
//! [`StoredMessage::event`] from a word to [`super::EventKind`], and grouped the
//! state's fields by the part of the session that owns them (inbox, outbox, courier,
//! files). It converts to layout 6 ([`super::v6`]), which converts to the current one.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use backchannel_core::envelope::Reassembler;
use backchannel_core::mailbox::MailboxKeys;
use backchannel_core::relay_address::RelayAddress;
use serde::Deserialize;

use super::v6::{self, DeferredMls, InviteRecord};
use super::v7::DropBox;
use super::{
    ChannelStatus, EventKind, IncomingFile, OutboxItem, OutgoingFile, PendingCommit, PendingJoin, RecentPayload,
    RetiredMailbox, UnsentMessage,
};
use crate::socks::ProxyAddr;

#[derive(Deserialize)]
pub(super) struct State {
    version: u32,
    name: String,
    identity_secret: [u8; 32],
    relay: RelayAddress,
    relay_alternates: Vec<RelayAddress>,
    mls: Vec<(Vec<u8>, Vec<u8>)>,
    channels: BTreeMap<String, ChannelState>,
    pending_joins: Vec<PendingJoin>,
    reassembly: BTreeMap<[u8; 32], Reassembler>,
    outbox: Vec<OutboxItem>,
    deferred: Vec<DeferredMls>,
    unsent: Vec<UnsentMessage>,
    proxy: Option<ProxyAddr>,
    cover: Vec<MailboxKeys>,
    doomed: Vec<MailboxKeys>,
    recent_payloads: VecDeque<RecentPayload>,
    imported_bundles: VecDeque<[u8; 16]>,
    drops: BTreeMap<String, DropBox>,
    outgoing_files: Vec<OutgoingFile>,
    incoming_files: Vec<IncomingFile>,
}

impl Drop for State {
    fn drop(&mut self) {
        super::zeroize_secrets(&mut self.identity_secret, &mut self.mls);
    }
}

#[derive(Deserialize)]
struct ChannelState {
    group_id: Vec<u8>,
    mailbox: MailboxKeys,
    mailbox_since: u64,
    retired: Vec<RetiredMailbox>,
    sequencer: Option<MailboxKeys>,
    invites: Vec<InviteRecord>,
    messages: Vec<StoredMessage>,
    read_upto: usize,
    seen: BTreeSet<[u8; 16]>,
    verified: BTreeSet<[u8; 32]>,
    status: ChannelStatus,
    pending: Option<PendingCommit>,
    disappear_after: u64,
    expires_at: u64,
}

#[derive(Deserialize)]
struct StoredMessage {
    id: String,
    from: String,
    from_key: [u8; 32],
    sent_at: u64,
    text: String,
    event: Option<String>,
}

impl From<StoredMessage> for super::StoredMessage {
    fn from(m: StoredMessage) -> Self {
        Self {
            id: m.id,
            from: m.from,
            from_key: m.from_key,
            sent_at: m.sent_at,
            text: m.text,
            // Layout 5 wrote only these four words; anything else was a refusal.
            event: m.event.map(|w| EventKind::from_word(&w).unwrap_or(EventKind::Rejected)),
        }
    }
}

impl From<ChannelState> for v6::ChannelState {
    fn from(c: ChannelState) -> Self {
        Self {
            group_id: c.group_id,
            mailbox: c.mailbox,
            mailbox_since: c.mailbox_since,
            retired: c.retired,
            sequencer: c.sequencer,
            invites: c.invites,
            messages: c.messages.into_iter().map(Into::into).collect(),
            read_upto: c.read_upto,
            seen: c.seen,
            verified: c.verified,
            status: c.status,
            pending: c.pending,
            disappear_after: c.disappear_after,
            expires_at: c.expires_at,
        }
    }
}

impl From<State> for v6::State {
    fn from(mut s: State) -> Self {
        let _ = s.version;
        Self {
            version: 6,
            name: std::mem::take(&mut s.name),
            identity_secret: s.identity_secret,
            relay: s.relay.clone(),
            relay_alternates: std::mem::take(&mut s.relay_alternates),
            mls: std::mem::take(&mut s.mls),
            channels: std::mem::take(&mut s.channels)
                .into_iter()
                .map(|(n, c)| (n, c.into()))
                .collect(),
            pending_joins: std::mem::take(&mut s.pending_joins),
            inbox: v6::Inbox {
                reassembly: std::mem::take(&mut s.reassembly),
                deferred: std::mem::take(&mut s.deferred),
                recent: std::mem::take(&mut s.recent_payloads),
            },
            outbox: super::Outbox {
                unsent: std::mem::take(&mut s.unsent),
                sealed: std::mem::take(&mut s.outbox),
            },
            proxy: s.proxy.take(),
            cover: std::mem::take(&mut s.cover),
            doomed: std::mem::take(&mut s.doomed),
            courier: super::CourierLog {
                imported: std::mem::take(&mut s.imported_bundles),
            },
            drops: std::mem::take(&mut s.drops),
            files: super::Files {
                outgoing: std::mem::take(&mut s.outgoing_files),
                incoming: std::mem::take(&mut s.incoming_files),
            },
        }
    }
}

//! Layout 7 of the client state (written by releases up to commit 5aa6103), frozen.
//!
//! Only the types whose layout changed since are copied here; the others are the
//! current types, whose layout has not changed since layout 7 (the fixture tests in
//! `crates/backchannel/tests/formats.rs` fail if one does). Layout 8 moved what grows
//! with what others send out of the vault: a channel's history and a drop box's letters
//! became [`super::Log`]s (their older entries sealed in segments beside the vault),
//! half-assembled payloads and deferred MLS messages keep their bytes in sealed files,
//! and a channel's filter of shown message ids became bounded. The conversion keeps
//! everything: history and letters go to their logs' tails, which the session moves
//! into segments when it starts, and the bytes that now live outside the vault travel
//! in [`super::Carried`] for the session to write there.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use backchannel_core::drop::DropKeys;
use backchannel_core::envelope::Reassembler;
use backchannel_core::mailbox::MailboxKeys;
use backchannel_core::relay_address::RelayAddress;
use serde::Deserialize;

use super::{
    ChannelStatus, CourierLog, Files, InviteRecord, LetterRecord, Log, Outbox, PendingCommit, PendingJoin,
    RecentPayload, RetiredMailbox, StoredMessage, Trails,
};
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

#[derive(Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
pub(super) struct Inbox {
    pub(super) reassembly: BTreeMap<[u8; 32], Reassembler>,
    pub(super) deferred: Vec<DeferredMls>,
    pub(super) recent: VecDeque<RecentPayload>,
}

#[derive(Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
pub(super) struct DeferredMls {
    pub(super) channel: String,
    pub(super) payload: Vec<u8>,
    pub(super) by_courier: bool,
    pub(super) arrived_at: u64,
}

#[derive(Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
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
    pub(super) trails: Trails,
}

#[derive(Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
pub(super) struct DropBox {
    pub(super) mailbox: MailboxKeys,
    pub(super) keys: DropKeys,
    pub(super) pow_bits: u8,
    pub(super) letters: Vec<LetterRecord>,
    pub(super) read_upto: usize,
    pub(super) seen: VecDeque<[u8; 16]>,
}

/// A log holding `entries` in its tail, `read_upto` of them read, in a new folder.
fn log_of<T>(entries: Vec<T>, read_upto: usize) -> Log<T> {
    let read_upto = read_upto.min(entries.len()) as u64;
    Log {
        folder: super::random_folder(),
        segments: VecDeque::new(),
        tail: entries,
        first: 0,
        read_upto,
        next_name: 0,
    }
}

impl From<ChannelState> for super::ChannelState {
    fn from(c: ChannelState) -> Self {
        // The filter keeps the latest ids; which ones a set kept is not known, and a
        // replay of an older one is refused by MLS anyway.
        let seen = c.seen.into_iter().take(super::SEEN_IDS).collect();
        Self {
            group_id: c.group_id,
            mailbox: c.mailbox,
            mailbox_since: c.mailbox_since,
            retired: c.retired,
            sequencer: c.sequencer,
            invites: c.invites,
            history: log_of(c.messages, c.read_upto),
            seen,
            verified: c.verified,
            status: c.status,
            pending: c.pending,
            disappear_after: c.disappear_after,
            expires_at: c.expires_at,
            trails: c.trails,
        }
    }
}

impl From<DropBox> for super::DropBox {
    fn from(d: DropBox) -> Self {
        let attachments = d
            .letters
            .iter()
            .filter_map(|l| l.file.as_ref())
            .map(|f| f.folder.clone())
            .collect();
        Self {
            mailbox: d.mailbox,
            keys: d.keys,
            pow_bits: d.pow_bits,
            letters: log_of(d.letters, d.read_upto),
            attachments,
            seen: d.seen,
        }
    }
}

/// Converts a layout-7 state.
pub(super) fn upgrade(mut s: State) -> super::State {
    let _ = s.version;
    let mut carried = super::Carried {
        upgraded: true,
        ..Default::default()
    };
    for (mailbox, mut r) in std::mem::take(&mut s.inbox.reassembly) {
        carried.chunks.extend(r.drain().into_iter().map(|c| (mailbox, c)));
    }
    for d in std::mem::take(&mut s.inbox.deferred) {
        carried
            .deferred
            .push((d.channel, d.payload, d.by_courier, d.arrived_at));
    }
    super::State {
        version: super::STATE_VERSION,
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
        inbox: super::Inbox {
            partials: Vec::new(),
            deferred: Vec::new(),
            recent: std::mem::take(&mut s.inbox.recent),
        },
        outbox: std::mem::take(&mut s.outbox),
        doomed: std::mem::take(&mut s.doomed),
        courier: std::mem::take(&mut s.courier),
        drops: std::mem::take(&mut s.drops)
            .into_iter()
            .map(|(n, d)| (n, d.into()))
            .collect(),
        settings: BTreeMap::new(),
        approvals: super::Approvals::default(),
        files: std::mem::take(&mut s.files),
        carried,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use backchannel_core::envelope::{Chunk, PayloadKind, CHUNK_DATA};
    use rand_core::OsRng;

    use super::*;
    use crate::session::{Blobs, Effect, Session};
    use crate::sim::SimBlobs;

    /// A layout-7 state with a long history, a half-assembled payload and a deferred
    /// message: after the upgrade, all of it is there, the bulk sealed beside the vault,
    /// and the session asks for a save at once.
    #[test]
    fn a_layout_7_state_moves_its_bulk_beside_the_vault_and_loses_nothing() {
        let relay = RelayAddress {
            pin: [1; 32],
            host: "relay.invalid".into(),
            port: 1,
        };
        let mailbox = MailboxKeys::generate(relay.clone(), &mut OsRng);
        let mut assembler = Reassembler::default();
        let len = 2 * CHUNK_DATA + 10;
        let chunk = |index: u16| Chunk {
            kind: PayloadKind::Mls,
            message_id: [5; 16],
            index,
            count: 3,
            total_len: len as u32,
            data: vec![5; if index == 2 { 10 } else { CHUNK_DATA }],
        };
        assert!(assembler.push(chunk(0)).unwrap().is_none());
        let messages: Vec<StoredMessage> = (0..3000)
            .map(|i| StoredMessage {
                id: format!("m{i}"),
                from: "ada".into(),
                from_key: [2; 32],
                sent_at: i,
                text: format!("message {i}"),
                event: None,
            })
            .collect();
        let channel = ChannelState {
            group_id: vec![1],
            mailbox: mailbox.clone(),
            mailbox_since: 0,
            retired: Vec::new(),
            sequencer: None,
            invites: Vec::new(),
            messages,
            read_upto: 2990,
            seen: (0..2000u16).map(|i| [i as u8; 16]).collect(),
            verified: BTreeSet::new(),
            status: ChannelStatus::Active,
            pending: None,
            disappear_after: 0,
            expires_at: 0,
            trails: Trails::default(),
        };
        let old = State {
            version: 7,
            name: "bea".into(),
            identity_secret: [3; 32],
            relay,
            relay_alternates: Vec::new(),
            proxy: None,
            cover: Vec::new(),
            mls: Vec::new(),
            channels: [("room".to_string(), channel)].into(),
            pending_joins: Vec::new(),
            inbox: Inbox {
                reassembly: [(mailbox.id().0, assembler)].into(),
                deferred: vec![DeferredMls {
                    channel: "room".into(),
                    payload: vec![9; 5000],
                    by_courier: true,
                    arrived_at: 77,
                }],
                recent: VecDeque::new(),
            },
            outbox: Outbox::default(),
            doomed: Vec::new(),
            courier: CourierLog::default(),
            drops: BTreeMap::new(),
            files: Files::default(),
        };
        let bytes = postcard::to_stdvec(&old).unwrap();
        let blobs = SimBlobs::default();
        let mut s = Session::decode(&bytes, Box::new(blobs.clone()), 0).unwrap();
        assert!(matches!(s.poll_effect(), Some(Effect::Save)));

        let ch = &s.state().channels["room"];
        assert_eq!(ch.history.len(), 3000);
        assert_eq!(ch.history.unread(), 10);
        assert!(ch.history.tail.is_empty() && !ch.history.segments.is_empty());
        let unread: Vec<String> = ch
            .history
            .unread_entries(&blobs)
            .unwrap()
            .into_iter()
            .map(|m| m.id)
            .collect();
        assert_eq!(unread, (2990..3000).map(|i| format!("m{i}")).collect::<Vec<_>>());
        assert!(ch.seen.len() <= super::super::SEEN_IDS);

        let d = &s.state().inbox.deferred[0];
        assert_eq!((d.by_courier, d.arrived_at, d.bytes), (true, 77, 5000));
        assert_eq!(&blobs.read(&d.folder, "0").unwrap()[..], &[9; 5000][..]);

        assert_eq!(s.partial_bytes(), CHUNK_DATA as u64);
        let id = mailbox.id().0;
        assert!(matches!(
            s.assemble(id, chunk(1), len),
            crate::session::partials::Assembled::Waiting
        ));
        match s.assemble(id, chunk(2), len) {
            crate::session::partials::Assembled::Whole(w) => assert_eq!(w.payload, vec![5; len]),
            _ => unreachable!("the payload did not complete"),
        }

        // The new layout is small, and reads back.
        let saved = s.encode().unwrap();
        assert!(saved.len() < 32 * 1024, "{} bytes", saved.len());
        let again = Session::decode(&saved, Box::new(blobs.clone()), 0).unwrap();
        assert_eq!(again.state().channels["room"].history.len(), 3000);
    }
}

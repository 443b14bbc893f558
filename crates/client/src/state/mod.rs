//! Everything a client keeps, serialized with postcard inside the vault.
//!
//! The layout is versioned: the first field is [`STATE_VERSION`]. Each earlier layout
//! that a release wrote is frozen in its own module (`v5`, …) with a conversion to
//! the current one, and pinned by a fixture that release made
//! (`crates/backchannel/tests/fixtures/`). A state written by a newer release is
//! refused, and nothing is rewritten.
//!
//! Rule for the next change: copy every type whose layout changes into a new frozen
//! module for the layout it replaces (the frozen modules name the current types only
//! for what has not changed since), bump [`STATE_VERSION`], add the conversion, and
//! add a fixture made by the release before the change.

mod v5;
mod v6;
mod v7;
mod v8;
mod v9;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::PathBuf;

use backchannel_core::drop::{DropKeys, ReplyTo};
use backchannel_core::envelope::{Chunk, PayloadKind};
use backchannel_core::mailbox::{MailboxAddress, MailboxKeys};
use backchannel_core::message::FileOffer;
use backchannel_core::relay_address::RelayAddress;
use serde::{Deserialize, Serialize};
use zeroize::Zeroize;

use crate::socks::ProxyAddr;
use crate::{ClientError, Damage};

/// Version of the state layout.
pub const STATE_VERSION: u32 = 10;

/// The oldest layout this release converts.
pub const OLDEST_STATE_VERSION: u32 = 5;

/// The whole client state.
#[derive(Serialize, Deserialize)]
pub struct State {
    /// Layout version.
    pub version: u32,
    /// Display name.
    pub name: String,
    /// Identity secret key.
    pub identity_secret: [u8; 32],
    /// Default relay for new channels.
    pub relay: RelayAddress,
    /// Other addresses of that same relay (same pin: relays sharing one cluster),
    /// tried in order when an address doesn't answer.
    pub relay_alternates: Vec<RelayAddress>,
    /// SOCKS5 proxy every connection goes through (set at `init`).
    pub proxy: Option<ProxyAddr>,
    /// Cover mailboxes that releases before protocol 5 made for the daemon's dummies; the
    /// next `enable_cover` deletes them at their relays (dummies no longer go into a
    /// mailbox). Kept in the format so that an older home still opens.
    pub cover: Vec<MailboxKeys>,
    /// openmls storage.
    pub mls: Vec<(Vec<u8>, Vec<u8>)>,
    /// Channels by local name.
    pub channels: BTreeMap<String, ChannelState>,
    /// Join requests waiting for a welcome.
    pub pending_joins: Vec<PendingJoin>,
    /// What arrived and is not read yet (`session::inbox`).
    pub inbox: Inbox,
    /// What goes out (`session::outbox`).
    pub outbox: Outbox,
    /// Mailboxes of ended channels still to be deleted at their relays
    /// (kept until a relay confirms, so a teardown while offline finishes later).
    pub doomed: Vec<MailboxKeys>,
    /// Courier bundles imported (`session::courier`).
    pub courier: CourierLog,
    /// Drop boxes this member owns, by local name.
    pub drops: BTreeMap<String, DropBox>,
    /// Files in transfer (`session::files`).
    pub files: Files,
    /// The home's settings, by name ([`State::setting`]): a key this release does not know
    /// is kept as it is, so that settings come and go without a new layout.
    pub settings: BTreeMap<String, String>,
    /// Invites whose joiners wait for approval, and those waiting (`session::approval`).
    pub approvals: Approvals,
    /// What an upgrade from an earlier layout found in the vault and must now be sealed
    /// beside it; never saved (the session writes it out when it starts).
    #[serde(skip)]
    pub carried: Carried,
}

/// The setting that turns forwarding off (`init --no-forward`): `"off"`; absent, what
/// goes to another relay's mailboxes goes through our own relay (docs/protocol.md,
/// "Forwarding").
pub const FORWARD_SETTING: &str = "forward";

/// The setting that holds the cover rate the daemon uses when started without `--cover`
/// (text like `4/s`); absent: no cover traffic.
pub const COVER_SETTING: &str = "cover";

/// Bulk data an upgrade took out of an earlier layout's vault, for the session to seal
/// beside the vault ([`State::carried`]).
#[derive(Default)]
pub struct Carried {
    /// The state was converted from an earlier layout (the session saves it at once).
    pub upgraded: bool,
    /// Chunks of half-assembled payloads, by the id of the mailbox they arrived in.
    pub chunks: Vec<([u8; 32], Chunk)>,
    /// Deferred MLS messages: channel, payload, came by courier, arrival (Unix s).
    pub deferred: Vec<(String, Vec<u8>, bool, u64)>,
}

/// What arrived and is not read yet.
#[derive(Serialize, Deserialize, Default)]
pub struct Inbox {
    /// Payloads whose chunks are still arriving (their chunks are sealed beside the
    /// vault; bounded per mailbox and in all, see `session::partials`).
    pub partials: Vec<PartialPayload>,
    /// MLS messages from an epoch this member has not reached yet, kept
    /// until the commit they depend on arrives (bounded per channel; their bytes are
    /// sealed beside the vault).
    pub deferred: Vec<DeferredMls>,
    /// Digests of the latest channel payloads processed, to recognize a message that
    /// arrives both by courier and through a relay (bounded, oldest first).
    pub recent: VecDeque<RecentPayload>,
}

/// What goes out.
#[derive(Serialize, Deserialize, Default)]
pub struct Outbox {
    /// Messages written but not yet encrypted (saved before the network is
    /// touched, encrypted in the channel's current epoch once synced).
    pub unsent: Vec<UnsentMessage>,
    /// Envelopes sealed but not yet accepted by a relay.
    pub sealed: Vec<OutboxItem>,
}

/// Courier bundles imported.
#[derive(Serialize, Deserialize, Default)]
pub struct CourierLog {
    /// Ids of the bundles imported (bounded, oldest first).
    pub imported: VecDeque<[u8; 16]>,
}

/// Files in transfer.
#[derive(Serialize, Deserialize, Default)]
pub struct Files {
    /// Files this member is sending (kept until every part is out, so an
    /// interrupted transfer resumes where it stopped).
    pub outgoing: Vec<OutgoingFile>,
    /// Files being received or received and not yet saved.
    pub incoming: Vec<IncomingFile>,
}

/// A file being sent.
#[derive(Serialize, Deserialize, Clone)]
pub struct OutgoingFile {
    /// Local channel name.
    pub channel: String,
    /// The file on this device.
    pub path: PathBuf,
    /// What the offer says (id, name, size, hash, part size).
    pub offer: FileOffer,
    /// The offer's message id.
    pub offer_id: [u8; 16],
    /// When the user sent it (ms).
    pub sent_at: u64,
    /// The offer is in the outbox.
    pub offered: bool,
    /// Parts before this one are in the outbox.
    pub next_part: u64,
}

/// Where a received file stands.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum FileStatus {
    /// Parts are still arriving.
    Receiving,
    /// Every part is in and the hash matched: ready to save.
    Complete,
    /// Every part is in and the hash did not match: discarded.
    Damaged,
    /// Saved by `read` at this path (the sealed parts are deleted).
    Saved(String),
}

impl FileStatus {
    /// The word output uses for it (`read --json`'s file `status`).
    pub fn word(&self) -> &'static str {
        match self {
            FileStatus::Receiving => "receiving",
            FileStatus::Complete => "complete",
            FileStatus::Damaged => "damaged",
            FileStatus::Saved(_) => "saved",
        }
    }
}

impl std::fmt::Display for FileStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.word())
    }
}

/// A file being received.
#[derive(Serialize, Deserialize, Clone)]
pub struct IncomingFile {
    /// Local channel name.
    pub channel: String,
    /// The sender's identity key: only they can add parts.
    pub from_key: [u8; 32],
    /// Id of the offer's message in the channel's history.
    pub message_id: String,
    /// What the sender announced.
    pub offer: FileOffer,
    /// Folder of its sealed parts under the home's `files/` (random, names nothing).
    pub folder: String,
    /// One bit per part received.
    pub received: Vec<u8>,
    /// Parts received.
    pub count: u64,
    /// When it was offered or its latest part arrived (ms).
    pub updated_at: u64,
    /// Where it stands.
    pub status: FileStatus,
}

/// An anonymous drop box this member owns.
#[derive(Serialize, Deserialize)]
pub struct DropBox {
    /// The mailbox letters arrive in.
    pub mailbox: MailboxKeys,
    /// The X-Wing key letters are sealed to.
    pub keys: DropKeys,
    /// Proof-of-work bits the relay demands per envelope.
    pub pow_bits: u8,
    /// Letters received, oldest first (the older ones sealed beside the vault).
    pub letters: Log<LetterRecord>,
    /// Folders of the attached files sealed beside the vault, not yet saved (bounded:
    /// see `session::drop_box::MAX_ATTACHMENTS`; kept here, not only in the letters,
    /// which may be sealed away, so that the vault alone names every folder in use).
    pub attachments: Vec<String>,
    /// Digests of the latest sealed letters received, to drop a replayed one
    /// (bounded, oldest first).
    pub seen: VecDeque<[u8; 16]>,
}

/// A file attached to a letter, waiting to be saved.
#[derive(Serialize, Deserialize, Clone)]
pub struct LetterAttachment {
    /// The name the source gave it (checked: see `valid_file_name`).
    pub name: String,
    /// Folder of its sealed contents under the home's `files/` (random, names nothing).
    pub folder: String,
}

/// A letter as its drop box's owner keeps it.
#[derive(Serialize, Deserialize, Clone)]
pub struct LetterRecord {
    /// Short random id, for `drop reply`.
    pub id: String,
    /// When it arrived (Unix s, our clock).
    pub received_at: u64,
    /// What the source wrote.
    pub text: String,
    /// An attached file, sealed under the home's `files/` until `drop read` saves it
    /// (never inside the vault, which is rewritten at every save).
    pub file: Option<LetterAttachment>,
    /// Where `drop read` saved the attached file.
    pub saved_file: Option<String>,
    /// How to answer, if the source asked for answers.
    pub reply: Option<ReplyTo>,
    /// Replies sent.
    pub replies: u32,
}

/// A channel payload processed lately.
#[derive(Serialize, Deserialize, Clone, Copy, PartialEq, Eq, Debug)]
pub struct RecentPayload {
    /// First 16 bytes of SHA-256 of the payload.
    pub digest: [u8; 16],
    /// It came in a courier bundle.
    pub by_courier: bool,
}

impl State {
    /// The state of a new identity: no channel yet.
    pub fn new(
        name: String,
        identity_secret: [u8; 32],
        relay: RelayAddress,
        relay_alternates: Vec<RelayAddress>,
        proxy: Option<ProxyAddr>,
    ) -> Self {
        Self {
            version: STATE_VERSION,
            name,
            identity_secret,
            relay,
            relay_alternates,
            proxy,
            cover: Vec::new(),
            mls: Vec::new(),
            channels: BTreeMap::new(),
            pending_joins: Vec::new(),
            inbox: Inbox::default(),
            outbox: Outbox::default(),
            doomed: Vec::new(),
            courier: CourierLog::default(),
            drops: BTreeMap::new(),
            files: Files::default(),
            settings: BTreeMap::new(),
            approvals: Approvals::default(),
            carried: Carried::default(),
        }
    }

    /// A setting's value, if set.
    pub fn setting(&self, key: &str) -> Option<&str> {
        self.settings.get(key).map(String::as_str)
    }

    /// Whether what goes to mailboxes on other relays goes through our own relay.
    pub fn forwards(&self) -> bool {
        self.setting(FORWARD_SETTING) != Some("off")
    }
}

impl Drop for State {
    fn drop(&mut self) {
        zeroize_secrets(&mut self.identity_secret, &mut self.mls);
    }
}

/// Zeroes the secrets a state holds (every layout's): the identity key and the MLS storage.
fn zeroize_secrets(identity_secret: &mut [u8; 32], mls: &mut [(Vec<u8>, Vec<u8>)]) {
    identity_secret.zeroize();
    for (k, v) in mls {
        k.zeroize();
        v.zeroize();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_give_an_error_never_a_panic(
            b in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..400),
            version_first in proptest::prelude::any::<bool>(),
        ) {
            let mut b = b;
            if version_first && !b.is_empty() {
                // Get past the version check into the body's decoder.
                b[0] = STATE_VERSION as u8;
            }
            let _ = State::decode(&b);
        }
    }
}

impl State {
    /// Serializes.
    pub fn encode(&self) -> Result<Vec<u8>, ClientError> {
        postcard::to_stdvec(self).map_err(|e| ClientError::Corrupt(Damage::Unencodable(e)))
    }

    /// Deserializes the current layout, or converts an earlier one.
    pub fn decode(b: &[u8]) -> Result<Self, ClientError> {
        // The version is the first field: read it alone, so that a store made by
        // another version says so instead of looking damaged.
        let (version, _) =
            postcard::take_from_bytes::<u32>(b).map_err(|_| ClientError::Corrupt(Damage::Undecodable))?;
        let undecodable = |_| ClientError::Corrupt(Damage::Undecodable);
        match version {
            STATE_VERSION => postcard::from_bytes(b).map_err(undecodable),
            9 => Ok(v9::upgrade(postcard::from_bytes(b).map_err(undecodable)?)),
            8 => Ok(v8::upgrade(postcard::from_bytes(b).map_err(undecodable)?)),
            7 => Ok(v7::upgrade(postcard::from_bytes(b).map_err(undecodable)?)),
            6 => Ok(v7::upgrade(v6::upgrade(
                postcard::from_bytes(b).map_err(undecodable)?,
                unix_now(),
            ))),
            5 => Ok(v7::upgrade(v6::upgrade(
                postcard::from_bytes::<v5::State>(b).map_err(undecodable)?.into(),
                unix_now(),
            ))),
            v if v > STATE_VERSION => Err(ClientError::NewerStore {
                found: v,
                known: STATE_VERSION,
            }),
            v => Err(ClientError::Corrupt(Damage::TooOld(v))),
        }
    }
}

/// The clock an upgrade dates what it converts by (the session itself has no clock).
fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Where a channel stands for this member.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChannelStatus {
    /// A member.
    Active,
    /// Removed by another member.
    Removed,
    /// Left on our own.
    Left,
    /// Closed for everyone.
    Closed,
}

impl ChannelStatus {
    /// Lowercase word for output.
    pub fn word(self) -> &'static str {
        match self {
            ChannelStatus::Active => "active",
            ChannelStatus::Removed => "removed",
            ChannelStatus::Left => "left",
            ChannelStatus::Closed => "closed",
        }
    }
}

impl std::fmt::Display for ChannelStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.word())
    }
}

/// One channel as this member holds it.
#[derive(Serialize, Deserialize)]
pub struct ChannelState {
    /// MLS group id.
    pub group_id: Vec<u8>,
    /// This member's receiving mailbox.
    pub mailbox: MailboxKeys,
    /// When `mailbox` was created (Unix s); it is rotated after a while.
    pub mailbox_since: u64,
    /// Earlier mailboxes, still read until their time is up (messages sent
    /// before a member saw the rotation may still arrive there).
    pub retired: Vec<RetiredMailbox>,
    /// The sequencer, if this member created the channel.
    pub sequencer: Option<MailboxKeys>,
    /// Invites issued and still honoured.
    pub invites: Vec<InviteRecord>,
    /// Messages and events, in arrival order (the older ones sealed beside the vault).
    pub history: Log<StoredMessage>,
    /// Ids of the latest application messages shown (duplicate filter; at most
    /// [`SEEN_IDS`], oldest first).
    pub seen: VecDeque<[u8; 16]>,
    /// Identity keys this member has verified.
    pub verified: BTreeSet<[u8; 32]>,
    /// Status.
    pub status: ChannelStatus,
    /// A commit staged and persisted before its sequencer claim.
    pub pending: Option<PendingCommit>,
    /// Messages are deleted this many seconds after they were sent (0: kept).
    pub disappear_after: u64,
    /// The channel closes on its own at this time (Unix s; 0: never).
    pub expires_at: u64,
    /// Our trail and the others' as read here (`session::trail`).
    pub trails: Trails,
}

/// What a member knows of the trails in one channel: its own, to write on what it sends,
/// and each other member's, to tell a missing or out-of-order message (`session::trail`,
/// docs/protocol.md, "Trails").
#[derive(Serialize, Deserialize, Default, Clone, Debug)]
pub struct Trails {
    /// Application messages this member has sealed in the channel.
    pub sent: u64,
    /// The trail digest of the last of them.
    pub sent_last: [u8; 16],
    /// Each other member's trail, by identity key, from the first message read from them.
    pub read: BTreeMap<[u8; 32], SenderTrail>,
    /// The latest removals read or made here (bounded, oldest first): the first epoch
    /// without the removed members, and their names.
    pub removals: Vec<(u64, Vec<String>)>,
}

/// One sender's trail as read here.
#[derive(Serialize, Deserialize, Default, Clone, Debug, PartialEq, Eq)]
pub struct SenderTrail {
    /// The count the sender's next message must carry.
    pub next: u64,
    /// The digest of the sender's message before that.
    pub last: [u8; 16],
    /// Counts of the sender's messages that are missing (bounded, the latest kept).
    pub missing: BTreeSet<u64>,
}

impl ChannelState {
    /// A channel just created or joined: `mailbox` receives, nothing happened yet.
    pub fn new(
        group_id: Vec<u8>,
        mailbox: MailboxKeys,
        sequencer: Option<MailboxKeys>,
        disappear_after: u64,
        expires_at: u64,
        now_s: u64,
    ) -> Self {
        Self {
            group_id,
            mailbox,
            mailbox_since: now_s,
            retired: Vec::new(),
            sequencer,
            invites: Vec::new(),
            history: Log::new(),
            seen: Default::default(),
            verified: Default::default(),
            status: ChannelStatus::Active,
            pending: None,
            disappear_after,
            expires_at,
            trails: Trails::default(),
        }
    }
}

impl ChannelState {
    /// Notes an application message's id as shown; false if it was already.
    pub fn see(&mut self, id: [u8; 16]) -> bool {
        if self.seen.contains(&id) {
            return false;
        }
        if self.seen.len() >= SEEN_IDS {
            self.seen.pop_front();
        }
        self.seen.push_back(id);
        true
    }
}

/// A staged commit, kept so a crash between claim and fan-out can finish it.
#[derive(Serialize, Deserialize, Clone)]
pub struct PendingCommit {
    /// Epoch claimed.
    pub epoch: u64,
    /// Claim token of protocol version 2 (kept for the state layout; claims now show the
    /// epoch's claim key, derived from the staged commit, see `Channel::claim_keys`).
    pub token: [u8; 32],
    /// Commit bytes.
    pub commit: Vec<u8>,
    /// Welcome bytes.
    pub welcome: Option<Vec<u8>>,
    /// Members that receive the commit.
    pub recipients: Vec<MailboxAddress>,
    /// Joiners that receive the welcome.
    pub joiners: Vec<MailboxAddress>,
    /// The mailbox this commit announces for us (a rotation), if any.
    pub new_mailbox: Option<MailboxKeys>,
}

/// An MLS message that arrived before the commit it depends on.
#[derive(Serialize, Deserialize, Clone)]
pub struct DeferredMls {
    /// Local channel name.
    pub channel: String,
    /// Folder of the sealed MLS message (one file, `0`).
    pub folder: String,
    /// Its length.
    pub bytes: u32,
    /// It came in a courier bundle.
    pub by_courier: bool,
    /// When it arrived (Unix s): one kept longer than [`crate::session::inbox::DEFERRED_LIFETIME`]
    /// is dropped.
    pub arrived_at: u64,
}

/// A message the user sent that is not yet sealed into the outbox.
#[derive(Serialize, Deserialize, Clone)]
pub struct UnsentMessage {
    /// Local channel name.
    pub channel: String,
    /// The application message id (receivers de-duplicate on it).
    pub id: [u8; 16],
    /// When the user sent it (ms).
    pub sent_at: u64,
    /// The text.
    pub text: String,
}

/// A mailbox replaced by a rotation, read until `until`, then deleted.
#[derive(Serialize, Deserialize, Clone)]
pub struct RetiredMailbox {
    /// The mailbox.
    pub keys: MailboxKeys,
    /// Unix s after which it is deleted at the relay.
    pub until: u64,
}

/// An invite this member issued.
#[derive(Serialize, Deserialize)]
pub struct InviteRecord {
    /// The invite's mailbox.
    pub mailbox: MailboxKeys,
    /// Admissions left.
    pub uses_left: u32,
    /// Expiry (Unix seconds).
    pub expires_at: u64,
    /// Identity keys of the people it admitted: a request from one of them again (a relay
    /// replaying it after that person was removed) is refused without taking a use.
    pub admitted: Vec<[u8; 32]>,
}

/// A message or an event in a channel's history.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct StoredMessage {
    /// Message id (hex) or event id.
    pub id: String,
    /// Sender's name, or empty for events.
    pub from: String,
    /// Sender's identity key.
    pub from_key: [u8; 32],
    /// Sender's clock (Unix ms).
    pub sent_at: u64,
    /// Text.
    pub text: String,
    /// `None` for a message; the event kind otherwise.
    pub event: Option<EventKind>,
}

/// What kind of event a history entry is (a message has none).
///
/// Serialized as its index in the vault (postcard) and as its [`word`](Self::word)
/// in JSON.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    /// Something that arrived was refused or discarded; the text says what.
    Rejected,
    /// A member joined (or we did).
    Joined,
    /// A member was removed (or we were).
    Removed,
    /// The channel was closed (or expired).
    Closed,
    /// A member's messages are missing (or, once they arrived, were out of order).
    Missing,
    /// The message before it was sealed before a removal: the removed member could read it.
    Exposed,
    /// A member was made an admin, or is no longer one.
    Role,
    /// The oldest history was deleted to keep the channel within its cap.
    Trimmed,
}

impl EventKind {
    /// The word output uses for it (`read --json`'s `event` field).
    pub fn word(self) -> &'static str {
        match self {
            EventKind::Rejected => "rejected",
            EventKind::Joined => "joined",
            EventKind::Removed => "removed",
            EventKind::Closed => "closed",
            EventKind::Missing => "missing",
            EventKind::Exposed => "exposed",
            EventKind::Role => "role",
            EventKind::Trimmed => "trimmed",
        }
    }

    /// Reads a word that [`EventKind::word`] gave (layout 5 stored the word).
    pub fn from_word(word: &str) -> Option<Self> {
        [
            Self::Rejected,
            Self::Joined,
            Self::Removed,
            Self::Closed,
            Self::Missing,
            Self::Exposed,
            Self::Role,
            Self::Trimmed,
        ]
        .into_iter()
        .find(|k| k.word() == word)
    }
}

impl std::fmt::Display for EventKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.word())
    }
}

/// Approval of joiners (`invite --approve`, `channel new --approve`; `session::approval`).
#[derive(Serialize, Deserialize, Default)]
pub struct Approvals {
    /// The invite mailboxes (receive ids) whose joiners wait for approval.
    pub invites: BTreeSet<[u8; 32]>,
    /// Joiners waiting, oldest first.
    pub waiting: Vec<Waiting>,
}

/// A joiner waiting for approval: its join request, kept until `admit` or `refuse`.
#[derive(Serialize, Deserialize, Clone)]
pub struct Waiting {
    /// The channel's local name.
    pub channel: String,
    /// The invite mailbox the request came to (its receive id).
    pub invite: [u8; 32],
    /// The key package of the request, validated again when admitted.
    pub key_package: Vec<u8>,
    /// The name the joiner chose (from the network).
    pub name: String,
    /// Its identity key.
    pub identity_key: [u8; 32],
    /// When its request arrived (Unix seconds).
    pub since: u64,
}

/// A join request waiting for its welcome.
#[derive(Serialize, Deserialize)]
pub struct PendingJoin {
    /// Our mailbox for the channel (it becomes the channel mailbox).
    pub mailbox: MailboxKeys,
    /// Who must send the welcome.
    pub inviter_key: [u8; 32],
    /// Local name to give the channel, if chosen.
    pub local_name: Option<String>,
    /// Give up after (Unix seconds).
    pub expires_at: u64,
}

/// Sealed envelopes for one mailbox, not yet accepted by its relay.
#[derive(Serialize, Deserialize, Clone)]
pub struct OutboxItem {
    /// Destination.
    pub to: MailboxAddress,
    /// Sealed envelopes (each exactly one envelope long).
    pub envelopes: Vec<Vec<u8>>,
}

/// Most ids a channel's duplicate filter keeps ([`ChannelState::seen`]).
pub const SEEN_IDS: usize = 512;

/// A list that grows with what others send (a channel's history, a drop box's letters),
/// kept mostly beside the vault: its newest entries are in `tail`, the older ones in
/// sealed segments (`session::log` writes, reads and bounds them). Entries are numbered
/// from the first ever added; those before `first` were dropped.
#[derive(Serialize, Deserialize, Clone)]
pub struct Log<T> {
    /// Folder of the segments beside the vault (random, names nothing).
    pub folder: String,
    /// The sealed segments, oldest first.
    pub segments: VecDeque<Segment>,
    /// The newest entries, in the vault.
    pub tail: Vec<T>,
    /// Number of the oldest entry kept.
    pub first: u64,
    /// Entries before this number have been shown.
    pub read_upto: u64,
    /// Name of the next new segment.
    pub next_name: u64,
}

impl<T> Log<T> {
    /// An empty log in a new folder.
    pub fn new() -> Self {
        Self {
            folder: random_folder(),
            segments: VecDeque::new(),
            tail: Vec::new(),
            first: 0,
            read_upto: 0,
            next_name: 0,
        }
    }
}

impl<T> Default for Log<T> {
    fn default() -> Self {
        Self::new()
    }
}

/// One sealed segment of a [`Log`].
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    /// Its file's name in the log's folder.
    pub name: u64,
    /// Entries it holds (its file may hold more, written before a crash kept the vault
    /// from recording them: those are not read).
    pub count: u32,
    /// Encoded size of those entries.
    pub bytes: u32,
    /// The oldest date among them (ms), to find what disappears without reading it.
    pub oldest_at: u64,
}

/// A payload whose chunks are arriving; the chunks are sealed beside the vault, one
/// file per chunk named by its index.
#[derive(Serialize, Deserialize, Clone)]
pub struct PartialPayload {
    /// The mailbox it arrives in.
    pub mailbox: [u8; 32],
    /// The id its chunks share.
    pub message_id: [u8; 16],
    /// What the first chunk announced: kind, chunks, length.
    pub kind: PayloadKind,
    /// Chunks in all.
    pub count: u16,
    /// Payload length.
    pub total_len: u32,
    /// Folder of its chunks.
    pub folder: String,
    /// One bit per chunk received.
    pub have: Vec<u8>,
    /// Bytes of the chunks received.
    pub bytes: u32,
}

/// A fresh folder name for something kept sealed beside the vault (a file's parts, a
/// letter's attachment, a log's segments): random, so it names nothing.
pub fn random_folder() -> String {
    let mut b = [0u8; 16];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut b);
    crate::session::hex(&b)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod version_tests {
    use super::*;

    fn relay() -> RelayAddress {
        RelayAddress {
            pin: [1; 32],
            host: "relay.invalid".into(),
            port: 1,
        }
    }

    #[test]
    fn a_state_of_a_newer_layout_is_refused_with_upgrade() {
        let s = State::new("ana".into(), [3; 32], relay(), Vec::new(), None);
        let mut bytes = s.encode().unwrap();
        // The layout version is the first field (a postcard varint: one byte below 128).
        assert_eq!(u32::from(bytes[0]), STATE_VERSION);
        bytes[0] = (STATE_VERSION + 1) as u8;
        let e = State::decode(&bytes).err().unwrap();
        assert!(matches!(e, ClientError::NewerStore { found, .. } if found == STATE_VERSION + 1));
        assert!(e.to_string().contains("upgrade backchannel"), "{e}");
        assert!(e.to_string().contains("nothing was changed"), "{e}");
    }

    #[test]
    fn the_current_layout_round_trips() {
        let s = State::new("ana".into(), [3; 32], relay(), Vec::new(), None);
        let back = State::decode(&s.encode().unwrap()).unwrap();
        assert_eq!(back.name, "ana");
        assert_eq!(back.version, STATE_VERSION);
    }
}

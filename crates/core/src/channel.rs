//! Channels: MLS groups (RFC 9420, openmls with the crypto of [`crate::crypto_provider`]).
//!
//! * The channel's name and its *sequencer* mailbox live in a custom group
//!   context extension ([`CHANNEL_INFO_EXTENSION`]), so every member agrees
//!   on them and the relay never sees them.
//! * Each member's receiving mailbox lives in a custom leaf-node extension
//!   ([`MAILBOX_EXTENSION`]), signed by that member: nobody can redirect a
//!   member's messages without breaking the leaf signature.
//! * A member's MLS credential is a basic credential whose identity is
//!   `identity key (32) || display name`, and whose leaf signature key must
//!   equal that identity key; so the sender shown for a message is the key
//!   that signed it.
//! * Who may do what (admins, members) lives in another group-context extension
//!   ([`crate::roles::ROLES_EXTENSION`]); every member checks it on every proposal and
//!   commit it reads, with the credential policy.
//! * All messages, handshake included, use MLS private framing.
//!
//! This module performs no I/O: it takes bytes and returns bytes.

use std::fmt;
use std::sync::Mutex;

use openmls::prelude::tls_codec::{Deserialize as _, Serialize as _};
use openmls::prelude::*;
use openmls_traits::OpenMlsProvider;
use thiserror::Error;

use crate::codec::{Reader, Writer};
use crate::crypto_provider::Crypto;
use crate::identity::{Fingerprint, Identity};
use crate::mailbox::MailboxAddress;
use crate::message::Trail;
use crate::roles::{Act, Roles, ROLES_EXTENSION};
use crate::storage::Store;

/// Leaf-node extension holding the member's receiving [`MailboxAddress`].
pub const MAILBOX_EXTENSION: u16 = 0xff0b;
/// Group-context extension holding the [`ChannelInfo`].
pub const CHANNEL_INFO_EXTENSION: u16 = 0xff0c;
/// Epochs whose secrets are kept so that messages sent just before a commit
/// still decrypt after it.
pub const MAX_PAST_EPOCHS: usize = 4;

/// How many of a member's messages may arrive after a later one of theirs and
/// still be read (openmls keeps the keys it skipped, up to this many per
/// member and epoch; its default is 5). A courier bundle carries a member's
/// newest messages while the relay may still hold older ones that the reader
/// has not fetched: those must stay readable when they come.
pub const OUT_OF_ORDER_TOLERANCE: u32 = 4096;

/// How far ahead of the last message read from a member the next may be (in that
/// member's messages of one epoch). No more than [`OUT_OF_ORDER_TOLERANCE`]: a jump
/// further would push out the keys of messages skipped over, and they could never be
/// read. A message further ahead is [`Rejection::TooFarAhead`], for the caller to keep
/// until the ones before it have come.
pub const MAX_FORWARD_DISTANCE: u32 = OUT_OF_ORDER_TOLERANCE;

fn sender_ratchet() -> SenderRatchetConfiguration {
    SenderRatchetConfiguration::new(OUT_OF_ORDER_TOLERANCE, MAX_FORWARD_DISTANCE)
}

/// The MLS ciphersuite of a channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Suite {
    /// `MLS_256_XWING_CHACHA20POLY1305_SHA256_Ed25519`: post-quantum hybrid (default).
    #[default]
    PostQuantum,
    /// `MLS_128_DHKEMX25519_CHACHA20POLY1305_SHA256_Ed25519`: classical.
    Classical,
}

impl Suite {
    /// The openmls ciphersuite.
    pub fn ciphersuite(self) -> Ciphersuite {
        match self {
            Suite::PostQuantum => Ciphersuite::MLS_256_XWING_CHACHA20POLY1305_SHA256_Ed25519,
            Suite::Classical => Ciphersuite::MLS_128_DHKEMX25519_CHACHA20POLY1305_SHA256_Ed25519,
        }
    }

    /// The IANA code point.
    pub fn code(self) -> u16 {
        self.ciphersuite() as u16
    }

    /// The suite with this code point, if supported.
    pub fn from_code(code: u16) -> Option<Self> {
        [Suite::PostQuantum, Suite::Classical]
            .into_iter()
            .find(|s| s.code() == code)
    }
}

/// A channel operation failed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum ChannelError {
    /// The crypto provider could not start.
    #[error("the cryptography provider failed to start")]
    Provider,
    /// openmls refused the operation.
    #[error("the channel operation failed: {0}")]
    Mls(String),
    /// A key package, welcome or extension was malformed or invalid.
    #[error("invalid channel data: {0}")]
    Invalid(&'static str),
    /// The named member is not in the channel.
    #[error("no such member")]
    NoSuchMember,
    /// This member has been removed.
    #[error("you are no longer a member of this channel")]
    NotAMember,
    /// The stored MLS state is damaged or in another version's format.
    #[error("the stored channel state is damaged or in an unknown format")]
    Storage,
}

fn mls<E: fmt::Display>(e: E) -> ChannelError {
    ChannelError::Mls(e.to_string())
}

/// The openmls provider: the composite [`Crypto`] (ed25519-dalek, sha2 and
/// libcrux) and an in-memory [`Store`] whose content the client persists
/// inside its encrypted vault.
pub struct Provider {
    crypto: Crypto,
    storage: Store,
    /// Groups kept after use ([`Channel::keep`]), each with the store's version when
    /// it was kept: valid while the store is still at that version.
    loaded: Mutex<Vec<(u64, MlsGroup)>>,
}

impl fmt::Debug for Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Provider(..)")
    }
}

impl Provider {
    /// A provider with empty storage.
    pub fn new() -> Result<Self, ChannelError> {
        Self::from_snapshot(Vec::new())
    }

    /// A provider whose storage holds `entries` (from [`Provider::snapshot`]).
    /// Refuses entries that another version's store wrote.
    pub fn from_snapshot(entries: Vec<(Vec<u8>, Vec<u8>)>) -> Result<Self, ChannelError> {
        let storage = Store::from_entries(entries).ok_or(ChannelError::Storage)?;
        let crypto = Crypto::new().map_err(|_| ChannelError::Provider)?;
        Ok(Self {
            crypto,
            storage,
            loaded: Mutex::default(),
        })
    }

    fn loaded(&self) -> std::sync::MutexGuard<'_, Vec<(u64, MlsGroup)>> {
        self.loaded.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes group `group_id` from the cache if it is still valid; drops the stale. The
    /// store cannot change meanwhile ([`Store::at_rest`]).
    fn take_loaded(&self, group_id: &[u8]) -> Option<MlsGroup> {
        self.storage.at_rest(|now| {
            let mut loaded = self.loaded();
            loaded.retain(|(version, _)| *version == now);
            let at = loaded.iter().position(|(_, g)| g.group_id().as_slice() == group_id)?;
            Some(loaded.swap_remove(at).1)
        })
    }

    /// Drops the kept copy of group `group_id`, if any (its secrets go with it).
    fn forget_loaded(&self, group_id: &[u8]) {
        self.loaded().retain(|(_, g)| g.group_id().as_slice() != group_id);
    }

    /// Keeps `group`, whose state was the store's at `version`, if the store is still at
    /// that version (a version is issued once, by one store: [`Store::version`]). The store
    /// cannot change between the check and the keeping ([`Store::at_rest`]).
    fn keep_loaded(&self, version: u64, group: MlsGroup) {
        self.storage.at_rest(|now| {
            if now != version {
                return;
            }
            let mut loaded = self.loaded();
            loaded.retain(|(v, g)| *v == now && g.group_id() != group.group_id());
            loaded.push((now, group));
        });
    }

    /// Every stored key and value, sorted by key, for persistence.
    pub fn snapshot(&self) -> Vec<(Vec<u8>, Vec<u8>)> {
        self.storage.snapshot()
    }

    /// Forgets every key package this client made (see [`Store::forget_key_packages`]).
    pub fn forget_key_packages(&self) -> usize {
        self.storage.forget_key_packages()
    }
}

impl OpenMlsProvider for Provider {
    type CryptoProvider = Crypto;
    type RandProvider = Crypto;
    type StorageProvider = Store;

    fn storage(&self) -> &Self::StorageProvider {
        &self.storage
    }
    fn crypto(&self) -> &Self::CryptoProvider {
        &self.crypto
    }
    fn rand(&self) -> &Self::RandProvider {
        &self.crypto
    }
}

/// What every member agrees about a channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelInfo {
    /// The name its creator gave it.
    pub name: String,
    /// The mailbox whose epoch claims order commits.
    pub sequencer: MailboxAddress,
    /// Creation time (Unix seconds).
    pub created_at: u64,
    /// Every member's client deletes a message this many seconds after it was
    /// sent (0: messages stay).
    pub disappear_after: u64,
    /// The channel closes on its own at this time (Unix seconds; 0: never).
    pub expires_at: u64,
}

impl ChannelInfo {
    /// Binary form: version 2 (version 1 and the lifecycle fields) for a channel with a
    /// lifetime, version 1 for one without, which clients from before lifetimes can join.
    pub fn to_bytes(&self) -> Vec<u8> {
        let lifecycle = self.disappear_after != 0 || self.expires_at != 0;
        let mut w = Writer::new();
        w.u8(if lifecycle { 2 } else { 1 }).bytes16(self.name.as_bytes());
        self.sequencer.encode(&mut w);
        w.u64(self.created_at);
        if lifecycle {
            w.u64(self.disappear_after).u64(self.expires_at);
        }
        w.into_vec()
    }

    /// Parses the binary form (versions 1 and 2; version 1 has no lifecycle, and version 2
    /// must have one).
    pub fn from_bytes(b: &[u8]) -> Result<Self, ChannelError> {
        let mut r = Reader::new(b);
        let bad = |_| ChannelError::Invalid("channel info");
        let version = r.u8().map_err(bad)?;
        if !(1..=2).contains(&version) {
            return Err(ChannelError::Invalid("channel info version"));
        }
        let name = r.string16().map_err(bad)?;
        let sequencer = MailboxAddress::decode(&mut r).map_err(bad)?;
        let created_at = r.u64().map_err(bad)?;
        let (disappear_after, expires_at) = if version >= 2 {
            (r.u64().map_err(bad)?, r.u64().map_err(bad)?)
        } else {
            (0, 0)
        };
        r.finish().map_err(bad)?;
        // One encoding per value: a channel without a lifetime is written as version 1.
        if version == 2 && disappear_after == 0 && expires_at == 0 {
            return Err(ChannelError::Invalid("channel info version"));
        }
        Ok(Self {
            name,
            sequencer,
            created_at,
            disappear_after,
            expires_at,
        })
    }
}

/// A member as the channel's tree describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberInfo {
    /// Display name from the credential.
    pub name: String,
    /// Identity key (also the leaf signature key).
    pub identity_key: [u8; 32],
    /// Fingerprint of the identity key.
    pub fingerprint: Fingerprint,
    /// Where the member receives.
    pub mailbox: Option<MailboxAddress>,
    /// Leaf index in the tree.
    pub leaf: u32,
}

/// Runs `f`, an openmls operation on `group` that leaves the past epochs' secrets as they
/// are (making an application message, reading one of the current epoch), telling the
/// store so when `group`'s state is the store's at version `synced`: its writes of the
/// group's message secrets then copy the past epochs instead of encoding them again
/// ([`Store::past_epochs_unchanged`](crate::storage::Store::past_epochs_unchanged)).
fn past_unchanged<R>(
    provider: &Provider,
    group: &mut MlsGroup,
    synced: Option<u64>,
    f: impl FnOnce(&mut MlsGroup) -> R,
) -> R {
    match synced {
        Some(version) => {
            let id = group.group_id().clone();
            provider.storage.past_epochs_unchanged(&id, version, || f(group))
        }
        None => f(group),
    }
}

fn credential_for(identity: &Identity) -> CredentialWithKey {
    let mut id = identity.public_key().to_vec();
    id.extend_from_slice(identity.name().as_bytes());
    CredentialWithKey {
        credential: BasicCredential::new(id).into(),
        signature_key: identity.public_key().to_vec().into(),
    }
}

/// Parses a credential into (identity key, name).
fn parse_credential(c: &Credential) -> Option<([u8; 32], String)> {
    let basic = BasicCredential::try_from(c.clone()).ok()?;
    let id = basic.identity();
    if id.len() < 33 {
        return None;
    }
    let key: [u8; 32] = id[..32].try_into().ok()?;
    let name = String::from_utf8(id[32..].to_vec()).ok()?;
    Some((key, name))
}

fn member_from_leaf(leaf: &LeafNode, index: LeafNodeIndex) -> Option<MemberInfo> {
    let (identity_key, name) = parse_credential(leaf.credential())?;
    if leaf.signature_key().as_slice() != identity_key {
        return None;
    }
    let mailbox = leaf
        .extensions()
        .unknown(MAILBOX_EXTENSION)
        .and_then(|e| MailboxAddress::from_bytes(&e.0).ok());
    Some(MemberInfo {
        name,
        identity_key,
        fingerprint: Fingerprint::of(&identity_key),
        mailbox,
        leaf: index.u32(),
    })
}

/// The roles in a group context, if it has roles that parse.
fn roles_in(exts: &Extensions<GroupContext>) -> Option<Roles> {
    exts.unknown(ROLES_EXTENSION).and_then(|e| Roles::from_bytes(&e.0).ok())
}

/// What a proposal from `sender` does, as the roles see it.
fn act_of(p: &Proposal, sender: &MemberInfo, current: &[MemberInfo]) -> Act {
    match p {
        Proposal::Add(_) => Act::Add,
        Proposal::Update(_) => Act::Update,
        Proposal::SelfRemove => Act::Leave,
        Proposal::Remove(r) => {
            if r.removed().u32() == sender.leaf && current.iter().any(|m| m.leaf == sender.leaf) {
                Act::Leave
            } else {
                Act::RemoveOther
            }
        }
        Proposal::GroupContextExtensions(_) => Act::ChangeChannel,
        _ => Act::Other,
    }
}

/// An added leaf: a member this client lists, and not someone already in.
fn check_new_leaf(leaf: &LeafNode, current: &[MemberInfo]) -> Result<(), Rejection> {
    let m = member_from_leaf_node(leaf).ok_or(Rejection::Policy)?;
    if current.iter().any(|c| c.identity_key == m.identity_key) {
        return Err(Rejection::Policy);
    }
    Ok(())
}

/// A changed leaf: still a member this client lists, with the same identity.
fn check_same_member(leaf: &LeafNode, owner: &MemberInfo) -> Result<(), Rejection> {
    match member_from_leaf_node(leaf) {
        Some(m) if m.identity_key == owner.identity_key && m.name == owner.name => Ok(()),
        _ => Err(Rejection::Policy),
    }
}

fn capabilities(suite: Suite) -> Capabilities {
    Capabilities::new(
        None,
        Some(&[suite.ciphersuite()]),
        Some(&[
            ExtensionType::Unknown(MAILBOX_EXTENSION),
            ExtensionType::Unknown(CHANNEL_INFO_EXTENSION),
            ExtensionType::Unknown(ROLES_EXTENSION),
        ]),
        None,
        Some(&[CredentialType::Basic]),
    )
}

fn leaf_extensions(mailbox: &MailboxAddress) -> Result<Extensions<LeafNode>, ChannelError> {
    Extensions::single(Extension::Unknown(
        MAILBOX_EXTENSION,
        UnknownExtension(mailbox.to_bytes()),
    ))
    .map_err(mls)
}

pub(crate) fn join_config() -> MlsGroupJoinConfig {
    MlsGroupJoinConfig::builder()
        .wire_format_policy(PURE_CIPHERTEXT_WIRE_FORMAT_POLICY)
        .use_ratchet_tree_extension(true)
        .max_past_epochs(MAX_PAST_EPOCHS)
        .sender_ratchet_configuration(sender_ratchet())
        .padding_size(64)
        .build()
}

/// A serialized key package for joining, with the member's mailbox in its leaf.
pub fn key_package(
    provider: &Provider,
    identity: &Identity,
    mailbox: &MailboxAddress,
    suite: Suite,
) -> Result<Vec<u8>, ChannelError> {
    let bundle = KeyPackage::builder()
        .leaf_node_capabilities(capabilities(suite))
        .leaf_node_extensions(leaf_extensions(mailbox)?)
        .build(suite.ciphersuite(), provider, identity, credential_for(identity))
        .map_err(mls)?;
    bundle.key_package().tls_serialize_detached().map_err(mls)
}

/// A key package that passed validation, with the member it describes.
#[derive(Debug, Clone)]
pub struct ValidKeyPackage {
    key_package: KeyPackage,
    /// The member who would join.
    pub member: MemberInfo,
}

/// Validates a key package from a join request (attacker input).
pub fn validate_key_package(provider: &Provider, bytes: &[u8]) -> Result<ValidKeyPackage, ChannelError> {
    let kp_in = KeyPackageIn::tls_deserialize_exact(bytes).map_err(|_| ChannelError::Invalid("key package"))?;
    let key_package = kp_in
        .validate(provider.crypto(), ProtocolVersion::Mls10)
        .map_err(|_| ChannelError::Invalid("key package signature"))?;
    let member =
        member_from_leaf_node(key_package.leaf_node()).ok_or(ChannelError::Invalid("key package credential"))?;
    if member.mailbox.is_none() {
        return Err(ChannelError::Invalid("key package without a mailbox"));
    }
    Ok(ValidKeyPackage { key_package, member })
}

fn member_from_leaf_node(leaf: &LeafNode) -> Option<MemberInfo> {
    member_from_leaf(leaf, LeafNodeIndex::new(u32::MAX))
}

/// A commit created locally but not yet merged: it must win its epoch at
/// the sequencer first.
#[derive(Debug, Clone)]
pub struct OutgoingCommit {
    /// The epoch it moves the channel out of.
    pub epoch: u64,
    /// The commit message for existing members.
    pub commit: Vec<u8>,
    /// The welcome for added members, if any.
    pub welcome: Option<Vec<u8>>,
}

impl OutgoingCommit {
    /// The token that identifies this commit in a sequencer claim.
    pub fn token(&self) -> [u8; 32] {
        use sha2::{Digest, Sha256};
        Sha256::new()
            .chain_update(b"backchannel/v1/commit-token")
            .chain_update(&self.commit)
            .finalize()
            .into()
    }
}

/// What a member shows the sequencer to claim the channel's current epoch.
#[derive(Clone)]
pub struct ClaimKeys {
    /// The current epoch's claim key: only its members can derive it.
    pub key: [u8; 32],
    /// The lock of the epoch the staged commit moves to.
    pub next: [u8; 32],
}

impl fmt::Debug for ClaimKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClaimKeys(..)")
    }
}

impl Drop for ClaimKeys {
    fn drop(&mut self) {
        use zeroize::Zeroize;
        self.key.zeroize();
    }
}

/// The MLS exporter label of an epoch's claim key.
const CLAIM_KEY_LABEL: &str = "backchannel/v1/claim-key";

fn exported_key(secret: Result<Vec<u8>, ExportSecretError>) -> Result<[u8; 32], ChannelError> {
    let mut secret = secret.map_err(mls)?;
    let key = <[u8; 32]>::try_from(secret.as_slice()).map_err(|_| ChannelError::Invalid("exported secret"));
    zeroize::Zeroize::zeroize(&mut secret);
    key
}

/// Why an incoming message was not accepted. None of these is ever shown as
/// a message.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum Rejection {
    /// Not an MLS message of this channel.
    #[error("a message could not be parsed")]
    Malformed,
    /// Decryption or signature verification failed (forged, replayed, or too old).
    #[error("a message failed decryption or verification (forged, replayed or from an expired epoch)")]
    Unverified,
    /// Sent by someone who is no longer a member.
    #[error("a message came from a removed member")]
    RemovedMember,
    /// The sender's credential is not one this client accepts.
    #[error("a message came from an unknown sender")]
    UnknownSender,
    /// The message belongs to a later epoch than this member has reached:
    /// a commit it depends on has not been processed yet.
    #[error("a message depends on a change to the channel that has not arrived")]
    FutureEpoch(u64),
    /// A change that would give the channel a member whose credential is not one this
    /// client accepts (an identity that does not parse, or a signature key other than the
    /// identity key), change a member's identity, or add someone twice. Refused, not merged.
    #[error("a change to the channel was refused: it would add or change a member against the channel's rules")]
    Policy,
    /// A proposal or commit that the proposer's role does not allow (a member who is not
    /// an admin removing someone, inviting where members may not, or changing the
    /// channel), or that moves the channel's sequencer or drops its roles. Refused, not merged.
    #[error("a change to the channel was refused: the member who asked for it may not make it")]
    Forbidden,
    /// A commit by a member whose removal (by an admin) waits in this member's store: MLS
    /// lets no member commit its own removal, so whatever it commits leaves the removal out,
    /// to stay in. Refused.
    #[error("a change to the channel was refused: it was made by a member whose removal was waiting")]
    LeavesOutRemoval,
    /// The message is more than [`MAX_FORWARD_DISTANCE`] of its sender's messages ahead
    /// of the last one read: those in between have not arrived yet.
    #[error("a message came too far ahead of its sender's earlier ones")]
    TooFarAhead,
}

/// A message accepted by the channel.
#[derive(Debug, Clone)]
pub enum Received {
    /// Application data from a member.
    Application {
        /// Who sent it (verified by MLS).
        sender: MemberInfo,
        /// The plaintext.
        plaintext: Vec<u8>,
        /// The epoch it was sealed in (this one, or a past one).
        epoch: u64,
        /// The sender's trail, if its client writes one.
        trail: Option<Trail>,
    },
    /// A commit that was merged.
    Commit {
        /// Who committed.
        committer: Option<MemberInfo>,
        /// Members it added.
        added: Vec<MemberInfo>,
        /// Members it removed, each with who proposed the removal (the committer for a
        /// removal in the commit itself; the member who sent the proposal, or the removed
        /// member for a leave, for one committed on someone else's behalf).
        removed: Vec<(MemberInfo, Option<MemberInfo>)>,
        /// Whether it removed this client.
        self_removed: bool,
        /// The committer's trail, if its client writes one.
        trail: Option<Trail>,
    },
    /// A proposal stored for the next commit.
    Proposal {
        /// Who proposed.
        sender: Option<MemberInfo>,
        /// The proposer's trail, if its client writes one.
        trail: Option<Trail>,
    },
}

/// One channel's MLS group.
#[derive(Debug)]
pub struct Channel {
    group: MlsGroup,
    /// The store's [`Store::version`] at which this instance's state is known to equal
    /// what the store holds for the group (the authenticated data for the next message
    /// aside): set when it is loaded or made, moved by each successful
    /// [`Channel::encrypt`] and [`Channel::process`], and cleared for good by every
    /// other change and every failure. Only such an instance may be kept in the
    /// provider's cache of loaded groups ([`Channel::keep`]).
    synced: Option<u64>,
}

impl Channel {
    /// Creates a channel with this client as its only member and its one admin; with
    /// `members_invite`, members who are not admins may invite too.
    pub fn create(
        provider: &Provider,
        identity: &Identity,
        info: &ChannelInfo,
        my_mailbox: &MailboxAddress,
        suite: Suite,
        members_invite: bool,
    ) -> Result<Self, ChannelError> {
        let roles = Roles::new(identity.public_key(), members_invite);
        Self::create_with(provider, identity, info, my_mailbox, suite, &roles)
    }

    /// [`Channel::create`] with its roles given (their one admin must be `identity`).
    pub fn create_with(
        provider: &Provider,
        identity: &Identity,
        info: &ChannelInfo,
        my_mailbox: &MailboxAddress,
        suite: Suite,
        roles: &Roles,
    ) -> Result<Self, ChannelError> {
        // Roles are a required capability: a client from before roles, which would not
        // enforce them, cannot join.
        let gce = Extensions::from_vec(vec![
            Extension::RequiredCapabilities(RequiredCapabilitiesExtension::new(
                &[
                    ExtensionType::Unknown(MAILBOX_EXTENSION),
                    ExtensionType::Unknown(CHANNEL_INFO_EXTENSION),
                    ExtensionType::Unknown(ROLES_EXTENSION),
                ],
                &[],
                &[CredentialType::Basic],
            )),
            Extension::Unknown(CHANNEL_INFO_EXTENSION, UnknownExtension(info.to_bytes())),
            Extension::Unknown(ROLES_EXTENSION, UnknownExtension(roles.to_bytes())),
        ])
        .map_err(mls)?;
        let config = MlsGroupCreateConfig::builder()
            .ciphersuite(suite.ciphersuite())
            .wire_format_policy(PURE_CIPHERTEXT_WIRE_FORMAT_POLICY)
            .use_ratchet_tree_extension(true)
            .max_past_epochs(MAX_PAST_EPOCHS)
            .sender_ratchet_configuration(sender_ratchet())
            .padding_size(64)
            .capabilities(capabilities(suite))
            .with_group_context_extensions(gce)
            .with_leaf_node_extensions(leaf_extensions(my_mailbox)?)
            .map_err(mls)?
            .build();
        let group = MlsGroup::new(provider, identity, &config, credential_for(identity)).map_err(mls)?;
        Ok(Self::made(provider, group))
    }

    /// A channel just made, loaded or joined: its state is the store's.
    fn made(provider: &Provider, group: MlsGroup) -> Self {
        Self {
            group,
            synced: Some(provider.storage.version()),
        }
    }

    /// Loads a channel from the provider's storage, or takes it from the provider's
    /// cache of loaded groups if it was [kept](Channel::keep) there and the store has
    /// not changed since. Decoding a group is most of what a message would otherwise
    /// cost (about 74 µs for a reader's group in steady state, BENCHMARKS.md).
    pub fn load(provider: &Provider, group_id: &[u8]) -> Result<Option<Self>, ChannelError> {
        if let Some(group) = provider.take_loaded(group_id) {
            return Ok(Some(Self::made(provider, group)));
        }
        let id = GroupId::from_slice(group_id);
        Ok(MlsGroup::load(provider.storage(), &id)
            .map_err(mls)?
            .map(|group| Self::made(provider, group)))
    }

    /// Gives the channel back to the provider's cache of loaded groups, for the next
    /// [`Channel::load`] of it to take instead of decoding it again. Kept only if its
    /// state is known to equal the store's, and only until the store changes again.
    pub fn keep(mut self, provider: &Provider) {
        let Some(version) = self.synced else {
            return;
        };
        // The one thing openmls holds in memory only: the authenticated data for the next
        // message ([`Channel::set_trail`]), which a group decoded again would not have.
        self.group.set_aad(Vec::new());
        provider.keep_loaded(version, self.group);
    }

    /// Marks the state as possibly different from the store's (see `synced`).
    fn unsync(&mut self) {
        self.synced = None;
    }

    /// After a change that openmls writes to the store whole: the state still equals the
    /// store's if it did before and the change succeeded; otherwise it is not known to,
    /// until the group is loaded again.
    fn resync<T, E>(&mut self, provider: &Provider, result: Result<T, E>) -> Result<T, E> {
        self.synced = self
            .synced
            .and_then(|_| result.is_ok().then(|| provider.storage.version()));
        result
    }

    /// Joins from a serialized welcome (attacker input). Returns the channel
    /// and the member who sent the welcome.
    pub fn join(provider: &Provider, welcome: &[u8]) -> Result<(Self, MemberInfo), ChannelError> {
        let msg = MlsMessageIn::tls_deserialize_exact(welcome).map_err(|_| ChannelError::Invalid("welcome"))?;
        let MlsMessageBodyIn::Welcome(welcome) = msg.extract() else {
            return Err(ChannelError::Invalid("welcome"));
        };
        let staged = StagedWelcome::new_from_welcome(provider, &join_config(), welcome, None).map_err(mls)?;
        let sender = staged
            .welcome_sender()
            .ok()
            .and_then(|leaf| member_from_leaf(leaf, staged.welcome_sender_index()))
            .ok_or(ChannelError::Invalid("welcome sender"))?;
        let group = staged.into_group(provider).map_err(mls)?;
        let channel = Self::made(provider, group);
        channel.info()?;
        // The credential policy on the whole tree: every leaf a member this client lists,
        // each identity once. Otherwise the group is dropped unjoined.
        if !channel.tree_is_listed() {
            let _ = channel.delete(provider);
            return Err(ChannelError::Invalid(
                "a member of the channel has an unacceptable credential",
            ));
        }
        Ok((channel, sender))
    }

    /// The MLS group id.
    pub fn group_id(&self) -> Vec<u8> {
        self.group.group_id().as_slice().to_vec()
    }

    /// The current epoch.
    pub fn epoch(&self) -> u64 {
        self.group.epoch().as_u64()
    }

    /// Whether this client is still a member.
    pub fn is_active(&self) -> bool {
        self.group.is_active()
    }

    /// The ciphersuite.
    pub fn suite(&self) -> Option<Suite> {
        Suite::from_code(self.group.ciphersuite() as u16)
    }

    /// The agreed channel information.
    pub fn info(&self) -> Result<ChannelInfo, ChannelError> {
        let ext = self
            .group
            .extensions()
            .unknown(CHANNEL_INFO_EXTENSION)
            .ok_or(ChannelError::Invalid("missing channel info"))?;
        ChannelInfo::from_bytes(&ext.0)
    }

    /// The channel's roles; `None` for a channel made before roles (everyone may do
    /// everything), or one whose roles do not parse (treated the same by every member).
    pub fn roles(&self) -> Option<Roles> {
        roles_in(self.group.extensions())
    }

    /// Whether the member with identity key `who` may do `act` here ([`Roles::allows`]).
    pub fn allows(&self, who: &[u8; 32], act: Act) -> bool {
        Roles::allows(self.roles().as_ref(), who, act)
    }

    /// Stages a commit that gives the channel these roles (the group context's other
    /// extensions unchanged). Fails for a channel made before roles.
    pub fn set_roles(
        &mut self,
        provider: &Provider,
        identity: &Identity,
        roles: &Roles,
    ) -> Result<OutgoingCommit, ChannelError> {
        self.unsync();
        if self.roles().is_none() {
            return Err(ChannelError::Invalid("a channel made before roles has none to change"));
        }
        let epoch = self.epoch();
        let exts = self.context_with(ROLES_EXTENSION, roles.to_bytes())?;
        let (commit, welcome, _) = self
            .group
            .update_group_context_extensions(provider, exts, identity)
            .map_err(mls)?;
        self.outgoing(epoch, commit, welcome)
    }

    /// Current members, in leaf order.
    pub fn members(&self) -> Vec<MemberInfo> {
        self.group
            .members()
            .filter_map(|m| {
                self.group
                    .public_group()
                    .leaf(m.index)
                    .and_then(|l| member_from_leaf(l, m.index))
            })
            .collect()
    }

    /// Whether [`Channel::members`] lists every leaf of the tree, each identity once: the
    /// credential policy holds for the whole group.
    pub fn tree_is_listed(&self) -> bool {
        let listed = self.members();
        let mut keys: Vec<[u8; 32]> = listed.iter().map(|m| m.identity_key).collect();
        keys.sort_unstable();
        keys.dedup();
        listed.len() == self.group.members().count() && keys.len() == listed.len()
    }

    /// Whether proposals wait to be committed.
    pub fn has_pending_proposals(&self) -> bool {
        self.group.has_pending_proposals()
    }

    /// Sets the trail that the next application message or commit made here carries
    /// (in its MLS authenticated data; cleared once that message is made).
    pub fn set_trail(&mut self, trail: &Trail) {
        // Memory only, and cleared before a group is kept (`Channel::keep`).
        self.group.set_aad(trail.to_bytes());
    }

    /// Encrypts application data for the channel.
    pub fn encrypt(
        &mut self,
        provider: &Provider,
        identity: &Identity,
        plaintext: &[u8],
    ) -> Result<Vec<u8>, ChannelError> {
        let result = self.encrypt_inner(provider, identity, plaintext);
        self.resync(provider, result)
    }

    fn encrypt_inner(
        &mut self,
        provider: &Provider,
        identity: &Identity,
        plaintext: &[u8],
    ) -> Result<Vec<u8>, ChannelError> {
        if !self.group.is_active() {
            return Err(ChannelError::NotAMember);
        }
        let out = past_unchanged(provider, &mut self.group, self.synced, |g| {
            g.create_message(provider, identity, plaintext)
        })
        .map_err(mls)?;
        out.tls_serialize_detached().map_err(mls)
    }

    fn outgoing(
        &self,
        epoch: u64,
        commit: MlsMessageOut,
        welcome: Option<MlsMessageOut>,
    ) -> Result<OutgoingCommit, ChannelError> {
        Ok(OutgoingCommit {
            epoch,
            commit: commit.tls_serialize_detached().map_err(mls)?,
            welcome: welcome.map(|w| w.tls_serialize_detached()).transpose().map_err(mls)?,
        })
    }

    /// Stages a commit adding the members of `key_packages`.
    pub fn add(
        &mut self,
        provider: &Provider,
        identity: &Identity,
        kps: Vec<ValidKeyPackage>,
    ) -> Result<OutgoingCommit, ChannelError> {
        self.unsync();
        let epoch = self.epoch();
        let kps: Vec<KeyPackage> = kps.into_iter().map(|k| k.key_package).collect();
        let (commit, welcome, _) = self.group.add_members(provider, identity, &kps).map_err(mls)?;
        self.outgoing(epoch, commit, Some(welcome))
    }

    /// The leaves of the members with these fingerprints (at least one).
    fn leaves_of(&self, who: &[Fingerprint]) -> Result<Vec<LeafNodeIndex>, ChannelError> {
        let leaves: Vec<LeafNodeIndex> = self
            .members()
            .into_iter()
            .filter(|m| who.contains(&m.fingerprint))
            .map(|m| LeafNodeIndex::new(m.leaf))
            .collect();
        if leaves.is_empty() {
            return Err(ChannelError::NoSuchMember);
        }
        Ok(leaves)
    }

    /// The group context's extensions with the one of type `kind` replaced by `bytes`.
    fn context_with(&self, kind: u16, bytes: Vec<u8>) -> Result<Extensions<GroupContext>, ChannelError> {
        let kept = self
            .group
            .extensions()
            .iter()
            .filter(|e| e.extension_type() != ExtensionType::Unknown(kind))
            .cloned();
        Extensions::from_vec(
            kept.chain([Extension::Unknown(kind, UnknownExtension(bytes))])
                .collect(),
        )
        .map_err(mls)
    }

    /// Stages a commit removing the members with these fingerprints.
    pub fn remove(
        &mut self,
        provider: &Provider,
        identity: &Identity,
        who: &[Fingerprint],
    ) -> Result<OutgoingCommit, ChannelError> {
        self.unsync();
        let epoch = self.epoch();
        let leaves = self.leaves_of(who)?;
        let (commit, welcome, _) = self.group.remove_members(provider, identity, &leaves).map_err(mls)?;
        self.outgoing(epoch, commit, welcome)
    }

    /// Stages a commit removing `who` (and the proposals received so far) that also moves
    /// the channel's sequencer to `sequencer`, a fresh mailbox on the same relay: the
    /// removed members knew the old one (docs/protocol.md, "Claims").
    pub fn remove_moving_sequencer(
        &mut self,
        provider: &Provider,
        identity: &Identity,
        who: &[Fingerprint],
        sequencer: &MailboxAddress,
    ) -> Result<OutgoingCommit, ChannelError> {
        self.unsync();
        let leaves = self.leaves_of(who)?;
        self.commit_moving_sequencer(provider, identity, leaves, sequencer)
    }

    /// Stages a commit of the proposals received so far that moves the sequencer to
    /// `sequencer`, a fresh mailbox on the same relay: with proposals that remove someone
    /// (a leave), any member's; without, an admin's weekly move.
    pub fn move_sequencer(
        &mut self,
        provider: &Provider,
        identity: &Identity,
        sequencer: &MailboxAddress,
    ) -> Result<OutgoingCommit, ChannelError> {
        self.unsync();
        self.commit_moving_sequencer(provider, identity, Vec::new(), sequencer)
    }

    /// Whether a proposal waiting to be committed removes someone.
    pub fn has_pending_removals(&self) -> bool {
        self.group
            .pending_proposals()
            .any(|q| matches!(q.proposal(), Proposal::Remove(_) | Proposal::SelfRemove))
    }

    fn commit_moving_sequencer(
        &mut self,
        provider: &Provider,
        identity: &Identity,
        removals: Vec<LeafNodeIndex>,
        sequencer: &MailboxAddress,
    ) -> Result<OutgoingCommit, ChannelError> {
        self.unsync();
        let epoch = self.epoch();
        let mut info = self.info()?;
        if info.sequencer.relay != sequencer.relay {
            return Err(ChannelError::Invalid("a sequencer moves only within its relay"));
        }
        info.sequencer = sequencer.clone();
        let exts = self.context_with(CHANNEL_INFO_EXTENSION, info.to_bytes())?;
        let bundle = self
            .group
            .commit_builder()
            .propose_removals(removals)
            .propose_group_context_extensions(exts)
            .map_err(mls)?
            .load_psks(provider.storage())
            .map_err(mls)?
            .build(provider.rand(), provider.crypto(), identity, |_| true)
            .map_err(mls)?
            .stage_commit(provider)
            .map_err(mls)?;
        let welcome = bundle.to_welcome_msg();
        let (commit, _, _) = bundle.into_contents();
        self.outgoing(epoch, commit, welcome)
    }

    /// Stages a commit of the proposals received so far.
    pub fn commit_pending(&mut self, provider: &Provider, identity: &Identity) -> Result<OutgoingCommit, ChannelError> {
        self.unsync();
        let epoch = self.epoch();
        let (commit, welcome, _) = self
            .group
            .commit_to_pending_proposals(provider, identity)
            .map_err(mls)?;
        self.outgoing(epoch, commit, welcome)
    }

    /// Stages a commit that refreshes this member's keys (post-compromise
    /// security) and, if given, announces a new mailbox for it (rotation).
    pub fn self_update(
        &mut self,
        provider: &Provider,
        identity: &Identity,
        new_mailbox: Option<&MailboxAddress>,
    ) -> Result<OutgoingCommit, ChannelError> {
        self.unsync();
        let epoch = self.epoch();
        let params = match new_mailbox {
            Some(m) => LeafNodeParameters::builder()
                .with_extensions(leaf_extensions(m)?)
                .build(),
            None => LeafNodeParameters::default(),
        };
        let bundle = self.group.self_update(provider, identity, params).map_err(mls)?;
        let (commit, welcome, _) = bundle.into_messages();
        self.outgoing(epoch, commit, welcome)
    }

    /// Proposals to remove these members, for whoever commits next: every commit must
    /// then carry them, or the other members refuse it ([`Rejection::LeavesOutRemoval`]).
    pub fn propose_removal(
        &mut self,
        provider: &Provider,
        identity: &Identity,
        who: &[Fingerprint],
    ) -> Result<Vec<Vec<u8>>, ChannelError> {
        self.unsync();
        let leaves: Vec<u32> = self
            .members()
            .iter()
            .filter(|m| who.contains(&m.fingerprint))
            .map(|m| m.leaf)
            .collect();
        leaves
            .into_iter()
            .map(|leaf| {
                let (msg, _) = self
                    .group
                    .propose_remove_member(provider, identity, LeafNodeIndex::new(leaf))
                    .map_err(mls)?;
                msg.tls_serialize_detached().map_err(mls)
            })
            .collect()
    }

    /// A proposal to remove this member, for the others to commit.
    pub fn leave(&mut self, provider: &Provider, identity: &Identity) -> Result<Vec<u8>, ChannelError> {
        self.unsync();
        let out = self.group.leave_group(provider, identity).map_err(mls)?;
        out.tls_serialize_detached().map_err(mls)
    }

    /// The channel code of the current epoch (docs/protocol.md, "Channel code"): members
    /// in the same epoch of one channel see the same 30 digits; a member whose channel was
    /// split from the others' sees different ones.
    pub fn channel_code(&self) -> String {
        use sha2::{Digest, Sha512};
        let mut h = Sha512::new()
            .chain_update(b"backchannel/v1/channel-code")
            .chain_update(self.epoch().to_be_bytes())
            .chain_update(self.group.epoch_authenticator().as_slice());
        for m in self.group.members() {
            h.update(m.index.u32().to_be_bytes());
            h.update((m.credential.serialized_content().len() as u32).to_be_bytes());
            h.update(m.credential.serialized_content());
            h.update(&m.signature_key);
        }
        let digest = h.finalize();
        let groups: Vec<String> = digest
            .chunks_exact(5)
            .take(6)
            .map(|c| {
                let v = c.iter().fold(0u64, |v, b| (v << 8) | u64::from(*b));
                format!("{:05}", v % 100_000)
            })
            .collect();
        groups.join(" ")
    }

    /// The current epoch's claim key: what the sequencer's lock for this epoch opens with.
    pub fn claim_key(&self, provider: &Provider) -> Result<[u8; 32], ChannelError> {
        exported_key(self.group.export_secret(provider.crypto(), CLAIM_KEY_LABEL, &[], 32))
    }

    /// The keys that claim the current epoch for the staged commit: the current epoch's
    /// claim key and the lock of the next one (see [`crate::frame::Request::ClaimKeyed`]).
    /// `None` when no commit is staged.
    pub fn claim_keys(&self, provider: &Provider) -> Result<Option<ClaimKeys>, ChannelError> {
        let Some(staged) = self.group.pending_commit() else {
            return Ok(None);
        };
        let key = self.claim_key(provider)?;
        let mut next_key = exported_key(staged.export_secret(provider.crypto(), CLAIM_KEY_LABEL, &[], 32))?;
        let next = crate::frame::claim_lock(&next_key);
        zeroize::Zeroize::zeroize(&mut next_key);
        Ok(Some(ClaimKeys { key, next }))
    }

    /// The sequencer the staged commit names, when it moves the channel's sequencer (to
    /// a fresh mailbox the committer made): the committer locks that one for the next
    /// epoch before anyone else can learn it. `None` without a staged commit or a move.
    pub fn staged_sequencer(&self) -> Option<MailboxAddress> {
        let staged = self.group.pending_commit()?;
        let ext = staged.group_context().extensions().unknown(CHANNEL_INFO_EXTENSION)?;
        let next = ChannelInfo::from_bytes(&ext.0).ok()?.sequencer;
        (Some(&next) != self.info().ok().as_ref().map(|i| &i.sequencer)).then_some(next)
    }

    /// Applies the staged commit after it won its epoch.
    pub fn merge_pending(&mut self, provider: &Provider) -> Result<(), ChannelError> {
        self.unsync();
        self.group.merge_pending_commit(provider).map_err(mls)
    }

    /// Drops the staged commit after it lost its epoch.
    pub fn discard_pending(&mut self, provider: &Provider) -> Result<(), ChannelError> {
        self.unsync();
        self.group.clear_pending_commit(provider.storage()).map_err(mls)
    }

    /// Processes an incoming MLS message (attacker input).
    pub fn process(&mut self, provider: &Provider, bytes: &[u8]) -> Result<Received, Rejection> {
        let result = self.process_inner(provider, bytes);
        self.resync(provider, result)
    }

    fn process_inner(&mut self, provider: &Provider, bytes: &[u8]) -> Result<Received, Rejection> {
        let msg = MlsMessageIn::tls_deserialize_exact(bytes).map_err(|_| Rejection::Malformed)?;
        let proto = msg.try_into_protocol_message().map_err(|_| Rejection::Malformed)?;
        if proto.group_id() != self.group.group_id() {
            return Err(Rejection::Malformed);
        }
        // The header's epoch is not authenticated: a caller that keeps such a
        // message for later must bound how many it keeps.
        let epoch = proto.epoch().as_u64();
        if epoch > self.epoch() {
            return Err(Rejection::FutureEpoch(epoch));
        }
        // openmls reads a message with the secrets of the epoch its header names: a
        // message of the current epoch leaves the past epochs' alone.
        let synced = self.synced.filter(|_| epoch == self.epoch());
        let processed = past_unchanged(provider, &mut self.group, synced, |g| {
            g.process_message(provider, proto)
        })
        .map_err(|e| {
            use openmls::framing::errors::{MessageDecryptionError, SecretTreeError};
            match e {
                ProcessMessageError::ValidationError(ValidationError::UnableToDecrypt(
                    MessageDecryptionError::SecretTreeError(SecretTreeError::TooDistantInTheFuture),
                )) => Rejection::TooFarAhead,
                _ => Rejection::Unverified,
            }
        })?;
        let sender_leaf = match processed.sender() {
            Sender::Member(i) => Some(*i),
            _ => None,
        };
        let (sender_key, _) = parse_credential(processed.credential()).ok_or(Rejection::UnknownSender)?;
        let trail = Trail::from_bytes(processed.aad());
        let content = processed.into_content();
        if let ProcessedMessageContent::ApplicationMessage(app) = content {
            return Ok(Received::Application {
                sender: self.application_sender(sender_leaf, &sender_key)?,
                plaintext: app.into_bytes(),
                epoch,
                trail,
            });
        }
        let current = self.members();
        let sender = current.iter().find(|m| m.identity_key == sender_key).cloned();
        match content {
            ProcessedMessageContent::ProposalMessage(p) => {
                let Some(sender) = sender else {
                    return Err(Rejection::RemovedMember);
                };
                self.check_proposal(p.proposal(), &sender, &current)?;
                self.group
                    .store_pending_proposal(provider.storage(), *p)
                    .map_err(|_| Rejection::Unverified)?;
                Ok(Received::Proposal {
                    sender: Some(sender),
                    trail,
                })
            }
            ProcessedMessageContent::StagedCommitMessage(staged) => {
                self.check_commit(&staged, sender.as_ref(), &current)?;
                let at = |i: u32| current.iter().find(|m| m.leaf == i).cloned();
                let removed: Vec<(MemberInfo, Option<MemberInfo>)> = staged
                    .remove_proposals()
                    .filter_map(|r| {
                        let member = at(r.remove_proposal().removed().u32())?;
                        let proposer = match r.sender() {
                            Sender::Member(i) => at(i.u32()),
                            _ => None,
                        };
                        Some((member, proposer))
                    })
                    .collect();
                let self_removed = staged.self_removed();
                self.group
                    .merge_staged_commit(provider, *staged)
                    .map_err(|_| Rejection::Unverified)?;
                let after = self.members();
                let added = after
                    .iter()
                    .filter(|m| !current.iter().any(|c| c.identity_key == m.identity_key))
                    .cloned()
                    .collect();
                Ok(Received::Commit {
                    committer: sender,
                    added,
                    removed,
                    self_removed,
                    trail,
                })
            }
            _ => Err(Rejection::Malformed),
        }
    }

    /// The credential policy on a proposal (RFC 9420 leaves credential checks to the
    /// application): an added leaf must be a member this client lists, not one already
    /// in; an updated leaf must keep its member's identity.
    fn check_proposal(&self, p: &Proposal, sender: &MemberInfo, current: &[MemberInfo]) -> Result<(), Rejection> {
        if !self.allows(&sender.identity_key, act_of(p, sender, current)) {
            return Err(Rejection::Forbidden);
        }
        if let Proposal::GroupContextExtensions(g) = p {
            self.check_context(g.extensions())?;
        }
        match p {
            Proposal::Add(add) => check_new_leaf(add.key_package().leaf_node(), current),
            Proposal::Update(u) => check_same_member(u.leaf_node(), sender),
            _ => Ok(()),
        }
    }

    /// The credential policy on every leaf a commit adds or changes ([`Self::check_proposal`]
    /// for each proposal, and the committer's new path leaf).
    fn check_commit(
        &self,
        staged: &StagedCommit,
        committer: Option<&MemberInfo>,
        current: &[MemberInfo],
    ) -> Result<(), Rejection> {
        // Roles: each proposal against its proposer's (the committer's, for one made in
        // the commit itself), under the roles before the commit.
        // The one exception: a commit that removes someone may move the sequencer (on the
        // same relay, and nothing else of the context), whoever commits it.
        let removes = staged
            .queued_proposals()
            .any(|q| matches!(q.proposal(), Proposal::Remove(_) | Proposal::SelfRemove));
        for q in staged.queued_proposals() {
            let proposer = match q.sender() {
                Sender::Member(i) => current.iter().find(|m| m.leaf == i.u32()),
                _ => None,
            }
            .ok_or(Rejection::Forbidden)?;
            if let Proposal::GroupContextExtensions(g) = q.proposal() {
                if removes && self.moves_only_the_sequencer(g.extensions()) {
                    continue;
                }
            }
            if !self.allows(&proposer.identity_key, act_of(q.proposal(), proposer, current)) {
                return Err(Rejection::Forbidden);
            }
        }
        // A member whose removal by another (an admin: checked against the proposer's role
        // when it arrived) waits here may commit nothing: its commit would leave the removal
        // out (MLS lets nobody commit its own), and so keep it in. Only this case: a commit
        // that leaves out someone else's waiting removal may simply have been made before
        // that proposal reached its committer (the removal is then proposed again).
        if let Some(c) = committer {
            let targeted = self.group.pending_proposals().any(|q| {
                matches!(q.proposal(), Proposal::Remove(r) if r.removed().u32() == c.leaf)
                    && matches!(q.sender(), Sender::Member(i) if i.u32() != c.leaf)
            });
            if targeted {
                return Err(Rejection::LeavesOutRemoval);
            }
        }
        if staged.group_context().extensions() != self.group.extensions() {
            self.check_context(staged.group_context().extensions())?;
        }
        let mut adding: Vec<MemberInfo> = current.to_vec();
        for add in staged.add_proposals() {
            let leaf = add.add_proposal().key_package().leaf_node();
            check_new_leaf(leaf, &adding)?;
            adding.extend(member_from_leaf_node(leaf));
        }
        for u in staged.update_proposals() {
            let Sender::Member(i) = u.sender() else {
                return Err(Rejection::Policy);
            };
            let owner = current.iter().find(|m| m.leaf == i.u32()).ok_or(Rejection::Policy)?;
            check_same_member(u.update_proposal().leaf_node(), owner)?;
        }
        if let Some(leaf) = staged.update_path_leaf_node() {
            check_same_member(leaf, committer.ok_or(Rejection::Policy)?)?;
        }
        Ok(())
    }

    /// Whether `next` is the group context with only the sequencer moved (to another
    /// mailbox of the same relay).
    fn moves_only_the_sequencer(&self, next: &Extensions<GroupContext>) -> bool {
        let (Some(mut moved), Ok(now)) = (
            next.unknown(CHANNEL_INFO_EXTENSION)
                .and_then(|e| ChannelInfo::from_bytes(&e.0).ok()),
            self.info(),
        ) else {
            return false;
        };
        let others_kept = next
            .iter()
            .filter(|e| e.extension_type() != ExtensionType::Unknown(CHANNEL_INFO_EXTENSION))
            .eq(self
                .group
                .extensions()
                .iter()
                .filter(|e| e.extension_type() != ExtensionType::Unknown(CHANNEL_INFO_EXTENSION)));
        let same_relay = moved.sequencer.relay == now.sequencer.relay;
        moved.sequencer = now.sequencer.clone();
        others_kept && same_relay && moved == now
    }

    /// What a change to the group context may be: the channel info with its sequencer on
    /// the same relay (nobody moves the channel's ordering elsewhere), and roles that
    /// parse, kept in a channel that has them.
    fn check_context(&self, next: &Extensions<GroupContext>) -> Result<(), Rejection> {
        let info = next
            .unknown(CHANNEL_INFO_EXTENSION)
            .and_then(|e| ChannelInfo::from_bytes(&e.0).ok())
            .ok_or(Rejection::Policy)?;
        let now = self.info().map_err(|_| Rejection::Policy)?;
        if info.sequencer.relay != now.sequencer.relay {
            return Err(Rejection::Policy);
        }
        if self.roles().is_some() && roles_in(next).is_none() {
            return Err(Rejection::Policy);
        }
        Ok(())
    }

    /// The sender of an application message: the current member at the
    /// sender's leaf, whose identity key must be the key MLS verified (and
    /// the leaf's signature key, [`member_from_leaf`]). Reads that one leaf;
    /// only when it does not match is the member list searched, as for the
    /// other messages, to tell a removed sender from an unknown one.
    fn application_sender(&self, leaf: Option<LeafNodeIndex>, key: &[u8; 32]) -> Result<MemberInfo, Rejection> {
        let at_leaf = leaf.and_then(|i| {
            self.group
                .public_group()
                .leaf(i)
                .and_then(|node| member_from_leaf(node, i))
        });
        if let Some(member) = at_leaf.filter(|m| m.identity_key == *key) {
            return Ok(member);
        }
        let sender = self
            .members()
            .into_iter()
            .find(|m| m.identity_key == *key)
            .ok_or(Rejection::RemovedMember)?;
        if leaf != Some(LeafNodeIndex::new(sender.leaf)) {
            return Err(Rejection::UnknownSender);
        }
        Ok(sender)
    }

    /// Deletes the group's state from the provider, and any copy of it kept decoded.
    pub fn delete(mut self, provider: &Provider) -> Result<(), ChannelError> {
        provider.forget_loaded(self.group.group_id().as_slice());
        self.group.delete(provider.storage()).map_err(mls)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::codec::Writer;
    use crate::mailbox::MailboxKeys;
    use crate::relay_address::RelayAddress;
    use proptest::prelude::*;

    fn sequencer() -> MailboxAddress {
        let relay = RelayAddress {
            pin: [7; 32],
            host: "127.0.0.1".into(),
            port: 7000,
        };
        MailboxKeys::generate(relay, &mut rand_core::OsRng).address.clone()
    }

    /// The description of a channel "room" without a lifetime.
    fn room() -> ChannelInfo {
        ChannelInfo {
            name: "room".into(),
            sequencer: sequencer(),
            created_at: 1,
            disappear_after: 0,
            expires_at: 0,
        }
    }

    /// A three-member channel: (provider, identity, channel) for alice (its admin), bob
    /// and mallory; with `members_invite`, bob and mallory may add members too.
    fn trio(members_invite: bool) -> Vec<(Provider, Identity, Channel)> {
        let suite = Suite::Classical;
        let info = room();
        let alice = (
            Provider::new().unwrap(),
            Identity::generate("alice", &mut rand_core::OsRng).unwrap(),
        );
        let mut alice_ch = Channel::create(&alice.0, &alice.1, &info, &sequencer(), suite, members_invite).unwrap();
        let mut out: Vec<(Provider, Identity, Channel)> = Vec::new();
        for name in ["bob", "mallory"] {
            let p = Provider::new().unwrap();
            let id = Identity::generate(name, &mut rand_core::OsRng).unwrap();
            let kp = key_package(&p, &id, &sequencer(), suite).unwrap();
            let valid = validate_key_package(&alice.0, &kp).unwrap();
            let c = alice_ch.add(&alice.0, &alice.1, vec![valid]).unwrap();
            alice_ch.merge_pending(&alice.0).unwrap();
            for (op, _, och) in out.iter_mut() {
                och.process(op, &c.commit).unwrap();
            }
            let (ch, _) = Channel::join(&p, c.welcome.as_ref().unwrap()).unwrap();
            out.push((p, id, ch));
        }
        out.insert(0, (alice.0, alice.1, alice_ch));
        out
    }

    /// How many groups the provider's cache holds that a load would take.
    fn cached(p: &Provider) -> usize {
        let now = p.storage.version();
        p.loaded().iter().filter(|(v, _)| *v == now).count()
    }

    #[test]
    fn a_kept_group_is_taken_back_only_while_it_is_what_the_store_holds() {
        let mut t = trio(false);
        let (bp, _, bob) = t.remove(1);
        let (ap, aid, alice) = t.remove(0);
        let gid = alice.group_id();
        let load = |p: &Provider| Channel::load(p, &gid).unwrap().unwrap();
        // Alice's last change was merging her commit (not known to equal the store);
        // bob's was joining.
        alice.keep(&ap);
        bob.keep(&bp);
        assert_eq!((cached(&ap), cached(&bp)), (0, 1));
        load(&ap).keep(&ap);
        assert_eq!(cached(&ap), 1, "a group just loaded is what the store holds");

        // Two instances of one group at once: only the one that wrote last is kept.
        // Were the older one kept, alice's next message would reuse the first one's key
        // and nonce, and bob would refuse it.
        let older = load(&ap);
        assert_eq!(cached(&ap), 0, "a load takes the group out of the cache");
        let mut newer = load(&ap);
        let m1 = newer.encrypt(&ap, &aid, b"one").unwrap();
        newer.keep(&ap);
        older.keep(&ap);
        assert_eq!(cached(&ap), 1);
        let mut again = load(&ap);
        let m2 = again.encrypt(&ap, &aid, b"two").unwrap();
        again.keep(&ap);
        for (m, text) in [(m1, &b"one"[..]), (m2, b"two")] {
            let mut b = load(&bp);
            match b.process(&bp, &m).unwrap() {
                Received::Application { plaintext, .. } => assert_eq!(plaintext, text),
                other => panic!("{other:?}"),
            }
            b.keep(&bp);
            assert_eq!(cached(&bp), 1, "a group that read a message is kept");
        }

        // A message refused leaves the instance unknown: not kept.
        let mut b = load(&bp);
        assert!(b.process(&bp, b"\x00garbage").is_err());
        b.keep(&bp);
        assert_eq!(cached(&bp), 0);

        // What openmls keeps in memory only (the trail for the next message) is not kept.
        let mut a = load(&ap);
        a.set_trail(&Trail::default());
        assert!(!a.group.aad().is_empty());
        a.keep(&ap);
        assert_eq!(cached(&ap), 1);
        assert!(load(&ap).group.aad().is_empty());

        // After any other change, a later message does not make the instance keepable again.
        let mut a = load(&ap);
        a.discard_pending(&ap).unwrap();
        a.encrypt(&ap, &aid, b"after").unwrap();
        a.keep(&ap);
        assert_eq!(cached(&ap), 0);

        // A group is kept only by the provider it came from.
        let other = Provider::new().unwrap();
        load(&ap).keep(&other);
        assert!(other.loaded().is_empty());

        // Any write to the store (here, a key package) makes a kept group stale.
        load(&ap).keep(&ap);
        assert_eq!(cached(&ap), 1);
        key_package(&ap, &aid, &sequencer(), Suite::Classical).unwrap();
        assert_eq!(cached(&ap), 0);

        // A commit: the committer's instance is not kept, the reader's is; both go on.
        let mut a = load(&ap);
        let c = a.self_update(&ap, &aid, None).unwrap();
        a.merge_pending(&ap).unwrap();
        a.keep(&ap);
        assert_eq!(cached(&ap), 0);
        let mut b = load(&bp);
        assert!(matches!(b.process(&bp, &c.commit).unwrap(), Received::Commit { .. }));
        b.keep(&bp);
        assert_eq!(cached(&bp), 1);
        let mut a = load(&ap);
        let m3 = a.encrypt(&ap, &aid, b"three").unwrap();
        a.keep(&ap);
        let mut b = load(&bp);
        assert!(matches!(b.process(&bp, &m3).unwrap(), Received::Application { .. }));
        assert_eq!(b.epoch(), load(&ap).epoch());

        // A channel deleted takes its kept copy with it, valid or not.
        b.keep(&bp);
        let kept = load(&bp);
        let other = load(&bp);
        kept.keep(&bp);
        assert_eq!(cached(&bp), 1);
        other.delete(&bp).unwrap();
        assert!(bp.loaded().is_empty());
        assert!(Channel::load(&bp, &gid).unwrap().is_none());
    }

    /// A key package whose credential names one key and whose leaf signs with another.
    fn forged_key_package(provider: &Provider) -> KeyPackage {
        let ghost = Identity::generate("ghost", &mut rand_core::OsRng).unwrap();
        let mut id = [9u8; 32].to_vec();
        id.extend_from_slice(b"ghost");
        KeyPackage::builder()
            .leaf_node_capabilities(capabilities(Suite::Classical))
            .leaf_node_extensions(leaf_extensions(&sequencer()).unwrap())
            .build(
                Suite::Classical.ciphersuite(),
                provider,
                &ghost,
                CredentialWithKey {
                    credential: BasicCredential::new(id).into(),
                    signature_key: ghost.public_key().to_vec().into(),
                },
            )
            .unwrap()
            .key_package()
            .clone()
    }

    /// Finding 5 of the integrity review: mallory, a member who is not an admin, drives
    /// the channel directly (past this client's own checks): her commits removing bob,
    /// adding someone, or making herself an admin, and her proposal to remove bob, are
    /// refused by alice and bob and not merged. What a member may do still goes: her leave,
    /// bob's key update. Alice, the admin, makes bob an admin, and then bob may remove.
    #[test]
    fn a_member_who_is_not_an_admin_cannot_remove_invite_or_take_roles() {
        let mut t = trio(false);
        let keys: Vec<[u8; 32]> = t.iter().map(|(_, id, _)| id.public_key()).collect();
        let bob_fp = t[1].1.fingerprint();
        let (mp, mid, mut mch) = t.remove(2);
        let epoch = t[0].2.epoch();
        let dave = (
            Provider::new().unwrap(),
            Identity::generate("dave", &mut rand_core::OsRng).unwrap(),
        );
        let dave_kp = key_package(&dave.0, &dave.1, &sequencer(), Suite::Classical).unwrap();
        let dave_kp = validate_key_package(&mp, &dave_kp).unwrap();
        let forged_roles = t[0].2.roles().unwrap().with_admin(mid.public_key(), true);
        let attempts = [
            mch.remove(&mp, &mid, &[bob_fp]).unwrap().commit,
            {
                mch.discard_pending(&mp).unwrap();
                mch.add(&mp, &mid, vec![dave_kp]).unwrap().commit
            },
            {
                mch.discard_pending(&mp).unwrap();
                mch.set_roles(&mp, &mid, &forged_roles).unwrap().commit
            },
        ];
        mch.discard_pending(&mp).unwrap();
        for bytes in &attempts {
            for (p, _, ch) in t.iter_mut() {
                assert_eq!(ch.process(p, bytes).unwrap_err(), Rejection::Forbidden);
                assert_eq!(ch.epoch(), epoch, "not merged");
            }
        }
        let leaf = mch.members().iter().find(|m| m.fingerprint == bob_fp).unwrap().leaf;
        let proposal = mch
            .group
            .propose_remove_member(&mp, &mid, LeafNodeIndex::new(leaf))
            .unwrap()
            .0
            .tls_serialize_detached()
            .unwrap();
        for (p, _, ch) in t.iter_mut() {
            assert_eq!(ch.process(p, &proposal).unwrap_err(), Rejection::Forbidden);
            assert!(!ch.has_pending_proposals());
        }
        for (p, _, ch) in t.iter() {
            assert!(!ch.allows(&keys[2], Act::RemoveOther) && !ch.allows(&keys[1], Act::Close));
            assert!(ch.allows(&keys[0], Act::RemoveOther) && ch.allows(&keys[2], Act::Leave));
            let _ = p;
        }
        // Her leave is hers to propose.
        let leave = mch.leave(&mp, &mid).unwrap();
        for (p, _, ch) in t.iter_mut() {
            assert!(matches!(ch.process(p, &leave).unwrap(), Received::Proposal { .. }));
        }
        // The admin makes bob an admin; every member reads it, and bob may now remove.
        let (ap, aid, ach) = &mut t[0];
        let roles = ach.roles().unwrap().with_admin(keys[1], true);
        let out = ach.set_roles(ap, aid, &roles).unwrap();
        ach.merge_pending(ap).unwrap();
        let (bp, _, bch) = &mut t[1];
        assert!(matches!(bch.process(bp, &out.commit).unwrap(), Received::Commit { .. }));
        assert!(bch.allows(&keys[1], Act::RemoveOther));
        assert_eq!(bch.roles(), t[0].2.roles());
    }

    /// Finding 1: an admin's removal, once proposed, cannot be dodged. Alice proposes
    /// mallory's removal (her own commit kept losing); mallory, past this client's checks,
    /// clears it from her store and commits a key update without it: alice and bob refuse
    /// that commit. Bob's next commit carries the removal, and mallory is out.
    #[test]
    fn a_commit_that_leaves_out_a_waiting_removal_is_refused() {
        let mut t = trio(false);
        let mallory_fp = t[2].1.fingerprint();
        let epoch = t[0].2.epoch();
        let proposals = {
            let (ap, aid, ach) = &mut t[0];
            ach.propose_removal(ap, aid, &[mallory_fp]).unwrap()
        };
        assert_eq!(proposals.len(), 1);
        for (p, _, ch) in t.iter_mut().skip(1) {
            assert!(matches!(
                ch.process(p, &proposals[0]).unwrap(),
                Received::Proposal { .. }
            ));
        }
        let dodge = {
            let (mp, mid, mch) = &mut t[2];
            mch.group.clear_pending_proposals(mp.storage()).unwrap();
            mch.self_update(mp, mid, None).unwrap().commit
        };
        for (p, _, ch) in t.iter_mut().take(2) {
            assert_eq!(ch.process(p, &dodge).unwrap_err(), Rejection::LeavesOutRemoval);
            assert_eq!(ch.epoch(), epoch, "not merged");
            assert!(ch.has_pending_removals(), "the removal still waits");
        }
        let out = {
            let (bp, bid, bch) = &mut t[1];
            let out = bch.commit_pending(bp, bid).unwrap();
            bch.merge_pending(bp).unwrap();
            out
        };
        let (ap, _, ach) = &mut t[0];
        assert!(matches!(ach.process(ap, &out.commit).unwrap(), Received::Commit { .. }));
        assert!(!ach.members().iter().any(|m| m.fingerprint == mallory_fp));
        assert_eq!(ach.members(), t[1].2.members());
    }

    /// Finding 1: a commit that removes someone moves the sequencer to a fresh mailbox of
    /// the same relay, whoever commits it (here bob, not an admin, commits mallory's leave).
    /// Moving it without a removal is the admins' alone, and to another relay nobody's.
    #[test]
    fn a_removal_moves_the_sequencer_within_its_relay_and_nothing_else_does() {
        let mut t = trio(false);
        let (mp, mid, mch) = &mut t[2];
        let leave = mch.leave(mp, mid).unwrap();
        for (p, _, ch) in t.iter_mut().take(2) {
            assert!(matches!(ch.process(p, &leave).unwrap(), Received::Proposal { .. }));
        }
        let before = t[0].2.info().unwrap().sequencer;
        let elsewhere = {
            let relay = RelayAddress {
                pin: [8; 32],
                host: "10.0.0.9".into(),
                port: 7000,
            };
            MailboxKeys::generate(relay, &mut rand_core::OsRng).address.clone()
        };
        let same_relay = MailboxKeys::generate(before.relay.clone(), &mut rand_core::OsRng)
            .address
            .clone();
        let (bp, bid, bch) = &mut t[1];
        // Another relay: bob's own client refuses to make it; driven past that, everyone
        // refuses it. Without a removal: only an admin may.
        assert!(bch.move_sequencer(bp, bid, &elsewhere).is_err());
        let mut forged = bch.info().unwrap();
        forged.sequencer = same_relay.clone();
        let exts = bch.context_with(CHANNEL_INFO_EXTENSION, forged.to_bytes()).unwrap();
        let alone = bch
            .group
            .commit_builder()
            .consume_proposal_store(false)
            .propose_group_context_extensions(exts)
            .unwrap()
            .load_psks(bp.storage())
            .unwrap()
            .build(bp.rand(), bp.crypto(), bid, |_| true)
            .unwrap()
            .stage_commit(bp)
            .unwrap()
            .into_contents()
            .0;
        bch.discard_pending(bp).unwrap();
        let (ap, _, ach) = &mut t[0];
        assert_eq!(
            ach.process(ap, &alone.tls_serialize_detached().unwrap()).unwrap_err(),
            Rejection::Forbidden
        );
        // With the leave it commits: accepted, and the channel's sequencer is the new one.
        let (bp, bid, bch) = &mut t[1];
        let out = bch.move_sequencer(bp, bid, &same_relay).unwrap();
        bch.merge_pending(bp).unwrap();
        let (ap, _, ach) = &mut t[0];
        assert!(matches!(ach.process(ap, &out.commit).unwrap(), Received::Commit { .. }));
        assert_eq!(ach.info().unwrap().sequencer, same_relay);
        assert_eq!(ach.members().len(), 2);
    }

    /// Finding 2 of the integrity review: a hostile member (mallory, driving openmls
    /// directly, past this client's checks) adds a leaf whose credential does not match its
    /// key, proposes one, and updates her own leaf to another name. Each is refused by the
    /// others, not merged, and `members` never disagrees with the tree.
    #[test]
    fn a_hostile_members_invisible_or_renamed_leaves_are_refused() {
        // Members may add here: what is refused is the leaf, not mallory's role.
        let mut t = trio(true);
        let (mallory, rest) = t.split_last_mut().unwrap();
        let kp = forged_key_package(&mallory.0);
        let (commit, _, _) = mallory
            .2
            .group
            .add_members(&mallory.0, &mallory.1, std::slice::from_ref(&kp))
            .unwrap();
        mallory.2.group.clear_pending_commit(mallory.0.storage()).unwrap();
        let commit = commit.tls_serialize_detached().unwrap();
        let proposal = mallory
            .2
            .group
            .propose_add_member(&mallory.0, &mallory.1, &kp)
            .unwrap()
            .0
            .tls_serialize_detached()
            .unwrap();
        mallory.2.group.clear_pending_proposals(mallory.0.storage()).unwrap();
        let renamed = {
            let mut id = mallory.1.public_key().to_vec();
            id.extend_from_slice(b"alice");
            let params = LeafNodeParameters::builder()
                .with_credential_with_key(CredentialWithKey {
                    credential: BasicCredential::new(id).into(),
                    signature_key: mallory.1.public_key().to_vec().into(),
                })
                .build();
            let bundle = mallory.2.group.self_update(&mallory.0, &mallory.1, params).unwrap();
            mallory.2.group.clear_pending_commit(mallory.0.storage()).unwrap();
            bundle.into_messages().0.tls_serialize_detached().unwrap()
        };
        for (p, _, ch) in rest.iter_mut() {
            let epoch = ch.epoch();
            for bytes in [&commit, &proposal, &renamed] {
                assert_eq!(ch.process(p, bytes).unwrap_err(), Rejection::Policy);
                assert_eq!(ch.epoch(), epoch, "nothing merged");
                assert!(!ch.has_pending_proposals(), "nothing stored");
                assert!(ch.tree_is_listed());
                assert_eq!(ch.members().len(), 3);
            }
            assert!(ch.members().iter().any(|m| m.name == "mallory"));
        }
        // In her own copy she merges the forged leaf and invites dave: dave refuses the
        // welcome, whose tree holds a leaf he could not list.
        let kp = forged_key_package(&mallory.0);
        mallory.2.group.add_members(&mallory.0, &mallory.1, &[kp]).unwrap();
        mallory.2.merge_pending(&mallory.0).unwrap();
        assert!(!mallory.2.tree_is_listed());
        let dave = (
            Provider::new().unwrap(),
            Identity::generate("dave", &mut rand_core::OsRng).unwrap(),
        );
        let dave_kp = key_package(&dave.0, &dave.1, &sequencer(), Suite::Classical).unwrap();
        let valid = validate_key_package(&mallory.0, &dave_kp).unwrap();
        let out = mallory.2.add(&mallory.0, &mallory.1, vec![valid]).unwrap();
        assert!(Channel::join(&dave.0, out.welcome.as_ref().unwrap()).is_err());
        // The others still talk, and can remove her.
        let (ap, aid, ach) = &mut rest[0];
        let out = ach
            .remove(ap, aid, &[Fingerprint::of(&mallory.1.public_key())])
            .unwrap();
        ach.merge_pending(ap).unwrap();
        let (bp, _, bch) = &mut rest[1];
        assert!(matches!(bch.process(bp, &out.commit).unwrap(), Received::Commit { .. }));
        assert_eq!(bch.members().len(), 2);
    }

    /// The creator's group is configured by `MlsGroupCreateConfig`'s builder, a joiner's
    /// by `join_config()`: openmls offers no way to build one from the other, so this
    /// keeps the two from drifting apart (the sender ratchet above all).
    #[test]
    fn the_creator_and_joiners_use_one_configuration() {
        let provider = Provider::new().unwrap();
        let identity = Identity::generate("alice", &mut rand_core::OsRng).unwrap();
        let info = room();
        let channel = Channel::create(&provider, &identity, &info, &sequencer(), Suite::Classical, false).unwrap();
        assert_eq!(channel.group.configuration(), &join_config());
    }

    proptest! {
        #[test]
        fn channel_info_round_trips(name in "[a-z]{1,20}", created in any::<u64>(), disappear in any::<u64>(), expires in any::<u64>()) {
            let info = ChannelInfo { name, sequencer: sequencer(), created_at: created, disappear_after: disappear, expires_at: expires };
            let back = ChannelInfo::from_bytes(&info.to_bytes()).unwrap();
            prop_assert_eq!((back.name, back.created_at, back.disappear_after, back.expires_at), (info.name, created, disappear, expires));
            prop_assert!(back.sequencer == info.sequencer);
        }
    }

    #[test]
    fn version_1_channel_info_reads_as_without_lifecycle() {
        let seq = sequencer();
        let mut w = Writer::new();
        w.u8(1).bytes16(b"old");
        seq.encode(&mut w);
        w.u64(42);
        let v1 = w.into_vec();
        let info = ChannelInfo::from_bytes(&v1).unwrap();
        assert_eq!(
            (
                info.name.as_str(),
                info.created_at,
                info.disappear_after,
                info.expires_at
            ),
            ("old", 42, 0, 0)
        );
        // Without a lifetime it is written as version 1 again, byte for byte; with one,
        // as version 2.
        assert_eq!(info.to_bytes(), v1);
        let timed = ChannelInfo {
            disappear_after: 60,
            ..info
        };
        assert_eq!(timed.to_bytes()[0], 2);
        // Version 2 without a lifetime is not how anything is written: refused, so every
        // channel info has one encoding.
        let mut v2_empty = timed.to_bytes();
        let len = v2_empty.len();
        v2_empty[len - 16..].fill(0);
        assert!(ChannelInfo::from_bytes(&v2_empty).is_err());
    }
}

//! The openmls storage: an in-memory map whose content the client persists
//! inside its encrypted vault ([`Store::snapshot`], [`Store::from_entries`]).
//!
//! openmls rewrites a group's whole message-secrets store for every message
//! sent or processed: the secret tree and, for each of the
//! [`MAX_PAST_EPOCHS`](crate::channel::MAX_PAST_EPOCHS) past epochs, that
//! epoch's member list with every member's HPKE key (1,216 bytes for X-Wing).
//! `openmls_memory_storage` encodes values as JSON, which writes every byte as
//! a decimal number; this store encodes them with postcard, about 8 × faster,
//! and copies the past epochs' member lists, which cannot change, from the
//! value it replaces instead of encoding them again (`storage/reuse.rs`); for
//! an application message made, or a message of the current epoch read, it
//! copies the past epochs whole ([`Store::past_epochs_unchanged`]).
//!
//! * **Keys:** `CURRENT_VERSION` (2 bytes, big-endian), one byte naming the
//!   kind of value, then the postcard encoding of the key's parts
//!   (group id, proposal reference, public key, ...) one after the other.
//! * **Values:** postcard, except the group's join configuration: its
//!   past-epoch deletion policy decodes through an untagged enum, which only a
//!   self-describing format can decode, so it stays JSON (it is written once
//!   per group and is not secret).
//! * **Lists** (own leaf nodes, queued proposal references; public data): a
//!   postcard list of the items' encodings.
//! * **Secrets:** every value is held in a [`Zeroizing`] buffer, zeroed when it
//!   is overwritten, removed or dropped; encoding grows its buffer without
//!   leaving copies behind.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};

use openmls_traits::storage::{traits, StorageProvider, CURRENT_VERSION};
use postcard::ser_flavors::Flavor;
use serde::de::DeserializeOwned;
use serde::Serialize;
use thiserror::Error;
use zeroize::{Zeroize, Zeroizing};

/// A storage operation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum StoreError {
    /// openmls handed over a value that could not be encoded.
    #[error("a value could not be encoded for the MLS store")]
    Encode,
    /// A stored value did not decode: the stored state is damaged or was
    /// written in another format.
    #[error("a value in the MLS store is damaged")]
    Decode,
    /// The queue of a group's proposals names one that is not stored.
    #[error("the MLS store lists a queued proposal that it does not hold")]
    MissingProposal,
}

/// What a stored value is: the byte after the version in every key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Kind {
    JoinConfig = 1,
    OwnLeafNodes = 2,
    QueuedProposal = 3,
    ProposalRefs = 4,
    Tree = 5,
    InterimTranscriptHash = 6,
    Context = 7,
    ConfirmationTag = 8,
    GroupState = 9,
    MessageSecrets = 10,
    ResumptionPsks = 11,
    OwnLeafIndex = 12,
    EpochSecrets = 13,
    SignatureKeyPair = 14,
    EncryptionKeyPair = 15,
    EpochKeyPairs = 16,
    KeyPackage = 17,
    Psk = 18,
}

impl Kind {
    const LAST: u8 = Kind::Psk as u8;
}

/// Whether `key` has the shape of a key this store writes (version, kind).
fn well_formed_key(key: &[u8]) -> bool {
    match key {
        [v0, v1, kind, ..] => [*v0, *v1] == CURRENT_VERSION.to_be_bytes() && (1..=Kind::LAST).contains(kind),
        _ => false,
    }
}

/// A storage key under construction.
struct Key(Vec<u8>);

impl Key {
    fn new(kind: Kind) -> Self {
        let mut k = Vec::with_capacity(64);
        k.extend_from_slice(&CURRENT_VERSION.to_be_bytes());
        k.push(kind as u8);
        Self(k)
    }

    /// Appends the postcard encoding of one part.
    fn part(self, part: &(impl Serialize + ?Sized)) -> Result<Self, StoreError> {
        postcard::to_extend(part, self.0)
            .map(Self)
            .map_err(|_| StoreError::Encode)
    }

    /// Appends a part already encoded (an item of a stored list).
    fn encoded(mut self, part: &[u8]) -> Self {
        self.0.extend_from_slice(part);
        self
    }

    fn of(kind: Kind, part: &(impl Serialize + ?Sized)) -> Result<Vec<u8>, StoreError> {
        Ok(Self::new(kind).part(part)?.0)
    }
}

type Value = Zeroizing<Bytes>;

/// A store version never issued before in this process ([`Store::version`]).
fn next_version() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::SeqCst)
}

/// The bytes of a stored value. zeroize's own `Vec<u8>` writes one volatile
/// byte at a time (it zeroes any `Vec<Z>` element by element), which cost
/// about 5 % of a message: the message secrets, about 13 KB, are replaced on
/// every message. Zeroing the bytes as a slice is one bulk fill behind an
/// optimization barrier (zeroize's `[u8]` and `[MaybeUninit<u8>]`).
#[derive(Default)]
struct Bytes(Vec<u8>);

impl Zeroize for Bytes {
    fn zeroize(&mut self) {
        self.0.as_mut_slice().zeroize();
        self.0.spare_capacity_mut().zeroize();
        self.0.clear();
    }
}

impl std::ops::Deref for Bytes {
    type Target = Vec<u8>;
    fn deref(&self) -> &Vec<u8> {
        &self.0
    }
}

impl std::ops::DerefMut for Bytes {
    fn deref_mut(&mut self) -> &mut Vec<u8> {
        &mut self.0
    }
}

/// A stored value made of `bytes`, zeroed when it is dropped.
fn value(bytes: Vec<u8>) -> Value {
    Zeroizing::new(Bytes(bytes))
}

/// A postcard output buffer that zeroes each buffer it outgrows.
struct ZeroizingVec(Value);

impl ZeroizingVec {
    fn with_capacity(capacity: usize) -> Self {
        Self(value(Vec::with_capacity(capacity)))
    }

    /// Moves the bytes to a buffer with room for `more` (Vec's own growth
    /// would free the old buffer without zeroing it).
    #[cold]
    #[inline(never)]
    fn grow(&mut self, more: usize) {
        let needed = self.0.len() + more;
        let mut bigger = Vec::with_capacity(needed.max(2 * self.0.capacity()).max(64));
        bigger.extend_from_slice(&self.0);
        // The old buffer is zeroed as it drops.
        self.0 = value(bigger);
    }
}

impl Flavor for ZeroizingVec {
    type Output = Value;

    // openmls's byte vectors reach the serializer one byte at a time, so
    // this is the inner loop of every write.
    #[inline(always)]
    fn try_push(&mut self, byte: u8) -> postcard::Result<()> {
        if self.0.len() == self.0.capacity() {
            self.grow(1);
        }
        self.0.push(byte);
        Ok(())
    }

    #[inline]
    fn try_extend(&mut self, bytes: &[u8]) -> postcard::Result<()> {
        if self.0.capacity() - self.0.len() < bytes.len() {
            self.grow(bytes.len());
        }
        self.0.extend_from_slice(bytes);
        Ok(())
    }

    fn finalize(self) -> postcard::Result<Value> {
        Ok(self.0)
    }
}

/// Encodes a value, starting from a buffer of `capacity` bytes.
fn encode(value: &(impl Serialize + ?Sized), capacity: usize) -> Result<Value, StoreError> {
    postcard::serialize_with_flavor(value, ZeroizingVec::with_capacity(capacity)).map_err(|_| StoreError::Encode)
}

/// Decodes a whole value: trailing bytes are an error.
fn decode<V: DeserializeOwned>(bytes: &[u8]) -> Result<V, StoreError> {
    match postcard::take_from_bytes(bytes) {
        Ok((value, [])) => Ok(value),
        _ => Err(StoreError::Decode),
    }
}

mod reuse;
mod shape;

thread_local! {
    /// Set by [`Store::past_epochs_unchanged`] while its operation runs on this thread:
    /// the store version at which the group's state was the store's, and the key of
    /// the group's message secrets.
    static PAST_UNCHANGED: RefCell<Option<(u64, Vec<u8>)>> = const { RefCell::new(None) };
}

/// The openmls storage provider of a [`Provider`](crate::channel::Provider).
#[derive(Default)]
pub struct Store {
    values: RwLock<HashMap<Vec<u8>, Value>>,
    /// For each group's stored message secrets, where its past epochs' member
    /// lists lie ([`reuse`]). Memory only; taken under the `values` lock.
    reuse: Mutex<HashMap<Vec<u8>, reuse::Notes>>,
    /// Issued anew ([`next_version`]) each time the values are opened for writing: what a
    /// group kept in memory compares to know whether the store still holds its state
    /// (`channel::Channel::keep`).
    version: AtomicU64,
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Store({} entries)", self.read().len())
    }
}

impl Store {
    /// A store holding `entries` (from [`Store::snapshot`]). `None` if a key
    /// is not one this store writes (for instance, a snapshot in another
    /// format).
    pub fn from_entries(entries: Vec<(Vec<u8>, Vec<u8>)>) -> Option<Self> {
        // Every value is wrapped before any key is checked, so that a refused
        // snapshot is zeroed too.
        let values: HashMap<Vec<u8>, Value> = entries.into_iter().map(|(k, v)| (k, value(v))).collect();
        values.keys().all(|k| well_formed_key(k)).then(|| Self {
            values: RwLock::new(values),
            reuse: Mutex::default(),
            version: AtomicU64::new(next_version()),
        })
    }

    /// Every stored key and value, sorted by key, for persistence.
    pub fn snapshot(&self) -> Vec<(Vec<u8>, Vec<u8>)> {
        let values = self.read();
        let mut entries: Vec<(Vec<u8>, Vec<u8>)> = values.iter().map(|(k, v)| (k.clone(), v.to_vec())).collect();
        entries.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        entries
    }

    /// Removes every key package (with its private init key), for a client that no
    /// longer waits for any welcome. Returns how many were removed.
    pub fn forget_key_packages(&self) -> usize {
        let mut values = self.write();
        let before = values.len();
        values.retain(|k, _| k.get(2) != Some(&(Kind::KeyPackage as u8)));
        before - values.len()
    }

    /// The number of stored values.
    pub fn len(&self) -> usize {
        self.read().len()
    }

    /// Whether nothing is stored.
    pub fn is_empty(&self) -> bool {
        self.read().is_empty()
    }

    // Every change to the map is a whole insert or remove, so a lock poisoned
    // by a panic elsewhere still guards a usable map.
    fn read(&self) -> RwLockReadGuard<'_, HashMap<Vec<u8>, Value>> {
        self.values.read().unwrap_or_else(|e| e.into_inner())
    }

    /// The values, for a change: the store's version moves.
    fn write(&self) -> RwLockWriteGuard<'_, HashMap<Vec<u8>, Value>> {
        self.write_from().0
    }

    /// [`Store::write`], and the version the store had before.
    fn write_from(&self) -> (RwLockWriteGuard<'_, HashMap<Vec<u8>, Value>>, u64) {
        let values = self.values.write().unwrap_or_else(|e| e.into_inner());
        let before = self.version.swap(next_version(), Ordering::SeqCst);
        (values, before)
    }

    /// Changes with every change of the stored values. A version is issued once in the
    /// process, by one store: equal versions mean the same store, unchanged.
    pub fn version(&self) -> u64 {
        self.version.load(Ordering::SeqCst)
    }

    /// Runs `f`, an openmls operation on group `group_id` that changes no past epoch's
    /// secrets, on a state of the group that equals the store's at `version`. The
    /// operations that qualify, in openmls 0.9.2: making an application message, and
    /// reading a message whose header names the current epoch (`reuse`, "Past epochs
    /// whole", says why). Each write of the group's message secrets that `f` makes on
    /// this thread, while the store is still at `version`, copies the past epochs from
    /// the stored value instead of encoding them.
    pub(crate) fn past_epochs_unchanged<R>(
        &self,
        group_id: &impl traits::GroupId<CURRENT_VERSION>,
        version: u64,
        f: impl FnOnce() -> R,
    ) -> R {
        let Ok(key) = Key::of(Kind::MessageSecrets, group_id) else {
            return f();
        };
        /// Puts back what was set before, also if `f` unwinds.
        struct Restore(Option<(u64, Vec<u8>)>);
        impl Drop for Restore {
            fn drop(&mut self) {
                PAST_UNCHANGED.set(self.0.take());
            }
        }
        let _restore = Restore(PAST_UNCHANGED.replace(Some((version, key))));
        f()
    }

    /// Runs `f` with the store's version, which no change can move until `f` returns.
    pub(crate) fn at_rest<R>(&self, f: impl FnOnce(u64) -> R) -> R {
        let _values = self.read();
        f(self.version())
    }

    fn put<V: Serialize + DeserializeOwned>(&self, key: Vec<u8>, value: &V) -> Result<(), StoreError> {
        self.put_as::<V, V>(key, value)
    }

    /// Stores `value`, which decodes as a `D` (checked in unit tests).
    #[cfg_attr(not(test), allow(clippy::extra_unused_type_parameters))]
    fn put_as<V: Serialize + ?Sized, D: Serialize + DeserializeOwned>(
        &self,
        key: Vec<u8>,
        value: &V,
    ) -> Result<(), StoreError> {
        let mut values = self.write();
        // Overwrites (the message secrets, on every message) keep their size.
        let capacity = values.get(&key).map_or(0, |v| v.len());
        let bytes = encode(value, capacity)?;
        #[cfg(test)]
        tests::check_round_trip::<D>(&bytes);
        values.insert(key, bytes);
        Ok(())
    }

    /// Stores a group's message secrets, copying the member lists of past
    /// epochs from the value it replaces where they cannot have changed
    /// ([`reuse`]); the bytes are the same as [`Store::put`]'s.
    fn put_message_secrets<V: Serialize + DeserializeOwned>(&self, key: Vec<u8>, value: &V) -> Result<(), StoreError> {
        let (mut values, before) = self.write_from();
        // The caller's word holds for its group's state as the store held it at
        // `version`: only if nothing was written since.
        let past_unchanged = PAST_UNCHANGED.with_borrow(|h| h.as_ref().is_some_and(|(v, k)| *v == before && *k == key));
        let mut reuse = self.reuse.lock().unwrap_or_else(|e| e.into_inner());
        let old_notes = reuse.remove(&key).unwrap_or_default();
        let old = values.get(&key).map_or(&[][..], |v| v.as_slice());
        let (bytes, notes) = reuse::encode(value, old, &old_notes, past_unchanged)?;
        #[cfg(test)]
        tests::check_round_trip::<V>(&bytes);
        reuse.insert(key.clone(), notes);
        values.insert(key, bytes);
        Ok(())
    }

    fn get<V: DeserializeOwned>(&self, key: &[u8]) -> Result<Option<V>, StoreError> {
        self.read().get(key).map(|bytes| decode(bytes)).transpose()
    }

    fn remove(&self, key: &[u8]) {
        self.write().remove(key);
    }

    /// The encoded items of a stored list.
    fn raw_list(values: &HashMap<Vec<u8>, Value>, key: &[u8]) -> Result<Vec<Vec<u8>>, StoreError> {
        values.get(key).map_or(Ok(Vec::new()), |bytes| decode(bytes))
    }

    fn list<V: DeserializeOwned>(&self, key: &[u8]) -> Result<Vec<V>, StoreError> {
        Self::raw_list(&self.read(), key)?
            .iter()
            .map(|item| decode(item))
            .collect()
    }

    fn append(&self, key: Vec<u8>, item: &impl Serialize) -> Result<(), StoreError> {
        let item = encode(item, 0)?;
        let mut values = self.write();
        let mut list = Self::raw_list(&values, &key)?;
        list.push(item.to_vec());
        values.insert(key, encode(&list, 0)?);
        Ok(())
    }

    fn remove_item(&self, key: Vec<u8>, item: &impl Serialize) -> Result<(), StoreError> {
        let item = encode(item, 0)?;
        let mut values = self.write();
        let mut list = Self::raw_list(&values, &key)?;
        if let Some(pos) = list.iter().position(|stored| stored[..] == item[..]) {
            list.remove(pos);
        }
        values.insert(key, encode(&list, 0)?);
        Ok(())
    }
}

fn epoch_key_pairs_key(
    group_id: &impl traits::GroupId<CURRENT_VERSION>,
    epoch: &impl traits::EpochKey<CURRENT_VERSION>,
    leaf_index: u32,
) -> Result<Vec<u8>, StoreError> {
    Ok(Key::new(Kind::EpochKeyPairs)
        .part(group_id)?
        .part(epoch)?
        .part(&leaf_index)?
        .0)
}

impl StorageProvider<CURRENT_VERSION> for Store {
    type Error = StoreError;

    fn write_mls_join_config<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        MlsGroupJoinConfig: traits::MlsGroupJoinConfig<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
        config: &MlsGroupJoinConfig,
    ) -> Result<(), Self::Error> {
        // JSON: see the module documentation.
        let bytes = serde_json::to_vec(config).map_err(|_| StoreError::Encode)?;
        self.write().insert(Key::of(Kind::JoinConfig, group_id)?, value(bytes));
        Ok(())
    }

    fn append_own_leaf_node<GroupId: traits::GroupId<CURRENT_VERSION>, LeafNode: traits::LeafNode<CURRENT_VERSION>>(
        &self,
        group_id: &GroupId,
        leaf_node: &LeafNode,
    ) -> Result<(), Self::Error> {
        self.append(Key::of(Kind::OwnLeafNodes, group_id)?, leaf_node)
    }

    fn queue_proposal<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        ProposalRef: traits::ProposalRef<CURRENT_VERSION>,
        QueuedProposal: traits::QueuedProposal<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
        proposal_ref: &ProposalRef,
        proposal: &QueuedProposal,
    ) -> Result<(), Self::Error> {
        let key = Key::new(Kind::QueuedProposal).part(group_id)?.part(proposal_ref)?.0;
        self.put(key, proposal)?;
        self.append(Key::of(Kind::ProposalRefs, group_id)?, proposal_ref)
    }

    fn write_tree<GroupId: traits::GroupId<CURRENT_VERSION>, TreeSync: traits::TreeSync<CURRENT_VERSION>>(
        &self,
        group_id: &GroupId,
        tree: &TreeSync,
    ) -> Result<(), Self::Error> {
        self.put(Key::of(Kind::Tree, group_id)?, tree)
    }

    fn write_interim_transcript_hash<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        InterimTranscriptHash: traits::InterimTranscriptHash<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
        interim_transcript_hash: &InterimTranscriptHash,
    ) -> Result<(), Self::Error> {
        self.put(Key::of(Kind::InterimTranscriptHash, group_id)?, interim_transcript_hash)
    }

    fn write_context<GroupId: traits::GroupId<CURRENT_VERSION>, GroupContext: traits::GroupContext<CURRENT_VERSION>>(
        &self,
        group_id: &GroupId,
        group_context: &GroupContext,
    ) -> Result<(), Self::Error> {
        self.put(Key::of(Kind::Context, group_id)?, group_context)
    }

    fn write_confirmation_tag<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        ConfirmationTag: traits::ConfirmationTag<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
        confirmation_tag: &ConfirmationTag,
    ) -> Result<(), Self::Error> {
        self.put(Key::of(Kind::ConfirmationTag, group_id)?, confirmation_tag)
    }

    fn write_group_state<GroupState: traits::GroupState<CURRENT_VERSION>, GroupId: traits::GroupId<CURRENT_VERSION>>(
        &self,
        group_id: &GroupId,
        group_state: &GroupState,
    ) -> Result<(), Self::Error> {
        self.put(Key::of(Kind::GroupState, group_id)?, group_state)
    }

    fn write_message_secrets<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        MessageSecrets: traits::MessageSecrets<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
        message_secrets: &MessageSecrets,
    ) -> Result<(), Self::Error> {
        self.put_message_secrets(Key::of(Kind::MessageSecrets, group_id)?, message_secrets)
    }

    fn write_resumption_psk_store<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        ResumptionPskStore: traits::ResumptionPskStore<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
        resumption_psk_store: &ResumptionPskStore,
    ) -> Result<(), Self::Error> {
        self.put(Key::of(Kind::ResumptionPsks, group_id)?, resumption_psk_store)
    }

    fn write_own_leaf_index<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        LeafNodeIndex: traits::LeafNodeIndex<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
        own_leaf_index: &LeafNodeIndex,
    ) -> Result<(), Self::Error> {
        self.put(Key::of(Kind::OwnLeafIndex, group_id)?, own_leaf_index)
    }

    fn write_group_epoch_secrets<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        GroupEpochSecrets: traits::GroupEpochSecrets<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
        group_epoch_secrets: &GroupEpochSecrets,
    ) -> Result<(), Self::Error> {
        self.put(Key::of(Kind::EpochSecrets, group_id)?, group_epoch_secrets)
    }

    fn write_signature_key_pair<
        SignaturePublicKey: traits::SignaturePublicKey<CURRENT_VERSION>,
        SignatureKeyPair: traits::SignatureKeyPair<CURRENT_VERSION>,
    >(
        &self,
        public_key: &SignaturePublicKey,
        signature_key_pair: &SignatureKeyPair,
    ) -> Result<(), Self::Error> {
        self.put(Key::of(Kind::SignatureKeyPair, public_key)?, signature_key_pair)
    }

    fn write_encryption_key_pair<
        EncryptionKey: traits::EncryptionKey<CURRENT_VERSION>,
        HpkeKeyPair: traits::HpkeKeyPair<CURRENT_VERSION>,
    >(
        &self,
        public_key: &EncryptionKey,
        key_pair: &HpkeKeyPair,
    ) -> Result<(), Self::Error> {
        self.put(Key::of(Kind::EncryptionKeyPair, public_key)?, key_pair)
    }

    fn write_encryption_epoch_key_pairs<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        EpochKey: traits::EpochKey<CURRENT_VERSION>,
        HpkeKeyPair: traits::HpkeKeyPair<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
        epoch: &EpochKey,
        leaf_index: u32,
        key_pairs: &[HpkeKeyPair],
    ) -> Result<(), Self::Error> {
        self.put_as::<_, Vec<HpkeKeyPair>>(epoch_key_pairs_key(group_id, epoch, leaf_index)?, key_pairs)
    }

    fn write_key_package<
        HashReference: traits::HashReference<CURRENT_VERSION>,
        KeyPackage: traits::KeyPackage<CURRENT_VERSION>,
    >(
        &self,
        hash_ref: &HashReference,
        key_package: &KeyPackage,
    ) -> Result<(), Self::Error> {
        self.put(Key::of(Kind::KeyPackage, hash_ref)?, key_package)
    }

    fn write_psk<PskId: traits::PskId<CURRENT_VERSION>, PskBundle: traits::PskBundle<CURRENT_VERSION>>(
        &self,
        psk_id: &PskId,
        psk: &PskBundle,
    ) -> Result<(), Self::Error> {
        self.put(Key::of(Kind::Psk, psk_id)?, psk)
    }

    fn mls_group_join_config<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        MlsGroupJoinConfig: traits::MlsGroupJoinConfig<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
    ) -> Result<Option<MlsGroupJoinConfig>, Self::Error> {
        let key = Key::of(Kind::JoinConfig, group_id)?;
        self.read()
            .get(&key)
            .map(|bytes| serde_json::from_slice(bytes).map_err(|_| StoreError::Decode))
            .transpose()
    }

    fn own_leaf_nodes<GroupId: traits::GroupId<CURRENT_VERSION>, LeafNode: traits::LeafNode<CURRENT_VERSION>>(
        &self,
        group_id: &GroupId,
    ) -> Result<Vec<LeafNode>, Self::Error> {
        self.list(&Key::of(Kind::OwnLeafNodes, group_id)?)
    }

    fn queued_proposal_refs<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        ProposalRef: traits::ProposalRef<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
    ) -> Result<Vec<ProposalRef>, Self::Error> {
        self.list(&Key::of(Kind::ProposalRefs, group_id)?)
    }

    fn queued_proposals<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        ProposalRef: traits::ProposalRef<CURRENT_VERSION>,
        QueuedProposal: traits::QueuedProposal<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
    ) -> Result<Vec<(ProposalRef, QueuedProposal)>, Self::Error> {
        let group = Key::new(Kind::QueuedProposal).part(group_id)?;
        let values = self.read();
        Self::raw_list(&values, &Key::of(Kind::ProposalRefs, group_id)?)?
            .iter()
            .map(|proposal_ref| {
                let key = Key(group.0.clone()).encoded(proposal_ref).0;
                let proposal = values.get(&key).ok_or(StoreError::MissingProposal)?;
                Ok((decode(proposal_ref)?, decode(proposal)?))
            })
            .collect()
    }

    fn tree<GroupId: traits::GroupId<CURRENT_VERSION>, TreeSync: traits::TreeSync<CURRENT_VERSION>>(
        &self,
        group_id: &GroupId,
    ) -> Result<Option<TreeSync>, Self::Error> {
        self.get(&Key::of(Kind::Tree, group_id)?)
    }

    fn group_context<GroupId: traits::GroupId<CURRENT_VERSION>, GroupContext: traits::GroupContext<CURRENT_VERSION>>(
        &self,
        group_id: &GroupId,
    ) -> Result<Option<GroupContext>, Self::Error> {
        self.get(&Key::of(Kind::Context, group_id)?)
    }

    fn interim_transcript_hash<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        InterimTranscriptHash: traits::InterimTranscriptHash<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
    ) -> Result<Option<InterimTranscriptHash>, Self::Error> {
        self.get(&Key::of(Kind::InterimTranscriptHash, group_id)?)
    }

    fn confirmation_tag<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        ConfirmationTag: traits::ConfirmationTag<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
    ) -> Result<Option<ConfirmationTag>, Self::Error> {
        self.get(&Key::of(Kind::ConfirmationTag, group_id)?)
    }

    fn group_state<GroupState: traits::GroupState<CURRENT_VERSION>, GroupId: traits::GroupId<CURRENT_VERSION>>(
        &self,
        group_id: &GroupId,
    ) -> Result<Option<GroupState>, Self::Error> {
        self.get(&Key::of(Kind::GroupState, group_id)?)
    }

    fn message_secrets<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        MessageSecrets: traits::MessageSecrets<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
    ) -> Result<Option<MessageSecrets>, Self::Error> {
        self.get(&Key::of(Kind::MessageSecrets, group_id)?)
    }

    fn resumption_psk_store<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        ResumptionPskStore: traits::ResumptionPskStore<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
    ) -> Result<Option<ResumptionPskStore>, Self::Error> {
        self.get(&Key::of(Kind::ResumptionPsks, group_id)?)
    }

    fn own_leaf_index<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        LeafNodeIndex: traits::LeafNodeIndex<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
    ) -> Result<Option<LeafNodeIndex>, Self::Error> {
        self.get(&Key::of(Kind::OwnLeafIndex, group_id)?)
    }

    fn group_epoch_secrets<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        GroupEpochSecrets: traits::GroupEpochSecrets<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
    ) -> Result<Option<GroupEpochSecrets>, Self::Error> {
        self.get(&Key::of(Kind::EpochSecrets, group_id)?)
    }

    fn signature_key_pair<
        SignaturePublicKey: traits::SignaturePublicKey<CURRENT_VERSION>,
        SignatureKeyPair: traits::SignatureKeyPair<CURRENT_VERSION>,
    >(
        &self,
        public_key: &SignaturePublicKey,
    ) -> Result<Option<SignatureKeyPair>, Self::Error> {
        self.get(&Key::of(Kind::SignatureKeyPair, public_key)?)
    }

    fn encryption_key_pair<
        HpkeKeyPair: traits::HpkeKeyPair<CURRENT_VERSION>,
        EncryptionKey: traits::EncryptionKey<CURRENT_VERSION>,
    >(
        &self,
        public_key: &EncryptionKey,
    ) -> Result<Option<HpkeKeyPair>, Self::Error> {
        self.get(&Key::of(Kind::EncryptionKeyPair, public_key)?)
    }

    fn encryption_epoch_key_pairs<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        EpochKey: traits::EpochKey<CURRENT_VERSION>,
        HpkeKeyPair: traits::HpkeKeyPair<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
        epoch: &EpochKey,
        leaf_index: u32,
    ) -> Result<Vec<HpkeKeyPair>, Self::Error> {
        Ok(self
            .get(&epoch_key_pairs_key(group_id, epoch, leaf_index)?)?
            .unwrap_or_default())
    }

    fn key_package<
        KeyPackageRef: traits::HashReference<CURRENT_VERSION>,
        KeyPackage: traits::KeyPackage<CURRENT_VERSION>,
    >(
        &self,
        hash_ref: &KeyPackageRef,
    ) -> Result<Option<KeyPackage>, Self::Error> {
        self.get(&Key::of(Kind::KeyPackage, hash_ref)?)
    }

    fn psk<PskBundle: traits::PskBundle<CURRENT_VERSION>, PskId: traits::PskId<CURRENT_VERSION>>(
        &self,
        psk_id: &PskId,
    ) -> Result<Option<PskBundle>, Self::Error> {
        self.get(&Key::of(Kind::Psk, psk_id)?)
    }

    fn remove_proposal<GroupId: traits::GroupId<CURRENT_VERSION>, ProposalRef: traits::ProposalRef<CURRENT_VERSION>>(
        &self,
        group_id: &GroupId,
        proposal_ref: &ProposalRef,
    ) -> Result<(), Self::Error> {
        self.remove_item(Key::of(Kind::ProposalRefs, group_id)?, proposal_ref)?;
        self.remove(&Key::new(Kind::QueuedProposal).part(group_id)?.part(proposal_ref)?.0);
        Ok(())
    }

    fn delete_own_leaf_nodes<GroupId: traits::GroupId<CURRENT_VERSION>>(
        &self,
        group_id: &GroupId,
    ) -> Result<(), Self::Error> {
        self.remove(&Key::of(Kind::OwnLeafNodes, group_id)?);
        Ok(())
    }

    fn delete_group_config<GroupId: traits::GroupId<CURRENT_VERSION>>(
        &self,
        group_id: &GroupId,
    ) -> Result<(), Self::Error> {
        self.remove(&Key::of(Kind::JoinConfig, group_id)?);
        Ok(())
    }

    fn delete_tree<GroupId: traits::GroupId<CURRENT_VERSION>>(&self, group_id: &GroupId) -> Result<(), Self::Error> {
        self.remove(&Key::of(Kind::Tree, group_id)?);
        Ok(())
    }

    fn delete_confirmation_tag<GroupId: traits::GroupId<CURRENT_VERSION>>(
        &self,
        group_id: &GroupId,
    ) -> Result<(), Self::Error> {
        self.remove(&Key::of(Kind::ConfirmationTag, group_id)?);
        Ok(())
    }

    fn delete_group_state<GroupId: traits::GroupId<CURRENT_VERSION>>(
        &self,
        group_id: &GroupId,
    ) -> Result<(), Self::Error> {
        self.remove(&Key::of(Kind::GroupState, group_id)?);
        Ok(())
    }

    fn delete_context<GroupId: traits::GroupId<CURRENT_VERSION>>(&self, group_id: &GroupId) -> Result<(), Self::Error> {
        self.remove(&Key::of(Kind::Context, group_id)?);
        Ok(())
    }

    fn delete_interim_transcript_hash<GroupId: traits::GroupId<CURRENT_VERSION>>(
        &self,
        group_id: &GroupId,
    ) -> Result<(), Self::Error> {
        self.remove(&Key::of(Kind::InterimTranscriptHash, group_id)?);
        Ok(())
    }

    fn delete_message_secrets<GroupId: traits::GroupId<CURRENT_VERSION>>(
        &self,
        group_id: &GroupId,
    ) -> Result<(), Self::Error> {
        let key = Key::of(Kind::MessageSecrets, group_id)?;
        let mut values = self.write();
        self.reuse.lock().unwrap_or_else(|e| e.into_inner()).remove(&key);
        values.remove(&key);
        Ok(())
    }

    fn delete_all_resumption_psk_secrets<GroupId: traits::GroupId<CURRENT_VERSION>>(
        &self,
        group_id: &GroupId,
    ) -> Result<(), Self::Error> {
        self.remove(&Key::of(Kind::ResumptionPsks, group_id)?);
        Ok(())
    }

    fn delete_own_leaf_index<GroupId: traits::GroupId<CURRENT_VERSION>>(
        &self,
        group_id: &GroupId,
    ) -> Result<(), Self::Error> {
        self.remove(&Key::of(Kind::OwnLeafIndex, group_id)?);
        Ok(())
    }

    fn delete_group_epoch_secrets<GroupId: traits::GroupId<CURRENT_VERSION>>(
        &self,
        group_id: &GroupId,
    ) -> Result<(), Self::Error> {
        self.remove(&Key::of(Kind::EpochSecrets, group_id)?);
        Ok(())
    }

    /// Deletes the group's queued proposals and their list. (MemoryStorage
    /// deletes only the list: its proposals stay behind, unreachable.)
    fn clear_proposal_queue<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        ProposalRef: traits::ProposalRef<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
    ) -> Result<(), Self::Error> {
        let group = Key::new(Kind::QueuedProposal).part(group_id)?;
        let refs_key = Key::of(Kind::ProposalRefs, group_id)?;
        let mut values = self.write();
        for proposal_ref in Self::raw_list(&values, &refs_key)? {
            values.remove(&Key(group.0.clone()).encoded(&proposal_ref).0);
        }
        values.remove(&refs_key);
        Ok(())
    }

    fn delete_signature_key_pair<SignaturePublicKey: traits::SignaturePublicKey<CURRENT_VERSION>>(
        &self,
        public_key: &SignaturePublicKey,
    ) -> Result<(), Self::Error> {
        self.remove(&Key::of(Kind::SignatureKeyPair, public_key)?);
        Ok(())
    }

    fn delete_encryption_key_pair<EncryptionKey: traits::EncryptionKey<CURRENT_VERSION>>(
        &self,
        public_key: &EncryptionKey,
    ) -> Result<(), Self::Error> {
        self.remove(&Key::of(Kind::EncryptionKeyPair, public_key)?);
        Ok(())
    }

    fn delete_encryption_epoch_key_pairs<
        GroupId: traits::GroupId<CURRENT_VERSION>,
        EpochKey: traits::EpochKey<CURRENT_VERSION>,
    >(
        &self,
        group_id: &GroupId,
        epoch: &EpochKey,
        leaf_index: u32,
    ) -> Result<(), Self::Error> {
        self.remove(&epoch_key_pairs_key(group_id, epoch, leaf_index)?);
        Ok(())
    }

    fn delete_key_package<KeyPackageRef: traits::HashReference<CURRENT_VERSION>>(
        &self,
        hash_ref: &KeyPackageRef,
    ) -> Result<(), Self::Error> {
        self.remove(&Key::of(Kind::KeyPackage, hash_ref)?);
        Ok(())
    }

    fn delete_psk<PskKey: traits::PskId<CURRENT_VERSION>>(&self, psk_id: &PskKey) -> Result<(), Self::Error> {
        self.remove(&Key::of(Kind::Psk, psk_id)?);
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
pub(crate) mod tests {
    use super::*;

    /// Run by [`Store::put`] in this crate's unit tests: every value that the
    /// tests make openmls store must decode again, to the same length.
    pub(crate) fn check_round_trip<V: Serialize + DeserializeOwned>(bytes: &[u8]) {
        let value: V = decode(bytes)
            .unwrap_or_else(|e| panic!("a {} does not decode from postcard: {e}", std::any::type_name::<V>()));
        // Maps re-encode in another order, so only the length is compared.
        let again = encode(&value, 0).unwrap();
        assert_eq!(again.len(), bytes.len(), "{}", std::any::type_name::<V>());
    }

    #[test]
    fn join_config_needs_json() {
        use openmls::prelude::MlsGroupJoinConfig;
        let config = crate::channel::join_config();
        // Its deletion policy decodes through an untagged enum
        // (`deserialize_any`), which postcard cannot do. If this starts to
        // pass, the join config can move to postcard like everything else.
        let bytes = postcard::to_allocvec(&config).unwrap();
        assert!(postcard::from_bytes::<MlsGroupJoinConfig>(&bytes).is_err());
        let json = serde_json::to_vec(&config).unwrap();
        assert_eq!(serde_json::from_slice::<MlsGroupJoinConfig>(&json).unwrap(), config);
    }

    mod flow {
        use openmls_traits::OpenMlsProvider;
        use rand_core::OsRng;

        use super::*;
        use crate::channel::{
            key_package, validate_key_package, Channel, ChannelInfo, MemberInfo, Provider, Received, Rejection, Suite,
        };
        use crate::identity::Identity;
        use crate::mailbox::{MailboxAddress, MailboxKeys};
        use crate::relay_address::RelayAddress;

        struct Member {
            id: Identity,
            provider: Provider,
            channel: Option<Channel>,
        }

        fn mailbox() -> MailboxAddress {
            let relay = RelayAddress {
                pin: [0; 32],
                host: "127.0.0.1".into(),
                port: 1,
            };
            MailboxKeys::generate(relay, &mut OsRng).address.clone()
        }

        fn member(name: &str) -> Member {
            Member {
                id: Identity::generate(name, &mut OsRng).unwrap(),
                provider: Provider::new().unwrap(),
                channel: None,
            }
        }

        /// A member who has just created the channel "room".
        fn founder(name: &str, suite: Suite) -> Member {
            let mut m = member(name);
            let info = ChannelInfo {
                name: "room".into(),
                sequencer: mailbox(),
                created_at: 1,
                disappear_after: 0,
                expires_at: 0,
            };
            m.channel = Some(Channel::create(&m.provider, &m.id, &info, &mailbox(), suite, false).unwrap());
            m
        }

        impl Member {
            fn ch(&mut self) -> &mut Channel {
                self.channel.as_mut().unwrap()
            }

            fn with<R>(&mut self, f: impl FnOnce(&mut Channel, &Provider, &Identity) -> R) -> R {
                f(self.channel.as_mut().unwrap(), &self.provider, &self.id)
            }

            /// Restarts from a snapshot, as the client does from its vault:
            /// everything openmls reads back must decode.
            fn reload(&mut self) {
                let snapshot = self.provider.snapshot();
                let provider = Provider::from_snapshot(snapshot.clone()).unwrap();
                assert_eq!(provider.snapshot(), snapshot);
                let old = self.channel.take().unwrap();
                let loaded = Channel::load(&provider, &old.group_id()).unwrap().unwrap();
                assert_eq!(loaded.epoch(), old.epoch());
                assert_eq!(loaded.members(), old.members());
                assert_eq!(loaded.has_pending_proposals(), old.has_pending_proposals());
                self.provider = provider;
                self.channel = Some(loaded);
            }

            fn say(&mut self, text: &str) -> Vec<u8> {
                let (p, id) = (&self.provider, &self.id);
                self.channel.as_mut().unwrap().encrypt(p, id, text.as_bytes()).unwrap()
            }

            fn hear(&mut self, bytes: &[u8]) -> (MemberInfo, Vec<u8>) {
                let p = &self.provider;
                match self.channel.as_mut().unwrap().process(p, bytes).unwrap() {
                    Received::Application { sender, plaintext, .. } => (sender, plaintext),
                    other => panic!("{other:?}"),
                }
            }

            fn process(&mut self, bytes: &[u8]) -> Received {
                let p = &self.provider;
                self.channel.as_mut().unwrap().process(p, bytes).unwrap()
            }

            fn stored(&self, kind: Kind) -> usize {
                self.provider
                    .snapshot()
                    .iter()
                    .filter(|(k, _)| k[2] == kind as u8)
                    .count()
            }
        }

        fn admit(adder: &mut Member, joiner: &mut Member, others: &mut [&mut Member], suite: Suite) {
            let kp = key_package(&joiner.provider, &joiner.id, &mailbox(), suite).unwrap();
            let valid = validate_key_package(&adder.provider, &kp).unwrap();
            let (p, id) = (&adder.provider, &adder.id);
            let ch = adder.channel.as_mut().unwrap();
            let out = ch.add(p, id, vec![valid]).unwrap();
            ch.merge_pending(p).unwrap();
            for o in others.iter_mut() {
                assert!(matches!(o.process(&out.commit), Received::Commit { .. }));
            }
            // The joiner restarts between making its key package and joining.
            let snapshot = joiner.provider.snapshot();
            joiner.provider = Provider::from_snapshot(snapshot).unwrap();
            let (ch, _) = Channel::join(&joiner.provider, out.welcome.as_ref().unwrap()).unwrap();
            joiner.channel = Some(ch);
        }

        /// `from` commits an update of its own keys and merges it; `to` reads the commit.
        fn update(from: &mut Member, to: &mut Member) {
            let out = from.with(|ch, p, id| ch.self_update(p, id, None)).unwrap();
            from.with(|ch, p, _| ch.merge_pending(p)).unwrap();
            assert!(matches!(to.process(&out.commit), Received::Commit { .. }));
        }

        fn reload_all(members: &mut [&mut Member]) {
            for m in members.iter_mut() {
                m.reload();
            }
        }

        /// Every operation of the client, with every member restarting from
        /// its snapshot between steps. [`Store::put`] checks that each value
        /// written decodes (`check_round_trip`); the reloads check that what
        /// openmls reads back makes the same group.
        #[test]
        fn every_operation_survives_a_restart() {
            for suite in [Suite::PostQuantum, Suite::Classical] {
                let mut alice = founder("alice", suite);
                let (mut bob, mut carol) = (member("bob"), member("carol"));
                admit(&mut alice, &mut bob, &mut [], suite);
                reload_all(&mut [&mut alice, &mut bob]);
                admit(&mut alice, &mut carol, &mut [&mut bob], suite);
                reload_all(&mut [&mut alice, &mut bob, &mut carol]);

                // Messages across restarts; a replay after a restart is refused.
                let m1 = bob.say("one");
                bob.reload();
                let m2 = bob.say("two");
                assert_eq!(alice.hear(&m1).1, b"one");
                alice.reload();
                assert_eq!(alice.hear(&m2).1, b"two");
                alice.reload();
                assert!(alice.with(|ch, p, _| ch.process(p, &m1)).is_err());
                assert_eq!(carol.hear(&m2).0.name, "bob");

                // A message from before a commit still decrypts after it
                // (past epochs), also after a restart.
                let early = carol.say("before the update");
                let new_box = mailbox();
                let out = bob.with(|ch, p, id| ch.self_update(p, id, Some(&new_box))).unwrap();
                bob.reload();
                bob.with(|ch, p, _| ch.merge_pending(p)).unwrap();
                bob.reload();
                alice.process(&out.commit);
                carol.process(&out.commit);
                reload_all(&mut [&mut alice, &mut bob, &mut carol]);
                assert_eq!(alice.hear(&early).1, b"before the update");
                assert_eq!(bob.hear(&early).1, b"before the update");

                // A staged commit that loses its epoch is discarded.
                alice.with(|ch, p, id| ch.self_update(p, id, None)).unwrap();
                alice.reload();
                alice.with(|ch, p, _| ch.discard_pending(p)).unwrap();
                alice.reload();

                // Carol leaves: a proposal, kept across a restart, then committed.
                let leave = carol.with(|ch, p, id| ch.leave(p, id)).unwrap();
                assert!(matches!(alice.process(&leave), Received::Proposal { .. }));
                assert!(matches!(bob.process(&leave), Received::Proposal { .. }));
                assert_eq!(alice.stored(Kind::QueuedProposal), 1);
                reload_all(&mut [&mut alice, &mut bob]);
                assert!(alice.ch().has_pending_proposals());
                let out = alice.with(|ch, p, id| ch.commit_pending(p, id)).unwrap();
                alice.reload();
                alice.with(|ch, p, _| ch.merge_pending(p)).unwrap();
                assert_eq!(alice.stored(Kind::QueuedProposal), 0);
                assert_eq!(alice.stored(Kind::ProposalRefs), 0);
                bob.process(&out.commit);
                assert_eq!(bob.stored(Kind::QueuedProposal), 0);
                match carol.process(&out.commit) {
                    Received::Commit { self_removed, .. } => assert!(self_removed),
                    other => panic!("{other:?}"),
                }
                reload_all(&mut [&mut alice, &mut bob]);
                assert_eq!(alice.ch().members().len(), 2);
                let m3 = alice.say("after carol");
                assert_eq!(bob.hear(&m3).1, b"after carol");

                // Alice (the admin) removes bob; then the channel goes from alice's store.
                let fp = bob.id.fingerprint();
                let out = alice.with(|ch, p, id| ch.remove(p, id, &[fp])).unwrap();
                alice.with(|ch, p, _| ch.merge_pending(p)).unwrap();
                alice.reload();
                bob.process(&out.commit);
                let gid = alice.ch().group_id();
                let before = alice.provider.storage().len();
                let channel = alice.channel.take().unwrap();
                channel.delete(&alice.provider).unwrap();
                assert!(alice.provider.storage().len() < before);
                assert_eq!(alice.stored(Kind::GroupState), 0);
                assert_eq!(alice.stored(Kind::MessageSecrets), 0);
                assert!(Channel::load(&alice.provider, &gid).unwrap().is_none());
            }
        }

        /// A courier may deliver a member's newest messages before the older
        /// ones waiting at a relay: the older ones must still be read, by the
        /// channel's creator and by a member who joined, across a restart.
        #[test]
        fn messages_read_far_out_of_order() {
            use crate::channel::{MAX_FORWARD_DISTANCE, OUT_OF_ORDER_TOLERANCE};
            let suite = Suite::Classical;
            let mut alice = founder("alice", suite);
            let mut bob = member("bob");
            admit(&mut alice, &mut bob, &mut [], suite);
            // More than openmls' defaults allow (5 behind, 1,000 ahead).
            let count = 1_200;
            assert!(count <= OUT_OF_ORDER_TOLERANCE as usize && count <= MAX_FORWARD_DISTANCE as usize);
            for (from, to) in [(0, 1), (1, 0)] {
                let mut pair = [&mut alice, &mut bob];
                let sent: Vec<Vec<u8>> = (0..count).map(|i| pair[from].say(&format!("m{i}"))).collect();
                let (last, earlier) = sent.split_last().unwrap();
                assert_eq!(pair[to].hear(last).1, format!("m{}", count - 1).into_bytes());
                pair[to].reload();
                for (i, bytes) in earlier.iter().enumerate().rev() {
                    assert_eq!(pair[to].hear(bytes).1, format!("m{i}").into_bytes());
                }
                // Each key is used once: a replay is still refused.
                let p = &pair[to].provider;
                assert!(pair[to].channel.as_mut().unwrap().process(p, &earlier[0]).is_err());
            }

            // Further ahead than that is refused as "too far ahead", not as forged, and
            // reads once the messages before it have been read.
            let sent: Vec<Vec<u8>> = (0..=MAX_FORWARD_DISTANCE + 1)
                .map(|i| alice.say(&format!("n{i}")))
                .collect();
            let (last, earlier) = sent.split_last().unwrap();
            let p = &bob.provider;
            let r = bob.channel.as_mut().unwrap().process(p, last);
            assert!(matches!(r, Err(Rejection::TooFarAhead)), "{r:?}");
            for bytes in earlier {
                bob.hear(bytes);
            }
            assert_eq!(bob.hear(last).1, format!("n{}", MAX_FORWARD_DISTANCE + 1).into_bytes());
        }

        /// A channel with past epochs: each write of its message secrets notes
        /// where the past epochs' member lists lie ([`reuse`]), and the notes point
        /// at those lists. (That each copied list equals its encoding is checked
        /// in every debug build, so by every test that sends a message.)
        #[test]
        fn past_member_lists_are_noted() {
            use crate::channel::MAX_PAST_EPOCHS;
            let suite = Suite::PostQuantum;
            let mut alice = founder("alice", suite);
            let mut bob = member("bob");
            admit(&mut alice, &mut bob, &mut [], suite);
            // Past epochs each holds: Alice saw the epoch before Bob joined.
            let mut past = [1, 0];
            for round in 0..MAX_PAST_EPOCHS + 2 {
                update(&mut alice, &mut bob);
                for _ in 0..3 {
                    let m = alice.say("hello");
                    bob.hear(&m);
                }
                for (i, m) in [&alice, &bob].into_iter().enumerate() {
                    past[i] = (past[i] + 1).min(MAX_PAST_EPOCHS);
                    let notes = m.provider.storage().reuse.lock().unwrap().clone();
                    let values = m.provider.storage().values.read().unwrap();
                    let [(key, notes)] = &notes.into_iter().collect::<Vec<_>>()[..] else {
                        panic!("one group")
                    };
                    assert_eq!(notes.lists.len(), past[i], "member {i}, round {round}");
                    for (_, range) in &notes.lists {
                        let list: Vec<openmls::group::Member> = decode(&values[key][range.clone()]).unwrap();
                        assert!((1..=2).contains(&list.len()));
                    }
                }
                // A restart forgets the notes; the next write notes again.
                if round == 1 {
                    bob.reload();
                    assert!(bob.provider.storage().reuse.lock().unwrap().is_empty());
                }
            }
            // Deleting the channel forgets them too.
            let ch = alice.channel.take().unwrap();
            ch.delete(&alice.provider).unwrap();
            assert!(alice.provider.storage().reuse.lock().unwrap().is_empty());
        }

        /// A message made, or one of the current epoch read, copies the past epochs
        /// whole; a message of a past epoch is read with that epoch's secrets, which it
        /// changes, so they are encoded again, and a restart then refuses the same
        /// message a second time (were the old bytes copied, the key it used would come
        /// back). Debug builds check each copy against the encoding.
        #[test]
        fn past_epochs_are_copied_only_when_untouched() {
            use reuse::PAST_COPIES;
            let suite = Suite::PostQuantum;
            let mut alice = founder("alice", suite);
            let mut bob = member("bob");
            admit(&mut alice, &mut bob, &mut [], suite);
            // A commit leaves a channel not known to equal the store until loaded again,
            // as the client does for every operation.
            let load = |m: &mut Member| {
                let id = m.ch().group_id();
                m.channel = Some(Channel::load(&m.provider, &id).unwrap().unwrap());
            };
            update(&mut alice, &mut bob);
            update(&mut alice, &mut bob);
            load(&mut alice);
            load(&mut bob);

            let copies = PAST_COPIES.get();
            for n in 0..3 {
                let m = alice.say(&format!("now {n}"));
                assert_eq!(bob.hear(&m).1, format!("now {n}").into_bytes());
            }
            assert_eq!(PAST_COPIES.get(), copies + 6, "three made, three read");

            // Sent in one epoch, read in the next.
            let late = alice.say("late");
            update(&mut alice, &mut bob);
            load(&mut bob);
            let copies = PAST_COPIES.get();
            assert_eq!(bob.hear(&late).1, b"late".to_vec());
            assert_eq!(PAST_COPIES.get(), copies, "a past epoch's message is encoded again");
            bob.reload();
            let again = bob.with(|ch, p, _| ch.process(p, &late));
            assert!(again.is_err(), "replayed after a restart: {again:?}");

            // A channel not known to equal the store (a failure leaves it so) copies nothing.
            let copies = PAST_COPIES.get();
            assert!(bob.with(|ch, p, _| ch.process(p, b"not a message")).is_err());
            load(&mut alice);
            let m = alice.say("after");
            assert_eq!(bob.hear(&m).1, b"after".to_vec());
            assert_eq!(PAST_COPIES.get(), copies + 1, "alice's only");
        }

        /// What the client's operations never write (update proposals'
        /// leaf nodes, signature key pairs), through the trait directly.
        #[test]
        fn other_values_round_trip() {
            use openmls::prelude::tls_codec::Deserialize as _;
            use openmls::prelude::{GroupId, KeyPackageIn, LeafNode, ProtocolVersion, SignatureScheme};
            use openmls_basic_credential::SignatureKeyPair;

            let alice = member("alice");
            let kp = key_package(&alice.provider, &alice.id, &mailbox(), Suite::PostQuantum).unwrap();
            let kp = KeyPackageIn::tls_deserialize_exact(&kp[..])
                .unwrap()
                .validate(alice.provider.crypto(), ProtocolVersion::Mls10)
                .unwrap();
            let store = Store::default();
            let group = GroupId::from_slice(b"group");
            store.append_own_leaf_node(&group, kp.leaf_node()).unwrap();
            store.append_own_leaf_node(&group, kp.leaf_node()).unwrap();
            let leaves: Vec<LeafNode> = store.own_leaf_nodes(&group).unwrap();
            assert_eq!(leaves, vec![kp.leaf_node().clone(); 2]);
            store.delete_own_leaf_nodes(&group).unwrap();
            assert!(store.own_leaf_nodes::<_, LeafNode>(&group).unwrap().is_empty());

            let keys = SignatureKeyPair::new(SignatureScheme::ED25519).unwrap();
            keys.store(&store).unwrap();
            let read = SignatureKeyPair::read(&store, keys.public(), SignatureScheme::ED25519).unwrap();
            assert_eq!(read.to_public_vec(), keys.to_public_vec());
            assert_eq!(read.signature_scheme(), keys.signature_scheme());
            SignatureKeyPair::delete(&store, keys.public(), SignatureScheme::ED25519).unwrap();
            assert!(store.is_empty());
        }

        #[test]
        fn damaged_values_are_errors() {
            let mut alice = founder("alice", Suite::PostQuantum);
            let gid = alice.ch().group_id();
            for kind in [Kind::Tree, Kind::MessageSecrets, Kind::GroupState, Kind::JoinConfig] {
                let mut snapshot = alice.provider.snapshot();
                for (k, v) in snapshot.iter_mut() {
                    if k[2] == kind as u8 {
                        v.truncate(v.len() / 2);
                    }
                }
                let provider = Provider::from_snapshot(snapshot).unwrap();
                assert!(Channel::load(&provider, &gid).is_err(), "{kind:?}");
            }
        }
    }

    #[test]
    fn zeroizing_buffer_grows_and_keeps_bytes() {
        let data: Vec<u8> = (0..=255u8).cycle().take(10_000).collect();
        let bytes = encode(&data, 0).unwrap();
        assert_eq!(decode::<Vec<u8>>(&bytes).unwrap(), data);
        assert_eq!(&bytes[..], &postcard::to_allocvec(&data).unwrap()[..]);
    }

    #[test]
    fn decode_refuses_trailing_bytes() {
        let mut bytes = postcard::to_allocvec(&7u32).unwrap();
        assert_eq!(decode::<u32>(&bytes), Ok(7));
        bytes.push(0);
        assert_eq!(decode::<u32>(&bytes), Err(StoreError::Decode));
    }

    #[test]
    fn foreign_snapshot_keys_are_refused() {
        // MemoryStorage's keys: label, JSON key, version.
        let json_key = b"GroupState{\"value\":{\"vec\":[1,2]}}\x00\x01".to_vec();
        assert!(Store::from_entries(vec![(json_key, b"{}".to_vec())]).is_none());
        assert!(Store::from_entries(vec![(vec![0, 1], vec![])]).is_none());
        assert!(Store::from_entries(vec![(vec![0, 1, 0, 5], vec![])]).is_none());
        assert!(Store::from_entries(vec![(vec![0, 1, Kind::LAST + 1, 5], vec![])]).is_none());
        let ok = Store::from_entries(vec![(vec![0, 1, Kind::Tree as u8, 5], vec![9])]).unwrap();
        assert_eq!(ok.snapshot(), vec![(vec![0, 1, Kind::Tree as u8, 5], vec![9])]);
    }
}

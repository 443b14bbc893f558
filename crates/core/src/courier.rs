//! Courier bundles: sealed envelopes carried by hand, on a file, when no
//! network can be trusted.
//!
//! A bundle holds envelopes that are already sealed to their recipients'
//! mailboxes (see [`crate::envelope`]), each with the digest of the send
//! capability of the mailbox it is for. The importing member hands the
//! envelopes addressed to its own mailboxes to its client as if a relay had
//! delivered them. The file is one sealed, fixed-block object:
//!
//! ```text
//! file      = head || body                     (a whole number of BLOCK_SIZE = 65,536-byte blocks)
//! head      = salt (32) || slot_0 .. slot_{S-1} (64 each) || random bytes to the end of its last block
//! S         = max(4, the power of two ≥ the number of recipient mailboxes), at most 4,096
//! slot_i    = XChaCha20-Poly1305(slot_key, nonce_i, slot_aad, slot_plain (48)) (64 with the tag)
//!             for a recipient; 64 random bytes for a dummy slot; recipients' slots at random i
//! slot_key  = HKDF-SHA256(ikm = mailbox seal key, salt = salt, info = "backchannel/v1/courier-slot")
//! nonce_i   = 20 zero bytes || i (u32)
//! slot_aad  = "backchannel/v1/courier-slot" || salt (32) || SHA-256(send capability) (32)
//! slot_plain= version (1) = 1 | S (u32) | bundle key K (32, random) | zeros (11)
//!
//! H         = SHA-256("backchannel/v1/courier-header" || head)   (every byte of it)
//! body_key  = HKDF-SHA256(ikm = K, no salt, info = "backchannel/v1/courier-body")
//! block_b   = XChaCha20-Poly1305(body_key, nonce_b, aad_b, P_b (65,520)) (65,536 with the tag)
//!             for each body block, b its index in the file (the first body block is b = head blocks)
//! nonce_b   = 16 zero bytes || b (u64)
//! aad_b     = "backchannel/v1/courier-block" || H (32) || b (u64) || last (1: 1 for the file's
//!             last block, else 0)
//! P_h || P_h+1 || .. = version (1) = 1 | bundle id (16) | created_at (u64) | count (u32)
//!             | count × (to (32) | envelope (4096)) | zeros to the end of the last block
//! ```
//!
//! Integers are big-endian. The body has exactly as many blocks as its
//! plaintext needs (at least one), so a bundle has one encoding for given
//! recipients and entries, up to the random bytes.
//!
//! Every byte of the file looks random to anyone without a recipient's seal
//! key; its length gives away only the block count (about 15.9 envelopes a
//! block, and the slot padding hides the number of recipients up to the
//! next power of two). The importer trial-opens every slot position with
//! each of its mailboxes (nothing in the clear says which slot is whose);
//! a recipient learns K, and with it the entries: which send digests get how
//! many envelopes, but not what they say.
//!
//! The body is a STREAM-like chain (Hoang, Reyhanitabar, Rogaway, Vizár):
//! each block is bound to its index, to whether it is the last one and to
//! the hash of the whole head. Reordered, dropped, added or modified blocks
//! and any changed byte of the head (another slot, a dummy slot, the
//! padding) fail authentication, and [`open_bundle`] returns nothing at all
//! unless every block authenticates and the plaintext is well-formed. A
//! changed salt or an importer's own slot makes the slot not open, which
//! cannot be told apart from a bundle for someone else:
//! [`CourierError::NotForYou`] says both.
//!
//! The bundle is not what makes messages authentic: a recipient knows K
//! and can build another bundle, but each envelope is sealed to its
//! mailbox and each MLS message is signed and ordered inside it. Replays
//! (importing a file twice, or receiving by relay what also came by
//! courier) are the client's to drop, by MLS message id.
//!
//! Limits: the whole file is held in memory, so it is capped at
//! [`MAX_FILE_SIZE`] (1 GiB) and [`MAX_ENTRIES`] envelopes (which fit in it
//! with the most recipients); [`open_bundle`] refuses a larger file before
//! reading it, and allocates only for an entry count that agrees with the
//! file's length.

use std::collections::BTreeSet;
use std::fmt;

use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{Tag, XChaCha20Poly1305, XNonce};
use hkdf::Hkdf;
use rand_core::CryptoRngCore;
use sha2::{Digest, Sha256};
use thiserror::Error;
use zeroize::Zeroizing;

use crate::envelope::{Envelope, ENVELOPE_SIZE};
use crate::mailbox::{MailboxAddress, SealKey};

/// Size of every block of a bundle file; a file is a whole number of them.
///
/// 64 KiB: the block count is all a bundle shows, and at about 15.9
/// envelopes a block it tells the number of envelopes only to within 16
/// (16 KiB blocks would tell it to within 4). The cost is at most one
/// block of padding in the body and one in the head, nothing for a file
/// carried by hand; each block's tag is 0.02 % overhead.
pub const BLOCK_SIZE: usize = 64 * 1024;
/// Largest bundle file, as made and as accepted: 1 GiB, since the whole
/// bundle is held in memory (once as the file and once as the entries).
pub const MAX_FILE_SIZE: usize = 1 << 30;
/// Most envelopes in one bundle; so many fit in [`MAX_FILE_SIZE`] even with
/// [`MAX_RECIPIENTS`] recipients.
pub const MAX_ENTRIES: usize = 250_000;
/// Most recipient mailboxes of one bundle (a 1,000-member channel needs 999).
pub const MAX_RECIPIENTS: usize = 4096;
/// The format version this code writes and reads.
pub const VERSION: u8 = 1;
/// Size of one entry in the body: the recipient's send digest and the envelope.
pub const ENTRY_SIZE: usize = 32 + ENVELOPE_SIZE;

const SALT_LEN: usize = 32;
const TAG_LEN: usize = 16;
const KEY_LEN: usize = 32;
const SLOT_PLAIN: usize = 48;
const SLOT_SIZE: usize = SLOT_PLAIN + TAG_LEN;
const MIN_SLOTS: usize = 4;
const MAX_SLOTS: usize = MAX_RECIPIENTS;
const BLOCK_PLAIN: usize = BLOCK_SIZE - TAG_LEN;
const BODY_HEADER: usize = 1 + 16 + 8 + 4;
const SLOT_CONTEXT: &[u8] = b"backchannel/v1/courier-slot";
const HEADER_CONTEXT: &[u8] = b"backchannel/v1/courier-header";
const BODY_CONTEXT: &[u8] = b"backchannel/v1/courier-body";
const BLOCK_CONTEXT: &[u8] = b"backchannel/v1/courier-block";

/// One sealed envelope and the mailbox it is for.
#[derive(Clone, PartialEq, Eq)]
pub struct BundleEntry {
    /// SHA-256 of the recipient mailbox's send capability
    /// ([`crate::mailbox::SendCapability::digest`]).
    pub to: [u8; 32],
    /// The envelope, sealed to that mailbox.
    pub envelope: Envelope,
}

impl fmt::Debug for BundleEntry {
    // The digest names a mailbox to its relay: keep it out of logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BundleEntry(..)")
    }
}

/// What a bundle carries.
#[derive(Clone, PartialEq, Eq)]
pub struct Bundle {
    /// Random; lets a client recognize a bundle it has imported already.
    pub id: [u8; 16],
    /// When the bundle was made (Unix seconds, from the caller's clock).
    pub created_at: u64,
    /// The envelopes, for any of the recipients.
    pub entries: Vec<BundleEntry>,
}

impl fmt::Debug for Bundle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bundle")
            .field("created_at", &self.created_at)
            .field("entries", &self.entries.len())
            .finish_non_exhaustive()
    }
}

impl Bundle {
    /// A bundle with a fresh random id.
    pub fn new(created_at: u64, entries: Vec<BundleEntry>, rng: &mut impl CryptoRngCore) -> Self {
        let mut id = [0u8; 16];
        rng.fill_bytes(&mut id);
        Self {
            id,
            created_at,
            entries,
        }
    }
}

/// A bundle could not be made or opened.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum CourierError {
    /// No slot opens with any of the importer's mailboxes: the bundle is for
    /// someone else, is not a bundle, or its salt or the importer's own slot
    /// was changed (these cannot be told apart).
    #[error("this bundle is not addressed to any of your channels (or it is not a backchannel bundle)")]
    NotForYou,
    /// A slot opened but something after it did not authenticate or is
    /// malformed: bytes changed, blocks moved, the file cut or extended.
    #[error("the bundle has been modified or damaged in transit; ask the sender for a new one")]
    Damaged,
    /// More than [`MAX_ENTRIES`] envelopes, or a file over [`MAX_FILE_SIZE`].
    #[error("the bundle is too large: a bundle holds at most 250,000 envelopes and 1 GiB; split it into several")]
    TooLarge,
    /// A newer version of backchannel made the bundle.
    #[error("the bundle was made by a newer version of backchannel; upgrade to import it")]
    UnknownVersion,
    /// A bundle was asked for with no recipient mailbox.
    #[error("a bundle needs at least one recipient; the channel has no other member to carry it to")]
    NoRecipients,
    /// More than [`MAX_RECIPIENTS`] distinct recipient mailboxes.
    #[error("a bundle can be addressed to at most 4,096 mailboxes; split the recipients over several bundles")]
    TooManyRecipients,
}

/// HKDF-SHA256 to one 32-byte key.
// HKDF-Expand fails only when asked for more than 255 hash lengths; one
// 32-byte key is one hash length, so the `expect` cannot fire.
#[allow(clippy::expect_used)]
fn hkdf32(salt: Option<&[u8]>, ikm: &[u8], info: &[u8]) -> Zeroizing<[u8; KEY_LEN]> {
    let mut okm = Zeroizing::new([0u8; KEY_LEN]);
    Hkdf::<Sha256>::new(salt, ikm)
        .expand(info, okm.as_mut())
        .expect("32 bytes is a valid HKDF-SHA256 output length");
    okm
}

/// The key that seals one mailbox's slot in one bundle (keyed by its salt).
struct SlotKey(XChaCha20Poly1305);

impl SlotKey {
    fn new(seal: &SealKey, salt: &[u8; SALT_LEN]) -> Self {
        let k = hkdf32(Some(salt), &seal.0, SLOT_CONTEXT);
        Self(XChaCha20Poly1305::new(k.as_ref().into()))
    }

    fn nonce(index: usize) -> XNonce {
        let mut n = [0u8; 24];
        n[20..].copy_from_slice(&(index as u32).to_be_bytes());
        n.into()
    }

    fn aad(salt: &[u8; SALT_LEN], send_digest: &[u8; 32]) -> Vec<u8> {
        [SLOT_CONTEXT, salt, send_digest].concat()
    }
}

/// The key that seals the body blocks of one bundle.
struct BodyKey(XChaCha20Poly1305);

impl BodyKey {
    fn new(bundle_key: &[u8; KEY_LEN]) -> Self {
        let k = hkdf32(None, bundle_key, BODY_CONTEXT);
        Self(XChaCha20Poly1305::new(k.as_ref().into()))
    }

    fn nonce(block: usize) -> XNonce {
        let mut n = [0u8; 24];
        n[16..].copy_from_slice(&(block as u64).to_be_bytes());
        n.into()
    }

    fn aad(header_hash: &[u8; 32], block: usize, last: bool) -> Vec<u8> {
        [
            BLOCK_CONTEXT,
            header_hash,
            &(block as u64).to_be_bytes(),
            &[u8::from(last)],
        ]
        .concat()
    }
}

fn header_hash(head: &[u8]) -> [u8; 32] {
    Sha256::new()
        .chain_update(HEADER_CONTEXT)
        .chain_update(head)
        .finalize()
        .into()
}

/// Slot positions for `recipients` mailboxes.
fn slot_count(recipients: usize) -> usize {
    recipients.next_power_of_two().max(MIN_SLOTS)
}

/// Blocks taken by the salt and `slots` slots.
fn head_blocks(slots: usize) -> usize {
    (SALT_LEN + slots * SLOT_SIZE).div_ceil(BLOCK_SIZE)
}

/// Body blocks for `entries` entries (at most [`MAX_ENTRIES`], so no overflow).
fn body_blocks(entries: usize) -> usize {
    (BODY_HEADER + entries * ENTRY_SIZE).div_ceil(BLOCK_PLAIN).max(1)
}

/// Size of the bundle file [`seal_bundle`] makes for `recipients` distinct
/// mailboxes and `entries` envelopes, or why it cannot make it.
pub fn bundle_size(recipients: usize, entries: usize) -> Result<usize, CourierError> {
    if recipients == 0 {
        return Err(CourierError::NoRecipients);
    }
    if recipients > MAX_RECIPIENTS {
        return Err(CourierError::TooManyRecipients);
    }
    if entries > MAX_ENTRIES {
        return Err(CourierError::TooLarge);
    }
    let size = (head_blocks(slot_count(recipients)) + body_blocks(entries)) * BLOCK_SIZE;
    if size > MAX_FILE_SIZE {
        return Err(CourierError::TooLarge);
    }
    Ok(size)
}

/// Writes a plaintext stream into the payload part of consecutive blocks
/// (each block's last [`TAG_LEN`] bytes are left for its tag).
struct BlockWriter<'a> {
    blocks: &'a mut [u8],
    pos: usize,
}

impl BlockWriter<'_> {
    fn put(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let off = self.pos % BLOCK_PLAIN;
            let at = self.pos / BLOCK_PLAIN * BLOCK_SIZE + off;
            let n = bytes.len().min(BLOCK_PLAIN - off);
            // Callers size the blocks for what they write; past the end, stop.
            let Some(dst) = self.blocks.get_mut(at..at + n) else {
                return;
            };
            dst.copy_from_slice(&bytes[..n]);
            bytes = &bytes[n..];
            self.pos += n;
        }
    }
}

/// The body plaintext of `bundle`, before the zero padding.
fn write_body(bundle: &Bundle, put: &mut impl FnMut(&[u8])) {
    put(&[VERSION]);
    put(&bundle.id);
    put(&bundle.created_at.to_be_bytes());
    put(&(bundle.entries.len() as u32).to_be_bytes());
    for e in &bundle.entries {
        put(&e.to);
        put(e.envelope.as_bytes());
    }
}

/// Seals `bundle` for every mailbox in `recipients` (their addresses: relay,
/// send capability, seal key). A mailbox listed twice gets one slot; the
/// entries may be for any mailbox, the recipients' or others'.
pub fn seal_bundle(
    bundle: &Bundle,
    recipients: &[MailboxAddress],
    rng: &mut impl CryptoRngCore,
) -> Result<Vec<u8>, CourierError> {
    let mut seen = BTreeSet::new();
    let recipients: Vec<&MailboxAddress> = recipients.iter().filter(|r| seen.insert(r.send.digest())).collect();
    bundle_size(recipients.len(), bundle.entries.len())?;
    let slots = slot_count(recipients.len());
    let mut bundle_key = Zeroizing::new([0u8; KEY_LEN]);
    rng.fill_bytes(bundle_key.as_mut());
    let mut slot_plain = Zeroizing::new([0u8; SLOT_PLAIN]);
    slot_plain[0] = VERSION;
    slot_plain[1..5].copy_from_slice(&(slots as u32).to_be_bytes());
    slot_plain[5..5 + KEY_LEN].copy_from_slice(bundle_key.as_ref());
    seal_raw(
        &recipients,
        slots,
        &slot_plain,
        &bundle_key,
        body_blocks(bundle.entries.len()),
        |w| write_body(bundle, &mut |b| w.put(b)),
        rng,
    )
}

/// Lays out and seals a file: a head of `slots` slot positions (one
/// `slot_plain` sealed for each recipient at a random position, the rest
/// random) and `body_blocks` blocks whose plaintext `body` writes (zeros
/// after it), sealed under `bundle_key`. [`seal_bundle`] checks the sizes.
fn seal_raw(
    recipients: &[&MailboxAddress],
    slots: usize,
    slot_plain: &[u8; SLOT_PLAIN],
    bundle_key: &[u8; KEY_LEN],
    body_blocks: usize,
    body: impl FnOnce(&mut BlockWriter<'_>),
    rng: &mut impl CryptoRngCore,
) -> Result<Vec<u8>, CourierError> {
    let head_len = head_blocks(slots) * BLOCK_SIZE;
    let mut file = vec![0u8; head_len + body_blocks * BLOCK_SIZE];
    let (head, blocks) = file.split_at_mut(head_len);
    // Salt, dummy slots and padding: random. Then the recipients' slots.
    rng.fill_bytes(head);
    let mut salt = [0u8; SALT_LEN];
    salt.copy_from_slice(&head[..SALT_LEN]);
    let mut positions: Vec<usize> = (0..slots).collect();
    for i in (1..slots).rev() {
        positions.swap(i, (rng.next_u64() % (i as u64 + 1)) as usize);
    }
    for (r, &i) in recipients.iter().zip(&positions) {
        let key = SlotKey::new(&r.seal, &salt);
        let mut buf = Zeroizing::new(*slot_plain);
        // The AEAD fails only for plaintexts of gigabytes; these are 48 bytes.
        let tag = key
            .0
            .encrypt_in_place_detached(&SlotKey::nonce(i), &SlotKey::aad(&salt, &r.send.digest()), buf.as_mut())
            .map_err(|_| CourierError::TooLarge)?;
        let at = SALT_LEN + i * SLOT_SIZE;
        head[at..at + SLOT_PLAIN].copy_from_slice(buf.as_ref());
        head[at + SLOT_PLAIN..at + SLOT_SIZE].copy_from_slice(&tag);
    }
    let hash = header_hash(head);
    body(&mut BlockWriter { blocks, pos: 0 });
    let key = BodyKey::new(bundle_key);
    let first = head_len / BLOCK_SIZE;
    for (j, block) in blocks.chunks_exact_mut(BLOCK_SIZE).enumerate() {
        let b = first + j;
        let (plain, tag_out) = block.split_at_mut(BLOCK_PLAIN);
        let tag = key
            .0
            .encrypt_in_place_detached(&BodyKey::nonce(b), &BodyKey::aad(&hash, b, j + 1 == body_blocks), plain)
            .map_err(|_| CourierError::TooLarge)?;
        tag_out.copy_from_slice(&tag);
    }
    Ok(file)
}

/// The first of `mailboxes` whose slot opens: its index, the slot's
/// position and plaintext.
fn find_slot(file: &[u8], mailboxes: &[MailboxAddress]) -> Option<(usize, usize, Zeroizing<[u8; SLOT_PLAIN]>)> {
    let salt: [u8; SALT_LEN] = file.get(..SALT_LEN)?.try_into().ok()?;
    let slots = &file[SALT_LEN..];
    let positions = (slots.len() / SLOT_SIZE).min(MAX_SLOTS);
    for (m, mailbox) in mailboxes.iter().enumerate() {
        let key = SlotKey::new(&mailbox.seal, &salt);
        let aad = SlotKey::aad(&salt, &mailbox.send.digest());
        for (i, slot) in slots.chunks_exact(SLOT_SIZE).take(positions).enumerate() {
            let mut buf = Zeroizing::new([0u8; SLOT_PLAIN]);
            buf.copy_from_slice(&slot[..SLOT_PLAIN]);
            let tag = Tag::from_slice(&slot[SLOT_PLAIN..]);
            if key
                .0
                .decrypt_in_place_detached(&SlotKey::nonce(i), &aad, buf.as_mut(), tag)
                .is_ok()
            {
                return Some((m, i, buf));
            }
        }
    }
    None
}

/// Decrypts body blocks one at a time, in order, and reads the plaintext
/// stream across them.
struct BlockReader<'a> {
    blocks: &'a [u8],
    key: BodyKey,
    hash: [u8; 32],
    first: usize,
    count: usize,
    next: usize,
    plain: Zeroizing<Vec<u8>>,
    pos: usize,
}

impl BlockReader<'_> {
    fn decrypt_next(&mut self) -> Result<(), CourierError> {
        if self.next >= self.count {
            return Err(CourierError::Damaged);
        }
        let at = self.next * BLOCK_SIZE;
        let block = self.blocks.get(at..at + BLOCK_SIZE).ok_or(CourierError::Damaged)?;
        let b = self.first + self.next;
        self.plain.copy_from_slice(&block[..BLOCK_PLAIN]);
        self.key
            .0
            .decrypt_in_place_detached(
                &BodyKey::nonce(b),
                &BodyKey::aad(&self.hash, b, self.next + 1 == self.count),
                &mut self.plain[..],
                Tag::from_slice(&block[BLOCK_PLAIN..]),
            )
            .map_err(|_| CourierError::Damaged)?;
        self.next += 1;
        self.pos = 0;
        Ok(())
    }

    fn read(&mut self, mut out: &mut [u8]) -> Result<(), CourierError> {
        while !out.is_empty() {
            if self.pos == BLOCK_PLAIN {
                self.decrypt_next()?;
            }
            let n = out.len().min(BLOCK_PLAIN - self.pos);
            out[..n].copy_from_slice(&self.plain[self.pos..self.pos + n]);
            self.pos += n;
            out = &mut out[n..];
        }
        Ok(())
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], CourierError> {
        let mut a = [0u8; N];
        self.read(&mut a)?;
        Ok(a)
    }

    /// Every block was read and the rest of the last one is zeros.
    fn finish(self) -> Result<(), CourierError> {
        let rest = self.plain.get(self.pos..).unwrap_or_default();
        if self.next != self.count || rest.iter().fold(0u8, |acc, &b| acc | b) != 0 {
            return Err(CourierError::Damaged);
        }
        Ok(())
    }
}

/// Opens a bundle file (attacker input) with the first of `mailboxes`
/// whose slot opens. Returns the bundle, with every entry (for the
/// importer's mailboxes and for others), and the index into `mailboxes` of
/// the mailbox that opened it. Nothing is returned unless the whole file
/// authenticates.
pub fn open_bundle(file: &[u8], mailboxes: &[MailboxAddress]) -> Result<(Bundle, usize), CourierError> {
    if file.len() > MAX_FILE_SIZE {
        return Err(CourierError::TooLarge);
    }
    let (which, index, slot) = find_slot(file, mailboxes).ok_or(CourierError::NotForYou)?;
    // The slot authenticated: from here on, every failure is damage.
    if slot[0] != VERSION {
        return Err(CourierError::UnknownVersion);
    }
    let mut count = [0u8; 4];
    count.copy_from_slice(&slot[1..5]);
    let slots = u32::from_be_bytes(count) as usize;
    let mut bundle_key = Zeroizing::new([0u8; KEY_LEN]);
    bundle_key.copy_from_slice(&slot[5..5 + KEY_LEN]);
    if !slots.is_power_of_two()
        || !(MIN_SLOTS..=MAX_SLOTS).contains(&slots)
        || index >= slots
        || slot[5 + KEY_LEN..].iter().any(|&b| b != 0)
        || !file.len().is_multiple_of(BLOCK_SIZE)
    {
        return Err(CourierError::Damaged);
    }
    let head_len = head_blocks(slots) * BLOCK_SIZE;
    if file.len() <= head_len {
        return Err(CourierError::Damaged);
    }
    let (head, blocks) = file.split_at(head_len);
    let mut r = BlockReader {
        blocks,
        key: BodyKey::new(&bundle_key),
        hash: header_hash(head),
        first: head_len / BLOCK_SIZE,
        count: blocks.len() / BLOCK_SIZE,
        next: 0,
        plain: Zeroizing::new(vec![0u8; BLOCK_PLAIN]),
        pos: BLOCK_PLAIN,
    };
    let [version] = r.array()?;
    if version != VERSION {
        return Err(CourierError::Damaged);
    }
    let id = r.array()?;
    let created_at = u64::from_be_bytes(r.array()?);
    let count = u32::from_be_bytes(r.array()?) as usize;
    // Bound the count by the file before allocating for it.
    if count > MAX_ENTRIES || body_blocks(count) != r.count {
        return Err(CourierError::Damaged);
    }
    let mut entries = Vec::with_capacity(count);
    let mut envelope = vec![0u8; ENVELOPE_SIZE];
    for _ in 0..count {
        let to = r.array()?;
        r.read(&mut envelope)?;
        let envelope = Envelope::from_bytes(&envelope).map_err(|_| CourierError::Damaged)?;
        entries.push(BundleEntry { to, envelope });
    }
    r.finish()?;
    Ok((
        Bundle {
            id,
            created_at,
            entries,
        },
        which,
    ))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::envelope::{seal_payload, PayloadKind};
    use crate::mailbox::MailboxKeys;
    use crate::relay_address::RelayAddress;
    use proptest::prelude::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    use std::collections::HashSet;
    use std::sync::OnceLock;

    const HOST: &str = "relay.courier-test.example";

    fn rng(seed: u64) -> StdRng {
        StdRng::seed_from_u64(seed)
    }

    fn mailboxes(n: usize, rng: &mut StdRng) -> Vec<MailboxAddress> {
        (0..n)
            .map(|_| {
                MailboxKeys::generate(
                    RelayAddress {
                        pin: [1; 32],
                        host: HOST.into(),
                        port: 4433,
                    },
                    rng,
                )
                .address
                .clone()
            })
            .collect()
    }

    /// `n` real envelopes for `recipients` in turn; the first is all 0x41
    /// (so that a plaintext copy would show), the others sealed for real.
    fn bundle(n: usize, recipients: &[MailboxAddress], rng: &mut StdRng) -> Bundle {
        let entries = (0..n)
            .map(|i| {
                let to = &recipients[i % recipients.len()];
                let envelope = if i == 0 {
                    Envelope::from_bytes(&[0x41; ENVELOPE_SIZE]).unwrap()
                } else {
                    seal_payload(&to.seal, &to.send, PayloadKind::Mls, &[i as u8; 300], rng)
                        .unwrap()
                        .remove(0)
                };
                BundleEntry {
                    to: to.send.digest(),
                    envelope,
                }
            })
            .collect();
        Bundle::new(1_800_000_000, entries, rng)
    }

    /// Three recipients, 17 entries: one head block and two body blocks.
    struct Fixture {
        recipients: Vec<MailboxAddress>,
        bundle: Bundle,
        file: Vec<u8>,
    }

    fn fixture() -> &'static Fixture {
        static F: OnceLock<Fixture> = OnceLock::new();
        F.get_or_init(|| {
            let mut rng = rng(7);
            let recipients = mailboxes(3, &mut rng);
            let bundle = bundle(17, &recipients, &mut rng);
            let file = seal_bundle(&bundle, &recipients, &mut rng).unwrap();
            Fixture {
                recipients,
                bundle,
                file,
            }
        })
    }

    fn expect_refused(file: &[u8], what: &str) -> CourierError {
        match open_bundle(file, &fixture().recipients) {
            Ok(_) => panic!("{what}: the bundle still opened"),
            Err(e) => e,
        }
    }

    fn flip(pos: usize, bit: u8) -> Vec<u8> {
        let mut f = fixture().file.clone();
        f[pos] ^= 1 << (bit % 8);
        f
    }

    /// What flipping the byte at `pos` of the fixture must give.
    fn expected_after_flip(pos: usize) -> CourierError {
        // The salt keys every slot: nothing opens. Any other byte: another
        // recipient's slot opens (or the importer's own still does) and the
        // head hash or a block fails.
        if pos < SALT_LEN {
            CourierError::NotForYou
        } else {
            CourierError::Damaged
        }
    }

    #[test]
    fn round_trips_for_every_recipient() {
        let mut rng = rng(1);
        for n_recipients in [1, 3, 9] {
            for n_entries in [0, 1, 50] {
                let recipients = mailboxes(n_recipients, &mut rng);
                let b = bundle(n_entries, &recipients, &mut rng);
                let file = seal_bundle(&b, &recipients, &mut rng).unwrap();
                assert_eq!(file.len() % BLOCK_SIZE, 0);
                assert_eq!(Ok(file.len()), bundle_size(n_recipients, n_entries));
                let stranger = mailboxes(1, &mut rng).remove(0);
                for (i, r) in recipients.iter().enumerate() {
                    assert_eq!(
                        open_bundle(&file, std::slice::from_ref(r)),
                        Ok((b.clone(), 0)),
                        "recipient {i}"
                    );
                }
                // The importer's other mailboxes come first: the index says which opened it.
                let mine = [stranger.clone(), recipients[n_recipients - 1].clone()];
                assert_eq!(open_bundle(&file, &mine), Ok((b.clone(), 1)));
                assert_eq!(open_bundle(&file, &[stranger]), Err(CourierError::NotForYou));
            }
        }
    }

    #[test]
    fn sizes_are_whole_blocks_and_as_documented() {
        assert_eq!(bundle_size(1, 0), Ok(2 * BLOCK_SIZE));
        assert_eq!(bundle_size(1, 1), Ok(2 * BLOCK_SIZE));
        assert_eq!(bundle_size(1, 15), Ok(2 * BLOCK_SIZE));
        assert_eq!(bundle_size(1, 16), Ok(3 * BLOCK_SIZE));
        assert_eq!(bundle_size(1, 100), Ok(8 * BLOCK_SIZE));
        // Up to 512 recipients (512 slots) share one head block with the salt.
        assert_eq!(bundle_size(512, 1), Ok(2 * BLOCK_SIZE));
        assert_eq!(bundle_size(513, 1), Ok(3 * BLOCK_SIZE));
        assert_eq!(bundle_size(MAX_RECIPIENTS, 1), Ok(6 * BLOCK_SIZE));
        assert_eq!(fixture().file.len(), 3 * BLOCK_SIZE);
        let biggest = bundle_size(MAX_RECIPIENTS, MAX_ENTRIES);
        assert!(matches!(biggest, Ok(n) if n <= MAX_FILE_SIZE), "{biggest:?}");
        assert_eq!(bundle_size(1, MAX_ENTRIES + 1), Err(CourierError::TooLarge));
        assert_eq!(bundle_size(0, 1), Err(CourierError::NoRecipients));
        assert_eq!(bundle_size(MAX_RECIPIENTS + 1, 1), Err(CourierError::TooManyRecipients));
    }

    #[test]
    fn slot_counts_are_padded_to_a_power_of_two() {
        assert_eq!(
            [1, 2, 3, 4, 5, 9, 999, 1000, 4096].map(slot_count),
            [4, 4, 4, 4, 8, 16, 1024, 1024, 4096]
        );
        let mut rng = rng(2);
        for (n, slots) in [(1, 4), (3, 4), (9, 16)] {
            let recipients = mailboxes(n, &mut rng);
            let file = seal_bundle(&bundle(1, &recipients, &mut rng), &recipients, &mut rng).unwrap();
            let (_, _, plain) = find_slot(&file, &recipients[..1]).unwrap();
            assert_eq!(plain[1..5], (slots as u32).to_be_bytes());
        }
    }

    #[test]
    fn duplicate_and_missing_recipients() {
        let mut rng = rng(3);
        let recipients = mailboxes(2, &mut rng);
        let b = bundle(1, &recipients, &mut rng);
        let twice = [recipients[0].clone(), recipients[0].clone(), recipients[1].clone()];
        let file = seal_bundle(&b, &twice, &mut rng).unwrap();
        assert_eq!(open_bundle(&file, &recipients[1..]).map(|(b, _)| b), Ok(b.clone()));
        assert_eq!(seal_bundle(&b, &[], &mut rng), Err(CourierError::NoRecipients));
        assert_eq!(open_bundle(&file, &[]), Err(CourierError::NotForYou));
        // Same send capability, another seal key: not the mailbox.
        let mut impostor = recipients[0].clone();
        impostor.seal.0[0] ^= 1;
        let file = seal_bundle(&b, &recipients[..1], &mut rng).unwrap();
        assert_eq!(open_bundle(&file, &[impostor]), Err(CourierError::NotForYou));
    }

    #[test]
    fn flipping_a_byte_near_every_block_boundary_fails() {
        let f = fixture();
        assert_eq!(
            open_bundle(&f.file, &f.recipients).map(|(b, _)| b),
            Ok(f.bundle.clone())
        );
        let blocks = f.file.len() / BLOCK_SIZE;
        // The salt (each flip there costs a trial of every slot position
        // with every mailbox, so a few), both edges of each slot and some
        // bytes inside, the head padding.
        let mut positions = vec![0, 1, 17, SALT_LEN - 1];
        for i in 0..5 {
            let at = SALT_LEN + i * SLOT_SIZE;
            positions.extend([
                at,
                at + 1,
                at + 23,
                at + SLOT_PLAIN - 1,
                at + SLOT_PLAIN,
                at + SLOT_SIZE - 1,
            ]);
        }
        // Each block boundary: the end of the plaintext, the tag, the start
        // of the next block.
        for b in 1..=blocks {
            let edge = b * BLOCK_SIZE;
            positions.extend(edge - TAG_LEN - 4..edge - TAG_LEN + 4);
            positions.extend(edge - 4..(edge + 8).min(f.file.len()));
        }
        let mut rng = rng(4);
        positions.extend((0..60).map(|_| rng.gen_range(0..f.file.len())));
        for pos in positions {
            let e = expect_refused(&flip(pos, (pos % 8) as u8), &format!("byte {pos} flipped"));
            assert_eq!(e, expected_after_flip(pos), "byte {pos} flipped");
        }
    }

    proptest! {
        // Each case opens (or trial-opens) a 192 KiB file in a debug build.
        #![proptest_config(ProptestConfig::with_cases(48))]

        #[test]
        fn flipping_any_bit_fails(pos in any::<prop::sample::Index>(), bit in 0u8..8) {
            let pos = pos.index(fixture().file.len());
            prop_assert_eq!(open_bundle(&flip(pos, bit), &fixture().recipients).map(|(b, _)| b), Err(expected_after_flip(pos)));
        }

        #[test]
        fn short_garbage_never_panics(file in proptest::collection::vec(any::<u8>(), 0..2000)) {
            prop_assert!(open_bundle(&file, &fixture().recipients).is_err());
        }

        #[test]
        fn crafted_bodies_never_panic_and_what_opens_is_canonical(
            body in proptest::collection::vec(any::<u8>(), 0..300),
            count in 0u32..40,
            blocks in 1usize..4,
        ) {
            let f = fixture();
            let mut plain = vec![VERSION];
            plain.extend_from_slice(&[9; 16]);
            plain.extend_from_slice(&5u64.to_be_bytes());
            plain.extend_from_slice(&count.to_be_bytes());
            plain.extend_from_slice(&body);
            let file = craft(&f.recipients[..1], good_slot(), blocks, &plain);
            if let Ok((b, _)) = open_bundle(&file, &f.recipients) {
                let mut again = Vec::new();
                write_body(&b, &mut |x| again.extend_from_slice(x));
                again.resize(blocks * BLOCK_PLAIN, 0);
                plain.resize(blocks * BLOCK_PLAIN, 0);
                prop_assert_eq!(again, plain);
            }
        }
    }

    proptest! {
        // A file no slot opens in costs a trial of every slot position (up
        // to 4,096), slow in a debug build: few cases, one mailbox.
        #![proptest_config(ProptestConfig::with_cases(16))]

        #[test]
        fn random_files_never_open_nor_panic(seed in any::<u64>(), blocks in 0usize..3, extra in 0usize..100) {
            let mut file = vec![0u8; blocks * BLOCK_SIZE + extra];
            rng(seed).fill(&mut file[..]);
            prop_assert_eq!(open_bundle(&file, &fixture().recipients[..1]).map(|(b, _)| b), Err(CourierError::NotForYou));
        }
    }

    #[test]
    fn truncated_extended_or_reordered_files_fail() {
        let f = fixture();
        let n = f.file.len();
        let mut rng = rng(5);
        let mut appended = f.file.clone();
        appended.extend((0..BLOCK_SIZE).map(|_| rng.gen::<u8>()));
        let mut last_twice = f.file.clone();
        last_twice.extend_from_slice(&f.file[n - BLOCK_SIZE..]);
        let swap = |a: usize, b: usize| {
            let mut s = f.file.clone();
            let (x, y) = s.split_at_mut(b * BLOCK_SIZE);
            x[a * BLOCK_SIZE..(a + 1) * BLOCK_SIZE].swap_with_slice(&mut y[..BLOCK_SIZE]);
            s
        };
        let cases = [
            (
                "cut by a block",
                f.file[..n - BLOCK_SIZE].to_vec(),
                CourierError::Damaged,
            ),
            ("cut to the head", f.file[..BLOCK_SIZE].to_vec(), CourierError::Damaged),
            ("cut by a byte", f.file[..n - 1].to_vec(), CourierError::Damaged),
            ("a random block appended", appended, CourierError::Damaged),
            ("the last block repeated", last_twice, CourierError::Damaged),
            ("the body blocks swapped", swap(1, 2), CourierError::Damaged),
            ("head and first body block swapped", swap(0, 1), CourierError::NotForYou),
            (
                "the first block dropped",
                f.file[BLOCK_SIZE..].to_vec(),
                CourierError::NotForYou,
            ),
        ];
        for (what, file, want) in cases {
            assert_eq!(expect_refused(&file, what), want, "{what}");
        }
    }

    #[test]
    fn a_slot_from_another_bundle_does_not_open() {
        let f = fixture();
        let mut rng = rng(6);
        let other = seal_bundle(&f.bundle, &f.recipients, &mut rng).unwrap();
        let mut mixed = f.file.clone();
        let slots = SALT_LEN..SALT_LEN + 4 * SLOT_SIZE;
        mixed[slots.clone()].copy_from_slice(&other[slots]);
        assert_eq!(open_bundle(&mixed, &f.recipients), Err(CourierError::NotForYou));
    }

    #[test]
    fn nothing_in_the_clear() {
        let f = fixture();
        let windows: HashSet<&[u8]> = f.file.windows(8).collect();
        for (i, e) in f.bundle.entries.iter().enumerate() {
            for w in e.envelope.as_bytes().windows(8).chain(e.to.windows(8)) {
                assert!(!windows.contains(w), "entry {i} shows in the file");
            }
        }
        for r in &f.recipients {
            for secret in [&r.send.0[..], &r.seal.0, &r.send.digest(), &r.relay.pin] {
                assert!(!windows.contains(&secret[..8]));
            }
        }
        let host = HOST.as_bytes();
        assert!(!f.file.windows(host.len()).any(|w| w == host));
        assert!(!windows.contains(&[0u8; 8][..]), "a run of zeros (unencrypted padding)");
        // The version, id and time are not in the clear either.
        assert!(!windows.contains(&f.bundle.id[..8]));
        assert!(!windows.contains(&f.bundle.created_at.to_be_bytes()[..]));
    }

    /// A slot plaintext: version, slot count, the test's bundle key.
    fn slot_plain(version: u8, slots: u32) -> [u8; SLOT_PLAIN] {
        let mut s = [0u8; SLOT_PLAIN];
        s[0] = version;
        s[1..5].copy_from_slice(&slots.to_be_bytes());
        s[5..5 + KEY_LEN].copy_from_slice(&[0x4b; KEY_LEN]);
        s
    }

    fn good_slot() -> [u8; SLOT_PLAIN] {
        slot_plain(VERSION, 4)
    }

    /// A file sealed for real around a hand-made slot and body plaintext.
    fn craft(recipients: &[MailboxAddress], slot: [u8; SLOT_PLAIN], blocks: usize, plain: &[u8]) -> Vec<u8> {
        let recipients: Vec<&MailboxAddress> = recipients.iter().collect();
        seal_raw(
            &recipients,
            4,
            &slot,
            &[0x4b; KEY_LEN],
            blocks,
            |w| w.put(plain),
            &mut rng(8),
        )
        .unwrap()
    }

    #[test]
    fn well_sealed_but_malformed_bundles_are_refused() {
        let f = fixture();
        let mut good = Vec::new();
        write_body(&f.bundle, &mut |x| good.extend_from_slice(x));
        let blocks = body_blocks(f.bundle.entries.len());
        let rcpt = &f.recipients[..1];
        assert_eq!(
            open_bundle(&craft(rcpt, good_slot(), blocks, &good), rcpt).map(|(b, _)| b),
            Ok(f.bundle.clone())
        );
        let with = |at: usize, v: u8| {
            let mut p = good.clone();
            p[at] = v;
            p
        };
        let mut nonzero_padding = good.clone();
        nonzero_padding.push(1);
        // 66 entries need five blocks, not four.
        let mut more = good.clone();
        more[25..29].copy_from_slice(&66u32.to_be_bytes());
        let mut too_many = good.clone();
        too_many[25..29].copy_from_slice(&u32::MAX.to_be_bytes());
        let mut padding_slot = good_slot();
        padding_slot[47] = 1;
        let cases = [
            (
                "newer slot version",
                slot_plain(2, 4),
                blocks,
                good.clone(),
                CourierError::UnknownVersion,
            ),
            (
                "slot count 3",
                slot_plain(VERSION, 3),
                blocks,
                good.clone(),
                CourierError::Damaged,
            ),
            (
                "slot count 2",
                slot_plain(VERSION, 2),
                blocks,
                good.clone(),
                CourierError::Damaged,
            ),
            (
                "slot count 8192",
                slot_plain(VERSION, 8192),
                blocks,
                good.clone(),
                CourierError::Damaged,
            ),
            (
                "slot count 2^31",
                slot_plain(VERSION, 1 << 31),
                blocks,
                good.clone(),
                CourierError::Damaged,
            ),
            (
                "slot padding",
                padding_slot,
                blocks,
                good.clone(),
                CourierError::Damaged,
            ),
            ("body version", good_slot(), blocks, with(0, 2), CourierError::Damaged),
            ("padding", good_slot(), blocks, nonzero_padding, CourierError::Damaged),
            (
                "count for five blocks",
                good_slot(),
                blocks,
                more,
                CourierError::Damaged,
            ),
            ("count u32::MAX", good_slot(), blocks, too_many, CourierError::Damaged),
            (
                "one block too many",
                good_slot(),
                blocks + 1,
                good.clone(),
                CourierError::Damaged,
            ),
            (
                "one block too few",
                good_slot(),
                blocks - 1,
                good.clone(),
                CourierError::Damaged,
            ),
        ];
        for (what, slot, blocks, plain, want) in cases {
            assert_eq!(
                open_bundle(&craft(rcpt, slot, blocks, &plain), rcpt).map(|(b, _)| b),
                Err(want),
                "{what}"
            );
        }
    }

    #[test]
    fn an_oversize_file_is_refused_unread() {
        // Zeroed pages are not touched until written: this costs no memory.
        let big = vec![0u8; MAX_FILE_SIZE + 1];
        assert_eq!(open_bundle(&big, &fixture().recipients), Err(CourierError::TooLarge));
    }

    #[test]
    fn debug_hides_the_entries() {
        let f = fixture();
        assert_eq!(
            format!("{:?} {:?}", f.bundle, f.bundle.entries[0]),
            "Bundle { created_at: 1800000000, entries: 17, .. } BundleEntry(..)"
        );
    }

    #[test]
    fn errors_say_what_to_do() {
        assert_eq!(
            CourierError::NotForYou.to_string(),
            "this bundle is not addressed to any of your channels (or it is not a backchannel bundle)"
        );
        assert_eq!(
            CourierError::Damaged.to_string(),
            "the bundle has been modified or damaged in transit; ask the sender for a new one"
        );
        assert!(CourierError::TooLarge.to_string().contains("250,000"));
        assert_eq!(MAX_ENTRIES, 250_000);
        assert!(CourierError::TooManyRecipients.to_string().contains("4,096"));
        assert_eq!(MAX_RECIPIENTS, 4096);
    }
}

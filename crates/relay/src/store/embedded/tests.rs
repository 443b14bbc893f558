#![allow(clippy::unwrap_used)]
use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;

use backchannel_core::envelope::ENVELOPE_SIZE;
use backchannel_core::pow;
use rand_core::{OsRng, RngCore};
use sha2::{Digest, Sha256};

use super::record::{LEGACY_MAILBOX_LEN_BEFORE_POW, MAILBOX_RECORD_LEN};
use super::*;

fn env(b: u8) -> Envelope {
    Envelope::from_bytes(&[b; ENVELOPE_SIZE]).unwrap()
}

fn open(dir: &Path, max: u32) -> EmbeddedStore {
    EmbeddedStore::open(&dir.join("m.redb"), max).unwrap()
}

/// The work a send proves, as `server.rs` hands it to the store.
fn proven_work(send: &[u8; 32], envelope: &Envelope, nonce: u64) -> ProvenWork {
    pow::prove(&Sha256::digest(send).into(), envelope, nonce).map_or(ProvenWork::NONE, |p| p.work)
}

#[test]
fn send_fetch_ack_and_limits() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path(), 2);
    let id = MailboxId([1; 32]);
    let cap = [2u8; 32];
    let digest: [u8; 32] = Sha256::digest(cap).into();
    s.create(id, [3; 32], digest, 0).unwrap();
    assert_eq!(s.create(id, [3; 32], digest, 0), Err(StoreError::MailboxExists));
    assert_eq!(
        s.create(MailboxId([7; 32]), [3; 32], digest, 0),
        Err(StoreError::MailboxExists)
    );
    assert_eq!(
        s.send([9; 32], env(1), u64::MAX, ProvenWork::NONE),
        Err(StoreError::NoSuchMailbox)
    );
    assert_eq!(
        s.send(id.0, env(1), u64::MAX, ProvenWork::NONE),
        Err(StoreError::NoSuchMailbox)
    );
    let (to, a) = s.send(cap, env(1), u64::MAX, ProvenWork::NONE).unwrap();
    assert_eq!(to, id);
    let (_, b) = s.send(cap, env(2), u64::MAX, ProvenWork::NONE).unwrap();
    assert!(b > a);
    assert_eq!(
        s.send(cap, env(3), u64::MAX, ProvenWork::NONE),
        Err(StoreError::MailboxFull)
    );
    let got = s.fetch(&[id], 10).unwrap();
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].envelope, env(1));
    s.ack(id, a).unwrap();
    assert_eq!(s.fetch(&[id], 10).unwrap().len(), 1);
    s.send(cap, env(4), u64::MAX, ProvenWork::NONE).unwrap();
    s.delete(id).unwrap();
    assert_eq!(s.stats().unwrap(), Stats::default());
    assert_eq!(
        s.send(cap, env(5), u64::MAX, ProvenWork::NONE),
        Err(StoreError::NoSuchMailbox)
    );
}

#[test]
fn the_total_quota_counts_every_mailbox_and_sends_in_the_same_batch() {
    let dir = tempfile::tempdir().unwrap();
    let quota = Quota {
        per_mailbox: 100,
        total: 3,
    };
    let s = Arc::new(EmbeddedStore::open_with_quota(&dir.path().join("m.redb"), quota).unwrap());
    let caps: Vec<[u8; 32]> = (0..2u8).map(|i| [10 + i; 32]).collect();
    for (i, cap) in caps.iter().enumerate() {
        s.create(MailboxId([i as u8; 32]), [3; 32], Sha256::digest(cap).into(), 0)
            .unwrap();
    }
    // Concurrent sends land in one batch: the count inside the transaction holds.
    let sends: Vec<_> = (0..8u8)
        .map(|i| {
            let (s, cap) = (s.clone(), caps[usize::from(i % 2)]);
            std::thread::spawn(move || s.send(cap, env(i), u64::MAX, ProvenWork::NONE))
        })
        .collect();
    let results: Vec<_> = sends.into_iter().map(|t| t.join().unwrap()).collect();
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 3, "{results:?}");
    assert!(results.iter().all(|r| r.is_ok() || *r == Err(StoreError::RelayFull)));
    // An acknowledgement makes room again.
    let (id, seq) = results.iter().find_map(|r| r.clone().ok()).unwrap();
    s.ack(id, seq).unwrap();
    s.send(caps[0], env(9), u64::MAX, ProvenWork::NONE).unwrap();
    assert_eq!(
        s.send(caps[1], env(10), u64::MAX, ProvenWork::NONE),
        Err(StoreError::RelayFull)
    );
}

#[test]
fn claims_are_granted_once_per_epoch_and_idempotent_per_token() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path(), 10);
    let id = MailboxId([1; 32]);
    let cap = [2u8; 32];
    s.create(id, [3; 32], Sha256::digest(cap).into(), 0).unwrap();
    s.claim(cap, 0, ClaimProof::Token([7; 32]), None).unwrap();
    s.claim(cap, 0, ClaimProof::Token([7; 32]), None).unwrap();
    assert_eq!(
        s.claim(cap, 0, ClaimProof::Token([8; 32]), None),
        Err(StoreError::EpochConflict(1))
    );
    assert_eq!(
        s.claim(cap, 5, ClaimProof::Token([8; 32]), None),
        Err(StoreError::EpochConflict(1))
    );
    s.claim(cap, 1, ClaimProof::Token([8; 32]), None).unwrap();
    assert_eq!(
        s.claim([0; 32], 2, ClaimProof::Token([8; 32]), None),
        Err(StoreError::NoSuchMailbox)
    );
    // The last epoch number from the network neither panics the writer nor wraps.
    assert_eq!(
        s.claim(cap, u64::MAX, ClaimProof::Token([9; 32]), None),
        Err(StoreError::EpochConflict(2))
    );
    s.claim(cap, 2, ClaimProof::Token([8; 32]), None).unwrap();
}

/// Keyed claims: the first locks the sequencer; from then on a claim must show the key
/// that opens the lock the previous grant left (a removed member, who never learns the
/// next epoch's key, is refused as a wrong capability), a claim without a key is refused
/// with the answer that tells an older client to upgrade, and the winner's repeat is
/// granted again. The lock survives a reopen.
#[test]
fn keyed_claims_lock_the_sequencer_to_the_members_of_each_epoch() {
    use backchannel_core::frame::{claim_lock, ErrorCode, KEYED_CLAIMS_VERSION};
    let dir = tempfile::tempdir().unwrap();
    let (id, cap) = (MailboxId([1; 32]), [2u8; 32]);
    let key = |n: u8| [n; 32];
    let keyed = |k: u8, next: u8| ClaimProof::Key {
        key: key(k),
        next: claim_lock(&key(next)),
    };
    {
        let s = open(dir.path(), 10);
        s.create(id, [3; 32], Sha256::digest(cap).into(), 0).unwrap();
        // A sequencer without a lock takes any key: only its creator knows it then.
        s.claim(cap, 0, keyed(10, 11), None).unwrap();
        s.claim(cap, 0, keyed(10, 11), None).unwrap();
        assert_eq!(s.claim(cap, 0, keyed(10, 12), None), Err(StoreError::EpochConflict(1)));
        // Epoch 1: only key 11 opens the lock.
        assert_eq!(s.claim(cap, 1, keyed(99, 98), None), Err(StoreError::NoSuchMailbox));
        assert_eq!(s.claim(cap, 1, keyed(10, 98), None), Err(StoreError::NoSuchMailbox));
        let old = s.claim(cap, 1, ClaimProof::Token([5; 32]), None).unwrap_err();
        assert_eq!(old, StoreError::ClaimNeedsKey);
        assert_eq!(old.refusal(), Some((ErrorCode::Malformed, KEYED_CLAIMS_VERSION)));
        s.claim(cap, 1, keyed(11, 12), None).unwrap();
    }
    std::thread::sleep(std::time::Duration::from_millis(100));
    let s = open(dir.path(), 10);
    assert_eq!(s.claim(cap, 2, keyed(11, 13), None), Err(StoreError::NoSuchMailbox));
    assert_eq!(
        s.claim(cap, 2, ClaimProof::Token([5; 32]), None),
        Err(StoreError::ClaimNeedsKey)
    );
    s.claim(cap, 2, keyed(12, 13), None).unwrap();
    assert_eq!(
        s.claim(cap, u64::MAX, keyed(13, 14), None),
        Err(StoreError::EpochConflict(3))
    );

    // A sequencer that replaces another (a removal moved it) takes its first keyed claim at
    // the epoch the channel is at, then locks like any other; a token claim still starts
    // at epoch 0 only.
    let (moved, moved_cap) = (MailboxId([7; 32]), [8u8; 32]);
    s.create(moved, [3; 32], Sha256::digest(moved_cap).into(), 0).unwrap();
    assert_eq!(
        s.claim(moved_cap, 5, ClaimProof::Token([5; 32]), None),
        Err(StoreError::EpochConflict(0))
    );
    s.claim(moved_cap, 41, keyed(41, 42), None).unwrap();
    s.claim(moved_cap, 41, keyed(41, 42), None).unwrap();
    assert_eq!(
        s.claim(moved_cap, 41, keyed(41, 43), None),
        Err(StoreError::EpochConflict(42))
    );
    assert_eq!(
        s.claim(moved_cap, 42, keyed(41, 43), None),
        Err(StoreError::NoSuchMailbox)
    );
    s.claim(moved_cap, 42, keyed(42, 43), None).unwrap();
}

#[test]
fn expiry_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let id = MailboxId([1; 32]);
    let cap = [2u8; 32];
    {
        let s = open(dir.path(), 10);
        s.create(id, [3; 32], Sha256::digest(cap).into(), 0).unwrap();
        s.send(cap, env(1), 100, ProvenWork::NONE).unwrap();
        s.send(cap, env(2), 300, ProvenWork::NONE).unwrap();
    }
    // Give the previous writer thread time to drop its handle on the file.
    std::thread::sleep(std::time::Duration::from_millis(100));
    let s = open(dir.path(), 10);
    assert_eq!(s.expire(200).unwrap(), 1);
    let left = s.fetch(&[id], 10).unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].envelope, env(2));
}

/// Issue 17, point 5: a mailbox last used before the cutoff goes with everything in it
/// (its envelopes, its sender, when it was used); one used since stays, across a reopen;
/// marking a mailbox that does not exist does nothing; the sweep reads the idle index
/// only up to the cutoff.
#[test]
fn a_mailbox_idle_since_before_the_cutoff_goes_whole_and_one_used_since_stays() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (MailboxId([1; 32]), MailboxId([4; 32]));
    let (cap_a, cap_b) = ([2u8; 32], [5u8; 32]);
    let made = writer::now_secs();
    {
        let s = open(dir.path(), 10);
        s.create(a, [3; 32], Sha256::digest(cap_a).into(), 0).unwrap();
        s.create(b, [6; 32], Sha256::digest(cap_b).into(), 0).unwrap();
        for i in 0..3 {
            s.send(cap_a, env(i), u64::MAX, ProvenWork::NONE).unwrap();
            s.send(cap_b, env(10 + i), u64::MAX, ProvenWork::NONE).unwrap();
        }
        s.touch(&[b, MailboxId([9; 32])], made + 100).unwrap();
        assert_eq!(s.expire_idle(made.saturating_sub(10)).unwrap(), 0, "nothing idle yet");
        assert_eq!(s.expire_idle(made + 50).unwrap(), 1, "a, made at {made}, goes");
        assert_eq!(s.recipient_key(a).unwrap(), None);
        assert_eq!(
            s.send(cap_a, env(9), u64::MAX, ProvenWork::NONE),
            Err(StoreError::NoSuchMailbox)
        );
        assert_eq!(s.fetch(&[a], 10).unwrap(), vec![]);
        assert_eq!(s.fetch(&[b], 10).unwrap().len(), 3);
        assert_eq!(
            s.stats().unwrap(),
            Stats {
                mailboxes: 1,
                envelopes: 3
            }
        );
        // The index forgot `a` with it: a second sweep finds nothing.
        assert_eq!(s.expire_idle(made + 50).unwrap(), 0);
        // A mark never moves a mailbox's time back.
        s.touch(&[b], made).unwrap();
        assert_eq!(s.expire_idle(made + 50).unwrap(), 0);
    }
    std::thread::sleep(std::time::Duration::from_millis(100));
    let s = open(dir.path(), 10);
    assert_eq!(
        s.expire_idle(made + 100).unwrap(),
        0,
        "used at {made} + 100, kept across a reopen"
    );
    assert_eq!(s.expire_idle(made + 101).unwrap(), 1);
    assert_eq!(
        s.stats().unwrap(),
        Stats {
            mailboxes: 0,
            envelopes: 0
        }
    );
    // A mailbox made again under the same id starts a new life.
    s.create(a, [3; 32], Sha256::digest(cap_a).into(), 0).unwrap();
    assert_eq!(s.expire_idle(made.saturating_sub(10)).unwrap(), 0);
}

/// An envelope of random bytes: every 32-byte window of it is distinctive.
fn random_env() -> Envelope {
    let mut b = vec![0u8; ENVELOPE_SIZE];
    OsRng.fill_bytes(&mut b);
    Envelope::from_bytes(&b).unwrap()
}

/// The index of a needle (each at least 2 bytes) found in `haystack`.
/// Filters on the first two bytes, so that it stays fast without optimization.
fn find_any(haystack: &[u8], needles: &[&[u8]]) -> Option<usize> {
    let two = |b: &[u8]| usize::from(u16::from_be_bytes([b[0], b[1]]));
    let mut starts = vec![false; 1 << 16];
    for n in needles {
        starts[two(n)] = true;
    }
    (0..haystack.len().saturating_sub(1))
        .filter(|at| starts[two(&haystack[*at..])])
        .find_map(|at| needles.iter().position(|n| haystack[at..].starts_with(n)))
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    find_any(haystack, &[needle]).is_some()
}

/// Every file in `dir`, by name, with its raw bytes.
fn raw_files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() {
            out.push((
                entry.file_name().to_string_lossy().into_owned(),
                std::fs::read(entry.path()).unwrap(),
            ));
        }
    }
    assert!(
        out.iter().any(|(name, _)| name == ENVELOPE_KEY_FILE),
        "{ENVELOPE_KEY_FILE} is next to the redb file"
    );
    out
}

/// Neither the envelopes (whole, their first 32 bytes, 32 bytes from the
/// middle, their last 32 bytes) nor the keys appear in any file of `dir`.
fn assert_nothing_recoverable(dir: &Path, envelopes: &[Envelope], keys: &[[u8; 32]]) {
    let mid = ENVELOPE_SIZE / 2 + 7;
    let mut needles: Vec<(&str, &[u8])> = Vec::new();
    for e in envelopes {
        let e = e.as_bytes();
        needles.push(("a whole envelope", e));
        needles.push(("an envelope's first 32 bytes", &e[..32]));
        needles.push(("32 bytes from an envelope's middle", &e[mid..mid + 32]));
        needles.push(("an envelope's last 32 bytes", &e[ENVELOPE_SIZE - 32..]));
    }
    for k in keys {
        needles.push(("an envelope key", k));
    }
    let bare: Vec<&[u8]> = needles.iter().map(|(_, n)| *n).collect();
    for (name, bytes) in raw_files(dir) {
        let found = find_any(&bytes, &bare);
        assert!(
            found.is_none(),
            "{} is recoverable from {name}",
            found.map_or("", |i| needles[i].0)
        );
    }
}

/// Closes the store, then compacts its redb file the way an operator
/// could (compaction moves live pages and releases freed ones).
fn close_and_compact(s: EmbeddedStore, dir: &Path) {
    drop(s);
    std::thread::sleep(std::time::Duration::from_millis(100));
    let mut db = Database::open(dir.join("m.redb")).unwrap();
    db.compact().unwrap();
    drop(db);
}

/// A mailbox (id [1; 32], send capability [2; 32]) of random envelopes.
struct Stored {
    store: EmbeddedStore,
    id: MailboxId,
    seqs: Vec<u64>,
    envelopes: Vec<Envelope>,
    /// Each envelope's at-rest key, read before it is destroyed.
    keys: Vec<[u8; 32]>,
}

/// Stores `n` random envelopes in a new mailbox and checks that each
/// fetches back intact.
fn stored(dir: &Path, n: usize, expires_at: u64) -> Stored {
    let store = open(dir, 100);
    let id = MailboxId([1; 32]);
    let cap = [2u8; 32];
    store.create(id, [3; 32], Sha256::digest(cap).into(), 0).unwrap();
    let envelopes: Vec<Envelope> = (0..n).map(|_| random_env()).collect();
    let seqs: Vec<u64> = envelopes
        .iter()
        .map(|e| store.send(cap, e.clone(), expires_at, ProvenWork::NONE).unwrap().1)
        .collect();
    let got = store.fetch(&[id], 100).unwrap();
    assert_eq!(got.len(), n);
    for ((d, seq), e) in got.iter().zip(&seqs).zip(&envelopes) {
        assert_eq!((d.mailbox, d.seq, &d.envelope), (id, *seq, e));
    }
    let keys: Vec<[u8; 32]> = seqs.iter().map(|seq| store.key_of(id, *seq).unwrap()).collect();
    assert!(keys.iter().all(|k| *k != [0; 32]));
    Stored {
        store,
        id,
        seqs,
        envelopes,
        keys,
    }
}

#[test]
fn acknowledged_envelopes_leave_no_recoverable_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let t = stored(dir.path(), 6, u64::MAX);
    for seq in &t.seqs {
        t.store.ack(t.id, *seq).unwrap();
    }
    assert_eq!(t.store.stats().unwrap().envelopes, 0);
    assert_nothing_recoverable(dir.path(), &t.envelopes, &t.keys);
    close_and_compact(t.store, dir.path());
    assert_nothing_recoverable(dir.path(), &t.envelopes, &t.keys);
}

#[test]
fn deleted_mailboxes_leave_no_recoverable_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let t = stored(dir.path(), 6, u64::MAX);
    t.store.delete(t.id).unwrap();
    assert_eq!(t.store.stats().unwrap(), Stats::default());
    assert_nothing_recoverable(dir.path(), &t.envelopes, &t.keys);
    close_and_compact(t.store, dir.path());
    assert_nothing_recoverable(dir.path(), &t.envelopes, &t.keys);
}

#[test]
fn expired_envelopes_leave_no_recoverable_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let t = stored(dir.path(), 6, 100);
    // One envelope that outlives the sweep stays readable.
    let kept = random_env();
    let (_, kept_seq) = t.store.send([2; 32], kept.clone(), 300, ProvenWork::NONE).unwrap();
    assert_eq!(t.store.expire(200).unwrap(), 6);
    let left = t.store.fetch(&[t.id], 100).unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!((left[0].seq, &left[0].envelope), (kept_seq, &kept));
    assert_nothing_recoverable(dir.path(), &t.envelopes, &t.keys);
    close_and_compact(t.store, dir.path());
    assert_nothing_recoverable(dir.path(), &t.envelopes, &t.keys);
}

#[test]
fn stored_envelopes_are_encrypted_at_rest_and_their_keys_never_reach_redb() {
    let dir = tempfile::tempdir().unwrap();
    let t = stored(dir.path(), 4, u64::MAX);
    for (name, bytes) in raw_files(dir.path()) {
        for e in &t.envelopes {
            assert!(!contains(&bytes, &e.as_bytes()[..32]), "plaintext in {name}");
            assert!(!contains(&bytes, &e.as_bytes()[2000..2032]), "plaintext in {name}");
        }
        for k in &t.keys {
            assert_eq!(contains(&bytes, k), name == ENVELOPE_KEY_FILE, "a key in {name}");
        }
    }
}

#[test]
fn keys_of_uncommitted_envelopes_are_zeroed_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let id = MailboxId([1; 32]);
    let cap = [2u8; 32];
    let first = random_env();
    let key_path = dir.path().join(ENVELOPE_KEY_FILE);
    {
        let s = open(dir.path(), 10);
        s.create(id, [3; 32], Sha256::digest(cap).into(), 0).unwrap();
        s.send(cap, first.clone(), u64::MAX, ProvenWork::NONE).unwrap();
    }
    std::thread::sleep(std::time::Duration::from_millis(100));
    assert_eq!(std::fs::metadata(&key_path).unwrap().len(), 32);
    // A crash after the keys of a batch were written and before its
    // commit: slot 2 holds a key that no record uses (and a torn slot 3).
    let orphan = [0xab; 32];
    {
        let f = OpenOptions::new().write(true).open(&key_path).unwrap();
        f.write_all_at(&orphan, 64).unwrap();
        f.write_all_at(&[0xcd; 5], 96).unwrap();
    }
    let s = open(dir.path(), 10);
    let raw = std::fs::read(&key_path).unwrap();
    assert_eq!(raw.len(), 4 * 32);
    assert!(raw[32..].iter().all(|b| *b == 0), "unused slots are zeroed");
    assert_ne!(raw[..32], [0; 32], "the stored envelope keeps its key");
    let got = s.fetch(&[id], 10).unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].envelope, first);
    let second = random_env();
    let (_, seq) = s.send(cap, second.clone(), u64::MAX, ProvenWork::NONE).unwrap();
    assert_eq!(s.fetch(&[id], 10).unwrap()[1].envelope, second);
    assert_eq!(
        std::fs::metadata(&key_path).unwrap().len(),
        4 * 32,
        "a zeroed slot is reused"
    );
    s.ack(id, seq).unwrap();
    assert_eq!(s.fetch(&[id], 10).unwrap().len(), 1);
}

#[test]
fn a_record_whose_key_is_bad_is_a_storage_error() {
    let dir = tempfile::tempdir().unwrap();
    let id = MailboxId([1; 32]);
    let cap = [2u8; 32];
    let seq;
    {
        let s = open(dir.path(), 10);
        s.create(id, [3; 32], Sha256::digest(cap).into(), 0).unwrap();
        seq = s.send(cap, env(1), u64::MAX, ProvenWork::NONE).unwrap().1;
    }
    std::thread::sleep(std::time::Duration::from_millis(100));
    let f = OpenOptions::new()
        .write(true)
        .open(dir.path().join(ENVELOPE_KEY_FILE))
        .unwrap();
    f.write_all_at(&[0x55; 32], 0).unwrap();
    drop(f);
    let s = open(dir.path(), 10);
    assert_eq!(s.fetch(&[id], 10), Err(StoreError::corrupt("envelope record")));
    // The record can still be removed, and its slot is zeroed.
    s.ack(id, seq).unwrap();
    assert_eq!(s.fetch(&[id], 10).unwrap(), vec![]);
    assert!(std::fs::read(dir.path().join(ENVELOPE_KEY_FILE))
        .unwrap()
        .iter()
        .all(|b| *b == 0));
}

/// A record whose sealed envelope is missing from the body file (a damaged or planted
/// data directory, or a body file truncated behind the relay's back) can never be read:
/// it is removed on open, and its mailbox goes on. One whose body was overwritten is a
/// storage error when read, not a wrong envelope.
#[test]
fn a_record_whose_body_is_missing_is_removed_and_a_changed_body_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (id, cap) = (MailboxId([1; 32]), [2u8; 32]);
    {
        let s = open(dir.path(), 10);
        s.create(id, [3; 32], Sha256::digest(cap).into(), 0).unwrap();
        s.send(cap, env(1), u64::MAX, ProvenWork::NONE).unwrap();
        s.send(cap, env(2), u64::MAX, ProvenWork::NONE).unwrap();
    }
    std::thread::sleep(std::time::Duration::from_millis(100));
    let bodies = dir.path().join(ENVELOPE_BODY_FILE);
    assert_eq!(
        std::fs::metadata(&bodies).unwrap().len(),
        2 * record::SEALED_LEN as u64,
        "one slot per envelope, in the body file"
    );
    // The redb file holds no sealed envelope any more: two records of 33 bytes.
    assert!(record_versions(&dir.path().join("m.redb"))
        .iter()
        .filter(|(table, _, _)| *table == "envelopes")
        .all(|(_, len, v)| (*len, *v) == (record::ENVELOPE_RECORD_LEN, record::ENVELOPE_VERSION)));
    // The second envelope's body is cut short.
    let f = OpenOptions::new().write(true).open(&bodies).unwrap();
    f.set_len(record::SEALED_LEN as u64 + 100).unwrap();
    drop(f);
    let s = open(dir.path(), 10);
    let got = s.fetch(&[id], 10).unwrap();
    assert_eq!(
        got.iter().map(|d| (d.seq, d.envelope.clone())).collect::<Vec<_>>(),
        vec![(1, env(1))]
    );
    assert_eq!(s.stats().unwrap().envelopes, 1);
    // A body changed on disk is refused by its tag.
    drop(s);
    std::thread::sleep(std::time::Duration::from_millis(100));
    let f = OpenOptions::new().write(true).open(&bodies).unwrap();
    f.write_all_at(&[0x55; 16], 100).unwrap();
    drop(f);
    let s = open(dir.path(), 10);
    assert_eq!(s.fetch(&[id], 10), Err(StoreError::corrupt("envelope record")));
    s.send(cap, env(3), u64::MAX, ProvenWork::NONE).unwrap();
}

/// A data directory of format 4 (envelope records of version 1, inline, and an expiry
/// index entry per envelope) opens: its envelopes read, acknowledge and expire, the new
/// ones go to the body file, the index counts them, and the directory is format 6 from then
/// on, its mailboxes' idle dates untouched.
#[test]
fn a_format_4_data_directory_reads_its_inline_envelopes_and_stores_new_ones_apart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.redb");
    let (id, cap) = (MailboxId([1; 32]), [2u8; 32]);
    let envelopes = three_envelopes(dir.path(), |_| {});
    let touched_before = touched(&path);
    // As format 4 wrote it: the sealed envelopes inline, no body file.
    {
        let body_file = dir.path().join(ENVELOPE_BODY_FILE);
        let db = Database::open(&path).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut envs = txn.open_table(ENVELOPES).unwrap();
            let mut index = txn.open_table(PER_ENVELOPE_EXPIRY).unwrap();
            for (k, v) in entries(&envs) {
                envs.insert(&k[..], &as_version_1(dir.path(), &k, &v)[..]).unwrap();
                let per_envelope = [&u64::MAX.to_be_bytes()[..], &k[..]].concat();
                index.insert(&per_envelope[..], &[][..]).unwrap();
            }
        }
        txn.open_table(redb::TableDefinition::<&str, u32>::new("format"))
            .unwrap()
            .insert("data directory", 4)
            .unwrap();
        txn.delete_table(EXPIRY).unwrap();
        txn.commit().unwrap();
        std::fs::remove_file(&body_file).unwrap();
    }
    let s = open(dir.path(), 10);
    let got = s.fetch(&[id], 10).unwrap();
    assert_eq!(got.iter().map(|d| d.envelope.clone()).collect::<Vec<_>>(), envelopes);
    let fresh = random_env();
    let (_, seq) = s.send(cap, fresh.clone(), u64::MAX, ProvenWork::NONE).unwrap();
    assert_eq!(seq, 4);
    s.ack(id, 1).unwrap();
    let got = s.fetch(&[id], 10).unwrap();
    assert_eq!(
        got.iter().map(|d| (d.seq, d.envelope.clone())).collect::<Vec<_>>(),
        vec![(2, envelopes[1].clone()), (3, envelopes[2].clone()), (4, fresh)]
    );
    drop(s);
    std::thread::sleep(std::time::Duration::from_millis(100));
    let mut lens: Vec<usize> = record_versions(&path)
        .iter()
        .filter(|(table, _, _)| *table == "envelopes")
        .map(|(_, len, _)| *len)
        .collect();
    lens.sort_unstable();
    assert_eq!(
        lens,
        vec![
            record::ENVELOPE_RECORD_LEN,
            record::ENVELOPE_VALUE_LEN_V1,
            record::ENVELOPE_VALUE_LEN_V1
        ]
    );
    let db = Database::open(&path).unwrap();
    let txn = db.begin_read().unwrap();
    let format = txn
        .open_table(redb::TableDefinition::<&str, u32>::new("format"))
        .unwrap()
        .get("data directory")
        .unwrap()
        .map(|v| v.value());
    assert_eq!(format, Some(FORMAT));
    assert_eq!(FORMAT, 6);
    drop(txn);
    drop(db);
    assert_eq!(touched(&path), touched_before, "the idle dates are kept");
    assert_eq!(
        expiry_counts(&path),
        vec![(u64::MAX, id, 3)],
        "the entries per envelope became one count"
    );
    assert!(
        !has_table(&path, PER_ENVELOPE_EXPIRY),
        "the index of format 4 is retired"
    );
}

/// A data directory of format 5 (an expiry index entry per envelope, which acks and
/// deletions removed) has its index counted again on open: the sweep then takes what has
/// expired, and an index entry per envelope is never read as a count.
#[test]
fn a_format_5_data_directory_has_its_expiry_index_counted() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.redb");
    let (id, cap) = (MailboxId([1; 32]), [2u8; 32]);
    {
        let s = open(dir.path(), 10);
        s.create(id, [3; 32], Sha256::digest(cap).into(), 0).unwrap();
        for (i, at) in [(1u8, 100), (2, 100), (3, 300)] {
            s.send(cap, env(i), at, ProvenWork::NONE).unwrap();
        }
    }
    std::thread::sleep(std::time::Duration::from_millis(100));
    // As format 5 left it: an entry per envelope, expiry || record key -> nothing.
    {
        let db = Database::open(&path).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let envs = txn.open_table(ENVELOPES).unwrap();
            let mut index = txn.open_table(PER_ENVELOPE_EXPIRY).unwrap();
            for (k, v) in entries(&envs) {
                let at = record::EnvelopeValue::parse(&v).unwrap().expires_at();
                let per_envelope = [&at.to_be_bytes()[..], &k[..]].concat();
                index.insert(&per_envelope[..], &[][..]).unwrap();
            }
        }
        txn.open_table(redb::TableDefinition::<&str, u32>::new("format"))
            .unwrap()
            .insert("data directory", 5)
            .unwrap();
        txn.delete_table(EXPIRY).unwrap();
        txn.commit().unwrap();
    }
    {
        let s = open(dir.path(), 10);
        assert_eq!(s.expire(99).unwrap(), 0);
        assert_eq!(s.expire(100).unwrap(), 2, "the two that expired at 100");
        let left: Vec<u64> = s.fetch(&[id], 10).unwrap().iter().map(|d| d.seq).collect();
        assert_eq!(left, vec![3]);
    }
    std::thread::sleep(std::time::Duration::from_millis(100));
    assert_eq!(expiry_counts(&path), vec![(300, id, 1)]);
    assert!(
        !has_table(&path, PER_ENVELOPE_EXPIRY),
        "the index of format 5 is retired"
    );
}

/// Writes queued together share a batch: a mailbox's record and its expiry counts are
/// changed through the batch's cache and written once, and what each write saw is what the
/// writes before it in the queue left, in the same batch or not (the counts stay exact, the
/// mailbox's envelope count too).
#[test]
fn writes_queued_together_keep_the_counts_exact() {
    use crate::store::MailboxStore;
    use futures_util::future::join_all;
    let dir = tempfile::tempdir().unwrap();
    let id = MailboxId([1; 32]);
    let cap = [2u8; 32];
    let s = open(dir.path(), 10);
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    rt.block_on(async {
        MailboxStore::create(&s, id, [3; 32], Sha256::digest(cap).into(), 0)
            .await
            .unwrap();
        let sends = (0..10u8).map(|i| MailboxStore::send(&s, cap, env(i), 100, ProvenWork::NONE));
        let seqs: Vec<u64> = join_all(sends).await.into_iter().map(|r| r.unwrap().1).collect();
        assert_eq!(seqs, (1..=10).collect::<Vec<_>>());
        // Acks, sends and a sweep, queued in this order.
        let acks = join_all((1..=5).map(|seq| MailboxStore::ack(&s, id, seq)));
        let sends = join_all((10..15u8).map(|i| MailboxStore::send(&s, cap, env(i), 200, ProvenWork::NONE)));
        let sweep = MailboxStore::expire(&s, 100);
        let (acks, sends, swept) = tokio::join!(acks, sends, sweep);
        assert!(acks.iter().all(Result::is_ok));
        assert!(sends.iter().all(Result::is_ok), "five acks made room for five sends");
        assert_eq!(swept.unwrap(), 5, "seq 6 to 10 expired at 100");
        // Sends already expired by a sweep queued right behind them: the sweep counts them.
        let sends = join_all((20..22u8).map(|i| MailboxStore::send(&s, cap, env(i), 150, ProvenWork::NONE)));
        let (sends, swept) = tokio::join!(sends, MailboxStore::expire(&s, 150));
        assert!(sends.iter().all(Result::is_ok));
        assert_eq!(swept.unwrap(), 2);
    });
    let left: Vec<u64> = s.fetch(&[id], 15).unwrap().iter().map(|d| d.seq).collect();
    assert_eq!(left, (11..=15).collect::<Vec<_>>());
    for i in 0..5u8 {
        s.send(cap, env(i), 300, ProvenWork::NONE).unwrap();
    }
    assert_eq!(
        s.send(cap, env(9), 300, ProvenWork::NONE),
        Err(StoreError::MailboxFull),
        "the mailbox's count is exact: ten held"
    );
    drop(s);
    std::thread::sleep(std::time::Duration::from_millis(100));
    assert_eq!(
        expiry_counts(&dir.path().join("m.redb")),
        vec![(200, id, 5), (300, id, 5)]
    );
}

/// Until the current format is written, a directory keeps the expiry index its own format
/// reads: an upgrade that stops after counting (before dating the mailboxes of format 3)
/// leaves format 3 with its index whole, for a release of format 3 to 5 to open as it was.
#[test]
fn an_upgrade_stopped_after_counting_leaves_the_older_index_whole() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.redb");
    let three = three_envelopes(dir.path(), |_| {});
    assert_eq!(three.len(), 3);
    {
        let db = Database::open(&path).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let envs = txn.open_table(ENVELOPES).unwrap();
            let mut index = txn.open_table(PER_ENVELOPE_EXPIRY).unwrap();
            for (k, _) in entries(&envs) {
                let per_envelope = [&u64::MAX.to_be_bytes()[..], &k[..]].concat();
                index.insert(&per_envelope[..], &[][..]).unwrap();
            }
        }
        txn.open_table(redb::TableDefinition::<&str, u32>::new("format"))
            .unwrap()
            .insert("data directory", 3)
            .unwrap();
        txn.delete_table(EXPIRY).unwrap();
        txn.delete_table(TOUCHED).unwrap();
        txn.delete_table(IDLE).unwrap();
        txn.commit().unwrap();
        upgrade::index_expiries(&db, None).unwrap();
        assert!(matches!(upgrade::check(&db).unwrap(), upgrade::Found::Older(3)));
    }
    assert!(has_table(&path, PER_ENVELOPE_EXPIRY));
    let db = Database::open(&path).unwrap();
    let per_envelope = entries(&db.begin_read().unwrap().open_table(PER_ENVELOPE_EXPIRY).unwrap());
    assert_eq!(per_envelope.len(), 3, "format 3's index is whole");
    drop(db);
    assert_eq!(expiry_counts(&path), vec![(u64::MAX, MailboxId([1; 32]), 3)]);
    // The next open finishes: format 6, the older index retired, the mailbox dated.
    drop(open(dir.path(), 10));
    std::thread::sleep(std::time::Duration::from_millis(100));
    assert!(!has_table(&path, PER_ENVELOPE_EXPIRY));
    assert_eq!(touched(&path).len(), 1);
    assert_eq!(expiry_counts(&path), vec![(u64::MAX, MailboxId([1; 32]), 3)]);
}

/// The expiry index of formats 3 to 5: an entry per envelope, expiry || record key.
const PER_ENVELOPE_EXPIRY: redb::TableDefinition<&[u8], &[u8]> = redb::TableDefinition::new("expiry");

/// Whether the database holds table `t`.
fn has_table(path: &Path, t: redb::TableDefinition<&[u8], &[u8]>) -> bool {
    let db = Database::open(path).unwrap();
    let txn = db.begin_read().unwrap();
    match txn.open_table(t) {
        Err(redb::TableError::TableDoesNotExist(_)) => false,
        other => other.map(|_| true).unwrap(),
    }
}

/// When each mailbox was last used, from [`TOUCHED`].
fn touched(path: &Path) -> Vec<(Vec<u8>, Vec<u8>)> {
    let db = Database::open(path).unwrap();
    let txn = db.begin_read().unwrap();
    entries(&txn.open_table(TOUCHED).unwrap())
}

/// Every key and value of a table, in order.
fn entries(t: &impl ReadableTable<&'static [u8], &'static [u8]>) -> Vec<(Vec<u8>, Vec<u8>)> {
    t.iter()
        .unwrap()
        .map(|e| {
            let (k, v) = e.unwrap();
            (k.value().to_vec(), v.value().to_vec())
        })
        .collect()
}

/// A closed data directory holding mailbox [1; 32] (send capability [2; 32]) with three
/// random envelopes, after `then` ran on the open store. Returns the envelopes.
fn three_envelopes(dir: &Path, then: impl FnOnce(&EmbeddedStore)) -> Vec<Envelope> {
    let cap = [2u8; 32];
    let envelopes: Vec<Envelope> = (0..3).map(|_| random_env()).collect();
    {
        let s = open(dir, 10);
        s.create(MailboxId([1; 32]), [3; 32], Sha256::digest(cap).into(), 0)
            .unwrap();
        for e in &envelopes {
            s.send(cap, e.clone(), u64::MAX, ProvenWork::NONE).unwrap();
        }
        then(&s);
    }
    std::thread::sleep(std::time::Duration::from_millis(100));
    envelopes
}

#[test]
fn a_record_whose_slot_is_far_past_the_key_file_is_removed_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let id = MailboxId([1; 32]);
    let cap = [2u8; 32];
    {
        let s = open(dir.path(), 10);
        s.create(id, [3; 32], Sha256::digest(cap).into(), 0).unwrap();
        s.send(cap, env(1), u64::MAX, ProvenWork::NONE).unwrap();
    }
    // A damaged or planted data directory: the record names slot 2^36.
    {
        let db = Database::open(dir.path().join("m.redb")).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut envs = txn.open_table(ENVELOPES).unwrap();
            let (k, mut v) = {
                let (k, v) = envs.first().unwrap().unwrap();
                (k.value().to_vec(), v.value().to_vec())
            };
            v[9..17].copy_from_slice(&(1u64 << 36).to_be_bytes());
            envs.insert(&k[..], &v[..]).unwrap();
        }
        txn.commit().unwrap();
    }
    let s = open(dir.path(), 10);
    // The keyless record is gone (it could never be read) and its mailbox is usable.
    assert_eq!(s.fetch(&[id], 10).unwrap(), vec![]);
    s.send(cap, env(2), u64::MAX, ProvenWork::NONE).unwrap();
    assert_eq!(s.fetch(&[id], 10).unwrap().len(), 1);
    // The key file did not grow towards the far slot.
    assert!(std::fs::metadata(dir.path().join(ENVELOPE_KEY_FILE)).unwrap().len() <= 2 * 32);
}

#[test]
fn the_key_file_grows_only_with_envelopes_stored_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path(), 100);
    let id = MailboxId([1; 32]);
    let cap = [2u8; 32];
    s.create(id, [3; 32], Sha256::digest(cap).into(), 0).unwrap();
    for _ in 0..5 {
        let seqs: Vec<u64> = (0..3)
            .map(|i| s.send(cap, env(i), u64::MAX, ProvenWork::NONE).unwrap().1)
            .collect();
        for seq in seqs {
            s.ack(id, seq).unwrap();
        }
    }
    assert_eq!(
        std::fs::metadata(dir.path().join(ENVELOPE_KEY_FILE)).unwrap().len(),
        3 * 32
    );
}

#[test]
fn fetches_racing_acks_skip_gone_envelopes_without_errors() {
    let dir = tempfile::tempdir().unwrap();
    let s = Arc::new(open(dir.path(), 100));
    let (slow, slow_cap) = (MailboxId([1; 32]), [2u8; 32]);
    let (busy, busy_cap) = (MailboxId([4; 32]), [5u8; 32]);
    s.create(slow, [3; 32], Sha256::digest(slow_cap).into(), 0).unwrap();
    s.create(busy, [3; 32], Sha256::digest(busy_cap).into(), 0).unwrap();
    // A fetch opens these first, which gives the writer time to destroy
    // the key of a `busy` envelope that the fetch's snapshot still holds.
    for _ in 0..40 {
        s.send(slow_cap, env(6), u64::MAX, ProvenWork::NONE).unwrap();
    }
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let (s, done) = (s.clone(), done.clone());
        std::thread::spawn(move || {
            let mut fetched = 0;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                for d in s.fetch(&[slow, busy], 100).unwrap() {
                    assert_eq!(d.envelope, env(if d.mailbox == slow { 6 } else { 7 }));
                    fetched += usize::from(d.mailbox == busy);
                }
            }
            fetched
        })
    };
    // Every envelope is acknowledged right after it is stored, so its
    // slot is zeroed and reused while a fetch may still see its record.
    for _ in 0..300 {
        let (_, seq) = s.send(busy_cap, env(7), u64::MAX, ProvenWork::NONE).unwrap();
        s.ack(busy, seq).unwrap();
    }
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    reader.join().unwrap();
}

#[test]
fn records_stored_in_the_clear_by_an_older_relay_are_sealed_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let id = MailboxId([1; 32]);
    let cap = [2u8; 32];
    let old = random_env();
    {
        let s = open(dir.path(), 10);
        s.create(id, [3; 32], Sha256::digest(cap).into(), 0).unwrap();
    }
    std::thread::sleep(std::time::Duration::from_millis(100));
    {
        let db = Database::open(dir.path().join("m.redb")).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut boxes = txn.open_table(MAILBOXES).unwrap();
            let rec = MailboxRecord::decode(boxes.get(&id.0[..]).unwrap().unwrap().value()).unwrap();
            let rec = MailboxRecord {
                next_seq: 2,
                count: 1,
                ..rec
            };
            boxes.insert(&id.0[..], &rec.encode()[..]).unwrap();
            let mut envs = txn.open_table(ENVELOPES).unwrap();
            let mut value = 500u64.to_be_bytes().to_vec();
            value.extend_from_slice(old.as_bytes());
            envs.insert(&record_key(&id, 1)[..], &value[..]).unwrap();
            // As a directory of that release: no format written (format 1).
            txn.open_table(redb::TableDefinition::<&str, u32>::new("format"))
                .unwrap()
                .remove("data directory")
                .unwrap();
        }
        txn.commit().unwrap();
    }
    let s = open(dir.path(), 10);
    let got = s.fetch(&[id], 10).unwrap();
    assert_eq!((got.len(), got[0].seq, &got[0].envelope), (1, 1, &old));
    assert!(s.key_of(id, 1).is_some());
    assert_eq!(s.expire(400).unwrap(), 0, "the expiry is kept");
    let (_, seq) = s.send(cap, env(2), u64::MAX, ProvenWork::NONE).unwrap();
    assert_eq!(seq, 2);
    assert_eq!(s.expire(500).unwrap(), 1);
    assert_eq!(s.fetch(&[id], 10).unwrap().len(), 1);
}

/// A drop box (a mailbox with a difficulty) takes only envelopes whose nonce
/// solves the puzzle for that envelope and that mailbox; a refused send stores
/// nothing. An ordinary mailbox takes any nonce, 0 included.
#[test]
fn a_drop_box_takes_only_envelopes_with_their_proof_of_work() {
    let dir = tempfile::tempdir().unwrap();
    let s = Arc::new(open(dir.path(), 10));
    let bits = 10;
    let (drop_box, drop_cap) = (MailboxId([1; 32]), [2u8; 32]);
    let (other_box, other_cap) = (MailboxId([4; 32]), [5u8; 32]);
    let (plain, plain_cap) = (MailboxId([6; 32]), [7u8; 32]);
    let digest = |cap: [u8; 32]| -> [u8; 32] { Sha256::digest(cap).into() };
    s.create(drop_box, [3; 32], digest(drop_cap), bits).unwrap();
    s.create(other_box, [3; 32], digest(other_cap), bits).unwrap();
    s.create(plain, [3; 32], digest(plain_cap), 0).unwrap();
    let solved = |cap, e: &Envelope| pow::solve(&pow::challenge(&digest(cap), e), bits);
    let nonce = solved(drop_cap, &env(1));
    assert!(nonce > 0);

    // Missing, wrong, for another envelope, for another mailbox: refused.
    let wrong = (1..).find(|n| !pow::check(&pow::challenge(&digest(drop_cap), &env(1)), bits, *n));
    let for_env2 = solved(drop_cap, &env(2));
    assert!(!pow::check(&pow::challenge(&digest(drop_cap), &env(1)), bits, for_env2));
    let for_other_box = solved(other_cap, &env(1));
    assert!(!pow::check(
        &pow::challenge(&digest(drop_cap), &env(1)),
        bits,
        for_other_box
    ));
    for bad in [0, wrong.unwrap(), for_env2, for_other_box] {
        assert_eq!(
            s.send(drop_cap, env(1), u64::MAX, proven_work(&drop_cap, &env(1), bad)),
            Err(StoreError::WorkRequired),
            "nonce {bad}"
        );
    }
    // The nonce for the other mailbox works there, not here.
    assert!(s
        .send(
            other_cap,
            env(1),
            u64::MAX,
            proven_work(&other_cap, &env(1), for_other_box)
        )
        .is_ok());
    // The async path refuses too.
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    assert_eq!(
        rt.block_on(MailboxStore::send(&*s, drop_cap, env(1), u64::MAX, ProvenWork::NONE)),
        Err(StoreError::WorkRequired)
    );
    assert_eq!(
        s.fetch(&[drop_box], 10).unwrap(),
        Vec::new(),
        "a refused send stored something"
    );
    assert_eq!(s.stats().unwrap().envelopes, 1);

    // The solved nonce is accepted, by both paths.
    let (to, seq) = s
        .send(drop_cap, env(1), u64::MAX, proven_work(&drop_cap, &env(1), nonce))
        .unwrap();
    assert_eq!(to, drop_box);
    let (_, seq2) = rt
        .block_on(MailboxStore::send(
            &*s,
            drop_cap,
            env(2),
            u64::MAX,
            proven_work(&drop_cap, &env(2), for_env2),
        ))
        .unwrap();
    let got = s.fetch(&[drop_box], 10).unwrap();
    assert_eq!(got.len(), 2);
    assert_eq!((got[0].seq, &got[0].envelope), (seq, &env(1)));
    assert_eq!((got[1].seq, &got[1].envelope), (seq2, &env(2)));

    // An ordinary mailbox: no work needed, any nonce accepted.
    s.send(plain_cap, env(1), u64::MAX, ProvenWork::NONE).unwrap();
    s.send(plain_cap, env(2), u64::MAX, proven_work(&plain_cap, &env(2), 12345))
        .unwrap();
    rt.block_on(MailboxStore::send(&*s, plain_cap, env(3), u64::MAX, ProvenWork::NONE))
        .unwrap();
    assert_eq!(s.fetch(&[plain], 10).unwrap().len(), 3);
}

/// The difficulty survives a restart, and mailbox records written before
/// drop boxes (without the difficulty byte) read as ordinary mailboxes.
#[test]
fn the_difficulty_is_stored_and_old_records_are_ordinary_mailboxes() {
    let dir = tempfile::tempdir().unwrap();
    let (drop_box, drop_cap) = (MailboxId([1; 32]), [2u8; 32]);
    let (old, old_cap) = (MailboxId([4; 32]), [5u8; 32]);
    {
        let s = open(dir.path(), 10);
        s.create(drop_box, [3; 32], Sha256::digest(drop_cap).into(), 8).unwrap();
        s.create(old, [3; 32], Sha256::digest(old_cap).into(), 0).unwrap();
    }
    std::thread::sleep(std::time::Duration::from_millis(100));
    {
        let db = Database::open(dir.path().join("m.redb")).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut boxes = txn.open_table(MAILBOXES).unwrap();
            let mut value = boxes.get(&old.0[..]).unwrap().unwrap().value().to_vec();
            assert_eq!(value.len(), MAILBOX_RECORD_LEN);
            // The record as a relay before drop boxes wrote it: no version, no difficulty.
            value = value[1..1 + LEGACY_MAILBOX_LEN_BEFORE_POW].to_vec();
            boxes.insert(&old.0[..], &value[..]).unwrap();
        }
        txn.commit().unwrap();
    }
    let s = open(dir.path(), 10);
    assert_eq!(
        s.send(drop_cap, env(1), u64::MAX, ProvenWork::NONE),
        Err(StoreError::WorkRequired)
    );
    let nonce = pow::solve(&pow::challenge(&Sha256::digest(drop_cap).into(), &env(1)), 8);
    s.send(drop_cap, env(1), u64::MAX, proven_work(&drop_cap, &env(1), nonce))
        .unwrap();
    s.send(old_cap, env(1), u64::MAX, ProvenWork::NONE).unwrap();
    assert_eq!(s.recipient_key(old).unwrap(), Some([3; 32]));
    assert_eq!(s.fetch(&[old], 10).unwrap().len(), 1);
    // A record of any other length is corrupt.
    assert!(MailboxRecord::decode(&[0; MAILBOX_RECORD_LEN + 1]).is_err());
    assert!(MailboxRecord::decode(&[0; LEGACY_MAILBOX_LEN_BEFORE_POW - 1]).is_err());
}

/// Rewrites a closed store's data directory as release 94ba14f wrote it (format 1):
/// records without their version byte, envelopes inline, no `format` table.
fn rewrite_as_format_1(path: &Path) {
    let dir = path.parent().unwrap();
    let db = Database::open(path).unwrap();
    let txn = db.begin_write().unwrap();
    for table in [MAILBOXES, SENDERS, ENVELOPES] {
        let mut t = txn.open_table(table).unwrap();
        for (k, mut v) in entries(&t) {
            // An envelope record takes its sealed envelope back inline.
            if v[0] == record::ENVELOPE_VERSION && v.len() == record::ENVELOPE_RECORD_LEN {
                v = as_version_1(dir, &k, &v);
            }
            // A mailbox record loses its flags byte too (version 1 had none).
            let end = if v[0] == record::MAILBOX_VERSION {
                v.len() - 1
            } else {
                v.len()
            };
            assert!([record::RECORD_VERSION, record::MAILBOX_VERSION].contains(&v[0]));
            t.insert(&k[..], &v[1..end]).unwrap();
        }
    }
    txn.delete_table(redb::TableDefinition::<&str, u32>::new("format"))
        .unwrap();
    txn.commit().unwrap();
}

/// An envelope record of version 2 as formats 2 to 4 stored it (version 1): the envelope
/// sealed inline, under ChaCha20-Poly1305 with the same key.
fn as_version_1(dir: &Path, record_key: &[u8], v: &[u8]) -> Vec<u8> {
    let expires_at = u64::from_be_bytes(v[1..9].try_into().unwrap());
    let slot = u64::from_be_bytes(v[9..17].try_into().unwrap());
    let keys = at_rest::KeyFile::open(dir).unwrap();
    let bodies = at_rest::BodyFile::open(dir).unwrap();
    let aad: [u8; 40] = record_key.try_into().unwrap();
    // A stored envelope opens.
    let tag: [u8; 16] = v[17..].try_into().unwrap();
    let envelope = at_rest::open_apart(&keys, &bodies, &aad, slot, &tag).ok().unwrap();
    let key = keys.read(slot).unwrap();
    let sealed = at_rest::seal(
        backchannel_core::aead::Cipher::ChaCha20Poly1305,
        &key,
        &aad,
        envelope.as_bytes(),
    )
    .unwrap();
    record::encode_envelope_value_v1(expires_at, slot, &sealed)
}

/// Every record's first byte, by table.
fn record_versions(path: &Path) -> Vec<(&'static str, usize, u8)> {
    let db = Database::open(path).unwrap();
    let txn = db.begin_read().unwrap();
    let mut out = Vec::new();
    for (name, table) in [("mailboxes", MAILBOXES), ("senders", SENDERS), ("envelopes", ENVELOPES)] {
        let t = txn.open_table(table).unwrap();
        for e in t.iter().unwrap() {
            let (_, v) = e.unwrap();
            out.push((name, v.value().len(), v.value()[0]));
        }
    }
    out
}

/// A data directory of format 1 (release 94ba14f: unversioned records) opens, its
/// envelopes read back, and it is converted to the current format: every record
/// versioned, sends and claims go on where they were.
#[test]
fn a_format_1_data_directory_is_converted_and_keeps_its_envelopes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.redb");
    let (id, cap) = (MailboxId([1; 32]), [2u8; 32]);
    let envelopes = three_envelopes(dir.path(), |s| {
        s.claim(cap, 0, ClaimProof::Token([7; 32]), None).unwrap();
    });
    rewrite_as_format_1(&path);
    assert!(record_versions(&path)
        .iter()
        .all(|(_, len, _)| [32, 117, 4128].contains(len)));

    let s = open(dir.path(), 10);
    let got = s.fetch(&[id], 10).unwrap();
    assert_eq!(got.iter().map(|d| d.envelope.clone()).collect::<Vec<_>>(), envelopes);
    assert_eq!(s.recipient_key(id).unwrap(), Some([3; 32]));
    let (_, seq) = s.send(cap, env(9), u64::MAX, ProvenWork::NONE).unwrap();
    assert_eq!(seq, 4, "the sequence goes on");
    assert_eq!(
        s.claim(cap, 0, ClaimProof::Token([8; 32]), None),
        Err(StoreError::EpochConflict(1))
    );
    drop(s);
    std::thread::sleep(std::time::Duration::from_millis(100));
    let versions = record_versions(&path);
    assert_eq!(versions.len(), 1 + 1 + 4);
    // The converted envelopes in version 1 (inline), the one sent since in version 2.
    let mut envelope_versions: Vec<(usize, u8)> = versions
        .iter()
        .filter(|(table, _, _)| *table == "envelopes")
        .map(|(_, len, v)| (*len, *v))
        .collect();
    envelope_versions.sort_unstable();
    assert_eq!(
        envelope_versions,
        vec![
            (record::ENVELOPE_RECORD_LEN, record::ENVELOPE_VERSION),
            (record::ENVELOPE_VALUE_LEN_V1, record::RECORD_VERSION),
            (record::ENVELOPE_VALUE_LEN_V1, record::RECORD_VERSION),
            (record::ENVELOPE_VALUE_LEN_V1, record::RECORD_VERSION),
        ]
    );
    assert!(
        versions.iter().all(|(table, _, v)| *table == "envelopes"
            || *v
                == if *table == "mailboxes" {
                    record::MAILBOX_VERSION
                } else {
                    record::RECORD_VERSION
                }),
        "{versions:?}"
    );
    // All four still read.
    let s = open(dir.path(), 10);
    assert_eq!(s.fetch(&[id], 10).unwrap().len(), 4);
}

/// A data directory written by a newer backchannel is refused with a message that says
/// to upgrade, and nothing in it is rewritten (not the database, not the key file).
#[test]
fn a_newer_data_directory_is_refused_and_left_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.redb");
    {
        let s = open(dir.path(), 10);
        s.create(MailboxId([1; 32]), [3; 32], Sha256::digest([2u8; 32]).into(), 0)
            .unwrap();
        s.send([2; 32], env(1), u64::MAX, ProvenWork::NONE).unwrap();
    }
    std::thread::sleep(std::time::Duration::from_millis(100));
    {
        let db = Database::open(&path).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(redb::TableDefinition::<&str, u32>::new("format"))
            .unwrap()
            .insert("data directory", FORMAT + 1)
            .unwrap();
        txn.commit().unwrap();
    }
    // A stray key that an open would zero, were it allowed to write.
    {
        let f = OpenOptions::new()
            .write(true)
            .open(dir.path().join(ENVELOPE_KEY_FILE))
            .unwrap();
        f.write_all_at(&[0xab; 32], 32).unwrap();
    }
    let before = raw_files(dir.path());
    let e = EmbeddedStore::open(&path, 10).unwrap_err();
    assert_eq!(
        e,
        StoreError::NewerFormat {
            what: "data directory",
            found: FORMAT + 1,
            known: FORMAT
        }
    );
    assert!(
        e.to_string()
            .starts_with("this relay data directory was written by a newer backchannel"),
        "{e}"
    );
    assert!(e.to_string().ends_with("upgrade backchannel"), "{e}");
    std::thread::sleep(std::time::Duration::from_millis(100));
    assert_eq!(raw_files(dir.path()), before, "nothing was rewritten");

    // So is a record of a newer version in a directory of the current format.
    {
        let db = Database::open(&path).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(redb::TableDefinition::<&str, u32>::new("format"))
            .unwrap()
            .insert("data directory", FORMAT)
            .unwrap();
        {
            let mut envs = txn.open_table(ENVELOPES).unwrap();
            let (k, mut v) = {
                let (k, v) = envs.first().unwrap().unwrap();
                (k.value().to_vec(), v.value().to_vec())
            };
            v[0] = record::ENVELOPE_VERSION + 1;
            envs.insert(&k[..], &v[..]).unwrap();
        }
        txn.commit().unwrap();
    }
    let key_file = std::fs::read(dir.path().join(ENVELOPE_KEY_FILE)).unwrap();
    assert!(matches!(
        EmbeddedStore::open(&path, 10),
        Err(StoreError::NewerFormat {
            what: "envelope record",
            ..
        })
    ));
    assert_eq!(
        std::fs::read(dir.path().join(ENVELOPE_KEY_FILE)).unwrap(),
        key_file,
        "the key file is untouched"
    );
}

/// A claim that carries its commit leaves it held with the grant: a member of that epoch
/// (who shows its claim key) reads it, nobody else does, a loser's claim changes nothing,
/// the latest 16 epochs' commits stay readable, and a grant without a commit holds none. It
/// survives a reopen, and goes with its mailbox.
#[test]
fn a_granted_claim_holds_its_commit_for_the_members_of_its_epoch() {
    use backchannel_core::frame::claim_lock;
    let dir = tempfile::tempdir().unwrap();
    let (id, cap) = (MailboxId([1; 32]), [2u8; 32]);
    let keyed = |k: u8, next: u8| ClaimProof::Key {
        key: [k; 32],
        next: claim_lock(&[next; 32]),
    };
    let commit = |b: u8| Some(std::sync::Arc::<[u8]>::from(vec![b; 5000]));
    {
        let s = open(dir.path(), 10);
        s.create(id, [3; 32], Sha256::digest(cap).into(), 0).unwrap();
        assert_eq!(s.held_commit(cap, 0, [10; 32]), Err(StoreError::EpochConflict(0)));
        s.claim(cap, 0, keyed(10, 11), commit(1)).unwrap();
        assert_eq!(&*s.held_commit(cap, 0, [10; 32]).unwrap(), &[1; 5000][..]);
        assert_eq!(
            s.held_commit(cap, 0, [99; 32]),
            Err(StoreError::NoSuchMailbox),
            "not a member"
        );
        assert_eq!(s.held_commit(cap, 1, [11; 32]), Err(StoreError::EpochConflict(1)));
        assert_eq!(s.held_commit([0; 32], 0, [10; 32]), Err(StoreError::NoSuchMailbox));
        // A loser's claim changes nothing held.
        assert_eq!(
            s.claim(cap, 0, keyed(10, 12), commit(2)),
            Err(StoreError::EpochConflict(1))
        );
        assert_eq!(&*s.held_commit(cap, 0, [10; 32]).unwrap(), &[1; 5000][..]);
        s.claim(cap, 1, keyed(11, 12), commit(3)).unwrap();
        assert_eq!(&*s.held_commit(cap, 0, [10; 32]).unwrap(), &[1; 5000][..], "still kept");
        assert_eq!(&*s.held_commit(cap, 1, [11; 32]).unwrap(), &[3; 5000][..]);
    }
    std::thread::sleep(std::time::Duration::from_millis(100));
    let s = open(dir.path(), 10);
    assert_eq!(&*s.held_commit(cap, 1, [11; 32]).unwrap(), &[3; 5000][..]);
    s.claim(cap, 2, keyed(12, 13), None).unwrap();
    assert_eq!(
        s.held_commit(cap, 2, [12; 32]),
        Err(StoreError::EpochConflict(3)),
        "none held"
    );
    // Sixteen epochs later, epoch 1's slot holds epoch 17's commit.
    for e in 3..=17u8 {
        s.claim(cap, u64::from(e), keyed(e + 10, e + 11), commit(e)).unwrap();
    }
    assert_eq!(&*s.held_commit(cap, 17, [27; 32]).unwrap(), &[17; 5000][..]);
    assert_eq!(&*s.held_commit(cap, 3, [13; 32]).unwrap(), &[3; 5000][..]);
    assert_eq!(s.held_commit(cap, 1, [11; 32]), Err(StoreError::EpochConflict(18)));
    s.delete(id).unwrap();
    assert_eq!(s.held_commit(cap, 17, [27; 32]), Err(StoreError::NoSuchMailbox));
}

/// Held commits are bounded relay-wide (`HELD_BYTES`, 256 MiB; 4 MiB in these tests):
/// anyone can make a sequencer and claim it, so past the bound a claim that brings a commit
/// is refused (`RelayFull`) and nothing is written; deleting a sequencer gives its bytes back.
#[test]
fn held_commits_stay_within_the_relays_bound() {
    use backchannel_core::frame::claim_lock;
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path(), 10);
    let commit = std::sync::Arc::<[u8]>::from(vec![7u8; 512 * 1024]);
    let proof = |k: u8| ClaimProof::Key {
        key: [k; 32],
        next: claim_lock(&[k + 1; 32]),
    };
    let mut granted = 0;
    let mut refused = None;
    for i in 0..20u8 {
        let cap = [i + 100; 32];
        s.create(MailboxId([i; 32]), [3; 32], Sha256::digest(cap).into(), 0)
            .unwrap();
        match s.claim(cap, 0, proof(1), Some(commit.clone())) {
            Ok(()) => granted += 1,
            Err(e) => {
                refused = Some((i, e));
                break;
            }
        }
    }
    assert!(refused.is_some(), "the bound is reached");
    let (full, e) = refused.unwrap();
    assert_eq!(e, StoreError::RelayFull);
    assert_eq!(granted, 7, "4 MiB holds seven commits of 512 KiB and their headers");
    let full_cap = [full + 100; 32];
    assert_eq!(
        s.held_commit(full_cap, 0, [1; 32]),
        Err(StoreError::EpochConflict(0)),
        "nothing written"
    );
    s.delete(MailboxId([0; 32])).unwrap();
    s.claim(full_cap, 0, proof(1), Some(commit.clone())).unwrap();
    assert_eq!(&*s.held_commit(full_cap, 0, [1; 32]).unwrap(), &commit[..]);
}

/// The expiry index's counts (expiry, mailbox, count), read from the database as an
/// operator could.
fn expiry_counts(path: &Path) -> Vec<(u64, MailboxId, u32)> {
    let db = Database::open(path).unwrap();
    let txn = db.begin_read().unwrap();
    entries(&txn.open_table(EXPIRY).unwrap())
        .into_iter()
        .map(|(k, v)| {
            (
                u64::from_be_bytes(k[..8].try_into().unwrap()),
                MailboxId(k[8..].try_into().unwrap()),
                u32::from_be_bytes(v[..].try_into().unwrap()),
            )
        })
        .collect()
}

/// Issue 17, point 5: the sweep takes what has expired from the expiry index (its cost does
/// not grow with what the store holds: `benches/sweep.rs`), and the index counts exactly
/// the stored envelopes, per mailbox and expiry, through sends, acknowledgements, deletions
/// and sweeps.
#[test]
fn the_sweep_deletes_what_expired_and_the_index_follows_every_envelope() {
    let dir = tempfile::tempdir().unwrap();
    let (long, short, gone) = (MailboxId([1; 32]), MailboxId([2; 32]), MailboxId([3; 32]));
    let cap = |b: u8| [b; 32];
    {
        let s = open(dir.path(), 1000);
        for (id, c) in [(long, 11), (short, 12), (gone, 13)] {
            s.create(id, [3; 32], Sha256::digest(cap(c)).into(), 0).unwrap();
        }
        for i in 0..300u32 {
            s.send(cap(11), env(i as u8), 10_000, ProvenWork::NONE).unwrap();
        }
        for i in 0..3u8 {
            s.send(cap(12), env(i), 100, ProvenWork::NONE).unwrap();
            s.send(cap(13), env(i), 100, ProvenWork::NONE).unwrap();
        }
        s.delete(gone).unwrap();
        assert_eq!(s.expire(99).unwrap(), 0, "nothing has expired yet");
        assert_eq!(
            s.expire(100).unwrap(),
            3,
            "the short-lived envelopes, not the deleted mailbox's"
        );
        assert_eq!(s.expire(100).unwrap(), 0);
        assert_eq!(s.fetch(&[long], 15).unwrap().len(), 15);
        assert!(s.fetch(&[short], 15).unwrap().is_empty());
        s.ack(long, 1).unwrap();
        s.ack(long, 2).unwrap();
        assert_eq!(s.stats().unwrap().envelopes, 298);
    }
    std::thread::sleep(std::time::Duration::from_millis(100));
    assert_eq!(
        expiry_counts(&dir.path().join("m.redb")),
        vec![(10_000, long, 298)],
        "one count for the mailbox's envelopes expiring in the same second"
    );
    let s = open(dir.path(), 1000);
    assert_eq!(s.expire(10_000).unwrap(), 298);
    assert_eq!(s.stats().unwrap().envelopes, 0);
    drop(s);
    std::thread::sleep(std::time::Duration::from_millis(100));
    assert_eq!(expiry_counts(&dir.path().join("m.redb")), vec![]);
}

/// When the envelope lifetime is shortened (or the clock steps back), a mailbox's envelopes
/// no longer expire in the order they came: the sweep goes past those that have not expired
/// to take those that have, and leaves the others counted.
#[test]
fn an_envelope_expires_on_time_behind_an_older_one_that_lives_longer() {
    let dir = tempfile::tempdir().unwrap();
    let id = MailboxId([1; 32]);
    let cap = [2u8; 32];
    let s = open(dir.path(), 100);
    s.create(id, [3; 32], Sha256::digest(cap).into(), 0).unwrap();
    for (i, at) in [(1u8, 5_000), (2, 100), (3, 5_000), (4, 100), (5, 200)] {
        s.send(cap, env(i), at, ProvenWork::NONE).unwrap();
    }
    assert_eq!(s.expire(150).unwrap(), 2);
    let left: Vec<u64> = s.fetch(&[id], 15).unwrap().iter().map(|d| d.seq).collect();
    assert_eq!(left, vec![1, 3, 5]);
    assert_eq!(s.expire(200).unwrap(), 1);
    assert_eq!(s.expire(4_999).unwrap(), 0);
    assert_eq!(s.expire(5_000).unwrap(), 2);
    assert_eq!(s.stats().unwrap().envelopes, 0);
    drop(s);
    std::thread::sleep(std::time::Duration::from_millis(100));
    assert_eq!(expiry_counts(&dir.path().join("m.redb")), vec![]);
}

/// A count that says more than the mailbox holds (a damaged store) does not take an
/// envelope that has not expired with it: the sweep goes by the records' own expiry.
#[test]
fn a_stale_index_entry_never_deletes_an_envelope_that_has_not_expired() {
    let dir = tempfile::tempdir().unwrap();
    let id = MailboxId([1; 32]);
    let cap = [2u8; 32];
    {
        let s = open(dir.path(), 10);
        s.create(id, [3; 32], Sha256::digest(cap).into(), 0).unwrap();
        s.send(cap, env(1), 10_000, ProvenWork::NONE).unwrap();
    }
    std::thread::sleep(std::time::Duration::from_millis(100));
    {
        let db = Database::open(dir.path().join("m.redb")).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(EXPIRY)
            .unwrap()
            .insert(&expiry_key(50, &id)[..], &3u32.to_be_bytes()[..])
            .unwrap();
        txn.commit().unwrap();
    }
    let s = open(dir.path(), 10);
    assert_eq!(s.expire(100).unwrap(), 0, "the envelope expires at 10,000");
    assert_eq!(s.fetch(&[id], 10).unwrap().len(), 1);
    assert_eq!(s.expire(10_000).unwrap(), 1);
    drop(s);
    std::thread::sleep(std::time::Duration::from_millis(100));
    assert_eq!(
        expiry_counts(&dir.path().join("m.redb")),
        vec![],
        "the stale count is gone too"
    );
}

/// The raw values of the nameplate table, as the disk holds them.
fn nameplate_values(path: &Path) -> Vec<Vec<u8>> {
    let db = Database::open(path).unwrap();
    let txn = db.begin_read().unwrap();
    match txn.open_table(NAMEPLATES) {
        Ok(t) => t.iter().unwrap().map(|e| e.unwrap().1.value().to_vec()).collect(),
        Err(_) => Vec::new(),
    }
}

#[test]
fn a_nameplate_is_taken_once_and_its_record_is_sealed_at_rest() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path(), 10);
    let now = writer::now_secs();
    let n = s
        .nameplate_create(b"inviter's first message".to_vec(), now + 600)
        .unwrap();
    assert!((1..=999).contains(&n), "an empty store hands out three digits: {n}");
    let m = s.nameplate_create(b"another".to_vec(), now + 600).unwrap();
    assert_ne!(n, m);
    assert_eq!(s.nameplate_take(n, now).unwrap().unwrap(), b"inviter's first message");
    assert_eq!(s.nameplate_take(n, now).unwrap(), None, "taken once");
    assert_eq!(s.nameplate_take(0, now).unwrap(), None);
    assert_eq!(s.nameplate_take(u32::MAX, now).unwrap(), None);
    drop(s);
    std::thread::sleep(std::time::Duration::from_millis(100));
    let path = dir.path().join("m.redb");
    let values = nameplate_values(&path);
    assert_eq!(values.len(), 1, "the one not taken");
    assert!(!values[0].windows(7).any(|w| w == b"another"), "sealed at rest");
    // A new run holds none: they were sealed under the last run's key.
    let s = open(dir.path(), 10);
    assert_eq!(s.nameplate_take(m, now).unwrap(), None);
    drop(s);
    std::thread::sleep(std::time::Duration::from_millis(100));
    assert!(nameplate_values(&path).is_empty());
}

#[test]
fn an_expired_nameplate_is_gone_for_a_take_and_for_the_sweep() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path(), 10);
    let a = s.nameplate_create(b"a".to_vec(), 1000).unwrap();
    let b = s.nameplate_create(b"b".to_vec(), 1000).unwrap();
    let c = s.nameplate_create(b"c".to_vec(), 5000).unwrap();
    // Kept through its expiry second, gone after it.
    assert_eq!(s.nameplate_take(a, 1001).unwrap(), None);
    assert_eq!(s.expire(1000).unwrap(), 0);
    assert_eq!(s.nameplate_take(b, 1000).unwrap().unwrap(), b"b");
    let d = s.nameplate_create(b"d".to_vec(), 1000).unwrap();
    s.expire(1001).unwrap();
    assert_eq!(s.nameplate_take(d, 0).unwrap(), None, "swept");
    assert_eq!(s.nameplate_take(c, 1001).unwrap().unwrap(), b"c", "not yet expired");
    drop(s);
    std::thread::sleep(std::time::Duration::from_millis(100));
    assert!(nameplate_values(&dir.path().join("m.redb")).is_empty());
}

#[test]
fn nameplates_fill_the_short_numbers_then_longer_ones_and_never_repeat() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path(), 10);
    let now = writer::now_secs();
    let mut seen = std::collections::HashSet::new();
    // More than three digits hold: every number is new, and four digits come once the
    // three-digit ones are mostly taken.
    let mut long = 0;
    for _ in 0..1100 {
        let n = s.nameplate_create(vec![1], now + 600).unwrap();
        assert!((1..=backchannel_core::code::MAX_NAMEPLATE).contains(&n));
        assert!(seen.insert(n), "{n} handed out twice");
        if n > 999 {
            long += 1;
        }
    }
    assert!(long >= 101, "{long}");
    assert!(seen.iter().filter(|n| **n <= 999).count() > 700);
}

#[test]
fn when_the_random_tries_miss_the_walk_finds_a_free_number_or_refuses() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path(), 10);
    // Every number taken but 5 and 999,999 (written directly: a million creates are slow).
    {
        let txn = s.reader.db.begin_write().unwrap();
        {
            let mut t = txn.open_table(NAMEPLATES).unwrap();
            for n in 1..=backchannel_core::code::MAX_NAMEPLATE {
                if n != 5 && n != backchannel_core::code::MAX_NAMEPLATE {
                    let mut v = vec![1u8];
                    v.extend_from_slice(&u64::MAX.to_be_bytes());
                    v.extend_from_slice(&[0; 12 + 16]);
                    t.insert(&nameplate::key(n)[..], &v[..]).unwrap();
                }
            }
        }
        txn.commit().unwrap();
    }
    let now = writer::now_secs();
    let mut got = [
        s.nameplate_create(vec![1], now + 600).unwrap(),
        s.nameplate_create(vec![2], now + 600).unwrap(),
    ];
    got.sort();
    assert_eq!(got, [5, backchannel_core::code::MAX_NAMEPLATE]);
    assert_eq!(s.nameplate_create(vec![3], now + 600), Err(StoreError::RelayFull));
}

/// The bundles as the disk holds them, read through the layout that is a contract (module
/// doc of [`BUNDLES`]): the table `bundles`, key `[u8; 16]`, value `expires_at (u64 BE) |
/// bundle`. Declared here again, not with [`BUNDLES`], so that a change there fails here.
#[allow(clippy::panic)]
fn bundles_on_disk(path: &Path) -> Vec<([u8; 16], u64, Vec<u8>)> {
    const CONTRACT: TableDefinition<[u8; 16], &[u8]> = TableDefinition::new("bundles");
    let db = Database::open(path).unwrap();
    let txn = db.begin_read().unwrap();
    match txn.open_table(CONTRACT) {
        Ok(t) => t
            .iter()
            .unwrap()
            .map(|e| {
                let (k, v) = e.unwrap();
                let v = v.value();
                (
                    k.value(),
                    u64::from_be_bytes(v[..8].try_into().unwrap()),
                    v[8..].to_vec(),
                )
            })
            .collect(),
        Err(redb::TableError::TableDoesNotExist(_)) => Vec::new(),
        Err(e) => panic!("the bundles table does not open as the contract says: {e}"),
    }
}

#[test]
fn a_bundle_is_fetched_by_everyone_refreshed_by_its_publisher_and_refused_to_another() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path(), 10);
    let name = [7u8; 16];
    assert_eq!(
        s.bundle_get(name, 100).unwrap(),
        None,
        "before any write: no table, no bundle"
    );
    s.bundle_publish(name, b"drop box keys".to_vec(), 1000, 100).unwrap();
    for _ in 0..3 {
        assert_eq!(s.bundle_get(name, 100).unwrap().unwrap(), b"drop box keys", "not taken");
    }
    assert_eq!(s.bundle_get([8; 16], 100).unwrap(), None);
    // Another bundle: refused, and nothing changes.
    assert_eq!(
        s.bundle_publish(name, b"planted keys".to_vec(), 5000, 100),
        Err(StoreError::BundleTaken)
    );
    assert_eq!(s.bundle_get(name, 100).unwrap().unwrap(), b"drop box keys");
    // The same again keeps it longer, never shorter.
    s.bundle_publish(name, b"drop box keys".to_vec(), 2000, 900).unwrap();
    s.bundle_publish(name, b"drop box keys".to_vec(), 1500, 900).unwrap();
    assert_eq!(s.expire(1999).unwrap(), 0);
    assert_eq!(
        s.bundle_get(name, 2000).unwrap().unwrap(),
        b"drop box keys",
        "through its expiry second"
    );
    assert_eq!(s.bundle_get(name, 2001).unwrap(), None, "expired, before the sweep");
    // Expired, the name is free for another bundle.
    s.bundle_publish(name, b"next".to_vec(), 3000, 2001).unwrap();
    assert_eq!(s.bundle_get(name, 2001).unwrap().unwrap(), b"next");
    // An empty bundle and the largest are bundles.
    s.bundle_publish([1; 16], Vec::new(), 3000, 0).unwrap();
    let big = vec![0xb0; backchannel_core::frame::MAX_BUNDLE];
    s.bundle_publish([2; 16], big.clone(), 3000, 0).unwrap();
    assert_eq!(s.bundle_get([1; 16], 0).unwrap().unwrap(), b"");
    assert_eq!(s.bundle_get([2; 16], 0).unwrap().unwrap(), big);
    drop(s);
    std::thread::sleep(std::time::Duration::from_millis(100));
    // In the clear, as the contract says, with one index entry each.
    let mut on_disk = bundles_on_disk(&dir.path().join("m.redb"));
    on_disk.sort();
    assert_eq!(
        on_disk,
        vec![
            ([1; 16], 3000, Vec::new()),
            ([2; 16], 3000, big),
            (name, 3000, b"next".to_vec())
        ]
    );
    let db = Database::open(dir.path().join("m.redb")).unwrap();
    let txn = db.begin_read().unwrap();
    assert_eq!(txn.open_table(BUNDLE_EXPIRY).unwrap().len().unwrap(), 3);
}

#[test]
fn bundles_outlive_a_restart_and_the_sweep_takes_only_expired_ones() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path(), 10);
    s.bundle_publish([1; 16], b"short".to_vec(), 1000, 0).unwrap();
    s.bundle_publish([2; 16], b"long".to_vec(), 5000, 0).unwrap();
    // Refreshed past the first expiry: the sweep leaves it.
    s.bundle_publish([3; 16], b"kept".to_vec(), 1000, 0).unwrap();
    s.bundle_publish([3; 16], b"kept".to_vec(), 5000, 999).unwrap();
    drop(s);
    std::thread::sleep(std::time::Duration::from_millis(100));
    let s = open(dir.path(), 10);
    assert_eq!(
        s.bundle_get([1; 16], 1000).unwrap().unwrap(),
        b"short",
        "after a restart"
    );
    assert_eq!(s.expire(1000).unwrap(), 0);
    assert_eq!(s.bundle_get([1; 16], 1000).unwrap().unwrap(), b"short");
    s.expire(1001).unwrap();
    assert_eq!(s.bundle_get([1; 16], 0).unwrap(), None, "swept");
    assert_eq!(s.bundle_get([3; 16], 1001).unwrap().unwrap(), b"kept");
    drop(s);
    std::thread::sleep(std::time::Duration::from_millis(100));
    let mut left: Vec<_> = bundles_on_disk(&dir.path().join("m.redb"))
        .into_iter()
        .map(|(n, at, _)| (n, at))
        .collect();
    left.sort();
    assert_eq!(left, vec![([2; 16], 5000), ([3; 16], 5000)]);
    let db = Database::open(dir.path().join("m.redb")).unwrap();
    let txn = db.begin_read().unwrap();
    assert_eq!(
        txn.open_table(BUNDLE_EXPIRY).unwrap().len().unwrap(),
        2,
        "the index follows"
    );
}

#[test]
fn a_tampered_bundle_is_handed_over_as_the_disk_holds_it_and_a_damaged_one_is_none() {
    // The store does not vouch for a bundle: its client checks it (docs/protocol.md,
    // "Bundles"). A byte changed on disk comes back changed; a value too short to hold an
    // expiry is no bundle, and its name is free.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.redb");
    let s = open(dir.path(), 10);
    s.bundle_publish([1; 16], b"keys".to_vec(), u64::MAX, 0).unwrap();
    s.bundle_publish([2; 16], b"gone".to_vec(), u64::MAX, 0).unwrap();
    drop(s);
    std::thread::sleep(std::time::Duration::from_millis(100));
    {
        let db = Database::open(&path).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut t = txn.open_table(BUNDLES).unwrap();
            let mut v = t.get([1u8; 16]).unwrap().unwrap().value().to_vec();
            v[8] ^= 1;
            t.insert([1u8; 16], &v[..]).unwrap();
            t.insert([2u8; 16], &[1u8, 2, 3][..]).unwrap();
        }
        txn.commit().unwrap();
    }
    let s = open(dir.path(), 10);
    assert_eq!(s.bundle_get([1; 16], 0).unwrap().unwrap(), b"jeys");
    assert_eq!(s.bundle_get([2; 16], 0).unwrap(), None);
    s.bundle_publish([2; 16], b"new".to_vec(), u64::MAX, 0).unwrap();
    assert_eq!(s.bundle_get([2; 16], 0).unwrap().unwrap(), b"new");
}

#[test]
fn bundles_stay_within_the_stores_bound() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path(), 10);
    for i in 0..writer::MAX_BUNDLES {
        s.bundle_publish([i as u8; 16], vec![1], 1000, 0).unwrap();
    }
    assert_eq!(
        s.bundle_publish([0xee; 16], vec![1], 1000, 0),
        Err(StoreError::RelayFull)
    );
    // A refresh, or a new bundle in an expired one's place, still goes.
    s.bundle_publish([0; 16], vec![1], 2000, 0).unwrap();
    s.bundle_publish([1; 16], vec![2], 2000, 1001).unwrap();
    // Once the sweep made room, a new name goes.
    s.expire(1001).unwrap();
    s.bundle_publish([0xee; 16], vec![1], 3000, 1001).unwrap();
}

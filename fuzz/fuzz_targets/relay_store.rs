//! The relay's embedded store reading its own files back: records of every
//! table, the key file and the body file are written raw into a fresh data directory (on
//! tmpfs), then the store opens it (crash recovery, conversion of records of
//! older formats, refusal of newer ones) and runs operations on it, including the network's requests
//! with any numbers in them. Input format: `backchannel_fuzz::store_input`.
//!
//! Asserts: nothing panics, in this thread or in the store's writer
//! thread; a created mailbox reports its recipient key; an envelope whose
//! send succeeded is fetched back with its sequence number and bytes, and is still there
//! after a sweep before its expiry; a
//! bundle is fetched as it was last published until it expires, across
//! reopens, and another bundle is never published over a live one.
#![no_main]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use backchannel_core::envelope::{Envelope, ENVELOPE_SIZE};
use backchannel_core::mailbox::MailboxId;
use backchannel_fuzz::store_input::{id, Input, Op};
use backchannel_core::frame::claim_lock;
use backchannel_relay::store::{
    ClaimProof, EmbeddedStore, ProvenWork, StoreError, ENVELOPE_BODY_FILE, ENVELOPE_KEY_FILE,
};
use libfuzzer_sys::fuzz_target;
use redb::{Database, TableDefinition};
use sha2::{Digest, Sha256};

const TABLES: [TableDefinition<&[u8], &[u8]>; 4] = [
    TableDefinition::new("mailboxes"),
    TableDefinition::new("senders"),
    TableDefinition::new("envelopes"),
    TableDefinition::new("expiry-counts"),
];
const MAX_ENVELOPES: u32 = 8;
/// The table of the data directory's format version.
const FORMAT: TableDefinition<&str, u32> = TableDefinition::new("format");

fn scratch() -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    let base = if Path::new("/dev/shm").is_dir() {
        PathBuf::from("/dev/shm")
    } else {
        std::env::temp_dir()
    };
    let dir = base.join(format!(
        "bc-fuzz-store-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A file of the data directory, made if missing, to write raw bytes into.
fn open_rw(path: &Path) -> std::fs::File {
    std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(path)
        .unwrap()
}

fn prepare(dir: &Path, input: &Input) {
    if input.records.is_empty()
        && input.keys.is_empty()
        && input.key_file_len.is_none()
        && input.bodies.is_empty()
        && input.format.is_none()
    {
        // The store creates its own files (and redb is the slow part here).
        return;
    }
    let db = Database::create(dir.join("store.redb")).unwrap();
    let txn = db.begin_write().unwrap();
    for def in TABLES {
        txn.open_table(def).unwrap();
    }
    for rec in &input.records {
        let mut t = txn.open_table(TABLES[rec.table as usize]).unwrap();
        t.insert(&rec.key[..], &rec.value[..]).unwrap();
    }
    if let Some(format) = input.format {
        txn.open_table(FORMAT)
            .unwrap()
            .insert("data directory", format)
            .unwrap();
    }
    txn.commit().unwrap();
    drop(db);
    let keys = open_rw(&dir.join(ENVELOPE_KEY_FILE));
    for (slot, key) in &input.keys {
        std::os::unix::fs::FileExt::write_all_at(&keys, key, *slot as u64 * 32).unwrap();
    }
    if let Some(len) = input.key_file_len {
        keys.set_len(len as u64).unwrap();
    }
    let bodies = open_rw(&dir.join(ENVELOPE_BODY_FILE));
    for (slot, body) in &input.bodies {
        std::os::unix::fs::FileExt::write_all_at(&bodies, body, *slot as u64 * (ENVELOPE_SIZE as u64 + 16)).unwrap();
    }
}

/// Opens the store; a store just closed may still hold its file lock for a
/// moment, while its writer thread ends.
fn open(dir: &Path) -> Result<EmbeddedStore, StoreError> {
    let mut tries = 0;
    loop {
        match EmbeddedStore::open(&dir.join("store.redb"), MAX_ENVELOPES) {
            Err(StoreError::InUse) if tries < 1000 => {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_micros(100));
            }
            other => return other,
        }
    }
}

fn envelope(fill: u8) -> Envelope {
    Envelope::from_bytes(&[fill; ENVELOPE_SIZE]).unwrap()
}

fn run(dir: &Path, input: &Input) {
    prepare(dir, input);
    let Ok(mut store) = open(dir) else {
        return;
    };
    // The nameplates made and not yet taken, in this run of the store: number -> record.
    let mut plates: std::collections::HashMap<u32, (Vec<u8>, u64)> = std::collections::HashMap::new();
    // The bundles published (kept across reopens): name -> bundle and expiry. One expired
    // here is as good as gone, swept or not.
    let mut bundles: std::collections::HashMap<u8, (Vec<u8>, u64)> = std::collections::HashMap::new();
    // Names whose bundle a failed sweep may or may not have removed: not checked.
    let mut unsure: std::collections::HashSet<u8> = std::collections::HashSet::new();
    // The envelopes this run's sends stored: (mailbox, seq) -> expiry.
    let mut sent: std::collections::HashMap<(MailboxId, u64), u64> = std::collections::HashMap::new();
    for op in &input.ops {
        match *op {
            Op::Create { id: i, recipient, send } => {
                let digest: [u8; 32] = Sha256::digest([send; 32]).into();
                if store.create(id(i), [recipient; 32], digest, 0).is_ok() {
                    assert_eq!(store.recipient_key(id(i)), Ok(Some([recipient; 32])));
                }
            }
            Op::Send { send, fill, expires_at } => {
                if let Ok((mailbox, seq)) = store.send([send; 32], envelope(fill), expires_at, ProvenWork::NONE) {
                    sent.insert((mailbox, seq), expires_at);
                    if let Ok(all) = store.fetch(&[mailbox], usize::MAX) {
                        assert!(
                            all.iter()
                                .any(|d| d.seq == seq && d.envelope == envelope(fill) && d.mailbox == mailbox),
                            "a stored envelope is not fetched back"
                        );
                    }
                }
            }
            Op::Fetch { ref ids, max } => {
                let ids: Vec<MailboxId> = ids.iter().map(|b| id(*b)).collect();
                if let Ok(list) = store.fetch(&ids, max as usize) {
                    assert!(list.len() <= max as usize);
                }
            }
            Op::Ack { id: i, seq } => {
                let _ = store.ack(id(i), seq);
            }
            Op::Delete { id: i } => {
                if store.delete(id(i)).is_ok() {
                    assert_eq!(store.recipient_key(id(i)), Ok(None));
                }
            }
            Op::Claim { send, epoch, token } => {
                // Even tokens claim as the previous protocol did; odd ones with a key, whose
                // lock the claim with key token + 2 opens.
                let proof = if token % 2 == 0 {
                    ClaimProof::Token([token; 32])
                } else {
                    ClaimProof::Key {
                        key: [token; 32],
                        next: claim_lock(&[token.wrapping_add(2); 32]),
                    }
                };
                // Some keyed claims carry a commit, which a member of the epoch then reads.
                let commit = (token % 4 == 1).then(|| std::sync::Arc::<[u8]>::from(vec![token; 1 + usize::from(token) * 40]));
                if store.claim([send; 32], epoch, proof, commit.clone()).is_ok() {
                    if let (Some(c), Ok(held)) = (commit, store.held_commit([send; 32], epoch, [token; 32])) {
                        assert_eq!(&*held, &*c, "the commit held with a grant is the one it carried");
                    }
                }
            }
            Op::Expire { now } => {
                // The sweep removes the bundles expired by `now` (and a later op may be at an
                // earlier time); if it failed, whether it did is unknown.
                let mut ids: Vec<MailboxId> = sent.keys().map(|(m, _)| *m).collect();
                ids.sort_unstable();
                ids.dedup();
                let before = store.fetch(&ids, usize::MAX).ok();
                let swept = store.expire(now).is_ok();
                // A sweep never takes an envelope that has not expired.
                if let (true, Some(before), Ok(after)) = (swept, before, store.fetch(&ids, usize::MAX)) {
                    for d in &before {
                        if sent.get(&(d.mailbox, d.seq)).is_some_and(|at| *at > now) {
                            assert!(
                                after.iter().any(|a| a.mailbox == d.mailbox && a.seq == d.seq),
                                "the sweep took an envelope that had not expired"
                            );
                        }
                    }
                }
                bundles.retain(|name, (_, at)| {
                    let kept = *at >= now;
                    if !kept && !swept {
                        unsure.insert(*name);
                    }
                    kept
                });
            }
            Op::RecipientKey { id: i } => {
                let _ = store.recipient_key(id(i));
            }
            Op::Stats => {
                let _ = store.stats();
            }
            Op::NameplateCreate { fill, len, expires_at } => {
                let record = vec![fill; usize::from(len) * 4];
                if let Ok(n) = store.nameplate_create(record.clone(), expires_at) {
                    assert!((1..=backchannel_core::code::MAX_NAMEPLATE).contains(&n), "nameplate {n}");
                    let now = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .unwrap()
                        .as_secs();
                    if let Some((_, before)) = plates.insert(n, (record.clone(), expires_at)) {
                        assert!(before < now, "a nameplate's number handed out twice while held");
                    }
                    if fill % 2 == 1 {
                        // Not expired at its expiry second: the record comes back, once.
                        assert_eq!(store.nameplate_take(n, expires_at), Ok(Some(record)));
                        assert_eq!(store.nameplate_take(n, expires_at), Ok(None), "a nameplate taken twice");
                        plates.remove(&n);
                    }
                }
            }
            Op::NameplateTake { number, now } => {
                let held = plates.remove(&number);
                if let Ok(Some(record)) = store.nameplate_take(number, now) {
                    assert_eq!(held, Some((record, held.as_ref().map_or(0, |h| h.1))), "a record nobody left there");
                    assert!(held.is_some_and(|h| h.1 >= now), "an expired nameplate taken");
                }
            }
            Op::BundlePublish { name, fill, len, expires_at, now } => {
                let bundle = vec![fill; usize::from(len) * 8];
                let held = bundles.get(&name).filter(|(_, at)| *at >= now).cloned();
                let result = store.bundle_publish([name; 16], bundle.clone(), expires_at, now);
                if unsure.contains(&name) {
                    continue;
                }
                match result {
                    Ok(()) => {
                        let at = match held {
                            Some((before, at)) => {
                                assert_eq!(before, bundle, "another bundle published over a live one");
                                at.max(expires_at)
                            }
                            None => expires_at,
                        };
                        bundles.insert(name, (bundle.clone(), at));
                        if at >= now {
                            assert_eq!(store.bundle_get([name; 16], now), Ok(Some(bundle)));
                        }
                    }
                    Err(StoreError::BundleTaken) => {
                        assert!(held.is_some_and(|(before, _)| before != bundle), "a free name, or the same bundle, refused");
                    }
                    Err(_) => {}
                }
            }
            Op::BundleGet { name, now } => {
                if let (Ok(got), false) = (store.bundle_get([name; 16], now), unsure.contains(&name)) {
                    let want = bundles.get(&name).filter(|(_, at)| *at >= now).map(|(b, _)| b.clone());
                    assert_eq!(got, want, "a bundle fetched other than as published");
                }
            }
            Op::Reopen => {
                // A store forgets its nameplates when it opens, and keeps its bundles.
                plates.clear();
                drop(store);
                store = match open(dir) {
                    Ok(s) => s,
                    Err(_) => return,
                };
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let input = Input::parse(data);
    let dir = scratch();
    run(&dir, &input);
    let _ = std::fs::remove_dir_all(&dir);
});

//! A relay upgraded in place: the data directory of an earlier release opens with
//! this code, keeps its envelopes and keeps the PIN its users hold.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};

use backchannel_core::mailbox::MailboxId;
use backchannel_relay::store::EmbeddedStore;
use backchannel_relay::{Limits, Relay, STORE_FILE};

/// Copies a directory's files (not recursive: a relay data directory is flat).
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() {
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
}

/// The mailboxes that hold envelopes, read from the database as an operator could.
fn mailboxes_with_envelopes(store_file: &Path) -> Vec<MailboxId> {
    let db = redb::Database::open(store_file).unwrap();
    let txn = db.begin_read().unwrap();
    let envs = txn
        .open_table(redb::TableDefinition::<&[u8], &[u8]>::new("envelopes"))
        .unwrap();
    let mut ids: Vec<MailboxId> = redb::ReadableTable::iter(&envs)
        .unwrap()
        .map(|e| MailboxId(e.unwrap().0.value()[..32].try_into().unwrap()))
        .collect();
    ids.dedup();
    ids
}

/// Waits until a closed store's writer thread has let go of the file.
fn settle() {
    std::thread::sleep(std::time::Duration::from_millis(200));
}

#[test]
fn a_relay_reopened_keeps_its_pin() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let pin = Relay::open(data.clone(), Limits::default()).unwrap().pin();
    settle();
    assert_eq!(Relay::open(data, Limits::default()).unwrap().pin(), pin);
}

/// The relay data directory made by release 94ba14f (tests/fixtures, with its README):
/// opened by this code, its waiting envelopes read back, every one of them opening
/// with its at-rest key, and the relay keeps its PIN.
#[test]
fn the_data_directory_of_release_94ba14f_opens_and_keeps_its_envelopes_and_pin() {
    let fixture = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../backchannel/tests/fixtures/release-94ba14f/relay");
    assert!(fixture.is_dir(), "the fixture {} is missing", fixture.display());
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("relay");
    copy_dir(&fixture, &data);
    let ids = mailboxes_with_envelopes(&data.join(STORE_FILE));
    assert!(!ids.is_empty(), "the fixture has envelopes waiting");
    // The address its users hold, PIN included.
    let held: backchannel_core::relay_address::RelayAddress =
        std::fs::read_to_string(fixture.join("../relay-address.txt"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();

    let stored = {
        let store = EmbeddedStore::open(&data.join(STORE_FILE), u32::MAX).unwrap();
        let stats = store.stats().unwrap();
        assert!(stats.envelopes > 0 && stats.mailboxes > 0, "{stats:?}");
        let got = store.fetch(&ids, usize::MAX).unwrap();
        assert_eq!(got.len() as u64, stats.envelopes, "every waiting envelope opens");
        stats
    };
    settle();
    // Opened again (now in the current format), through the relay as it starts.
    let relay = Relay::open(data.clone(), Limits::default()).unwrap();
    assert_eq!(relay.pin().0, held.pin, "users keep the PIN they hold");
    drop(relay);
    settle();
    let store = EmbeddedStore::open(&data.join(STORE_FILE), u32::MAX).unwrap();
    assert_eq!(store.stats().unwrap(), stored);
    assert_eq!(store.fetch(&ids, usize::MAX).unwrap().len() as u64, stored.envelopes);
    // Indexed by expiry on the way (format 3): they expire when their time comes.
    assert_eq!(store.expire(now()).unwrap(), 0);
    assert_eq!(store.expire(u64::MAX).unwrap(), stored.envelopes);
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// The data directory's format, read from the database as an operator could.
fn format_of(store_file: &Path) -> Option<u32> {
    let db = redb::Database::open(store_file).unwrap();
    let txn = db.begin_read().unwrap();
    let table = txn.open_table(redb::TableDefinition::<&str, u32>::new("format")).ok()?;
    let v = table.get("data directory").unwrap().map(|v| v.value());
    v
}

/// A data directory of format 2 (tests/fixtures/relay-format-2, with its README): opened by
/// this code it becomes the current format, keeps its PIN, its mailboxes and its envelopes, the
/// envelopes expire by the index that the conversion built, and every mailbox is dated at
/// the conversion (it gets the whole idle lifetime from then: issue 17, point 5).
#[test]
fn a_format_2_data_directory_gains_the_expiry_index_and_keeps_its_envelopes_and_pin() {
    let fixture = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../backchannel/tests/fixtures/relay-format-2");
    assert!(fixture.is_dir(), "the fixture {} is missing", fixture.display());
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("relay");
    copy_dir(&fixture, &data);
    assert_eq!(format_of(&data.join(STORE_FILE)), Some(2));
    let ids = mailboxes_with_envelopes(&data.join(STORE_FILE));
    assert_eq!(ids.len(), 1, "bob's mailbox holds the waiting envelopes");

    let upgraded_at = now();
    let relay = Relay::open(data.clone(), Limits::default()).unwrap();
    assert_eq!(
        relay.pin().to_string(),
        "jvkxm6d7ztnn27ek6szy76ocuh2lgn4j6kyujgzjwftcs3tdyviq",
        "users keep the PIN they hold"
    );
    drop(relay);
    settle();
    assert_eq!(
        format_of(&data.join(STORE_FILE)),
        Some(backchannel_relay::store::embedded::FORMAT)
    );
    let store = EmbeddedStore::open(&data.join(STORE_FILE), u32::MAX).unwrap();
    let stats = store.stats().unwrap();
    assert_eq!((stats.mailboxes, stats.envelopes), (3, 3), "{stats:?}");
    assert_eq!(
        store.fetch(&ids, usize::MAX).unwrap().len(),
        3,
        "every waiting envelope opens"
    );
    // Stored with a 36500-day expiry: not now, but at the end of time.
    assert_eq!(store.expire(now()).unwrap(), 0);
    assert_eq!(store.expire(u64::MAX).unwrap(), 3);
    assert_eq!(store.stats().unwrap().envelopes, 0);
    assert_eq!(
        store.expire_idle(upgraded_at).unwrap(),
        0,
        "dated at the conversion, not before"
    );
    assert_eq!(store.expire_idle(u64::MAX).unwrap(), 3);
    assert_eq!(store.stats().unwrap().mailboxes, 0);
}

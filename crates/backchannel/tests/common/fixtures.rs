#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! What the tests of on-disk fixtures share (`formats.rs`, `nats_upgrade.rs`; `said` is the
//! partition harness's too): the sets
//! under tests/fixtures/, copied before use so that the repository's copy is never written;
//! the deterministic file contents the fixture scripts write; the fixed passphrase of their
//! homes; a lock so that two tests that use one fixed port take turns.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::{hex, Client};

/// The passphrase of every fixture home (scripts/make-fixtures.sh, make-nats-fixtures.sh).
pub const PASSPHRASE: &str = "fixture-passphrase";

/// The fixture set `tests/fixtures/<name>`.
pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

/// Copies a fixture set, so that the repository's copy is never written.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).unwrap();
        }
    }
}

/// The deterministic text the fixture scripts write: numbered lines, cut to `size` bytes.
pub fn pattern(prefix: &str, size: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(size + 64);
    let mut i = 0;
    while out.len() < size {
        out.extend_from_slice(format!("{prefix} {i:06}\n").as_bytes());
        i += 1;
    }
    out.truncate(size);
    out
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// A fixture home (or one made beside it) under `root`.
pub fn home(root: &Path, name: &str) -> Client {
    Client {
        home: root.join(name),
        pass: PASSPHRASE.to_string(),
    }
}

/// Takes the lock file `name` in the temporary folder, waiting for it (another test
/// process, or a run in another worktree, may hold it). Released on drop.
pub fn take_lock(name: &str) -> std::fs::File {
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(std::env::temp_dir().join(name))
        .unwrap();
    lock.lock().unwrap();
    lock
}

/// `read --json` lines as (from, text) of real messages, events left out.
pub fn said(lines: &str) -> Vec<(String, String)> {
    lines
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|m| m.get("event").is_none())
        .map(|m| {
            (
                m["from"].as_str().unwrap().to_string(),
                m["text"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

pub fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
    v.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
}

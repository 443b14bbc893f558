//! Files in a channel: 100 MiB sent, interrupted, resumed, and checked by hash.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
use std::io::Write as _;
use std::time::{Duration, Instant};

use common::*;
use sha2::{Digest, Sha256};

/// A file of `len` pseudo-random bytes (incompressible, like most real files).
fn random_file(path: &std::path::Path, len: usize) -> [u8; 32] {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut h = Sha256::new();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut block = vec![0u8; 1 << 16];
    let mut left = len;
    while left > 0 {
        for chunk in block.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
        }
        let n = left.min(block.len());
        f.write_all(&block[..n]).unwrap();
        h.update(&block[..n]);
        left -= n;
    }
    f.flush().unwrap();
    h.finalize().into()
}

/// Envelopes the relay holds, from its latest counts line.
fn stored_at_relay(relay: &RelayProc) -> u64 {
    relay
        .logs()
        .lines()
        .rev()
        .find_map(|l| l.split_whitespace().find_map(|w| w.strip_prefix("envelopes=")))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

fn sha256_of(path: &std::path::Path) -> [u8; 32] {
    Sha256::digest(std::fs::read(path).unwrap()).into()
}

#[test]
fn a_100_mib_file_is_sent_interrupted_resumed_and_arrives_intact() {
    let root = tempfile::tempdir().unwrap();
    // Room for the whole file in one mailbox, and no request pacing: this test is
    // about resumption and integrity (the flow control has its own test).
    let relay = RelayProc::start(
        &root.path().join("relay"),
        &[
            "--max-envelopes-per-mailbox",
            "40000",
            "--max-requests-per-second",
            "0",
            "--stats-interval",
            "1s",
        ],
    );
    let [alice, bob] = people(root.path(), &relay, ["alice", "bob"]);
    channel_with(&alice, &[&bob], "archive");
    let path = root.path().join("ledger.bin");
    let len = 100 * 1024 * 1024;
    let digest = random_file(&path, len);

    // Interrupt the transfer once a fifth of it is at the relay (the relay logs its
    // counts every second): kill -9.
    let mut child = alice
        .cmd(&["send", "archive", "--file", path.to_str().unwrap()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while stored_at_relay(&relay) < 5_000 {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the transfer ended before it could be interrupted"
        );
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "the transfer made no progress"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();

    // Bob sees the file announced, and incomplete.
    bob.ok(&["sync"]);
    let partial = bob.messages("archive");
    let offer = partial
        .iter()
        .find(|m| m.get("file").is_some())
        .expect("the offer arrived");
    assert_eq!(offer["text"], "sent a file: ledger.bin (100.0 MiB)");
    assert_eq!(offer["file"]["status"], "receiving");
    let parts = offer["file"]["parts"].as_u64().unwrap();
    assert_eq!(parts, 1600);
    let got = offer["file"]["parts_received"].as_u64().unwrap();
    assert!(got > 0 && got < parts, "{got} of {parts} parts before the resume");
    // `read` shows the offer (read now: the next plain `read` will not show it again)
    // while parts are missing, and saves nothing.
    let downloads = root.path().join("downloads");
    let early = bob.ok(&["read", "archive", "--all", "--save-to", downloads.to_str().unwrap()]);
    assert!(early.contains("arriving:"), "{early}");
    assert!(!downloads.exists());

    // The same command resumes where it stopped.
    let r = alice.run(&["send", "archive", "--file", path.to_str().unwrap()]);
    assert!(r.ok, "{}", r.stderr);
    assert!(r.stderr.contains("resuming an interrupted transfer"), "{}", r.stderr);
    assert!(
        !r.stderr.contains("MiB/"),
        "a progress bar without a terminal: {}",
        r.stderr
    );

    // Bob receives the rest; the next plain `read` saves the file, checked against the
    // sender's hash, and says where, though its message was shown before.
    bob.ok(&["sync"]);
    let later = bob.ok(&["read", "archive", "--save-to", downloads.to_str().unwrap()]);
    let expected = downloads.join("ledger.bin");
    assert!(
        later.contains(&format!("saved ledger.bin to {} (SHA-256 checked)", expected.display())),
        "{later}"
    );
    let out = bob.ok(&[
        "read",
        "archive",
        "--json",
        "--all",
        "--save-to",
        downloads.to_str().unwrap(),
    ]);
    let file_msgs: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|m| m.get("file").is_some())
        .collect();
    assert_eq!(file_msgs.len(), 1, "{out}");
    let f = &file_msgs[0]["file"];
    assert_eq!(f["status"], "saved", "{f}");
    assert_eq!(f["sha256"], hex(&digest));
    let saved = std::path::PathBuf::from(f["saved_to"].as_str().unwrap());
    assert_eq!(saved, expected);
    assert_eq!(std::fs::metadata(&saved).unwrap().len(), len as u64);
    assert_eq!(sha256_of(&saved), digest);
    // The sealed parts are gone from bob's home once the file is saved.
    assert!(files(&bob.home.join("files")).is_empty());
    // Reading again says where it is and writes nothing new.
    let again = bob.ok(&["read", "archive", "--all", "--save-to", downloads.to_str().unwrap()]);
    assert!(again.contains(&format!("saved to {}", saved.display())), "{again}");
    assert_eq!(std::fs::read_dir(&downloads).unwrap().count(), 1);
}

#[test]
fn a_file_larger_than_the_recipients_mailbox_waits_for_them_to_fetch() {
    let root = tempfile::tempdir().unwrap();
    // A mailbox smaller than the file: the sender must wait for bob to fetch.
    let relay = RelayProc::start(&root.path().join("relay"), &["--max-envelopes-per-mailbox", "200"]);
    let [alice, bob] = people(root.path(), &relay, ["alice", "bob"]);
    channel_with(&alice, &[&bob], "drops");
    let path = root.path().join("notes.bin");
    let digest = random_file(&path, 2 * 1024 * 1024 + 123);
    let mut daemon = DaemonProc::start(&bob, &[]);
    alice.ok(&["send", "drops", "--file", path.to_str().unwrap()]);
    let downloads = root.path().join("dl");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = bob.ok(&[
            "read",
            "drops",
            "--json",
            "--all",
            "--save-to",
            downloads.to_str().unwrap(),
        ]);
        if out.contains("\"saved\"") {
            break;
        }
        assert!(Instant::now() < deadline, "the file never arrived: {out}");
        std::thread::sleep(Duration::from_millis(500));
    }
    daemon.stop();
    assert_eq!(sha256_of(&downloads.join("notes.bin")), digest);
}

/// Every folder and file under `dir` with its permission bits.
fn modes(dir: &std::path::Path) -> Vec<(std::path::PathBuf, u32)> {
    use std::os::unix::fs::PermissionsExt;
    let mut out = vec![(
        dir.to_path_buf(),
        std::fs::metadata(dir).unwrap().permissions().mode() & 0o777,
    )];
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(modes(&path));
        } else {
            out.push((
                path.clone(),
                std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            ));
        }
    }
    out
}

/// Issue 17, point 6 (in part): what a home holds and the files it saves are its owner's
/// alone (0600 files in 0700 folders, whatever the umask), and `init` refuses an empty
/// passphrase from the environment and from a file, as from the prompt.
#[test]
fn a_home_and_the_files_it_saves_are_readable_by_their_owner_only() {
    let root = tempfile::tempdir().unwrap();
    let relay = RelayProc::start(&root.path().join("relay"), &[]);
    let [alice, bob] = people(root.path(), &relay, ["alice", "bob"]);
    channel_with(&alice, &[&bob], "drops");
    let path = root.path().join("ledger.bin");
    let digest = random_file(&path, 300 * 1024);
    alice.ok(&["send", "drops", "--file", path.to_str().unwrap()]);
    bob.ok(&["sync"]);
    // The parts arrived, sealed beside bob's vault: nothing there is anyone else's to read.
    let home = modes(&root.path().join("bob"));
    assert!(home.len() > 4, "{home:?}");
    for (p, mode) in &home {
        let want = if p.is_dir() { 0o700 } else { 0o600 };
        assert_eq!(*mode, want, "{} is {mode:o}", p.display());
    }
    let downloads = root.path().join("dl").join("in");
    bob.ok(&["read", "drops", "--all", "--save-to", downloads.to_str().unwrap()]);
    assert_eq!(sha256_of(&downloads.join("ledger.bin")), digest);
    for (p, mode) in modes(&root.path().join("dl")) {
        let want = if p.is_dir() { 0o700 } else { 0o600 };
        assert_eq!(mode, want, "{} is {mode:o}", p.display());
    }

    // An empty passphrase is refused, from the environment and from a file.
    let mut carol = Client::new(root.path(), "carol");
    carol.pass = String::new();
    let e = carol.fails(&["init", "--name", "carol", "--relay", &relay.address]);
    assert!(e.contains("must not be empty"), "{e}");
    let empty = root.path().join("empty-passphrase");
    std::fs::write(&empty, "\n").unwrap();
    let e = carol.fails(&[
        "--passphrase-file",
        empty.to_str().unwrap(),
        "init",
        "--name",
        "carol",
        "--relay",
        &relay.address,
    ]);
    assert!(e.contains("must not be empty"), "{e}");
    assert!(!root.path().join("carol").join("state.bcv").exists());
}

/// The folders of a home's `files/` that hold a received file's first part.
fn received_parts(home: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out: Vec<_> = std::fs::read_dir(home.join("files"))
        .unwrap()
        .map(|e| e.unwrap().path().join("0"))
        .filter(|p| p.is_file())
        .collect();
    out.sort();
    out
}

/// Issue 17, point 6: each sealed file is bound to its name, its role and the state's
/// generation. One file's part put in place of another's is refused (both are the same
/// size, sealed under the same key); a state file rolled back alone, behind the witness
/// of the generation last saved, is refused; both leave the home as it was, and it works
/// again once the right files are back.
#[test]
fn a_swapped_or_rolled_back_sealed_file_is_refused_and_changes_nothing() {
    let root = tempfile::tempdir().unwrap();
    let relay = RelayProc::start(&root.path().join("relay"), &[]);
    let [alice, bob] = people(root.path(), &relay, ["alice", "bob"]);
    channel_with(&alice, &[&bob], "drops");
    let (a, b) = (root.path().join("a.bin"), root.path().join("b.bin"));
    let digests = [random_file(&a, 20_000), random_file(&b, 20_000)];
    alice.ok(&["send", "drops", "--file", a.to_str().unwrap()]);
    alice.ok(&["send", "drops", "--file", b.to_str().unwrap()]);
    bob.ok(&["sync"]);
    let parts = received_parts(&bob.home);
    assert_eq!(parts.len(), 2, "two received files sealed beside bob's state");
    let originals: Vec<Vec<u8>> = parts.iter().map(|p| std::fs::read(p).unwrap()).collect();
    assert_eq!(originals[0].len(), originals[1].len());

    // b's first part in place of a's: the swap is refused, nothing is saved or changed.
    std::fs::write(&parts[0], &originals[1]).unwrap();
    let downloads = root.path().join("dl");
    let save = ["read", "drops", "--all", "--save-to", downloads.to_str().unwrap()];
    let r = bob.run(&save);
    assert!(
        !r.ok || r.stderr.contains("modified on disk"),
        "a swapped part is refused: {}{}",
        r.stdout,
        r.stderr
    );
    assert!(r.stderr.contains("modified on disk"), "{}", r.stderr);
    assert_eq!(
        std::fs::read(&parts[0]).unwrap(),
        originals[1],
        "the home is left as it was"
    );
    let saved = ["a.bin", "b.bin"].map(|n| downloads.join(n).exists());
    assert_ne!(saved, [true, true], "the file whose part was swapped is not saved");

    // The state rolled back alone: a copy taken before bob's last save, put back after it.
    std::fs::write(&parts[0], &originals[0]).unwrap();
    let old_state = std::fs::read(bob.home.join("state.bcv")).unwrap();
    bob.ok(&["send", "drops", "a message that makes a new generation"]);
    let new_state = std::fs::read(bob.home.join("state.bcv")).unwrap();
    assert_ne!(old_state, new_state);
    std::fs::write(bob.home.join("state.bcv"), &old_state).unwrap();
    let e = bob.fails(&["channels"]);
    assert!(e.contains("rolled back"), "{e}");
    assert_eq!(
        std::fs::read(bob.home.join("state.bcv")).unwrap(),
        old_state,
        "left as it was"
    );
    // With its witness gone too, a state of generation 2 or more is still refused.
    let witness = std::fs::read(bob.home.join("generation.bcv")).unwrap();
    std::fs::remove_file(bob.home.join("generation.bcv")).unwrap();
    let e = bob.fails(&["channels"]);
    assert!(e.contains("rolled back"), "{e}");

    // The right files back: everything reads, and both files are saved intact.
    std::fs::write(bob.home.join("state.bcv"), &new_state).unwrap();
    std::fs::write(bob.home.join("generation.bcv"), &witness).unwrap();
    let r = bob.run(&save);
    assert!(
        r.ok && !r.stderr.contains("modified on disk"),
        "{}{}",
        r.stdout,
        r.stderr
    );
    assert_eq!(sha256_of(&downloads.join("a.bin")), digests[0]);
    assert_eq!(sha256_of(&downloads.join("b.bin")), digests[1]);
}

/// Issue 17, point 6: a new home's key is derived with Argon2id at 256 MiB and 3 passes,
/// written in the vault's header; the cheap test setting is only had by asking for it
/// (`BACKCHANNEL_INSECURE_TEST_KDF=1`, which the test harness sets), is recorded in the
/// header, and every command that opens such a home says so.
#[test]
fn a_home_is_sealed_at_256_mib_and_the_test_setting_warns_on_every_open() {
    let root = tempfile::tempdir().unwrap();
    let relay = RelayProc::start(&root.path().join("relay"), &[]);
    let raw = |c: &Client, args: &[&str], test_kdf: bool| {
        let mut cmd = c.cmd(args);
        if !test_kdf {
            cmd.env_remove("BACKCHANNEL_INSECURE_TEST_KDF");
        }
        let o = cmd.output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stderr).into_owned()
    };
    let header = |c: &Client| {
        let blob = std::fs::read(c.home.join("state.bcv")).unwrap();
        let u32_at = |i: usize| u32::from_be_bytes(blob[i..i + 4].try_into().unwrap());
        (blob[..8].to_vec(), u32_at(8), u32_at(12), u32_at(16), u32_at(20))
    };
    let warns = |stderr: &str| {
        stderr
            .lines()
            .any(|l| l.starts_with("warning: ") && l.contains(TEST_KDF_WARNING))
    };

    let real = Client::new(root.path(), "real");
    let init = ["init", "--name", "real", "--relay", &relay.address];
    assert!(!warns(&raw(&real, &init, false)));
    assert_eq!(header(&real), (b"BCVAULT2".to_vec(), 256 * 1024, 3, 1, 0));
    // Asking for the test setting when opening does not weaken a home made without it.
    assert!(!warns(&raw(&real, &["channels"], true)));
    assert_eq!(header(&real).1, 256 * 1024);

    let cheap = Client::new(root.path(), "cheap");
    let init = ["init", "--name", "cheap", "--relay", &relay.address];
    assert!(warns(&raw(&cheap, &init, true)), "init says so");
    assert_eq!(header(&cheap), (b"BCVAULT2".to_vec(), 64, 1, 1, 1));
    for _ in 0..2 {
        // Every open warns, with or without the variable.
        assert!(warns(&raw(&cheap, &["channels"], false)));
        assert!(warns(&raw(&cheap, &["channels"], true)));
    }
}

//! `relay --config FILE` and `relay --print-config`, as an operator uses them: every flag has
//! a key of the same name, a flag beats the file, the file beats the defaults, and a wrong
//! key or value is a clear error naming it (issue 21, point 3).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;

use common::*;

fn relay(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(common::bin()).arg("relay").args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

/// `key = value` lines of a printed config (commented keys are unset options).
fn settings(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# ").map_or(Some(l), |_| None))
        .filter_map(|l| l.split_once(" = "))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Every key of the printed config, set ones and unset ones.
fn keys(text: &str) -> Vec<String> {
    text.lines()
        .filter(|l| !l.starts_with("# backchannel"))
        .filter_map(|l| l.trim_start_matches("# ").split(" =").next())
        .map(str::to_string)
        .collect()
}

#[test]
fn the_shipped_config_is_the_relays_defaults() {
    let (ok, printed, err) = relay(&["--print-config"]);
    assert!(ok, "{err}");
    let shipped = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../deploy/relay.toml");
    assert_eq!(
        std::fs::read_to_string(&shipped).unwrap(),
        printed,
        "deploy/relay.toml is `backchannel relay --print-config`: write it again"
    );
    assert_eq!(settings(&printed)["max-connections"], "1024");
    assert_eq!(settings(&printed)["envelope-ttl"], "\"14d\"");
}

/// Every key at a value other than its default, read back through `--print-config`; a
/// flag on the command line wins over the file; and the file is a real relay's settings.
#[test]
fn every_key_of_a_config_file_is_read_and_a_flag_wins_over_it() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("relay.toml");
    let config = r#"
listen = "127.0.0.1:0"
data = "elsewhere"
store = "nats"
nats = ["nats://127.0.0.1:1", "nats://127.0.0.1:2"]
nats-replicas = 1
nats-meta-bytes = 12345
nats-patience = "7s"
advertise = "relay.example.org"
metrics = "127.0.0.1:9999"
metrics-public = true
max-connections = 99
max-connections-per-address = 9
max-mailboxes-per-connection = 17
max-envelopes-per-mailbox = 55
max-stored-envelopes = 5555
max-requests-per-second = 33
request-burst = 44
handshake-timeout = "3s"
idle-timeout = "66s"
envelope-ttl = "2d"
sweep-interval = "11s"
stats-interval = "12s"
shutdown-grace = "4s"
answer-floor = "30ms"
forwarder-rate = 77
forwarder-burst = 88
forward-private = true
idle-mailbox-lifetime = "91d"
nameplate-lifetime = "1200s"
bundle-lifetime = "30d"
address-create-rate = 7
address-create-burst = 8
address-store-rate = 9
address-store-burst = 10
log-format = "json"
"#;
    std::fs::write(&file, config).unwrap();
    let (ok, defaults, _) = relay(&["--print-config"]);
    assert!(ok);
    let written = settings(config.trim());
    assert_eq!(
        written.keys().collect::<Vec<_>>(),
        {
            let mut k = keys(&defaults);
            k.sort();
            k
        }
        .iter()
        .collect::<Vec<_>>(),
        "this test sets every key the relay has"
    );
    let (ok, printed, err) = relay(&["--config", file.to_str().unwrap(), "--print-config"]);
    assert!(ok, "{err}");
    let read = settings(&printed);
    for (key, value) in &written {
        assert_eq!(&read[key], value, "{key}");
        assert_ne!(settings(&defaults).get(key), Some(value), "{key} is set to its default");
    }

    let (ok, printed, err) = relay(&[
        "--config",
        file.to_str().unwrap(),
        "--max-connections",
        "7",
        "--print-config",
    ]);
    assert!(ok, "{err}");
    assert_eq!(settings(&printed)["max-connections"], "7", "the flag wins");
    assert_eq!(
        settings(&printed)["idle-timeout"],
        "\"66s\"",
        "the rest still from the file"
    );
}

#[test]
fn an_unknown_key_or_a_bad_value_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("relay.toml");
    for (text, says) in [
        ("max-conections = 5\n", "unknown key `max-conections`"),
        ("max-connections = \"lots\"\n", "'lots' for '--max-connections"),
        ("envelope-ttl = \"a while\"\n", "--envelope-ttl"),
        ("metrics-public = \"yes\"\n", "`metrics-public` must be true or false"),
        ("nats = \"nats://x:1\"\n", "`nats` must be a list of strings"),
        (
            "max-connections = [1]\n",
            "`max-connections` must be a string or a whole number",
        ),
        ("max-connections = \n", "config file"),
    ] {
        std::fs::write(&file, text).unwrap();
        let (ok, _, err) = relay(&["--config", file.to_str().unwrap(), "--print-config"]);
        assert!(!ok, "{text}");
        assert!(err.contains("in the config file"), "{text}: {err}");
        assert!(err.contains(says), "{text}: {err}");
    }
    let (ok, _, err) = relay(&["--config", "/nonexistent/relay.toml"]);
    assert!(!ok);
    assert!(err.contains("/nonexistent/relay.toml"), "{err}");
}

/// `--log-format json` (or `log-format = "json"` in the file): one JSON object per line, with
/// the same fixed words and counts as the text log, for a log collector.
#[test]
fn json_logs_are_one_object_per_line_with_nothing_of_the_users() {
    let dir = tempfile::tempdir().unwrap();
    let relay = RelayProc::start(&dir.path().join("relay"), &["--log-format", "json"]);
    let [alice, bob] = people(dir.path(), &relay, ["alice", "bob"]);
    channel_with(&alice, &[&bob], "secret-room");
    alice.ok(&["send", "secret-room", "a plaintext"]);
    bob.ok(&["sync"]);
    std::thread::sleep(std::time::Duration::from_millis(200));
    let logs = relay.logs();
    let lines: Vec<&str> = logs.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(lines.len() >= 2, "{logs}");
    for line in &lines {
        let v: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(v["level"].is_string() && v["message"].is_string(), "{line}");
    }
    assert!(lines.iter().any(|l| l.contains("\"relay started\"")), "{logs}");
    for secret in ["alice", "bob", "secret-room", "a plaintext"] {
        assert!(!logs.contains(secret), "the log holds {secret}");
    }
}

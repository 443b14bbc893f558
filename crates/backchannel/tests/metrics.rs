//! `relay --metrics ADDR`: what a monitoring system scrapes, as an operator runs it. The
//! counts come as Prometheus text, never with an id or an address in them; health and
//! readiness answer; an address other than loopback needs `--metrics-public`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
use std::io::{Read, Write};
use std::net::TcpStream;

use common::*;

/// `METHOD path` on a loopback port: the status code and the body.
fn http(port: u16, method: &str, path: &str) -> (u16, String) {
    let mut tcp = TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(tcp, "{method} {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut answer = String::new();
    tcp.read_to_string(&mut answer).unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, body.to_string())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The value of an unlabelled sample.
fn sample(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .unwrap_or_else(|| panic!("no {name} in\n{text}"))
        .parse()
        .unwrap()
}

#[test]
fn the_relay_exports_its_counts_and_health_without_an_id_or_an_address() {
    let root = tempfile::tempdir().unwrap();
    let port = free_port();
    let metrics = format!("127.0.0.1:{port}");
    let relay = RelayProc::start(&root.path().join("relay"), &["--metrics", &metrics]);
    let [alice, bob] = people(root.path(), &relay, ["alice", "bob"]);
    channel_with(&alice, &[&bob], "ops");
    alice.ok(&["send", "ops", "hello"]);
    bob.ok(&["sync"]);
    assert_eq!(bob.texts("ops").len(), 1);

    let (status, text) = http(port, "GET", "/metrics");
    assert_eq!(status, 200, "{text}");
    assert!(sample(&text, "backchannel_envelopes_in_total") >= 1, "{text}");
    assert!(sample(&text, "backchannel_envelopes_acked_total") >= 1, "{text}");
    assert!(
        sample(&text, "backchannel_mailboxes") >= 3,
        "alice's, bob's and the sequencer: {text}"
    );
    assert_eq!(sample(&text, "backchannel_store_up"), 1);
    sample(&text, "backchannel_connections");
    sample(&text, "backchannel_answers_late_total");
    assert_eq!(sample(&text, "backchannel_storage_failures_total"), 0);
    // The store's write times: every write counted, in cumulative buckets.
    let writes = sample(&text, "backchannel_store_write_seconds_count");
    assert!(writes >= 3, "the sends, acknowledgements and creations: {writes}");
    assert_eq!(
        sample(&text, "backchannel_store_write_seconds_bucket{le=\"+Inf\"}"),
        writes
    );
    // Numbers only, whose one label is a bucket's bound: no id, address or key can be in
    // a sample.
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let (name, value) = line.split_once(' ').unwrap();
        let (name, label) = name.split_once('{').unwrap_or((name, ""));
        assert!(
            name.starts_with("backchannel_") && name.chars().all(|c| c.is_ascii_lowercase() || c == '_'),
            "{line}"
        );
        if !label.is_empty() {
            let bound = label.strip_prefix("le=\"").and_then(|l| l.strip_suffix("\"}")).unwrap();
            assert!(bound == "+Inf" || bound.parse::<f64>().is_ok(), "{line}");
        }
        value.parse::<f64>().unwrap_or_else(|_| panic!("not a number: {line}"));
    }
    let receive_id = hex(&mailbox_id(&bob, "ops"));
    for secret in [receive_id.as_str(), "127.0.0.1", "alice", "bob", "ops", "hello"] {
        assert!(!text.contains(secret), "the export holds {secret:?}");
    }

    assert_eq!(http(port, "GET", "/healthz"), (200, "ok\n".to_string()));
    assert_eq!(http(port, "GET", "/readyz"), (200, "ready\n".to_string()));
    assert_eq!(http(port, "GET", "/nothing").0, 404);
    assert_eq!(http(port, "POST", "/metrics").0, 405);
    drop(relay);
}

/// The receive id of a member's mailbox in a channel, as `debug mailbox` prints it.
fn mailbox_id(c: &Client, channel: &str) -> Vec<u8> {
    let v: serde_json::Value = serde_json::from_str(&c.ok(&["debug", "mailbox", channel])).unwrap();
    unhex(v["mailbox"].as_str().unwrap())
}

#[test]
fn metrics_on_an_address_other_machines_reach_need_metrics_public() {
    let root = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(bin())
        .args([
            "relay",
            "--listen",
            "127.0.0.1:0",
            "--metrics",
            "0.0.0.0:9464",
            "--data",
        ])
        .arg(root.path().join("relay"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("--metrics-public"), "{err}");
    assert!(!root.path().join("relay").exists(), "refused before anything was made");
}

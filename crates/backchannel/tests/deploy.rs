//! The files an operator deploys a relay with (`deploy/`): the systemd unit passes
//! `systemd-analyze verify`, is rated "OK" or better by `systemd-analyze security`, and its
//! numbers fit the relay's defaults (issue 21, point 2).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
use std::path::PathBuf;
use std::process::Command;

use backchannel_relay::Limits;

fn unit_text() -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../deploy/backchannel-relay.service");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The value of `key=` in the unit (the last one, as systemd reads it).
fn setting(unit: &str, key: &str) -> String {
    unit.lines()
        .rev()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("the unit has no {key}="))
        .to_string()
}

/// `systemd-analyze ARGS` on a copy of the unit whose ExecStart runs the binary under test.
fn analyze(args: &[&str]) -> std::process::Output {
    let dir = tempfile::tempdir().unwrap();
    let unit = unit_text().replace("/usr/bin/backchannel", common::bin());
    let path = dir.path().join("backchannel-relay.service");
    std::fs::write(&path, unit).unwrap();
    let out = Command::new("systemd-analyze")
        .args(args)
        .arg(&path)
        .output()
        .unwrap_or_else(|e| {
            panic!("systemd-analyze could not run ({e}): install it with `apt-get install systemd` to check the unit")
        });
    drop(dir);
    out
}

#[test]
fn the_relay_unit_verifies_and_is_locked_down() {
    let verify = analyze(&["verify"]);
    let said = String::from_utf8_lossy(&verify.stderr).to_string();
    assert!(verify.status.success(), "systemd-analyze verify: {said}");
    assert!(said.trim().is_empty(), "systemd-analyze verify warns: {said}");

    let security = analyze(&["security", "--offline=true"]);
    let report = String::from_utf8_lossy(&security.stdout).to_string();
    let exposure: f64 = report
        .lines()
        .find_map(|l| l.split("Overall exposure level for backchannel-relay.service: ").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in:\n{report}"));
    eprintln!("systemd-analyze security: exposure {exposure}");
    assert!(exposure <= 2.0, "exposure {exposure} (at most 2.0, \"OK\"):\n{report}");

    let unit = unit_text();
    for (key, value) in [
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("CapabilityBoundingSet", ""),
        ("StateDirectory", "backchannel-relay"),
        ("Restart", "on-failure"),
        ("KillSignal", "SIGTERM"),
    ] {
        assert_eq!(setting(&unit, key), value, "{key}");
    }
    assert!(
        setting(&unit, "SystemCallFilter").starts_with('~'),
        "a system call filter"
    );
    assert!(setting(&unit, "ExecStart").contains("--data /var/lib/backchannel-relay"));
    // Room for every connection's descriptor, and for the relay's own shutdown grace.
    let nofile: usize = setting(&unit, "LimitNOFILE").parse().unwrap();
    assert!(nofile >= 2 * Limits::default().max_connections, "LimitNOFILE {nofile}");
    let stop: u64 = setting(&unit, "TimeoutStopSec").trim_end_matches('s').parse().unwrap();
    assert!(
        stop > Limits::default().shutdown_grace.as_secs(),
        "TimeoutStopSec {stop}"
    );
}

//! `backchannel completions SHELL` and `backchannel man [COMMAND]`, as a packager or a
//! user runs them: generated from the command line itself, so every command is in them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
use std::process::Command;

fn run(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(common::bin()).args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

/// Commands a user has. (The hidden `debug` stays out of the manual; clap_complete's
/// scripts offer it, described as "not for normal use".)
const COMMANDS: [&str; 8] = [
    "relay",
    "init",
    "send",
    "read",
    "verify",
    "drop",
    "daemon",
    "completions",
];

#[test]
fn completions_for_bash_zsh_and_fish_know_every_command() {
    for (shell, marker) in [
        ("bash", "complete -F _backchannel"),
        ("zsh", "#compdef backchannel"),
        ("fish", "complete -c backchannel"),
    ] {
        let (ok, script, err) = run(&["completions", shell]);
        assert!(ok, "{shell}: {err}");
        assert!(script.contains(marker), "{shell}: no {marker:?}");
        for c in COMMANDS {
            assert!(script.contains(c), "{shell}: the script does not know `{c}`");
        }
    }
    let (ok, _, err) = run(&["completions", "cmd.exe"]);
    assert!(!ok);
    assert!(err.contains("possible values"), "{err}");
}

#[test]
fn man_prints_a_page_for_backchannel_and_for_each_command() {
    let (ok, page, err) = run(&["man"]);
    assert!(ok, "{err}");
    assert!(page.contains(".TH backchannel 1"), "{page}");
    for c in COMMANDS {
        assert!(page.contains(c), "the main page does not list `{c}`");
    }
    let (ok, page, err) = run(&["man", "send"]);
    assert!(ok, "{err}");
    assert!(page.contains(".TH backchannel-send 1"), "{page}");
    assert!(page.contains("Send a message, or a file"), "{page}");
    assert!(
        page.contains("\\-\\-file"),
        "the page has the command's options: {page}"
    );
    let (ok, page, err) = run(&["man", "drop", "send"]);
    assert!(ok, "{err}");
    assert!(page.contains(".TH backchannel-drop-send 1"), "{page}");
    assert!(page.contains("\\-\\-direct"), "{page}");

    for missing in [&["man", "nope"][..], &["man", "debug"], &["man", "drop", "nope"]] {
        let (ok, _, err) = run(missing);
        assert!(!ok, "{missing:?}");
        assert!(err.contains("there is no command"), "{missing:?}: {err}");
    }
}

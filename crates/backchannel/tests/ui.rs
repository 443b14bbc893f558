//! `backchannel ui` in a real terminal (tmux, installed by scripts/install-debian.sh) against
//! a real relay (issue 19): a message typed and sent, a reply from another member shown
//! without a key press, `backchannel send` for the same home while the UI is open, a switch
//! of channel, and Ctrl-C leaving the terminal as it was.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

/// A tmux server of the test's own (its socket in the test's directory), one window.
struct Tmux {
    socket: PathBuf,
}

impl Tmux {
    /// Runs `backchannel ui ARGS` for `client` in a window of `width` × `height`; when it
    /// exits, the window says so and stays.
    fn start(root: &Path, client: &Client, args: &[&str], width: u16, height: u16) -> Self {
        let t = Tmux {
            socket: root.join("tmux.sock"),
        };
        let line = format!(
            "env BACKCHANNEL_HOME='{}' BACKCHANNEL_PASSPHRASE='{}' BACKCHANNEL_INSECURE_TEST_KDF=1 '{}' ui {}; echo UI-EXITED $?; sleep 600",
            client.home.display(),
            client.pass,
            bin(),
            args.join(" ")
        );
        t.run(&[
            "new-session",
            "-d",
            "-s",
            "ui",
            "-x",
            &width.to_string(),
            "-y",
            &height.to_string(),
            &line,
        ]);
        t
    }

    fn run(&self, args: &[&str]) -> String {
        let out = Command::new("tmux")
            .arg("-S")
            .arg(&self.socket)
            .args(args)
            .output()
            .expect("tmux runs (scripts/install-debian.sh tmux tmux installs it)");
        assert!(
            out.status.success(),
            "tmux {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn screen(&self) -> String {
        self.run(&["capture-pane", "-p", "-t", "ui"])
    }

    fn keys(&self, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", "ui"];
        args.extend_from_slice(keys);
        self.run(&args);
    }

    /// The screen once it shows `needle`, within `within`.
    fn wait_for(&self, needle: &str, within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            let screen = self.screen();
            if screen.contains(needle) {
                return screen;
            }
            assert!(
                Instant::now() < deadline,
                "{needle:?} not shown within {within:?}:\n{screen}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Tmux {
    /// The screen once it no longer shows `needle`, within `within`.
    fn wait_for_gone(&self, needle: &str, within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            let screen = self.screen();
            if !screen.contains(needle) {
                return screen;
            }
            assert!(
                Instant::now() < deadline,
                "{needle:?} still shown after {within:?}:\n{screen}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .arg("-S")
            .arg(&self.socket)
            .arg("kill-server")
            .output();
    }
}

#[test]
fn a_conversation_in_the_terminal_ui_live_while_other_commands_still_work() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let relay = RelayProc::start(&root.join("relay"), &[]);
    let [alice, bob] = people(root, &relay, ["alice", "bob"]);
    channel_with(&alice, &[&bob], "talk");
    alice.ok(&["channel", "new", "notes"]);

    let ui = Tmux::start(root, &alice, &["talk"], 100, 30);
    ui.wait_for("relay: reachable", Duration::from_secs(20));
    let screen = ui.screen();
    assert!(screen.contains(" talk ") && screen.contains("notes"), "{screen}");

    // Typed and sent with Enter: bob reads it.
    ui.keys(&["-l", "hello from the terminal ui"]);
    ui.keys(&["Enter"]);
    ui.wait_for("alice ✓: hello from the terminal ui", Duration::from_secs(10));
    bob.ok(&["sync", "--wait", "5"]);
    assert!(bob
        .texts("talk")
        .contains(&("alice".to_string(), "hello from the terminal ui".to_string())));

    // Another command for the same home while the UI holds it: the UI serves it.
    alice.ok(&["send", "talk", "sent from another terminal"]);
    ui.wait_for("sent from another terminal", Duration::from_secs(5));

    // Bob's reply appears without a key press, marked unverified.
    bob.ok(&["send", "talk", "a reply from bob"]);
    ui.wait_for("bob (unverified): a reply from bob", Duration::from_secs(5));

    // A command in the input line: /members answers in the conversation; /verify ... confirm
    // marks bob verified, and his messages already shown are drawn with the mark at once.
    ui.keys(&["-l", "/members"]);
    ui.keys(&["Enter"]);
    ui.wait_for("» /members talk", Duration::from_secs(5));
    ui.keys(&["-l", "/verify bob confirm"]);
    ui.keys(&["Enter"]);
    ui.wait_for("bob ✓: a reply from bob", Duration::from_secs(5));
    ui.keys(&["-l", "/search REPLY"]);
    ui.keys(&["Enter"]);
    ui.wait_for("» found:", Duration::from_secs(5));

    // Down switches to the other channel.
    ui.keys(&["Down"]);
    ui.wait_for("┐┌ notes ─", Duration::from_secs(5));

    // Ctrl-C leaves, and the terminal is back as it was: not in the alternate screen.
    ui.keys(&["C-c"]);
    ui.wait_for("UI-EXITED 0", Duration::from_secs(10));
    assert_eq!(
        ui.run(&["display-message", "-p", "-t", "ui", "#{alternate_on}"]).trim(),
        "0"
    );
    let after = ui.screen();
    assert!(
        !after.contains("┌ channels"),
        "the UI's screen is left behind:\n{after}"
    );
    drop(relay);
}

/// A message of a channel whose messages disappear leaves the screen when it leaves the
/// history: the UI shows nothing the device no longer keeps.
#[test]
fn a_disappearing_message_leaves_the_screen_too() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let relay = RelayProc::start(&root.join("relay"), &[]);
    let [alice] = people(root, &relay, ["alice"]);
    alice.ok(&["channel", "new", "brief", "--disappear", "2s"]);
    let ui = Tmux::start(root, &alice, &["brief"], 80, 20);
    ui.wait_for("relay: reachable", Duration::from_secs(20));
    alice.ok(&["send", "brief", "gone in two seconds"]);
    ui.wait_for("gone in two seconds", Duration::from_secs(5));
    ui.wait_for_gone("gone in two seconds", Duration::from_secs(10));
    ui.keys(&["C-c"]);
    ui.wait_for("UI-EXITED 0", Duration::from_secs(10));
    drop(relay);
}

/// When a daemon holds the home, the UI is one more of its callers: it shows the channel
/// live, runs a long command (`/file` of a path with a space, larger than the recipient's
/// mailbox, so it waits for them) with its progress in the status line while the screen
/// stays live, and leaving the UI leaves the daemon running.
#[test]
fn the_ui_over_a_running_daemon_sends_a_file_with_its_progress_and_leaves_the_daemon_running() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    // A mailbox of 200 envelopes: a 3 MiB file waits for bob to fetch.
    let relay = RelayProc::start(&root.join("relay"), &["--max-envelopes-per-mailbox", "200"]);
    let [alice, bob] = people(root, &relay, ["alice", "bob"]);
    channel_with(&alice, &[&bob], "talk");
    // Listed first, but "talk" has the newest message: the UI opens on "talk".
    alice.ok(&["channel", "new", "aaa-quiet"]);
    let mut daemon = DaemonProc::start(&alice, &[]);
    bob.ok(&["send", "talk", "before the ui"]);
    alice.ok(&["sync"]);
    let path = root.join("term sheet.bin");
    let data: Vec<u8> = (0..3 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(&path, &data).unwrap();

    let ui = Tmux::start(root, &alice, &[], 120, 30);
    ui.wait_for("relay: reachable", Duration::from_secs(20));
    let screen = ui.screen();
    assert!(
        screen.contains("┐┌ talk ─") && screen.contains("before the ui") && screen.contains("aaa-quiet"),
        "{screen}"
    );
    ui.keys(&["-l", &format!("/file \"{}\"", path.display())]);
    ui.keys(&["Enter"]);
    let screen = ui.wait_for("waiting for the recipient to fetch", Duration::from_secs(30));
    assert!(screen.contains("/send talk --file"), "{screen}");
    // The screen is not held by the command: what is typed shows at once.
    ui.keys(&["-l", "still typing"]);
    ui.wait_for("│still typing", Duration::from_secs(2));
    ui.keys(&["Escape"]);

    // Bob fetches until the whole file is there; the UI says it went.
    let downloads = root.join("dl");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = bob.ok(&["read", "talk", "--all", "--save-to", downloads.to_str().unwrap()]);
        if out.contains("term sheet.bin (SHA-256 checked)") {
            break;
        }
        assert!(Instant::now() < deadline, "the file never arrived: {out}");
        std::thread::sleep(Duration::from_millis(300));
    }
    assert_eq!(std::fs::read(downloads.join("term sheet.bin")).unwrap(), data);
    ui.wait_for("» sent ", Duration::from_secs(10));

    // Live through the daemon: bob's reply shows without a key press.
    bob.ok(&["send", "talk", "got the term sheet"]);
    ui.wait_for("bob (unverified): got the term sheet", Duration::from_secs(10));

    // Leaving the UI leaves the daemon serving the home.
    ui.keys(&["C-c"]);
    ui.wait_for("UI-EXITED 0", Duration::from_secs(10));
    assert!(
        daemon.child.try_wait().unwrap().is_none(),
        "the daemon is still running"
    );
    alice.ok(&["send", "talk", "after the ui"]);
    bob.ok(&["sync", "--wait", "5"]);
    assert!(bob
        .texts("talk")
        .contains(&("alice".to_string(), "after the ui".to_string())));
    daemon.stop();
    drop(relay);
}

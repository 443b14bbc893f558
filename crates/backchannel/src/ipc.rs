//! The daemon's socket protocol, and its client side.
//!
//! A command asks with one JSON line, a [`Request`]: the typed [`EngineCommand`]
//! with its arguments, the caller's directory, and the proxy it was given. The daemon
//! answers with JSON lines, each a [`Reply`]: lines of output (stdout, stderr notes,
//! warnings) in order, then [`Reply::Exit`] with the outcome. The socket is
//! `daemon.sock` in the home directory; `daemon.rs` is the other side.
//!
//! The terminal UI asks two more things, each a [`Look`] line: a [`Snapshot`] of what it
//! shows (answered with [`Reply::Snapshot`]), and to be told of the next change
//! ([`Reply::Changed`], held until something changes or a minute passes).

use std::path::{Path, PathBuf};
use std::time::Duration;

use backchannel_client::socks::ProxyAddr;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

use crate::args::EngineCommand;
use crate::error::CliError;
use crate::output::Line;
use crate::snapshot::{Query, Snapshot};

/// The socket's file name in the home directory.
pub const SOCKET: &str = "daemon.sock";

/// Largest request line a daemon accepts.
pub const MAX_REQUEST: usize = 256 * 1024;

/// A command for the daemon to run.
#[derive(Serialize, Deserialize, Debug)]
pub struct Request {
    /// The command and its arguments.
    pub command: EngineCommand,
    /// The caller's directory: relative paths in the command are taken from it.
    pub cwd: PathBuf,
    /// The proxy the caller asked for (flag or environment), which the
    /// daemon must already be using: a forwarded command never goes around it.
    pub proxy: Option<ProxyAddr>,
}

/// What the terminal UI asks, besides commands.
#[derive(Serialize, Deserialize, Debug, PartialEq, Eq)]
pub enum Look {
    /// What the UI shows.
    Snapshot(Query),
    /// Answer once the engine has seen more than `since` changes (or after a minute).
    Changes {
        /// The generation the caller has seen.
        since: u64,
    },
}

/// One line of the daemon's answer.
#[derive(Serialize, Deserialize, Debug, PartialEq, Eq)]
pub enum Reply {
    /// A line of the command's output.
    Line(Line),
    /// The command is over: done, or the one sentence that says why it failed.
    Exit(Result<(), String>),
    /// The answer to [`Look::Snapshot`].
    Snapshot(Box<Snapshot>),
    /// The answer to [`Look::Changes`]: the generation now.
    Changed(u64),
}

/// What [`forward`] did.
pub enum Forwarded {
    /// No daemon runs for the home: run the command here.
    NoDaemon,
    /// The daemon ran it, and its output was printed.
    Done,
}

/// If a daemon runs for the home, has it run the command and prints its output.
/// A command that runs until interrupted (`watch`) is asked for one round at a
/// time, every second (the daemon syncs on its own).
pub async fn forward(home: &Path, proxy: Option<&ProxyAddr>, command: &EngineCommand) -> Result<Forwarded, CliError> {
    let path = home.join(SOCKET);
    if !path.exists() {
        return Ok(Forwarded::NoDaemon);
    }
    let request = Request {
        command: command.clone().one_round(),
        cwd: std::env::current_dir().unwrap_or_default(),
        proxy: proxy.cloned(),
    };
    if command.is_endless() {
        loop {
            match ask(&path, &request).await {
                Asked::Exit(Ok(())) => {}
                Asked::Exit(Err(why)) => return Err(CliError::InDaemon(why)),
                Asked::NoDaemon | Asked::Lost => return Err(CliError::DaemonStopped),
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
    match ask(&path, &request).await {
        Asked::NoDaemon => Ok(Forwarded::NoDaemon),
        Asked::Exit(Ok(())) => Ok(Forwarded::Done),
        Asked::Exit(Err(why)) => Err(CliError::InDaemon(why)),
        // Not run again locally: the daemon may have done it (a message sent twice).
        Asked::Lost => Err(CliError::DaemonLost),
    }
}

enum Asked {
    /// No daemon listens: run the command here.
    NoDaemon,
    /// The daemon ran it.
    Exit(Result<(), String>),
    /// The request went out but no answer came back.
    Lost,
}

/// Sends one request and prints the answer's lines as they come.
async fn ask(path: &Path, req: &Request) -> Asked {
    let talked = talk(path, req, |line| line.print()).await;
    use std::io::Write as _;
    let _ = std::io::stdout().flush();
    match talked {
        Talked::NoDaemon => Asked::NoDaemon,
        Talked::Answer(Reply::Exit(outcome)) => Asked::Exit(outcome),
        Talked::Answer(_) | Talked::Lost => Asked::Lost,
    }
}

/// What [`talk`] got.
#[derive(Debug)]
pub enum Talked {
    /// Nobody listens on the socket.
    NoDaemon,
    /// The request went out but no answer came back.
    Lost,
    /// The answer that ends the exchange: anything but [`Reply::Line`].
    Answer(Reply),
}

/// Sends `req` (a [`Request`] or a [`Look`]) on the socket at `path`, hands each line of
/// output to `on_line` as it comes, and returns the answer that ends the exchange.
pub async fn talk(path: &Path, req: &impl Serialize, mut on_line: impl FnMut(Line)) -> Talked {
    let Ok(mut stream) = UnixStream::connect(path).await else {
        return Talked::NoDaemon;
    };
    let Ok(mut line) = serde_json::to_string(req) else {
        return Talked::NoDaemon;
    };
    line.push('\n');
    if stream.write_all(line.as_bytes()).await.is_err() {
        return Talked::NoDaemon;
    }
    let mut lines = BufReader::new(stream).lines();
    while let Ok(Some(l)) = lines.next_line().await {
        match serde_json::from_str::<Reply>(&l) {
            Ok(Reply::Line(line)) => on_line(line),
            Ok(answer) => return Talked::Answer(answer),
            Err(_) => continue,
        }
    }
    Talked::Lost
}

/// Whether something listens on the socket at `path` (a daemon, or a UI, holds the home).
pub async fn answers(path: &Path) -> bool {
    UnixStream::connect(path).await.is_ok()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::args::{Args, Route};
    use clap::Parser;

    /// Every forwardable command survives the trip through the socket's JSON.
    #[test]
    fn requests_and_replies_round_trip() {
        let lines: &[&[&str]] = &[
            &["backchannel", "channel", "new", "c", "--disappear", "1h"],
            &["backchannel", "send", "c", "hello\nworld"],
            &["backchannel", "send", "c", "--file", "a b.bin"],
            &["backchannel", "read", "c", "--json", "--save-to", "out"],
            &["backchannel", "invite", "c", "--uses", "3", "--expires", "7d"],
            &["backchannel", "drop", "reply", "box", "id", "text"],
            &["backchannel", "courier", "import", "bundle"],
            &["backchannel", "debug", "mailbox", "c"],
        ];
        for argv in lines {
            let Route::Forwardable(command) = Args::parse_from(*argv).command.forwardable() else {
                panic!("{argv:?} runs on an engine");
            };
            let req = Request {
                command,
                cwd: PathBuf::from("/tmp"),
                proxy: Some("socks5h://127.0.0.1:9050".parse().unwrap()),
            };
            let text = serde_json::to_string(&req).unwrap();
            assert!(!text.contains('\n'), "one line: {text}");
            let back: Request = serde_json::from_str(&text).unwrap();
            assert_eq!(format!("{back:?}"), format!("{req:?}"));
        }
        for reply in [
            Reply::Line(Line::Out("x".into())),
            Reply::Line(Line::Warning {
                channel: Some("c".into()),
                text: "t".into(),
            }),
            Reply::Exit(Ok(())),
            Reply::Exit(Err("why".into())),
        ] {
            let text = serde_json::to_string(&reply).unwrap();
            assert_eq!(serde_json::from_str::<Reply>(&text).unwrap(), reply);
        }
        // The shapes docs/protocol.md shows.
        let shape = |r: Reply| serde_json::to_string(&r).unwrap();
        assert_eq!(shape(Reply::Line(Line::Out("x".into()))), r#"{"Line":{"Out":"x"}}"#);
        assert_eq!(shape(Reply::Exit(Ok(()))), r#"{"Exit":{"Ok":null}}"#);
        assert_eq!(shape(Reply::Exit(Err("why".into()))), r#"{"Exit":{"Err":"why"}}"#);
    }

    #[test]
    fn commands_without_an_engine_are_not_forwarded() {
        for argv in [
            &["backchannel", "relay"][..],
            &["backchannel", "init", "--name", "a", "--relay", "x"],
            &["backchannel", "demo"],
            &["backchannel", "daemon"],
            &["backchannel", "bench", "connections"],
            &["backchannel", "drop", "send", "bc-drop:x", "hi"],
            &["backchannel", "drop", "check", "bc-receipt:x"],
        ] {
            assert!(
                matches!(Args::parse_from(argv).command.forwardable(), Route::Local(_)),
                "{argv:?}"
            );
        }
    }
}

//! `backchannel daemon`: one long-running process per home that holds the
//! home's relay connections, so the wire shows one steady pair of links
//! rather than a connection per command (and, with `--cover`, a constant
//! rate of fixed-size frames whatever the user does).
//!
//! While it runs, every other command for the same home hands its work to
//! it over a Unix socket in the home directory. The socket file is mode 0600
//! inside the 0700 home, and the daemon also checks that the peer runs as
//! the socket's owner, so only the owner can use it. A request is one JSON
//! line `{"argv": [...], "cwd": "..."}`; the answer is JSON lines
//! `{"o": line}` (stdout) or `{"e": line}` (stderr), then `{"exit": code}`.

use std::error::Error;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use backchannel_client::engine::Warning;

use crate::cli::{forwardable, home, open, print_warnings, proxy_arg, run_engine, watch_args, Args, Out};

/// The socket's file name in the home directory.
pub const SOCKET: &str = "daemon.sock";

/// Largest request line accepted on the socket.
const MAX_REQUEST: usize = 256 * 1024;

/// How often a daemon without cover traffic checks its mailboxes.
const POLL: Duration = Duration::from_secs(1);

/// How long to wait after a failed sync before trying again; doubled after
/// each further failure, up to [`MAX_BACKOFF`].
const BACKOFF: Duration = Duration::from_secs(2);

/// The longest wait between retries.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

#[derive(serde::Serialize, serde::Deserialize)]
struct Request {
    argv: Vec<String>,
    cwd: PathBuf,
    /// The proxy the caller asked for (flag or environment), which the
    /// daemon must already be using: a forwarded command never goes around it.
    proxy: Option<String>,
}

/// Runs the daemon until SIGTERM or Ctrl-C.
pub async fn serve(args: &Args, cover: Option<Duration>) -> Result<(), Box<dyn Error>> {
    let dir = home(args)?;
    // Opening takes the home's lock: a second daemon (or a running command) fails here.
    let mut engine = open(args).await?;
    let path = dir.join(SOCKET);
    // We hold the home's lock, so a socket file left here is stale. Bind before any
    // network work, so that commands started meanwhile wait for us instead of failing.
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path)
        .map_err(|e| format!("could not create the daemon's socket {} ({e})", path.display()))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    let owner = std::fs::metadata(&path)?.uid();
    if let Some(period) = cover {
        if let Err(e) = engine.enable_cover(period).await {
            let _ = std::fs::remove_file(&path);
            return Err(e.into());
        }
    }
    match cover {
        Some(p) => println!("daemon running; cover traffic: one frame every {} ms", p.as_millis()),
        None => println!("daemon running"),
    }
    use std::io::Write as _;
    std::io::stdout().flush()?;

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let poll = if cover.is_some() { Duration::ZERO } else { POLL };
    let mut next_sync = tokio::time::Instant::now();
    let mut last_error = String::new();
    let mut backoff = BACKOFF;
    // Warnings from background syncs name channels: they go to the next command's
    // stderr (and stay in the channel's history), not to the daemon's log.
    let mut pending: Vec<Warning> = Vec::new();
    loop {
        tokio::select! {
            biased;
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
            accepted = listener.accept() => {
                if let Ok((stream, _)) = accepted {
                    handle(stream, owner, &mut engine, &mut pending).await;
                }
            }
            _ = tokio::time::sleep_until(next_sync) => {
                match engine.sync(Duration::ZERO).await {
                    Ok(_) => {
                        last_error.clear();
                        backoff = BACKOFF;
                        next_sync = tokio::time::Instant::now() + poll;
                    }
                    Err(e) => {
                        let text = e.to_string();
                        if text != last_error {
                            eprintln!("warning: {text}");
                            last_error = text;
                        }
                        next_sync = tokio::time::Instant::now() + backoff;
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                    }
                }
                pending.extend(engine.take_warnings());
            }
        }
    }
    let _ = std::fs::remove_file(&path);
    Ok(())
}

/// Serves one command for a local client.
async fn handle(stream: UnixStream, owner: u32, engine: &mut backchannel_client::Engine, pending: &mut Vec<Warning>) {
    if stream.peer_cred().map(|c| c.uid()).ok() != Some(owner) {
        return;
    }
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let mut reader = BufReader::new(read.take(MAX_REQUEST as u64));
    let got = tokio::time::timeout(Duration::from_secs(5), reader.read_line(&mut line)).await;
    let out = Out::buffered();
    print_warnings(&out, &std::mem::take(pending));
    let code = match got {
        Ok(Ok(n)) if n > 0 => run_request(&line, engine, &out).await,
        _ => return,
    };
    let mut reply = String::new();
    for (err, text) in out.take() {
        let key = if err { "e" } else { "o" };
        reply.push_str(&serde_json::json!({ key: text }).to_string());
        reply.push('\n');
    }
    reply.push_str(&serde_json::json!({ "exit": code }).to_string());
    reply.push('\n');
    // A client that stops reading (a pager, Ctrl-Z) must not stall the daemon.
    tokio::spawn(async move {
        let write_all = async {
            write.write_all(reply.as_bytes()).await?;
            write.shutdown().await
        };
        let _ = tokio::time::timeout(Duration::from_secs(60), write_all).await;
    });
}

async fn run_request(line: &str, engine: &mut backchannel_client::Engine, out: &Out) -> i32 {
    let Ok(req) = serde_json::from_str::<Request>(line) else {
        out.eline("error: the daemon could not read the request; are the command and the daemon the same version?");
        return 1;
    };
    let args = match Args::try_parse_from(&req.argv) {
        Ok(a) => a,
        Err(e) => {
            out.eline(e.to_string().trim_end());
            return 2;
        }
    };
    if !forwardable(&args) {
        out.eline("error: this command cannot run through the daemon; stop the daemon first");
        return 1;
    }
    let ours = engine.proxy().map(|p| p.to_string());
    if req.proxy.is_some() && req.proxy != ours {
        let how = ours.map_or("directly".to_string(), |p| format!("through {p}"));
        out.eline(format!(
            "error: the daemon for this home reaches relays {how}, not through the proxy you gave; stop it and start it with that --proxy"
        ));
        return 1;
    }
    let result = run_engine(&args, engine, out, &req.cwd).await;
    print_warnings(out, &engine.take_warnings());
    match result {
        Ok(()) => 0,
        Err(e) => {
            out.eline(format!("error: {e}"));
            1
        }
    }
}

/// If a daemon runs for this command's home, has it run the command and
/// prints its output; returns the exit code, or `None` to run locally.
pub async fn forward(args: &Args) -> Result<Option<i32>, Box<dyn Error>> {
    if !forwardable(args) {
        return Ok(None);
    }
    let path = home(args)?.join(SOCKET);
    if !path.exists() {
        return Ok(None);
    }
    let cwd = std::env::current_dir().unwrap_or_default();
    let proxy = proxy_arg(args).map(|p| p.to_string());
    if let Some((channel, json)) = watch_args(args) {
        // `watch` becomes a `watch-once` every second: the daemon syncs on its own.
        let mut argv = vec!["backchannel".to_string(), "watch-once".to_string()];
        argv.extend(channel);
        if json {
            argv.push("--json".into());
        }
        loop {
            let req = Request {
                argv: argv.clone(),
                cwd: cwd.clone(),
                proxy: proxy.clone(),
            };
            match ask(&path, &req).await {
                Asked::Exit(0) => {}
                Asked::Exit(code) => return Ok(Some(code)),
                Asked::NoDaemon | Asked::Lost => return Err("the daemon stopped; run the command again".into()),
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
    let argv: Vec<String> = std::env::args_os().map(|a| a.to_string_lossy().into_owned()).collect();
    match ask(&path, &Request { argv, cwd, proxy }).await {
        Asked::NoDaemon => Ok(None),
        Asked::Exit(code) => Ok(Some(code)),
        // Not run again locally: the daemon may have done it (a message sent twice).
        Asked::Lost => Err(
            "the daemon stopped while running the command; check with `backchannel read` before trying again".into(),
        ),
    }
}

enum Asked {
    /// No daemon listens: run the command here.
    NoDaemon,
    /// The daemon ran it.
    Exit(i32),
    /// The request went out but no answer came back.
    Lost,
}

/// Sends one request and prints the answer.
async fn ask(path: &std::path::Path, req: &Request) -> Asked {
    let Ok(mut stream) = UnixStream::connect(path).await else {
        return Asked::NoDaemon;
    };
    let Ok(mut line) = serde_json::to_string(req) else {
        return Asked::NoDaemon;
    };
    line.push('\n');
    if stream.write_all(line.as_bytes()).await.is_err() {
        return Asked::NoDaemon;
    }
    let mut lines = BufReader::new(stream).lines();
    use std::io::Write as _;
    while let Ok(Some(l)) = lines.next_line().await {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&l) else {
            continue;
        };
        if let Some(t) = v.get("o").and_then(|t| t.as_str()) {
            println!("{t}");
        } else if let Some(t) = v.get("e").and_then(|t| t.as_str()) {
            eprintln!("{t}");
        } else if let Some(code) = v.get("exit").and_then(|c| c.as_i64()) {
            let _ = std::io::stdout().flush();
            return Asked::Exit(i32::try_from(code).unwrap_or(1));
        }
    }
    Asked::Lost
}

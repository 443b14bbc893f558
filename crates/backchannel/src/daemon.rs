//! `backchannel daemon`: one long-running process per home that holds the
//! home's relay connections, so the wire shows one steady pair of links
//! rather than a connection per command (and, with `--cover`, a constant
//! rate of fixed-size frames whatever the user does).
//!
//! While it runs, every other command for the same home hands its work to
//! it over a Unix socket in the home directory (the protocol is `ipc.rs`).
//! The socket file is mode 0600 inside the 0700 home, and the daemon also
//! checks that the peer runs as the socket's owner, so only the owner can
//! use it. The daemon runs a request with the same `commands::run` as a
//! command run here; nothing depends back on this module.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::time::Duration;

use backchannel_client::engine::Warning;
use backchannel_client::Engine;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use crate::args::{DaemonArgs, Global};
use crate::commands::{self, identity, Context};
use crate::error::{report, CliError};
use crate::ipc::{Look, Reply, Request, MAX_REQUEST, SOCKET};
use crate::output::Out;
use crate::snapshot::{self, Marks};

/// How often a daemon without cover traffic checks its mailboxes.
const POLL: Duration = Duration::from_secs(1);

/// Without cover, each mailbox is fetched on a connection of its own, kept open for up to 16
/// mailboxes and opened afresh at each sync past that: a home with many channels syncs less
/// often (200 mailboxes: every 5 s), so that it does not spend its time in handshakes.
const PER_MAILBOX_POLL: Duration = Duration::from_millis(25);

/// How long to wait after a failed sync before trying again; doubled after
/// each further failure, up to [`MAX_BACKOFF`].
const BACKOFF: Duration = Duration::from_secs(2);

/// The longest wait between retries.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// How long a caller has to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a caller has to take each line of the answer.
const REPLY_TIMEOUT: Duration = Duration::from_secs(60);

/// Under cover, how many ticks a stopping daemon gives its fetches under way to come back
/// and their acknowledgements to go.
const SETTLE_TICKS: u32 = 8;

/// How long a [`Look::Changes`] is held when nothing changes.
const CHANGES_TIMEOUT: Duration = Duration::from_secs(60);

/// A home opened to be served while a process holds it (the daemon, or `backchannel ui`): its
/// engine, the socket other commands hand their work to, and cover traffic if the home asks
/// for it. The socket file goes when this is dropped.
pub struct Served {
    /// The home's engine.
    engine: Engine,
    listener: UnixListener,
    owner: u32,
    path: std::path::PathBuf,
    /// Cover traffic's period, if on.
    cover: Option<Duration>,
    /// Warnings from background syncs, for the next command's stderr.
    pending: Vec<Warning>,
    /// How many changes the engine has seen: bumped by each command served and each sync
    /// that brought something, a warning, or a change of reachability. A UI waits on it.
    changes: tokio::sync::watch::Sender<u64>,
    /// The last background sync reached the relays (`None` before the first).
    reachable: Option<bool>,
    /// The channels' marks, for the next snapshot.
    marks: Marks,
}

impl Served {
    /// Opens the home of `global` (taking its lock), binds its socket, and turns cover
    /// traffic on: at `cover`, or else at the home's `cover` setting.
    pub async fn open(global: &Global, cover: Option<Duration>) -> Result<Self, CliError> {
        let dir = identity::home(global)?;
        // Opening takes the home's lock: a second daemon (or a running command) fails here.
        let engine = identity::open(global)?;
        // `--cover`, or else the home's `cover` setting (`config set cover 4/s`).
        let cover = match cover {
            Some(period) => Some(period),
            None => engine
                .settings()
                .into_iter()
                .find(|(k, v)| k == backchannel_client::state::COVER_SETTING && v != "off")
                .map(|(_, rate)| {
                    crate::args::parse_rate(&rate).map_err(|e| {
                        CliError::from(backchannel_client::ClientError::Usage(format!(
                            "the cover setting: {e}"
                        )))
                    })
                })
                .transpose()?,
        };
        let path = dir.join(SOCKET);
        // We hold the home's lock, so a socket file left here is stale. Bind before any
        // network work, so that commands started meanwhile wait for us instead of failing.
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path).map_err(|source| CliError::DaemonSocket {
            path: path.clone(),
            source,
        })?;
        // From here the socket file goes with `served`, whatever fails.
        let mut served = Self {
            engine,
            listener,
            owner: 0,
            path,
            cover,
            pending: Vec::new(),
            changes: tokio::sync::watch::Sender::new(0),
            reachable: None,
            marks: Marks::default(),
        };
        std::fs::set_permissions(&served.path, std::fs::Permissions::from_mode(0o600))
            .map_err(CliError::io("making the daemon's socket owner-only"))?;
        served.owner = std::fs::metadata(&served.path)
            .map_err(CliError::io("reading the daemon's socket"))?
            .uid();
        if let Some(period) = cover {
            served.engine.enable_cover(period).await?;
        }
        Ok(served)
    }

    /// The next command's connection to the socket. Cancel-safe, so it can wait in a
    /// `select!`; serving the command ([`Served::serve`]) is not, and must run in the
    /// branch's body.
    async fn accept(&self) -> Option<UnixStream> {
        self.listener.accept().await.ok().map(|(stream, _)| stream)
    }

    /// Serves one request that came on `stream`: a command, or a UI's [`Look`].
    async fn serve(&mut self, stream: UnixStream) {
        if stream.peer_cred().map(|c| c.uid()).ok() != Some(self.owner) {
            return;
        }
        let (read, write) = stream.into_split();
        let mut line = String::new();
        let mut reader = BufReader::new(read.take(MAX_REQUEST as u64));
        match tokio::time::timeout(REQUEST_TIMEOUT, reader.read_line(&mut line)).await {
            Ok(Ok(n)) if n > 0 => {}
            _ => return,
        }
        let replies = replier(write);
        match serde_json::from_str::<Look>(&line) {
            Ok(Look::Snapshot(query)) => {
                let facts = snapshot::Facts {
                    generation: *self.changes.borrow(),
                    cover: self.cover.is_some(),
                    reachable: self.reachable,
                    warnings: std::mem::take(&mut self.pending),
                };
                let answer = snapshot::take(&mut self.engine, &query, &mut self.marks, facts);
                let _ = replies.send(Reply::Snapshot(Box::new(answer)));
            }
            Ok(Look::Changes { since }) => {
                // Held by a task of its own: the daemon goes on serving meanwhile.
                let mut changes = self.changes.subscribe();
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(CHANGES_TIMEOUT, changes.wait_for(|g| *g > since)).await;
                    let now = *changes.borrow();
                    let _ = replies.send(Reply::Changed(now));
                });
            }
            Err(_) => {
                run_command(&line, &replies, &mut self.engine, &mut self.pending).await;
                self.changed();
            }
        }
    }

    /// Tells the UIs waiting on the socket that something changed.
    fn changed(&self) {
        self.changes.send_modify(|g| *g += 1);
    }

    /// How long to wait between syncs when the last one went well. Under cover the fetches
    /// run beside the commands ([`Engine::fetch_beside`]), and a sync (its other steps) comes
    /// once a tick.
    fn poll_every(&self) -> Duration {
        if let Some(period) = self.cover {
            period
        } else {
            POLL.max(PER_MAILBOX_POLL.saturating_mul(self.engine.mailbox_count() as u32))
        }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Runs the daemon until SIGTERM or Ctrl-C.
pub async fn serve(global: &Global, args: &DaemonArgs, out: &Out) -> Result<(), CliError> {
    let served = Served::open(global, args.cover).await?;
    match served.cover {
        Some(p) => out.line(format!(
            "daemon running; cover traffic: one frame every {} ms",
            p.as_millis()
        )),
        None => out.line("daemon running"),
    }
    out.flush();

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(CliError::io("listening for SIGTERM"))?;
    let stop = async {
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    };
    run_until(served, stop, || {
        // The daemon's stderr is often a system log: it gets a fixed line; the error itself
        // (which can name a channel or a path) goes to the next command, like the sync's
        // warnings.
        out.eline("warning: a background sync failed; the next backchannel command shows why");
    })
    .await;
    Ok(())
}

/// Serves `served` (commands and looks on its socket, background syncs) until `stop`;
/// `on_failure` is called when a sync fails in a new way.
pub async fn run_until(mut served: Served, stop: impl std::future::Future<Output = ()>, mut on_failure: impl FnMut()) {
    tokio::pin!(stop);
    let mut syncs = Syncs::new();
    // Under cover, once the first sync went well: moves when a fetch beside the commands
    // comes back.
    let mut arrivals: Option<tokio::sync::watch::Receiver<u64>> = None;
    loop {
        tokio::select! {
            biased;
            () = &mut stop => break,
            accepted = served.accept() => {
                if let Some(stream) = accepted {
                    served.serve(stream).await;
                }
            }
            Some(Ok(())) = async { Some(arrivals.as_mut()?.changed().await) }, if arrivals.is_some() => {
                let taken = served.engine.take_fetched().await;
                if syncs.record(&mut served, taken).is_some() {
                    on_failure();
                }
            }
            _ = tokio::time::sleep_until(syncs.next) => {
                if syncs.run(&mut served).await.is_some() {
                    on_failure();
                }
                // Under cover, from the first sync that went well, the fetches run beside the
                // commands (each sync starts those missing, after a failure say).
                if !syncs.failing() && arrivals.is_none() {
                    arrivals = served.engine.fetch_beside();
                }
            }
        }
    }
    if let Some(period) = served.cover {
        // What was fetched and processed is acknowledged before we go (a few ticks).
        served.engine.settle_fetches(SETTLE_TICKS * period).await;
    }
}

/// The background syncs of a served home: when the next is due, and the backoff after
/// failures.
struct Syncs {
    /// When the next sync is due.
    next: tokio::time::Instant,
    last_error: String,
    backoff: Duration,
    /// What the last sync added to the channels' histories (0 after a failure).
    arrived: usize,
}

impl Syncs {
    /// Whether the last sync failed.
    fn failing(&self) -> bool {
        !self.last_error.is_empty()
    }

    /// The first sync is due now.
    fn new() -> Self {
        Self {
            next: tokio::time::Instant::now(),
            last_error: String::new(),
            backoff: BACKOFF,
            arrived: 0,
        }
    }

    /// Syncs once and sets when the next is due. A failure goes to the next command's
    /// stderr (as do the sync's warnings); `Some` with its text the first time it differs
    /// from the last one.
    async fn run(&mut self, served: &mut Served) -> Option<String> {
        let synced = served.engine.sync(Duration::ZERO).await;
        let failure = self.record(served, synced);
        if !self.failing() {
            self.next = tokio::time::Instant::now() + served.poll_every();
        }
        failure
    }

    /// Takes in the outcome of a sync, or of taking in fetches made beside the commands:
    /// how many messages and events arrived, or why it failed (the next sync waits longer).
    fn record(
        &mut self,
        served: &mut Served,
        synced: Result<usize, backchannel_client::ClientError>,
    ) -> Option<String> {
        let mut new_failure = None;
        self.arrived = *synced.as_ref().unwrap_or(&0);
        match synced {
            Ok(_) => {
                self.last_error.clear();
                self.backoff = BACKOFF;
            }
            Err(e) => {
                let text = e.to_string();
                if text != self.last_error {
                    served.pending.push(Warning {
                        channel: None,
                        text: format!("a background sync failed: {text}"),
                    });
                    self.last_error = text.clone();
                    new_failure = Some(text);
                }
                self.next = tokio::time::Instant::now() + self.backoff;
                self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
            }
        }
        let warnings = served.engine.take_warnings();
        let reachable = Some(!self.failing());
        let lapsed = served.engine.take_lapsed();
        if self.arrived > 0 || lapsed || !warnings.is_empty() || reachable != served.reachable {
            served.changed();
        }
        served.reachable = reachable;
        served.pending.extend(warnings);
        new_failure
    }
}

/// Where the answer's lines go: to the caller, as they come, by a task of its own. A client
/// that stops reading (a pager, Ctrl-Z) must not stall the daemon, which only queues them.
fn replier(mut write: tokio::net::unix::OwnedWriteHalf) -> tokio::sync::mpsc::UnboundedSender<Reply> {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Reply>();
    tokio::spawn(async move {
        let write_all = async {
            while let Some(r) = rx.recv().await {
                // A reply is plain strings and unit variants: it always serializes.
                if let Ok(mut text) = serde_json::to_string(&r) {
                    text.push('\n');
                    tokio::time::timeout(REPLY_TIMEOUT, write.write_all(text.as_bytes()))
                        .await
                        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
                }
            }
            tokio::time::timeout(REPLY_TIMEOUT, write.shutdown())
                .await
                .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))?
        };
        let _: std::io::Result<()> = write_all.await;
    });
    tx
}

/// Runs the command that `line` asks for, its output and outcome going to `replies`.
async fn run_command(
    line: &str,
    replies: &tokio::sync::mpsc::UnboundedSender<Reply>,
    engine: &mut Engine,
    pending: &mut Vec<Warning>,
) {
    let lines = replies.clone();
    let out = Out::streamed(Box::new(move |l| {
        let _ = lines.send(Reply::Line(l));
    }));
    out.warnings(std::mem::take(pending));
    let outcome = run_request(line, engine, &out).await.map_err(|e| report(&e));
    let _ = replies.send(Reply::Exit(outcome));
}

/// Runs one request on the daemon's engine.
async fn run_request(line: &str, engine: &mut Engine, out: &Out) -> Result<(), CliError> {
    let req = serde_json::from_str::<Request>(line).map_err(|_| CliError::DaemonUnreadable)?;
    if req.proxy.is_some() && req.proxy.as_ref() != engine.proxy() {
        return Err(CliError::DaemonProxy(engine.proxy().cloned()));
    }
    // `watch` would hold the daemon forever: it runs one round per request.
    let command = req.command.one_round();
    let mut cx = Context {
        engine: &mut *engine,
        out,
        cwd: &req.cwd,
    };
    let result = commands::run(&command, &mut cx).await;
    out.warnings(engine.take_warnings());
    result
}

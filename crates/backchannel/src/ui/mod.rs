//! `backchannel ui [CHANNEL]`: a full-screen terminal UI over the home's engine (issue 19).
//!
//! The UI is a caller of the daemon's socket, like any other command (`ipc.rs`). When a
//! daemon runs for the home, the UI uses it. When none does, the UI opens the home itself
//! (the passphrase prompt comes first) and serves the socket in this process, as the daemon
//! would (`daemon::run_until`): background syncs, cover traffic at the home's setting, and
//! other commands for the same home (`send`, `invite`, `verify`, ...) keep working while
//! the UI is open.
//!
//! Three tasks talk to the socket, so that the screen never waits on the engine: a watcher
//! that holds a [`Look::Changes`] open and says when something changed; a worker that runs
//! the snapshots ([`snapshot`]) and the typed commands in order (a long one, `/file` or
//! `/invite --code`, streams its lines and progress as it goes); and the screen's loop,
//! which waits on a key (or a resize), on what those two report, and on SIGTERM, and never
//! polls. After each, the screen is drawn again from [`app::App`], which holds everything
//! shown; [`view`] draws it. The snapshots are `crate::snapshot`'s.

pub mod app;
pub mod view;

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use backchannel_client::socks::ProxyAddr;
use backchannel_client::ClientError;
use clap::Parser as _;
use futures_util::StreamExt as _;
use ratatui::crossterm::event::{Event, EventStream, KeyEventKind};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

use crate::args::{Args, EngineCommand, Global, Route, UiArgs};
use crate::commands::identity;
use crate::daemon::{self, Served};
use crate::error::CliError;
use crate::ipc::{self, Look, Reply, Request, Talked, SOCKET};
use crate::output::Line;
use crate::snapshot::{self, Snapshot};
use app::{Action, App, Entry};

/// How long the UI's own serving of the home may take to finish the command it is running
/// once the UI is left; past that, the process ends anyway.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// Runs the UI until the user leaves it; the terminal is restored on every way out.
pub async fn run(global: &Global, args: &UiArgs) -> Result<(), CliError> {
    let socket = identity::home(global)?.join(SOCKET);
    // A daemon holds the home: the UI is one more of its callers. Else the UI holds it.
    let served = if ipc::answers(&socket).await {
        None
    } else {
        Some(Served::open(global, None).await?)
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = async move {
        match served {
            Some(served) => {
                let stop = async {
                    let _ = stopped.await;
                };
                // Failures reach the screen through the snapshots' `reachable` and warnings.
                daemon::run_until(served, stop, || {}).await;
            }
            None => std::future::pending().await,
        }
    };
    tokio::pin!(serving);
    let front = front(socket, global.proxy.clone(), args.channel.clone());
    let result = tokio::select! {
        result = front => result,
        () = &mut serving => Err(CliError::DaemonStopped),
    };
    let _ = stop.send(());
    let _ = tokio::time::timeout(STOP_GRACE, serving).await;
    result
}

/// What the socket's tasks report to the screen's loop.
#[derive(Debug)]
enum Report {
    /// The engine changed: ask for a snapshot.
    Changed,
    /// A snapshot came.
    Snapshot(Box<Snapshot>),
    /// A line of the running command's output, and whether it is to be kept off the
    /// conversation (a message's `sent`; its progress still shows).
    Line { line: Line, quiet: bool },
    /// The running command ended: its line, whether its output is shown, and its outcome.
    Done {
        label: String,
        quiet: bool,
        outcome: Result<(), String>,
    },
    /// Nobody answers on the socket any more (the daemon stopped).
    Gone,
}

/// What the worker does, in order.
#[derive(Debug)]
enum Job {
    /// Ask for a snapshot.
    Look(snapshot::Query),
    /// Run a command: its line as typed, whether its output is shown (not for a message
    /// sent), and the command.
    Run {
        label: String,
        quiet: bool,
        command: Box<EngineCommand>,
    },
}

/// The screen: the first snapshot, then the full screen until the user leaves.
async fn front(socket: PathBuf, proxy: Option<ProxyAddr>, channel: Option<String>) -> Result<(), CliError> {
    let (reports, mut reported) = unbounded_channel::<Report>();
    let (jobs, queued) = unbounded_channel::<Job>();
    let worker = tokio::spawn(work(socket.clone(), proxy, queued, reports.clone()));
    let watcher = tokio::spawn(watch(socket, reports));
    let _tasks = Abort(vec![worker.abort_handle(), watcher.abort_handle()]);

    let mut app = App::default();
    let _ = jobs.send(Job::Look(snapshot::Query {
        channel: channel.clone(),
        ..Default::default()
    }));
    // The first snapshot, before the full screen: a channel that is not there is an error
    // on the plain terminal.
    loop {
        match reported.recv().await {
            Some(Report::Snapshot(s)) => {
                app.apply(*s);
                break;
            }
            Some(Report::Gone) | None => return Err(CliError::DaemonStopped),
            Some(_) => {}
        }
    }
    if let Some(wanted) = &channel {
        if app.selected_name() != Some(wanted.as_str()) {
            return Err(ClientError::UnknownChannel(wanted.clone()).into());
        }
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(CliError::io("listening for SIGTERM"))?;
    let mut screen = Screen::enter();
    let mut looks = Looks::default();
    let mut keys = EventStream::new();
    loop {
        screen
            .terminal
            .draw(|f| view::draw(f, &app))
            .map_err(CliError::io("drawing the terminal"))?;
        tokio::select! {
            event = keys.next() => match event {
                Some(Ok(Event::Key(key))) if key.kind != KeyEventKind::Release => match app.on_key(key) {
                    Action::Quit => return Ok(()),
                    Action::Send(text) => {
                        if let Some(name) = app.selected_name() {
                            let argv = vec!["send".to_string(), name.to_string(), text];
                            queue(&jobs, &mut app, &argv, true);
                        }
                    }
                    Action::Run(argv) => queue(&jobs, &mut app, &argv, false),
                    Action::Search(text) => search(&mut app, &text),
                    Action::Select(_) => looks.ask(&jobs, &app, true),
                    Action::None => {}
                },
                // A resize is drawn by the next pass; the terminal gone ends the UI.
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return Ok(()),
            },
            report = reported.recv() => match report {
                Some(Report::Changed) => looks.ask(&jobs, &app, false),
                Some(Report::Snapshot(s)) => {
                    let applied = app.apply(*s);
                    looks.answered(&jobs, &app, applied.again);
                    if applied.bell {
                        // Something new in another channel: the bell (never its content).
                        print!("\u{7}");
                        let _ = std::io::stdout().flush();
                    }
                }
                Some(Report::Line { line, quiet }) => shown(&mut app, line, quiet),
                Some(Report::Done { label, quiet, outcome }) => done(&mut app, &label, quiet, outcome),
                Some(Report::Gone) | None => {
                    app.status.reachable = None;
                    app.status.note = "the daemon stopped: leave with Ctrl-C and run `backchannel ui` again".into();
                }
            },
            _ = term.recv() => return Ok(()),
        }
    }
}

/// The full screen, left (the terminal restored) when this is dropped, whichever way.
struct Screen {
    terminal: ratatui::DefaultTerminal,
}

impl Screen {
    fn enter() -> Self {
        Self {
            terminal: ratatui::init(),
        }
    }
}

impl Drop for Screen {
    fn drop(&mut self) {
        ratatui::restore();
    }
}

/// Ends the socket's tasks when the screen's loop ends.
struct Abort(Vec<tokio::task::AbortHandle>);

impl Drop for Abort {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

/// One snapshot asked at a time; a change meanwhile asks again once it is answered.
#[derive(Debug, Default)]
struct Looks {
    asking: bool,
    again: bool,
    whole: bool,
}

impl Looks {
    fn ask(&mut self, jobs: &UnboundedSender<Job>, app: &App, whole: bool) {
        self.whole |= whole;
        if self.asking {
            self.again = true;
            return;
        }
        self.asking = true;
        let _ = jobs.send(Job::Look(app.query(std::mem::take(&mut self.whole))));
    }

    fn answered(&mut self, jobs: &UnboundedSender<Job>, app: &App, whole: bool) {
        self.asking = false;
        if std::mem::take(&mut self.again) || whole {
            self.ask(jobs, app, whole);
        }
    }
}

/// Queues the command line `argv` (`backchannel` itself left out) for the worker; `quiet`
/// keeps its output off the conversation.
fn queue(jobs: &UnboundedSender<Job>, app: &mut App, argv: &[String], quiet: bool) {
    let label = format!("/{}", argv.join(" "));
    let parsed = Args::try_parse_from(std::iter::once("backchannel".to_string()).chain(argv.iter().cloned()));
    let command = match parsed.map(|a| a.command.forwardable()) {
        Ok(Route::Forwardable(command)) => command,
        Ok(Route::Local(_)) => {
            app.status.note = "that command does not run inside the UI".into();
            return;
        }
        Err(e) => {
            // clap's own words: the first line says what is wrong.
            app.status.note = e.to_string().lines().next().unwrap_or_default().to_string();
            return;
        }
    };
    if !quiet {
        app.entries.push(Entry::Note(label.clone()));
        app.scroll = 0;
    }
    app.status.running = Some((if quiet { "sending".into() } else { label.clone() }, String::new()));
    let _ = jobs.send(Job::Run {
        label,
        quiet,
        command: Box::new(command),
    });
}

/// A line of the running command's output: progress to the status line, the rest to the
/// conversation as notes (unless `quiet`).
fn shown(app: &mut App, line: Line, quiet: bool) {
    let text = match line {
        Line::Progress(text) => {
            if let Some((_, progress)) = &mut app.status.running {
                *progress = text;
            }
            return;
        }
        Line::Out(text) | Line::Note(text) => text,
        Line::Warning { channel: Some(c), text } => format!("warning: [{c}] {text}"),
        Line::Warning { channel: None, text } => format!("warning: {text}"),
    };
    if quiet && !text.starts_with("warning: ") {
        return;
    }
    app.entries.push(Entry::Note(text));
    app.scroll = 0;
}

/// The running command ended: a failure is said loudly in the conversation.
fn done(app: &mut App, label: &str, quiet: bool, outcome: Result<(), String>) {
    app.status.running = None;
    app.status.note = match outcome {
        Ok(()) if quiet => String::new(),
        Ok(()) => format!("{label}: done"),
        Err(why) => {
            let what = if quiet { "not sent" } else { label };
            app.entries.push(Entry::Alert(format!("{what}: {why}")));
            app.scroll = 0;
            format!("{what}: failed")
        }
    };
}

/// Shows the selected conversation's entries that contain `text` (any case) as notes.
fn search(app: &mut App, text: &str) {
    let needle = text.to_lowercase();
    let found: Vec<Entry> = app
        .entries
        .iter()
        .filter_map(|e| match e {
            Entry::Message { time, from, text, .. } if text.to_lowercase().contains(&needle) => {
                Some(Entry::Note(format!("found: {time} {from}: {text}")))
            }
            Entry::Event { time, text, .. } if text.to_lowercase().contains(&needle) => {
                Some(Entry::Note(format!("found: {time} {text}")))
            }
            _ => None,
        })
        .collect();
    app.status.note = format!("/search {text}: {} found", found.len());
    app.entries.extend(found);
    app.scroll = 0;
}

/// The worker: runs the jobs in order on the socket, and reports what came back.
async fn work(
    socket: PathBuf,
    proxy: Option<ProxyAddr>,
    mut jobs: UnboundedReceiver<Job>,
    reports: UnboundedSender<Report>,
) {
    let cwd = std::env::current_dir().unwrap_or_default();
    while let Some(job) = jobs.recv().await {
        let report = match job {
            Job::Look(query) => match ipc::talk(&socket, &Look::Snapshot(query), |_| {}).await {
                Talked::Answer(Reply::Snapshot(s)) => Report::Snapshot(s),
                _ => Report::Gone,
            },
            Job::Run { label, quiet, command } => {
                let request = Request {
                    command: *command,
                    cwd: cwd.clone(),
                    proxy: proxy.clone(),
                };
                let lines = reports.clone();
                let talked = ipc::talk(&socket, &request, |line| {
                    let _ = lines.send(Report::Line { line, quiet });
                })
                .await;
                let outcome = match talked {
                    Talked::Answer(Reply::Exit(outcome)) => outcome,
                    Talked::NoDaemon => Err("nothing serves the home any more".into()),
                    // Not run again: it may have been done (a message sent twice).
                    Talked::Answer(_) | Talked::Lost => Err("the daemon stopped while running the command".into()),
                };
                Report::Done { label, quiet, outcome }
            }
        };
        if reports.send(report).is_err() {
            return;
        }
    }
}

/// The watcher: holds a [`Look::Changes`] open, and reports each change.
async fn watch(socket: PathBuf, reports: UnboundedSender<Report>) {
    let mut since = 0;
    loop {
        let report = match ask_changes(&socket, since).await {
            Some(now) if now == since => continue,
            Some(now) => {
                since = now;
                Report::Changed
            }
            None => Report::Gone,
        };
        let gone = matches!(report, Report::Gone);
        if reports.send(report).is_err() || gone {
            return;
        }
    }
}

async fn ask_changes(socket: &Path, since: u64) -> Option<u64> {
    match ipc::talk(socket, &Look::Changes { since }, |_| {}).await {
        Talked::Answer(Reply::Changed(now)) => Some(now),
        _ => None,
    }
}

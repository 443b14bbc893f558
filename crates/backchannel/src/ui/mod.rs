//! `backchannel ui [CHANNEL]`: a full-screen terminal UI over the home's engine (issue 19).
//!
//! It holds the home as the daemon does (`daemon::Served`): the passphrase prompt comes
//! first, then the socket is bound, so other commands for the same home (`send`, `invite`,
//! `verify`, ...) hand their work to the UI while it is open, and cover traffic runs at the
//! home's setting. One loop waits on three things and never polls: a key (or a resize), a
//! command on the socket, and the next background sync (every second without cover, as
//! the daemon syncs). After each, the screen is drawn again from [`app::App`], which holds
//! everything shown; [`view`] draws it.

pub mod app;
pub mod view;

use std::io::Write as _;

use backchannel_client::engine::MessageView;
use backchannel_client::state::{ChannelStatus, EventKind};
use backchannel_client::{ClientError, Engine};
use futures_util::StreamExt as _;
use ratatui::crossterm::event::{Event, EventStream, KeyEventKind};

use std::sync::{Arc, Mutex};

use clap::Parser as _;

use crate::args::{Args, Global, Route, UiArgs};
use crate::commands::{self, Context};
use crate::daemon::{Served, Syncs};
use crate::error::{report, CliError};
use crate::output::{Line, Out};
use app::{Action, App, ChannelRow, Entry};

/// Runs the UI until the user leaves it; the terminal is restored on every way out.
pub async fn run(global: &Global, args: &UiArgs) -> Result<(), CliError> {
    let mut served = Served::open(global, None).await?;
    let mut app = App::default();
    app.status.cover = served.cover.is_some();
    let _ = served.engine.refresh().await;
    refresh(&mut served.engine, &mut app, args.channel.as_deref(), true);
    if let Some(wanted) = &args.channel {
        if app.selected_name() != Some(wanted.as_str()) {
            return Err(ClientError::UnknownChannel(wanted.clone()).into());
        }
    }
    let mut terminal = ratatui::init();
    let result = event_loop(&mut terminal, &mut served, &mut app).await;
    ratatui::restore();
    result
}

async fn event_loop(
    terminal: &mut ratatui::DefaultTerminal,
    served: &mut Served,
    app: &mut App,
) -> Result<(), CliError> {
    let mut keys = EventStream::new();
    let mut syncs = Syncs::new();
    loop {
        terminal
            .draw(|f| view::draw(f, app))
            .map_err(CliError::io("drawing the terminal"))?;
        tokio::select! {
            event = keys.next() => match event {
                Some(Ok(Event::Key(key))) if key.kind != KeyEventKind::Release => {
                    match app.on_key(key) {
                        Action::Quit => return Ok(()),
                        Action::Send(text) => send(&mut served.engine, app, &text).await,
                        Action::Run(argv) => {
                            run_command(&mut served.engine, app, &argv).await;
                            refresh(&mut served.engine, app, None, false);
                        }
                        Action::Search(text) => search(app, &text),
                        Action::Select(_) => {
                            refresh(&mut served.engine, app, None, true);
                        }
                        Action::None => {}
                    }
                }
                // A resize is drawn by the next pass; the terminal gone ends the UI.
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return Ok(()),
            },
            accepted = served.accept() => {
                if let Some(stream) = accepted {
                    served.serve(stream).await;
                    refresh(&mut served.engine, app, None, false);
                }
            }
            _ = tokio::time::sleep_until(syncs.next) => {
                syncs.run(served).await;
                app.status.reachable = Some(!syncs.failing());
                // What a daemon keeps for the next command's stderr, the UI shows.
                if let Some(w) = served.pending.pop() {
                    app.status.note = w.text;
                }
                served.pending.clear();
                // Nothing new: the channels' marks stay as they were (no group is loaded).
                let recheck = syncs.arrived > 0;
                if refresh_with(&mut served.engine, app, None, false, recheck) {
                    // Something new in another channel: the bell (never its content).
                    print!("\u{7}");
                    let _ = std::io::stdout().flush();
                }
            }
        }
    }
}

/// Runs the command line `argv` (`backchannel` itself left out) on the engine, as the
/// command line would (`commands::run`); what it prints goes to the conversation as notes,
/// and its failure to the status line.
async fn run_command(engine: &mut Engine, app: &mut App, argv: &[String]) {
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
    let printed: Arc<Mutex<Vec<Line>>> = Arc::default();
    let sink = printed.clone();
    let out = Out::streamed(Box::new(move |l| {
        if let Ok(mut v) = sink.lock() {
            v.push(l);
        }
    }));
    let cwd = std::env::current_dir().unwrap_or_default();
    let mut cx = Context {
        engine,
        out: &out,
        cwd: &cwd,
    };
    let result = commands::run(&command, &mut cx).await;
    out.warnings(engine.take_warnings());
    let lines = printed.lock().map(|mut v| std::mem::take(&mut *v)).unwrap_or_default();
    app.entries.push(Entry::Note(format!("/{}", argv.join(" "))));
    for line in lines {
        app.entries.push(Entry::Note(match line {
            Line::Out(text) | Line::Note(text) => text,
            Line::Warning { text, .. } => format!("warning: {text}"),
        }));
    }
    app.scroll = 0;
    app.status.note = match result {
        Ok(()) => String::new(),
        Err(e) => format!("error: {}", report(&e)),
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

/// Sends `text` to the selected channel; what happened goes to the status line.
async fn send(engine: &mut Engine, app: &mut App, text: &str) {
    let Some(name) = app.selected_name().map(str::to_string) else {
        return;
    };
    app.status.note = match engine.send(&name, text).await {
        Ok(()) => String::new(),
        Err(ClientError::Queued(why)) => format!("queued: {why}"),
        Err(e) => e.to_string(),
    };
    refresh(engine, app, None, false);
}

/// Reads the channels and the selected channel's new messages into `app` (all of them
/// with `reload`); whether another channel got something new since the last refresh.
fn refresh(engine: &mut Engine, app: &mut App, prefer: Option<&str>, reload: bool) -> bool {
    refresh_with(engine, app, prefer, reload, true)
}

/// [`refresh`]; without `recheck`, a channel's "unverified members" mark is kept from the
/// last refresh (working it out loads each channel's group: the idle tick skips that when
/// nothing arrived).
fn refresh_with(engine: &mut Engine, app: &mut App, prefer: Option<&str>, reload: bool, recheck: bool) -> bool {
    let before: usize = app.channels.iter().map(|c| c.unread).sum();
    let known: std::collections::HashMap<String, bool> =
        app.channels.iter().map(|c| (c.name.clone(), c.unverified)).collect();
    let channels = engine.channels();
    let selected = prefer
        .map(str::to_string)
        .or_else(|| app.selected_name().map(str::to_string));
    let shown = channels.iter().find(|c| Some(&c.name) == selected.as_ref());
    let unread_before = shown.map_or(0, |c| c.unread);
    // Messages that disappear leave the history from anywhere in it (its positions move):
    // such a channel is read whole at each refresh, so that the screen keeps nothing the
    // device no longer does.
    let disappearing = shown.is_some_and(|c| c.disappear_after > 0);
    let rows: Vec<ChannelRow> = channels
        .into_iter()
        .map(|c| ChannelRow {
            unverified: match known.get(&c.name) {
                Some(&u) if !recheck => u,
                _ => engine
                    .members(&c.name)
                    .is_ok_and(|m| m.iter().any(|m| !m.you && !m.verified)),
            },
            ended: c.status != ChannelStatus::Active,
            expiring: c.expires_at > 0,
            name: c.name,
            unread: c.unread,
        })
        .collect();
    app.set_channels(rows, prefer);
    app.status.queued = engine.queued();
    if let Some(name) = app.selected_name().map(str::to_string) {
        // A mark that changed (a key change, a verification) is drawn again at once.
        let verified: Vec<(String, bool)> = engine
            .members(&name)
            .map(|m| m.into_iter().map(|m| (m.fingerprint.to_string(), m.verified)).collect())
            .unwrap_or_default();
        let reload = reload || disappearing || verified != app.verified;
        app.verified = verified;
        if reload {
            app.entries.clear();
            app.shown = 0..0;
        }
        if let Ok((new, span)) = engine.history_from(&name, app.shown.end) {
            if span.start > app.shown.start && !app.entries.is_empty() {
                // The oldest entries went (the history's cap): shown again whole.
                app.entries.clear();
                if let Ok((all, _)) = engine.history_from(&name, 0) {
                    app.entries.extend(all.iter().map(entry));
                }
            } else {
                app.entries.extend(new.iter().map(entry));
            }
            app.shown = span;
        }
        // What is shown is read: marked so (and saved) only when something was unread.
        if unread_before > 0 {
            let _ = engine.read(&name, false);
        }
    }
    let after: usize = app.channels.iter().map(|c| c.unread).sum();
    after > before
}

/// A message or event as the conversation shows it.
fn entry(m: &MessageView) -> Entry {
    let msg = &m.message;
    let secs = msg.sent_at / 1000;
    let time = format!("{:02}:{:02}", (secs / 3600) % 24, (secs / 60) % 60);
    match msg.event {
        None => Entry::Message {
            time,
            from: msg.from.clone(),
            verified: m.verified,
            text: msg.text.clone(),
        },
        Some(kind) => Entry::Event {
            time,
            text: msg.text.clone(),
            loud: matches!(kind, EventKind::Rejected | EventKind::Missing | EventKind::Exposed),
        },
    }
}

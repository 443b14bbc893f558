//! Messages: `sync`, `send`, `read`, `watch` (and the one round of it a daemon runs).

use std::time::Duration;

use super::{files, Context};
use crate::args::{ReadArgs, SendArgs, SyncArgs, WatchArgs};
use crate::error::CliError;
use crate::output::print_message;

/// `sync`.
pub async fn sync(a: &SyncArgs, cx: &mut Context<'_>) -> Result<(), CliError> {
    let n = cx.engine.sync(Duration::from_secs(a.wait)).await?;
    cx.out.line(format!("synced: {n} new"));
    Ok(())
}

/// `send`: a text, or with `--file` a file.
pub async fn send(a: &SendArgs, cx: &mut Context<'_>) -> Result<(), CliError> {
    match (&a.text, &a.file) {
        (Some(t), None) => {
            cx.engine.send(&a.channel, t).await?;
            cx.out.line("sent");
            Ok(())
        }
        (None, Some(f)) => files::send(&a.channel, f, cx).await,
        _ => Err(CliError::TextOrFile),
    }
}

/// `read`: saves the files that have arrived whole, then shows the messages.
pub async fn read(a: &ReadArgs, cx: &mut Context<'_>) -> Result<(), CliError> {
    if let Err(e) = cx.engine.refresh().await {
        cx.out
            .eline(format!("warning: could not sync ({e}); showing what is stored"));
    }
    let saved = files::save_arrived(&a.channel, &cx.cwd.join(&a.save_to), cx);
    let shown = cx.engine.read(&a.channel, a.all)?;
    for m in &shown {
        print_message(cx.out, m, a.json);
    }
    let earlier: Vec<String> = saved
        .into_iter()
        .filter(|id| !shown.iter().any(|m| &m.message.id == id))
        .collect();
    files::print_saved(&a.channel, &earlier, a.json, cx);
    Ok(())
}

/// `watch`: syncs and prints what arrives, until interrupted.
pub async fn watch(a: &WatchArgs, cx: &mut Context<'_>) -> Result<(), CliError> {
    loop {
        cx.engine.sync(Duration::from_secs(20)).await?;
        print_unread(a, cx)?;
        cx.out.warnings(cx.engine.take_warnings());
        cx.out.flush();
    }
}

/// Prints the unread messages of one channel, or of all, without syncing (one round
/// of `watch`; what a daemon runs for it).
pub fn print_unread(a: &WatchArgs, cx: &mut Context<'_>) -> Result<(), CliError> {
    let names: Vec<String> = match &a.channel {
        Some(c) => vec![c.clone()],
        None => cx.engine.channels().into_iter().map(|c| c.name).collect(),
    };
    for name in names {
        for m in cx.engine.read(&name, false)? {
            print_message(cx.out, &m, a.json);
        }
    }
    Ok(())
}

//! Files in channels: `send --file` with its progress bar, and what `read` saves.

use std::path::Path;

use backchannel_client::engine::FileProgress;

use super::Context;
use crate::error::CliError;
use crate::output::Out;

/// `send --file`: sends (or resumes sending) a file, drawing progress on a terminal.
pub async fn send(channel: &str, file: &Path, cx: &mut Context<'_>) -> Result<(), CliError> {
    let path = cx.cwd.join(file);
    let out = cx.out;
    let bar = FileBar::new(out);
    let mut report = |p: FileProgress| {
        if let FileProgress::Start { total, done } = p {
            if done > 0 {
                out.eline(format!(
                    "resuming an interrupted transfer: {done} of {total} bytes were already sent"
                ));
            }
        }
        bar.update(p);
    };
    let result = cx.engine.send_file(channel, &path, &mut report).await;
    bar.finish();
    result?;
    out.line(format!("sent {}", path.display()));
    Ok(())
}

/// Saves into `dir` every file of the channel that has arrived completely, also one
/// whose message an earlier `read` showed while its parts were still arriving.
/// Returns the ids of the messages whose files were saved; a file that cannot be
/// saved is a warning, and is tried again by the next `read`.
pub fn save_arrived(channel: &str, dir: &Path, cx: &mut Context<'_>) -> Vec<String> {
    let mut saved = Vec::new();
    for id in cx.engine.unsaved_files(channel) {
        match cx.engine.save_received_file(channel, &id, dir) {
            Ok(_) => saved.push(id),
            Err(e) => cx.out.eline(format!("warning: {e}")),
        }
    }
    saved
}

/// Says where files were saved whose messages this `read` did not show.
pub fn print_saved(channel: &str, ids: &[String], json: bool, cx: &mut Context<'_>) {
    for id in ids {
        let Some(f) = cx.engine.file_view(channel, id) else {
            continue;
        };
        let path = f.saved_to.clone().unwrap_or_default();
        if json {
            cx.out.line(serde_json::json!({
                "event": "file_saved", "id": id, "channel": channel,
                "file": {"name": f.name, "size": f.size, "sha256": f.sha256, "saved_to": path},
            }));
        } else {
            cx.out.line(format!("saved {} to {path} (SHA-256 checked)", f.name));
        }
    }
}

/// The progress of `send --file`: a bar on a terminal, lines of progress for a caller
/// that streams the output (the UI's status line; at most 4 a second), else nothing.
struct FileBar<'a> {
    bar: Option<indicatif::ProgressBar>,
    lines: Option<(&'a Out, std::cell::Cell<Option<std::time::Instant>>)>,
    total: std::cell::Cell<u64>,
}

/// `6% of 1048576 bytes`.
fn share(done: u64, total: u64) -> String {
    let percent = (u128::from(done) * 100).checked_div(u128::from(total)).unwrap_or(100);
    format!("{percent}% of {total} bytes")
}

/// How often progress lines go to a streaming caller.
const PROGRESS_EVERY: std::time::Duration = std::time::Duration::from_millis(250);

impl<'a> FileBar<'a> {
    fn new(out: &'a Out) -> Self {
        let lines = out.is_streamed().then(|| (out, std::cell::Cell::new(None)));
        if !out.is_terminal() {
            return Self {
                bar: None,
                lines,
                total: Default::default(),
            };
        }
        let bar = indicatif::ProgressBar::new(0);
        if let Ok(style) =
            indicatif::ProgressStyle::with_template("{msg} [{bar:40}] {bytes}/{total_bytes} ({bytes_per_sec}, {eta})")
        {
            bar.set_style(style.progress_chars("=> "));
        }
        Self {
            bar: Some(bar),
            lines,
            total: Default::default(),
        }
    }

    fn update(&self, p: FileProgress) {
        if let FileProgress::Start { total, .. } = p {
            self.total.set(total);
        }
        if let Some((out, last)) = &self.lines {
            let now = std::time::Instant::now();
            let due = !matches!(p, FileProgress::Sent(_)) || last.get().is_none_or(|t| now - t >= PROGRESS_EVERY);
            if due {
                last.set(Some(now));
                out.progress(match p {
                    FileProgress::Start { total, done } => format!("sending: {}", share(done, total)),
                    FileProgress::Sent(n) => format!("sending: {}", share(n, self.total.get())),
                    FileProgress::Waiting => "waiting for the recipient to fetch".to_string(),
                });
            }
        }
        let Some(bar) = &self.bar else {
            return;
        };
        match p {
            FileProgress::Start { total, done } => {
                bar.set_length(total);
                bar.set_position(done);
                bar.set_message(if done > 0 { "resuming" } else { "sending" });
            }
            FileProgress::Sent(n) => {
                bar.set_position(n);
                bar.set_message("sending");
            }
            FileProgress::Waiting => bar.set_message("waiting for the recipient to fetch"),
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

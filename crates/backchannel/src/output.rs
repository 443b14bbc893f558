//! What a command prints: the [`Out`] sink (this process's terminal, or the lines the
//! daemon streams back), text and JSON renderings of messages, and the escaping that
//! keeps text from the network from driving the terminal.

use std::io::{IsTerminal, Write as _};
use std::time::Duration;

use backchannel_client::engine::{FileStatus, FileView, MessageView, Warning};
use backchannel_client::state::EventKind;
use serde::{Deserialize, Serialize};

/// One line of a command's output.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum Line {
    /// For standard output.
    Out(String),
    /// For standard error: progress, hints, confirmations meant for a person.
    Note(String),
    /// Something the user should know that is not an error; text from the network,
    /// escaped when it is printed.
    Warning {
        /// The channel concerned, if any.
        channel: Option<String>,
        /// What happened.
        text: String,
    },
    /// How far a long command has got (`send --file`), for a caller that shows it in
    /// place (the UI's status line); a command line does not print it.
    Progress(String),
}

impl Line {
    /// Prints the line on this process's stdout or stderr.
    pub fn print(&self) {
        match self {
            Line::Out(text) => println!("{text}"),
            Line::Note(text) => eprintln!("{text}"),
            Line::Warning { channel, text } => {
                // Warnings name members and channels, names that come from the network.
                let text = escape_controls(text);
                match channel {
                    Some(c) => eprintln!("warning: [{}] {text}", escape_controls(c)),
                    None => eprintln!("warning: {text}"),
                }
            }
            Line::Progress(_) => {}
        }
    }
}

/// What takes a command's lines in a daemon: it sends them on to the command that asked,
/// as they come (a line printed before a long wait, such as `invite --code`'s code,
/// reaches the terminal before the wait).
pub type Sink = Box<dyn Fn(Line) + Send + Sync>;

/// Where a command's output goes: this process's stdout and stderr, or the daemon's
/// [`Sink`] toward the command that asked for it.
#[derive(Default)]
pub struct Out {
    sink: Option<Sink>,
}

impl std::fmt::Debug for Out {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Out").field("local", &self.sink.is_none()).finish()
    }
}

impl Out {
    /// Straight to stdout and stderr.
    pub fn local() -> Self {
        Self { sink: None }
    }

    /// Each line to `sink`, as it is printed.
    pub fn streamed(sink: Sink) -> Self {
        Self { sink: Some(sink) }
    }

    /// Whether progress can be drawn: stderr is a terminal (never for a daemon's caller).
    pub fn is_terminal(&self) -> bool {
        self.sink.is_none() && std::io::stderr().is_terminal()
    }

    fn push(&self, line: Line) {
        match &self.sink {
            Some(sink) => sink(line),
            None => line.print(),
        }
    }

    /// One line on stdout.
    pub fn line(&self, line: impl std::fmt::Display) {
        self.push(Line::Out(line.to_string()));
    }

    /// How far a long command has got: only for a caller that streams the output.
    pub fn progress(&self, text: impl std::fmt::Display) {
        if self.sink.is_some() {
            self.push(Line::Progress(text.to_string()));
        }
    }

    /// Whether the lines go to a caller elsewhere (a daemon's caller, the UI).
    pub fn is_streamed(&self) -> bool {
        self.sink.is_some()
    }

    /// One line on stderr.
    pub fn eline(&self, line: impl std::fmt::Display) {
        self.push(Line::Note(line.to_string()));
    }

    /// The engine's warnings, each on a line of stderr.
    pub fn warnings(&self, warnings: Vec<Warning>) {
        for w in warnings {
            self.push(Line::Warning {
                channel: w.channel,
                text: w.text,
            });
        }
    }

    /// Pushes what is printed so far to the terminal (for `watch`).
    pub fn flush(&self) {
        if self.sink.is_none() {
            let _ = std::io::stdout().flush();
        }
    }
}

/// Where a received file stands, as `read` shows it.
enum Arrival<'a> {
    /// Saved into the save directory, at this path.
    Saved(&'a str),
    /// Parts still arriving.
    Receiving { got: u64, of: u64 },
    /// Its hash did not match: discarded.
    Damaged,
    /// Nothing to say.
    Other,
}

/// What `read` says of a file under its message.
fn arrival(f: &FileView) -> Arrival<'_> {
    match (&f.saved_to, &f.status) {
        (Some(p), _) => Arrival::Saved(p),
        (None, FileStatus::Receiving) => Arrival::Receiving {
            got: f.parts.0,
            of: f.parts.1,
        },
        (None, FileStatus::Damaged) => Arrival::Damaged,
        _ => Arrival::Other,
    }
}

/// Prints one message or event of a channel, as text or as one JSON object.
pub fn print_message(out: &Out, m: &MessageView, json: bool) {
    let msg = &m.message;
    if json {
        let line = match msg.event {
            None => {
                let mut line = serde_json::json!({
                    "id": msg.id,
                    "channel": m.channel,
                    "from": msg.from,
                    "from_fingerprint": m.from_fingerprint.to_string(),
                    "verified": m.verified,
                    "sent_at": msg.sent_at,
                    "text": msg.text,
                });
                if let Some(f) = &m.file {
                    line["file"] = serde_json::json!({
                        "name": f.name, "size": f.size, "sha256": f.sha256, "status": f.status.word(),
                        "parts_received": f.parts.0, "parts": f.parts.1, "saved_to": f.saved_to,
                    });
                }
                line
            }
            Some(kind) => serde_json::json!({
                "event": kind,
                "id": msg.id,
                "channel": m.channel,
                "sent_at": msg.sent_at,
                "text": msg.text,
            }),
        };
        out.line(line);
    } else {
        let secs = msg.sent_at / 1000;
        let (h, mi, s) = ((secs / 3600) % 24, (secs / 60) % 60, secs % 60);
        match msg.event {
            None => {
                let mark = if m.verified { "" } else { " (unverified)" };
                out.line(format!(
                    "[{h:02}:{mi:02}:{s:02}] {}{mark}: {}",
                    escape_controls(&msg.from),
                    escape_controls(&msg.text)
                ));
                match m.file.as_ref().map(arrival) {
                    Some(Arrival::Saved(p)) => out.line(format!("           saved to {p} (SHA-256 checked)")),
                    Some(Arrival::Receiving { got, of }) => {
                        out.line(format!("           arriving: {got} of {of} parts so far"))
                    }
                    Some(Arrival::Damaged) => {
                        out.line("           arrived damaged and was discarded; ask for it again")
                    }
                    Some(Arrival::Other) | None => {}
                }
            }
            // A message the client refused (forged, replayed, out of order), one that is
            // missing, or one a removed member could read: shown loudly.
            Some(EventKind::Rejected | EventKind::Missing | EventKind::Exposed) => {
                out.line(format!("[{h:02}:{mi:02}:{s:02}] !! {}", escape_controls(&msg.text)))
            }
            Some(_) => out.line(format!("[{h:02}:{mi:02}:{s:02}] * {}", escape_controls(&msg.text))),
        }
    }
}

/// `text` drawn as a QR code for a terminal: two modules per character cell, one above the
/// other (the half blocks `▀` and `▄`), with its quiet zone, light modules drawn and dark
/// ones left blank, as a terminal with a dark background shows them the right way round.
/// An invite (260 characters, in upper case: the QR code's alphanumeric mode) takes 31
/// lines of 61 columns; `None` if the text is too long for any QR code.
pub fn qr(text: &str) -> Option<String> {
    use qrcode::render::unicode::Dense1x2;
    let code = qrcode::QrCode::new(text.as_bytes()).ok()?;
    Some(
        code.render::<Dense1x2>()
            .quiet_zone(true)
            .dark_color(Dense1x2::Light)
            .light_color(Dense1x2::Dark)
            .build(),
    )
}

/// A duration as a person would write it: the largest whole unit.
pub fn show_duration(d: Duration) -> String {
    let s = d.as_secs();
    for (unit, n) in [("d", 86_400), ("h", 3_600), ("m", 60)] {
        if s >= n && s.is_multiple_of(n) {
            return format!("{}{unit}", s / n);
        }
    }
    format!("{s}s")
}

/// Text from the network as it may reach a terminal: control characters (escape
/// sequences) and invisible formatting characters (bidirectional overrides) are shown
/// as `\u{..}` escapes, and every line after the first is indented, so that no
/// message can redraw the screen or pass a line of its own off as another message.
pub fn escape_controls(text: &str) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\n    "),
            '\t' => out.push(c),
            c if c.is_control() || backchannel_client::core_types::is_format_char(c) => {
                // Writing into a String cannot fail.
                let _ = write!(out, "\\u{{{:04x}}}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::escape_controls;

    #[test]
    fn text_from_the_network_cannot_drive_the_terminal() {
        // An escape sequence that would clear the screen, a right-to-left override,
        // and a line break that would pass off a line as another message.
        let hostile = "ok\u{1b}[2J\u{202e}gnp.exe\n[09:00:00] bob: planted";
        let shown = escape_controls(hostile);
        assert_eq!(shown, "ok\\u{001b}[2J\\u{202e}gnp.exe\n    [09:00:00] bob: planted");
        assert!(!shown.chars().any(|c| c.is_control() && c != '\n'));
        assert_eq!(
            escape_controls("plain text, ünïcode, \tand a tab"),
            "plain text, ünïcode, \tand a tab"
        );
    }
}

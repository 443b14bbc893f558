//! What the terminal UI shows and how keys change it, with no terminal and no engine: the
//! channel list and its selection, the selected channel's conversation, the input line and
//! its commands, scrolling, the help screen. `ui::run` feeds it from the engine and draws
//! it (`view`).

pub use crate::snapshot::{ChannelRow, Entry};
use crate::snapshot::{Query, Snapshot};
use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyModifiers};

/// The status line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Status {
    /// The last sync reached the relays (`None` before the first).
    pub reachable: Option<bool>,
    /// Cover traffic is on.
    pub cover: bool,
    /// Messages waiting to go out.
    pub queued: usize,
    /// The last thing to tell the user (a command's answer, an error).
    pub note: String,
    /// The command running, and how far it has got (`/file`'s progress).
    pub running: Option<(String, String)>,
}

/// What the driver must do after a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Nothing beyond drawing again.
    None,
    /// Send this text to the selected channel.
    Send(String),
    /// The selection moved to this channel: load its conversation.
    Select(String),
    /// Leave the UI.
    Quit,
    /// Run the command that this `backchannel` command line is (`/verify bob` for the
    /// channel `c` is `verify c bob`); its output goes to the conversation as notes.
    Run(Vec<String>),
    /// Show the selected conversation's entries that contain this text.
    Search(String),
}

/// A command typed in the input line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `/quit`.
    Quit,
    /// `/help`.
    Help,
    /// `/search TEXT`.
    Search(String),
    /// A command of the command line, run on the selected channel: its arguments.
    Run(Vec<String>),
    /// A command the UI does not know, or one used wrongly: why.
    Bad(String),
}

/// Reads a line that starts with `/`; `None` for a message. `channel` is the selected one.
pub fn parse_command(line: &str, channel: Option<&str>) -> Option<Command> {
    let rest = line.strip_prefix('/')?.trim();
    let (name, raw) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
    let raw = raw.trim();
    if name == "search" && !raw.is_empty() {
        // Searched as typed: an apostrophe is not a quote here.
        return Some(Command::Search(raw.to_string()));
    }
    let args = match split_words(raw) {
        Ok(words) => words,
        Err(why) => return Some(Command::Bad(format!("/{name}: {why}"))),
    };
    let on = |cmd: &[&str], args: &[String]| -> Command {
        match channel {
            Some(c) => {
                let mut argv: Vec<String> = cmd.iter().map(|s| s.to_string()).collect();
                argv.insert(1, c.to_string());
                argv.extend(args.iter().cloned());
                Command::Run(argv)
            }
            None => Command::Bad(format!("/{name} needs a channel; there is none yet")),
        }
    };
    Some(match name {
        "quit" | "q" => Command::Quit,
        "help" => Command::Help,
        "file" if args.len() == 1 => on(&["send", "--file"], &args),
        "save" if args.len() <= 1 => {
            let dir = args.first().cloned().unwrap_or_else(|| ".".into());
            on(&["read", "--save-to"], &[dir])
        }
        "members" | "pending" | "leave" | "close" | "update" if args.is_empty() => on(&[name], &[]),
        "verify" if args.len() == 2 && args[1] == "confirm" => on(&["verify"], &[args[0].clone(), "--confirm".into()]),
        "verify" if args.len() <= 1 => on(&["verify"], &args),
        "invite" => on(&["invite"], &args),
        "admit" | "refuse" | "admin" | "remove" if !args.is_empty() => on(&[name], &args),
        "join" if !args.is_empty() => Command::Run([vec!["join".to_string()], args].concat()),
        "new" if args.len() == 1 => Command::Run([vec!["channel".to_string(), "new".into()], args].concat()),
        _ => Command::Bad(format!("/{name}: not a UI command, or not used so; ? lists them")),
    })
}

/// Splits a command's words as a shell would for these simple cases: on blanks, except
/// inside `'...'` or `"..."`, and a backslash keeps the next character as it is (`/file
/// "term sheet.pdf"`, `/file term\ sheet.pdf`).
fn split_words(line: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut word: Option<String> = None;
    let mut quote: Option<char> = None;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => word.get_or_insert_with(String::new).push(c),
            (None, '\'' | '"') => {
                quote = Some(c);
                word.get_or_insert_with(String::new);
            }
            (None, '\\') => {
                let next = chars.next().ok_or("a \\ at the end of the line")?;
                word.get_or_insert_with(String::new).push(next);
            }
            (None, c) if c.is_whitespace() => words.extend(word.take()),
            (None, c) => word.get_or_insert_with(String::new).push(c),
        }
    }
    if quote.is_some() {
        return Err("a quote is not closed".into());
    }
    words.extend(word);
    Ok(words)
}

/// Lines one PgUp or PgDn scrolls.
pub const PAGE: usize = 10;

/// The UI's state.
#[derive(Debug, Default)]
pub struct App {
    /// The channels, in the engine's order.
    pub channels: Vec<ChannelRow>,
    /// The selected one's index.
    pub selected: usize,
    /// The selected channel's conversation, oldest first.
    pub entries: Vec<Entry>,
    /// What is being typed.
    pub input: String,
    /// How many lines the conversation is scrolled up from its end.
    pub scroll: usize,
    /// The help screen is shown.
    pub help: bool,
    /// The status line.
    pub status: Status,
    /// The positions in the selected channel's history of the entries shown.
    pub shown: std::ops::Range<u64>,
    /// `/close` was typed once: the next one closes the channel.
    pub closing: bool,
    /// Who in the selected channel is verified, as last drawn: when it changes (a key
    /// change, a `verify --confirm`), the conversation is drawn again with the new marks.
    pub verified: Vec<(String, bool)>,
}

/// What taking in a [`Snapshot`] asks of the driver.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    /// Something new arrived in a channel not shown: ring the bell (never its content).
    pub bell: bool,
    /// Ask again, for the whole conversation: the snapshot was of another channel or
    /// from another position, or a member's mark changed.
    pub again: bool,
}

/// Whether an entry is the UI's own (a note, an alert), not the channel's history.
fn local(e: &Entry) -> bool {
    matches!(e, Entry::Note(_) | Entry::Alert(_))
}

impl App {
    /// What to ask the engine for: the selected channel's conversation after what is shown
    /// (or all of it).
    pub fn query(&self, whole: bool) -> Query {
        Query {
            channel: self.selected_name().map(str::to_string),
            shown: self.shown.clone(),
            whole: whole || self.shown.end == 0,
        }
    }

    /// Takes in what the engine answered to [`App::query`].
    pub fn apply(&mut self, s: Snapshot) -> Applied {
        let before: usize = self.channels.iter().map(|c| c.unread).sum();
        // The first answer chooses the channel shown (the one asked for, or the most recent).
        let prefer = if self.channels.is_empty() {
            s.channel.clone()
        } else {
            None
        };
        self.set_channels(s.channels, prefer.as_deref());
        let after: usize = self.channels.iter().map(|c| c.unread).sum();
        let mut applied = Applied {
            bell: after > before,
            again: false,
        };
        self.status.queued = s.queued;
        self.status.cover = s.cover;
        self.status.reachable = s.reachable;
        for (channel, text) in s.warnings {
            self.entries.push(Entry::Alert(match channel {
                Some(c) => format!("[{c}] {text}"),
                None => text,
            }));
        }
        if s.channel.as_deref() != self.selected_name() {
            // Asked before the selection moved: its conversation is not the one shown.
            applied.again = true;
            return applied;
        }
        if s.verified != self.verified {
            self.verified = s.verified;
            applied.again = !s.whole;
        }
        if s.whole {
            let kept: Vec<Entry> = self.entries.drain(..).filter(local).collect();
            self.entries = s.entries;
            self.entries.extend(kept);
        } else if s.from == self.shown.end {
            self.entries.extend(s.entries);
        } else {
            applied.again = true;
            return applied;
        }
        self.shown = s.span;
        applied
    }

    /// The selected channel's name.
    pub fn selected_name(&self) -> Option<&str> {
        self.channels.get(self.selected).map(|c| c.name.as_str())
    }

    /// Replaces the list, keeping the selection on the same channel (or `prefer`, when
    /// given and listed); the selected channel's unread count is 0 (it is being read).
    pub fn set_channels(&mut self, mut rows: Vec<ChannelRow>, prefer: Option<&str>) {
        let keep = prefer
            .map(str::to_string)
            .or_else(|| self.selected_name().map(str::to_string));
        self.selected = keep
            .and_then(|k| rows.iter().position(|r| r.name == k))
            .unwrap_or(0)
            .min(rows.len().saturating_sub(1));
        if let Some(r) = rows.get_mut(self.selected) {
            r.unread = 0;
        }
        self.channels = rows;
    }

    /// Moves the selection by `by` (wrapping); the channel to load, if it moved.
    fn step(&mut self, by: isize) -> Action {
        let n = self.channels.len();
        if n < 2 {
            return Action::None;
        }
        let next = (self.selected as isize + by).rem_euclid(n as isize) as usize;
        self.selected = next;
        self.scroll = 0;
        self.entries.clear();
        self.shown = 0..0;
        if let Some(r) = self.channels.get_mut(next) {
            r.unread = 0;
        }
        self.selected_name()
            .map_or(Action::None, |name| Action::Select(name.to_string()))
    }

    /// Handles one key press.
    pub fn on_key(&mut self, key: KeyEvent) -> Action {
        let ctrl = key.modifiers.contains(KeyModifiers::CONTROL);
        let alt = key.modifiers.contains(KeyModifiers::ALT);
        match key.code {
            KeyCode::Char('c') if ctrl => return Action::Quit,
            KeyCode::Char('n') if ctrl => return self.step(1),
            KeyCode::Char('p') if ctrl => return self.step(-1),
            KeyCode::Esc => {
                self.help = false;
                self.input.clear();
            }
            _ if self.help => self.help = false,
            KeyCode::Up if alt || self.input.is_empty() => return self.step(-1),
            KeyCode::Down if alt || self.input.is_empty() => return self.step(1),
            KeyCode::PageUp => self.scroll = self.scroll.saturating_add(PAGE),
            KeyCode::PageDown => self.scroll = self.scroll.saturating_sub(PAGE),
            KeyCode::Char('?') if self.input.is_empty() => self.help = true,
            KeyCode::Backspace => {
                self.input.pop();
            }
            KeyCode::Enter => return self.enter(),
            KeyCode::Char(c) if !ctrl => self.input.push(c),
            _ => {}
        }
        Action::None
    }

    /// Enter: the input line is a command or a message.
    fn enter(&mut self) -> Action {
        let line = std::mem::take(&mut self.input);
        let line = line.trim();
        if line.is_empty() {
            return Action::None;
        }
        let closing = std::mem::take(&mut self.closing);
        match parse_command(line, self.selected_name()) {
            Some(Command::Quit) => Action::Quit,
            Some(Command::Help) => {
                self.help = true;
                Action::None
            }
            Some(Command::Search(text)) => Action::Search(text),
            Some(Command::Bad(why)) => {
                self.status.note = why;
                Action::None
            }
            Some(Command::Run(argv)) if argv.first().map(String::as_str) == Some("close") && !closing => {
                self.closing = true;
                self.status.note =
                    "/close removes everyone and wipes the channel on every device: type /close again to confirm"
                        .into();
                Action::None
            }
            Some(Command::Run(argv)) => Action::Run(argv),
            None if self.channels.is_empty() => {
                self.status.note = "no channel yet: `backchannel channel new NAME` or `backchannel join INVITE`".into();
                Action::None
            }
            None => {
                self.scroll = 0;
                Action::Send(line.to_string())
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;

    fn key(code: KeyCode) -> KeyEvent {
        KeyEvent::new(code, KeyModifiers::NONE)
    }

    fn ctrl(c: char) -> KeyEvent {
        KeyEvent::new(KeyCode::Char(c), KeyModifiers::CONTROL)
    }

    fn row(name: &str, unread: usize) -> ChannelRow {
        ChannelRow {
            name: name.into(),
            unread,
            unverified: false,
            ended: false,
            expiring: false,
        }
    }

    fn typed(app: &mut App, text: &str) {
        for c in text.chars() {
            app.on_key(key(KeyCode::Char(c)));
        }
    }

    #[test]
    fn switching_channels_selects_wraps_and_clears_the_unread_count() {
        let mut app = App::default();
        app.set_channels(vec![row("a", 1), row("b", 2), row("c", 3)], Some("b"));
        assert_eq!(app.selected_name(), Some("b"));
        assert_eq!(app.channels[1].unread, 0, "the channel shown is read");
        assert_eq!(app.on_key(key(KeyCode::Down)), Action::Select("c".into()));
        assert_eq!(app.channels[2].unread, 0);
        assert_eq!(app.on_key(ctrl('n')), Action::Select("a".into()), "it wraps");
        assert_eq!(app.on_key(ctrl('p')), Action::Select("c".into()));
        assert_eq!(app.on_key(key(KeyCode::Up)), Action::Select("b".into()));
        // With text typed, Up and Down belong to the input; Alt moves the selection.
        typed(&mut app, "hi");
        assert_eq!(app.on_key(key(KeyCode::Down)), Action::None);
        assert_eq!(
            app.on_key(KeyEvent::new(KeyCode::Down, KeyModifiers::ALT)),
            Action::Select("c".into())
        );
        assert_eq!(app.input, "hi", "switching keeps what is typed");
        // A refresh keeps the selection on the same channel, wherever it moved.
        app.set_channels(vec![row("new", 1), row("a", 0), row("b", 5), row("c", 9)], None);
        assert_eq!(app.selected_name(), Some("c"));
        assert_eq!(app.channels[3].unread, 0);
        assert_eq!(app.channels[2].unread, 5);
    }

    #[test]
    fn enter_sends_text_runs_commands_and_esc_clears() {
        let mut app = App::default();
        app.set_channels(vec![row("a", 0)], None);
        typed(&mut app, "  hello there ");
        assert_eq!(app.on_key(key(KeyCode::Enter)), Action::Send("hello there".into()));
        assert_eq!(app.input, "");
        assert_eq!(app.on_key(key(KeyCode::Enter)), Action::None, "nothing to send");
        typed(&mut app, "typo");
        app.on_key(key(KeyCode::Backspace));
        assert_eq!(app.input, "typ");
        app.on_key(key(KeyCode::Esc));
        assert_eq!(app.input, "");
        typed(&mut app, "/help");
        app.on_key(key(KeyCode::Enter));
        assert!(app.help);
        app.on_key(key(KeyCode::Char('x')));
        assert!(!app.help, "any key closes help");
        assert_eq!(app.input, "", "the key that closes help types nothing");
        app.on_key(key(KeyCode::Char('?')));
        assert!(app.help, "? opens help on an empty line");
        app.on_key(key(KeyCode::Esc));
        typed(&mut app, "/verify bob");
        assert_eq!(
            app.on_key(key(KeyCode::Enter)),
            Action::Run(vec!["verify".into(), "a".into(), "bob".into()])
        );
        typed(&mut app, "/frobnicate");
        assert_eq!(app.on_key(key(KeyCode::Enter)), Action::None);
        assert!(app.status.note.contains("/frobnicate"), "{}", app.status.note);
        // /close asks to be confirmed: typed twice in a row.
        typed(&mut app, "/close");
        assert_eq!(app.on_key(key(KeyCode::Enter)), Action::None);
        assert!(app.status.note.contains("again to confirm"));
        typed(&mut app, "/close");
        assert_eq!(
            app.on_key(key(KeyCode::Enter)),
            Action::Run(vec!["close".into(), "a".into()])
        );
        typed(&mut app, "/close");
        app.on_key(key(KeyCode::Enter));
        typed(&mut app, "never mind");
        assert_eq!(app.on_key(key(KeyCode::Enter)), Action::Send("never mind".into()));
        typed(&mut app, "/close");
        assert_eq!(
            app.on_key(key(KeyCode::Enter)),
            Action::None,
            "a confirmation is the very next line"
        );
        typed(&mut app, "/quit");
        assert_eq!(app.on_key(key(KeyCode::Enter)), Action::Quit);
        assert_eq!(app.on_key(ctrl('c')), Action::Quit);
    }

    #[test]
    fn commands_parse_to_the_command_line_on_the_selected_channel() {
        let run = |line: &str| match parse_command(line, Some("deal")) {
            Some(Command::Run(argv)) => argv.join(" "),
            other => format!("{other:?}"),
        };
        assert_eq!(parse_command("/quit", None), Some(Command::Quit));
        assert_eq!(parse_command("/q", None), Some(Command::Quit));
        assert_eq!(parse_command("/help", None), Some(Command::Help));
        assert_eq!(parse_command("hello /quit", None), None);
        assert_eq!(run("/file term-sheet.pdf"), "send deal --file term-sheet.pdf");
        assert_eq!(run("/save"), "read deal --save-to .");
        assert_eq!(run("/save ~/in"), "read deal --save-to ~/in");
        assert_eq!(run("/members"), "members deal");
        assert_eq!(run("/verify"), "verify deal");
        assert_eq!(run("/verify bob"), "verify deal bob");
        assert_eq!(run("/verify bob confirm"), "verify deal bob --confirm");
        assert_eq!(run("/invite --uses 2 --approve"), "invite deal --uses 2 --approve");
        assert_eq!(run("/pending"), "pending deal");
        assert_eq!(run("/admit bob"), "admit deal bob");
        assert_eq!(run("/refuse 6d1e3401"), "refuse deal 6d1e3401");
        assert_eq!(run("/admin bob"), "admin deal bob");
        assert_eq!(run("/remove bob"), "remove deal bob");
        assert_eq!(run("/leave"), "leave deal");
        assert_eq!(run("/update"), "update deal");
        assert_eq!(run("/join 7-orbit-velvet-harbor"), "join 7-orbit-velvet-harbor");
        assert_eq!(run("/new war-room"), "channel new war-room");
        assert_eq!(run("/invite --code"), "invite deal --code");
        // A path with spaces: quoted, or its spaces escaped.
        let argv = |line: &str| match parse_command(line, Some("deal")) {
            Some(Command::Run(argv)) => argv,
            other => panic!("{line}: {other:?}"),
        };
        assert_eq!(
            argv("/file \"term sheet.pdf\""),
            ["send", "deal", "--file", "term sheet.pdf"]
        );
        assert_eq!(
            argv("/file 'it''s here.pdf'"),
            ["send", "deal", "--file", "its here.pdf"]
        );
        assert_eq!(
            argv("/file term\\ sheet.pdf"),
            ["send", "deal", "--file", "term sheet.pdf"]
        );
        assert_eq!(
            parse_command("/search don't  sign", Some("deal")),
            Some(Command::Search("don't  sign".into())),
            "searched as typed"
        );
        assert_eq!(
            parse_command("/search the escrow", Some("deal")),
            Some(Command::Search("the escrow".into()))
        );
        for bad in [
            "/",
            "/frobnicate",
            "/members extra",
            "/file",
            "/new",
            "/search",
            "/file \"unclosed",
            "/file trailing\\",
        ] {
            assert!(
                matches!(parse_command(bad, Some("deal")), Some(Command::Bad(_))),
                "{bad}"
            );
        }
        assert!(matches!(parse_command("/members", None), Some(Command::Bad(_))));
        assert_eq!(
            parse_command("/join bc-invite:abc", None),
            Some(Command::Run(vec!["join".into(), "bc-invite:abc".into()]))
        );
    }

    #[test]
    fn page_keys_scroll_and_sending_returns_to_the_end() {
        let mut app = App::default();
        app.set_channels(vec![row("a", 0)], None);
        app.on_key(key(KeyCode::PageUp));
        app.on_key(key(KeyCode::PageUp));
        assert_eq!(app.scroll, 2 * PAGE);
        app.on_key(key(KeyCode::PageDown));
        assert_eq!(app.scroll, PAGE);
        typed(&mut app, "x");
        app.on_key(key(KeyCode::Enter));
        assert_eq!(app.scroll, 0);
        app.on_key(key(KeyCode::PageDown));
        assert_eq!(app.scroll, 0);
    }

    #[test]
    fn without_channels_nothing_is_sent() {
        let mut app = App::default();
        typed(&mut app, "hello");
        assert_eq!(app.on_key(key(KeyCode::Enter)), Action::None);
        assert!(app.status.note.contains("no channel yet"));
        assert_eq!(app.on_key(key(KeyCode::Down)), Action::None);
    }

    fn message(text: &str) -> Entry {
        Entry::Message {
            time: "10:00".into(),
            from: "bob".into(),
            verified: false,
            text: text.into(),
        }
    }

    fn snapshot(channel: &str, rows: Vec<ChannelRow>, from: u64, entries: &[&str], whole: bool) -> Snapshot {
        let end = from + entries.len() as u64;
        Snapshot {
            channels: rows,
            channel: Some(channel.into()),
            verified: vec![("fp-bob".into(), false)],
            entries: entries.iter().map(|t| message(t)).collect(),
            from,
            span: 0..end,
            whole,
            ..Snapshot::default()
        }
    }

    #[test]
    fn snapshots_extend_the_conversation_and_ring_for_other_channels_only() {
        let mut app = App::default();
        // The first answer chooses the channel (the engine's pick) and loads it whole.
        let first = snapshot("b", vec![row("a", 0), row("b", 2)], 0, &["one", "two"], true);
        assert_eq!(app.apply(first), Applied::default());
        assert_eq!(app.selected_name(), Some("b"));
        assert_eq!(app.channels[1].unread, 0, "the channel shown is read");
        assert_eq!(app.query(false).shown, 0..2);
        assert!(!app.query(false).whole);
        // What follows is added; something new in `a` rings the bell.
        let next = snapshot("b", vec![row("a", 1), row("b", 1)], 2, &["three"], false);
        assert_eq!(
            app.apply(next),
            Applied {
                bell: true,
                again: false
            }
        );
        assert_eq!(app.entries.len(), 3);
        assert_eq!(app.shown, 0..3);
        // New in the channel shown only: no bell.
        let shown_only = snapshot("b", vec![row("a", 1), row("b", 1)], 3, &["four"], false);
        assert!(!app.apply(shown_only).bell);
        // A note typed meanwhile stays when the conversation is reloaded whole.
        app.entries.push(Entry::Note("/members".into()));
        let reload = snapshot(
            "b",
            vec![row("a", 1), row("b", 0)],
            0,
            &["one", "two", "three", "four"],
            true,
        );
        app.apply(reload);
        assert_eq!(app.entries.len(), 5);
        assert_eq!(app.entries[4], Entry::Note("/members".into()));
        // An answer from another position is not added: the whole is asked for again.
        let stale = snapshot("b", vec![row("a", 1), row("b", 0)], 2, &["three"], false);
        assert!(app.apply(stale).again);
        assert_eq!(app.entries.len(), 5);
    }

    #[test]
    fn a_snapshot_of_the_channel_left_or_a_changed_mark_asks_again() {
        let mut app = App::default();
        app.apply(snapshot("a", vec![row("a", 0), row("b", 4)], 0, &["x"], true));
        // The selection moved while a snapshot of `a` was on its way.
        assert_eq!(app.on_key(key(KeyCode::Down)), Action::Select("b".into()));
        assert!(app.entries.is_empty());
        assert!(app.query(false).whole, "nothing shown yet: all of it");
        let late = snapshot("a", vec![row("a", 0), row("b", 4)], 1, &["y"], false);
        assert!(app.apply(late).again);
        assert!(app.entries.is_empty(), "a's messages are not shown under b");
        assert_eq!(app.channels[1].unread, 0, "b is the one shown: read");
        app.apply(snapshot("b", vec![row("a", 0), row("b", 0)], 0, &["m"], true));
        // bob verified (or his key changed): the conversation is drawn again whole.
        let mut marked = snapshot("b", vec![row("a", 0), row("b", 0)], 1, &[], false);
        marked.verified = vec![("fp-bob".into(), true)];
        assert!(app.apply(marked).again);
        // Warnings of background syncs are shown loudly, with their channel.
        let mut warned = snapshot("b", vec![row("a", 0), row("b", 0)], 1, &[], false);
        warned.verified = vec![("fp-bob".into(), true)];
        warned.warnings = vec![(Some("a".into()), "a message from carol is missing".into())];
        app.apply(warned);
        assert_eq!(
            app.entries.last(),
            Some(&Entry::Alert("[a] a message from carol is missing".into()))
        );
    }
}

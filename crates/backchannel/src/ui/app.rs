//! What the terminal UI shows and how keys change it, with no terminal and no engine: the
//! channel list and its selection, the selected channel's conversation, the input line and
//! its commands, scrolling, the help screen. `ui::run` feeds it from the engine and draws
//! it (`view`).

use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyModifiers};

/// A channel as the list shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelRow {
    /// Local name (from the user, or from the invite: escaped when drawn).
    pub name: String,
    /// Messages not read yet.
    pub unread: usize,
    /// Some member is not verified.
    pub unverified: bool,
    /// Closed, left or removed: nothing more will come.
    pub ended: bool,
}

/// One entry of a conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// A message.
    Message {
        /// `hh:mm`, the sender's clock.
        time: String,
        /// The sender's name (from the network).
        from: String,
        /// The sender is verified (never for one that is not).
        verified: bool,
        /// The text (from the network).
        text: String,
    },
    /// An event: a join, a removal, a key change, a refused or missing message.
    Event {
        /// `hh:mm`.
        time: String,
        /// What happened (from the network in part).
        text: String,
        /// Shown loudly: something was refused, is missing, or was exposed.
        loud: bool,
    },
}

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
}

/// A command typed in the input line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `/quit`.
    Quit,
    /// `/help`.
    Help,
    /// Anything else: its name (without the slash).
    Unknown(String),
}

/// Reads a line that starts with `/`; `None` for a message.
pub fn parse_command(line: &str) -> Option<Command> {
    let rest = line.strip_prefix('/')?;
    let name = rest.split_whitespace().next().unwrap_or_default();
    Some(match name {
        "quit" | "q" => Command::Quit,
        "help" => Command::Help,
        other => Command::Unknown(other.to_string()),
    })
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
    /// The position in the selected channel's history after the last entry shown.
    pub shown_upto: u64,
}

impl App {
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
        self.shown_upto = 0;
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
        match parse_command(line) {
            Some(Command::Quit) => Action::Quit,
            Some(Command::Help) => {
                self.help = true;
                Action::None
            }
            Some(Command::Unknown(name)) => {
                self.status.note = format!(
                    "/{name} is not in the UI yet: run `backchannel {name} ...` in another terminal (it works while the UI is open)"
                );
                Action::None
            }
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
#[allow(clippy::unwrap_used)]
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
        assert_eq!(app.on_key(key(KeyCode::Enter)), Action::None);
        assert!(app.status.note.contains("/verify"), "{}", app.status.note);
        typed(&mut app, "/quit");
        assert_eq!(app.on_key(key(KeyCode::Enter)), Action::Quit);
        assert_eq!(app.on_key(ctrl('c')), Action::Quit);
    }

    #[test]
    fn commands_parse_and_messages_are_not_commands() {
        assert_eq!(parse_command("/quit"), Some(Command::Quit));
        assert_eq!(parse_command("/q"), Some(Command::Quit));
        assert_eq!(parse_command("/help"), Some(Command::Help));
        assert_eq!(parse_command("/file a.pdf"), Some(Command::Unknown("file".into())));
        assert_eq!(parse_command("hello /quit"), None);
        assert_eq!(parse_command("/"), Some(Command::Unknown(String::new())));
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
}

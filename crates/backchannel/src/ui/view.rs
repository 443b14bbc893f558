//! Drawing the UI's state ([`App`]) with ratatui: the channel list, the conversation (wrapped
//! here, so that scrolling counts the lines the screen shows), the input line, the status
//! line, and the help screen over them. Every string from the network is escaped
//! (`output::escape_controls`) before it reaches the terminal.

use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Clear, List, ListItem, Paragraph};
use ratatui::Frame;

use super::app::{App, Entry};
use crate::output::escape_controls;

/// Width of the channel list.
const LIST_WIDTH: u16 = 22;

/// The mark of a verified sender.
const VERIFIED: &str = "✓";

/// Draws the whole screen.
pub fn draw(frame: &mut Frame<'_>, app: &App) {
    // A command running takes a second status line, for its progress.
    let status_height = if app.status.running.is_some() { 2 } else { 1 };
    let [main, input, status] = Layout::vertical([
        Constraint::Min(3),
        Constraint::Length(3),
        Constraint::Length(status_height),
    ])
    .areas(frame.area());
    let [list, conversation] = Layout::horizontal([Constraint::Length(LIST_WIDTH), Constraint::Min(10)]).areas(main);
    draw_list(frame, app, list);
    draw_conversation(frame, app, conversation);
    let prompt = Paragraph::new(escape_controls(&app.input)).block(
        Block::default()
            .borders(Borders::ALL)
            .title(" message · Enter sends · ? help "),
    );
    frame.render_widget(prompt, input);
    frame.render_widget(Paragraph::new(status_line(app)), status);
    if app.help {
        draw_help(frame, frame.area());
    }
}

fn draw_list(frame: &mut Frame<'_>, app: &App, area: Rect) {
    let items: Vec<ListItem<'_>> = app
        .channels
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let mut marks = String::new();
            if c.unverified {
                marks.push('?');
            }
            if c.ended {
                marks.push('x');
            } else if c.expiring {
                marks.push('~');
            }
            let unread = if c.unread > 0 {
                format!(" ({})", c.unread)
            } else {
                String::new()
            };
            let text = format!("{marks:<2}{}{unread}", escape_controls(&c.name));
            let style = if i == app.selected {
                Style::default().add_modifier(Modifier::REVERSED)
            } else if c.unread > 0 {
                Style::default().add_modifier(Modifier::BOLD)
            } else {
                Style::default()
            };
            ListItem::new(text).style(style)
        })
        .collect();
    let list = List::new(items).block(Block::default().borders(Borders::ALL).title(" channels "));
    frame.render_widget(list, area);
}

/// The conversation's lines at `width`, wrapped.
fn conversation_lines(app: &App, width: usize) -> Vec<Line<'static>> {
    let width = width.max(8);
    let mut out = Vec::new();
    for e in &app.entries {
        let (head, text, style) = match e {
            Entry::Message {
                time,
                from,
                verified,
                text,
            } => {
                let mark = if *verified {
                    format!(" {VERIFIED}")
                } else {
                    " (unverified)".to_string()
                };
                (
                    format!("{time} {}{mark}: ", escape_controls(from)),
                    escape_controls(text),
                    Style::default(),
                )
            }
            Entry::Note(text) => (
                "» ".to_string(),
                escape_controls(text),
                Style::default().add_modifier(Modifier::DIM),
            ),
            Entry::Alert(text) => (
                "!! ".to_string(),
                escape_controls(text),
                Style::default().add_modifier(Modifier::BOLD | Modifier::REVERSED),
            ),
            Entry::Event { time, text, loud } => {
                let (lead, style) = if *loud {
                    (
                        "!! ",
                        Style::default().add_modifier(Modifier::BOLD | Modifier::REVERSED),
                    )
                } else {
                    ("* ", Style::default().add_modifier(Modifier::ITALIC))
                };
                (format!("{time} {lead}"), escape_controls(text), style)
            }
        };
        let whole: Vec<char> = format!("{head}{text}").chars().collect();
        for chunk in whole.chunks(width) {
            out.push(Line::from(Span::styled(chunk.iter().collect::<String>(), style)));
        }
    }
    out
}

fn draw_conversation(frame: &mut Frame<'_>, app: &App, area: Rect) {
    let title = match app.selected_name() {
        Some(name) => format!(" {} ", escape_controls(name)),
        None => " no channel yet ".to_string(),
    };
    let block = Block::default().borders(Borders::ALL).title(title);
    let inner = block.inner(area);
    let lines = conversation_lines(app, usize::from(inner.width));
    let height = usize::from(inner.height);
    // The last `height` lines, `scroll` lines up from the end.
    let end = lines
        .len()
        .saturating_sub(app.scroll.min(lines.len().saturating_sub(height)));
    let start = end.saturating_sub(height);
    let shown: Vec<Line<'static>> = lines[start..end].to_vec();
    frame.render_widget(Paragraph::new(shown).block(block), area);
}

fn status_line(app: &App) -> Vec<Line<'static>> {
    let s = &app.status;
    let relay = match s.reachable {
        None => "relay: …",
        Some(true) => "relay: reachable",
        Some(false) => "relay: UNREACHABLE",
    };
    let cover = if s.cover { "cover: on" } else { "cover: off" };
    let mut line = format!("{relay} · {cover} · queued: {}", s.queued);
    if !s.note.is_empty() {
        line.push_str(" · ");
        line.push_str(&escape_controls(&s.note));
    }
    let mut lines = vec![Line::from(line)];
    if let Some((what, progress)) = &s.running {
        let mut running = format!("{}…", escape_controls(what));
        if !progress.is_empty() {
            running.push(' ');
            running.push_str(&escape_controls(progress));
        }
        lines.push(Line::from(running).style(Style::default().add_modifier(Modifier::BOLD)));
    }
    lines
}

/// The help screen's text.
const HELP: &[&str] = &[
    "Enter          send the message (or run the /command)",
    "Up / Down      switch channels (Alt+Up / Alt+Down while typing)",
    "Ctrl-N Ctrl-P  next / previous channel",
    "PgUp / PgDn    scroll the conversation",
    "Esc            clear the input line",
    "Ctrl-C, /quit  leave (the terminal is restored)",
    "? or /help     this screen; any key closes it",
    "",
    "Marks: ✓ verified sender · (unverified) not verified",
    "       ? unverified members · x ended · ~ closes on its own",
    "       !! refused, missing, exposed or failed: read it",
    "",
    "/file PATH  /save [DIR]  /members  /verify [MEMBER [confirm]]",
    "/invite [--uses N] [--code] [--approve]  /pending  /admit  /refuse",
    "/admin MEMBER  /remove MEMBER  /join INVITE-OR-CODE  /new CHANNEL",
    "/leave  /close (twice)  /update  /search TEXT   \"quote\" a path with spaces",
    "Any other command: in another terminal, while the UI is open.",
];

fn draw_help(frame: &mut Frame<'_>, area: Rect) {
    let width = area.width.min(74);
    let height = area.height.min(HELP.len() as u16 + 2);
    let at = Rect {
        x: area.x + (area.width - width) / 2,
        y: area.y + (area.height - height) / 2,
        width,
        height,
    };
    let text: Vec<Line<'_>> = HELP.iter().map(|l| Line::from(*l)).collect();
    frame.render_widget(Clear, at);
    frame.render_widget(
        Paragraph::new(text).block(Block::default().borders(Borders::ALL).title(" help ")),
        at,
    );
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::ui::app::{ChannelRow, Status};
    use ratatui::backend::TestBackend;
    use ratatui::Terminal;

    fn sample() -> App {
        let mut app = App::default();
        app.set_channels(
            vec![
                ChannelRow {
                    name: "deal-room".into(),
                    unread: 0,
                    unverified: true,
                    ended: false,
                    expiring: false,
                },
                ChannelRow {
                    name: "legal".into(),
                    unread: 3,
                    unverified: false,
                    ended: false,
                    expiring: true,
                },
                ChannelRow {
                    name: "old-deal".into(),
                    unread: 0,
                    unverified: false,
                    ended: true,
                    expiring: false,
                },
            ],
            Some("deal-room"),
        );
        let m = |time: &str, from: &str, verified: bool, text: &str| Entry::Message {
            time: time.into(),
            from: from.into(),
            verified,
            text: text.into(),
        };
        let e = |time: &str, text: &str, loud: bool| Entry::Event {
            time: time.into(),
            text: text.into(),
            loud,
        };
        app.entries = vec![
            e("09:58", "bob joined", false),
            m("10:01", "alice", true, "Our board accepts the revised terms."),
            m(
                "10:02",
                "bob",
                false,
                "Good. We sign on Friday; the escrow agent needs the final draft by Thursday noon, with both annexes.",
            ),
            e("10:03", "bob's keys changed: verify again", false),
            e(
                "10:04",
                "a message from bob was refused: it was not sealed in this channel",
                true,
            ),
            e(
                "10:05",
                "a message from carol is missing (the relay may be withholding it)",
                true,
            ),
            m(
                "10:06",
                "mallory\u{1b}[31m\u{202e}",
                false,
                "text with \u{7} a bell and \u{1b}[2J an escape",
            ),
            Entry::Alert("/invite --code: someone tried a wrong code; nobody was admitted".into()),
        ];
        app.input = "draft is in the data room".into();
        app.status = Status {
            reachable: Some(true),
            cover: false,
            queued: 1,
            note: String::new(),
            running: None,
        };
        app
    }

    fn render(app: &App, width: u16, height: u16) -> TestBackend {
        let mut terminal = Terminal::new(TestBackend::new(width, height)).unwrap();
        terminal.draw(|f| draw(f, app)).unwrap();
        terminal.backend().clone()
    }

    #[test]
    fn a_conversation_with_every_kind_of_entry() {
        insta::assert_snapshot!(render(&sample(), 100, 24));
    }

    #[test]
    fn the_help_screen() {
        let mut app = sample();
        app.help = true;
        insta::assert_snapshot!(render(&app, 80, 24));
    }

    #[test]
    fn a_narrow_terminal_of_60_by_20() {
        let mut app = sample();
        app.status.reachable = Some(false);
        app.status.note = "sent; queued until a relay answers".into();
        app.status.running = Some(("/file term-sheet.pdf".into(), "sending: 6% of 1048576 bytes".into()));
        insta::assert_snapshot!(render(&app, 60, 20));
    }

    #[test]
    fn no_channel_yet() {
        insta::assert_snapshot!(render(&App::default(), 60, 20));
    }

    /// Nothing from the network reaches the terminal as a control: the escape sequences
    /// and the bidi override in a name and a text are drawn escaped, and no unverified
    /// sender carries the verified mark.
    #[test]
    fn network_text_is_escaped_and_unverified_senders_are_marked() {
        let shown = render(&sample(), 200, 30).to_string();
        assert!(!shown.contains('\u{1b}') && !shown.contains('\u{202e}') && !shown.contains('\u{7}'));
        for line in shown.lines().filter(|l| l.contains("bob") || l.contains("mallory")) {
            assert!(!line.contains(VERIFIED) || line.contains("alice"), "{line}");
        }
        assert!(shown.contains("alice ✓"));
    }

    #[test]
    fn scrolling_shows_earlier_lines_and_stops_at_the_top() {
        let mut app = sample();
        app.entries = (0..50)
            .map(|i| Entry::Message {
                time: "10:00".into(),
                from: "alice".into(),
                verified: true,
                text: format!("line {i}"),
            })
            .collect();
        let end = render(&app, 80, 20).to_string();
        assert!(end.contains("line 49") && !end.contains("line 30 "));
        app.scroll = 20;
        let up = render(&app, 80, 20).to_string();
        assert!(up.contains("line 29") && !up.contains("line 49"));
        app.scroll = 1000;
        let top = render(&app, 80, 20).to_string();
        assert!(top.contains("line 0 ") || top.contains("line 0│"), "{top}");
    }
}
